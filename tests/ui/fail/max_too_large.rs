use retry_runtime::{resilient, Classify, ErrorClass};

#[derive(Debug)]
struct ApiError(u16);

impl Classify for ApiError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Status(self.0)
    }
}

#[resilient(max = 21)]
async fn complete() -> Result<String, ApiError> {
    Ok("hi".to_string())
}

fn main() {}
