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

/// Not Clone: a cached answer could not be handed out twice.
#[derive(Debug)]
struct Reply(String);

#[resilient(fallback = cached)]
async fn complete(#[key] prompt: &str) -> Result<Reply, ApiError> {
    Ok(Reply(prompt.to_string()))
}

fn main() {}
