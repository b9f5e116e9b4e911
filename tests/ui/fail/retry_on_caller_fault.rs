use retry_runtime::{resilient, retry_on, Classify, ErrorClass};

#[derive(Debug)]
struct ApiError(u16);

impl Classify for ApiError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Status(self.0)
    }
}

#[resilient]
#[retry_on(400, 401, 403, 404, 413, 422, 429)]
async fn complete() -> Result<String, ApiError> {
    Ok("hi".to_string())
}

fn main() {}
