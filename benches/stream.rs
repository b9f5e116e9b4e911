//! What a streaming `#[resilient]` call costs per chunk: 1000 chunks read from an in-memory
//! stream, raw against the same stream inside a committed `Streamed` (with an `idle` timer,
//! reset on every chunk). Criterion reports the time of 1000 chunks; the per-chunk figures and
//! the ratio of this run are printed after it. Run with `cargo bench --bench stream`; the
//! numbers are in `docs/PERFORMANCE.md`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use futures::StreamExt;
use retry_runtime::{resilient, Rejected, Streamed};

const CHUNKS: u64 = 1_000;

type Chunks = futures::stream::Iter<std::ops::Range<u64>>;
type Items = futures::stream::Map<Chunks, fn(u64) -> Result<u64, Rejected>>;

fn items() -> Items {
    futures::stream::iter(0..CHUNKS).map(Ok as fn(u64) -> Result<u64, Rejected>)
}

#[resilient(max = 3, first_token = "10s", idle = "30s")]
async fn streamed() -> Result<Streamed<Items>, Rejected> {
    Ok(Streamed::new(items()))
}

async fn read_raw() -> u64 {
    let mut s = items();
    let mut sum = 0;
    while let Some(Ok(x)) = s.next().await {
        sum += black_box(x);
    }
    sum
}

async fn read_streamed() -> u64 {
    let mut s = streamed().await.unwrap();
    let mut sum = 0;
    while let Some(Ok(x)) = s.next().await {
        sum += black_box(x);
    }
    sum
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

fn stream(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("stream");
    group.bench_function("raw", |b| b.iter(|| rt.block_on(read_raw())));
    group.bench_function("streamed", |b| b.iter(|| rt.block_on(read_streamed())));
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = stream
}

/// Interleaved rounds of both, median per-chunk times and ratio: this VM's drift between
/// criterion's rows does not skew it.
fn interleaved() {
    let rt = runtime();
    let (mut raw, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..200 {
        let t = Instant::now();
        black_box(rt.block_on(read_raw()));
        raw.push(t.elapsed().as_nanos() as f64 / CHUNKS as f64);
        let t = Instant::now();
        black_box(rt.block_on(read_streamed()));
        ours.push(t.elapsed().as_nanos() as f64 / CHUNKS as f64);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (r, o) = (median(&mut raw), median(&mut ours));
    println!("stream: ns per chunk, interleaved medians (1000 chunks per call, the call's set-up included)");
    println!("  raw       {r:>8.1}");
    println!("  streamed  {o:>8.1}");
    println!("  ratio     {:>8.2}", o / r);
}

fn main() {
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
    interleaved();
}
