//! `AnyError` at a call site written the way `anyhow` code is (`?` on every error type), over
//! real HTTP on loopback: the provider's errors inside it are still classified, with their
//! `Retry-After`, and an error the library does not know is not retried.

mod mock_provider;

use std::time::Duration;

use mock_provider::{MockServer, Reply};
use retry_runtime::integrations::reqwest::error_for_status;
use retry_runtime::{observe, resilient, retry_on, AnyError, ErrorClass, StopReason};

#[resilient(max = 3, base = "10ms", timeout = "10s")]
#[retry_on(429, 500..=599, timeout, transport)]
async fn fetch(http: &reqwest::Client, url: &str) -> Result<u64, AnyError> {
    let response = error_for_status(http.get(url).send().await?).await?;
    let text = response.text().await?;
    Ok(text.trim().parse::<u64>()?)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

#[tokio::test(start_paused = true)]
async fn provider_errors_inside_any_error_are_retried_with_their_hints() {
    let server = MockServer::start([
        Reply::status(503).json(r#"{"error":{"type":"server_error"}}"#),
        Reply::status(429)
            .header("retry-after-ms", "1500")
            .json(r#"{"error":{"code":"rate_limit_exceeded"}}"#),
        Reply::status(200).body("42"),
    ])
    .await;
    let (answer, report) = observe(fetch(&http(), &server.url("/n"))).await;
    assert_eq!(answer.unwrap(), 42);
    assert_eq!(server.hits(), 3);
    let classes: Vec<_> = report.attempts().iter().map(|a| a.class).collect();
    assert_eq!(
        classes,
        [
            Some(ErrorClass::Status(503)),
            Some(ErrorClass::Status(429)),
            None
        ]
    );
    assert!(
        report.attempts()[2].delay_before >= Duration::from_millis(1500),
        "the 429's retry-after-ms reached the policy: {report}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_error_the_library_does_not_know_is_not_retried() {
    let server = MockServer::start([Reply::status(200).body("not a number")]).await;
    let (answer, report) = observe(fetch(&http(), &server.url("/n"))).await;
    let error = answer.unwrap_err();
    assert!(
        error.downcast_ref::<std::num::ParseIntError>().is_some(),
        "{error:?}"
    );
    assert_eq!(server.hits(), 1);
    assert_eq!(report.stop(), Some(&StopReason::NotRetryable), "{report}");
}
