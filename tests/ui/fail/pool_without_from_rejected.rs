use retry_runtime::{resilient, Classify, ErrorClass};

#[derive(Debug)]
struct ApiError(u16);

impl Classify for ApiError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Status(self.0)
    }
}

#[resilient(max = 3, pool = "openai-hourly")]
async fn complete() -> Result<String, ApiError> {
    Err(ApiError(503))
}

fn main() {}
