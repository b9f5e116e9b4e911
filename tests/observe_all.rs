//! `observe_all` reports every `#[resilient]` call inside the observed future, in the order
//! they started (a fallback's own call right after the call it serves); `observe` keeps
//! reporting the first one.

use retry_runtime::{observe, observe_all, resilient, FallbackKind, Rejected, StopReason};

#[resilient(max = 1)]
async fn step(n: u32) -> Result<u32, Rejected> {
    Ok(n)
}

#[resilient(max = 1)]
async fn backup(n: u32) -> Result<u32, Rejected> {
    Ok(n + 100)
}

#[resilient(max = 2, base = "1ms", fallback = backup)]
async fn flaky(n: u32) -> Result<u32, Rejected> {
    // A timeout-class failure: retried, then the fallback serves.
    Err(Rejected::AttemptTimedOut {
        timeout: std::time::Duration::from_secs(1),
    })
    .map(|()| n)
}

#[tokio::test(start_paused = true)]
async fn every_call_is_reported_in_the_order_it_started() {
    let ((a, b, c), reports) =
        observe_all(async { (step(1).await, flaky(2).await, step(3).await) }).await;
    assert_eq!((a.unwrap(), b.unwrap(), c.unwrap()), (1, 102, 3));
    let functions: Vec<_> = reports.iter().map(|r| r.function()).collect();
    assert_eq!(
        functions,
        [
            "observe_all::step",
            "observe_all::flaky",
            "observe_all::backup",
            "observe_all::step"
        ]
    );
    assert_eq!(reports[1].attempts().len(), 2);
    assert_eq!(reports[1].stop(), Some(&StopReason::AttemptsExhausted));
    assert_eq!(
        reports[1].fallback().map(|f| f.kind),
        Some(FallbackKind::Function("backup"))
    );
    assert_eq!(reports[2].stop(), Some(&StopReason::Success));

    // `observe` still gives the first call's report.
    let (_, first) = observe(async { (step(1).await, step(2).await) }).await;
    assert_eq!(first.function(), "observe_all::step");
    assert_eq!(first.attempts().len(), 1);
}
