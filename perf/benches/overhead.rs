//! What `#[resilient]` costs on the happy path: a first attempt that succeeds at once.
//!
//! Every row runs the same body (`Ok(black_box(x))`) 64 times inside one `rt.block_on` on a
//! current-thread runtime built up front (so `block_on`'s own cost, ~150-250 ns on the CI
//! machine, is spread over 64 calls), and the difference to `bare` is the executor alone.
//! Criterion reports the time of 64 calls; divide by 64 for one. Run with
//! `cargo bench -p resilient-bench --bench overhead` (its own package, so that tokio is built
//! without `test-util`, as a service builds it); the numbers are in `docs/PERFORMANCE.md`.
//!
//! The same group times the peer crates around the same body (backon, tokio-retry2,
//! failsafe). After criterion's report the bench prints, for this run, per-call medians and
//! the ours/bare and ours/peer ratios twice: from criterion's estimates, and from a second
//! pass that times the rows interleaved (see `interleaved`), which this VM's drift between
//! rows does not skew.

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use backon::{ExponentialBuilder, Retryable};
use criterion::{criterion_group, Criterion};
use failsafe::futures::CircuitBreaker as _;
use retry_runtime::{resilient, retry, CallSite, Metered, Policy, Rejected, Spend};
use tokio_retry2::strategy::ExponentialFactorBackoff;
use tokio_retry2::{Retry, RetryError};

// Every row's error type is the runtime's own `Rejected`: it is `Classify` and (trivially)
// `From<Rejected>`, the smallest type a timeout or breaker policy accepts.
async fn bare(x: u64) -> Result<u64, Rejected> {
    Ok(black_box(x))
}

#[resilient]
async fn resilient_default(x: u64) -> Result<u64, Rejected> {
    Ok(black_box(x))
}

#[resilient(timeout = "5s")]
async fn resilient_timeout(x: u64) -> Result<u64, Rejected> {
    Ok(black_box(x))
}

#[resilient(breaker = "bench")]
async fn resilient_breaker(x: u64) -> Result<u64, Rejected> {
    Ok(black_box(x))
}

/// An unconfigured pacer: adaptive, no rate learned yet, so every call takes its fast path.
#[resilient(pace = "bench")]
async fn resilient_pace(x: u64) -> Result<u64, Rejected> {
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
async fn resilient_breaker_budget(x: u64) -> Result<Billed, Rejected> {
    Ok(Billed(black_box(x)))
}

static BY_HAND: Policy = Policy::new("overhead::retry_fn");
static BY_HAND_SITE: CallSite = CallSite::new(&BY_HAND);

async fn retry_fn(x: u64) -> Result<u64, Rejected> {
    retry(&BY_HAND_SITE, || async move { Ok(black_box(x)) }).await
}

/// backon's documented form: `Retryable` on an async fn, its default exponential builder
/// (1 s doubling to 60 s, 3 retries, no jitter).
async fn backon_call(x: u64) -> Result<u64, Rejected> {
    (move || bare(x)).retry(ExponentialBuilder::default()).await
}

/// tokio-retry2's `Retry::spawn` with its doubling strategy (500 ms, x2, capped at 8 s),
/// 3 retries. Its actions return `RetryError`, so the body's error is wrapped as transient;
/// `Retry` hands back the unwrapped error.
async fn tokio_retry2_call(x: u64) -> Result<u64, Rejected> {
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

/// One row: runs `iters` iterations of `CALLS` calls each and returns the time they took.
type Timed<'a> = Box<dyn FnMut(u64) -> Duration + 'a>;

/// Per-call samples from the interleaved pass, by row, when it ran (see `interleaved`).
static INTERLEAVED: OnceLock<Vec<(&'static str, Vec<f64>)>> = OnceLock::new();

fn overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
    let rt = &rt;
    // failsafe's default breaker (consecutive failures or success rate over a window),
    // shared by every call like a named breaker of ours.
    let breaker = failsafe::Config::new().build();
    let breaker = &breaker;
    let failsafe_call = |x| breaker.call(bare(x));
    // backon retrying through a failsafe breaker: the peers' nearest match to our
    // `with_breaker` row (a breaker consulted on every attempt, inside the retry loop).
    let backon_failsafe_call =
        |x| (move || breaker.call(bare(x))).retry(ExponentialBuilder::default());
    macro_rules! timed {
        ($call:expr) => {
            Box::new(move |iters: u64| {
                let start = Instant::now();
                for _ in 0..iters {
                    rt.block_on(async {
                        for _ in 0..CALLS {
                            black_box($call(black_box(7)).await.is_ok());
                        }
                    });
                }
                start.elapsed()
            }) as Timed<'_>
        };
    }
    let mut rows: Vec<(&'static str, Timed<'_>)> = vec![
        ("bare", timed!(bare)),
        ("resilient", timed!(resilient_default)),
        ("resilient_timeout", timed!(resilient_timeout)),
        ("retry_fn", timed!(retry_fn)),
        ("with_breaker", timed!(resilient_breaker)),
        ("breaker_budget", timed!(resilient_breaker_budget)),
        ("with_pace", timed!(resilient_pace)),
        ("backon", timed!(backon_call)),
        ("tokio_retry2", timed!(tokio_retry2_call)),
        ("failsafe", timed!(failsafe_call)),
        ("backon_failsafe", timed!(backon_failsafe_call)),
    ];
    let mut ran = vec![false; rows.len()];
    let mut group = c.benchmark_group("overhead");
    for ((name, row), ran) in rows.iter_mut().zip(ran.iter_mut()) {
        group.bench_function(*name, |b| {
            *ran = true;
            b.iter_custom(&mut *row)
        });
    }
    group.finish();
    // Only after a full measuring run: not under `--test`, `--list` or a name filter.
    let measuring = std::env::args().any(|a| a == "--bench");
    if measuring && ran.iter().all(|&r| r) {
        let _ = INTERLEAVED.set(interleaved(&mut rows));
    }
}

/// Criterion measures the rows one after the other, and on this shared VM the level of the
/// whole machine shifts by tens of nanoseconds per call between rows. This pass times every
/// row again in rounds, each round visiting all rows (starting one further on each time), so
/// a shift hits all rows alike, and ratios can be taken within a round.
fn interleaved(rows: &mut [(&'static str, Timed<'_>)]) -> Vec<(&'static str, Vec<f64>)> {
    const ROUNDS: usize = 101;
    const SAMPLE: Duration = Duration::from_millis(2);
    // Iterations per sample so that one sample takes about SAMPLE.
    let iters: Vec<u64> = rows
        .iter_mut()
        .map(|(_, row)| {
            let mut n = 1u64;
            loop {
                let took = row(n);
                if took >= SAMPLE / 4 || n >= 1 << 30 {
                    let per_iter = took.as_secs_f64().max(1e-9) / n as f64;
                    break (SAMPLE.as_secs_f64() / per_iter).ceil().max(1.0) as u64;
                }
                n *= 2;
            }
        })
        .collect();
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(ROUNDS); rows.len()];
    for round in 0..ROUNDS {
        for k in 0..rows.len() {
            let i = (round + k) % rows.len();
            let took = (rows[i].1)(iters[i]);
            samples[i].push(took.as_nanos() as f64 / (iters[i] * CALLS as u64) as f64);
        }
    }
    rows.iter().map(|(name, _)| *name).zip(samples).collect()
}

fn median(mut xs: Vec<f64>) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    Some(xs[xs.len() / 2])
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
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
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

/// Per-call medians and ratios, from the estimates criterion just wrote and from the
/// interleaved pass.
fn print_ratios(started: SystemTime) {
    let criterion: Vec<Option<f64>> = ROWS
        .iter()
        .map(|&(row, _)| median_per_call(row, started))
        .collect();
    if criterion.iter().all(Option::is_none) {
        return;
    }
    let interleaved = INTERLEAVED.get();
    let samples = |name: &str| {
        interleaved
            .and_then(|rows| rows.iter().find(|(row, _)| *row == name))
            .map(|(_, s)| s)
    };
    let by_criterion = |name: &str| {
        ROWS.iter()
            .position(|&(row, _)| row == name)
            .and_then(|i| criterion[i])
    };
    let cell = |x: Option<f64>, digits: usize| match x {
        Some(x) => format!("{x:>10.digits$}"),
        None => format!("{:>10}", "-"),
    };
    println!("\noverhead: ns per call, this run (criterion median | interleaved median)");
    for (&(row, what), crit) in ROWS.iter().zip(&criterion) {
        let inter = samples(row).and_then(|s| median(s.clone()));
        println!("  {row:<18} {} {}  {what}", cell(*crit, 1), cell(inter, 1));
    }
    println!("ratios, this run (criterion medians | interleaved: median of the per-round ratios)");
    for (ours, theirs) in RATIOS {
        let crit = by_criterion(ours)
            .zip(by_criterion(theirs))
            .map(|(a, b)| a / b);
        let inter = samples(ours)
            .zip(samples(theirs))
            .and_then(|(a, b)| median(a.iter().zip(b).map(|(x, y)| x / y).collect()));
        println!(
            "  {:<34} {} {}",
            format!("{ours} / {theirs}"),
            cell(crit, 2),
            cell(inter, 2)
        );
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
