use retry_runtime::{resilient, Classify, ErrorClass};

#[derive(Debug)]
struct ApiError(u16);

impl Classify for ApiError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Status(self.0)
    }
}

struct Prompt(String);

#[resilient]
async fn complete(prompt: Prompt) -> Result<String, ApiError> {
    Ok(prompt.0)
}

fn main() {}
