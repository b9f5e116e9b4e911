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

#[resilient(max = 3, first_token = "10s")]
async fn complete(prompt: &str) -> Result<String, ApiError> {
    Ok(prompt.to_string())
}

fn main() {}
