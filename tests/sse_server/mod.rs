//! A scripted OpenAI streaming endpoint over real HTTP: an axum server on 127.0.0.1 (port 0)
//! answering `POST /v1/chat/completions` with server-sent events in the chat-completions
//! chunk format, with scripted faults (an error status before any byte of the stream, an error
//! event mid-stream, a cut connection, a stall). Each request takes the next [`Scripted`]
//! answer (the last one repeats); the server counts requests and keeps their bodies.
//!
//! Every wait is a `tokio::time::sleep`, so tests on a paused clock
//! (`#[tokio::test(start_paused = true)]`) run the script in virtual time: loopback I/O is
//! ready by the time the writer's syscall returns, so the runtime only auto-advances the clock
//! when every task is really waiting on a timer (see `tests/sse_server_selftest.rs`).
#![allow(dead_code)]

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::Response;
use axum::routing::post;
use axum::Router;

/// The model every chunk names.
pub const MODEL: &str = "gpt-4o-mini";

/// One thing the stream does.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // `ErrorEvent`: the name the tests' plan uses.
pub enum Event {
    /// A content delta: `{"choices":[{"index":0,"delta":{"content":TEXT},"finish_reason":null}]}`.
    Chunk(String),
    /// The last choice chunk: an empty delta with `"finish_reason":"stop"`.
    Finish,
    /// The usage chunk OpenAI sends last with `stream_options.include_usage`: `"choices":[]`.
    Usage { prompt: u32, completion: u32 },
    /// `data: [DONE]`.
    Done,
    /// OpenAI's mid-stream error: `data: {"error":{"message":MESSAGE,"type":KIND}}`.
    ErrorEvent(String, String),
    /// Anthropic's mid-stream error: `event: error` with
    /// `data: {"type":"error","error":{"type":KIND,"message":MESSAGE}}`.
    AnthropicError(String, String),
    /// Bytes sent as they are (a comment `: ping\n\n`, a malformed line, a half event).
    Raw(String),
    /// The connection aborts: the body yields an `io::Error`, so hyper drops the connection
    /// without the chunked encoding's last chunk; nothing after a `Cut` is sent.
    Cut,
    /// A gap with nothing sent.
    Stall(Duration),
    /// The event, `Duration` after the one before it (see [`Event::after`]).
    Delayed(Duration, Box<Event>),
}

impl Event {
    pub fn chunk(text: impl Into<String>) -> Self {
        Event::Chunk(text.into())
    }

    pub fn error(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Event::ErrorEvent(kind.into(), message.into())
    }

    /// Anthropic's `overloaded_error` event, as its API sends it mid-stream.
    pub fn overloaded() -> Self {
        Event::AnthropicError("overloaded_error".into(), "Overloaded".into())
    }

    /// This event, `delay` after the one before it.
    pub fn after(self, delay: Duration) -> Self {
        Event::Delayed(delay, Box::new(self))
    }

    /// The bytes on the wire (empty for `Cut` and `Stall`, which send nothing).
    pub fn wire(&self) -> String {
        match self {
            Event::Chunk(text) => {
                data(&choice(&format!(r#"{{"content":{}}}"#, json(text)), "null"))
            }
            Event::Finish => data(&choice("{}", r#""stop""#)),
            Event::Usage { prompt, completion } => data(&format!(
                r#"{{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"{MODEL}","choices":[],"usage":{{"prompt_tokens":{prompt},"completion_tokens":{completion},"total_tokens":{}}}}}"#,
                prompt + completion
            )),
            Event::Done => data("[DONE]"),
            Event::ErrorEvent(kind, message) => data(&format!(
                r#"{{"error":{{"message":{},"type":{}}}}}"#,
                json(message),
                json(kind)
            )),
            Event::AnthropicError(kind, message) => format!(
                "event: error\n{}",
                data(&format!(
                    r#"{{"type":"error","error":{{"type":{},"message":{}}}}}"#,
                    json(kind),
                    json(message)
                ))
            ),
            Event::Raw(bytes) => bytes.clone(),
            Event::Delayed(_, event) => event.wire(),
            Event::Cut | Event::Stall(_) => String::new(),
        }
    }
}

/// An event and the wait before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub delay: Duration,
    pub event: Event,
}

impl From<Event> for Step {
    /// `Delayed` unwrapped: its waits summed into `delay`.
    fn from(mut event: Event) -> Self {
        let mut delay = Duration::ZERO;
        while let Event::Delayed(wait, inner) = event {
            delay += wait;
            event = *inner;
        }
        Step { delay, event }
    }
}

/// What the body of one answer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// An error status before any stream, with a JSON body.
    Status { status: u16, body: String },
    /// `200 OK`, `content-type: text/event-stream`, then the steps in order.
    Stream(Vec<Step>),
}

/// One scripted answer: the body, extra headers, and a wait before the status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scripted {
    pub answer: Answer,
    pub headers: Vec<(String, String)>,
    pub delay: Duration,
}

impl Scripted {
    /// An HTTP error before any stream: `status` with `body` (e.g. [`openai_error`]) as
    /// `application/json`.
    pub fn status(status: u16, body: impl Into<String>) -> Self {
        Scripted {
            answer: Answer::Status {
                status,
                body: body.into(),
            },
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    /// A 200 event stream of `events`, in order.
    pub fn stream(events: impl IntoIterator<Item = Event>) -> Self {
        Scripted {
            answer: Answer::Stream(events.into_iter().map(Into::into).collect()),
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    /// A whole answer: one chunk per word, `Finish`, `Usage` (prompt 3, completion one per
    /// word), `Done`.
    pub fn words(words: &[&str]) -> Self {
        Self::stream(words_then(
            words,
            [Event::Finish, usage(words), Event::Done],
        ))
    }

    /// One chunk per word, then `Cut`.
    pub fn words_then_cut(words: &[&str]) -> Self {
        Self::stream(words_then(words, [Event::Cut]))
    }

    /// A 429 in OpenAI's shape (`rate_limit_exceeded`) with `retry-after-ms`.
    pub fn rate_limited(retry_after_ms: u64) -> Self {
        Self::status(
            429,
            openai_error(
                "requests",
                "rate_limit_exceeded",
                "Rate limit reached for requests",
            ),
        )
        .header("retry-after-ms", retry_after_ms.to_string())
    }

    /// Adds a response header (e.g. `retry-after-ms`, `x-request-id`).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Waits `delay` before the status line (time to first byte).
    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// `words` as chunks, then `tail`.
pub fn words_then(words: &[&str], tail: impl IntoIterator<Item = Event>) -> Vec<Event> {
    words
        .iter()
        .map(|word| Event::chunk(*word))
        .chain(tail)
        .collect()
}

/// The usage [`Scripted::words`] sends for `words`.
pub fn usage(words: &[&str]) -> Event {
    Event::Usage {
        prompt: 3,
        completion: words.len() as u32,
    }
}

/// OpenAI's error object: `{"error":{"message":..,"type":..,"param":null,"code":..}}`.
pub fn openai_error(kind: &str, code: &str, message: &str) -> String {
    format!(
        r#"{{"error":{{"message":{},"type":{},"param":null,"code":{}}}}}"#,
        json(message),
        json(kind),
        json(code)
    )
}

fn json(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

fn data(payload: &str) -> String {
    format!("data: {payload}\n\n")
}

fn choice(delta: &str, finish_reason: &str) -> String {
    format!(
        r#"{{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"{MODEL}","choices":[{{"index":0,"delta":{delta},"finish_reason":{finish_reason}}}]}}"#
    )
}

struct Shared {
    script: Mutex<Vec<Scripted>>,
    requests: AtomicUsize,
    bodies: Mutex<Vec<String>>,
    headers: Mutex<Vec<axum::http::HeaderMap>>,
}

/// A running server; it lives as long as the test's runtime.
pub struct SseServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl SseServer {
    pub async fn start(script: Vec<Scripted>) -> Self {
        assert!(!script.is_empty(), "script at least one answer");
        let shared = Arc::new(Shared {
            script: Mutex::new(script),
            requests: AtomicUsize::new(0),
            bodies: Mutex::new(Vec::new()),
            headers: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(answer))
            .fallback(not_found)
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        SseServer { addr, shared }
    }

    /// `http://127.0.0.1:PORT/v1`, for `OpenAIConfig::with_api_base`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// `http://127.0.0.1:PORT/v1/chat/completions`.
    pub fn url(&self) -> String {
        format!("{}/chat/completions", self.base_url())
    }

    /// Requests to `POST /v1/chat/completions` so far.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Their bodies, in arrival order.
    pub fn bodies(&self) -> Vec<String> {
        self.shared.bodies.lock().unwrap().clone()
    }

    /// The value of request header `name` on each request, in arrival order.
    pub fn header(&self, name: &str) -> Vec<Option<String>> {
        self.shared
            .headers
            .lock()
            .unwrap()
            .iter()
            .map(|h| h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned))
            .collect()
    }

    /// Their bodies as JSON (panics on a body that is not JSON).
    pub fn bodies_json(&self) -> Vec<serde_json::Value> {
        self.bodies()
            .iter()
            .map(|body| serde_json::from_str(body).expect("a JSON request body"))
            .collect()
    }
}

async fn not_found(uri: Uri) -> Response {
    let body = openai_error(
        "invalid_request_error",
        "unknown_url",
        &format!("sse_server answers POST /v1/chat/completions only, not {uri}"),
    );
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

async fn answer(
    State(shared): State<Arc<Shared>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    shared.headers.lock().unwrap().push(headers);
    shared
        .bodies
        .lock()
        .unwrap()
        .push(String::from_utf8_lossy(&body).into_owned());
    let scripted = {
        let mut script = shared.script.lock().unwrap();
        if script.len() > 1 {
            script.remove(0)
        } else {
            script[0].clone()
        }
    };
    if !scripted.delay.is_zero() {
        tokio::time::sleep(scripted.delay).await;
    }
    let (status, content_type, body) = match scripted.answer {
        Answer::Status { status, body } => (status, "application/json", Body::from(body)),
        Answer::Stream(steps) => (200, "text/event-stream", Body::from_stream(events(steps))),
    };
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::from_u16(status).expect("a valid status");
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static(content_type));
    if content_type == "text/event-stream" {
        headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    }
    for (name, value) in scripted.headers {
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).expect("a header name"),
            HeaderValue::from_str(&value).expect("a header value"),
        );
    }
    response
}

/// The body: one item per event that sends bytes, each after its wait; `Cut` yields an error
/// and ends the stream.
fn events(
    steps: Vec<Step>,
) -> impl futures::Stream<Item = Result<String, io::Error>> + Send + 'static {
    futures::stream::unfold(Some(steps.into_iter()), |state| async move {
        let mut steps = state?;
        loop {
            let step = steps.next()?;
            if !step.delay.is_zero() {
                tokio::time::sleep(step.delay).await;
            }
            match step.event {
                Event::Stall(gap) => tokio::time::sleep(gap).await,
                Event::Cut => {
                    // hyper buffers frames that come back to back and drops its buffer when
                    // the body fails: one Pending first makes it flush what came before.
                    tokio::task::yield_now().await;
                    let cut = io::Error::new(io::ErrorKind::ConnectionReset, "sse_server: cut");
                    return Some((Err(cut), None));
                }
                event => return Some((Ok(event.wire()), Some(steps))),
            }
        }
    })
}
