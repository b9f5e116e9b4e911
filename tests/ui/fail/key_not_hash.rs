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

/// A request type that is not `Hash`.
pub struct Req {
    pub prompt: String,
}

#[resilient(fallback = cached)]
async fn complete(#[key] req: &Req) -> Result<String, ApiError> {
    let _ = &req.prompt;
    Err(ApiError::Status(503))
}

fn main() {}
