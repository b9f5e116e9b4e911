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

#[derive(Debug)]
struct Reply(retry_runtime::Spend);

impl retry_runtime::Metered for Reply {
    fn spend(&self) -> retry_runtime::Spend {
        self.0
    }
}

#[resilient(max = 2, name = "openai complete")]
async fn complete() -> Result<Reply, ApiError> {
    Err(ApiError::Status(503))
}

fn main() {}
