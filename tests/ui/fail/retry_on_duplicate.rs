use retry_runtime::{resilient, retry_on, Classify, ErrorClass};

#[derive(Debug)]
struct ApiError(u16);

impl Classify for ApiError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Status(self.0)
    }
}

#[resilient]
#[retry_on(429, 429, 500..=599, 502..=504, timeout, timeout)]
async fn complete() -> Result<String, ApiError> {
    Ok("hi".to_string())
}

fn main() {}
