use retry_runtime::{resilient, retry_on, Classify, ErrorClass};

#[derive(Debug)]
struct ApiError(u16);

impl Classify for ApiError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Status(self.0)
    }
}

// One mistake in each place the macro checks: the policy, the list and the fn itself. All
// three are reported together.
#[resilient(max = 0)]
#[retry_on(200)]
fn complete() -> Result<String, ApiError> {
    Ok("hi".to_string())
}

fn main() {}
