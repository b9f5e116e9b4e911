//! reqwest: [`Classify`] for `reqwest::Error`, [`HttpError`] from a failed `reqwest::Response`,
//! [`CallError`], an error type ready for a `#[resilient]` function that calls a provider
//! over reqwest, and [`sse`], a provider's event stream from a response, for streaming calls.
//!
//! ```no_run
//! use retry_runtime::integrations::reqwest::{error_for_status, CallError};
//! use retry_runtime::{observe, resilient, retry_on};
//!
//! #[resilient(max = 4, base = "500ms", timeout = "30s", deadline = "2m")]
//! #[retry_on(429, 500..=599, timeout, transport)]
//! async fn complete(http: &reqwest::Client, body: &str) -> Result<String, CallError> {
//!     let response = http
//!         .post("https://api.openai.com/v1/chat/completions")
//!         .header("content-type", "application/json")
//!         .body(body.to_owned())
//!         .send()
//!         .await?;
//!     // A 4xx/5xx becomes an `HttpError` carrying `Retry-After`, `x-should-retry` and the
//!     // start of the body, which `Classify` reads (`insufficient_quota` is never retried).
//!     let response = error_for_status(response).await?;
//!     Ok(response.text().await?)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let (reply, report) = observe(complete(&reqwest::Client::new(), "{}")).await;
//! println!("{reply:?}\n{report}");
//! # }
//! ```

mod sse;

use std::time::Duration;

use crate::classify::{Classify, ErrorClass};
use crate::integrations::http::{HttpError, RateLimitHint, StreamEventError, BODY_SNIPPET_LIMIT};
use crate::rejected::Rejected;

pub use sse::{sse, SseEvent, SseStream};

/// Where a reqwest failure happened decides its class: a timeout is
/// [`Timeout`](ErrorClass::Timeout); a failed connection, or a connection lost while sending
/// or reading, is [`Transport`](ErrorClass::Transport) (a 200 whose body ends before its
/// `content-length` included: reqwest calls that a decode error); an error from
/// `Response::error_for_status` is [`Status`](ErrorClass::Status); a bad URL, a redirect
/// loop or a complete body that does not decode is [`Other`](ErrorClass::Other) (a bug or a
/// broken provider, not an outage: the same bytes would come again).
///
/// `reqwest::Error` keeps no headers, so an error from reqwest's own `error_for_status` cannot
/// pass on `Retry-After`: use this module's [`error_for_status`] for that.
impl Classify for reqwest::Error {
    fn class(&self) -> ErrorClass {
        if self.is_timeout() {
            ErrorClass::Timeout
        } else if self.is_connect() {
            ErrorClass::Transport
        } else if let Some(status) = self.status() {
            ErrorClass::Status(status.as_u16())
        } else if cut_while_reading(self) {
            // reqwest calls a body that ends early a "decode" error; it is the connection.
            ErrorClass::Transport
        } else if self.is_builder() || self.is_redirect() || self.is_decode() {
            ErrorClass::Other
        } else if self.is_request() || self.is_body() {
            ErrorClass::Transport
        } else {
            ErrorClass::Other
        }
    }
}

/// Whether the connection ended (or broke) while the response was being read: somewhere in
/// the error's sources, an I/O error of that kind (hyper reports a body shorter than its
/// `content-length` as `UnexpectedEof`).
fn cut_while_reading(error: &reqwest::Error) -> bool {
    use std::io::ErrorKind;
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                ErrorKind::UnexpectedEof
                    | ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::BrokenPipe
            ) {
                return true;
            }
        }
        source = cause.source();
    }
    false
}

impl HttpError {
    /// Read a non-success `response` into an `HttpError`: its status, the hints in its headers
    /// and at most [`BODY_SNIPPET_LIMIT`] bytes of its body (the rest is never read, so a huge
    /// error page costs no memory). A body cut short by the connection keeps what arrived.
    pub async fn from_response(mut response: reqwest::Response) -> HttpError {
        let status = response.status().as_u16();
        let hints = RateLimitHint::from_headers(response.headers());
        let mut body = Vec::new();
        // One byte past the limit tells the snippet it was truncated.
        while body.len() <= BODY_SNIPPET_LIMIT {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = BODY_SNIPPET_LIMIT + 1 - body.len();
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Ok(None) => break,
                Err(error) => {
                    tracing::debug!(target: "retry_runtime", status, %error, "error body cut short");
                    break;
                }
            }
        }
        HttpError::with_hints(status, hints, &body)
    }
}

/// `Ok(response)` for a success (1xx-3xx), else the [`HttpError`] it carries: like reqwest's
/// `error_for_status`, but keeping `Retry-After`, `x-should-retry` and the start of the body
/// that the providers' rules need.
pub async fn error_for_status(response: reqwest::Response) -> Result<reqwest::Response, HttpError> {
    let status = response.status();
    if status.is_client_error() || status.is_server_error() {
        Err(HttpError::from_response(response).await)
    } else {
        Ok(response)
    }
}

/// Why an LLM call over reqwest failed: the provider's answer, reqwest itself, or the runtime.
///
/// Implements [`Classify`] (by delegation) and `From` each part, so `?` works on
/// `send().await`, on [`error_for_status`] and inside a `#[resilient]` policy with `timeout`,
/// `deadline`, `breaker` or `pool`.
///
/// ```
/// use retry_runtime::integrations::reqwest::CallError;
/// use retry_runtime::{Classify, ErrorClass, Rejected};
/// use std::time::Duration;
///
/// let cut: CallError = Rejected::AttemptTimedOut { timeout: Duration::from_secs(5) }.into();
/// assert_eq!(cut.class(), ErrorClass::Timeout);
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The provider answered with a non-success status.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// reqwest failed: connect, timeout, body, decode.
    #[error(transparent)]
    Request(#[from] reqwest::Error),
    /// The provider's event stream reported an error, or ended before its last event
    /// ([`sse`]).
    #[error(transparent)]
    Stream(#[from] StreamEventError),
    /// The runtime cut or refused the attempt.
    #[error(transparent)]
    Rejected(#[from] Rejected),
}

impl Classify for CallError {
    fn class(&self) -> ErrorClass {
        match self {
            CallError::Http(e) => e.class(),
            CallError::Request(e) => e.class(),
            CallError::Stream(e) => e.class(),
            CallError::Rejected(e) => e.class(),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            CallError::Http(e) => e.retry_after(),
            _ => None,
        }
    }

    fn should_retry(&self) -> Option<bool> {
        match self {
            CallError::Http(e) => e.should_retry(),
            _ => None,
        }
    }

    fn rate_limits(&self) -> Option<crate::classify::ProviderLimits> {
        match self {
            CallError::Http(e) => e.rate_limits(),
            _ => None,
        }
    }
}
