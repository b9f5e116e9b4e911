//! What `#[resilient]` costs on the happy path: a first attempt that succeeds at once.
//!
//! Every row runs the same body (`Ok(black_box(x))`) through `rt.block_on` on one
//! current-thread runtime built up front, so the difference to `bare` is the executor alone.
//! Run with `cargo bench --bench overhead`; the numbers are in `docs/PERFORMANCE.md`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use retry_runtime::{resilient, retry, CallSite, Classify, ErrorClass, Policy, Rejected};

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

static BY_HAND: Policy = Policy::new("overhead::retry_fn");
static BY_HAND_SITE: CallSite = CallSite::new(&BY_HAND);

async fn retry_fn(x: u64) -> Result<u64, BenchError> {
    retry(&BY_HAND_SITE, || async move { Ok(black_box(x)) }).await
}

fn overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
    let mut group = c.benchmark_group("overhead");
    group.bench_function("bare", |b| b.iter(|| rt.block_on(bare(black_box(7)))));
    group.bench_function("resilient", |b| {
        b.iter(|| rt.block_on(resilient_default(black_box(7))))
    });
    group.bench_function("resilient_timeout", |b| {
        b.iter(|| rt.block_on(resilient_timeout(black_box(7))))
    });
    group.bench_function("retry_fn", |b| {
        b.iter(|| rt.block_on(retry_fn(black_box(7))))
    });
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
