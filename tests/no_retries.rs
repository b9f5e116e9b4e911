//! The process-wide "no retries" switch for tests: a failing call makes exactly one attempt
//! and returns at once, with no backoff. (Its own binary: the switch is process-wide.)

mod common;

use common::{fail, ApiError, ScriptedProvider};
use retry_runtime::{observe, resilient, StopReason};
use tokio::time::Instant;

#[resilient(max = 5, base = "1s")]
async fn complete(provider: &ScriptedProvider) -> Result<String, ApiError> {
    provider.call().await
}

#[tokio::test(start_paused = true)]
async fn with_retries_off_a_failing_call_makes_one_attempt_and_no_wait() {
    retry_runtime::testing::set_retries(false);
    let provider = ScriptedProvider::new((0..5).map(|_| fail(ApiError::status(503))));
    let start = Instant::now();
    let (result, report) = observe(complete(&provider)).await;
    assert!(result.is_err());
    assert_eq!(provider.calls(), 1);
    assert_eq!(report.attempts().len(), 1);
    assert_eq!(report.stop(), Some(&StopReason::AttemptsExhausted));
    assert_eq!(start.elapsed(), std::time::Duration::ZERO);

    // And back on: the policy's own five attempts.
    retry_runtime::testing::set_retries(true);
    let provider = ScriptedProvider::new((0..5).map(|_| fail(ApiError::status(503))));
    let (_, report) = observe(complete(&provider)).await;
    assert_eq!(report.attempts().len(), 5);
}
