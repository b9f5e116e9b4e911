// `#[retry_on]` works written above or below `#[resilient]`, and with full paths.
use std::cell::Cell;

use retry_runtime::{observe, resilient, retry_on, Classify, ErrorClass, StopReason};

#[derive(Debug, PartialEq)]
struct ApiError(u16);

impl Classify for ApiError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Status(self.0)
    }
}

/// Fails with each scripted code once, then succeeds.
struct Script {
    codes: Vec<u16>,
    calls: Cell<usize>,
}

impl Script {
    fn new(codes: &[u16]) -> Self {
        Script {
            codes: codes.to_vec(),
            calls: Cell::new(0),
        }
    }

    fn call(&self) -> Result<usize, ApiError> {
        let n = self.calls.get();
        self.calls.set(n + 1);
        match self.codes.get(n) {
            Some(code) => Err(ApiError(*code)),
            None => Ok(n + 1),
        }
    }
}

#[resilient(base = "1ms", max = 5)]
#[retry_on(503)]
async fn below(script: &Script) -> Result<usize, ApiError> {
    script.call()
}

#[retry_on(503)]
#[resilient(base = "1ms", max = 5)]
async fn above(script: &Script) -> Result<usize, ApiError> {
    script.call()
}

#[retry_runtime::retry_on(503)]
#[retry_runtime::resilient(base = "1ms", max = 5)]
async fn above_with_paths(script: &Script) -> Result<usize, ApiError> {
    script.call()
}

#[retry_runtime::resilient(base = "1ms", max = 5)]
#[retry_runtime::retry_on(503)]
async fn below_with_paths(script: &Script) -> Result<usize, ApiError> {
    script.call()
}

// Other attributes around ours are kept.
#[inline]
#[retry_on(503)]
#[must_use = "the answer"]
#[resilient(base = "1ms", max = 5)]
#[allow(clippy::needless_return)]
async fn mixed(script: &Script) -> Result<usize, ApiError> {
    return script.call();
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        macro_rules! check {
            ($f:ident) => {{
                // 503 is listed: retried.
                let script = Script::new(&[503, 503]);
                let (out, report) = observe($f(&script)).await;
                assert_eq!(out, Ok(3), stringify!($f));
                assert_eq!(report.attempts().len(), 3, stringify!($f));

                // 429 is in the default set but not in this list: not retried.
                let script = Script::new(&[429]);
                let (out, report) = observe($f(&script)).await;
                assert_eq!(out, Err(ApiError(429)), stringify!($f));
                assert_eq!(report.attempts().len(), 1, stringify!($f));
                assert_eq!(report.stop(), Some(&StopReason::NotRetryable));
            }};
        }
        check!(below);
        check!(above);
        check!(above_with_paths);
        check!(below_with_paths);
        check!(mixed);
    });
}
