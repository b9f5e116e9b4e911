// Every backoff name compiles and spaces the retries as documented.
use std::cell::Cell;
use std::time::Duration;

use retry_runtime::{observe, resilient, CallReport, Classify, ErrorClass};

#[derive(Debug, PartialEq)]
struct ApiError(u16);

impl Classify for ApiError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Status(self.0)
    }
}

/// Fails twice with 503, then succeeds.
fn twice(calls: &Cell<u32>) -> Result<u32, ApiError> {
    calls.set(calls.get() + 1);
    if calls.get() <= 2 {
        Err(ApiError(503))
    } else {
        Ok(calls.get())
    }
}

#[resilient(backoff = "exp_jitter", base = "1ms", cap = "4ms")]
async fn exp_jitter(calls: &Cell<u32>) -> Result<u32, ApiError> {
    twice(calls)
}

#[resilient(backoff = "equal_jitter", base = "1ms", cap = "4ms")]
async fn equal_jitter(calls: &Cell<u32>) -> Result<u32, ApiError> {
    twice(calls)
}

#[resilient(backoff = "decorrelated_jitter", base = "1ms", cap = "4ms")]
async fn decorrelated_jitter(calls: &Cell<u32>) -> Result<u32, ApiError> {
    twice(calls)
}

#[resilient(backoff = "exp", base = "1ms", cap = "4ms")]
async fn exp(calls: &Cell<u32>) -> Result<u32, ApiError> {
    twice(calls)
}

#[resilient(backoff = "constant", base = "1ms", cap = "4ms")]
async fn constant(calls: &Cell<u32>) -> Result<u32, ApiError> {
    twice(calls)
}

fn delays(report: &CallReport) -> Vec<Duration> {
    report.attempts().iter().map(|a| a.delay_before).collect()
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let ms = Duration::from_millis;
        let zero = Duration::ZERO;

        let (out, report) = observe(exp_jitter(&Cell::new(0))).await;
        assert_eq!(out, Ok(3));
        let d = delays(&report);
        assert!(d[1] <= ms(1) && d[2] <= ms(2), "{d:?}");

        let (out, report) = observe(equal_jitter(&Cell::new(0))).await;
        assert_eq!(out, Ok(3));
        let d = delays(&report);
        assert!(d[1] >= ms(1) / 2 && d[1] <= ms(1), "{d:?}");
        assert!(d[2] >= ms(1) && d[2] <= ms(2), "{d:?}");

        let (out, report) = observe(decorrelated_jitter(&Cell::new(0))).await;
        assert_eq!(out, Ok(3));
        let d = delays(&report);
        assert!(d[1..].iter().all(|d| *d >= ms(1) && *d <= ms(4)), "{d:?}");

        let (out, report) = observe(exp(&Cell::new(0))).await;
        assert_eq!(out, Ok(3));
        assert_eq!(delays(&report), [zero, ms(1), ms(2)]);

        let (out, report) = observe(constant(&Cell::new(0))).await;
        assert_eq!(out, Ok(3));
        assert_eq!(delays(&report), [zero, ms(1), ms(1)]);
    });
}
