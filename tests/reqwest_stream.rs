//! Streaming over a plain reqwest body (`integrations::reqwest::sse`) under `#[resilient]`, over
//! real HTTP on loopback: OpenAI's chunk stream and Anthropic's event stream, with faults
//! (errors before the stream, a cut, an error event mid-stream, Anthropic's
//! `overloaded_error`, a body that ends before its last event, garbage). The SSE server
//! (`tests/sse_server`) counts requests, so a hidden retry would show. Paused clock throughout.

mod sse_server;

use std::sync::Once;
use std::time::Duration;

use futures::StreamExt;
use retry_runtime::integrations::http::stream_cut_bill;
use retry_runtime::integrations::reqwest::{error_for_status, sse, CallError, SseStream};
use retry_runtime::pace::PaceConfig;
use retry_runtime::{
    breaker, configure, observe, resilient, retry_on, BreakerConfig, BreakerState, Budget,
    CallReport, Classify, Config, ErrorClass, PoolConfig, Price, Spend, StopReason, Streamed,
};
use sse_server::{Event, Scripted, SseServer, MODEL};

const S: Duration = Duration::from_secs(1);
const CLAUDE: &str = "claude-test";

fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let pool = PoolConfig {
            limit: Budget::usd(1.0),
            window: Duration::from_secs(3600),
        };
        let one_failure = BreakerConfig {
            failures: 1,
            ..BreakerConfig::default()
        };
        configure(
            Config::default()
                .with_price(MODEL, Price::per_million(1.0, 2.0))
                .with_price(CLAUDE, Price::per_million(3.0, 15.0))
                .with_breaker("sse-cut", one_failure.clone())
                .with_breaker("sse-overloaded", one_failure)
                .with_pool("sse-anthropic", pool)
                .with_pacer(
                    "sse-anthropic",
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

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn openai_body() -> Vec<u8> {
    format!(r#"{{"model":"{MODEL}","stream":true,"stream_options":{{"include_usage":true}},"messages":[{{"role":"user","content":"hi"}}]}}"#).into_bytes()
}

fn anthropic_body() -> Vec<u8> {
    format!(r#"{{"model":"{CLAUDE}","stream":true,"max_tokens":1024,"messages":[{{"role":"user","content":"hi"}}]}}"#).into_bytes()
}

/// One attempt: POST, a failed status as an `HttpError`, else the body's events, priced by
/// the usage they report, or by the prompt and the events if cut.
async fn open(
    http: &reqwest::Client,
    url: &str,
    body: &[u8],
) -> Result<Streamed<SseStream>, CallError> {
    let (prompt, per_chunk) = stream_cut_bill(body).unwrap_or_default();
    let response = http
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await?;
    let response = error_for_status(response).await?;
    Ok(Streamed::new(sse(response))
        .with_spend(retry_runtime::integrations::reqwest::SseEvent::spend)
        .bill_if_cut(prompt, per_chunk))
}

#[resilient(max = 3, base = "10ms", first_token = "5s", idle = "5s")]
#[retry_on(429, 500..=599, timeout, transport)]
async fn stream(
    http: &reqwest::Client,
    url: &str,
    body: &[u8],
) -> Result<Streamed<SseStream>, CallError> {
    open(http, url, body).await
}

#[resilient(max = 3, base = "10ms", first_token = "5s", breaker = "sse-cut")]
#[retry_on(429, 500..=599, timeout, transport)]
async fn stream_breaker(
    http: &reqwest::Client,
    url: &str,
    body: &[u8],
) -> Result<Streamed<SseStream>, CallError> {
    open(http, url, body).await
}

#[resilient(max = 3, base = "10ms", first_token = "5s", breaker = "sse-overloaded")]
#[retry_on(429, 500..=599, timeout, transport)]
async fn stream_overloaded(
    http: &reqwest::Client,
    url: &str,
    body: &[u8],
) -> Result<Streamed<SseStream>, CallError> {
    open(http, url, body).await
}

#[resilient(
    max = 1,
    pool = "sse-anthropic",
    max_cost = "0.1usd",
    pace = "sse-anthropic"
)]
async fn stream_anthropic(
    http: &reqwest::Client,
    url: &str,
    body: &[u8],
) -> Result<Streamed<SseStream>, CallError> {
    open(http, url, body).await
}

/// The text the caller assembled, the events it read, and the error that ended the stream.
async fn read(mut stream: Streamed<SseStream>) -> (String, u64, Option<CallError>) {
    let (mut text, mut events) = (String::new(), 0);
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                events += 1;
                text.push_str(event.text().unwrap_or_default());
            }
            Err(e) => return (text, events, Some(e)),
        }
    }
    (text, events, None)
}

async fn run(
    f: impl std::future::Future<Output = Result<Streamed<SseStream>, CallError>>,
) -> (String, Option<CallError>, CallReport) {
    let (out, report) = observe(async {
        match f.await {
            Ok(s) => {
                let (text, _, error) = read(s).await;
                (text, error)
            }
            Err(e) => (String::new(), Some(e)),
        }
    })
    .await;
    (out.0, out.1, report)
}

/// Anthropic's events, as its API sends them.
fn anthropic(event: &str, data: &str) -> Event {
    Event::Raw(format!("event: {event}\ndata: {data}\n\n"))
}

fn message_start(input: u64) -> Event {
    anthropic(
        "message_start",
        &format!(
            r#"{{"type":"message_start","message":{{"id":"msg_1","type":"message","role":"assistant","model":"{CLAUDE}","content":[],"stop_reason":null,"usage":{{"input_tokens":{input},"output_tokens":1}}}}}}"#
        ),
    )
}

fn text_delta(text: &str) -> Event {
    anthropic(
        "content_block_delta",
        &format!(
            r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":{}}}}}"#,
            serde_json::to_string(text).unwrap()
        ),
    )
}

fn anthropic_answer(input: u64, words: &[&str], output: u64) -> Vec<Event> {
    let mut events = vec![
        message_start(input),
        anthropic(
            "content_block_start",
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        ),
        anthropic("ping", r#"{"type": "ping"}"#),
    ];
    events.extend(words.iter().map(|w| text_delta(w)));
    events.extend([
        anthropic(
            "content_block_stop",
            r#"{"type":"content_block_stop","index":0}"#,
        ),
        anthropic(
            "message_delta",
            &format!(r#"{{"type":"message_delta","delta":{{"stop_reason":"end_turn","stop_sequence":null}},"usage":{{"output_tokens":{output}}}}}"#),
        ),
        anthropic("message_stop", r#"{"type":"message_stop"}"#),
    ]);
    events
}

#[tokio::test(start_paused = true)]
async fn errors_before_the_first_event_are_retried_and_the_usage_prices_the_call() {
    setup();
    let server = SseServer::start(vec![
        Scripted::rate_limited(200),
        Scripted::status(503, sse_server::openai_error("server_error", "", "busy")),
        Scripted::words(&["Hello", " world"]),
    ])
    .await;
    let (text, error, report) = run(stream(&http(), &server.url(), &openai_body())).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text, "Hello world");
    assert_eq!(server.requests(), 3);
    let classes: Vec<_> = report.attempts().iter().map(|a| a.class).collect();
    assert_eq!(
        classes,
        [
            Some(ErrorClass::Status(429)),
            Some(ErrorClass::Status(503)),
            None
        ]
    );
    // The usage chunk: 3 prompt tokens at $1 and 2 completion tokens at $2 per million.
    assert_eq!(report.spent(), Spend::new(7, 5));
    assert_eq!(report.stop(), Some(&StopReason::Success), "{report}");
}

#[tokio::test(start_paused = true)]
async fn a_cut_after_three_events_is_one_failure_charged_and_never_repeated() {
    setup();
    let server = SseServer::start(vec![
        Scripted::words_then_cut(&["one", " two", " three"]),
        Scripted::words(&["never", " sent"]),
    ])
    .await;
    assert_eq!(breaker("sse-cut").state(), BreakerState::Closed);
    let body = openai_body();
    let (text, error, report) = run(stream_breaker(&http(), &server.url(), &body)).await;
    assert_eq!(text, "one two three", "each chunk exactly once");
    let error = error.expect("the cut ends the stream with an error");
    assert!(matches!(error, CallError::Request(_)), "{error:?}");
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
    let (prompt, per_chunk) = stream_cut_bill(&body).unwrap();
    assert_eq!(report.spent(), prompt + per_chunk + per_chunk + per_chunk);
    assert_eq!(breaker("sse-cut").state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn an_openai_error_event_and_a_body_ending_early_end_the_stream() {
    setup();
    let server = SseServer::start(vec![
        Scripted::stream([
            Event::chunk("x"),
            Event::error("server_error", "The server had an error"),
            Event::chunk("y"),
            Event::Done,
        ]),
        // The connection closes cleanly, but before `[DONE]`: a cut at an event's boundary.
        Scripted::stream([Event::chunk("a"), Event::chunk("b")]),
    ])
    .await;
    let (http, url, body) = (http(), server.url(), openai_body());
    let (text, error, report) = run(stream(&http, &url, &body)).await;
    assert_eq!(text, "x");
    let error = error.unwrap();
    assert!(matches!(error, CallError::Stream(_)), "{error:?}");
    assert_eq!(
        report.stop(),
        Some(&StopReason::StreamCut {
            chunks: 1,
            class: ErrorClass::Status(500)
        }),
        "{report}"
    );
    let (text, error, report) = run(stream(&http, &url, &body)).await;
    assert_eq!(text, "ab");
    assert_eq!(error.unwrap().class(), ErrorClass::Transport);
    assert_eq!(
        report.stop(),
        Some(&StopReason::StreamCut {
            chunks: 2,
            class: ErrorClass::Transport
        }),
        "{report}"
    );
    assert_eq!(server.requests(), 2);
}

#[tokio::test(start_paused = true)]
async fn anthropic_overloaded_mid_stream_is_a_529_for_the_breaker_and_bills_the_input() {
    setup();
    let mut events = anthropic_answer(1_000, &["Hel", "lo"], 0);
    events.truncate(5); // message_start, content_block_start, ping, two deltas
    events.push(Event::overloaded());
    let server = SseServer::start(vec![Scripted::stream(events)]).await;
    let body = anthropic_body();
    let (text, error, report) = run(stream_overloaded(&http(), &server.url(), &body)).await;
    assert_eq!(text, "Hello");
    let error = error.unwrap();
    assert_eq!(error.class(), ErrorClass::Status(529), "{error}");
    assert_eq!(server.requests(), 1);
    // message_start, content_block_start and two deltas; the ping is not a chunk.
    assert_eq!(
        report.stop(),
        Some(&StopReason::StreamCut {
            chunks: 4,
            class: ErrorClass::Status(529)
        }),
        "{report}"
    );
    // message_start said 1000 input tokens ($3 a million: 3000 micro-dollars); the three
    // chunks after it are one output token each ($15 a million: 15 micro-dollars each).
    assert_eq!(report.spent(), Spend::new(3_000 + 3 * 15, 1_003));
    assert_eq!(breaker("sse-overloaded").state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn anthropic_usage_settles_the_pool_and_the_token_pacer() {
    setup();
    // 6000 tokens a minute = 100 a second, no burst. The stream reports 1000 in, 2000 out.
    let server = SseServer::start(vec![
        Scripted::stream(anthropic_answer(1_000, &["long", " answer"], 2_000)),
        Scripted::stream(anthropic_answer(10, &["ok"], 1)),
    ])
    .await;
    let pool = retry_runtime::pool("sse-anthropic");
    let before = pool.usage().committed.micros();
    let (http, url, body) = (http(), server.url(), anthropic_body());
    let (text, error, report) = run(stream_anthropic(&http, &url, &body)).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text, "long answer");
    // 1000 in at $3 and 2000 out at $15 a million: $0.033, exactly.
    assert_eq!(report.spent(), Spend::new(33_000, 3_000));
    let after = pool.usage().committed.micros();
    assert_eq!(
        after - before,
        33_000,
        "the pool keeps the usage, not max_cost"
    );
    // The next call waits for the 3000 tokens the stream used (30 s at 100 a second).
    let (_, error, report) = run(stream_anthropic(&http, &url, &body)).await;
    assert!(error.is_none(), "{error:?}");
    assert!(
        report.paced() >= 29 * S,
        "paced {:?}: {report}",
        report.paced()
    );
}

#[tokio::test(start_paused = true)]
async fn garbage_in_the_stream_passes_through_and_loses_nothing() {
    setup();
    let server = SseServer::start(vec![Scripted::stream([
        Event::chunk("a"),
        Event::Raw(": a comment line\n\n".into()),
        Event::Raw("data: {not json\n\n".into()),
        Event::Raw("data: {\"choices\":\"not a list\"}\n\n".into()),
        Event::chunk("b"),
        Event::Done,
    ])])
    .await;
    let (out, report) = observe(async {
        let stream = stream(&http(), &server.url(), &openai_body())
            .await
            .unwrap();
        read(stream).await
    })
    .await;
    let (text, events, error) = out;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text, "ab");
    // Both chunks and both unreadable events reach the caller; the comment does not.
    assert_eq!(events, 4);
    assert_eq!(report.stop(), Some(&StopReason::Success), "{report}");
}
