//! The `http` and `reqwest` integrations over real HTTP: a local axum server on loopback sends
//! each header form and each provider error shape; real reqwest reads them.

mod common;
mod mock_provider;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mock_provider::{openai_error, MockServer, Reply};
use proptest::prelude::*;
use reqwest::header::{HeaderMap, HeaderValue};
use retry_runtime::integrations::http::{
    provider_class, HttpError, RateLimitHint, BODY_SNIPPET_LIMIT, MAX_HINTED_WAIT,
};
use retry_runtime::integrations::reqwest::{error_for_status, CallError};
use retry_runtime::{observe, resilient, retry_on, Classify, ErrorClass, StopReason};

const S: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

fn client() -> reqwest::Client {
    // Loopback only: never through a proxy from the environment.
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// One request to a server answering `reply`; the answer as an `HttpError`.
async fn failure(reply: Reply) -> HttpError {
    let server = MockServer::start([reply]).await;
    let response = client().get(server.url("/v1/x")).send().await.unwrap();
    error_for_status(response)
        .await
        .expect_err("a non-success status")
}

/// One request to a server answering `reply`; the response's headers.
async fn headers_of(reply: Reply) -> HeaderMap {
    let server = MockServer::start([reply]).await;
    let response = client().get(server.url("/v1/x")).send().await.unwrap();
    response.headers().clone()
}

// ---- each header form -------------------------------------------------------------------

#[tokio::test]
async fn retry_after_delta_seconds() {
    let e = failure(Reply::status(429).header("retry-after", "7")).await;
    assert_eq!(e.status(), 429);
    assert_eq!(e.class(), ErrorClass::Status(429));
    assert_eq!(e.retry_after(), Some(7 * S));
}

#[tokio::test]
async fn retry_after_fractional_seconds() {
    let e = failure(Reply::status(503).header("retry-after", "1.5")).await;
    assert_eq!(e.retry_after(), Some(1500 * MS));
}

#[tokio::test]
async fn retry_after_http_date_in_the_future_and_in_the_past() {
    let at = SystemTime::now() + 120 * S;
    let e = failure(Reply::status(503).header("retry-after", httpdate::fmt_http_date(at))).await;
    let wait = e.retry_after().unwrap();
    // HTTP-dates have whole seconds.
    assert!(wait > 115 * S && wait <= 120 * S, "{wait:?}");

    let e =
        failure(Reply::status(503).header("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")).await;
    assert_eq!(e.retry_after(), Some(Duration::ZERO));
}

#[tokio::test]
async fn retry_after_ms_and_its_precedence() {
    let e = failure(Reply::status(429).header("retry-after-ms", "10")).await;
    assert_eq!(e.retry_after(), Some(10 * MS));
    let e = failure(Reply::status(429).header("retry-after-ms", "2.5")).await;
    assert_eq!(e.retry_after(), Some(Duration::from_micros(2500)));
    let e = failure(
        Reply::status(429)
            .header("retry-after", "3")
            .header("retry-after-ms", "250"),
    )
    .await;
    assert_eq!(e.retry_after(), Some(250 * MS));
}

#[tokio::test]
async fn x_should_retry_both_ways() {
    let e = failure(Reply::status(503).header("x-should-retry", "false")).await;
    assert_eq!(e.should_retry(), Some(false));
    let e = failure(Reply::status(409).header("x-should-retry", "true")).await;
    assert_eq!(e.should_retry(), Some(true));
}

#[tokio::test]
async fn openai_rate_limit_headers_on_a_success() {
    let headers = headers_of(
        Reply::status(200)
            .header("x-ratelimit-limit-requests", "60")
            .header("x-ratelimit-remaining-requests", "59")
            .header("x-ratelimit-reset-requests", "1s")
            .header("x-ratelimit-limit-tokens", "150000")
            .header("x-ratelimit-remaining-tokens", "149984")
            .header("x-ratelimit-reset-tokens", "6m0s")
            .body("{}"),
    )
    .await;
    let hint = RateLimitHint::from_headers(&headers);
    assert_eq!(hint.requests.limit, Some(60));
    assert_eq!(hint.requests.remaining, Some(59));
    assert_eq!(hint.requests.reset, Some(S));
    assert_eq!(hint.tokens.limit, Some(150_000));
    assert_eq!(hint.tokens.remaining, Some(149_984));
    assert_eq!(hint.tokens.reset, Some(360 * S));
    assert_eq!(hint.retry_after, None);

    let headers = headers_of(Reply::status(200).header("x-ratelimit-reset-tokens", "20ms")).await;
    assert_eq!(
        RateLimitHint::from_headers(&headers).tokens.reset,
        Some(20 * MS)
    );
}

#[tokio::test]
async fn openai_rate_limit_headers_on_a_429() {
    let e = failure(
        Reply::status(429)
            .header("x-ratelimit-remaining-requests", "0")
            .header("x-ratelimit-reset-requests", "20ms")
            .header("retry-after-ms", "20")
            .json(&openai_error(
                "requests",
                "rate_limit_exceeded",
                "Rate limit reached for requests",
            )),
    )
    .await;
    assert_eq!(e.class(), ErrorClass::Status(429));
    assert!(e.hints().requests.is_exhausted());
    assert_eq!(e.hints().requests.reset, Some(20 * MS));
    assert_eq!(e.retry_after(), Some(20 * MS));
}

#[tokio::test]
async fn anthropic_rate_limit_headers_with_rfc3339_resets() {
    let headers = headers_of(
        Reply::status(200)
            .header("anthropic-ratelimit-requests-limit", "50")
            .header("anthropic-ratelimit-requests-remaining", "49")
            .header("anthropic-ratelimit-requests-reset", "2024-06-01T12:00:30Z")
            .header("anthropic-ratelimit-tokens-limit", "40000")
            .header("anthropic-ratelimit-tokens-remaining", "0")
            .header(
                "anthropic-ratelimit-tokens-reset",
                "2024-06-01T13:01:00+01:00",
            ),
    )
    .await;
    // 2024-06-01T12:00:00Z
    let now = UNIX_EPOCH + Duration::from_secs(1_717_243_200);
    let hint = RateLimitHint::from_headers_at(&headers, now);
    assert_eq!(hint.requests.limit, Some(50));
    assert_eq!(hint.requests.remaining, Some(49));
    assert_eq!(hint.requests.reset, Some(30 * S));
    assert_eq!(hint.tokens.limit, Some(40_000));
    assert!(hint.tokens.is_exhausted());
    assert_eq!(hint.tokens.reset, Some(60 * S));
    // By the real clock those times are long past: zero, not negative, not a panic.
    let hint = RateLimitHint::from_headers(&headers);
    assert_eq!(hint.requests.reset, Some(Duration::ZERO));
    assert_eq!(hint.tokens.reset, Some(Duration::ZERO));
}

#[tokio::test]
async fn anthropic_429_with_retry_after() {
    let e = failure(
        Reply::status(429)
            .header("retry-after", "4")
            .header("anthropic-ratelimit-tokens-remaining", "0")
            .json(r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}"#),
    )
    .await;
    assert_eq!(e.class(), ErrorClass::Status(429));
    assert_eq!(e.retry_after(), Some(4 * S));
    assert!(e.hints().tokens.is_exhausted());
}

#[tokio::test]
async fn garbage_header_values_are_ignored_with_a_debug_event() {
    let log = common::EventLog::default();
    let _guard = log.install();
    let e = failure(
        Reply::status(503)
            .header("retry-after", "-5")
            .header("retry-after-ms", b"\xff\xfe10".as_slice())
            .header("x-should-retry", "perhaps")
            .header("x-ratelimit-limit-requests", "1e9")
            .header("x-ratelimit-remaining-requests", "-1")
            .header(
                "x-ratelimit-remaining-tokens",
                "340282366920938463463374607431768211456",
            )
            .header("x-ratelimit-reset-requests", "soon")
            .header("x-ratelimit-reset-tokens", "6m-1s")
            .header("anthropic-ratelimit-requests-reset", "2024-02-30T00:00:00Z")
            .header("anthropic-ratelimit-tokens-reset", "é".as_bytes()),
    )
    .await;
    assert_eq!(e.class(), ErrorClass::Status(503));
    assert!(e.hints().is_empty(), "{:?}", e.hints());
    let ignored = log.with_message("ignored a provider header");
    let names: Vec<&str> = ignored.iter().filter_map(|e| e.field("header")).collect();
    for header in [
        "retry-after",
        "retry-after-ms",
        "x-should-retry",
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-requests",
        "x-ratelimit-reset-tokens",
        "anthropic-ratelimit-requests-reset",
        "anthropic-ratelimit-tokens-reset",
    ] {
        assert!(names.contains(&header), "no event for {header}: {names:?}");
    }
    assert!(ignored.iter().all(|e| e.level == tracing::Level::DEBUG));
}

#[tokio::test]
async fn huge_waits_are_capped_so_the_policy_can_refuse_them() {
    let e = failure(Reply::status(429).header("retry-after", "99999999999999999999999999")).await;
    assert_eq!(e.retry_after(), Some(MAX_HINTED_WAIT));
    let e =
        failure(Reply::status(429).header("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT")).await;
    assert_eq!(e.retry_after(), Some(MAX_HINTED_WAIT));
}

// ---- each provider error shape ----------------------------------------------------------

#[tokio::test]
async fn provider_error_shapes_over_http() {
    let cases: Vec<(&str, u16, String, ErrorClass)> = vec![
        (
            "openai insufficient_quota",
            429,
            openai_error(
                "insufficient_quota",
                "insufficient_quota",
                "You exceeded your current quota, please check your plan and billing details.",
            ),
            ErrorClass::Permanent,
        ),
        (
            "openai rate limit",
            429,
            openai_error("requests", "rate_limit_exceeded", "Rate limit reached"),
            ErrorClass::Status(429),
        ),
        (
            "openai context length",
            400,
            openai_error(
                "invalid_request_error",
                "context_length_exceeded",
                "This model's maximum context length is 8192 tokens.",
            ),
            ErrorClass::Permanent,
        ),
        (
            "openai content policy",
            400,
            openai_error(
                "invalid_request_error",
                "content_policy_violation",
                "Your request was rejected as a result of our safety system.",
            ),
            ErrorClass::Permanent,
        ),
        (
            "azure content filter",
            400,
            r#"{"error":{"message":"The response was filtered","type":null,"param":"prompt","code":"content_filter","status":400}}"#.to_string(),
            ErrorClass::Permanent,
        ),
        (
            "anthropic prompt too long",
            400,
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 215000 tokens > 200000 maximum"}}"#.to_string(),
            ErrorClass::Permanent,
        ),
        (
            "anthropic overloaded",
            529,
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#.to_string(),
            ErrorClass::Status(529),
        ),
        (
            "openai bad key",
            401,
            openai_error("invalid_request_error", "invalid_api_key", "Incorrect API key provided"),
            ErrorClass::Status(401),
        ),
        (
            "openai bad request",
            400,
            openai_error("invalid_request_error", "invalid_value", "Invalid value for 'temperature'"),
            ErrorClass::Status(400),
        ),
        (
            "gateway html",
            502,
            "<html><body>502 Bad Gateway</body></html>".to_string(),
            ErrorClass::Status(502),
        ),
    ];
    let server = MockServer::start(
        cases
            .iter()
            .map(|(_, status, body, _)| Reply::status(*status).json(body)),
    )
    .await;
    let http = client();
    for (name, status, body, class) in &cases {
        let response = http
            .post(server.url("/v1/chat/completions"))
            .send()
            .await
            .unwrap();
        let e = error_for_status(response).await.unwrap_err();
        assert_eq!(e.status(), *status, "{name}");
        assert_eq!(e.body(), body, "{name}");
        assert_eq!(e.class(), *class, "{name}");
        assert_eq!(provider_class(*status, body), *class, "{name}");
    }
    assert_eq!(server.hits(), cases.len());
}

#[tokio::test]
async fn a_huge_error_body_keeps_a_bounded_snippet() {
    let body = "é".repeat(512 * 1024); // 1 MiB of two-byte characters
    let e = failure(Reply::status(500).body(body)).await;
    assert!(e.is_truncated());
    assert!(e.body().len() <= BODY_SNIPPET_LIMIT);
    assert!(e.body().len() >= BODY_SNIPPET_LIMIT - 1);
    assert!(e.body().chars().all(|c| c == 'é'));
}

#[tokio::test]
async fn a_success_passes_through_error_for_status() {
    let server = MockServer::start([Reply::status(200).body("fine")]).await;
    let response = client().get(server.url("/")).send().await.unwrap();
    let response = error_for_status(response).await.unwrap();
    assert_eq!(response.text().await.unwrap(), "fine");
}

// ---- reqwest::Error ---------------------------------------------------------------------

#[tokio::test]
async fn reqwest_errors_are_classified_by_where_they_happened() {
    // A client-side timeout.
    let server = MockServer::start([Reply::status(200).delayed(5 * S)]).await;
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(50 * MS)
        .build()
        .unwrap();
    let e = http.get(server.url("/")).send().await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Timeout);

    // Nobody listening: connection refused.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let e = client()
        .get(format!("http://{closed}/"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Transport);

    // reqwest's own error_for_status: the status, without headers.
    let server = MockServer::start([Reply::status(503).header("retry-after", "1")]).await;
    let response = client().get(server.url("/")).send().await.unwrap();
    let e = response.error_for_status().unwrap_err();
    assert_eq!(e.class(), ErrorClass::Status(503));
    assert_eq!(e.retry_after(), None);

    // A bad URL is a bug, not an outage.
    let e = client().get("http://[::1").send().await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Other);
}

// ---- through #[resilient] ---------------------------------------------------------------

#[resilient(
    max = 3,
    base = "1ms",
    cap = "5ms",
    timeout = "2s",
    max_retry_after = "1s"
)]
#[retry_on(429, 500..=599, timeout, transport)]
async fn call(http: &reqwest::Client, url: &str) -> Result<String, CallError> {
    let response = http.post(url).body("{}").send().await?;
    let response = error_for_status(response).await?;
    Ok(response.text().await?)
}

#[tokio::test]
async fn a_429_with_retry_after_ms_is_retried_after_that_wait() {
    let server = MockServer::start([
        Reply::status(429).header("retry-after-ms", "30"),
        Reply::status(200).body("hello"),
    ])
    .await;
    let (out, report) = observe(call(&client(), &server.url("/v1/chat/completions"))).await;
    assert_eq!(out.unwrap(), "hello");
    assert_eq!(server.hits(), 2);
    assert_eq!(report.attempts()[0].class, Some(ErrorClass::Status(429)));
    assert_eq!(report.attempts()[0].retry_after, Some(30 * MS));
    assert!(report.attempts()[1].delay_before >= 30 * MS);
}

#[tokio::test]
async fn insufficient_quota_is_attempted_once() {
    let server = MockServer::start([
        Reply::status(429).json(&openai_error(
            "insufficient_quota",
            "insufficient_quota",
            "quota",
        )),
        Reply::status(200).body("never"),
    ])
    .await;
    let (out, report) = observe(call(&client(), &server.url("/v1/chat/completions"))).await;
    assert!(matches!(out, Err(CallError::Http(ref e)) if e.status() == 429));
    assert_eq!(server.hits(), 1);
    assert_eq!(report.stop(), Some(&StopReason::NotRetryable));
    assert_eq!(report.attempts()[0].class, Some(ErrorClass::Permanent));
}

#[tokio::test]
async fn x_should_retry_false_stops_a_503() {
    let server = MockServer::start([
        Reply::status(503).header("x-should-retry", "false"),
        Reply::status(200).body("never"),
    ])
    .await;
    let (out, report) = observe(call(&client(), &server.url("/"))).await;
    assert!(out.is_err());
    assert_eq!(server.hits(), 1);
    assert_eq!(report.stop(), Some(&StopReason::ServerSaidNoRetry));
}

#[tokio::test]
async fn a_retry_after_beyond_the_policy_stops_at_once() {
    let server = MockServer::start([Reply::status(503).header("retry-after", "3600")]).await;
    let (out, report) = observe(call(&client(), &server.url("/"))).await;
    assert!(out.is_err());
    assert_eq!(server.hits(), 1);
    assert_eq!(
        report.stop(),
        Some(&StopReason::RetryAfterTooLong {
            requested: 3600 * S,
            max: S
        })
    );
}

#[tokio::test]
async fn outages_use_up_exactly_max_attempts() {
    let server = MockServer::start([Reply::status(529)
        .json(r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#)])
    .await;
    let (out, report) = observe(call(&client(), &server.url("/"))).await;
    assert!(out.is_err());
    assert_eq!(server.hits(), 3);
    assert_eq!(report.stop(), Some(&StopReason::AttemptsExhausted));
    assert!(report
        .attempts()
        .iter()
        .all(|a| a.class == Some(ErrorClass::Status(529))));
}

#[resilient(max = 3, base = "1ms", cap = "5ms", timeout = "100ms")]
async fn call_with_short_timeout(http: &reqwest::Client, url: &str) -> Result<String, CallError> {
    let response = error_for_status(http.get(url).send().await?).await?;
    Ok(response.text().await?)
}

#[tokio::test]
async fn a_slow_answer_is_cut_and_retried_and_a_lost_connection_is_transport() {
    let server = MockServer::start([
        Reply::status(200).body("too late").delayed(10 * S),
        Reply::status(200).body("in time"),
    ])
    .await;
    let http = client();
    let started = std::time::Instant::now();
    let (out, report) = observe(call_with_short_timeout(&http, &server.url("/"))).await;
    assert_eq!(out.unwrap(), "in time");
    assert!(started.elapsed() < 5 * S);
    assert_eq!(report.attempts()[0].class, Some(ErrorClass::Timeout));

    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let (out, report) = observe(call(&http, &format!("http://{closed}/"))).await;
    assert!(matches!(out, Err(CallError::Request(_))));
    assert_eq!(report.attempts().len(), 3);
    assert_eq!(report.attempts()[0].class, Some(ErrorClass::Transport));
}

// ---- paused time: the hint is the wait, exactly ---------------------------------------------

#[resilient(max = 2, base = "1ms", cap = "1ms", max_retry_after = "30s")]
async fn hinted(failures: &std::sync::atomic::AtomicU32) -> Result<&'static str, HttpError> {
    if failures.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("7"));
        return Err(HttpError::new(429, &headers, b"slow down"));
    }
    Ok("ok")
}

#[tokio::test(start_paused = true)]
async fn a_parsed_retry_after_is_the_wait_on_paused_time() {
    let calls = std::sync::atomic::AtomicU32::new(0);
    let start = tokio::time::Instant::now();
    let (out, report) = observe(hinted(&calls)).await;
    assert_eq!(out.unwrap(), "ok");
    assert_eq!(start.elapsed(), 7 * S);
    assert_eq!(report.attempts()[1].delay_before, 7 * S);
}

// ---- no panic on any header bytes -------------------------------------------------------

const HEADERS: &[&str] = &[
    "retry-after",
    "retry-after-ms",
    "x-should-retry",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "anthropic-ratelimit-requests-limit",
    "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-tokens-limit",
    "anthropic-ratelimit-tokens-remaining",
    "anthropic-ratelimit-tokens-reset",
];

fn check_no_panic(values: &[Vec<u8>], body: &[u8]) {
    let mut headers = HeaderMap::new();
    for (name, value) in HEADERS.iter().zip(values) {
        // Bytes that HTTP cannot carry (controls) never reach a parser.
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.insert(*name, value);
        }
    }
    let hint = RateLimitHint::from_headers(&headers);
    if let Some(wait) = hint.retry_after {
        assert!(wait <= MAX_HINTED_WAIT);
    }
    for reset in [hint.requests.reset, hint.tokens.reset]
        .into_iter()
        .flatten()
    {
        assert!(reset <= MAX_HINTED_WAIT);
    }
    let e = HttpError::new(429, &headers, body);
    assert!(e.body().len() <= BODY_SNIPPET_LIMIT);
    let _ = (e.class(), e.retry_after(), e.should_retry(), e.to_string());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn random_header_bytes_never_panic(
        values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..48), HEADERS.len()),
        pattern in proptest::collection::vec(any::<u8>(), 1..64),
        body_len in 0..5000usize,
    ) {
        // Long bodies from a short random pattern: cheap to generate, and past the snippet limit.
        let body: Vec<u8> = pattern.iter().copied().cycle().take(body_len).collect();
        check_no_panic(&values, &body);
    }

    #[test]
    fn plausible_header_text_never_panics(
        values in proptest::collection::vec("[0-9.:+TZz hmsuµn,-]{0,32}", HEADERS.len()),
    ) {
        let values: Vec<Vec<u8>> = values.into_iter().map(String::into_bytes).collect();
        check_no_panic(&values, b"");
    }
}
