//! Fallback chains on free functions and methods; `#[key]` is removed from the emitted fn.

use std::sync::atomic::{AtomicBool, Ordering};

use retry_runtime::{observe, resilient, Classify, ErrorClass, FallbackKind, Rejected};

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

static DOWN: AtomicBool = AtomicBool::new(false);

async fn backup(prompt: &str, _n: u32) -> Result<String, ApiError> {
    Ok(format!("backup: {prompt}"))
}

#[resilient(max = 1, fallback = [cached, backup], stale_for = "5m")]
async fn complete(#[key] prompt: &str, n: u32) -> Result<String, ApiError> {
    if DOWN.load(Ordering::SeqCst) {
        return Err(ApiError::Status(503));
    }
    Ok(format!("{prompt} #{n}"))
}

struct Client {
    model: String,
}

impl Client {
    async fn cheaper(&self, prompt: String) -> Result<String, ApiError> {
        Ok(format!("{} (cheaper): {prompt}", self.model))
    }

    #[resilient(max = 1, fallback = Self::cheaper)]
    async fn ask(&self, prompt: String) -> Result<String, ApiError> {
        let _ = &prompt;
        Err(ApiError::Status(502))
    }

    #[resilient(max = 1, fallback = cached, key = prompt.to_lowercase())]
    async fn keyed(&self, prompt: &str) -> Result<String, ApiError> {
        if DOWN.load(Ordering::SeqCst) {
            return Err(ApiError::Status(503));
        }
        Ok(format!("{}: {prompt}", self.model))
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        assert_eq!(complete("hi", 1).await.unwrap(), "hi #1");
        let client = Client { model: "m".into() };
        assert_eq!(client.keyed("Hello").await.unwrap(), "m: Hello");
        DOWN.store(true, Ordering::SeqCst);
        let (answer, report) = observe(complete("hi", 2)).await;
        assert_eq!(answer.unwrap(), "hi #1");
        assert_eq!(report.fallback().unwrap().kind, FallbackKind::Cached);
        assert_eq!(complete("new", 3).await.unwrap(), "backup: new");
        let (answer, report) = observe(client.ask("x".into())).await;
        assert_eq!(answer.unwrap(), "m (cheaper): x");
        assert_eq!(
            report.fallback().unwrap().kind,
            FallbackKind::Function("Self::cheaper")
        );
        assert_eq!(client.keyed("HELLO").await.unwrap(), "m: Hello");
    });
}
