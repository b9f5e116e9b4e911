//! Named circuit breakers and the retry budget, through real `#[resilient]` functions.
//!
//! The run-time configuration is process-wide and set once, so every test here uses its own
//! breaker names, all configured in `setup`.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use common::{fail, ok, slow, ApiError, ScriptedProvider};
use retry_runtime::{
    breaker, configure, observe, resilient, BreakerConfig, BreakerState, Config, Rejected,
    StopReason,
};
use tokio::sync::{Barrier, Semaphore};

const S: Duration = Duration::from_secs(1);

fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let b = |failures, cooldown: Duration, probes| BreakerConfig {
            failures,
            cooldown,
            probes,
            ..BreakerConfig::default()
        };
        let config = Config::default()
            .with_breaker("probe-64", b(1, Duration::from_millis(1), 3))
            .with_breaker("cooldown", b(3, 30 * S, 1))
            .with_breaker("cancel-probe", b(1, 10 * S, 1))
            .with_breaker("shared-x", b(2, 30 * S, 1))
            .with_breaker("other-y", b(2, 30 * S, 1))
            .with_breaker("caller-faults", b(1, 30 * S, 1))
            .with_breaker("rate-limits", b(1, 30 * S, 1))
            .with_breaker(
                "rate-limits-strict",
                BreakerConfig {
                    count_429: true,
                    ..b(1, 30 * S, 1)
                },
            )
            .with_breaker("midway", b(3, 30 * S, 1))
            .with_breaker(
                "storm",
                BreakerConfig {
                    // High enough that the breaker stays closed: the budget alone is tested.
                    failures: 1000,
                    retry_ratio_ppm: 200_000,
                    min_retries_per_sec: 1,
                    ..BreakerConfig::default()
                },
            );
        configure(config).expect("first and only configure");
    });
}

/// A provider whose calls wait at a gate until the test opens it.
struct GatedProvider {
    calls: AtomicUsize,
    gate: Semaphore,
}

#[resilient(max = 1, breaker = "probe-64")]
async fn gated(provider: &GatedProvider, fail_now: bool) -> Result<String, ApiError> {
    provider.calls.fetch_add(1, Ordering::SeqCst);
    if fail_now {
        return Err(ApiError::status(503));
    }
    let _permit = provider.gate.acquire().await.unwrap();
    Ok("probe".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_half_open_breaker_lets_exactly_probes_calls_through() {
    setup();
    let provider = Arc::new(GatedProvider {
        calls: AtomicUsize::new(0),
        gate: Semaphore::new(0),
    });
    // One outage failure opens it (failures = 1); its cooldown is 1 ms.
    assert!(gated(&provider, true).await.is_err());
    assert_eq!(breaker("probe-64").state(), BreakerState::Open);
    let opened = std::time::Instant::now();
    while opened.elapsed() < Duration::from_millis(2) {
        std::hint::spin_loop(); // let the 1 ms cooldown pass without sleeping
    }
    provider.calls.store(0, Ordering::SeqCst);

    let barrier = Arc::new(Barrier::new(64));
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (provider, barrier) = (provider.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                gated(&provider, false).await
            })
        })
        .collect();
    // Wait until the probes are in flight (held at the gate) and everyone else was refused.
    while provider.calls.load(Ordering::SeqCst) < 3
        || tasks.iter().filter(|t| t.is_finished()).count() < 61
    {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        provider.calls.load(Ordering::SeqCst),
        3,
        "exactly `probes` calls"
    );
    provider.gate.add_permits(64);
    let mut oks = 0;
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => oks += 1,
            Err(ApiError::Runtime(Rejected::CircuitOpen { breaker, .. })) => {
                assert_eq!(breaker, "probe-64");
                refused += 1
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((oks, refused), (3, 61));
    assert_eq!(provider.calls.load(Ordering::SeqCst), 3);
    assert_eq!(breaker("probe-64").state(), BreakerState::Closed);
}

#[resilient(max = 1, breaker = "cooldown")]
async fn cooldown_call(provider: &ScriptedProvider) -> Result<String, ApiError> {
    provider.call().await
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_sends_nothing_for_the_cooldown_then_probes() {
    setup();
    let provider = ScriptedProvider::new((0..3).map(|_| fail(ApiError::status(503))));
    for _ in 0..3 {
        assert!(cooldown_call(&provider).await.is_err());
    }
    assert_eq!(breaker("cooldown").state(), BreakerState::Open);
    assert_eq!(provider.calls(), 3);

    for second in 0..30 {
        let (out, report) = observe(cooldown_call(&provider)).await;
        assert!(matches!(
            out,
            Err(ApiError::Runtime(Rejected::CircuitOpen { .. }))
        ));
        assert_eq!(
            report.stop(),
            Some(&StopReason::CircuitOpen {
                retry_in: Duration::from_secs(30 - second)
            })
        );
        assert!(report.attempts().is_empty());
        tokio::time::advance(S).await;
    }
    assert_eq!(provider.calls(), 3, "zero calls during the cooldown");

    let (out, report) = observe(cooldown_call(&provider)).await;
    assert_eq!(out.unwrap(), "done");
    assert_eq!(provider.calls(), 4);
    let seen: Vec<_> = report
        .transitions()
        .iter()
        .map(|t| (t.from, t.to))
        .collect();
    assert_eq!(
        seen,
        vec![
            (BreakerState::Open, BreakerState::HalfOpen),
            (BreakerState::HalfOpen, BreakerState::Closed)
        ]
    );
    assert_eq!(report.breaker(), Some("cooldown"));
}

#[resilient(max = 1, breaker = "cancel-probe")]
async fn cancel_probe_call(provider: &ScriptedProvider) -> Result<String, ApiError> {
    provider.call().await
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_is_given_back() {
    setup();
    let provider = Arc::new(ScriptedProvider::new([
        fail(ApiError::Network),
        slow(ok("never seen"), 3600 * S),
        ok("second probe"),
    ]));
    assert!(cancel_probe_call(&provider).await.is_err());
    tokio::time::advance(10 * S).await;

    let p = provider.clone();
    let probe = tokio::spawn(async move { cancel_probe_call(&p).await });
    while provider.calls() < 2 {
        tokio::task::yield_now().await;
    }
    assert_eq!(breaker("cancel-probe").state(), BreakerState::HalfOpen);
    // With the only probe slot taken, another call is refused...
    assert!(matches!(
        cancel_probe_call(&provider).await,
        Err(ApiError::Runtime(Rejected::CircuitOpen { .. }))
    ));
    // ...until the probe's future is dropped, which gives the slot back.
    probe.abort();
    assert!(probe.await.unwrap_err().is_cancelled());
    assert_eq!(cancel_probe_call(&provider).await.unwrap(), "second probe");
    assert_eq!(breaker("cancel-probe").state(), BreakerState::Closed);
}

#[resilient(max = 1, breaker = "caller-faults")]
async fn caller_fault_call(provider: &ScriptedProvider) -> Result<String, ApiError> {
    provider.call().await
}

#[resilient(max = 1, breaker = "rate-limits")]
async fn rate_limited_call(provider: &ScriptedProvider) -> Result<String, ApiError> {
    provider.call().await
}

#[resilient(max = 1, breaker = "rate-limits-strict")]
async fn rate_limited_strict_call(provider: &ScriptedProvider) -> Result<String, ApiError> {
    provider.call().await
}

#[tokio::test(start_paused = true)]
async fn caller_faults_never_open_and_429s_only_with_count_429() {
    setup();
    let faults = [400, 401, 403, 404, 413, 422];
    let provider =
        ScriptedProvider::new((0..60).map(|i| fail(ApiError::status(faults[i % faults.len()]))));
    for _ in 0..60 {
        assert!(caller_fault_call(&provider).await.is_err());
    }
    assert_eq!(breaker("caller-faults").state(), BreakerState::Closed);
    assert_eq!(provider.calls(), 60);

    let provider = ScriptedProvider::new((0..20).map(|_| fail(ApiError::status(429))));
    for _ in 0..20 {
        assert!(rate_limited_call(&provider).await.is_err());
    }
    assert_eq!(breaker("rate-limits").state(), BreakerState::Closed);
    assert_eq!(provider.calls(), 20);

    let provider = ScriptedProvider::new([fail(ApiError::status(429))]);
    assert!(rate_limited_strict_call(&provider).await.is_err());
    assert_eq!(breaker("rate-limits-strict").state(), BreakerState::Open);
}

#[resilient(max = 1, breaker = "shared-x")]
async fn site_a(provider: &ScriptedProvider) -> Result<String, ApiError> {
    provider.call().await
}

#[resilient(max = 1, breaker = "shared-x")]
async fn site_b(provider: &ScriptedProvider) -> Result<String, ApiError> {
    provider.call().await
}

#[resilient(max = 1, breaker = "other-y")]
async fn site_c(provider: &ScriptedProvider) -> Result<String, ApiError> {
    provider.call().await
}

#[tokio::test(start_paused = true)]
async fn call_sites_naming_one_breaker_share_it() {
    setup();
    let a = ScriptedProvider::new((0..2).map(|_| fail(ApiError::status(502))));
    assert!(site_a(&a).await.is_err());
    assert!(site_a(&a).await.is_err());

    let b = ScriptedProvider::new([ok("b")]);
    assert!(matches!(
        site_b(&b).await,
        Err(ApiError::Runtime(Rejected::CircuitOpen {
            breaker: "shared-x",
            ..
        }))
    ));
    assert_eq!(
        b.calls(),
        0,
        "site b was refused by the breaker site a opened"
    );

    let c = ScriptedProvider::new([ok("c")]);
    assert_eq!(site_c(&c).await.unwrap(), "c");
    assert_eq!(breaker("other-y").state(), BreakerState::Closed);
}

#[resilient(max = 5, base = "1s", breaker = "midway")]
async fn midway_call(provider: &ScriptedProvider) -> Result<String, ApiError> {
    provider.call().await
}

#[tokio::test(start_paused = true)]
async fn a_retry_loop_stops_when_its_breaker_opens() {
    setup();
    let provider = ScriptedProvider::new((0..10).map(|_| fail(ApiError::status(503))));
    let (out, report) = observe(midway_call(&provider)).await;
    assert_eq!(
        out,
        Err(ApiError::status(503)),
        "the last attempt's own error"
    );
    assert_eq!(provider.calls(), 3);
    assert_eq!(report.stop(), Some(&StopReason::BreakerOpened));
    let seen: Vec<_> = report.transitions().iter().map(|t| t.to).collect();
    assert_eq!(seen, vec![BreakerState::Open]);
}

#[resilient(max = 5, base = "100ms", cap = "2s", breaker = "storm")]
async fn storm_call(provider: &ScriptedProvider) -> Result<String, ApiError> {
    provider.call().await
}

#[tokio::test(start_paused = true)]
async fn the_retry_budget_caps_a_storm() {
    setup();
    retry_runtime::testing::seed_jitter(3);
    let callers = 200;
    let provider = Arc::new(ScriptedProvider::new(
        (0..callers * 5).map(|_| fail(ApiError::status(503))),
    ));
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let p = provider.clone();
            tokio::spawn(async move { observe(storm_call(&p)).await.1 })
        })
        .collect();
    let mut budget_stops = 0;
    for t in tasks {
        if t.await.unwrap().stop() == Some(&StopReason::RetryBudgetExhausted) {
            budget_stops += 1;
        }
    }
    let calls = provider.calls();
    // (1 + retry_ratio) x first attempts + floor (1/s over the 10 s window).
    let bound = callers + callers / 5 + 10;
    println!(
        "storm: {callers} callers, {calls} provider calls (bound {bound}, no budget: {})",
        callers * 5
    );
    assert!(calls <= bound, "{calls} > {bound}");
    assert!(calls >= callers);
    assert!(budget_stops > 0);
}
