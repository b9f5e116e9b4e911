use retry_runtime::{resilient, Classify, ErrorClass};

#[derive(Debug)]
struct ApiError(u16);

impl Classify for ApiError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Status(self.0)
    }
}

#[resilient]
async fn complete((system, user): (&str, &str)) -> Result<String, ApiError> {
    Ok(format!("{system}{user}"))
}

fn main() {}
