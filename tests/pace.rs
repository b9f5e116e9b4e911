//! Pacing: the adaptive rate against a simulated provider with a fixed limit, the
//! provider's headers, the line (FIFO, deadlines, cancellation), token settling, events and
//! the gauge, and properties of the bucket and the law. All on paused time, seeded.

mod common;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::EventLog;
use proptest::prelude::*;
use retry_runtime::pace::{
    pacer, register_pacer, Cubic, Gcra, PaceConfig, PaceError, Pacer, ProviderLimits, BETA,
    HINT_MARGIN, PLATEAU, PROBE, RATE_GAUGE,
};
use tokio::time::Instant;

const MS: Duration = Duration::from_millis(1);
const S: Duration = Duration::from_secs(1);

// ---- seeded randomness ----

/// The runtime's jitter source (`rand`'s `SmallRng`), for think times and latencies.
struct Rng(retry_runtime::Jitter);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(retry_runtime::Jitter::from_seed(seed))
    }
    /// Uniform in [lo, hi).
    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = (hi - lo).as_nanos() as u64;
        lo + Duration::from_nanos(self.0.between(0, span.saturating_sub(1)))
    }
}

// ---- a simulated provider with a fixed limit ----

#[derive(Debug, Clone, Copy, PartialEq)]
enum Limit {
    /// At most `limit` accepted requests in any sliding window of one second.
    SlidingWindow,
    /// A token bucket of `limit` requests refilled continuously at `limit` a second, as
    /// OpenAI and Anthropic describe theirs; its headers are `limit`, `remaining` (rounded
    /// down) and `reset` (time until full, whole milliseconds rounded up).
    TokenBucket,
}

struct Provider {
    model: Limit,
    limit: u64,
    accepted: VecDeque<Instant>,
    tokens: f64,
    last: Option<Instant>,
}

struct Answer {
    ok: bool,
    limits: ProviderLimits,
}

impl Provider {
    fn new(model: Limit, limit: u64) -> Self {
        Self {
            model,
            limit,
            accepted: VecDeque::new(),
            tokens: limit as f64,
            last: None,
        }
    }

    fn call(&mut self, now: Instant) -> Answer {
        match self.model {
            Limit::SlidingWindow => {
                while self.accepted.front().is_some_and(|&t| now - t >= S) {
                    self.accepted.pop_front();
                }
                let ok = (self.accepted.len() as u64) < self.limit;
                if ok {
                    self.accepted.push_back(now);
                }
                Answer {
                    ok,
                    limits: ProviderLimits::default(),
                }
            }
            Limit::TokenBucket => {
                let rate = self.limit as f64; // per second
                if let Some(last) = self.last {
                    let refill = (now - last).as_secs_f64() * rate;
                    self.tokens = (self.tokens + refill).min(self.limit as f64);
                }
                self.last = Some(now);
                let ok = self.tokens >= 1.0;
                if ok {
                    self.tokens -= 1.0;
                }
                let to_full = (self.limit as f64 - self.tokens) / rate;
                let reset = Duration::from_millis((to_full * 1000.0).ceil() as u64);
                Answer {
                    ok,
                    limits: ProviderLimits {
                        limit_requests: Some(self.limit),
                        remaining_requests: Some(self.tokens.floor() as u64),
                        reset_requests: Some(reset),
                        ..ProviderLimits::default()
                    },
                }
            }
        }
    }
}

// ---- the simulation: callers looping acquire -> provider -> feedback ----

#[derive(Debug, Clone, Copy, PartialEq)]
enum Feedback {
    /// `permit.on_success` / `permit.on_rate_limited` (the grant time is known).
    Permit,
    /// `pacer.on_success` / `pacer.on_rate_limited`.
    Pacer,
}

struct Scenario {
    name: &'static str,
    model: Limit,
    feedback: Feedback,
    headers: bool,
    seed: u64,
    run_for: Duration,
    /// The provider's limit per second; callers: three times as many, one request a second.
    limit: u64,
    /// How long the provider takes to answer (uniform between the two).
    answer: (Duration, Duration),
}

impl Scenario {
    fn new(name: &'static str, model: Limit, seed: u64) -> Self {
        Scenario {
            name,
            model,
            feedback: Feedback::Permit,
            headers: false,
            seed,
            run_for: 240 * S,
            limit: LIMIT,
            answer: (50 * MS, 150 * MS),
        }
    }
}

struct Figures {
    /// From when the pacer's rate stayed within 10% of the limit to the end.
    settled_at: Option<Duration>,
    /// The pacer's rate, averaged over 100 ms samples after settling.
    steady_rate: f64,
    /// Successful requests per second after settling.
    goodput: f64,
    /// 429s / attempts after settling.
    share_429_settled: f64,
    /// 429s / attempts in the first minute.
    share_429_first_minute: f64,
    attempts: usize,
    cuts: usize,
}

const LIMIT: u64 = 10;

async fn simulate(s: &Scenario) -> Figures {
    let start = Instant::now();
    let pacer: &'static Pacer = Box::leak(Box::new(Pacer::standalone(
        s.name,
        PaceConfig {
            max_wait: None,
            ..PaceConfig::default()
        }, // no known limit: adaptive only
    )));
    let provider = Arc::new(Mutex::new(Provider::new(s.model, s.limit)));
    // (time at the provider, accepted?)
    let attempts: Arc<Mutex<Vec<(Duration, bool)>>> = Arc::default();
    let end = start + s.run_for;

    let mut tasks = Vec::new();
    for caller in 0..3 * s.limit as usize {
        let provider = provider.clone();
        let attempts = attempts.clone();
        let mut rng = Rng::new(s.seed ^ (caller as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D));
        let (feedback, headers, latency) = (s.feedback, s.headers, s.answer);
        tasks.push(tokio::spawn(async move {
            // Each caller wants one request a second (30/s in all), from a random start.
            let mut next = start + rng.between(Duration::ZERO, S);
            while next < end {
                tokio::time::sleep_until(next).await;
                let permit = pacer.acquire(0, None).await.expect("no deadline");
                tokio::time::sleep(rng.between(10 * MS, 30 * MS)).await; // to the provider
                let at_provider = Instant::now();
                let answer = provider.lock().unwrap().call(at_provider);
                attempts
                    .lock()
                    .unwrap()
                    .push((at_provider - start, answer.ok));
                tokio::time::sleep(rng.between(latency.0, latency.1)).await; // the answer
                let now = Instant::now();
                if headers {
                    pacer.on_hint(&answer.limits, now);
                }
                match (answer.ok, feedback) {
                    (true, Feedback::Permit) => permit.on_success(now),
                    (false, Feedback::Permit) => permit.on_rate_limited(now),
                    (true, Feedback::Pacer) => pacer.on_success(now),
                    (false, Feedback::Pacer) => pacer.on_rate_limited(now),
                }
                next = (next + rng.between(800 * MS, 1200 * MS)).max(Instant::now());
            }
        }));
    }
    // Sample the pacer's rate every 100 ms.
    let mut samples = Vec::new();
    let mut t = start;
    while t < end {
        samples.push((t - start, pacer.rate()));
        t += 100 * MS;
        tokio::time::sleep_until(t).await;
    }
    for task in tasks {
        task.await.unwrap();
    }
    let limit = s.limit as f64;
    let within = |r: Option<f64>| r.is_some_and(|r| (r - limit).abs() <= 0.1 * limit);
    let settled_at = match samples.iter().rposition(|&(_, r)| !within(r)) {
        None => Some(Duration::ZERO),
        Some(i) if i + 1 < samples.len() => Some(samples[i + 1].0),
        Some(_) => None,
    };
    let from = settled_at.unwrap_or(s.run_for);
    let steady: Vec<f64> = samples
        .iter()
        .filter(|&&(t, _)| t >= from)
        .filter_map(|&(_, r)| r)
        .collect();
    let attempts = attempts.lock().unwrap().clone();
    let share = |range: &dyn Fn(Duration) -> bool| {
        let picked: Vec<bool> = attempts
            .iter()
            .filter(|(t, _)| range(*t))
            .map(|&(_, ok)| ok)
            .collect();
        let rejected = picked.iter().filter(|ok| !**ok).count();
        rejected as f64 / picked.len().max(1) as f64
    };
    let ok_after = attempts.iter().filter(|&&(t, ok)| ok && t >= from).count();
    let mut cuts = 0;
    let mut last = None;
    for &(_, r) in &samples {
        if let (Some(prev), Some(r)) = (last, r) {
            if r < prev {
                cuts += 1;
            }
        }
        last = r;
    }
    Figures {
        settled_at,
        steady_rate: steady.iter().sum::<f64>() / steady.len().max(1) as f64,
        goodput: ok_after as f64 / (s.run_for - from).as_secs_f64().max(1e-9),
        share_429_settled: share(&|t| t >= from),
        share_429_first_minute: share(&|t| t < 60 * S),
        attempts: attempts.len(),
        cuts,
    }
}

fn print(s: &Scenario, f: &Figures) {
    println!(
        "[{}] settled at {:?} | steady rate {:.2}/s | goodput {:.2}/s | 429s after settling {:.2}% | 429s in the first minute {:.2}% | {} attempts, {} sampled cuts",
        s.name,
        f.settled_at,
        f.steady_rate,
        f.goodput,
        100.0 * f.share_429_settled,
        100.0 * f.share_429_first_minute,
        f.attempts,
        f.cuts,
    );
}

/// Done-when 1: against 10 requests in any second and 30 callers offering 30/s, the adaptive
/// rate settles within 10% of 10/s within 60 s, and then fewer than 2% of attempts get a 429.
#[tokio::test(start_paused = true)]
async fn adaptive_rate_settles_under_a_sliding_window_limit() {
    let s = Scenario::new("sim-sliding", Limit::SlidingWindow, 7);
    let f = simulate(&s).await;
    print(&s, &f);
    let settled = f.settled_at.expect("the rate settled");
    assert!(settled <= 60 * S, "settled at {settled:?}");
    assert!((f.steady_rate - 10.0).abs() <= 1.0, "{}", f.steady_rate);
    assert!(f.share_429_settled < 0.02, "{}", f.share_429_settled);
}

/// The same against a token-bucket provider, and with feedback through the pacer (no grant
/// times: one cut per `MIN_CUT_GAP`).
#[tokio::test(start_paused = true)]
async fn adaptive_rate_settles_under_a_token_bucket_and_without_permits() {
    let pacer_feedback = Scenario {
        feedback: Feedback::Pacer,
        ..Scenario::new("sim-sliding-pacer-feedback", Limit::SlidingWindow, 13)
    };
    for s in [
        Scenario::new("sim-bucket", Limit::TokenBucket, 11),
        pacer_feedback,
    ] {
        let f = simulate(&s).await;
        print(&s, &f);
        let settled = f.settled_at.expect("the rate settled");
        assert!(settled <= 60 * S, "[{}] settled at {settled:?}", s.name);
        assert!(
            f.share_429_settled < 0.02,
            "[{}] {}",
            s.name,
            f.share_429_settled
        );
    }
}

/// Done-when 2: with the provider's rate-limit headers on every answer, fewer than 2% 429s
/// from the start, first minute included.
#[tokio::test(start_paused = true)]
async fn headers_keep_the_first_minute_under_the_limit() {
    let s = Scenario {
        headers: true,
        run_for: 120 * S,
        ..Scenario::new("sim-headers", Limit::TokenBucket, 17)
    };
    let f = simulate(&s).await;
    print(&s, &f);
    assert!(
        f.share_429_first_minute < 0.02,
        "{}",
        f.share_429_first_minute
    );
    let settled = f.settled_at.expect("the rate settled");
    assert!(settled <= 5 * S, "settled at {settled:?}");
    assert!(f.share_429_settled < 0.02, "{}", f.share_429_settled);
    assert!(
        (f.steady_rate - HINT_MARGIN * 10.0).abs() < 0.3,
        "{}",
        f.steady_rate
    );
}

// ---- the line ----

#[derive(Debug, Clone)]
enum Outcome {
    Served { granted: Duration },
    Refused { at: Duration, earliest: Duration },
}

/// Done-when 3: 200 concurrent waiters on a configured `rpm` are released in arrival order at
/// the configured rate; those whose deadline cannot be met are refused at once; nobody is
/// served after its deadline; aborted waiters (the head among them) do not hold up the line.
#[tokio::test(start_paused = true)]
async fn two_hundred_waiters_fifo_at_the_configured_rate_with_deadlines_and_cancellation() {
    const WAITERS: usize = 200;
    let pacer: &'static Pacer = Box::leak(Box::new(Pacer::standalone(
        "line-200",
        PaceConfig {
            rpm: Some(600), // 10/s
            burst: S,       // 10 at once after idle
            max_wait: None, // the waits here are the deadline's to bound
            ..PaceConfig::default()
        },
    )));
    let start = Instant::now();
    let arrivals = Arc::new(AtomicUsize::new(0));
    // arrival number -> outcome; the order permits came out in.
    let outcomes: Arc<Mutex<HashMap<usize, Outcome>>> = Arc::default();
    let released: Arc<Mutex<Vec<usize>>> = Arc::default();
    let deadline_of = |i: usize| (i % 10 == 7).then(|| start + 3 * S);

    let mut handles = Vec::new();
    for i in 0..WAITERS {
        let (arrivals, outcomes, released) = (arrivals.clone(), outcomes.clone(), released.clone());
        let deadline = deadline_of(i);
        handles.push(tokio::spawn(async move {
            let seq = arrivals.fetch_add(1, Ordering::SeqCst);
            let result = pacer.acquire(0, deadline).await;
            let now = Instant::now();
            let outcome = match result {
                Ok(permit) => {
                    assert_eq!(permit.waited(), now - start);
                    released.lock().unwrap().push(seq);
                    Outcome::Served {
                        granted: now - start,
                    }
                }
                Err(PaceError::WouldMissDeadline { earliest, .. }) => Outcome::Refused {
                    at: now - start,
                    earliest: earliest - start,
                },
                Err(e) => panic!("{e}"),
            };
            outcomes.lock().unwrap().insert(seq, outcome);
            seq
        }));
        // Let it take its place: arrival order is spawn order.
        tokio::task::yield_now().await;
    }
    assert_eq!(arrivals.load(Ordering::SeqCst), WAITERS);

    // At 2.05 s: 30 served (10 at once, then one per 100 ms). Abort the head and two
    // waiters further back.
    tokio::time::sleep_until(start + 2050 * MS).await;
    let served_so_far = released.lock().unwrap().len();
    let refused_early: usize = outcomes
        .lock()
        .unwrap()
        .values()
        .filter(|o| matches!(o, Outcome::Refused { .. }))
        .count();
    assert_eq!(served_so_far, 30);
    let waiting: Vec<usize> = (0..WAITERS)
        .filter(|i| !outcomes.lock().unwrap().contains_key(i))
        .collect();
    assert_eq!(waiting.len(), WAITERS - served_so_far - refused_early);
    assert_eq!(pacer.waiting(), waiting.len());
    let aborted = [waiting[0], waiting[30], waiting[31], waiting[100]];
    for &i in &aborted {
        handles[i].abort();
    }
    for (i, h) in handles.into_iter().enumerate() {
        let result = h.await;
        assert_eq!(result.is_err(), aborted.contains(&i), "waiter {i}");
    }
    assert_eq!(pacer.waiting(), 0);

    let outcomes = outcomes.lock().unwrap();
    let released = released.lock().unwrap();
    // FIFO: permits came out in arrival order.
    assert!(released.windows(2).all(|w| w[0] < w[1]), "{released:?}");
    // At the configured rate, with no gap where the aborted waiters were: the j-th permit at
    // max(0, j - 9) x 100 ms (timers fire on the millisecond).
    for (j, seq) in released.iter().enumerate() {
        let Outcome::Served { granted } = outcomes[seq] else {
            unreachable!()
        };
        let due = 100 * MS * (j.saturating_sub(9) as u32);
        assert!(
            granted >= due && granted <= due + MS,
            "permit {j} (waiter {seq}) at {granted:?}, due {due:?}"
        );
        if let Some(deadline) = deadline_of(*seq) {
            assert!(start + granted <= deadline, "waiter {seq} served late");
        }
    }
    // Refused at once (no wait at all), and rightly: their turn was past the deadline.
    let refused: Vec<(usize, Duration, Duration)> = outcomes
        .iter()
        .filter_map(|(&i, o)| match *o {
            Outcome::Refused { at, earliest } => Some((i, at, earliest)),
            _ => None,
        })
        .collect();
    assert!(!refused.is_empty());
    for &(i, at, earliest) in &refused {
        assert_eq!(at, Duration::ZERO, "waiter {i} refused at {at:?}");
        assert!(earliest > 3 * S, "waiter {i}: {earliest:?}");
        assert!(deadline_of(i).is_some());
    }
    let with_deadline_served = released
        .iter()
        .filter(|&&i| deadline_of(i).is_some())
        .count();
    println!(
        "[line-200] {} served in order at 10/s, {} refused at once (deadline 3 s), {} served within it, {} aborted; last permit at {:?}",
        released.len(),
        refused.len(),
        with_deadline_served,
        aborted.len(),
        match outcomes[released.last().unwrap()] {
            Outcome::Served { granted } => granted,
            _ => unreachable!(),
        }
    );
    assert_eq!(released.len() + refused.len() + aborted.len(), WAITERS);
}

/// A waiter whose turn recedes after it joined (the rate was cut) is refused at its deadline
/// at the latest, never after.
#[tokio::test(start_paused = true)]
async fn a_receding_turn_is_refused_no_later_than_the_deadline() {
    let pacer: &'static Pacer = Box::leak(Box::new(Pacer::standalone(
        "line-recede",
        PaceConfig {
            max_wait: None,
            ..PaceConfig::default()
        },
    )));
    let start = Instant::now();
    // Learn 10/s from the provider's numbers.
    let limits = ProviderLimits {
        limit_requests: Some(10),
        remaining_requests: Some(9),
        reset_requests: Some(100 * MS),
        ..ProviderLimits::default()
    };
    pacer.on_hint(&limits, start);
    let mut waiters = Vec::new();
    for i in 0..8u32 {
        let deadline = start + 1200 * MS;
        waiters.push(tokio::spawn(async move {
            let r = pacer.acquire(0, Some(deadline)).await;
            (i, r.map(|p| p.granted_at()), Instant::now(), deadline)
        }));
        tokio::task::yield_now().await;
    }
    // The provider now says it is empty for 5 s: everyone still waiting is too late.
    tokio::time::sleep(250 * MS).await;
    pacer.on_hint(
        &ProviderLimits {
            remaining_requests: Some(0),
            reset_requests: Some(6 * S),
            ..limits
        },
        Instant::now(),
    );
    let mut refused = 0;
    for w in waiters {
        let (i, result, returned, deadline) = w.await.unwrap();
        assert!(
            returned <= deadline,
            "waiter {i} returned after its deadline"
        );
        match result {
            Ok(granted) => assert!(granted <= deadline, "waiter {i}"),
            Err(PaceError::WouldMissDeadline { earliest, .. }) => {
                assert!(earliest > deadline, "waiter {i}");
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    // Three were served before the cut, one in the hold's gap; the rest are refused.
    assert!(refused >= 3, "{refused}");
}

/// An idle pacer with room grants at once: no wait.
#[tokio::test(start_paused = true)]
async fn the_fast_path_does_not_wait() {
    let pacer = Pacer::standalone(
        "fast",
        PaceConfig {
            rpm: Some(60_000),
            max_wait: None, // the waits here are the deadline's to bound
            ..PaceConfig::default()
        },
    );
    let now = Instant::now();
    for _ in 0..100 {
        let permit = pacer.acquire(0, Some(now)).await.unwrap();
        assert_eq!(permit.waited(), Duration::ZERO);
        assert_eq!(permit.granted_at(), now);
    }
    assert_eq!(pacer.waiting(), 0);
}

/// A deadline already past is refused even when a permit is free; a pacer with
/// `adaptive: false` ignores 429s and headers.
#[tokio::test(start_paused = true)]
async fn a_past_deadline_is_refused_and_a_fixed_pacer_ignores_feedback() {
    let pacer = Pacer::standalone(
        "fixed",
        PaceConfig {
            rpm: Some(600),
            adaptive: false,
            max_wait: None, // the waits here are the deadline's to bound
            ..PaceConfig::default()
        },
    );
    tokio::time::sleep(S).await;
    let past = Instant::now() - MS;
    let err = pacer.acquire(0, Some(past)).await.unwrap_err();
    assert!(matches!(err, PaceError::WouldMissDeadline { deadline, .. } if deadline == past));
    assert!(err.to_string().contains("fixed"), "{err}");
    let permit = pacer.acquire(0, None).await.unwrap();
    permit.on_rate_limited(Instant::now());
    pacer.on_rate_limited(Instant::now() + 5 * S);
    pacer.on_hint(
        &ProviderLimits {
            limit_requests: Some(10),
            remaining_requests: Some(0),
            reset_requests: Some(60 * S),
            ..ProviderLimits::default()
        },
        Instant::now(),
    );
    assert_eq!(pacer.rate(), Some(10.0));
    assert_eq!(
        pacer.acquire(0, None).await.unwrap().waited(),
        Duration::ZERO
    );
}

/// Token weights: a request that used less than its estimate gives the rest back at once; one
/// that used more pushes the next ones back.
#[tokio::test(start_paused = true)]
async fn settling_corrects_the_token_bucket() {
    let pacer: &'static Pacer = Box::leak(Box::new(Pacer::standalone(
        "tokens",
        PaceConfig {
            tpm: Some(6_000), // 100 tokens/s
            burst: S,         // 100 tokens at once
            adaptive: false,
            max_wait: None, // the waits here are the deadline's to bound
            ..PaceConfig::default()
        },
    )));
    let start = Instant::now();
    let mut first = pacer.acquire(100, None).await.unwrap();
    assert_eq!(first.waited(), Duration::ZERO);
    // The next 100-token request would wait a full second...
    let next = tokio::spawn(async move { pacer.acquire(100, None).await.unwrap().granted_at() });
    tokio::time::sleep(10 * MS).await;
    assert_eq!(pacer.waiting(), 1);
    // ...but the first used only 10: 90 come back and the waiter goes at 100 ms.
    first.settle(10);
    assert_eq!(first.tokens(), 10);
    let granted = next.await.unwrap() - start;
    assert!(granted >= 100 * MS && granted <= 101 * MS, "{granted:?}");
    // A request that used 300 instead of 100 puts the bucket 2 s further in debt.
    let mut heavy = pacer.acquire(100, None).await.unwrap();
    heavy.settle(300);
    let after = pacer.acquire(100, None).await.unwrap();
    let waited = after.waited();
    assert!(waited >= 2900 * MS && waited <= 3001 * MS, "{waited:?}");
}

// ---- events, gauge, registry ----

#[derive(Clone, Default)]
struct GaugeLog(Arc<Mutex<Vec<(String, f64)>>>);

struct LoggedGauge(String, GaugeLog);

impl metrics::GaugeFn for LoggedGauge {
    fn increment(&self, _: f64) {}
    fn decrement(&self, _: f64) {}
    fn set(&self, value: f64) {
        self.1 .0.lock().unwrap().push((self.0.clone(), value));
    }
}

impl metrics::Recorder for GaugeLog {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::noop()
    }
    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        metrics::Gauge::from_arc(Arc::new(LoggedGauge(name, self.clone())))
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

#[tokio::test(start_paused = true)]
async fn each_cut_is_an_event_and_the_rate_a_gauge() {
    let log = EventLog::global();
    let gauges = GaugeLog::default();
    let pacer = Pacer::standalone("pace-events", PaceConfig::default());
    let start = Instant::now();
    for _ in 0..20 {
        let permit = pacer.acquire(0, None).await.unwrap();
        permit.on_success(Instant::now());
        tokio::time::sleep(100 * MS).await;
    }
    let permit = pacer.acquire(0, None).await.unwrap();
    metrics::with_local_recorder(&gauges, || permit.on_rate_limited(Instant::now()));
    let after_first = pacer.rate().unwrap();
    tokio::time::sleep(S).await;
    let permit = pacer.acquire(0, None).await.unwrap();
    metrics::with_local_recorder(&gauges, || permit.on_rate_limited(Instant::now()));
    let after_second = pacer.rate().unwrap();
    assert!(after_second < after_first);

    let cuts: Vec<_> = log
        .with_message("pace rate cut")
        .into_iter()
        .filter(|e| e.field("pacer") == Some("pace-events"))
        .collect();
    assert_eq!(cuts.len(), 2, "{cuts:?}");
    assert_eq!(cuts[0].level, tracing::Level::INFO);
    assert_eq!(cuts[0].field("reason"), Some("rate_limited"));
    assert_eq!(cuts[0].field("rate_before"), Some("inf"));
    let parse = |e: &common::Event, f: &str| e.field(f).unwrap().parse::<f64>().unwrap();
    assert_eq!(parse(&cuts[0], "rate_after"), after_first);
    assert_eq!(parse(&cuts[1], "rate_before"), after_first);
    assert_eq!(parse(&cuts[1], "rate_after"), after_second);

    let gauges = gauges.0.lock().unwrap();
    let name = format!("{RATE_GAUGE}{{pacer=pace-events}}");
    assert_eq!(
        gauges.as_slice(),
        &[(name.clone(), after_first), (name, after_second)]
    );
    let _ = start;
}

#[test]
fn registry_creates_once_and_registration_must_come_first() {
    let config = PaceConfig {
        rpm: Some(500),
        tpm: Some(200_000),
        ..PaceConfig::default()
    };
    let registered = register_pacer("reg-openai", config.clone()).unwrap();
    assert!(std::ptr::eq(registered, pacer("reg-openai")));
    assert_eq!(pacer("reg-openai").config(), &config);
    let late = pacer("reg-anthropic");
    assert_eq!(late.config(), &PaceConfig::default());
    let err = register_pacer("reg-anthropic", config).unwrap_err();
    assert!(std::ptr::eq(err.existing, late));
    assert!(err.to_string().contains("reg-anthropic"), "{err}");
}

// ---- properties of the pure parts ----

proptest! {
    /// The bucket never admits more than `t / interval + burst` units in any window of
    /// length `t`, whatever the arrival pattern and weights (each no heavier than the burst).
    #[test]
    fn gcra_never_exceeds_rate_times_t_plus_burst(
        interval_ms in 1u64..500,
        burst in 1u64..8,
        arrivals in prop::collection::vec((0u64..400, 0u64..8, any::<bool>()), 1..120),
    ) {
        let interval = interval_ms * 1_000_000;
        let mut bucket = Gcra::new(interval, burst);
        let mut now = 1_000_000_000u64;
        let mut admitted: Vec<(u64, u64)> = Vec::new();
        for (gap_ms, weight, waits) in arrivals {
            now += gap_ms * 1_000_000;
            let weight = weight.min(burst);
            let at = bucket.earliest(now, weight);
            if waits || at == now {
                // A waiting caller is admitted at its turn; a non-waiting one only at once.
                bucket.take(at, weight);
                admitted.push((at, weight));
                now = now.max(at);
            }
        }
        for i in 0..admitted.len() {
            let mut units = 0u128;
            for j in i..admitted.len() {
                units += u128::from(admitted[j].1);
                let span = u128::from(admitted[j].0 - admitted[i].0);
                prop_assert!(
                    units * u128::from(interval) <= span + u128::from(burst) * u128::from(interval),
                    "{} units in {} ns", units, span
                );
            }
        }
    }

    /// The law: right after a cut the rate is `BETA × W`; it never falls as time passes (until
    /// the next cut); it rests at `PLATEAU × W` for the hold; then it probes, up to `W`.
    #[test]
    fn cubic_rises_to_the_plateau_holds_then_probes(
        w in 0.6f64..5000.0,
        hold_ms in 0u64..60_000,
    ) {
        let t0 = 1_000_000_000_000u64;
        let law = Cubic::cut(w, t0, Duration::from_millis(hold_ms));
        prop_assert!((law.rate_at(t0) - BETA * w).abs() < 1e-6 * w);
        let mut prev = law.rate_at(t0);
        let mut t = t0;
        while t < t0 + 120_000_000_000 {
            t += 50_000_000;
            let r = law.rate_at(t);
            prop_assert!(r + 1e-9 * w >= prev, "fell from {} to {} at {}", prev, r, t - t0);
            prev = r;
        }
        let p = law.plateau_from_ns();
        prop_assert!((law.rate_at(p) - PLATEAU * w).abs() < 1e-6 * w);
        if hold_ms > 0 {
            let mid = p + hold_ms * 500_000;
            prop_assert!((law.rate_at(mid) - PLATEAU * w).abs() < 1e-9 * w);
        }
        // The first probe step stops at the ceiling, the rate the 429 came at.
        prop_assert!((1.0 + PROBE) * PLATEAU > 1.0);
        prop_assert!((prev - w).abs() < 1e-9 * w);
    }
}

/// The same scenarios over 30 seeds each, and at 50 requests/s with answers after 0.5-2 s
/// (printed only): `cargo test --test pace -- --ignored --nocapture`. A minute or two in debug.
#[tokio::test(start_paused = true)]
#[ignore = "a slower sweep over seeds, for tuning the law"]
async fn sweep_over_seeds() {
    let mut failed = Vec::new();
    for seed in 100..130u64 {
        for (name, model, feedback, headers, limit) in [
            (
                "sweep-sliding",
                Limit::SlidingWindow,
                Feedback::Permit,
                false,
                10,
            ),
            (
                "sweep-bucket",
                Limit::TokenBucket,
                Feedback::Permit,
                false,
                10,
            ),
            (
                "sweep-pacer-feedback",
                Limit::SlidingWindow,
                Feedback::Pacer,
                false,
                10,
            ),
            (
                "sweep-headers",
                Limit::TokenBucket,
                Feedback::Permit,
                true,
                10,
            ),
            (
                "sweep-sliding-50",
                Limit::SlidingWindow,
                Feedback::Permit,
                false,
                50,
            ),
            (
                "sweep-bucket-50",
                Limit::TokenBucket,
                Feedback::Permit,
                false,
                50,
            ),
            (
                "sweep-headers-50",
                Limit::TokenBucket,
                Feedback::Permit,
                true,
                50,
            ),
        ] {
            let mut s = Scenario {
                feedback,
                headers,
                limit,
                ..Scenario::new(name, model, seed)
            };
            if limit == 50 {
                s.answer = (500 * MS, 2000 * MS);
            }
            let f = simulate(&s).await;
            print(&s, &f);
            let met = f.settled_at.is_some_and(|t| t <= 60 * S)
                && f.share_429_settled < 0.02
                && (!headers || f.share_429_first_minute < 0.02);
            if !met && limit == 10 {
                failed.push((name, seed));
            }
        }
    }
    assert!(failed.is_empty(), "{failed:?}");
}

#[tokio::test(start_paused = true)]
async fn a_turn_past_max_wait_is_refused_at_once_and_takes_nothing() {
    let pacer = Pacer::standalone(
        "pace-max-wait",
        PaceConfig {
            rpm: Some(60),
            adaptive: false,
            burst: Duration::ZERO,
            max_wait: Some(Duration::from_millis(1500)),
            ..PaceConfig::default()
        },
    );
    let start = Instant::now();
    let first = pacer.acquire(0, None).await.unwrap();
    drop(first);
    // The next turn is 1 s away: within the line's 1.5 s.
    let second = pacer.acquire(0, None).await.unwrap();
    assert_eq!(second.waited(), Duration::from_secs(1));
    drop(second);
    // Two at once: the first waits 1 s, the second's turn (2 s) is past 1.5 s.
    let (a, b) = tokio::join!(pacer.acquire(0, None), pacer.acquire(0, None));
    assert!(a.is_ok());
    assert!(
        matches!(b, Err(PaceError::LineTooLong { max_wait, .. }) if max_wait == Duration::from_millis(1500)),
        "{b:?}"
    );
    // Nothing was taken by the refusal: the next caller's turn is 1 s after the last.
    let next = pacer.acquire(0, None).await.unwrap();
    assert_eq!(next.waited(), Duration::from_secs(1));
    assert_eq!(start.elapsed(), Duration::from_secs(3));
}

/// A rate above a thousand a second: tokio's timers fire on the millisecond, so a head wakes
/// up to 1 ms after its due time. The line still keeps its rate (the permits due within each
/// millisecond go out together, none before its due time), in arrival order, rather than two
/// permits a millisecond (which took 500 ms for these 1,000).
#[tokio::test(start_paused = true)]
async fn a_line_faster_than_the_timer_keeps_its_rate() {
    const WAITERS: usize = 1000;
    let pacer: &'static Pacer = Box::leak(Box::new(Pacer::standalone(
        "line-fast",
        PaceConfig {
            rpm: Some(600_000), // 10 000/s: one per 100 us
            adaptive: false,
            burst: Duration::ZERO,
            max_wait: None,
            ..PaceConfig::default()
        },
    )));
    let start = Instant::now();
    let released: Arc<Mutex<Vec<(usize, Duration)>>> = Arc::default();
    let mut handles = Vec::new();
    for i in 0..WAITERS {
        let released = released.clone();
        handles.push(tokio::spawn(async move {
            let permit = pacer.acquire(0, None).await.unwrap();
            released
                .lock()
                .unwrap()
                .push((i, permit.granted_at() - start));
        }));
        tokio::task::yield_now().await;
    }
    for h in handles {
        h.await.unwrap();
    }
    let released = released.lock().unwrap();
    let interval = Duration::from_micros(100);
    for (j, &(i, granted)) in released.iter().enumerate() {
        assert_eq!(i, j, "FIFO");
        let due = interval * j as u32;
        assert!(
            granted >= due && granted < due + MS,
            "permit {j} at {granted:?}, due {due:?}"
        );
    }
    // The last is due at 99.9 ms: served on the timer's next millisecond.
    assert_eq!(start.elapsed(), interval * WAITERS as u32);
}
