//! The SSE test server (`tests/sse_server`) against async-openai's `create_stream` over real
//! HTTP on loopback, every test on a paused clock: what the client yields for a normal stream,
//! a 429 before the stream, a cut connection, OpenAI's and Anthropic's error events, a stall.
//! Run with `--nocapture` to see the errors' Debug.

mod sse_server;

use std::time::Duration;

use async_openai::config::OpenAIConfig;
use async_openai::error::{OpenAIError, StreamError};
use async_openai::middleware::ReqwestService;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, ChatCompletionResponseStream,
    ChatCompletionStreamOptions, CreateChatCompletionRequestArgs,
    CreateChatCompletionStreamResponse, FinishReason,
};
use async_openai::Client;
use futures::StreamExt;
use sse_server::{openai_error, Event, Scripted, SseServer};
use tokio::time::Instant;

const SECOND: Duration = Duration::from_secs(1);

fn http() -> reqwest::Client {
    // Loopback only: never through a proxy from the environment.
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// async-openai alone, without its retry layer: one request per call.
fn client(server: &SseServer) -> Client<OpenAIConfig> {
    let config = OpenAIConfig::new()
        .with_api_base(server.base_url())
        .with_api_key("sk-test");
    Client::build(http(), config).with_http_service(ReqwestService::new(http()))
}

async fn open(server: &SseServer) -> Result<ChatCompletionResponseStream, OpenAIError> {
    let request = CreateChatCompletionRequestArgs::default()
        .model("gpt-4o-mini")
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("hi")
            .build()?
            .into()])
        .stream_options(ChatCompletionStreamOptions {
            include_usage: Some(true),
            ..Default::default()
        })
        .build()?;
    client(server).chat().create_stream(request).await
}

/// What the client's stream yielded, item by item, until it ended.
#[derive(Debug)]
enum Item {
    Text(String),
    Finish(Option<FinishReason>),
    Usage(u32, u32, u32),
    Error(OpenAIError),
}

impl Item {
    fn text(&self) -> Option<&str> {
        match self {
            Item::Text(text) => Some(text),
            _ => None,
        }
    }
}

fn items(chunk: Result<CreateChatCompletionStreamResponse, OpenAIError>) -> Vec<Item> {
    let chunk = match chunk {
        Ok(chunk) => chunk,
        Err(error) => return vec![Item::Error(error)],
    };
    let mut items = Vec::new();
    for choice in &chunk.choices {
        if let Some(text) = &choice.delta.content {
            items.push(Item::Text(text.clone()));
        }
        if choice.finish_reason.is_some() {
            items.push(Item::Finish(choice.finish_reason));
        }
    }
    if let Some(usage) = &chunk.usage {
        items.push(Item::Usage(
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens,
        ));
    }
    items
}

async fn drain(mut stream: ChatCompletionResponseStream) -> Vec<Item> {
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend(items(chunk));
    }
    out
}

fn texts(items: &[Item]) -> Vec<&str> {
    items.iter().filter_map(Item::text).collect()
}

#[tokio::test(start_paused = true)]
async fn a_normal_stream_yields_the_texts_in_order_then_finish_and_usage() {
    let server = SseServer::start(vec![Scripted::words(&[
        "Hello",
        " world",
        ", \"quoted\"\n",
    ])])
    .await;
    let out = drain(open(&server).await.unwrap()).await;
    assert_eq!(texts(&out), ["Hello", " world", ", \"quoted\"\n"]);
    assert!(
        matches!(
            out[3..],
            [Item::Finish(Some(FinishReason::Stop)), Item::Usage(3, 3, 6)]
        ),
        "{out:?}"
    );
    assert_eq!(server.requests(), 1);
    let body = &server.bodies_json()[0];
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(body["messages"][0]["content"], "hi");
}

/// The bytes, status and headers on the wire, read with reqwest alone.
#[tokio::test(start_paused = true)]
async fn the_wire_format_is_openais() {
    let server = SseServer::start(vec![Scripted::stream([
        Event::chunk("a\"b"),
        Event::Finish,
        Event::Usage {
            prompt: 5,
            completion: 1,
        },
        Event::error("server_error", "boom"),
        Event::overloaded(),
        Event::Done,
    ])])
    .await;
    let response = http().post(server.url()).body("{}").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let chunk =
        r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","#;
    let expected = [
        format!(
            r#"data: {chunk}"choices":[{{"index":0,"delta":{{"content":"a\"b"}},"finish_reason":null}}]}}"#
        ),
        format!(r#"data: {chunk}"choices":[{{"index":0,"delta":{{}},"finish_reason":"stop"}}]}}"#),
        format!(
            r#"data: {chunk}"choices":[],"usage":{{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}}}"#
        ),
        r#"data: {"error":{"message":"boom","type":"server_error"}}"#.to_string(),
        "event: error\n".to_string()
            + r#"data: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        "data: [DONE]".to_string(),
    ]
    .map(|event| event + "\n\n")
    .concat();
    assert_eq!(response.text().await.unwrap(), expected);
    assert_eq!(server.bodies(), ["{}"]);
}

#[tokio::test(start_paused = true)]
async fn a_429_answers_before_any_chunk_and_the_next_request_streams() {
    let server = SseServer::start(vec![
        Scripted::rate_limited(250),
        Scripted::words(&["after", " the", " wait"]),
    ])
    .await;
    match open(&server).await {
        Err(OpenAIError::ApiError(error)) => {
            println!("429 → {error:?}");
            assert_eq!(error.status_code, 429);
            assert_eq!(error.api_error.code.as_deref(), Some("rate_limit_exceeded"));
            assert_eq!(error.api_error.r#type.as_deref(), Some("requests"));
        }
        Err(other) => panic!("expected ApiError(429), got {other:?}"),
        Ok(_) => panic!("expected ApiError(429), got a stream"),
    }
    assert_eq!(server.requests(), 1, "no chunk, no inner retry");
    let out = drain(open(&server).await.unwrap()).await;
    assert_eq!(texts(&out), ["after", " the", " wait"]);
    assert_eq!(server.requests(), 2);
}

/// async-openai's `ApiError` drops the headers: read them with reqwest alone.
#[tokio::test(start_paused = true)]
async fn a_status_answer_carries_its_headers_and_json_body() {
    let body = openai_error("server_error", "overloaded", "The server is overloaded");
    let server = SseServer::start(vec![
        Scripted::rate_limited(250).header("x-request-id", "req_1"),
        Scripted::status(503, body.clone()).header("retry-after", "2"),
    ])
    .await;
    let response = http().post(server.url()).body("{}").send().await.unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after-ms"], "250");
    assert_eq!(response.headers()["x-request-id"], "req_1");
    assert_eq!(response.headers()["content-type"], "application/json");
    let json: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(json["error"]["code"], "rate_limit_exceeded");
    for _ in 0..2 {
        // The last answer repeats.
        let response = http().post(server.url()).body("{}").send().await.unwrap();
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "2");
        assert_eq!(response.text().await.unwrap(), body);
    }
    assert_eq!(server.requests(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_cut_after_three_chunks_yields_three_texts_then_an_error() {
    let server = SseServer::start(vec![Scripted::stream([
        Event::chunk("one"),
        Event::chunk(" two"),
        Event::chunk(" three"),
        Event::Cut,
        Event::chunk(" never"),
        Event::Done,
    ])])
    .await;
    let out = drain(open(&server).await.unwrap()).await;
    println!("cut → {out:?}");
    assert_eq!(out.len(), 4, "{out:?}");
    assert_eq!(texts(&out), ["one", " two", " three"]);
    match &out[3] {
        Item::Error(OpenAIError::StreamError(error)) => {
            assert!(matches!(**error, StreamError::EventStream(_)), "{error:?}")
        }
        other => panic!("expected a StreamError, got {other:?}"),
    }
}

/// With a gap before it, the cut comes after the chunks reached the client; the client's
/// error item is the same.
#[tokio::test(start_paused = true)]
async fn a_cut_after_a_gap_is_the_same_error() {
    let server = SseServer::start(vec![Scripted::stream([
        Event::chunk("one"),
        Event::Cut.after(SECOND),
    ])])
    .await;
    let out = drain(open(&server).await.unwrap()).await;
    println!("cut after a gap → {out:?}");
    assert_eq!(texts(&out), ["one"]);
    assert!(
        matches!(&out[..], [_, Item::Error(OpenAIError::StreamError(_))]),
        "{out:?}"
    );
}

/// A stream that ends without `[DONE]` (and without a cut) just ends: no error item.
#[tokio::test(start_paused = true)]
async fn a_stream_ending_without_done_just_ends() {
    let server = SseServer::start(vec![Scripted::stream([
        Event::chunk("half"),
        Event::chunk(" an answer"),
    ])])
    .await;
    let out = drain(open(&server).await.unwrap()).await;
    println!("no [DONE] → {out:?}");
    assert_eq!(texts(&out), ["half", " an answer"]);
    assert_eq!(out.len(), 2, "{out:?}");
}

#[tokio::test(start_paused = true)]
async fn an_openai_error_event_is_an_error_item_and_the_stream_goes_on() {
    let server = SseServer::start(vec![Scripted::stream([
        Event::chunk("partial"),
        Event::error(
            "server_error",
            "The server had an error while processing your request.",
        ),
        Event::chunk(" more"),
        Event::Done,
    ])])
    .await;
    let out = drain(open(&server).await.unwrap()).await;
    println!("OpenAI error event → {out:?}");
    assert_eq!(texts(&out), ["partial", " more"]);
    match &out[1] {
        Item::Error(OpenAIError::JSONDeserialize(error, content)) => {
            assert!(error.to_string().contains("missing field"), "{error}");
            assert!(content.contains("server_error"), "{content}");
        }
        other => panic!("expected JSONDeserialize, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn an_anthropic_overloaded_event_is_an_error_item_too() {
    let server = SseServer::start(vec![Scripted::stream([
        Event::chunk("partial"),
        Event::overloaded(),
        Event::Done,
    ])])
    .await;
    let out = drain(open(&server).await.unwrap()).await;
    println!("Anthropic overloaded event → {out:?}");
    assert_eq!(texts(&out), ["partial"]);
    match &out[1..] {
        [Item::Error(OpenAIError::JSONDeserialize(error, content))] => {
            assert!(error.to_string().contains("missing field"), "{error}");
            assert!(content.contains("overloaded_error"), "{content}");
        }
        other => panic!("expected one JSONDeserialize, got {other:?}"),
    }
}

/// The server's waits are tokio timers: on a paused clock a 30 s stall takes exactly 30 s of
/// virtual time and next to no real time.
#[tokio::test(start_paused = true)]
async fn a_stall_delays_the_next_chunk_by_its_length_in_virtual_time() {
    let server = SseServer::start(vec![Scripted::stream([
        Event::chunk("before"),
        Event::Stall(30 * SECOND),
        Event::chunk(" after"),
        Event::chunk(" later").after(5 * SECOND),
        Event::Done,
    ])
    .delayed(2 * SECOND)])
    .await;
    let wall = std::time::Instant::now();
    let start = Instant::now();
    let mut stream = open(&server).await.unwrap();
    assert_eq!(start.elapsed(), 2 * SECOND, "the status line after 2 s");
    let mut arrivals = Vec::new();
    while let Some(chunk) = stream.next().await {
        for item in items(chunk) {
            arrivals.push((item.text().unwrap().to_string(), start.elapsed()));
        }
    }
    println!("arrivals: {arrivals:?}, real time {:?}", wall.elapsed());
    let expected = [("before", 2), (" after", 32), (" later", 37)];
    assert_eq!(arrivals.len(), expected.len());
    for ((text, at), (want, secs)) in arrivals.iter().zip(expected) {
        assert_eq!(text, want);
        assert_eq!(*at, secs * SECOND, "{text:?}");
    }
    assert!(wall.elapsed() < 5 * SECOND, "virtual, not real, time");
}

#[tokio::test(start_paused = true)]
async fn other_paths_are_404_and_not_counted() {
    let server = SseServer::start(vec![Scripted::words(&["x"])]).await;
    let response = http()
        .post(format!("{}/embeddings", server.base_url()))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(server.requests(), 0);
}

/// Under async-openai's string: reqwest's body error, caused by hyper's incomplete message.
#[tokio::test(start_paused = true)]
async fn a_cut_is_a_reqwest_body_error_over_an_incomplete_message() {
    let server = SseServer::start(vec![Scripted::words_then_cut(&["one", " two"])]).await;
    let mut response = http().post(server.url()).body("{}").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut received = Vec::new();
    let error = loop {
        match response.chunk().await {
            Ok(Some(bytes)) => received.extend_from_slice(&bytes),
            Ok(None) => panic!("the body ended cleanly"),
            Err(error) => break error,
        }
    };
    let mut chain = vec![error.to_string()];
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        chain.push(cause.to_string());
        source = cause.source();
    }
    println!("cut, raw → {error:?}; chain {chain:?}");
    assert!(error.is_body() || error.is_decode(), "{error:?}");
    let received = String::from_utf8(received).unwrap();
    assert_eq!(received.matches("data: ").count(), 2, "{received}");
}
