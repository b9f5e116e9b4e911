use retry_runtime::{resilient, Classify, ErrorClass};

#[derive(Debug)]
struct ApiError(u16);

impl Classify for ApiError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Status(self.0)
    }
}

// An owned `impl Trait` argument is cloned for each attempt too: it needs `+ Clone`.
#[resilient]
async fn complete(prompt: impl AsRef<str>) -> Result<String, ApiError> {
    Ok(prompt.as_ref().to_string())
}

fn main() {}
