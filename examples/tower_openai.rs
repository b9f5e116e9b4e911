//! async-openai with our executor as its HTTP service: `ResilientLayer` over `SingleAttempt`,
//! installed with `Client::with_http_service`. No attribute: the policy is a `CallSite`, and
//! every request the client makes is one call under it.
//!
//! ```text
//! cargo run --example tower_openai
//! ```
//!
//! The example starts a mock of the OpenAI chat API on 127.0.0.1 (axum, a free port) that
//! misbehaves on purpose, picked by the prompt: a 429 with `Retry-After: 1`, a 400 (a caller
//! fault), and 503s until the breaker opens. Each call's report is printed beside what the
//! server saw.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs,
};
use async_openai::Client;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use retry_runtime::integrations::openai::SingleAttempt;
use retry_runtime::integrations::tower::ResilientLayer;
use retry_runtime::{configure, observe, BreakerConfig, CallSite, Config, Policy};
use tower_layer::Layer;

/// The policy every request of the client runs under: up to 3 attempts, backoff from 200 ms,
/// a server's wait of at most 5 s honoured, each attempt cut at 2 s, a breaker.
static POLICY: Policy = Policy::new("openai")
    .with_max_attempts(3)
    .with_base(Duration::from_millis(200))
    .with_max_retry_after(Duration::from_secs(5))
    .with_timeout(Duration::from_secs(2))
    .with_breaker("openai");
static SITE: CallSite = CallSite::new(&POLICY);

/// Requests seen per prompt, so each scenario can misbehave on its first requests only.
type Seen = Arc<Mutex<HashMap<String, u32>>>;

async fn chat_completions(State(seen): State<Seen>, body: Bytes) -> Response {
    let prompt = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|request| {
            let messages = request.get("messages")?.as_array()?.clone();
            Some(messages.last()?.get("content")?.as_str()?.to_string())
        })
        .unwrap_or_default();
    let n = {
        let mut seen = seen.lock().unwrap();
        let count = seen.entry(prompt.clone()).or_default();
        *count += 1;
        *count
    };
    let error = |status: StatusCode, kind: &str, code: &str, message: &str| {
        let body = serde_json::json!({
            "error": { "message": message, "type": kind, "param": null, "code": code }
        });
        (
            status,
            [("content-type", "application/json"), ("retry-after", "1")],
            body.to_string(),
        )
            .into_response()
    };
    match (prompt.as_str(), n) {
        ("rate limited", 1) => error(
            StatusCode::TOO_MANY_REQUESTS,
            "requests",
            "rate_limit_exceeded",
            "Rate limit reached for requests",
        ),
        ("bad request", _) => error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_value",
            "Invalid value for 'temperature': must be at most 2.",
        ),
        ("down", _) => (StatusCode::SERVICE_UNAVAILABLE, "upstream down").into_response(),
        _ => {
            let body = serde_json::json!({
                "id": "chatcmpl-mock", "object": "chat.completion", "created": 1_700_000_000,
                "model": "mock-1",
                "choices": [{ "index": 0, "finish_reason": "stop",
                              "message": { "role": "assistant", "content": format!("an answer to {prompt:?}") } }],
                "usage": { "prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8 }
            });
            ([("content-type", "application/json")], body.to_string()).into_response()
        }
    }
}

async fn ask(client: &Client<OpenAIConfig>, prompt: &str) -> Result<String, OpenAIError> {
    let request = CreateChatCompletionRequestArgs::default()
        .model("mock-1")
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content(prompt)
            .build()?
            .into()])
        .build()?;
    let response = client.chat().create(request).await?;
    Ok(response
        .choices
        .into_iter()
        .next()
        .and_then(|choice| choice.message.content)
        .unwrap_or_default())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    retry_runtime::testing::seed_jitter(7);
    // Two failed attempts in a row open the "openai" breaker for 30 s.
    configure(Config::default().with_breaker(
        "openai",
        BreakerConfig {
            failures: 2,
            cooldown: Duration::from_secs(30),
            ..BreakerConfig::default()
        },
    ))?;

    let seen: Seen = Arc::default();
    let app = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .with_state(Arc::clone(&seen));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!("mock OpenAI-compatible server on http://{addr}/v1\n");

    let http = reqwest::Client::builder().no_proxy().build()?;
    let config = OpenAIConfig::new()
        .with_api_base(format!("http://{addr}/v1"))
        .with_api_key("sk-local-mock");
    // `SingleAttempt` sends each request once (async-openai's own retry layer is not in the
    // stack) and keeps a failure's headers; the layer around it makes the calls.
    let service = ResilientLayer::new(&SITE).layer(SingleAttempt::new(http.clone()));
    let client = Client::build(http, config).with_http_service(service);

    let scenarios = [
        ("rate limited", "a 429 with Retry-After: 1, then an answer"),
        ("bad request", "a 400: a caller fault, sent once"),
        ("down", "503s: the breaker opens"),
        ("down", "the breaker is open: refused before sending"),
        (
            "hello",
            "an answer, still refused: the breaker is open for 30 s",
        ),
    ];
    for (prompt, title) in scenarios {
        let before = seen.lock().unwrap().values().sum::<u32>();
        let (result, report) = observe(ask(&client, prompt)).await;
        let sent = seen.lock().unwrap().values().sum::<u32>() - before;
        println!("== {prompt}: {title}");
        match &result {
            Ok(answer) => println!("   -> Ok({answer:?})"),
            Err(error) => println!("   -> Err({error})"),
        }
        println!("   the server saw {sent} request(s)");
        for line in report.to_string().lines() {
            println!("   {line}");
        }
        println!();
    }
    Ok(())
}
