use retry_runtime::{resilient, retry_on, Classify, ErrorClass};

#[derive(Debug)]
struct ApiError(u16);

impl Classify for ApiError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Status(self.0)
    }
}

#[retry_on(429, 404)]
#[resilient]
async fn complete() -> Result<String, ApiError> {
    Ok("hi".to_string())
}

fn main() {}
