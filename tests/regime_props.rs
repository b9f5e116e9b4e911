//! Properties of the breaker's regime: the retry allowance stays under its ceiling and never
//! lets a call pass its `max`; a stream of outage failures opens the breaker within its
//! `failures`; a brownout with flat latency never opens it.
//!
//! The streams are fed to a breaker the way the gate does (`observe` for the regime, then
//! `record` for the state machine), at times chosen by the test: no clock, no runtime.
//! The brownout property is about chance (a brownout can make any run), so its cases come
//! from a fixed seed: the same streams every run, each one that a breaker opening by chance
//! more often than the documented 1 in 10 million per run would be likely to trip.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::ApiError;
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use retry_runtime::breaker::Admission;
use retry_runtime::regime::{next_allowance, next_belief, Belief, Regime, Signals, Tuning};
use retry_runtime::{
    configure, resilient, Breaker, BreakerConfig, BreakerState, Config, ErrorClass,
};

fn regime() -> impl Strategy<Value = Regime> {
    prop_oneof![
        Just(Regime::Healthy),
        Just(Regime::Throttled),
        Just(Regime::Brownout),
        Just(Regime::Overload),
        Just(Regime::Outage),
    ]
}

fn tuning() -> impl Strategy<Value = Tuning> {
    (0u64..3_000_000, 0u64..10_000_000, 0u64..2_000_000).prop_map(|(base, max, step)| Tuning {
        base_ppm: base.min(max),
        max_ppm: max,
        step_ppm: step,
    })
}

fn signals() -> impl Strategy<Value = Signals> {
    (
        (0u64..500, 0u64..500, 0u64..500, 0u64..500),
        (0u64..100, 0u64..100),
        (0u64..1000, 0u64..5_000_000, 0u64..12),
    )
        .prop_map(
            |((fo, ff, ro, rf), (throttled, t), (ok, lat, span))| Signals {
                first_ok: fo,
                first_failed: ff,
                retry_ok: ro,
                retry_failed: rf,
                throttled,
                timeouts: t.min(ff + rf),
                window_ok: ok.min(fo + ro),
                window_latency_ms: lat,
                span_secs: span,
            },
        )
}

/// A breaker as the gate drives it: the regime sees the attempt, then the state machine.
fn feed(b: &Breaker, now_ms: u64, first: bool, failure: Option<ErrorClass>, latency_ms: u64) {
    let (admission, _) = b.admit(now_ms);
    if let Admission::Rejected { .. } = admission {
        return;
    }
    b.observe_at(first, failure, Duration::from_millis(latency_ms), now_ms);
    b.record(admission, failure, now_ms);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn the_allowance_never_exceeds_its_ceiling(
        t in tuning(),
        start in 0u64..20_000_000,
        seconds in prop::collection::vec((regime(), signals()), 1..100),
    ) {
        let mut a = start;
        let mut belief = Belief { allowance_ppm: start, ..Belief::default() };
        for (regime, s) in seconds {
            a = next_allowance(a, regime, &t);
            prop_assert!(a <= t.max_ppm, "{a} over {}", t.max_ppm);
            belief = next_belief(&belief, &s, &t);
            prop_assert!(belief.allowance_ppm <= t.max_ppm);
            if let Some(rate) = belief.admit_rate {
                prop_assert!(rate.is_finite() && rate > 0.0);
            }
        }
    }

    #[test]
    fn an_outage_opens_the_breaker_within_its_count(
        failures in 1u32..80,
        adaptive in any::<bool>(),
        healthy in prop::collection::vec(0u64..500, 0..300),
        gaps in prop::collection::vec(0u64..3_000, 80),
    ) {
        let b = Breaker::standalone("outage", BreakerConfig {
            failures,
            adaptive,
            ..BreakerConfig::default()
        });
        let mut now = 1_000;
        for gap in healthy {
            now += gap;
            feed(&b, now, true, None, 800);
        }
        // (It may open sooner: once nine attempts in ten of the window fail, the regime reads
        // an outage.)
        for (n, gap) in gaps.iter().take(failures as usize).enumerate() {
            now += gap;
            feed(&b, now, n % 3 == 0, Some(ErrorClass::Status(503)), 100);
        }
        prop_assert_eq!(b.state(), BreakerState::Open, "{} failures in a row", failures);
    }
}

/// The brownout streams' own randomness, seeded by the case: the runtime's jitter source
/// (`rand`'s `SmallRng`).
struct Rng(retry_runtime::Jitter);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(retry_runtime::Jitter::from_seed(seed))
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 200,
        rng_seed: RngSeed::Fixed(14),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_brownout_with_flat_latency_never_opens_the_breaker(
        share in 0.05f64..=0.7,
        per_sec in 2u64..40,
        healthy_secs in 0u64..60,
        seed in any::<u64>(),
    ) {
        let b = Breaker::standalone("brownout", BreakerConfig::default());
        let mut rng = Rng::new(seed);
        let step = 1_000 / per_sec;
        let mut now = 1_000;
        // Healthy first (or not at all), then two minutes of independent failures; latency
        // flat (one second, give or take 10%); a failed first attempt is retried, and a retry
        // fails as often as a first attempt.
        let mut retry_next = false;
        for i in 0..(healthy_secs + 120) * per_sec {
            now += step;
            let failing = i >= healthy_secs * per_sec;
            let latency = 900 + (rng.unit() * 200.0) as u64;
            let failure = (failing && rng.unit() < share).then_some(ErrorClass::Status(503));
            let first = !retry_next;
            feed(&b, now, first, failure, latency);
            retry_next = failure.is_some() && first;
            prop_assert_eq!(b.state(), BreakerState::Closed, "opened at {} ms", now);
        }
        let belief = b.regime_tracker().belief();
        prop_assert!(!b.regime().sheds(), "{:?} in a brownout: {:?}", b.regime(), belief);
    }
}

/// The allowance at its ceiling (ten retries per first attempt, from the first second), so
/// that only `max` bounds a call.
#[resilient(max = 3, base = "10ms", breaker = "props-max")]
async fn at_most_three(attempts: &AtomicU32, fail: &[bool]) -> Result<(), ApiError> {
    let n = attempts.fetch_add(1, Ordering::SeqCst) as usize;
    if fail.get(n).copied().unwrap_or(true) {
        Err(ApiError::status(503))
    } else {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_raised_allowance_never_lets_a_call_pass_its_max() {
    configure(Config::default().with_breaker(
        "props-max",
        BreakerConfig {
            failures: 1000,
            retry_ratio_ppm: 10_000_000,
            retry_ratio_max_ppm: 10_000_000,
            ..BreakerConfig::default()
        },
    ))
    .unwrap();
    let mut rng = Rng::new(42);
    let mut tasks = tokio::task::JoinSet::new();
    let mut counters = Vec::new();
    for _ in 0..500 {
        // 70% of attempts fail, every attempt an independent draw.
        let fail: Vec<bool> = (0..10).map(|_| rng.unit() < 0.7).collect();
        let attempts = Arc::new(AtomicU32::new(0));
        counters.push(attempts.clone());
        tasks.spawn(async move { at_most_three(&attempts, &fail).await.is_ok() });
    }
    let answered = tasks.join_all().await.into_iter().filter(|&ok| ok).count();
    let attempts: Vec<u32> = counters.iter().map(|a| a.load(Ordering::SeqCst)).collect();
    assert!(
        attempts.iter().all(|&n| (1..=3).contains(&n)),
        "{attempts:?}"
    );
    let at_max = attempts.iter().filter(|&&n| n == 3).count();
    // 0.7^2 of the calls reach their third attempt; nothing stopped them short.
    assert!(at_max > 200, "{at_max} calls made all three attempts");
    assert!(
        answered > 300,
        "{answered} of 500 answered (1 - 0.7^3 = 66%)"
    );
}
