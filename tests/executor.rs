//! The executor against a scripted provider, on paused time.

mod common;

use std::time::Duration;

use common::{fail, ok, slow, ApiError, ScriptedProvider};
use retry_runtime::{observe, resilient, retry_on, ErrorClass, StopReason};
use tokio::time::Instant;

const S: Duration = Duration::from_secs(1);

#[resilient(max = 5, base = "100ms", cap = "2s")]
async fn default_policy(provider: &ScriptedProvider) -> Result<String, ApiError> {
    provider.call().await
}

#[tokio::test(start_paused = true)]
async fn a_400_is_attempted_exactly_once() {
    let provider = ScriptedProvider::new([fail(ApiError::status(400)), ok("never")]);
    let (out, report) = observe(default_policy(&provider)).await;
    assert_eq!(out, Err(ApiError::status(400)));
    assert_eq!(provider.calls(), 1);
    assert_eq!(report.stop(), Some(&StopReason::NotRetryable));
    assert_eq!(report.attempts()[0].class, Some(ErrorClass::Status(400)));
}

#[tokio::test(start_paused = true)]
async fn a_429_with_retry_after_waits_at_least_that_long() {
    let provider = ScriptedProvider::new([fail(ApiError::rate_limited(7 * S)), ok("hi")]);
    let start = Instant::now();
    let (out, report) = observe(default_policy(&provider)).await;
    assert_eq!(out.unwrap(), "hi");
    assert_eq!(provider.calls(), 2);
    assert!(
        start.elapsed() >= 7 * S,
        "retried after {:?}",
        start.elapsed()
    );
    assert!(report.attempts()[1].delay_before >= 7 * S);
    assert_eq!(report.attempts()[0].retry_after, Some(7 * S));
}

#[resilient(max = 5, max_retry_after = "30s")]
async fn bounded_retry_after(provider: &ScriptedProvider) -> Result<String, ApiError> {
    provider.call().await
}

#[tokio::test(start_paused = true)]
async fn retry_after_above_the_bound_stops_at_once() {
    let provider = ScriptedProvider::new([fail(ApiError::rate_limited(120 * S)), ok("late")]);
    let start = Instant::now();
    let (out, report) = observe(bounded_retry_after(&provider)).await;
    assert!(out.is_err());
    assert_eq!(provider.calls(), 1);
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(
        report.stop(),
        Some(&StopReason::RetryAfterTooLong {
            requested: 120 * S,
            max: 30 * S
        })
    );
}

#[resilient(max = 5)]
#[retry_on(429)]
async fn only_429(provider: &ScriptedProvider) -> Result<String, ApiError> {
    provider.call().await
}

#[tokio::test(start_paused = true)]
async fn retry_on_429_does_not_retry_a_503() {
    let provider = ScriptedProvider::new([fail(ApiError::status(503)), ok("x")]);
    let (out, report) = observe(only_429(&provider)).await;
    assert_eq!(out, Err(ApiError::status(503)));
    assert_eq!(provider.calls(), 1);
    assert_eq!(report.stop(), Some(&StopReason::NotRetryable));

    let provider = ScriptedProvider::new([fail(ApiError::status(429)), ok("x")]);
    assert_eq!(only_429(&provider).await.unwrap(), "x");
    assert_eq!(provider.calls(), 2);
}

#[resilient(max = 3, timeout = "2s", base = "100ms")]
async fn with_timeout(provider: &ScriptedProvider) -> Result<String, ApiError> {
    provider.call().await
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_attempt_is_a_retryable_failure() {
    let provider = ScriptedProvider::new([slow(ok("too late"), 10 * S), ok("fast")]);
    let (out, report) = observe(with_timeout(&provider)).await;
    assert_eq!(out.unwrap(), "fast");
    assert_eq!(provider.calls(), 2);
    let first = &report.attempts()[0];
    assert_eq!(first.class, Some(ErrorClass::Timeout));
    assert_eq!(first.elapsed, 2 * S);
    assert_eq!(report.stop(), Some(&StopReason::Success));
}

#[tokio::test(start_paused = true)]
async fn every_attempt_timing_out_returns_the_runtime_error() {
    let provider = ScriptedProvider::new((0..3).map(|_| slow(ok("late"), 10 * S)));
    let (out, report) = observe(with_timeout(&provider)).await;
    assert_eq!(
        out,
        Err(ApiError::Runtime(
            retry_runtime::Rejected::AttemptTimedOut { timeout: 2 * S }
        ))
    );
    assert_eq!(provider.calls(), 3);
    assert_eq!(report.stop(), Some(&StopReason::AttemptsExhausted));
}

#[resilient(max = 20, backoff = "constant", base = "3s", deadline = "10s")]
async fn with_deadline(provider: &ScriptedProvider) -> Result<String, ApiError> {
    provider.call().await
}

#[tokio::test(start_paused = true)]
async fn no_wait_starts_that_would_end_past_the_deadline() {
    let provider = ScriptedProvider::new((0..20).map(|_| fail(ApiError::status(503))));
    let start = Instant::now();
    let (out, report) = observe(with_deadline(&provider)).await;
    assert_eq!(out, Err(ApiError::status(503)));
    // Attempts at 0s, 3s, 6s; the next would start at 9s and is allowed; at 12s it is not.
    assert_eq!(provider.calls(), 4);
    assert_eq!(start.elapsed(), 9 * S);
    assert_eq!(report.stop(), Some(&StopReason::DeadlineExceeded));
}

#[tokio::test(start_paused = true)]
async fn the_deadline_cuts_an_attempt_in_flight() {
    let provider = ScriptedProvider::new([fail(ApiError::status(503)), slow(ok("x"), 60 * S)]);
    let start = Instant::now();
    let (out, report) = observe(with_deadline(&provider)).await;
    assert!(matches!(
        out,
        Err(ApiError::Runtime(
            retry_runtime::Rejected::DeadlineExceeded { .. }
        ))
    ));
    assert_eq!(start.elapsed(), 10 * S);
    assert_eq!(report.stop(), Some(&StopReason::DeadlineExceeded));
}

#[tokio::test(start_paused = true)]
async fn x_should_retry_false_stops_and_true_overrides() {
    let no = ApiError::Status {
        code: 503,
        retry_after: None,
        should_retry: Some(false),
    };
    let provider = ScriptedProvider::new([fail(no), ok("x")]);
    let (_, report) = observe(default_policy(&provider)).await;
    assert_eq!(provider.calls(), 1);
    assert_eq!(report.stop(), Some(&StopReason::ServerSaidNoRetry));

    let yes = ApiError::Status {
        code: 503,
        retry_after: None,
        should_retry: Some(true),
    };
    let provider = ScriptedProvider::new([fail(yes), ok("x")]);
    assert_eq!(only_429(&provider).await.unwrap(), "x");
    assert_eq!(provider.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn max_attempts_is_a_hard_cap() {
    let provider = ScriptedProvider::new((0..10).map(|_| fail(ApiError::Network)));
    let (out, report) = observe(default_policy(&provider)).await;
    assert_eq!(out, Err(ApiError::Network));
    assert_eq!(provider.calls(), 5);
    assert_eq!(report.attempts().len(), 5);
    assert_eq!(report.stop(), Some(&StopReason::AttemptsExhausted));
}

#[tokio::test(start_paused = true)]
async fn same_seed_same_delays() {
    async fn delays(seed: u64) -> Vec<Duration> {
        retry_runtime::testing::seed_jitter(seed);
        let provider = ScriptedProvider::new((0..4).map(|_| fail(ApiError::status(503))));
        let (_, report) = observe(default_policy(&provider)).await;
        report.attempts().iter().map(|a| a.delay_before).collect()
    }
    let a = delays(9).await;
    let b = delays(9).await;
    let c = delays(10).await;
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_call_reports_cancelled() {
    let provider = ScriptedProvider::new([slow(ok("x"), 60 * S)]);
    let (out, report) =
        observe(async { tokio::time::timeout(S, default_policy(&provider)).await }).await;
    assert!(out.is_err());
    assert_eq!(report.stop(), Some(&StopReason::Cancelled));
}

#[tokio::test]
async fn unobserved_calls_still_work_and_observe_without_a_call_is_empty() {
    let provider = ScriptedProvider::new([ok("a")]);
    assert_eq!(default_policy(&provider).await.unwrap(), "a");
    let ((), report) = observe(async {}).await;
    assert_eq!(report.stop(), None);
    assert!(report.attempts().is_empty());
}

#[resilient(max = 2, base = "250ms", backoff = "constant")]
async fn logged(provider: &ScriptedProvider) -> Result<String, ApiError> {
    provider.call().await
}

#[tokio::test(start_paused = true)]
async fn each_retry_and_each_stop_is_an_event_a_log_search_can_filter_on() {
    let log = common::EventLog::global();
    let provider =
        ScriptedProvider::new([fail(ApiError::status(503)), fail(ApiError::status(503))]);
    assert!(logged(&provider).await.is_err());
    let mine = |message: &str| -> Vec<common::Event> {
        log.with_message(message)
            .into_iter()
            .filter(|e| e.field("function") == Some("executor::logged"))
            .collect()
    };
    let retries = mine("retrying");
    assert_eq!(retries.len(), 1);
    let r = &retries[0];
    assert_eq!(r.level, tracing::Level::INFO);
    assert_eq!(r.field("attempt"), Some("1"));
    assert_eq!(r.field("class"), Some("status_503"));
    assert_eq!(r.field("status"), Some("503"));
    assert_eq!(r.field("delay_ms"), Some("250"));
    let stops = mine("call finished");
    assert_eq!(stops.len(), 1);
    let s = &stops[0];
    assert_eq!(s.level, tracing::Level::WARN);
    assert_eq!(s.field("stop"), Some("attempts_exhausted"));
    assert_eq!(s.field("attempts"), Some("2"));
}
