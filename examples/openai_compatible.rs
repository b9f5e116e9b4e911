//! A real client against a local OpenAI-compatible server: async-openai through `#[resilient]`.
//!
//! ```text
//! cargo run --example openai_compatible
//! ```
//!
//! The example starts a mock of the OpenAI chat API on 127.0.0.1 (axum, a free port) that
//! misbehaves on purpose, picked by the prompt: a 429 with `Retry-After`, two 500s, an
//! exhausted quota (429 `insufficient_quota`), a prompt over the context length (400
//! `context_length_exceeded`), a plain bad request (400), and a slow answer. Each call goes through async-openai with its
//! own retry layer removed (`single_attempt_client`), so the only retries are our policy's,
//! and each call's report is printed beside what the server saw.

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
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use retry_runtime::integrations::openai::{api_error, http_error, single_attempt_client};
use retry_runtime::{observe, resilient, retry_on};

/// Requests seen per prompt, so each scenario can misbehave on its first requests only.
type Seen = Arc<Mutex<HashMap<String, u32>>>;

/// The mock's whole behaviour: what the n-th request (from 1) with this prompt gets.
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
    match (prompt.as_str(), n) {
        ("rate limited", 1) => {
            let mut headers = HeaderMap::new();
            headers.insert("retry-after", "1".parse().unwrap());
            headers.insert("x-ratelimit-remaining-requests", "0".parse().unwrap());
            headers.insert("x-ratelimit-reset-requests", "1s".parse().unwrap());
            let body = error_body(
                "requests",
                "rate_limit_exceeded",
                "Rate limit reached for requests",
            );
            (StatusCode::TOO_MANY_REQUESTS, headers, body).into_response()
        }
        ("flaky", 1 | 2) => {
            (StatusCode::INTERNAL_SERVER_ERROR, "internal server error").into_response()
        }
        ("no quota", _) => {
            let body = error_body(
                "insufficient_quota",
                "insufficient_quota",
                "You exceeded your current quota, please check your plan and billing details.",
            );
            (StatusCode::TOO_MANY_REQUESTS, body).into_response()
        }
        ("too long", _) => {
            let body = error_body(
                "invalid_request_error",
                "context_length_exceeded",
                "This model's maximum context length is 128000 tokens.",
            );
            (StatusCode::BAD_REQUEST, body).into_response()
        }
        ("bad request", _) => {
            let body = error_body(
                "invalid_request_error",
                "invalid_value",
                "Invalid value for 'temperature': must be at most 2.",
            );
            (StatusCode::BAD_REQUEST, body).into_response()
        }
        ("slow", 1) => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            completion("an answer nobody waited for")
        }
        _ => completion(&format!("a fine answer to {prompt:?}")),
    }
}

fn error_body(kind: &str, code: &str, message: &str) -> Response {
    let body = serde_json::json!({
        "error": { "message": message, "type": kind, "param": null, "code": code }
    });
    ([("content-type", "application/json")], body.to_string()).into_response()
}

fn completion(content: &str) -> Response {
    let body = serde_json::json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "mock-1",
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": content },
            "finish_reason": "stop"
        }],
        "usage": { "prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8 }
    });
    ([("content-type", "application/json")], body.to_string()).into_response()
}

/// The function the application calls: up to 4 attempts, full-jitter backoff from 100 ms,
/// each attempt cut at 500 ms, the whole call at 10 s, a server wait of at most 5 s honoured.
#[resilient(
    backoff = "exp_jitter",
    max = 4,
    base = "100ms",
    cap = "2s",
    timeout = "500ms",
    deadline = "10s",
    max_retry_after = "5s"
)]
#[retry_on(429, 500..=599, timeout, transport)]
async fn complete(client: &Client<OpenAIConfig>, prompt: &str) -> Result<String, OpenAIError> {
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

    let seen: Seen = Arc::default();
    let app = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .with_state(Arc::clone(&seen));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!("mock OpenAI-compatible server on http://{addr}/v1\n");

    let config = OpenAIConfig::new()
        .with_api_base(format!("http://{addr}/v1"))
        .with_api_key("sk-local-mock");
    // async-openai's default client retries 429/5xx 3 times by itself; this one sends each
    // request once and keeps the headers of a failure (Retry-After) for our policy.
    let http = reqwest::Client::builder().no_proxy().build()?;
    let client = single_attempt_client(config, http);

    let scenarios = [
        ("rate limited", "429 with Retry-After: 1, then an answer"),
        ("flaky", "two 500s, then an answer"),
        (
            "no quota",
            "429 insufficient_quota: permanent, never retried",
        ),
        (
            "too long",
            "400 context_length_exceeded: permanent, never retried",
        ),
        (
            "bad request",
            "400 invalid_value: a caller fault, never retried",
        ),
        ("slow", "the first answer takes 3 s: cut at 500 ms, retried"),
    ];
    for (prompt, title) in scenarios {
        let (result, report) = observe(complete(&client, prompt)).await;
        println!("== {prompt}: {title}");
        match &result {
            Ok(answer) => println!("   -> Ok({answer:?})"),
            Err(error) => match api_error(error) {
                Some(api) => println!(
                    "   -> Err(HTTP {} {} {:?}: {})",
                    http_error(error).map_or(0, |e| e.status()),
                    api.r#type.unwrap_or_default(),
                    api.code.unwrap_or_default(),
                    api.message
                ),
                None => println!("   -> Err({error})"),
            },
        }
        let requests = seen.lock().unwrap().get(prompt).copied().unwrap_or(0);
        println!("   server saw {requests} request(s)");
        print!("{report}");
        println!();
    }
    Ok(())
}
