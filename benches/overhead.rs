//! What `#[resilient]` costs on the happy path: a first attempt that succeeds at once.
//!
//! Every row runs the same body (`Ok(black_box(x))`) 64 times inside one `rt.block_on` on a
//! current-thread runtime built up front (so `block_on`'s own cost, ~150-250 ns on the CI
//! machine, is spread over 64 calls), and the difference to `bare` is the executor alone.
//! Criterion reports the time of 64 calls; divide by 64 for one. Run with
//! `cargo bench --bench overhead`; the numbers are in `docs/PERFORMANCE.md`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use retry_runtime::{
    resilient, retry, CallSite, Classify, ErrorClass, Metered, Policy, Rejected, Spend,
};

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

/// Calls per measured iteration.
const CALLS: usize = 64;

fn overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
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
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = overhead
}
criterion_main!(benches);
