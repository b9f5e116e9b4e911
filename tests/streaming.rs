//! Streaming calls in-process: retried until the first chunk, committed after it. Each test's
//! provider is a script of attempts; an attempt is an error before any stream, or a stream of
//! timed items. The caller's text is assembled from what the stream yields, so a chunk sent
//! twice would show.

mod common;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::task::{Context, Poll};
use std::time::Duration;

use common::ApiError;
use futures::StreamExt;
use retry_runtime::{
    breaker, configure, observe, pool, resilient, retry_on, BreakerConfig, BreakerState, Budget,
    CallReport, Config, ErrorClass, PoolConfig, Rejected, Spend, StopReason, Streamed,
};
use tokio::time::{Instant, Sleep};

const S: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

/// One item of a scripted stream: after `delay`, a chunk or an error.
type Item = (Duration, Result<String, ApiError>);

/// A stream that yields its items each after its delay (on tokio's clock).
struct Scripted {
    items: VecDeque<Item>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl futures::Stream for Scripted {
    type Item = Result<String, ApiError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some((delay, _)) = self.items.front() else {
            return Poll::Ready(None);
        };
        let delay = *delay;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.sleep = None;
        Poll::Ready(self.items.pop_front().map(|(_, item)| item))
    }
}

type Chunks = Scripted;

/// An attempt: an error before the stream, or the stream's items.
enum Attempt {
    Fails(ApiError),
    Streams(Vec<Item>),
}

struct Provider {
    attempts: Mutex<VecDeque<Attempt>>,
    calls: AtomicUsize,
}

impl Provider {
    fn new(attempts: Vec<Attempt>) -> Self {
        Provider {
            attempts: Mutex::new(attempts.into()),
            calls: AtomicUsize::new(0),
        }
    }

    async fn open(&self) -> Result<Chunks, ApiError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(10 * MS).await;
        match self.attempts.lock().unwrap().pop_front() {
            Some(Attempt::Fails(e)) => Err(e),
            Some(Attempt::Streams(items)) => Ok(Scripted {
                items: items.into(),
                sleep: None,
            }),
            None => Err(ApiError::status(500)),
        }
    }
}

fn chunk(text: &str) -> Item {
    (100 * MS, Ok(text.to_string()))
}

/// Each chunk costs one micro-dollar per byte (what a usage chunk would say).
// `&String`: `with_spend` takes a `fn(&Chunk)`, and the chunk is a `String`.
#[allow(clippy::ptr_arg)]
fn chunk_cost(chunk: &String) -> Spend {
    Spend::from_micros(chunk.len() as u64)
}

fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        configure(
            Config::default()
                .with_breaker(
                    "stream-cut",
                    BreakerConfig {
                        failures: 1,
                        ..BreakerConfig::default()
                    },
                )
                .with_breaker(
                    "stream-continue",
                    BreakerConfig {
                        failures: 1,
                        ..BreakerConfig::default()
                    },
                )
                .with_breaker(
                    "stream-queue",
                    BreakerConfig {
                        failures: 1,
                        cooldown: 5 * S,
                        ..BreakerConfig::default()
                    },
                )
                .with_pool(
                    "stream-pool",
                    PoolConfig {
                        limit: Budget::usd(1.0),
                        window: 3600 * S,
                    },
                ),
        )
        .unwrap();
    });
}

#[resilient(max = 3, base = "10ms", first_token = "5s", idle = "2s")]
#[retry_on(429, 500..=599, timeout, transport)]
async fn chat(p: &Provider) -> Result<Streamed<Chunks>, ApiError> {
    Ok(Streamed::new(p.open().await?).with_spend(chunk_cost))
}

#[resilient(max = 3, base = "10ms", first_token = "5s", breaker = "stream-cut")]
#[retry_on(500..=599, transport)]
async fn chat_breaker(p: &Provider) -> Result<Streamed<Chunks>, ApiError> {
    Ok(Streamed::new(p.open().await?).with_spend(chunk_cost))
}

#[resilient(max = 1, pool = "stream-pool", max_cost = "0.001usd")]
async fn chat_pool(p: &Provider) -> Result<Streamed<Chunks>, ApiError> {
    Ok(Streamed::new(p.open().await?).with_spend(chunk_cost))
}

/// Read the whole stream: the text, and the error that ended it, if one did.
async fn read(stream: Streamed<Chunks>) -> (String, Option<ApiError>) {
    let mut stream = stream;
    let mut text = String::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(chunk) => text.push_str(&chunk),
            Err(e) => return (text, Some(e)),
        }
    }
    (text, None)
}

async fn call(
    f: impl std::future::Future<Output = Result<Streamed<Chunks>, ApiError>>,
) -> (Result<(String, Option<ApiError>), ApiError>, CallReport) {
    observe(async {
        match f.await {
            Ok(stream) => Ok(read(stream).await),
            Err(e) => Err(e),
        }
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn errors_before_the_first_chunk_are_retried_and_the_answer_streams_once() {
    setup();
    let p = Provider::new(vec![
        Attempt::Fails(ApiError::status(429)),
        Attempt::Streams(vec![chunk("mock "), (400 * MS, Err(ApiError::status(503)))]),
        Attempt::Fails(ApiError::status(502)),
    ]);
    // The 429 is retried; the 503 comes after "mock ", when the call is committed.
    let (out, report) = call(chat(&p)).await;
    let (text, error) = out.unwrap();
    assert_eq!(text, "mock ");
    assert_eq!(error, Some(ApiError::status(503)));
    assert_eq!(
        p.calls.load(Ordering::SeqCst),
        2,
        "nothing retried after the first chunk"
    );
    assert_eq!(
        report.stop(),
        Some(&StopReason::StreamCut {
            chunks: 1,
            class: ErrorClass::Status(503)
        }),
        "{report}"
    );
    assert_eq!(report.attempts().len(), 2);
    assert_eq!(report.attempts()[0].class, Some(ErrorClass::Status(429)));

    let p = Provider::new(vec![
        Attempt::Fails(ApiError::status(500)),
        Attempt::Streams(vec![(S, Err(ApiError::status(503)))]),
        Attempt::Streams(vec![chunk("one "), chunk("two "), chunk("three")]),
    ]);
    let (out, report) = call(chat(&p)).await;
    let (text, error) = out.unwrap();
    assert_eq!((text.as_str(), error), ("one two three", None));
    assert_eq!(report.stop(), Some(&StopReason::Success));
    assert_eq!(
        report.attempts().len(),
        3,
        "two failures before any chunk, retried"
    );
    let stream = report.stream().expect("a stream report");
    assert_eq!(stream.chunks, 3);
    assert_eq!(
        report.spent(),
        Spend::from_micros(13),
        "each chunk's cost, summed"
    );
}

#[tokio::test(start_paused = true)]
async fn a_silent_first_chunk_is_cut_at_first_token_and_retried() {
    setup();
    let p = Provider::new(vec![
        Attempt::Streams(vec![(60 * S, Ok("too late".into()))]),
        Attempt::Streams(vec![chunk("fresh")]),
    ]);
    let start = Instant::now();
    let (out, report) = call(chat(&p)).await;
    assert_eq!(out.unwrap().0, "fresh");
    assert_eq!(report.attempts()[0].class, Some(ErrorClass::Timeout));
    assert!(
        start.elapsed() < 6 * S,
        "cut at 5 s, not after 60: {report}"
    );
    let first = report.stream().unwrap().first_chunk;
    assert!(first >= 5 * S && first < 6 * S, "{first:?}");
}

#[tokio::test(start_paused = true)]
async fn a_cut_after_three_chunks_ends_the_stream_counts_one_failure_and_repeats_nothing() {
    setup();
    let p = Provider::new(vec![
        Attempt::Streams(vec![
            chunk("a"),
            chunk("b"),
            chunk("c"),
            (100 * MS, Err(ApiError::Network)),
        ]),
        Attempt::Streams(vec![chunk("never")]),
    ]);
    assert_eq!(breaker("stream-cut").state(), BreakerState::Closed);
    let (out, report) = call(chat_breaker(&p)).await;
    let (text, error) = out.unwrap();
    assert_eq!(text, "abc", "each chunk exactly once");
    assert_eq!(error, Some(ApiError::Network));
    assert_eq!(p.calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        report.stop(),
        Some(&StopReason::StreamCut {
            chunks: 3,
            class: ErrorClass::Transport
        })
    );
    assert_eq!(report.spent(), Spend::from_micros(3), "the chunks it got");
    // `failures = 1`: the cut was the breaker's one outage failure.
    assert_eq!(breaker("stream-cut").state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn an_idle_gap_ends_the_stream() {
    setup();
    let p = Provider::new(vec![Attempt::Streams(vec![
        chunk("a"),
        chunk("b"),
        (10 * S, Ok("late".into())),
    ])]);
    let start = Instant::now();
    let (out, report) = call(chat(&p)).await;
    let (text, error) = out.unwrap();
    assert_eq!(text, "ab");
    assert_eq!(
        error,
        Some(ApiError::Runtime(Rejected::StreamIdle { idle: 2 * S }))
    );
    assert_eq!(
        report.stop(),
        Some(&StopReason::StreamCut {
            chunks: 2,
            class: ErrorClass::Timeout
        })
    );
    assert!(start.elapsed() < 3 * S, "{:?}", start.elapsed());
}

#[tokio::test(start_paused = true)]
async fn a_dropped_stream_is_cancelled_and_settles_what_it_used() {
    setup();
    let p = Provider::new(vec![Attempt::Streams(vec![
        chunk("12345"),
        chunk("678"),
        chunk("never read"),
    ])]);
    let pool = pool("stream-pool");
    let (_, report) = observe(async {
        let mut stream = chat_pool(&p).await.unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap(), "12345");
        assert_eq!(stream.next().await.unwrap().unwrap(), "678");
        // While the stream runs, the attempt's reservation is held.
        assert_eq!(pool.usage().committed.micros(), 1_000, "max_cost reserved");
        drop(stream);
    })
    .await;
    assert_eq!(report.stop(), Some(&StopReason::Cancelled));
    assert_eq!(report.stream().unwrap().chunks, 2);
    assert_eq!(
        pool.usage().committed.micros(),
        8,
        "the reservation settled at what the two chunks cost"
    );
}

#[resilient(max = 3, base = "10ms", first_token = "5s")]
#[retry_on(500..=599, transport)]
async fn chat_continued(
    p: &std::sync::Arc<Provider>,
    delivered: &std::sync::Arc<AtomicUsize>,
) -> Result<Streamed<Chunks>, ApiError> {
    let (p2, seen) = (p.clone(), delivered.clone());
    Ok(Streamed::new(p.open().await?).on_cut(move |_cut, chunks| {
        // A real hook would send the delivered text as a prefill; here it says how much.
        seen.store(chunks as usize, Ordering::SeqCst);
        let p = p2.clone();
        Some(async move { p.open().await })
    }))
}

#[tokio::test(start_paused = true)]
async fn a_cut_stream_continued_by_its_hook_delivers_every_chunk_once() {
    setup();
    let p = std::sync::Arc::new(Provider::new(vec![
        Attempt::Streams(vec![
            chunk("a"),
            chunk("b"),
            (100 * MS, Err(ApiError::Network)),
        ]),
        Attempt::Streams(vec![chunk("c"), chunk("d")]),
    ]));
    let delivered = std::sync::Arc::new(AtomicUsize::new(0));
    let (out, report) = call(chat_continued(&p, &delivered)).await;
    let (text, error) = out.unwrap();
    assert_eq!((text.as_str(), error), ("abcd", None), "every chunk once");
    assert_eq!(
        delivered.load(Ordering::SeqCst),
        2,
        "the hook was told what was delivered"
    );
    assert_eq!(p.calls.load(Ordering::SeqCst), 2);
    assert_eq!(report.stop(), Some(&StopReason::Success), "{report}");
    let classes: Vec<_> = report.attempts().iter().map(|a| a.class).collect();
    assert_eq!(classes, [Some(ErrorClass::Transport), None], "{report}");
    assert_eq!(report.stream().unwrap().chunks, 4);

    // Within `max`: a stream cut on every attempt ends with the last cut.
    let p = std::sync::Arc::new(Provider::new(
        (0..4)
            .map(|_| Attempt::Streams(vec![chunk("x"), (100 * MS, Err(ApiError::Network))]))
            .collect(),
    ));
    let (out, report) = call(chat_continued(&p, &delivered)).await;
    let (text, error) = out.unwrap();
    assert_eq!(text, "xxx");
    assert_eq!(error, Some(ApiError::Network));
    assert_eq!(p.calls.load(Ordering::SeqCst), 3, "max = 3 attempts");
    assert_eq!(
        report.stop(),
        Some(&StopReason::StreamCut {
            chunks: 3,
            class: ErrorClass::Transport
        })
    );
}

#[resilient(max = 2, base = "10ms", first_token = "5s", fallback = chat_backup)]
#[retry_on(500..=599, transport)]
async fn chat_with_backup(p: &Provider, backup: &Provider) -> Result<Streamed<Chunks>, ApiError> {
    let _ = backup;
    Ok(Streamed::new(p.open().await?).with_spend(chunk_cost))
}

/// The other model: a streaming call of its own, with its own limits and report.
#[resilient(max = 1, first_token = "5s")]
async fn chat_backup(p: &Provider, backup: &Provider) -> Result<Streamed<Chunks>, ApiError> {
    let _ = p;
    Ok(Streamed::new(backup.open().await?).with_spend(chunk_cost))
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_fails_before_its_first_chunk_falls_back_to_another_stream() {
    setup();
    let p = Provider::new(vec![
        Attempt::Fails(ApiError::status(503)),
        Attempt::Streams(vec![(100 * MS, Err(ApiError::status(502)))]),
    ]);
    let backup = Provider::new(vec![Attempt::Streams(vec![
        chunk("from "),
        chunk("backup"),
    ])]);
    let (out, report) = call(chat_with_backup(&p, &backup)).await;
    let (text, error) = out.unwrap();
    assert_eq!((text.as_str(), error), ("from backup", None));
    assert_eq!(p.calls.load(Ordering::SeqCst), 2);
    assert_eq!(backup.calls.load(Ordering::SeqCst), 1);
    let fallback = report.fallback().expect("the backup served the call");
    assert_eq!(
        fallback.kind,
        retry_runtime::FallbackKind::Function("chat_backup")
    );
    assert_eq!(fallback.because, StopReason::AttemptsExhausted, "{report}");

    // Committed, then cut: the caller has output, so nothing falls back (it would repeat it).
    let p = Provider::new(vec![Attempt::Streams(vec![
        chunk("half"),
        (100 * MS, Err(ApiError::status(503))),
    ])]);
    let backup = Provider::new(vec![Attempt::Streams(vec![chunk("never")])]);
    let (out, report) = call(chat_with_backup(&p, &backup)).await;
    let (text, error) = out.unwrap();
    assert_eq!(
        (text.as_str(), error),
        ("half", Some(ApiError::status(503)))
    );
    assert_eq!(backup.calls.load(Ordering::SeqCst), 0);
    assert!(report.fallback().is_none(), "{report}");
}

#[resilient(
    max = 1,
    first_token = "5s",
    breaker = "stream-queue",
    fallback = queue,
    queue_wait = "60s"
)]
#[retry_on(500..=599, transport)]
async fn chat_queued(p: &Provider) -> Result<Streamed<Chunks>, ApiError> {
    Ok(Streamed::new(p.open().await?))
}

#[tokio::test(start_paused = true)]
async fn a_queued_stream_waits_for_its_breaker_and_streams_after_recovery() {
    setup();
    let p = Provider::new(vec![
        Attempt::Fails(ApiError::status(503)),
        Attempt::Streams(vec![chunk("after "), chunk("recovery")]),
    ]);
    let start = Instant::now();
    // The 503 opens the breaker (`failures = 1`); the call waits in its line until the
    // breaker lets a probe through (5 s), and that probe is the stream.
    let (out, report) = call(chat_queued(&p)).await;
    let (text, error) = out.unwrap();
    assert_eq!((text.as_str(), error), ("after recovery", None), "{report}");
    assert_eq!(p.calls.load(Ordering::SeqCst), 2);
    assert!(start.elapsed() >= 5 * S, "{:?}", start.elapsed());
    assert_eq!(
        report.fallback().map(|f| &f.kind),
        Some(&retry_runtime::FallbackKind::Queue),
        "{report}"
    );
    assert_eq!(report.stream().unwrap().chunks, 2);
    assert_eq!(breaker("stream-queue").state(), BreakerState::Closed);
}

#[resilient(
    max = 3,
    base = "10ms",
    first_token = "5s",
    breaker = "stream-continue"
)]
#[retry_on(500..=599, transport)]
async fn chat_continued_breaker(
    p: &std::sync::Arc<Provider>,
    hooked: &std::sync::Arc<AtomicUsize>,
) -> Result<Streamed<Chunks>, ApiError> {
    let (p2, hooked) = (p.clone(), hooked.clone());
    Ok(Streamed::new(p.open().await?).on_cut(move |_cut, _chunks| {
        hooked.fetch_add(1, Ordering::SeqCst);
        let p = p2.clone();
        Some(async move { p.open().await })
    }))
}

#[tokio::test(start_paused = true)]
async fn a_cut_the_hook_would_continue_is_a_failure_for_the_breaker_first() {
    setup();
    // `failures = 1`: the cut opens the breaker, so the continuation is refused, unsent.
    let p = std::sync::Arc::new(Provider::new(vec![
        Attempt::Streams(vec![
            chunk("a"),
            chunk("b"),
            (100 * MS, Err(ApiError::Network)),
        ]),
        Attempt::Streams(vec![chunk("never")]),
    ]));
    let hooked = std::sync::Arc::new(AtomicUsize::new(0));
    assert_eq!(breaker("stream-continue").state(), BreakerState::Closed);
    let (out, report) = call(chat_continued_breaker(&p, &hooked)).await;
    let (text, error) = out.unwrap();
    assert_eq!((text.as_str(), error), ("ab", Some(ApiError::Network)));
    assert_eq!(hooked.load(Ordering::SeqCst), 1, "the hook was asked");
    assert_eq!(p.calls.load(Ordering::SeqCst), 1, "its stream never opened");
    assert_eq!(breaker("stream-continue").state(), BreakerState::Open);
    assert_eq!(
        report.stop(),
        Some(&StopReason::StreamCut {
            chunks: 2,
            class: ErrorClass::Transport
        }),
        "{report}"
    );
    assert_eq!(report.attempts().len(), 1, "{report}");
    // Exactly one transition (closed to open): the end of the stream added no second failure.
    assert_eq!(report.transitions().len(), 1, "{report}");
}
