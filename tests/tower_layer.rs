//! `ResilientLayer` end to end: async-openai's client over real HTTP (a local axum server on
//! loopback that counts every request), with the layer as its HTTP service, on paused time.
//! Once over async-openai's own `ReqwestService` (failed answers reach the layer as answers)
//! and once over `SingleAttempt` (failed answers reach it as errors, headers kept).

mod mock_provider;

use std::sync::{Arc, Mutex, Once};
use std::task::{Context, Poll};
use std::time::Duration;

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::ReqwestService;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs,
};
use async_openai::Client;
use mock_provider::{chat_completion, openai_error, MockServer, Reply};
use retry_runtime::integrations::openai::{http_error, SingleAttempt};
use retry_runtime::integrations::tower::ResilientLayer;
use retry_runtime::{
    breaker, configure, current_attempt, observe, BreakerConfig, BreakerState, CallSite, Config,
    ErrorClass, Policy, Rejected, Spend, StopReason,
};
use tokio::time::Instant;
use tower_layer::Layer;

const S: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let config = Config::from_toml_str(CONFIGURED).unwrap().with_breaker(
            "tower-breaker",
            BreakerConfig {
                failures: 2,
                cooldown: 30 * S,
                probes: 1,
                ..BreakerConfig::default()
            },
        );
        configure(config).expect("first and only configure");
    });
}

/// A policy from the configuration, with a breaker, a token pool and a pacer of one request a
/// second: what a service configures once and hands to its HTTP client.
const CONFIGURED: &str = r#"
[policy."tower_layer.configured"]
max = 3
base = "1ms"
max_retry_after = "10s"
retry_on = [429, "500..=599", "timeout", "transport"]
breaker = "tower-combo"
pool = "tower-tokens"
pace = "tower-pace"

[pool.tower-tokens]
limit = "12tok"
window = "1h"

[pace.tower-pace]
rpm = 60
burst = "1s"
adaptive = false
"#;

static POLICY: Policy = Policy::new("tower_layer::openai")
    .with_max_attempts(3)
    .with_base(MS)
    .with_cap(Duration::from_millis(5))
    .with_max_retry_after(Duration::from_secs(10));
static SITE: CallSite = CallSite::new(&POLICY);

fn http() -> reqwest::Client {
    // Loopback only: never through a proxy from the environment.
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn config(server: &MockServer) -> OpenAIConfig {
    OpenAIConfig::new()
        .with_api_base(server.url("/v1"))
        .with_api_key("sk-test")
}

/// async-openai with the layer over its own plain service: a failed answer is an answer.
fn over_reqwest_service(
    server: &MockServer,
    site: &'static CallSite<'static>,
) -> Client<OpenAIConfig> {
    let service = ResilientLayer::new(site).layer(ReqwestService::new(http()));
    Client::build(http(), config(server)).with_http_service(service)
}

/// async-openai with the layer over `SingleAttempt`: a failed answer is an `HttpError`.
fn over_single_attempt(
    server: &MockServer,
    site: &'static CallSite<'static>,
) -> Client<OpenAIConfig> {
    let service = ResilientLayer::new(site).layer(SingleAttempt::new(http()));
    Client::build(http(), config(server)).with_http_service(service)
}

async fn ask(client: &Client<OpenAIConfig>) -> Result<String, OpenAIError> {
    let request = CreateChatCompletionRequestArgs::default()
        .model("mock-1")
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("hi")
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

fn rate_limited(retry_after: &str) -> Reply {
    Reply::status(429)
        .header("retry-after", retry_after)
        .json(&openai_error(
            "requests",
            "rate_limit_exceeded",
            "Rate limit reached for requests",
        ))
}

#[tokio::test(start_paused = true)]
async fn a_429s_retry_after_is_the_wait_through_either_inner_service() {
    setup();
    for single in [false, true] {
        let server = MockServer::start([
            rate_limited("3"),
            Reply::status(200).json(&chat_completion("hello")),
        ])
        .await;
        let client = if single {
            over_single_attempt(&server, &SITE)
        } else {
            over_reqwest_service(&server, &SITE)
        };
        let start = Instant::now();
        let (out, report) = observe(ask(&client)).await;
        let waited = start.elapsed();
        assert_eq!(out.unwrap(), "hello", "single_attempt = {single}");
        assert_eq!(server.hits(), 2);
        assert_eq!(waited, 3 * S, "the header's 3 s, not the 1-5 ms backoff");
        assert_eq!(report.function(), "tower_layer::openai");
        let attempts = report.attempts();
        assert_eq!(attempts.len(), 2);
        assert_eq!(attempts[0].class, Some(ErrorClass::Status(429)));
        assert_eq!(attempts[0].retry_after, Some(3 * S));
        assert_eq!(attempts[1].delay_before, 3 * S);
        assert_eq!(attempts[1].class, None);
        assert_eq!(report.stop(), Some(&StopReason::Success));
        // The answer's usage (3 + 2 tokens; the mock model has no price) is counted when the
        // layer sees the JSON answer itself; `SingleAttempt` hands it a response as well.
        assert_eq!(
            report.spent(),
            Spend::from_tokens(5),
            "single_attempt = {single}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_wait_longer_than_max_retry_after_ends_the_call_with_that_answer() {
    setup();
    let server = MockServer::start([rate_limited("60")]).await;
    let start = Instant::now();
    let (out, report) = observe(ask(&over_reqwest_service(&server, &SITE))).await;
    assert!(matches!(out, Err(OpenAIError::ApiError(ref e)) if e.status_code == 429));
    assert_eq!(
        server.hits(),
        1,
        "not retried early against the server's wish"
    );
    assert_eq!(start.elapsed(), Duration::ZERO, "and not waited for either");
    assert_eq!(
        report.stop(),
        Some(&StopReason::RetryAfterTooLong {
            requested: 60 * S,
            max: 10 * S
        })
    );
}

#[tokio::test(start_paused = true)]
async fn a_400_is_sent_once_and_async_openai_reads_the_answer_the_layer_gave_back() {
    setup();
    let body = openai_error(
        "invalid_request_error",
        "invalid_value",
        "Bad value for 'model'",
    );
    let server = MockServer::start([Reply::status(400).json(&body)]).await;
    let (out, report) = observe(ask(&over_reqwest_service(&server, &SITE))).await;
    assert_eq!(server.hits(), 1, "a caller fault is never retried");
    match out {
        Err(OpenAIError::ApiError(error)) => {
            assert_eq!(error.status_code.as_u16(), 400);
            // The layer read the body for the providers' rules and handed it back whole.
            assert_eq!(error.api_error.message, "Bad value for 'model'");
            assert_eq!(error.api_error.code.as_deref(), Some("invalid_value"));
        }
        other => panic!("expected async-openai's ApiError, got {other:?}"),
    }
    assert_eq!(report.attempts().len(), 1);
    assert_eq!(report.attempts()[0].class, Some(ErrorClass::Status(400)));
    assert_eq!(report.stop(), Some(&StopReason::NotRetryable));
}

#[tokio::test(start_paused = true)]
async fn a_quota_429_is_read_from_the_body_and_never_retried() {
    setup();
    let server = MockServer::start([Reply::status(429).json(&openai_error(
        "insufficient_quota",
        "insufficient_quota",
        "You exceeded your current quota",
    ))])
    .await;
    let (out, report) = observe(ask(&over_reqwest_service(&server, &SITE))).await;
    assert!(matches!(out, Err(OpenAIError::ApiError(ref e)) if e.status_code == 429));
    assert_eq!(server.hits(), 1);
    assert_eq!(report.attempts()[0].class, Some(ErrorClass::Permanent));
    assert_eq!(report.stop(), Some(&StopReason::NotRetryable));
}

#[tokio::test(start_paused = true)]
async fn the_policy_makes_exactly_its_attempts_and_the_last_answer_is_the_answer() {
    setup();
    let server = MockServer::start([Reply::status(503).body("busy, try later")]).await;
    let (out, report) = observe(ask(&over_reqwest_service(&server, &SITE))).await;
    assert_eq!(server.hits(), 3, "max 3: three requests, no inner retry");
    match out {
        Err(OpenAIError::ApiError(error)) => {
            assert_eq!(error.status_code.as_u16(), 503);
            assert_eq!(error.api_error.message, "busy, try later");
        }
        other => panic!("expected the last 503 as async-openai's ApiError, got {other:?}"),
    }
    assert_eq!(report.attempts().len(), 3);
    assert_eq!(report.stop(), Some(&StopReason::AttemptsExhausted));

    // Over `SingleAttempt` the same call ends with its `HttpError`, headers and all.
    let server = MockServer::start([Reply::status(503)
        .header("x-should-retry", "false")
        .body("down")])
    .await;
    let (out, report) = observe(ask(&over_single_attempt(&server, &SITE))).await;
    let error = out.unwrap_err();
    assert_eq!(http_error(&error).map(|e| e.status()), Some(503));
    assert_eq!(server.hits(), 1, "x-should-retry: false is obeyed");
    assert_eq!(report.stop(), Some(&StopReason::ServerSaidNoRetry));
}

static BREAKER_POLICY: Policy = Policy::new("tower_layer::breaker")
    .with_max_attempts(2)
    .with_base(MS)
    .with_breaker("tower-breaker");
static BREAKER_SITE: CallSite = CallSite::new(&BREAKER_POLICY);

#[tokio::test(start_paused = true)]
async fn failures_open_the_breaker_and_the_next_call_is_refused_before_sending() {
    setup();
    let server = MockServer::start([Reply::status(500).body("internal error")]).await;
    let client = over_reqwest_service(&server, &BREAKER_SITE);
    let (out, report) = observe(ask(&client)).await;
    assert!(matches!(out, Err(OpenAIError::ApiError(ref e)) if e.status_code == 500));
    assert_eq!(server.hits(), 2);
    assert_eq!(report.breaker(), Some("tower-breaker"));
    assert_eq!(breaker("tower-breaker").state(), BreakerState::Open);

    let (out, report) = observe(ask(&client)).await;
    assert_eq!(
        server.hits(),
        2,
        "refused before any request reached the server"
    );
    let error = out.unwrap_err();
    match &error {
        OpenAIError::Boxed(inner) => assert!(
            matches!(
                inner.downcast_ref::<Rejected>(),
                Some(Rejected::CircuitOpen {
                    breaker: "tower-breaker",
                    ..
                })
            ),
            "{error:?}"
        ),
        other => panic!("expected the runtime's refusal, got {other:?}"),
    }
    assert!(report.attempts().is_empty());
    assert!(
        matches!(report.stop(), Some(StopReason::CircuitOpen { .. })),
        "{report}"
    );
}

// ---- a plain `http` service: what each attempt sees -------------------------------------

/// Answers 503 until its `fail` runs out, then 200; records the attempt context and the
/// `Idempotency-Key` header of each request it is sent.
#[derive(Clone)]
struct Recorder {
    fail: Arc<Mutex<usize>>,
    seen: Arc<Mutex<Vec<(u32, String, String)>>>,
}

impl tower_service::Service<http::Request<String>> for Recorder {
    type Response = http::Response<String>;
    type Error = Rejected;
    type Future = std::future::Ready<Result<http::Response<String>, Rejected>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Rejected>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<String>) -> Self::Future {
        let attempt = current_attempt().expect("inside an attempt");
        let header = request
            .headers()
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        self.seen.lock().unwrap().push((
            attempt.number(),
            attempt.idempotency_key().to_string(),
            header,
        ));
        let mut fail = self.fail.lock().unwrap();
        let mut response = http::Response::new(request.into_body());
        if *fail > 0 {
            *fail -= 1;
            *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            response
                .headers_mut()
                .insert("retry-after-ms", http::HeaderValue::from_static("250"));
        }
        std::future::ready(Ok(response))
    }
}

#[tokio::test(start_paused = true)]
async fn each_attempt_runs_in_its_context_with_one_idempotency_key() {
    let recorder = Recorder {
        fail: Arc::new(Mutex::new(2)),
        seen: Arc::default(),
    };
    let mut service = ResilientLayer::new(&SITE).layer(recorder.clone());
    let request = http::Request::post("http://provider.invalid/v1/chat")
        .body("{\"prompt\":\"hi\"}".to_string())
        .unwrap();
    let start = Instant::now();
    let (out, report) = observe(tower_service::Service::call(&mut service, request)).await;
    let response = out.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.body(),
        "{\"prompt\":\"hi\"}",
        "each attempt got the whole body"
    );
    assert_eq!(
        start.elapsed(),
        500 * MS,
        "two waits of retry-after-ms: 250"
    );
    let seen = recorder.seen.lock().unwrap().clone();
    let numbers: Vec<u32> = seen.iter().map(|(n, _, _)| *n).collect();
    assert_eq!(numbers, [1, 2, 3]);
    let key = &seen[0].1;
    assert_eq!(key.len(), 32);
    for (_, k, header) in &seen {
        assert_eq!(k, key, "one key for the call");
        assert_eq!(header, key, "sent as the POST's Idempotency-Key");
    }
    assert_eq!(report.attempts().len(), 3);
    assert_eq!(report.stop(), Some(&StopReason::Success));
    assert_eq!(current_attempt(), None, "no context outside the call");
}

// ---- a policy from the configuration, with everything a call site meets -----------------

#[tokio::test(start_paused = true)]
async fn a_configured_policy_drives_the_layer_with_its_breaker_pool_and_pacer() {
    setup();
    let site = CallSite::configured("tower_layer.configured").unwrap();
    let server = MockServer::start([
        rate_limited("2"),
        Reply::status(200).json(&chat_completion("one")),
        Reply::status(200).json(&chat_completion("two")),
        Reply::status(200).json(&chat_completion("three")),
    ])
    .await;
    let client = over_single_attempt(&server, site);

    // A 429 waits its header's 2 s, then the answer; the pool is charged its usage.
    let start = Instant::now();
    let (out, report) = observe(ask(&client)).await;
    assert_eq!(out.unwrap(), "one");
    assert_eq!(start.elapsed(), 2 * S);
    assert_eq!(report.function(), "tower_layer.configured");
    assert_eq!(report.breaker(), Some("tower-combo"));
    assert_eq!(report.attempts()[1].delay_before, 2 * S);
    assert_eq!(
        retry_runtime::pool_usage("tower-tokens").unwrap().committed,
        Spend::from_tokens(5)
    );

    // The next call right away waits its turn in the pacer's line (one a second).
    let (out, report) = observe(ask(&client)).await;
    assert_eq!(out.unwrap(), "two");
    assert!(report.paced() >= Duration::from_millis(900), "{report}");
    assert_eq!(
        retry_runtime::pool_usage("tower-tokens").unwrap().committed,
        Spend::from_tokens(10)
    );

    // The pool has 2 of its 12 tokens left, less than an answer costs: the third call is
    // refused before anything is sent.
    let hits = server.hits();
    let (out, report) = observe(ask(&client)).await;
    assert_eq!(server.hits(), hits, "refused before sending");
    match out.unwrap_err() {
        OpenAIError::Boxed(inner) => {
            assert!(inner.downcast_ref::<Rejected>().is_some(), "{inner:?}")
        }
        other => panic!("expected the runtime's refusal, got {other:?}"),
    }
    assert!(
        matches!(report.stop(), Some(StopReason::BudgetExhausted { .. })),
        "{report}"
    );
}
