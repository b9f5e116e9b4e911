//! What `#[resilient]` costs on the happy path: a first attempt that succeeds at once.
//!
//! Every row runs the same body (`Ok(black_box(x))`) 64 times inside one `rt.block_on` on a
//! current-thread runtime built up front (so `block_on`'s own cost, ~150-250 ns on the CI
//! machine, is spread over 64 calls), and the difference to `bare` is the executor alone.
//! Criterion reports the time of 64 calls; divide by 64 for one. Run with
//! `cargo bench --bench overhead`; the numbers are in `docs/PERFORMANCE.md`.
//!
//! The same group times the peer crates around the same body (backon, tokio-retry2,
//! failsafe), and after criterion's own report the bench prints per-call medians and the
//! ours/bare and ours/peer ratios, read back from this run's criterion estimates.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use backon::{ExponentialBuilder, Retryable};
use criterion::{criterion_group, Criterion};
use failsafe::futures::CircuitBreaker as _;
use retry_runtime::{
    resilient, retry, CallSite, Classify, ErrorClass, Metered, Policy, Rejected, Spend,
};
use tokio_retry2::strategy::ExponentialFactorBackoff;
use tokio_retry2::{Retry, RetryError};

/// The smallest error type a timeout policy accepts: it only ever holds the runtime's own.
#[derive(Debug)]
struct BenchError(Rejected);

impl From<Rejected> for BenchError {
    fn from(r: Rejected) -> Self {
        BenchError(r)
    }
}

impl Classify for BenchError {
    fn class(&self) -> ErrorClass {
        self.0.class()
    }
}

async fn bare(x: u64) -> Result<u64, BenchError> {
    Ok(black_box(x))
}

#[resilient]
async fn resilient_default(x: u64) -> Result<u64, BenchError> {
    Ok(black_box(x))
}

#[resilient(timeout = "5s")]
async fn resilient_timeout(x: u64) -> Result<u64, BenchError> {
    Ok(black_box(x))
}

#[resilient(breaker = "bench")]
async fn resilient_breaker(x: u64) -> Result<u64, BenchError> {
    Ok(black_box(x))
}

/// An unconfigured pacer: adaptive, no rate learned yet, so every call takes its fast path.
#[resilient(pace = "bench")]
async fn resilient_pace(x: u64) -> Result<u64, BenchError> {
    Ok(black_box(x))
}

/// An answer that says what it cost, for the budget row.
struct Billed(u64);

impl Metered for Billed {
    fn spend(&self) -> Spend {
        Spend::from_micros(self.0)
    }
}

#[resilient(breaker = "bench-budget", budget = "0.10usd")]
async fn resilient_breaker_budget(x: u64) -> Result<Billed, BenchError> {
    Ok(Billed(black_box(x)))
}

static BY_HAND: Policy = Policy::new("overhead::retry_fn");
static BY_HAND_SITE: CallSite = CallSite::new(&BY_HAND);

async fn retry_fn(x: u64) -> Result<u64, BenchError> {
    retry(&BY_HAND_SITE, || async move { Ok(black_box(x)) }).await
}

/// backon's documented form: `Retryable` on an async fn, its default exponential builder
/// (1 s doubling to 60 s, 3 retries, no jitter).
async fn backon_call(x: u64) -> Result<u64, BenchError> {
    (move || bare(x)).retry(ExponentialBuilder::default()).await
}

/// tokio-retry2's `Retry::spawn` with its doubling strategy (500 ms, x2, capped at 8 s),
/// 3 retries. Its actions return `RetryError`, so the body's error is wrapped as transient;
/// `Retry` hands back the unwrapped error.
async fn tokio_retry2_call(x: u64) -> Result<u64, BenchError> {
    let strategy = ExponentialFactorBackoff::from_millis(500, 2.0)
        .max_delay_millis(8_000)
        .take(3);
    Retry::spawn(strategy, move || async move {
        bare(x).await.map_err(RetryError::transient)
    })
    .await
}

/// Calls per measured iteration.
const CALLS: usize = 64;

fn overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
    // failsafe's default breaker (consecutive failures or success rate over a window),
    // shared by every call like a named breaker of ours.
    let breaker = failsafe::Config::new().build();
    let breaker = &breaker;
    let failsafe_call = |x| breaker.call(bare(x));
    // backon retrying through a failsafe breaker: the peers' nearest match to our
    // `with_breaker` row (a breaker consulted on every attempt, inside the retry loop).
    let backon_failsafe_call =
        |x| (move || breaker.call(bare(x))).retry(ExponentialBuilder::default());
    let mut group = c.benchmark_group("overhead");
    macro_rules! row {
        ($name:literal, $call:expr) => {
            group.bench_function($name, |b| {
                b.iter(|| {
                    rt.block_on(async {
                        for _ in 0..CALLS {
                            black_box($call(black_box(7)).await.is_ok());
                        }
                    })
                })
            });
        };
    }
    row!("bare", bare);
    row!("resilient", resilient_default);
    row!("resilient_timeout", resilient_timeout);
    row!("retry_fn", retry_fn);
    row!("with_breaker", resilient_breaker);
    row!("breaker_budget", resilient_breaker_budget);
    row!("with_pace", resilient_pace);
    row!("backon", backon_call);
    row!("tokio_retry2", tokio_retry2_call);
    row!("failsafe", failsafe_call);
    row!("backon_failsafe", backon_failsafe_call);
    group.finish();
}

/// Rows in the order they are printed, with what each one is.
const ROWS: [(&str, &str); 11] = [
    ("bare", "plain async fn"),
    ("resilient", "ours, default policy"),
    ("resilient_timeout", "ours, timeout"),
    ("retry_fn", "ours, retry(&SITE, ..)"),
    ("with_breaker", "ours, breaker"),
    ("breaker_budget", "ours, breaker + budget"),
    ("with_pace", "ours, pacer"),
    ("backon", "backon, retry"),
    ("tokio_retry2", "tokio-retry2, retry"),
    ("failsafe", "failsafe, breaker"),
    ("backon_failsafe", "backon retry + failsafe breaker"),
];

/// The ratios the comparison rests on: (ours, theirs).
const RATIOS: [(&str, &str); 10] = [
    ("resilient", "bare"),
    ("with_breaker", "bare"),
    ("breaker_budget", "bare"),
    ("resilient", "backon"),
    ("resilient", "tokio_retry2"),
    ("with_breaker", "failsafe"),
    ("with_breaker", "backon_failsafe"),
    ("breaker_budget", "failsafe"),
    ("breaker_budget", "backon_failsafe"),
    ("backon", "bare"),
];

/// Where criterion writes its estimates, found the way criterion finds it.
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("criterion")
}

/// This run's median for one row, in ns per call; `None` if the row was not measured in this
/// process (filtered out, `--test` mode, or an estimates file left by an earlier run).
fn median_per_call(row: &str, started: SystemTime) -> Option<f64> {
    let path = criterion_dir()
        .join("overhead")
        .join(row)
        .join("new")
        .join("estimates.json");
    let fresh = std::fs::metadata(&path).ok()?.modified().ok()? >= started;
    if !fresh {
        return None;
    }
    let estimates: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    let median = estimates["median"]["point_estimate"].as_f64()?;
    Some(median / CALLS as f64)
}

/// Per-call medians and ratios from the estimates criterion just wrote.
fn print_ratios(started: SystemTime) {
    let medians: Vec<(&str, &str, Option<f64>)> = ROWS
        .iter()
        .map(|&(row, what)| (row, what, median_per_call(row, started)))
        .collect();
    if medians.iter().all(|(_, _, m)| m.is_none()) {
        return;
    }
    let get = |name: &str| {
        medians
            .iter()
            .find(|(row, _, _)| *row == name)
            .and_then(|(_, _, m)| *m)
    };
    println!("\noverhead: median per call, this run");
    for (row, what, median) in &medians {
        if let Some(ns) = median {
            println!("  {row:<18} {ns:>8.1} ns  {what}");
        }
    }
    println!("ratios (median / median), this run");
    for (ours, theirs) in RATIOS {
        if let (Some(a), Some(b)) = (get(ours), get(theirs)) {
            println!(
                "  {:<34} {:>6.2}  ({:+.1} ns)",
                format!("{ours} / {theirs}"),
                a / b,
                a - b
            );
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = overhead
}

// `criterion_main!` plus the ratio table: the same two calls it expands to, then ours.
fn main() {
    let started = SystemTime::now();
    benches();
    Criterion::default().configure_from_args().final_summary();
    print_ratios(started);
}
