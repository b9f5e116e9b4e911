//! Nothing passes in silence: every way a call can end (each `StopReason`) and every fallback
//! that can serve it (each `FallbackKind`) is made to happen here, and for each the three
//! signals are checked: the report says it, a `tracing` event says it, and a counter counts it.
//! The lists come from `StopReason::NAMES` and `FallbackKind::NAMES`, so a new reason that no
//! case here produces fails the test.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::recorder::TestRecorder;
use common::{ApiError, EventLog, Reply};
use retry_runtime::metric_names::{CALLS, FALLBACKS, REGIME_CHANGES};
use retry_runtime::pace::PaceConfig;
use retry_runtime::{
    configure, observe, resilient, BreakerConfig, Budget, CallReport, Config, FallbackKind,
    PoolConfig, Regime, Spend, StopReason, Streamed,
};

static RECORDER: std::sync::LazyLock<TestRecorder> =
    std::sync::LazyLock::new(TestRecorder::default);

fn setup() {
    let opens_at_once = BreakerConfig {
        failures: 1,
        ..BreakerConfig::default()
    };
    configure(
        Config::default()
            .with_breaker("sig-open", opens_at_once.clone())
            .with_breaker("sig-open-2", opens_at_once)
            .with_breaker(
                "sig-no-budget",
                BreakerConfig {
                    failures: 100,
                    retry_ratio_ppm: 0,
                    min_retries_per_sec: 0,
                    ..BreakerConfig::default()
                },
            )
            .with_breaker(
                "sig-queue-full",
                BreakerConfig {
                    failures: 1,
                    queue_len: 0,
                    ..BreakerConfig::default()
                },
            )
            .with_breaker(
                "sig-queue-wait",
                BreakerConfig {
                    failures: 1,
                    cooldown: Duration::from_secs(300),
                    ..BreakerConfig::default()
                },
            )
            .with_breaker(
                "sig-queue-served",
                BreakerConfig {
                    failures: 1,
                    cooldown: Duration::from_secs(1),
                    ..BreakerConfig::default()
                },
            )
            .with_breaker(
                "sig-shed",
                BreakerConfig {
                    // Never opens here, and allows no retry: its regime says why.
                    failures: 1000,
                    retry_ratio_ppm: 0,
                    min_retries_per_sec: 0,
                    ..BreakerConfig::default()
                },
            )
            .with_pacer(
                "sig-line",
                PaceConfig {
                    rpm: Some(60),
                    burst: Duration::ZERO,
                    adaptive: false,
                    max_wait: Some(Duration::from_millis(500)),
                    ..PaceConfig::default()
                },
            )
            .with_pool(
                "sig-pool",
                PoolConfig {
                    limit: Budget::micros(1_000),
                    window: Duration::from_secs(3600),
                },
            ),
    )
    .unwrap();
    metrics::set_global_recorder((*RECORDER).clone()).unwrap();
}

fn status(code: u16) -> ApiError {
    ApiError::status(code)
}

// ---- one function per ending (its name is what the signals are filtered by) ----

#[resilient(max = 1)]
async fn success() -> Result<Reply, ApiError> {
    Ok(Reply(Spend::ZERO))
}

#[resilient(max = 3, base = "1ms")]
async fn not_retryable() -> Result<Reply, ApiError> {
    Err(status(400))
}

#[resilient(max = 3, base = "1ms")]
async fn server_said_no_retry() -> Result<Reply, ApiError> {
    Err(ApiError::Status {
        code: 503,
        retry_after: None,
        should_retry: Some(false),
    })
}

#[resilient(max = 2, base = "1ms")]
async fn attempts_exhausted() -> Result<Reply, ApiError> {
    Err(status(503))
}

#[resilient(max = 2, base = "1ms", max_retry_after = "10s")]
async fn retry_after_too_long() -> Result<Reply, ApiError> {
    Err(ApiError::rate_limited(Duration::from_secs(60)))
}

#[resilient(max = 2, deadline = "100ms")]
async fn deadline_exceeded() -> Result<Reply, ApiError> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(Reply(Spend::ZERO))
}

#[resilient(max = 1)]
async fn cancelled() -> Result<Reply, ApiError> {
    tokio::time::sleep(Duration::from_secs(10)).await;
    Ok(Reply(Spend::ZERO))
}

#[resilient(max = 1, breaker = "sig-open")]
async fn opens_sig_open() -> Result<Reply, ApiError> {
    Err(status(503))
}

#[resilient(max = 1, breaker = "sig-open")]
async fn circuit_open() -> Result<Reply, ApiError> {
    Ok(Reply(Spend::ZERO))
}

#[resilient(max = 3, base = "1ms", breaker = "sig-open-2")]
async fn breaker_opened() -> Result<Reply, ApiError> {
    Err(status(503))
}

#[resilient(max = 3, base = "1ms", breaker = "sig-no-budget")]
async fn retry_budget_exhausted() -> Result<Reply, ApiError> {
    Err(status(503))
}

#[resilient(max = 1, breaker = "sig-queue-full", fallback = queue)]
async fn queue_full() -> Result<Reply, ApiError> {
    Err(status(503))
}

#[resilient(max = 1, breaker = "sig-queue-wait", fallback = queue, queue_wait = "1s")]
async fn queue_timeout() -> Result<Reply, ApiError> {
    Err(status(503))
}

#[resilient(max = 1, pool = "sig-pool")]
async fn budget_exhausted(cost: Spend) -> Result<Reply, ApiError> {
    Ok(Reply(cost))
}

#[resilient(max = 1, pool = "sig-pool-typo")]
async fn pool_unconfigured() -> Result<Reply, ApiError> {
    Ok(Reply(Spend::ZERO))
}

#[resilient(max = 1, pace = "sig-line")]
async fn pacer_line_full() -> Result<Reply, ApiError> {
    Ok(Reply(Spend::ZERO))
}

#[resilient(max = 1, breaker = "sig-shed")]
async fn shed_answered() -> Result<Reply, ApiError> {
    Ok(Reply(Spend::ZERO))
}

#[resilient(max = 1, timeout = "10ms", breaker = "sig-shed")]
async fn shed_timed_out() -> Result<Reply, ApiError> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(Reply(Spend::ZERO))
}

#[resilient(max = 3, base = "1ms", breaker = "sig-shed")]
async fn shed() -> Result<Reply, ApiError> {
    Err(status(503))
}

/// A stream of two chunks, then a cut connection.
fn cut_stream() -> Streamed<futures::stream::Iter<std::vec::IntoIter<Result<String, ApiError>>>> {
    Streamed::new(futures::stream::iter(vec![
        Ok("a".to_string()),
        Ok("b".to_string()),
        Err(ApiError::Network),
    ]))
}

#[resilient(max = 2, base = "1ms")]
async fn stream_cut(
) -> Result<Streamed<futures::stream::Iter<std::vec::IntoIter<Result<String, ApiError>>>>, ApiError>
{
    Ok(cut_stream())
}

// ---- fallbacks ----

static DOWN: AtomicBool = AtomicBool::new(false);

#[resilient(max = 1, fallback = cached)]
async fn served_cached(#[key] prompt: &str) -> Result<String, ApiError> {
    if DOWN.load(Ordering::SeqCst) {
        Err(status(503))
    } else {
        Ok(prompt.to_string())
    }
}

#[resilient(max = 1)]
async fn backup() -> Result<String, ApiError> {
    Ok("backup".into())
}

#[resilient(max = 1, fallback = backup)]
async fn served_by_function() -> Result<String, ApiError> {
    Err(status(503))
}

static RECOVERED: AtomicBool = AtomicBool::new(false);

#[resilient(max = 1, breaker = "sig-queue-served", fallback = queue, queue_wait = "30s")]
async fn served_by_queue() -> Result<String, ApiError> {
    if RECOVERED.swap(true, Ordering::SeqCst) {
        Ok("after recovery".into())
    } else {
        Err(status(503))
    }
}

/// The three signals of one ending at `function`: its report, a "call finished" event, a
/// `retry_runtime_calls_total{function, stop}` increment.
fn assert_signals(log: &EventLog, function: &str, report: &CallReport, stop: &str) {
    let path = format!("signals::{function}");
    assert_eq!(report.function(), path, "report of {function}");
    assert_eq!(
        report.stop().map(StopReason::as_str),
        Some(stop),
        "{function}: {report}"
    );
    let events = log
        .with_message("call finished")
        .into_iter()
        .filter(|e| e.field("function") == Some(&path) && e.field("stop") == Some(stop))
        .count();
    assert!(
        events >= 1,
        "{function}: no `call finished` event with stop={stop}"
    );
    assert!(
        RECORDER.get(CALLS, &[("function", &path), ("stop", stop)]) >= 1,
        "{function}: {CALLS}{{stop={stop}}} not counted"
    );
}

#[tokio::test(start_paused = true)]
async fn every_ending_and_every_fallback_has_a_report_an_event_and_a_metric() {
    setup();
    let log = EventLog::global();
    let mut seen = BTreeSet::new();
    let mut check = |function: &str, report: CallReport, stop: &'static str| {
        assert_signals(log, function, &report, stop);
        seen.insert(stop);
    };

    check("success", observe(success()).await.1, "success");
    check(
        "not_retryable",
        observe(not_retryable()).await.1,
        "not_retryable",
    );
    check(
        "server_said_no_retry",
        observe(server_said_no_retry()).await.1,
        "server_said_no_retry",
    );
    check(
        "attempts_exhausted",
        observe(attempts_exhausted()).await.1,
        "attempts_exhausted",
    );
    check(
        "retry_after_too_long",
        observe(retry_after_too_long()).await.1,
        "retry_after_too_long",
    );
    check(
        "deadline_exceeded",
        observe(deadline_exceeded()).await.1,
        "deadline_exceeded",
    );
    let (_, report) = observe(async {
        tokio::select! {
            _ = cancelled() => unreachable!("the call sleeps for 10 s"),
            _ = tokio::time::sleep(Duration::from_millis(1)) => {}
        }
    })
    .await;
    check("cancelled", report, "cancelled");
    let _ = opens_sig_open().await;
    check(
        "circuit_open",
        observe(circuit_open()).await.1,
        "circuit_open",
    );
    check(
        "breaker_opened",
        observe(breaker_opened()).await.1,
        "breaker_opened",
    );
    check(
        "retry_budget_exhausted",
        observe(retry_budget_exhausted()).await.1,
        "retry_budget_exhausted",
    );
    check("queue_full", observe(queue_full()).await.1, "queue_full");
    check(
        "queue_timeout",
        observe(queue_timeout()).await.1,
        "queue_timeout",
    );
    assert!(budget_exhausted(Spend::from_micros(1_000)).await.is_ok());
    check(
        "budget_exhausted",
        observe(budget_exhausted(Spend::from_micros(1))).await.1,
        "budget_exhausted",
    );
    check(
        "pool_unconfigured",
        observe(pool_unconfigured()).await.1,
        "pool_unconfigured",
    );
    // The pacer's first permit goes to the first call; the second call's turn (1 s later) is
    // past the line's 500 ms.
    assert!(pacer_line_full().await.is_ok());
    check(
        "pacer_line_full",
        observe(pacer_line_full()).await.1,
        "pacer_line_full",
    );
    // The regime: twelve answers, then four attempts cut by their timeout a second later,
    // then, the next second, a failure whose retry the breaker sheds: it reads an overload
    // from the timeouts (a quarter of the attempts), with its allowance halved.
    for _ in 0..12 {
        assert!(shed_answered().await.is_ok());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for _ in 0..4 {
        assert!(shed_timed_out().await.is_err());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, report) = observe(shed()).await;
    assert_eq!(report.regime(), Some(Regime::Overload), "{report}");
    assert_eq!(
        report.stop(),
        Some(&StopReason::Shed {
            regime: Regime::Overload
        })
    );
    check("shed", report, "shed");
    assert!(
        log.with_message("breaker regime").into_iter().any(|e| {
            e.field("breaker") == Some("sig-shed")
                && e.field("to") == Some("overload")
                && e.field("why") == Some("timeouts")
        }),
        "a WARN event says the regime changed, and why"
    );
    assert!(
        RECORDER.get(
            REGIME_CHANGES,
            &[("breaker", "sig-shed"), ("to", "overload")]
        ) >= 1
    );

    // A streaming call cut after its second chunk: committed, so not retried.
    let (text, report) = observe(async {
        use futures::StreamExt;
        let mut stream = stream_cut().await.unwrap();
        let mut text = String::new();
        while let Some(Ok(chunk)) = stream.next().await {
            text.push_str(&chunk);
        }
        text
    })
    .await;
    assert_eq!(text, "ab");
    assert_eq!(
        report.stop(),
        Some(&StopReason::StreamCut {
            chunks: 2,
            class: retry_runtime::ErrorClass::Transport
        })
    );
    check("stream_cut", report, "stream_cut");

    let expected: BTreeSet<&str> = StopReason::NAMES.iter().copied().collect();
    assert_eq!(seen, expected, "every StopReason is produced and signalled");

    // Fallbacks: the report says which served the call, a WARN event and a counter too.
    let mut served = BTreeSet::new();
    let mut fallback = |function: &str, report: CallReport, kind: &'static str| {
        let path = format!("signals::{function}");
        let got = report.fallback().map(|f| f.kind.as_str());
        assert_eq!(got, Some(kind), "{function}: {report}");
        let events = log
            .with_message("degraded answer served by a fallback")
            .into_iter()
            .filter(|e| e.field("function") == Some(&path) && e.field("fallback") == Some(kind))
            .count();
        assert!(events >= 1, "{function}: no degraded-answer event");
        assert!(
            RECORDER.get(FALLBACKS, &[("function", &path), ("kind", kind)]) >= 1,
            "{function}: {FALLBACKS}{{kind={kind}}} not counted"
        );
        served.insert(kind);
    };
    assert_eq!(served_cached("hello").await.unwrap(), "hello");
    DOWN.store(true, Ordering::SeqCst);
    let (answer, report) = observe(served_cached("hello")).await;
    assert_eq!(answer.unwrap(), "hello");
    fallback("served_cached", report, "cached");
    let (answer, report) = observe(served_by_function()).await;
    assert_eq!(answer.unwrap(), "backup");
    fallback("served_by_function", report, "function");
    let (answer, report) = observe(served_by_queue()).await;
    assert_eq!(answer.unwrap(), "after recovery");
    fallback("served_by_queue", report, "queue");
    let kinds: BTreeSet<&str> = FallbackKind::NAMES.iter().copied().collect();
    assert_eq!(served, kinds, "every FallbackKind serves and is signalled");
}
