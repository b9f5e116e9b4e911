// Every key of `#[resilient]` at once, and every kind of `#[retry_on]` entry.
use std::cell::Cell;
use std::time::Duration;

use retry_runtime::{observe, resilient, retry_on, Classify, ErrorClass, Rejected, StopReason};

#[derive(Debug, PartialEq)]
enum ApiError {
    Status(u16),
    Network,
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
            ApiError::Network => ErrorClass::Transport,
            ApiError::Runtime(r) => r.class(),
        }
    }
}

#[resilient(
    backoff = "decorrelated_jitter",
    max = 6,
    base = "1ms",
    cap = "0.004s",
    timeout = "50ms",
    deadline = "1m",
    max_retry_after = "1h",
    crate = "::retry_runtime"
)]
#[retry_on(429, 500..=504, 529, timeout, transport)]
async fn complete(calls: &Cell<u32>) -> Result<&'static str, ApiError> {
    calls.set(calls.get() + 1);
    match calls.get() {
        // Cut by the 50ms timeout, which is retryable because `timeout` is listed.
        1 => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok("too late")
        }
        2 => Err(ApiError::Network),
        3 => Err(ApiError::Status(529)),
        4 => Err(ApiError::Status(502)),
        5 => Err(ApiError::Status(429)),
        _ => Ok("done"),
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let calls = Cell::new(0);
        let (out, report) = observe(complete(&calls)).await;
        assert_eq!(out, Ok("done"));
        assert_eq!(calls.get(), 6);
        let classes: Vec<_> = report.attempts().iter().map(|a| a.class).collect();
        assert_eq!(
            classes,
            [
                Some(ErrorClass::Timeout),
                Some(ErrorClass::Transport),
                Some(ErrorClass::Status(529)),
                Some(ErrorClass::Status(502)),
                Some(ErrorClass::Status(429)),
                None,
            ]
        );
        assert_eq!(report.stop(), Some(&StopReason::Success));
        for attempt in &report.attempts()[1..] {
            assert!(
                attempt.delay_before <= Duration::from_millis(4),
                "{attempt:?}"
            );
        }

        // 505 is outside the listed range: not retried.
        let calls = Cell::new(0);
        let (out, report) = observe(complete_505(&calls)).await;
        assert_eq!(out, Err(ApiError::Status(505)));
        assert_eq!(calls.get(), 1);
        assert_eq!(report.stop(), Some(&StopReason::NotRetryable));
    });
}

#[resilient(max = 6, base = "1ms", timeout = "1s")]
#[retry_on(429, 500..=504, 529, timeout, transport)]
async fn complete_505(calls: &Cell<u32>) -> Result<&'static str, ApiError> {
    calls.set(calls.get() + 1);
    Err(ApiError::Status(505))
}
