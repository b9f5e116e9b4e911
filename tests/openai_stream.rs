//! Streaming through async-openai's `create_stream` under `#[resilient]`, over real HTTP on
//! loopback: the SSE server (`tests/sse_server`) plays OpenAI's chunk stream with faults, and
//! counts requests, so a hidden retry would show. Paused clock throughout.

mod sse_server;

use std::sync::Once;
use std::time::Duration;

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, ChatCompletionResponseStream,
    ChatCompletionStreamOptions, CreateChatCompletionRequest, CreateChatCompletionRequestArgs,
};
use async_openai::Client;
use futures::StreamExt;
use retry_runtime::integrations::openai::{chunk_spend, single_attempt_client, stream_cut_bill};
use retry_runtime::pace::PaceConfig;
use retry_runtime::{
    breaker, configure, observe, resilient, retry_on, BreakerConfig, BreakerState, CallReport,
    Config, ErrorClass, Price, Spend, StopReason, Streamed,
};
use sse_server::{Event, Scripted, SseServer, MODEL};

const S: Duration = Duration::from_secs(1);

fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        configure(
            Config::default()
                .with_price(MODEL, Price::per_million(1.0, 2.0))
                .with_breaker(
                    "openai-stream-cut",
                    BreakerConfig {
                        failures: 1,
                        ..BreakerConfig::default()
                    },
                )
                .with_pool(
                    "openai-stream-pool",
                    retry_runtime::PoolConfig {
                        limit: retry_runtime::Budget::usd(1.0),
                        window: Duration::from_secs(3600),
                    },
                )
                .with_pool(
                    "openai-stream-usage",
                    retry_runtime::PoolConfig {
                        limit: retry_runtime::Budget::usd(1.0),
                        window: Duration::from_secs(3600),
                    },
                )
                .with_breaker(
                    "openai-stream-combo",
                    BreakerConfig {
                        failures: 1,
                        ..BreakerConfig::default()
                    },
                )
                .with_pool(
                    "openai-stream-combo",
                    retry_runtime::PoolConfig {
                        limit: retry_runtime::Budget::usd(1.0),
                        window: Duration::from_secs(3600),
                    },
                )
                .with_pacer(
                    "openai-stream-combo",
                    PaceConfig {
                        rpm: Some(60),
                        burst: Duration::ZERO,
                        adaptive: false,
                        ..PaceConfig::default()
                    },
                )
                .with_pacer(
                    "openai-stream-tpm",
                    PaceConfig {
                        tpm: Some(6_000),
                        burst: Duration::ZERO,
                        adaptive: false,
                        max_wait: None,
                        ..PaceConfig::default()
                    },
                ),
        )
        .unwrap();
    });
}

fn client(server: &SseServer) -> Client<OpenAIConfig> {
    let config = OpenAIConfig::new()
        .with_api_base(server.base_url())
        .with_api_key("sk-test");
    single_attempt_client(
        config,
        reqwest::Client::builder().no_proxy().build().unwrap(),
    )
}

fn request(prompt: &str) -> CreateChatCompletionRequest {
    CreateChatCompletionRequestArgs::default()
        .model(MODEL)
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content(prompt)
            .build()
            .unwrap()
            .into()])
        .stream_options(ChatCompletionStreamOptions {
            include_usage: Some(true),
            ..Default::default()
        })
        .build()
        .unwrap()
}

/// One attempt's stream: priced by its usage chunk, or by its prompt and chunks if cut.
async fn open(
    client: &Client<OpenAIConfig>,
    request: &CreateChatCompletionRequest,
) -> Result<Streamed<ChatCompletionResponseStream>, OpenAIError> {
    let (prompt, per_chunk) = stream_cut_bill(request);
    let chunks = client.chat().create_stream(request.clone()).await?;
    Ok(Streamed::new(chunks)
        .with_spend(chunk_spend)
        .bill_if_cut(prompt, per_chunk))
}

#[resilient(max = 3, base = "10ms", first_token = "5s", idle = "5s")]
#[retry_on(429, 500..=599, timeout, transport)]
async fn stream(
    client: &Client<OpenAIConfig>,
    request: &CreateChatCompletionRequest,
) -> Result<Streamed<ChatCompletionResponseStream>, OpenAIError> {
    open(client, request).await
}

#[resilient(
    max = 3,
    base = "10ms",
    first_token = "5s",
    breaker = "openai-stream-cut"
)]
#[retry_on(429, 500..=599, timeout, transport)]
async fn stream_breaker(
    client: &Client<OpenAIConfig>,
    request: &CreateChatCompletionRequest,
) -> Result<Streamed<ChatCompletionResponseStream>, OpenAIError> {
    open(client, request).await
}

#[resilient(max = 1, pace = "openai-stream-tpm")]
async fn stream_paced(
    client: &Client<OpenAIConfig>,
    request: &CreateChatCompletionRequest,
) -> Result<Streamed<ChatCompletionResponseStream>, OpenAIError> {
    let chunks = client.chat().create_stream(request.clone()).await?;
    Ok(Streamed::new(chunks).with_spend(chunk_spend))
}

/// The text the caller assembled, and the error that ended the stream, if any.
async fn read(stream: Streamed<ChatCompletionResponseStream>) -> (String, Option<OpenAIError>) {
    let mut stream = stream;
    let mut text = String::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(chunk) => {
                for choice in chunk.choices {
                    text.push_str(choice.delta.content.as_deref().unwrap_or_default());
                }
            }
            Err(e) => return (text, Some(e)),
        }
    }
    (text, None)
}

async fn run(
    f: impl std::future::Future<Output = Result<Streamed<ChatCompletionResponseStream>, OpenAIError>>,
) -> (String, Option<OpenAIError>, CallReport) {
    let (out, report) = observe(async {
        match f.await {
            Ok(s) => read(s).await,
            Err(e) => (String::new(), Some(e)),
        }
    })
    .await;
    (out.0, out.1, report)
}

#[tokio::test(start_paused = true)]
async fn errors_before_the_first_chunk_are_retried() {
    setup();
    let server = SseServer::start(vec![
        Scripted::rate_limited(200),
        Scripted::status(503, sse_server::openai_error("server_error", "", "busy")),
        Scripted::words(&["Hello", " world"]),
    ])
    .await;
    let (text, error, report) = run(stream(&client(&server), &request("hi"))).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text, "Hello world");
    assert_eq!(server.requests(), 3);
    assert_eq!(report.stop(), Some(&StopReason::Success), "{report}");
    let classes: Vec<_> = report.attempts().iter().map(|a| a.class).collect();
    assert_eq!(
        classes,
        [
            Some(ErrorClass::Status(429)),
            Some(ErrorClass::Status(503)),
            None
        ]
    );
    // The usage chunk (3 prompt tokens, 2 completion tokens at $1 / $2 per million).
    assert_eq!(report.spent(), Spend::new(7, 5));
}

#[tokio::test(start_paused = true)]
async fn a_silent_first_chunk_is_cut_at_first_token_and_retried() {
    setup();
    let server = SseServer::start(vec![
        Scripted::stream([Event::chunk("late").after(60 * S), Event::Done]),
        Scripted::words(&["on", " time"]),
    ])
    .await;
    let start = tokio::time::Instant::now();
    let (text, error, report) = run(stream(&client(&server), &request("hi"))).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text, "on time");
    assert_eq!(server.requests(), 2);
    assert_eq!(report.attempts()[0].class, Some(ErrorClass::Timeout));
    assert!(start.elapsed() < 6 * S, "{:?}", start.elapsed());
}

#[tokio::test(start_paused = true)]
async fn a_cut_after_three_chunks_is_one_failure_charged_and_never_repeated() {
    setup();
    let server = SseServer::start(vec![
        Scripted::words_then_cut(&["one", " two", " three"]),
        Scripted::words(&["never", " sent"]),
    ])
    .await;
    assert_eq!(breaker("openai-stream-cut").state(), BreakerState::Closed);
    let req = request("hi");
    let (text, error, report) = run(stream_breaker(&client(&server), &req)).await;
    assert_eq!(text, "one two three", "each chunk exactly once");
    assert!(error.is_some());
    assert_eq!(
        server.requests(),
        1,
        "nothing retried after the first chunk"
    );
    assert_eq!(
        report.stop(),
        Some(&StopReason::StreamCut {
            chunks: 3,
            class: ErrorClass::Transport
        }),
        "{report}"
    );
    // The prompt's estimate and one output token a chunk.
    let (prompt, per_chunk) = stream_cut_bill(&req);
    let expected = prompt + per_chunk + per_chunk + per_chunk;
    assert!(!expected.is_zero());
    assert_eq!(report.spent(), expected);
    assert_eq!(breaker("openai-stream-cut").state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn an_idle_gap_and_an_error_event_end_the_stream() {
    setup();
    let server = SseServer::start(vec![
        Scripted::stream([
            Event::chunk("a"),
            Event::chunk("b").after(30 * S),
            Event::Done,
        ]),
        Scripted::stream([
            Event::chunk("x"),
            Event::error("server_error", "The server had an error"),
            Event::chunk("y"),
            Event::Done,
        ]),
    ])
    .await;
    let c = client(&server);
    let (text, error, report) = run(stream(&c, &request("hi"))).await;
    assert_eq!(text, "a");
    assert!(error.is_some());
    assert_eq!(
        report.stop(),
        Some(&StopReason::StreamCut {
            chunks: 1,
            class: ErrorClass::Timeout
        }),
        "{report}"
    );
    let (text, _, report) = run(stream(&c, &request("hi"))).await;
    assert_eq!(text, "x");
    assert_eq!(
        report.stop(),
        Some(&StopReason::StreamCut {
            chunks: 1,
            class: ErrorClass::Status(500)
        }),
        "{report}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_usage_chunk_settles_the_token_pacer() {
    setup();
    // 6000 tokens a minute = 100 a second, no burst. The usage chunk says 3 + 1000.
    let server = SseServer::start(vec![Scripted::stream([
        Event::chunk("long"),
        Event::Finish,
        Event::Usage {
            prompt: 3,
            completion: 1000,
        },
        Event::Done,
    ])])
    .await;
    let c = client(&server);
    let (_, error, report) = run(stream_paced(&c, &request("hi"))).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(report.spent(), Spend::new(2_003, 1_003));
    // The next call waits for the 1003 tokens the stream used (about 10 s at 100 a second),
    // not for the zero it was expected to use.
    let (_, error, report) = run(stream_paced(&c, &request("hi"))).await;
    assert!(error.is_none(), "{error:?}");
    let waited = report.paced();
    assert!(waited >= 9 * S, "paced {waited:?}: {report}");
}

#[resilient(max = 1, pool = "openai-stream-pool", max_cost = "0.01usd")]
async fn stream_pooled(
    client: &Client<OpenAIConfig>,
    request: &CreateChatCompletionRequest,
) -> Result<Streamed<ChatCompletionResponseStream>, OpenAIError> {
    open(client, request).await
}

#[tokio::test(start_paused = true)]
async fn a_dropped_stream_is_cancelled_and_the_pool_keeps_only_what_it_used() {
    setup();
    let server = SseServer::start(vec![Scripted::words(&["a", " b", " c", " d"])]).await;
    let c = client(&server);
    let req = request("hi");
    let pool = retry_runtime::pool("openai-stream-pool");
    let (_, report) = observe(async {
        let mut stream = stream_pooled(&c, &req).await.unwrap();
        assert!(stream.next().await.unwrap().is_ok());
        assert!(stream.next().await.unwrap().is_ok());
        assert_eq!(
            pool.usage().committed.micros(),
            10_000,
            "max_cost held while it streams"
        );
        drop(stream);
    })
    .await;
    assert_eq!(report.stop(), Some(&StopReason::Cancelled), "{report}");
    assert_eq!(report.stream().unwrap().chunks, 2);
    let (prompt, per_chunk) = stream_cut_bill(&req);
    let used = prompt + per_chunk + per_chunk;
    assert_eq!(report.spent(), used);
    assert_eq!(
        pool.usage().committed.micros(),
        used.micros(),
        "the reservation settled at what was used"
    );
}

#[resilient(max = 1, pool = "openai-stream-usage", max_cost = "0.01usd")]
async fn stream_usage_pooled(
    client: &Client<OpenAIConfig>,
    request: &CreateChatCompletionRequest,
) -> Result<Streamed<ChatCompletionResponseStream>, OpenAIError> {
    open(client, request).await
}

#[tokio::test(start_paused = true)]
async fn the_usage_chunk_settles_the_pool() {
    setup();
    let server = SseServer::start(vec![Scripted::stream([
        Event::chunk("ok"),
        Event::Finish,
        Event::Usage {
            prompt: 1_000,
            completion: 2_000,
        },
        Event::Done,
    ])])
    .await;
    let pool = retry_runtime::pool("openai-stream-usage");
    let before = pool.usage().committed.micros();
    let (_, error, report) = run(stream_usage_pooled(&client(&server), &request("hi"))).await;
    assert!(error.is_none(), "{error:?}");
    // 1000 prompt tokens at $1 and 2000 completion tokens at $2 per million: $0.005.
    assert_eq!(report.spent(), Spend::new(5_000, 3_000));
    let after = pool.usage().committed.micros();
    assert_eq!(
        after - before,
        5_000,
        "the pool keeps the usage, not the 10 000 reserved"
    );
}

#[resilient(
    max = 3,
    base = "10ms",
    first_token = "5s",
    breaker = "openai-stream-combo",
    pace = "openai-stream-combo",
    pool = "openai-stream-combo",
    max_cost = "0.01usd"
)]
#[retry_on(429, 500..=599, timeout, transport)]
async fn stream_combo(
    client: &Client<OpenAIConfig>,
    request: &CreateChatCompletionRequest,
) -> Result<Streamed<ChatCompletionResponseStream>, OpenAIError> {
    open(client, request).await
}

/// A breaker, a pacer and a pool at one streaming call site, through async-openai: a 429
/// before the stream (which the breaker does not count) is retried after its pacing permit, the stream's usage settles the pool,
/// and a later stream cut mid-way is the breaker's one failure, so the next call is refused
/// before the pacer's line without a request.
#[tokio::test(start_paused = true)]
async fn breaker_pacer_and_pool_together_around_a_stream() {
    setup();
    let server = SseServer::start(vec![
        Scripted::rate_limited(10),
        Scripted::stream([
            Event::chunk("ok"),
            Event::Finish,
            Event::Usage {
                prompt: 1_000,
                completion: 2_000,
            },
            Event::Done,
        ]),
        Scripted::words_then_cut(&["half"]),
        Scripted::words(&["never"]),
    ])
    .await;
    let c = client(&server);
    let pool = retry_runtime::pool("openai-stream-combo");

    let (text, error, report) = run(stream_combo(&c, &request("hi"))).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text, "ok");
    assert_eq!(report.attempts().len(), 2, "{report}");
    // One permit a second: the retry waited for its turn.
    assert!(report.paced() >= Duration::from_millis(900), "{report}");
    assert_eq!(pool.usage().committed.micros(), 5_000, "the usage, settled");

    let (text, error, report) = run(stream_combo(&c, &request("hi"))).await;
    assert_eq!(text, "half");
    assert!(error.is_some());
    assert!(
        matches!(report.stop(), Some(StopReason::StreamCut { chunks: 1, .. })),
        "{report}"
    );
    assert_eq!(breaker("openai-stream-combo").state(), BreakerState::Open);
    let settled = pool.usage().committed.micros();
    assert!(
        settled > 5_000,
        "the cut stream is charged its prompt and chunk"
    );

    let (_, error, report) = run(stream_combo(&c, &request("hi"))).await;
    assert!(
        matches!(report.stop(), Some(StopReason::CircuitOpen { .. })),
        "{error:?} {report}"
    );
    assert_eq!(
        report.paced(),
        Duration::ZERO,
        "refused before the pacer's line"
    );
    assert_eq!(server.requests(), 3, "the open breaker sent nothing");
    assert_eq!(
        pool.usage().committed.micros(),
        settled,
        "nothing reserved for it"
    );
}

#[tokio::test(start_paused = true)]
async fn every_attempt_of_a_call_sends_the_same_idempotency_key() {
    setup();
    let server = SseServer::start(vec![
        Scripted::status(503, sse_server::openai_error("server_error", "", "busy")),
        Scripted::rate_limited(100),
        Scripted::words(&["one"]),
        Scripted::words(&["two"]),
    ])
    .await;
    let c = client(&server);
    let (text, error, _) = run(stream(&c, &request("hi"))).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text, "one");
    let (text, _, _) = run(stream(&c, &request("hi"))).await;
    assert_eq!(text, "two");
    let keys = server.header("idempotency-key");
    assert_eq!(keys.len(), 4);
    let first = keys[0].clone().expect("a key on the first attempt");
    assert_eq!(first.len(), 32, "{first}");
    assert_eq!(
        keys[1].as_deref(),
        Some(first.as_str()),
        "the retry after a 503"
    );
    assert_eq!(
        keys[2].as_deref(),
        Some(first.as_str()),
        "the retry after a 429"
    );
    let second = keys[3].clone().expect("a key on the next call");
    assert_ne!(second, first, "another call, another key");
}
