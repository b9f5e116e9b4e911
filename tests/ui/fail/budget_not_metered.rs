use retry_runtime::{resilient, Classify, ErrorClass};

#[derive(Debug)]
struct ApiError(u16);

impl Classify for ApiError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Status(self.0)
    }
}

/// Says nothing about what it cost.
#[derive(Debug)]
struct Reply(String);

#[resilient(max = 3, budget = "0.10usd")]
async fn complete() -> Result<Reply, ApiError> {
    Err(ApiError(503))
}

fn main() {}
