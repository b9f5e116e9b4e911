//! `ResilientMiddleware` in a `ClientWithMiddleware`, end to end over real HTTP (a local axum
//! server on loopback that counts every request), on paused time; and `reqwest-retry`'s
//! `RetryTransientMiddleware` against the same server, for its waits.

mod mock_provider;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::time::Duration;

use http::Extensions;
use mock_provider::{chat_completion, openai_error, MockServer, Reply};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware, Next};
use reqwest_retry::policies::ExponentialBackoff;
use reqwest_retry::RetryTransientMiddleware;
use retry_runtime::integrations::http::request_prompt;
use retry_runtime::integrations::reqwest_middleware::{rejected, ResilientMiddleware};
use retry_runtime::{
    breaker, configure, current_attempt, observe, BreakerConfig, BreakerState, CallSite, Config,
    ErrorClass, Policy, Rejected, Spend, StopReason,
};
use tokio::time::Instant;

const S: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let config = Config::default().with_breaker(
            "middleware-breaker",
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

static POLICY: Policy = Policy::new("reqwest_middleware::three")
    .with_max_attempts(3)
    .with_base(MS)
    .with_cap(Duration::from_millis(5))
    .with_max_retry_after(Duration::from_secs(10));
static SITE: CallSite = CallSite::new(&POLICY);

fn http() -> reqwest::Client {
    // Loopback only: never through a proxy from the environment.
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn ours(site: &'static CallSite<'static>) -> ClientWithMiddleware {
    ClientBuilder::new(http())
        .with(ResilientMiddleware::new(site))
        .build()
}

const CHAT: &str = r#"{"model":"mock-1","messages":[{"role":"user","content":"hi"}]}"#;

#[tokio::test(start_paused = true)]
async fn a_three_attempt_policy_makes_exactly_three_requests_and_returns_the_last_answer() {
    setup();
    let server = MockServer::start([Reply::status(503).body("busy, try later")]).await;
    let (out, report) = observe(ours(&SITE).get(server.url("/v1/models")).send()).await;
    let response = out.expect("the last failed answer is the answer");
    assert_eq!(server.hits(), 3, "counted on the server side");
    assert_eq!(response.status(), 503);
    assert_eq!(
        response.text().await.unwrap(),
        "busy, try later",
        "the body the middleware read, given back whole"
    );
    assert_eq!(report.function(), "reqwest_middleware::three");
    assert_eq!(report.attempts().len(), 3);
    assert!(report
        .attempts()
        .iter()
        .all(|a| a.class == Some(ErrorClass::Status(503))));
    assert_eq!(report.stop(), Some(&StopReason::AttemptsExhausted));
}

#[tokio::test(start_paused = true)]
async fn a_long_error_body_is_read_in_part_and_handed_on_whole() {
    setup();
    // 100 KiB: the middleware reads its first 2 KiB (and the chunk they came in), the rest is
    // handed on unread behind them.
    let page: String = (0..100 * 1024)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let server = MockServer::start([Reply::status(500).body(page.clone())]).await;
    let (out, report) = observe(ours(&SITE).get(server.url("/v1/models")).send()).await;
    let response = out.unwrap();
    assert_eq!(response.status(), 500);
    assert_eq!(
        response.headers()["content-length"],
        page.len().to_string().as_str()
    );
    assert!(
        response.url().as_str().ends_with("/v1/models"),
        "the URL kept"
    );
    assert!(
        response.text().await.unwrap() == page,
        "every byte, in order"
    );
    assert_eq!(server.hits(), 3);
    assert_eq!(report.attempts()[0].class, Some(ErrorClass::Status(500)));
}

#[tokio::test(start_paused = true)]
async fn a_400_is_sent_once() {
    setup();
    let body = openai_error("invalid_request_error", "invalid_value", "Bad value");
    let server = MockServer::start([Reply::status(400).json(&body)]).await;
    let (out, report) = observe(ours(&SITE).post(server.url("/v1/chat")).body(CHAT).send()).await;
    let response = out.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.text().await.unwrap(), body);
    assert_eq!(server.hits(), 1);
    assert_eq!(report.attempts().len(), 1);
    assert_eq!(report.stop(), Some(&StopReason::NotRetryable));
}

fn rate_limited_then_ok() -> [Reply; 2] {
    [
        Reply::status(429)
            .header("retry-after", "3")
            .json(&openai_error(
                "requests",
                "rate_limit_exceeded",
                "Rate limit reached for requests",
            )),
        Reply::status(200).json(&chat_completion("hello")),
    ]
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_here_and_not_by_reqwest_retry() {
    setup();
    // Ours: the server's 3 s is the wait (the policy's own backoff is 1-5 ms).
    let server = MockServer::start(rate_limited_then_ok()).await;
    let start = Instant::now();
    let (out, report) = observe(ours(&SITE).post(server.url("/v1/chat")).body(CHAT).send()).await;
    let ours_waited = start.elapsed();
    assert_eq!(out.unwrap().status(), 200);
    assert_eq!(server.hits(), 2);
    assert_eq!(ours_waited, 3 * S);
    assert_eq!(report.attempts()[0].retry_after, Some(3 * S));
    assert_eq!(report.attempts()[1].delay_before, 3 * S);
    assert_eq!(report.stop(), Some(&StopReason::Success));
    // The answer's JSON usage (3 + 2 tokens; the mock model has no price) is counted.
    assert_eq!(report.spent(), Spend::from_tokens(5));

    // reqwest-retry 0.9 with its default backoff (1 s, full jitter) and one retry, against the
    // same script: its policy is asked with the number of past retries only, so its wait is
    // its own backoff, whatever the header said.
    let server = MockServer::start(rate_limited_then_ok()).await;
    let theirs = ClientBuilder::new(http())
        .with(RetryTransientMiddleware::new_with_policy(
            ExponentialBackoff::builder().build_with_max_retries(1),
        ))
        .build();
    let start = Instant::now();
    let response = theirs
        .post(server.url("/v1/chat"))
        .body(CHAT)
        .send()
        .await
        .unwrap();
    let theirs_waited = start.elapsed();
    assert_eq!(response.status(), 200);
    assert_eq!(server.hits(), 2, "it did retry the 429");
    assert!(
        theirs_waited <= S,
        "reqwest-retry waited {theirs_waited:?}: its full-jitter backoff of at most 1 s"
    );
    assert_ne!(theirs_waited, 3 * S, "not the header's 3 s");
    eprintln!("Retry-After: 3 s; ours waited {ours_waited:?}, reqwest-retry {theirs_waited:?}");
}

#[tokio::test(start_paused = true)]
async fn a_streaming_body_gets_one_attempt_where_reqwest_retry_sends_nothing() {
    setup();
    let stream = || {
        reqwest::Body::wrap_stream(futures::stream::iter([Ok::<_, std::io::Error>(
            CHAT.as_bytes().to_vec(),
        )]))
    };
    let server = MockServer::start([Reply::status(503).body("busy")]).await;
    let (out, report) = observe(
        ours(&SITE)
            .post(server.url("/v1/chat"))
            .body(stream())
            .send(),
    )
    .await;
    assert_eq!(out.unwrap().status(), 503);
    assert_eq!(server.hits(), 1, "a stream cannot be sent twice");
    assert_eq!(report.attempts().len(), 1);
    assert_eq!(report.stop(), Some(&StopReason::AttemptsExhausted));

    let theirs = ClientBuilder::new(http())
        .with(RetryTransientMiddleware::new_with_policy(
            ExponentialBackoff::builder().build_with_max_retries(1),
        ))
        .build();
    let out = theirs
        .post(server.url("/v1/chat"))
        .body(stream())
        .send()
        .await;
    assert!(
        matches!(out, Err(reqwest_middleware::Error::Middleware(_))),
        "{out:?}"
    );
    assert_eq!(server.hits(), 1, "reqwest-retry refuses the request unsent");
}

static BREAKER_POLICY: Policy = Policy::new("reqwest_middleware::breaker")
    .with_max_attempts(2)
    .with_base(MS)
    .with_breaker("middleware-breaker");
static BREAKER_SITE: CallSite = CallSite::new(&BREAKER_POLICY);

#[tokio::test(start_paused = true)]
async fn failures_open_the_breaker_and_the_next_call_is_refused_before_sending() {
    setup();
    let server = MockServer::start([Reply::status(502).body("bad gateway")]).await;
    let client = ours(&BREAKER_SITE);
    let (out, _) = observe(client.get(server.url("/v1/models")).send()).await;
    assert_eq!(out.unwrap().status(), 502);
    assert_eq!(server.hits(), 2);
    assert_eq!(breaker("middleware-breaker").state(), BreakerState::Open);

    let (out, report) = observe(client.get(server.url("/v1/models")).send()).await;
    let error = out.unwrap_err();
    assert!(
        matches!(
            rejected(&error),
            Some(Rejected::CircuitOpen {
                breaker: "middleware-breaker",
                ..
            })
        ),
        "{error:?}"
    );
    assert_eq!(server.hits(), 2, "nothing reached the server");
    assert!(report.attempts().is_empty());
    assert!(matches!(
        report.stop(),
        Some(StopReason::CircuitOpen { .. })
    ));
}

// ---- in process: middlewares after ours see each attempt --------------------------------

type Answer<'a> =
    Pin<Box<dyn Future<Output = reqwest_middleware::Result<reqwest::Response>> + Send + 'a>>;

/// What the middleware after ours saw: the attempt's number, the call's key, the header.
static SEEN: Mutex<Vec<(u32, String, String)>> = Mutex::new(Vec::new());

fn record<'a>(
    request: reqwest::Request,
    extensions: &'a mut Extensions,
    next: Next<'a>,
) -> Answer<'a> {
    let attempt = current_attempt().expect("inside an attempt");
    let header = request
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    SEEN.lock().unwrap().push((
        attempt.number(),
        attempt.idempotency_key().to_string(),
        header,
    ));
    next.run(request, extensions)
}

#[tokio::test(start_paused = true)]
async fn each_attempt_runs_the_rest_of_the_chain_with_one_idempotency_key() {
    setup();
    let server = MockServer::start([
        Reply::status(500).body("oops"),
        Reply::status(500).body("oops"),
        Reply::status(200).body("ok"),
    ])
    .await;
    let client = ClientBuilder::new(http())
        .with(ResilientMiddleware::new(&SITE))
        .with(record)
        .build();
    let (out, report) = observe(client.post(server.url("/v1/chat")).body(CHAT).send()).await;
    assert_eq!(out.unwrap().text().await.unwrap(), "ok");
    let seen = SEEN.lock().unwrap().clone();
    assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), [1, 2, 3]);
    let key = &seen[0].1;
    assert!(
        seen.iter().all(|(_, k, h)| k == key && h == key),
        "{seen:?}"
    );
    assert_eq!(report.attempts().len(), 3);
}

/// A provider inside the chain: the first request never answers (until the test's timeout
/// cuts it), the next gets a chat completion with its usage.
static SLOW_CALLS: AtomicUsize = AtomicUsize::new(0);

fn slow_then_ok<'a>(
    _request: reqwest::Request,
    _extensions: &'a mut Extensions,
    _next: Next<'a>,
) -> Answer<'a> {
    let first = SLOW_CALLS.fetch_add(1, Ordering::SeqCst) == 0;
    Box::pin(async move {
        if first {
            tokio::time::sleep(3600 * S).await;
        }
        let answer = http::Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(chat_completion("hello"))
            .unwrap();
        Ok(reqwest::Response::from(answer))
    })
}

static TIMED_POLICY: Policy = Policy::new("reqwest_middleware::timed")
    .with_max_attempts(2)
    .with_base(MS)
    .with_timeout(Duration::from_secs(2));
static TIMED_SITE: CallSite = CallSite::new(&TIMED_POLICY);

#[tokio::test(start_paused = true)]
async fn a_cut_attempt_pays_its_prompt_and_a_success_its_usage() {
    setup();
    let client = ClientBuilder::new(http())
        .with(ResilientMiddleware::new(&TIMED_SITE))
        .with(slow_then_ok)
        .build();
    let start = Instant::now();
    let (out, report) = observe(
        client
            .post("http://provider.invalid/v1/chat")
            .body(CHAT)
            .send(),
    )
    .await;
    assert_eq!(out.unwrap().status(), 200);
    assert!(
        start.elapsed() >= 2 * S,
        "the first attempt ran to its timeout"
    );
    assert_eq!(SLOW_CALLS.load(Ordering::SeqCst), 2);
    let attempts = report.attempts();
    assert_eq!(attempts[0].class, Some(ErrorClass::Timeout));
    let prompt = request_prompt(CHAT.as_bytes()).unwrap();
    assert_eq!(attempts[0].spend, prompt, "the cut attempt pays its prompt");
    assert_eq!(
        attempts[1].spend,
        Spend::from_tokens(5),
        "the answer its usage"
    );
    assert_eq!(report.spent(), prompt + Spend::from_tokens(5));
}
