//! `#[resilient(pace = "...")]`: every attempt waits for the named pacer's permit, the wait is
//! in the report, a 429 cuts the pacer's rate, and a permit that could only come after the
//! deadline refuses the call instead of waiting past it.

mod common;

use std::sync::Once;
use std::time::Duration;

use common::{fail, ok, slow, ApiError, ScriptedProvider};
use retry_runtime::pace::{pacer, PaceConfig};
use retry_runtime::{configure, observe, resilient, Config, Rejected, StopReason};
use tokio::time::Instant;

const S: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let known = |rpm| PaceConfig {
            rpm: Some(rpm),
            adaptive: false,
            burst: Duration::ZERO,
            ..PaceConfig::default()
        };
        configure(
            Config::default()
                .with_pacer("sixty-a-minute", known(60))
                .with_pacer("one-a-minute", known(1))
                .with_pacer("one-a-second", known(60))
                .with_pacer("one-per-4s", known(15))
                // The provider's hint below asks for a 10 s wait: no line limit of its own.
                .with_pacer(
                    "hinted",
                    PaceConfig {
                        max_wait: None,
                        ..PaceConfig::default()
                    },
                )
                .with_pacer(
                    "short-line",
                    PaceConfig {
                        max_wait: Some(2 * S),
                        ..known(60)
                    },
                ),
        )
        .unwrap();
    });
}

#[resilient(max = 3, base = "10ms", pace = "sixty-a-minute")]
async fn paced(provider: &ScriptedProvider) -> Result<String, ApiError> {
    provider.call().await
}

#[tokio::test(start_paused = true)]
async fn every_attempt_waits_for_a_permit_and_the_report_says_how_long() {
    setup();
    let provider = ScriptedProvider::new([ok("a"), ok("b"), fail(ApiError::status(503)), ok("c")]);
    let start = Instant::now();
    let (_, first) = observe(paced(&provider)).await;
    let (_, second) = observe(paced(&provider)).await;
    // 60 a minute, no burst: one permit a second, first attempts and retries alike.
    assert_eq!(first.paced(), Duration::ZERO);
    assert_eq!(second.paced(), S);
    let (out, third) = observe(paced(&provider)).await;
    assert_eq!(out.unwrap(), "c");
    let waits: Vec<_> = third.attempts().iter().map(|a| a.paced).collect();
    assert_eq!(waits.len(), 2);
    assert_eq!(waits[0], S);
    // The retry waited its backoff (10 ms) and then for the rest of its permit's second.
    let spaced = third.attempts()[1].delay_before + waits[1];
    assert!(
        spaced.abs_diff(S) <= Duration::from_millis(1),
        "{spaced:?} (tokio's timer ticks in milliseconds)"
    );
    assert_eq!(start.elapsed(), 3 * S);
    assert!(format!("{third}").contains("paced"));
}

#[resilient(max = 2, deadline = "5s", pace = "one-a-minute")]
async fn impatient(provider: &ScriptedProvider) -> Result<String, ApiError> {
    provider.call().await
}

#[tokio::test(start_paused = true)]
async fn a_permit_after_the_deadline_refuses_the_call_at_once() {
    setup();
    let provider = ScriptedProvider::new([ok("first"), ok("never")]);
    assert_eq!(impatient(&provider).await.unwrap(), "first");
    let start = Instant::now();
    let (out, report) = observe(impatient(&provider)).await;
    assert!(matches!(
        out,
        Err(ApiError::Runtime(Rejected::DeadlineExceeded { .. }))
    ));
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "refused at once, not at the deadline"
    );
    assert_eq!(report.stop(), Some(&StopReason::DeadlineExceeded));
    assert!(report.attempts().is_empty());
    assert_eq!(provider.calls(), 1);
}

#[resilient(max = 1, pace = "learns")]
async fn adaptive(provider: &ScriptedProvider) -> Result<String, ApiError> {
    provider.call().await
}

#[tokio::test(start_paused = true)]
async fn a_429_through_resilient_cuts_the_pacers_rate() {
    setup();
    // Unconfigured: adaptive, no known limit, no rate until the provider pushes back.
    let provider = ScriptedProvider::new(
        (0..20)
            .map(|_| ok("fine"))
            .chain([fail(ApiError::status(429))]),
    );
    for _ in 0..20 {
        assert!(adaptive(&provider).await.is_ok());
        tokio::time::advance(Duration::from_millis(50)).await;
    }
    assert_eq!(
        pacer("learns").rate(),
        None,
        "no limit learned from successes alone"
    );
    assert!(adaptive(&provider).await.is_err());
    let rate = pacer("learns").rate().expect("a 429 sets a rate");
    assert!(
        rate > 0.0 && rate < 20.0,
        "cut below the ~20/s it was sent at: {rate}"
    );
}

/// An answer that carries the provider's rate-limit numbers, as `HttpError` does with the
/// `http` feature.
#[derive(Debug)]
struct Throttled {
    remaining: u64,
    reset: Duration,
}

impl From<Rejected> for Throttled {
    fn from(_: Rejected) -> Self {
        Throttled {
            remaining: 0,
            reset: Duration::ZERO,
        }
    }
}

impl retry_runtime::Classify for Throttled {
    fn class(&self) -> retry_runtime::ErrorClass {
        retry_runtime::ErrorClass::Status(429)
    }
    fn rate_limits(&self) -> Option<retry_runtime::pace::ProviderLimits> {
        Some(retry_runtime::pace::ProviderLimits {
            limit_requests: Some(1),
            remaining_requests: Some(self.remaining),
            reset_requests: Some(self.reset),
            ..Default::default()
        })
    }
}

#[resilient(max = 1, pace = "hinted")]
async fn hinted(fail: bool) -> Result<&'static str, Throttled> {
    if fail {
        return Err(Throttled {
            remaining: 0,
            reset: 10 * S,
        });
    }
    Ok("ok")
}

#[tokio::test(start_paused = true)]
async fn the_providers_rate_limit_numbers_reach_the_pacer() {
    setup();
    assert!(hinted(true).await.is_err()); // "1 a window, 0 left, resets in 10 s"
    let (out, report) = observe(hinted(false)).await;
    assert_eq!(out.unwrap(), "ok");
    // The pacer held the next request until the provider said it would have room: 10 s,
    // where a 429 alone could not slow it below 0.5 requests/s (a 2 s wait).
    assert!(
        report.paced() >= Duration::from_millis(9_500),
        "paced only {:?}",
        report.paced()
    );
}

#[resilient(max = 1, timeout = "1s", pace = "one-a-second")]
async fn paced_with_timeout(provider: &ScriptedProvider) -> Result<String, ApiError> {
    provider.call().await
}

#[tokio::test(start_paused = true)]
async fn a_paced_first_attempts_timeout_counts_from_its_permit() {
    setup();
    let provider = ScriptedProvider::new([ok("first"), slow(ok("second"), 800 * MS)]);
    assert_eq!(paced_with_timeout(&provider).await.unwrap(), "first");
    // The second call waits 1 s in line, then its attempt takes 0.8 s: within its 1 s timeout,
    // which starts at the permit, not when the call began queueing.
    let (out, report) = observe(paced_with_timeout(&provider)).await;
    assert_eq!(out.unwrap(), "second");
    assert_eq!(report.paced(), S);
}

#[resilient(max = 1, timeout = "2s", deadline = "5s", pace = "one-per-4s")]
async fn paced_near_deadline(provider: &ScriptedProvider) -> Result<String, ApiError> {
    provider.call().await
}

#[tokio::test(start_paused = true)]
async fn a_permit_that_leaves_the_attempt_too_little_time_is_refused_at_once() {
    setup();
    let provider = ScriptedProvider::new([ok("first"), ok("never")]);
    assert_eq!(paced_near_deadline(&provider).await.unwrap(), "first");
    // The next permit is 4 s away; the deadline is 5 s, so the attempt would get 1 s of its
    // 2 s timeout. A permit later than deadline - min(timeout, deadline / 2) = 3 s is refused
    // now rather than buying an attempt that is cut (and counted against a breaker).
    let start = Instant::now();
    let (out, report) = observe(paced_near_deadline(&provider)).await;
    assert!(matches!(
        out,
        Err(ApiError::Runtime(Rejected::DeadlineExceeded { .. }))
    ));
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert!(report.attempts().is_empty());
    assert_eq!(provider.calls(), 1);
}

#[resilient(max = 1, pace = "short-line")]
async fn in_a_short_line(provider: &ScriptedProvider) -> Result<String, ApiError> {
    provider.call().await
}

#[tokio::test(start_paused = true)]
async fn a_call_whose_turn_comes_after_max_wait_is_refused_at_once() {
    setup();
    let provider = ScriptedProvider::new((0..5).map(|_| ok("fine")));
    let start = Instant::now();
    // One a second, a line of at most 2 s: turns at 0, 1 and 2 s; the fourth and fifth would
    // wait 3 and 4 s.
    let calls = (0..5).map(|_| observe(in_a_short_line(&provider)));
    let ended = futures::future::join_all(calls).await;
    let refused: Vec<_> = ended
        .iter()
        .filter(|(result, _)| {
            matches!(
                result,
                Err(ApiError::Runtime(Rejected::PacerLineFull {
                    pacer: "short-line",
                    ..
                }))
            )
        })
        .collect();
    assert_eq!(refused.len(), 2, "{ended:?}");
    for (_, report) in &refused {
        assert_eq!(
            report.stop(),
            Some(&StopReason::PacerLineFull { max_wait: 2 * S })
        );
        assert!(report.attempts().is_empty());
        assert_eq!(report.paced(), Duration::ZERO, "refused before waiting");
    }
    assert_eq!(provider.calls(), 3);
    assert_eq!(
        start.elapsed(),
        2 * S,
        "the third waited its 2 s; nobody longer"
    );
}
