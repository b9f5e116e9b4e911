// Bodies with `?` (with and without an error conversion) and early `return`s: they leave the
// attempt, not the whole call, so the policy still decides whether to retry.
use std::cell::Cell;
use std::num::ParseIntError;

use retry_runtime::{observe, resilient, Classify, ErrorClass, StopReason};

#[derive(Debug, PartialEq)]
enum ApiError {
    Status(u16),
    BadNumber,
}

impl From<ParseIntError> for ApiError {
    fn from(_: ParseIntError) -> Self {
        ApiError::BadNumber
    }
}

impl Classify for ApiError {
    fn class(&self) -> ErrorClass {
        match self {
            ApiError::Status(code) => ErrorClass::Status(*code),
            ApiError::BadNumber => ErrorClass::Permanent,
        }
    }
}

struct Counter(Cell<u32>);

impl Counter {
    fn next(&self) -> u32 {
        self.0.set(self.0.get() + 1);
        self.0.get()
    }

    fn status(&self, fail_until: u32) -> Result<u32, ApiError> {
        let n = self.next();
        if n < fail_until {
            Err(ApiError::Status(503))
        } else {
            Ok(n)
        }
    }
}

#[resilient(base = "1ms")]
async fn parse(counter: &Counter, text: &str) -> Result<u64, ApiError> {
    counter.status(2)?; // same error type
    let n: u64 = text.trim().parse()?; // converted with `From`
    if n == 0 {
        return Err(ApiError::Status(429));
    }
    if n > 100 {
        return Ok(100);
    }
    Ok(n)
}

#[resilient(base = "1ms", max = 2)]
async fn nested(counter: &Counter) -> Result<u32, ApiError> {
    let inner = async { counter.status(2) };
    let value = inner.await?;
    let closure = |x: u32| -> Result<u32, ApiError> { Ok(x * 10) };
    closure(value)
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let counter = Counter(Cell::new(0));
        let (out, report) = observe(parse(&counter, " 42 ")).await;
        assert_eq!(out, Ok(42));
        assert_eq!(report.attempts().len(), 2);

        let counter = Counter(Cell::new(10));
        assert_eq!(parse(&counter, "1000").await, Ok(100));

        // A `?` on a permanent error stops at once.
        let counter = Counter(Cell::new(10));
        let (out, report) = observe(parse(&counter, "many")).await;
        assert_eq!(out, Err(ApiError::BadNumber));
        assert_eq!(report.attempts().len(), 1);
        assert_eq!(report.stop(), Some(&StopReason::NotRetryable));

        // An early `return Err(429)` is retried until `max` (3 by default).
        let counter = Counter(Cell::new(10));
        let (out, report) = observe(parse(&counter, "0")).await;
        assert_eq!(out, Err(ApiError::Status(429)));
        assert_eq!(report.attempts().len(), 3);
        assert_eq!(report.stop(), Some(&StopReason::AttemptsExhausted));

        let counter = Counter(Cell::new(0));
        assert_eq!(nested(&counter).await, Ok(20));
    });
}
