//! async-openai through `#[resilient]`, end to end over real HTTP: a local axum server on
//! loopback plays the OpenAI API and counts every request it sees, so a hidden inner retry
//! would show.

mod mock_provider;

use std::time::Duration;

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::ReqwestService;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs,
};
use async_openai::Client;
use mock_provider::{chat_completion, openai_error, MockServer, Reply};
use retry_runtime::integrations::openai::{api_error, http_error, single_attempt_client};
use retry_runtime::{observe, resilient, retry_on, ErrorClass, Rejected, StopReason};

const MS: Duration = Duration::from_millis(1);

fn http() -> reqwest::Client {
    // Loopback only: never through a proxy from the environment.
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn config(server: &MockServer) -> OpenAIConfig {
    OpenAIConfig::new()
        .with_api_base(server.url("/v1"))
        .with_api_key("sk-test")
}

/// Our client: one HTTP request per call, headers kept.
fn ours(server: &MockServer) -> Client<OpenAIConfig> {
    single_attempt_client(config(server), http())
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
        .first()
        .and_then(|choice| choice.message.content.clone())
        .unwrap_or_default())
}

#[resilient(
    max = 3,
    base = "1ms",
    cap = "5ms",
    timeout = "2s",
    max_retry_after = "1s"
)]
#[retry_on(429, 500..=599, timeout, transport)]
async fn complete(client: &Client<OpenAIConfig>, prompt: &str) -> Result<String, OpenAIError> {
    ask(client, prompt).await
}

#[tokio::test]
async fn exactly_the_attempts_our_policy_allows() {
    let server = MockServer::start([Reply::status(500).body("internal error")]).await;
    let (out, report) = observe(complete(&ours(&server), "hi")).await;
    let error = out.unwrap_err();
    assert_eq!(http_error(&error).map(|e| e.status()), Some(500));
    assert_eq!(server.hits(), 3, "max = 3 means three requests, not 3 × 4");
    assert_eq!(report.attempts().len(), 3);
    assert_eq!(report.stop(), Some(&StopReason::AttemptsExhausted));
}

#[tokio::test]
async fn async_openai_alone_without_its_retry_layer_also_makes_exactly_max() {
    let server = MockServer::start([Reply::status(503).body("busy")]).await;
    let client =
        Client::build(http(), config(&server)).with_http_service(ReqwestService::new(http()));
    let (out, report) = observe(complete(&client, "hi")).await;
    assert!(matches!(out, Err(OpenAIError::ApiError(ref e)) if e.status_code == 503));
    assert_eq!(server.hits(), 3);
    assert_eq!(report.attempts().len(), 3);
}

#[resilient(max = 2, base = "1ms", cap = "5ms")]
async fn complete_twice(
    client: &Client<OpenAIConfig>,
    prompt: &str,
) -> Result<String, OpenAIError> {
    ask(client, prompt).await
}

/// Why the retry layer has to go: async-openai's default client retries 3 times inside each
/// of our attempts. (`retry-after: 0` keeps its waits out of the test.)
#[tokio::test]
async fn the_default_client_would_multiply_attempts() {
    let server = MockServer::start([Reply::status(500)
        .header("retry-after", "0")
        .body("internal error")])
    .await;
    let client = Client::build(http(), config(&server));
    let (out, report) = observe(complete_twice(&client, "hi")).await;
    assert!(out.is_err());
    assert_eq!(report.attempts().len(), 2);
    assert_eq!(
        server.hits(),
        2 * 4,
        "2 of our attempts × (1 + 3 inner retries)"
    );
}

#[tokio::test]
async fn a_429_is_retried_after_its_retry_after_ms() {
    let server = MockServer::start([
        Reply::status(429)
            .header("retry-after-ms", "10")
            .json(&openai_error(
                "requests",
                "rate_limit_exceeded",
                "Rate limit reached for requests",
            )),
        Reply::status(200).json(&chat_completion("hello")),
    ])
    .await;
    let (out, report) = observe(complete(&ours(&server), "hi")).await;
    assert_eq!(out.unwrap(), "hello");
    assert_eq!(server.hits(), 2);
    let first = &report.attempts()[0];
    assert_eq!(first.class, Some(ErrorClass::Status(429)));
    assert_eq!(first.retry_after, Some(10 * MS));
    assert!(report.attempts()[1].delay_before >= 10 * MS);
    assert_eq!(report.stop(), Some(&StopReason::Success));
}

#[tokio::test]
async fn insufficient_quota_is_not_retried() {
    let server = MockServer::start([
        Reply::status(429).json(&openai_error(
            "insufficient_quota",
            "insufficient_quota",
            "You exceeded your current quota, please check your plan and billing details.",
        )),
        Reply::status(200).json(&chat_completion("never")),
    ])
    .await;
    let (out, report) = observe(complete(&ours(&server), "hi")).await;
    let error = out.unwrap_err();
    assert_eq!(
        api_error(&error).and_then(|e| e.code).as_deref(),
        Some("insufficient_quota")
    );
    assert_eq!(server.hits(), 1);
    assert_eq!(report.attempts()[0].class, Some(ErrorClass::Permanent));
    assert_eq!(report.stop(), Some(&StopReason::NotRetryable));
}

#[tokio::test]
async fn context_length_and_content_policy_400s_are_permanent() {
    for (code, message) in [
        (
            "context_length_exceeded",
            "This model's maximum context length is 128000 tokens.",
        ),
        (
            "content_policy_violation",
            "Your request was rejected as a result of our safety system.",
        ),
    ] {
        let server = MockServer::start([Reply::status(400).json(&openai_error(
            "invalid_request_error",
            code,
            message,
        ))])
        .await;
        let (out, report) = observe(complete(&ours(&server), "hi")).await;
        assert!(out.is_err());
        assert_eq!(server.hits(), 1, "{code}");
        assert_eq!(report.attempts()[0].class, Some(ErrorClass::Permanent));
    }
}

#[tokio::test]
async fn the_same_rules_hold_for_async_openais_own_api_error() {
    // Without our service, async-openai turns a failed answer into `ApiError` (no headers).
    let server = MockServer::start([Reply::status(429).json(&openai_error(
        "insufficient_quota",
        "insufficient_quota",
        "quota",
    ))])
    .await;
    let client =
        Client::build(http(), config(&server)).with_http_service(ReqwestService::new(http()));
    let (out, report) = observe(complete(&client, "hi")).await;
    assert!(matches!(out, Err(OpenAIError::ApiError(_))));
    assert_eq!(server.hits(), 1);
    assert_eq!(report.attempts()[0].class, Some(ErrorClass::Permanent));

    let server = MockServer::start([Reply::status(400).json(&openai_error(
        "invalid_request_error",
        "context_length_exceeded",
        "too long",
    ))])
    .await;
    let client =
        Client::build(http(), config(&server)).with_http_service(ReqwestService::new(http()));
    let (_, report) = observe(complete(&client, "hi")).await;
    assert_eq!(server.hits(), 1);
    assert_eq!(report.attempts()[0].class, Some(ErrorClass::Permanent));
}

#[tokio::test]
async fn an_overloaded_529_is_retried() {
    let server = MockServer::start([
        Reply::status(529)
            .json(r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#),
        Reply::status(200).json(&chat_completion("back")),
    ])
    .await;
    let (out, report) = observe(complete(&ours(&server), "hi")).await;
    assert_eq!(out.unwrap(), "back");
    assert_eq!(server.hits(), 2);
    assert_eq!(report.attempts()[0].class, Some(ErrorClass::Status(529)));
}

#[tokio::test]
async fn x_should_retry_false_is_obeyed() {
    let server = MockServer::start([
        Reply::status(500)
            .header("x-should-retry", "false")
            .body("no"),
        Reply::status(200).json(&chat_completion("never")),
    ])
    .await;
    let (out, report) = observe(complete(&ours(&server), "hi")).await;
    assert!(out.is_err());
    assert_eq!(server.hits(), 1);
    assert_eq!(report.stop(), Some(&StopReason::ServerSaidNoRetry));
}

#[resilient(max = 3, base = "1ms", cap = "5ms", timeout = "100ms")]
async fn complete_quickly(
    client: &Client<OpenAIConfig>,
    prompt: &str,
) -> Result<String, OpenAIError> {
    ask(client, prompt).await
}

#[tokio::test]
async fn a_slow_answer_is_cut_by_the_timeout_and_retried() {
    let server = MockServer::start([
        Reply::status(200)
            .json(&chat_completion("too late"))
            .delayed(Duration::from_secs(10)),
        Reply::status(200).json(&chat_completion("in time")),
    ])
    .await;
    let started = std::time::Instant::now();
    let (out, report) = observe(complete_quickly(&ours(&server), "hi")).await;
    assert_eq!(out.unwrap(), "in time");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(server.hits(), 2);
    assert_eq!(report.attempts()[0].class, Some(ErrorClass::Timeout));
}

#[tokio::test]
async fn every_attempt_timing_out_returns_the_runtime_error_inside_openai_error() {
    let server = MockServer::start([Reply::status(200)
        .json(&chat_completion("too late"))
        .delayed(Duration::from_secs(10))])
    .await;
    let (out, report) = observe(complete_quickly(&ours(&server), "hi")).await;
    match out {
        Err(OpenAIError::Boxed(inner)) => assert_eq!(
            inner.downcast_ref::<Rejected>(),
            Some(&Rejected::AttemptTimedOut { timeout: 100 * MS })
        ),
        other => panic!("expected a boxed Rejected, got {other:?}"),
    }
    assert_eq!(server.hits(), 3);
    assert_eq!(report.stop(), Some(&StopReason::AttemptsExhausted));
}
