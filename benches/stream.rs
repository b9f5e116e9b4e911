//! What a streaming `#[resilient]` call costs per chunk, two ways:
//! - `memory`: 1000 chunks read from an in-memory stream (the cheapest stream there is), raw
//!   against the same stream inside a committed `Streamed` (with `first_token` and `idle`);
//! - `sse`: a chat completion of 1000 chunks streamed by async-openai's `create_stream` from a
//!   local server on loopback (the tests' SSE server), raw against the same call under
//!   `#[resilient]`: what a user's own stream costs, and what the wrapper adds to it.
//!
//! After criterion's report the bench prints interleaved per-chunk medians and ratios of this
//! run. Run with `cargo bench --bench stream`; the numbers are in `docs/PERFORMANCE.md`.

#[path = "../tests/sse_server/mod.rs"]
mod sse_server;

use std::hint::black_box;
use std::time::{Duration, Instant};

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, ChatCompletionResponseStream,
    CreateChatCompletionRequest, CreateChatCompletionRequestArgs,
};
use async_openai::Client;
use criterion::{criterion_group, Criterion};
use futures::StreamExt;
use retry_runtime::integrations::openai::single_attempt_client;
use retry_runtime::{resilient, Rejected, Streamed};
use sse_server::{Scripted, SseServer, MODEL};

/// Chunks per call: 1000, or `STREAM_BENCH_CHUNKS` (e.g. 10000, to separate the call's set-up
/// from the per-chunk cost).
fn chunks() -> u64 {
    static CHUNKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *CHUNKS.get_or_init(|| {
        std::env::var("STREAM_BENCH_CHUNKS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1_000)
    })
}

type Chunks = futures::stream::Iter<std::ops::Range<u64>>;
type Items = futures::stream::Map<Chunks, fn(u64) -> Result<u64, Rejected>>;

fn items() -> Items {
    futures::stream::iter(0..chunks()).map(Ok as fn(u64) -> Result<u64, Rejected>)
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
        .enable_all()
        .build()
        .unwrap()
}

#[resilient(max = 3, first_token = "10s", idle = "30s")]
async fn sse_streamed(
    client: &Client<OpenAIConfig>,
    request: &CreateChatCompletionRequest,
) -> Result<Streamed<ChatCompletionResponseStream>, OpenAIError> {
    Ok(Streamed::new(
        client.chat().create_stream(request.clone()).await?,
    ))
}

/// Read a chat stream to its end; the number of chunks.
async fn drain(mut s: impl futures::Stream<Item = Result<impl Sized, OpenAIError>> + Unpin) -> u64 {
    let mut n = 0;
    while let Some(Ok(chunk)) = s.next().await {
        black_box(chunk);
        n += 1;
    }
    n
}

struct Sse {
    _server: SseServer,
    client: Client<OpenAIConfig>,
    request: CreateChatCompletionRequest,
}

impl Sse {
    fn start(rt: &tokio::runtime::Runtime) -> Self {
        let words: Vec<String> = (0..chunks()).map(|i| format!(" w{i}")).collect();
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        let server = rt.block_on(SseServer::start(vec![Scripted::words(&words)]));
        let config = OpenAIConfig::new()
            .with_api_base(server.base_url())
            .with_api_key("sk-bench");
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let client = single_attempt_client(config, http);
        let request = CreateChatCompletionRequestArgs::default()
            .model(MODEL)
            .messages([ChatCompletionRequestUserMessageArgs::default()
                .content("bench")
                .build()
                .unwrap()
                .into()])
            .build()
            .unwrap();
        Sse {
            _server: server,
            client,
            request,
        }
    }

    async fn raw(&self) -> u64 {
        let s = self
            .client
            .chat()
            .create_stream(self.request.clone())
            .await
            .unwrap();
        drain(s).await
    }

    async fn ours(&self) -> u64 {
        drain(sse_streamed(&self.client, &self.request).await.unwrap()).await
    }
}

fn stream(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("stream");
    group.bench_function("memory_raw", |b| b.iter(|| rt.block_on(read_raw())));
    group.bench_function("memory_streamed", |b| {
        b.iter(|| rt.block_on(read_streamed()))
    });
    let sse = Sse::start(&rt);
    group.bench_function("sse_raw", |b| b.iter(|| rt.block_on(sse.raw())));
    group.bench_function("sse_streamed", |b| b.iter(|| rt.block_on(sse.ours())));
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = stream
}

/// Interleaved rounds of each pair, median per-chunk times and ratios: this VM's drift between
/// criterion's rows does not skew them.
fn interleaved() {
    let rt = runtime();
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let per_chunk = |t: Instant| t.elapsed().as_nanos() as f64 / chunks() as f64;
    let (mut raw, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..200 {
        let t = Instant::now();
        black_box(rt.block_on(read_raw()));
        raw.push(per_chunk(t));
        let t = Instant::now();
        black_box(rt.block_on(read_streamed()));
        ours.push(per_chunk(t));
    }
    let (r, o) = (median(&mut raw), median(&mut ours));
    let sse = Sse::start(&rt);
    let (mut sraw, mut sours) = (Vec::new(), Vec::new());
    for _ in 0..40 {
        let t = Instant::now();
        black_box(rt.block_on(sse.raw()));
        sraw.push(per_chunk(t));
        let t = Instant::now();
        black_box(rt.block_on(sse.ours()));
        sours.push(per_chunk(t));
    }
    let (sr, so) = (median(&mut sraw), median(&mut sours));
    println!(
        "stream: ns per chunk, interleaved medians ({} chunks per call, the call included)",
        chunks()
    );
    println!(
        "  memory  raw {r:>9.1}  streamed {o:>9.1}  ratio {:.2}",
        o / r
    );
    println!(
        "  sse     raw {sr:>9.1}  streamed {so:>9.1}  ratio {:.2}",
        so / sr
    );
}

fn main() {
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
    interleaved();
}
