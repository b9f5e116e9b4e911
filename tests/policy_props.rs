//! Properties of the executor over random outcome scripts and random policies, on paused time:
//! attempts never exceed `max`, every delay lies within its formula's bounds (raised only by
//! the server's `Retry-After`), and a call never runs past its `deadline`.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::ApiError;
use proptest::prelude::*;
use retry_runtime::{observe, retry, Backoff, CallReport, CallSite, Policy, StopReason};

#[derive(Debug, Clone)]
struct Scripted {
    outcome: Result<(), ApiError>,
    latency: Duration,
}

fn backoff() -> impl Strategy<Value = Backoff> {
    prop_oneof![
        Just(Backoff::ExpJitter),
        Just(Backoff::EqualJitter),
        Just(Backoff::DecorrelatedJitter),
        Just(Backoff::Exp),
        Just(Backoff::Constant),
    ]
}

fn ms(range: std::ops::RangeInclusive<u64>) -> impl Strategy<Value = Duration> {
    range.prop_map(Duration::from_millis)
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        backoff(),
        1u32..=20,
        ms(1..=5_000),
        ms(0..=60_000),
        proptest::option::of(ms(50..=20_000)),
        proptest::option::of(ms(500..=120_000)),
        ms(0..=90_000),
    )
        .prop_map(|(backoff, max, base, extra_cap, timeout, deadline, mra)| {
            let mut p = Policy::new("prop")
                .with_backoff(backoff)
                .with_max_attempts(max)
                .with_base(base)
                .with_cap(base + extra_cap)
                .with_max_retry_after(mra);
            if let Some(t) = timeout {
                p = p.with_timeout(t);
            }
            if let Some(d) = deadline {
                p = p.with_deadline(d);
            }
            p
        })
}

fn error() -> impl Strategy<Value = ApiError> {
    prop_oneof![
        prop_oneof![
            Just(400u16),
            Just(404),
            Just(408),
            Just(429),
            Just(500),
            Just(503),
            Just(529)
        ]
        .prop_map(ApiError::status),
        ms(0..=120_000).prop_map(ApiError::rate_limited),
        (prop_oneof![Just(429u16), Just(503)], any::<bool>()).prop_map(|(code, yes)| {
            ApiError::Status {
                code,
                retry_after: None,
                should_retry: Some(yes),
            }
        }),
        Just(ApiError::Network),
    ]
}

fn step() -> impl Strategy<Value = Scripted> {
    (
        prop_oneof![3 => error().prop_map(Err), 1 => Just(Ok(()))],
        prop_oneof![3 => Just(Duration::ZERO), 1 => ms(1..=30_000)],
    )
        .prop_map(|(outcome, latency)| Scripted { outcome, latency })
}

/// Run one call of `policy` against `script` on a paused clock.
fn run(policy: &Policy, script: &[Scripted]) -> (Result<(), ApiError>, CallReport, usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let calls = AtomicUsize::new(0);
    // `retry` takes a `static` call site (as the macro's are); leak one per case.
    let policy: &'static Policy = Box::leak(Box::new(*policy));
    let site: &'static CallSite<'static> = Box::leak(Box::new(CallSite::new(policy)));
    let (out, report) = rt.block_on(observe(retry(site, || {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        let step = script.get(n).cloned().unwrap_or(Scripted {
            outcome: Ok(()),
            latency: Duration::ZERO,
        });
        async move {
            tokio::time::sleep(step.latency).await;
            step.outcome
        }
    })));
    (out, report, calls.load(Ordering::SeqCst))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn attempts_delays_and_deadline_hold(policy in policy(), script in prop::collection::vec(step(), 0..25)) {
        let (out, report, calls) = run(&policy, &script);
        let attempts = report.attempts();

        // Attempts never exceed `max`; the provider saw exactly the reported attempts.
        prop_assert!(calls as u32 <= policy.max_attempts());
        prop_assert_eq!(calls, attempts.len());
        prop_assert_eq!(out.is_ok(), report.stop() == Some(&StopReason::Success));

        // Each delay lies within its formula's bounds, floored by the server's Retry-After.
        let (base, cap) = (policy.base(), policy.cap());
        let mut prev = base;
        for (i, a) in attempts.iter().enumerate().skip(1) {
            let retry = i as u32 - 1;
            let floor = attempts[i - 1].retry_after.unwrap_or_default();
            let (lo, hi) = policy.backoff().bounds(retry, base, cap, prev);
            let (lo, hi) = if policy.backoff() == Backoff::DecorrelatedJitter {
                // The formula grows from the previous *backoff*, which is at most the
                // previous delay (a Retry-After floor can only have raised that delay).
                (base.min(cap), hi)
            } else {
                (lo, hi)
            };
            prop_assert!(
                a.delay_before >= lo.max(floor) && a.delay_before <= hi.max(floor),
                "retry {} of {:?}: {:?} not in {:?}..={:?} (floor {:?})",
                retry, policy.backoff(), a.delay_before, lo, hi, floor
            );
            if floor > policy.max_retry_after() {
                prop_assert!(false, "retried after a Retry-After above the bound");
            }
            prev = a.delay_before;
        }

        // A call never runs past its deadline: waits are not started past it and attempts
        // are cut at it.
        if let Some(deadline) = policy.deadline() {
            prop_assert!(report.elapsed() <= deadline, "{:?} > {:?}", report.elapsed(), deadline);
        }
        // And an attempt never runs past its timeout.
        if let Some(timeout) = policy.timeout() {
            for a in attempts {
                prop_assert!(a.elapsed <= timeout);
            }
        }
    }
}
