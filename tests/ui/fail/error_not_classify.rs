use retry_runtime::resilient;

#[derive(Debug)]
struct ApiError(u16);

#[resilient]
async fn complete() -> Result<String, ApiError> {
    Err(ApiError(503))
}

fn main() {}
