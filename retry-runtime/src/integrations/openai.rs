//! async-openai: [`Classify`] for `OpenAIError` with the providers' rules, `From<Rejected>`
//! for it, and a client whose calls make exactly one HTTP request each.
//!
//! # Turn off async-openai's own retries
//!
//! Every client built with `Client::new`, `Client::with_config`, `Client::build` or
//! `with_http_client` (async-openai 0.43) sends its requests through `OpenAIRetryLayer::default()`:
//! up to 3 retries of 429s, 5xx and connect errors, waiting `Retry-After` (whole seconds) or
//! 100 ms × 2ⁿ up to 8 s. Under `#[resilient(max = 3)]` that is up to 3 × 4 = 12 requests,
//! with waits our policy, deadline and budget never see. Replace the HTTP service with one that
//! does not retry, either of:
//!
//! - [`single_attempt_client`]`(config, http)`: one request per call, and a failed answer keeps
//!   its headers (as an [`HttpError`] in `OpenAIError::Boxed`), so `Retry-After`,
//!   `retry-after-ms` and `x-should-retry` reach the policy;
//! - async-openai alone (feature `middleware`):
//!   `Client::build(http.clone(), config).with_http_service(async_openai::middleware::ReqwestService::new(http))`.
//!   One request per call too, but async-openai's `ApiError` drops the headers, so the policy
//!   sees the status and the error body only.
//!
//! ```no_run
//! // `examples/openai_compatible.rs` is the whole program, against a local mock of the API.
//! use async_openai::{config::OpenAIConfig, error::OpenAIError, Client};
//! use async_openai::types::chat::{CreateChatCompletionRequest, CreateChatCompletionResponse};
//! use retry_runtime::integrations::openai::single_attempt_client;
//! use retry_runtime::{observe, resilient, retry_on};
//!
//! #[resilient(max = 3, base = "500ms", timeout = "60s", max_retry_after = "20s")]
//! #[retry_on(429, 500..=599, timeout, transport)]
//! async fn complete(
//!     client: &Client<OpenAIConfig>,
//!     request: &CreateChatCompletionRequest,
//! ) -> Result<CreateChatCompletionResponse, OpenAIError> {
//!     client.chat().create(request.clone()).await
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! # let request = CreateChatCompletionRequest::default();
//! let client = single_attempt_client(OpenAIConfig::new(), reqwest::Client::new());
//! let (reply, report) = observe(complete(&client, &request)).await;
//! # let _ = (reply, report);
//! # }
//! ```
//!
//! # Classification
//!
//! | `OpenAIError` | class |
//! |---|---|
//! | `ApiError` (status, code, type, message) | [`provider_class`](crate::integrations::http::provider_class) rules: 429 `insufficient_quota`, context-length and content-policy 4xx are `Permanent`; otherwise `Status(code)` |
//! | `Boxed(HttpError)` (from [`single_attempt_client`]) | the same rules, plus `Retry-After` and `x-should-retry` |
//! | `Boxed(Rejected)` (the runtime cut or refused the attempt) | [`Rejected::class`](Classify::class) |
//! | `Reqwest(e)` | as [`reqwest::Error`](crate::integrations::reqwest) |
//! | `InvalidArgument` | `Permanent` (a bug in the request: the same call fails the same way) |
//! | anything else (undecodable body, stream, file errors) | `Other` |

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_openai::config::Config;
use async_openai::error::{ApiError, OpenAIError, WrappedError};
use async_openai::middleware::HttpRequestFactory;
use async_openai::Client;

use async_openai::types::chat::{
    CompletionUsage, CreateChatCompletionRequest, CreateChatCompletionResponse,
    CreateChatCompletionStreamResponse,
};

use crate::classify::{Classify, ErrorClass};
use crate::integrations::http::{
    class_from_texts, priced, prompt_cost, request_prompt, stream_event_class, HttpError,
};
use crate::integrations::reqwest::error_for_status;
use crate::rejected::Rejected;
use crate::spend::{Metered, Spend, Usage};

/// An async-openai client whose calls make exactly one HTTP request each (no retry layer), and
/// whose failed answers keep their headers as an [`HttpError`] inside `OpenAIError::Boxed`.
///
/// `http` carries the transport settings (TLS backend, proxies, client-side timeouts).
///
/// ```
/// use async_openai::config::OpenAIConfig;
/// use retry_runtime::integrations::openai::single_attempt_client;
///
/// let config = OpenAIConfig::new()
///     .with_api_base("http://127.0.0.1:8080/v1")
///     .with_api_key("sk-test");
/// let client = single_attempt_client(config, reqwest::Client::new());
/// # let _ = client;
/// ```
pub fn single_attempt_client<C: Config>(config: C, http: reqwest::Client) -> Client<C> {
    Client::build(http.clone(), config).with_http_service(SingleAttempt::new(http))
}

/// The HTTP service behind [`single_attempt_client`]: a `tower` service that sends each
/// request once and turns a 4xx/5xx answer into `OpenAIError::Boxed(HttpError)`.
///
/// Each POST it sends under a `#[resilient]` call carries an `Idempotency-Key` header, the
/// same on every attempt of the call ([`current_attempt`](crate::current_attempt)), unless
/// the request already has one.
///
/// Install it yourself with `Client::with_http_service`, e.g. under other `tower` layers
/// (concurrency limits, tracing); just not under a retry layer.
#[derive(Debug, Clone)]
pub struct SingleAttempt {
    http: reqwest::Client,
}

impl SingleAttempt {
    /// A service sending through `http`.
    pub fn new(http: reqwest::Client) -> Self {
        Self { http }
    }
}

/// The header [`SingleAttempt`] names a call with.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

impl tower_service::Service<HttpRequestFactory> for SingleAttempt {
    type Response = reqwest::Response;
    type Error = OpenAIError;
    type Future =
        Pin<Box<dyn Future<Output = Result<reqwest::Response, OpenAIError>> + Send + 'static>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), OpenAIError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: HttpRequestFactory) -> Self::Future {
        let http = self.http.clone();
        Box::pin(async move {
            let mut request = request.build().await?;
            // One key for every attempt of the call: a POST the server already served is not
            // served again when the answer was lost on the way back.
            if let Some(attempt) = crate::context::current_attempt() {
                if request.method() == reqwest::Method::POST
                    && !request.headers().contains_key(IDEMPOTENCY_KEY)
                {
                    if let Ok(value) =
                        http::HeaderValue::from_str(&attempt.idempotency_key().to_string())
                    {
                        request.headers_mut().insert(IDEMPOTENCY_KEY, value);
                    }
                }
            }
            // Sent from here on: a cut attempt pays the prompt, with no glue in the body.
            if let Some(bill) = request
                .body()
                .and_then(|b| b.as_bytes())
                .and_then(request_prompt)
            {
                crate::spend::bill_on_cut(bill);
            }
            let response = http.execute(request).await.map_err(OpenAIError::Reqwest)?;
            error_for_status(response)
                .await
                .map_err(|error| OpenAIError::Boxed(Box::new(error)))
        })
    }
}

/// The runtime's own errors travel as `OpenAIError::Boxed(Rejected)`, so a `#[resilient]`
/// function can return `Result<_, OpenAIError>` under a policy with `timeout`, `deadline`,
/// `breaker` or `pool`.
///
/// ```
/// use std::time::Duration;
/// use async_openai::error::OpenAIError;
/// use retry_runtime::{Classify, ErrorClass, Rejected};
///
/// let error = OpenAIError::from(Rejected::AttemptTimedOut { timeout: Duration::from_secs(30) });
/// assert_eq!(error.class(), ErrorClass::Timeout);
/// ```
impl From<Rejected> for OpenAIError {
    fn from(rejected: Rejected) -> Self {
        OpenAIError::Boxed(Box::new(rejected))
    }
}

/// The providers' rules over async-openai's errors; see the [module docs](self) for the table.
impl Classify for OpenAIError {
    fn class(&self) -> ErrorClass {
        match self {
            OpenAIError::ApiError(response) => {
                let e = &response.api_error;
                class_from_texts(
                    response.status_code.as_u16(),
                    &[
                        e.code.as_deref().unwrap_or_default(),
                        e.r#type.as_deref().unwrap_or_default(),
                        &e.message,
                    ],
                )
            }
            OpenAIError::Reqwest(e) => e.class(),
            OpenAIError::Boxed(inner) => {
                if let Some(e) = inner.downcast_ref::<HttpError>() {
                    e.class()
                } else if let Some(e) = inner.downcast_ref::<Rejected>() {
                    e.class()
                } else if let Some(e) = inner.downcast_ref::<reqwest::Error>() {
                    e.class()
                } else {
                    ErrorClass::Other
                }
            }
            OpenAIError::InvalidArgument(_) => ErrorClass::Permanent,
            // Mid-stream: the event stream broke (a cut connection, a truncated body).
            OpenAIError::StreamError(e) => match &**e {
                async_openai::error::StreamError::EventStream(_) => ErrorClass::Transport,
                _ => ErrorClass::Other,
            },
            // Mid-stream: an event that is not a chunk, such as the provider's error object.
            OpenAIError::JSONDeserialize(_, content) => {
                stream_event_class("message", content).unwrap_or(ErrorClass::Other)
            }
            _ => ErrorClass::Other,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        http_error(self).and_then(|e| e.retry_after())
    }

    fn should_retry(&self) -> Option<bool> {
        http_error(self).and_then(|e| e.should_retry())
    }

    fn rate_limits(&self) -> Option<crate::classify::ProviderLimits> {
        http_error(self).and_then(|e| e.rate_limits())
    }
}

/// What a streamed chunk cost: its `usage`, priced at its model's price (OpenAI sends it in a
/// final chunk when the request asks for `stream_options: {"include_usage": true}`), zero for
/// the chunks before it. For [`Streamed::with_spend`](crate::Streamed::with_spend).
pub fn chunk_spend(chunk: &CreateChatCompletionStreamResponse) -> Spend {
    match &chunk.usage {
        Some(usage) => priced(&chunk.model, Usage::from(usage)),
        None => Spend::ZERO,
    }
}

/// What a streamed `request` is charged if its stream is cut before its usage chunk: the
/// prompt's estimate ([`prompt_estimate`]) and one output token per chunk received, at its
/// model's price. For [`Streamed::bill_if_cut`](crate::Streamed::bill_if_cut).
pub fn stream_cut_bill(request: &CreateChatCompletionRequest) -> (Spend, Spend) {
    (
        prompt_estimate(request),
        priced(
            &request.model,
            Usage {
                input: 0,
                output: 1,
            },
        ),
    )
}

/// The [`HttpError`] inside an error from a [`single_attempt_client`], with the status, the
/// header hints and the start of the body.
pub fn http_error(error: &OpenAIError) -> Option<&HttpError> {
    match error {
        OpenAIError::Boxed(inner) => inner.downcast_ref::<HttpError>(),
        _ => None,
    }
}

/// The provider's error object (`{"error": {"message", "type", "param", "code"}}`), from
/// either kind of client: async-openai's `ApiError`, or parsed from an [`HttpError`]'s body
/// snippet (`None` if that is not OpenAI's shape, or was cut at the snippet's limit).
///
/// ```
/// use async_openai::error::OpenAIError;
/// use http::HeaderMap;
/// use retry_runtime::integrations::http::HttpError;
/// use retry_runtime::integrations::openai::api_error;
///
/// let body = br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
/// let error = OpenAIError::Boxed(Box::new(HttpError::new(429, &HeaderMap::new(), body)));
/// assert_eq!(api_error(&error).unwrap().code.as_deref(), Some("insufficient_quota"));
/// ```
pub fn api_error(error: &OpenAIError) -> Option<ApiError> {
    match error {
        OpenAIError::ApiError(response) => Some(response.api_error.clone()),
        _ => {
            let body = http_error(error)?.body();
            serde_json::from_str::<WrappedError>(body)
                .ok()
                .map(|wrapped| wrapped.error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_openai::error::ApiErrorResponse;

    fn api(status: u16, code: Option<&str>, kind: Option<&str>, message: &str) -> OpenAIError {
        OpenAIError::ApiError(ApiErrorResponse {
            status_code: reqwest::StatusCode::from_u16(status).unwrap(),
            api_error: ApiError {
                message: message.to_string(),
                r#type: kind.map(str::to_string),
                param: None,
                code: code.map(str::to_string),
                misalignment: None,
            },
        })
    }

    #[test]
    fn api_errors_follow_the_provider_rules() {
        let quota = api(
            429,
            Some("insufficient_quota"),
            Some("insufficient_quota"),
            "You exceeded your current quota",
        );
        assert_eq!(quota.class(), ErrorClass::Permanent);
        let rate = api(
            429,
            Some("rate_limit_exceeded"),
            Some("requests"),
            "Rate limit reached",
        );
        assert_eq!(rate.class(), ErrorClass::Status(429));
        let context = api(
            400,
            Some("context_length_exceeded"),
            Some("invalid_request_error"),
            "too long",
        );
        assert_eq!(context.class(), ErrorClass::Permanent);
        let policy = api(
            400,
            Some("content_policy_violation"),
            None,
            "rejected by the safety system",
        );
        assert_eq!(policy.class(), ErrorClass::Permanent);
        let bad_key = api(401, Some("invalid_api_key"), None, "Incorrect API key");
        assert_eq!(bad_key.class(), ErrorClass::Status(401));
        assert_eq!(
            api(529, None, None, "overloaded").class(),
            ErrorClass::Status(529)
        );
        assert_eq!(api(503, None, None, "").retry_after(), None);
    }

    #[test]
    fn boxed_and_local_errors() {
        let boxed = OpenAIError::Boxed(Box::new(std::io::Error::other("x")));
        assert_eq!(boxed.class(), ErrorClass::Other);
        assert_eq!(
            OpenAIError::InvalidArgument("no model".into()).class(),
            ErrorClass::Permanent
        );
        let cut = OpenAIError::from(Rejected::DeadlineExceeded {
            deadline: Duration::from_secs(1),
        });
        assert_eq!(cut.class(), ErrorClass::Timeout);
        assert!(http_error(&cut).is_none());
        assert!(api_error(&cut).is_none());
    }
}

// ---- spend ----

impl From<&CompletionUsage> for Usage {
    fn from(usage: &CompletionUsage) -> Self {
        Usage {
            input: u64::from(usage.prompt_tokens),
            output: u64::from(usage.completion_tokens),
        }
    }
}

/// A chat completion that says what it cost, so that `budget`, `pool` and workflows count it
/// with no glue: [`Metered`] from the answer's `usage`, priced at the configured price of its
/// model ([`Config::with_price`](crate::config::Config::with_price), or `[price."MODEL"]` in
/// the TOML; the longest configured prefix of the model id wins). A model with no price is
/// counted in tokens only, and a WARN event says so once per model.
///
/// Through [`single_attempt_client`], an attempt the runtime cuts (`timeout`, `deadline`) is
/// charged its prompt ([`prompt_estimate`] of the request it sent) with nothing in the body;
/// with another client, call [`bill_on_cut`](crate::spend::bill_on_cut) yourself.
///
/// ```no_run
/// use async_openai::{config::OpenAIConfig, error::OpenAIError, Client};
/// use async_openai::types::chat::CreateChatCompletionRequest;
/// use retry_runtime::integrations::openai::Completion;
/// use retry_runtime::resilient;
///
/// #[resilient(max = 3, timeout = "60s", budget = "0.10usd", pool = "openai-hourly")]
/// async fn complete(
///     client: &Client<OpenAIConfig>,
///     request: &CreateChatCompletionRequest,
/// ) -> Result<Completion, OpenAIError> {
///     client.chat().create(request.clone()).await.map(Completion)
/// }
/// ```
#[derive(Debug, Clone)]
pub struct Completion(pub CreateChatCompletionResponse);

impl std::ops::Deref for Completion {
    type Target = CreateChatCompletionResponse;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Metered for Completion {
    fn spend(&self) -> Spend {
        let usage = self.0.usage.as_ref().map(Usage::from).unwrap_or_default();
        priced(&self.0.model, usage)
    }
}

/// What `request`'s prompt is expected to cost: its messages' JSON length over four (about a
/// token per four characters of English; the JSON's quotes and keys make it an over-estimate,
/// never an under-estimate for plain text), priced at its model's input price. For
/// [`bill_on_cut`](crate::spend::bill_on_cut): a provider bills the prompt of a request it started
/// on. Where a tokenizer is at hand, pass `bill_on_cut` its count instead.
pub fn prompt_estimate(request: &CreateChatCompletionRequest) -> Spend {
    let chars = serde_json::to_string(&request.messages).map_or(0, |json| json.len());
    prompt_cost(&request.model, chars)
}
