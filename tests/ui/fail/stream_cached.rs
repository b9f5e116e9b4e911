use retry_runtime::{resilient, Classify, ErrorClass, Rejected};

#[derive(Debug)]
enum ApiError {
    Status(u16),
    Runtime(Rejected),
}

impl From<Rejected> for ApiError {
    fn from(r: Rejected) -> Self {
        ApiError::Runtime(r)
    }
}

impl Classify for ApiError {
    fn class(&self) -> ErrorClass {
        match self {
            ApiError::Status(code) => ErrorClass::Status(*code),
            ApiError::Runtime(r) => r.class(),
        }
    }
}

type Chunks = std::pin::Pin<Box<dyn futures::Stream<Item = Result<String, ApiError>> + Send>>;

#[resilient(max = 3, fallback = cached)]
async fn complete(#[key] prompt: &str) -> Result<retry_runtime::Streamed<Chunks>, ApiError> {
    let _ = prompt;
    Err(ApiError::Status(503))
}

fn main() {}
