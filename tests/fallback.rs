//! Fallbacks chosen in advance: cached answers with their true age, chains in order, the
//! queue, and no fallback for a caller fault. Every degraded answer is a WARN event and a
//! counter increment.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use common::recorder::TestRecorder;
use common::{ApiError, EventLog};
use retry_runtime::{
    configure, observe, resilient, BreakerConfig, Config, FallbackKind, Rejected, StopReason,
};
use tokio::time::Instant;

const S: Duration = Duration::from_secs(1);

fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let queue = |cooldown: Duration| BreakerConfig {
            failures: 1,
            cooldown,
            queue_len: 100,
            queue_release_per_sec: 10,
            ..BreakerConfig::default()
        };
        configure(
            Config::default()
                .with_breaker("queue-test", queue(10 * S))
                .with_breaker("queue-timeout", queue(300 * S)),
        )
        .unwrap();
        metrics::set_global_recorder((*RECORDER).clone()).unwrap();
    });
}

static RECORDER: std::sync::LazyLock<TestRecorder> =
    std::sync::LazyLock::new(TestRecorder::default);

// ---- a provider whose health the test switches ----

#[derive(Default)]
struct Provider {
    down: std::sync::atomic::AtomicBool,
    status: std::sync::atomic::AtomicU16,
    calls: AtomicUsize,
    backup_calls: AtomicUsize,
}

impl Provider {
    fn set_down(&self, status: Option<u16>) {
        self.down.store(status.is_some(), Ordering::SeqCst);
        self.status.store(status.unwrap_or(200), Ordering::SeqCst);
    }

    fn answer(&self, prompt: &str) -> Result<String, ApiError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            Err(ApiError::status(self.status.load(Ordering::SeqCst)))
        } else {
            Ok(format!("fresh answer to {prompt}"))
        }
    }
}

#[resilient(max = 2, base = "100ms", fallback = cached, stale_for = "10m")]
async fn ask(provider: &Provider, #[key] prompt: &str) -> Result<String, ApiError> {
    provider.answer(prompt)
}

#[tokio::test(start_paused = true)]
async fn a_brownout_serves_the_cached_answer_with_its_true_age() {
    setup();
    let provider = Provider::default();
    assert_eq!(ask(&provider, "sky").await.unwrap(), "fresh answer to sky");

    tokio::time::advance(300 * S).await;
    provider.set_down(Some(503));
    let (answer, report) = observe(ask(&provider, "sky")).await;
    assert_eq!(answer.unwrap(), "fresh answer to sky");
    let fb = report.fallback().expect("served by a fallback");
    assert_eq!(fb.kind, FallbackKind::Cached);
    // Stored 300 s before the call began; the call's own retries add their waits.
    assert_eq!(fb.age, Some(300 * S + report.elapsed()));
    assert_eq!(fb.because, StopReason::AttemptsExhausted);
    assert_eq!(report.stop(), Some(&StopReason::AttemptsExhausted));
    assert_eq!(
        report.attempts().len(),
        2,
        "the policy ran before the fallback"
    );

    // Another key has nothing cached: the error comes through.
    let (answer, report) = observe(ask(&provider, "sea")).await;
    assert_eq!(answer, Err(ApiError::status(503)));
    assert!(report.fallback().is_none());
}

#[tokio::test(start_paused = true)]
async fn an_answer_older_than_stale_for_is_not_served() {
    setup();
    let provider = Provider::default();
    assert!(ask(&provider, "old news").await.is_ok());
    tokio::time::advance(601 * S).await;
    provider.set_down(Some(503));
    let (answer, report) = observe(ask(&provider, "old news")).await;
    assert_eq!(answer, Err(ApiError::status(503)));
    assert!(report.fallback().is_none());
}

#[resilient(max = 1, fallback = [cached, backup])]
async fn chained(provider: &Provider, #[key] prompt: &str) -> Result<String, ApiError> {
    provider.answer(prompt)
}

/// A cheaper model: same arguments, same return type.
async fn backup(provider: &Provider, prompt: &str) -> Result<String, ApiError> {
    provider.backup_calls.fetch_add(1, Ordering::SeqCst);
    Ok(format!("backup answer to {prompt}"))
}

#[tokio::test(start_paused = true)]
async fn a_chain_tries_its_steps_in_order_and_reports_the_one_that_served() {
    setup();
    let provider = Provider::default();
    assert!(chained(&provider, "cached one").await.is_ok());
    provider.set_down(Some(502));

    // Cached first: it has this key, so the backup is never called.
    let (answer, report) = observe(chained(&provider, "cached one")).await;
    assert_eq!(answer.unwrap(), "fresh answer to cached one");
    assert_eq!(report.fallback().unwrap().kind, FallbackKind::Cached);
    assert_eq!(provider.backup_calls.load(Ordering::SeqCst), 0);

    // A cache miss falls through to the function.
    let (answer, report) = observe(chained(&provider, "new one")).await;
    assert_eq!(answer.unwrap(), "backup answer to new one");
    let fb = report.fallback().unwrap();
    assert_eq!(fb.kind, FallbackKind::Function("backup"));
    assert_eq!(fb.age, None);
    assert_eq!(provider.backup_calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_400_never_falls_back() {
    setup();
    let provider = Provider::default();
    assert!(chained(&provider, "bad").await.is_ok());
    provider.set_down(Some(400));
    let (answer, report) = observe(chained(&provider, "bad")).await;
    assert_eq!(answer, Err(ApiError::status(400)));
    assert!(report.fallback().is_none());
    assert_eq!(report.stop(), Some(&StopReason::NotRetryable));
    assert_eq!(provider.backup_calls.load(Ordering::SeqCst), 0);
}

#[resilient(max = 1, breaker = "queue-test")]
async fn trip_queue_test(provider: &Provider) -> Result<String, ApiError> {
    provider.answer("trip")
}

#[resilient(max = 1, breaker = "queue-test", fallback = queue, queue_wait = "120s")]
async fn queued(
    provider: &Provider,
    order: &Mutex<Vec<(usize, Instant)>>,
    who: usize,
) -> Result<String, ApiError> {
    let answer = provider.answer("queued")?;
    order.lock().unwrap().push((who, Instant::now()));
    Ok(answer)
}

#[tokio::test(start_paused = true)]
async fn queued_callers_are_released_in_order_at_the_configured_rate() {
    setup();
    let provider = Arc::new(Provider::default());
    provider.set_down(Some(503));
    assert!(trip_queue_test(&provider).await.is_err()); // failures = 1: open for 10 s
    provider.set_down(None); // healthy again, but the breaker does not know yet
    let opened = Instant::now();

    let order = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..101)
        .map(|who| {
            let (provider, order) = (provider.clone(), order.clone());
            tokio::spawn(async move { observe(queued(&provider, &order, who)).await })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }

    // The 101st found the line full and was refused at once, unsent.
    let (last, last_report) = &results[100];
    assert!(matches!(
        last,
        Err(ApiError::Runtime(Rejected::QueueFull {
            breaker: "queue-test"
        }))
    ));
    assert_eq!(last_report.stop(), Some(&StopReason::QueueFull));
    assert_eq!(last_report.elapsed(), Duration::ZERO);

    // The other 100 were served first in, first out, no faster than 10 a second, starting
    // when the cooldown ended (the head of the line was the breaker's probe).
    let order = order.lock().unwrap();
    let who: Vec<usize> = order.iter().map(|(w, _)| *w).collect();
    assert_eq!(who, (0..100).collect::<Vec<_>>());
    assert!(order[0].1 >= opened + 10 * S);
    for pair in order.windows(2) {
        assert!(
            pair[1].1 - pair[0].1 >= Duration::from_millis(100),
            "released {:?} apart",
            pair[1].1 - pair[0].1
        );
    }
    for (answer, report) in &results[..100] {
        assert!(answer.is_ok());
        let fb = report.fallback().unwrap();
        assert_eq!(fb.kind, FallbackKind::Queue);
        assert!(fb.waited.unwrap() >= Duration::from_secs(9));
    }
    println!(
        "queue: 100 callers released over {:?}",
        order[99].1 - order[0].1
    );
}

#[resilient(max = 1, breaker = "queue-timeout")]
async fn trip_queue_timeout(provider: &Provider) -> Result<String, ApiError> {
    provider.answer("trip")
}

#[resilient(max = 1, breaker = "queue-timeout", fallback = queue, queue_wait = "5s")]
async fn impatient(provider: &Provider) -> Result<String, ApiError> {
    provider.answer("impatient")
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_waited_queue_wait_is_rejected_and_the_report_says_why() {
    setup();
    let provider = Provider::default();
    provider.set_down(Some(503));
    assert!(trip_queue_timeout(&provider).await.is_err());
    let calls = provider.calls.load(Ordering::SeqCst);
    let (answer, report) = observe(impatient(&provider)).await;
    assert!(matches!(
        answer,
        Err(ApiError::Runtime(Rejected::QueueTimeout { breaker: "queue-timeout", waited })) if waited == 5 * S
    ));
    assert_eq!(
        report.stop(),
        Some(&StopReason::QueueTimeout { waited: 5 * S })
    );
    assert_eq!(
        provider.calls.load(Ordering::SeqCst),
        calls,
        "nothing was sent"
    );
}

#[resilient(max = 1, fallback = cached)]
async fn counted(provider: &Provider, #[key] prompt: &str) -> Result<String, ApiError> {
    provider.answer(prompt)
}

#[tokio::test(start_paused = true)]
async fn every_degraded_answer_is_an_event_and_a_counter() {
    setup();
    let log = EventLog::global();
    let provider = Provider::default();
    for prompt in ["a", "b", "c"] {
        assert!(counted(&provider, prompt).await.is_ok());
    }
    provider.set_down(Some(503));
    for prompt in ["a", "b", "c", "d"] {
        let _ = counted(&provider, prompt).await; // "d" has nothing cached: not degraded
    }
    let events: Vec<_> = log
        .with_message("degraded answer")
        .into_iter()
        .filter(|e| e.field("function") == Some("fallback::counted"))
        .collect();
    assert_eq!(events.len(), 3);
    for e in &events {
        assert_eq!(e.level, tracing::Level::WARN);
        assert_eq!(e.field("fallback"), Some("cached"));
        assert!(e.field("age_ms").is_some());
    }
    let function = "fallback::counted";
    let counter = RECORDER.get(
        "retry_runtime_fallbacks_total",
        &[("function", function), ("kind", "cached")],
    );
    assert_eq!(counter, 3, "one increment per degraded answer");
    assert_eq!(
        RECORDER.get("retry_runtime_attempts_total", &[("function", function)]),
        7
    );
}
