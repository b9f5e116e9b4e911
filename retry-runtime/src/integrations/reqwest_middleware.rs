//! `reqwest-middleware`: [`ResilientMiddleware`], the executor as a middleware of a
//! `ClientWithMiddleware`. Each request through it is one call under a policy, as through
//! the `tower` layer ([`integrations::tower`](crate::integrations::tower), whose rules it
//! shares): 4xx/5xx answers classified by status, headers and the start of the body,
//! `Retry-After` honoured up to the policy's `max_retry_after`, the breaker, retry budget,
//! pacer and pools asked, a report for [`observe`](crate::observe), metrics.
//!
//! ```no_run
//! use std::time::Duration;
//! use reqwest_middleware::ClientBuilder;
//! use retry_runtime::integrations::reqwest_middleware::ResilientMiddleware;
//! use retry_runtime::{CallSite, Policy};
//!
//! static POLICY: Policy = Policy::new("provider")
//!     .with_max_attempts(3)
//!     .with_base(Duration::from_millis(500))
//!     .with_max_retry_after(Duration::from_secs(20));
//! static SITE: CallSite = CallSite::new(&POLICY);
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), reqwest_middleware::Error> {
//! let client = ClientBuilder::new(reqwest::Client::new())
//!     .with(ResilientMiddleware::new(&SITE))
//!     .build();
//! let answer = client.get("http://127.0.0.1:8080/v1/models").send().await?;
//! println!("{}", answer.status()); // the last answer, 429 included, once the policy stops
//! # Ok(()) }
//! ```
//!
//! - **Each attempt sends a copy** of the request (`Request::try_clone`) to the rest of the
//!   chain, which runs once per attempt (place the middleware first to have it around
//!   everything else). A request whose body is a stream cannot be copied: it gets **one
//!   attempt**, under the breaker and the pacer like any other; if it fails, the call stops
//!   with [`StopReason::AttemptsExhausted`](crate::StopReason::AttemptsExhausted). A POST is
//!   sent with the call's `Idempotency-Key` header (the same on each attempt) unless it has
//!   one.
//! - **The answer**: when the call ends on a 4xx/5xx answer, that answer is returned as
//!   `Ok(response)`, as without the middleware (`error_for_status` still works on it).
//!   A failure below (`reqwest_middleware::Error`) is classified by its [`Classify`] impl here
//!   and the last one is returned.
//! - **The runtime's own verdicts** (the breaker open, a pool or the pacer refusing, a cut
//!   attempt) are `reqwest_middleware::Error::Middleware` holding a [`Rejected`]: see
//!   [`rejected`]. A refusal is returned before anything is sent.
//! - **Spend**, as through the layer: a JSON success's `usage` is priced and counted, a JSON
//!   chat request is charged its prompt when its attempt is cut; streams count as zero.
//!
//! `reqwest-retry`'s `RetryTransientMiddleware` decides its waits from its own backoff alone
//! (its policy sees the number of retries, not the answer), so a `Retry-After` is not
//! honoured; here the server's wait is the floor of the next delay, and a wait beyond
//! `max_retry_after` stops the call rather than retry early (`tests/reqwest_middleware.rs`
//! measures both against one server).

use std::time::Duration;

use http::Extensions;
use reqwest_middleware::{Middleware, Next};

use crate::classify::{Classify, ErrorClass, ProviderLimits};
use crate::executor::CallSite;
use crate::integrations::http::HttpError;
use crate::integrations::tower::{drive, Sender};
use crate::rejected::Rejected;

/// A `reqwest-middleware` middleware that makes each request one call at its [`CallSite`]
/// (see the [module docs](self)).
///
/// ```
/// use reqwest_middleware::ClientBuilder;
/// use retry_runtime::integrations::reqwest_middleware::ResilientMiddleware;
/// use retry_runtime::{CallSite, Policy};
///
/// static POLICY: Policy = Policy::new("provider").with_max_attempts(3);
/// static SITE: CallSite = CallSite::new(&POLICY);
///
/// let client = ClientBuilder::new(reqwest::Client::new())
///     .with(ResilientMiddleware::new(&SITE))
///     .build();
/// # let _ = client;
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ResilientMiddleware {
    site: &'static CallSite<'static>,
}

impl ResilientMiddleware {
    /// A middleware whose requests are calls at `site`: its policy, and the breaker, pool and
    /// pacer the policy names.
    pub fn new(site: &'static CallSite<'static>) -> Self {
        Self { site }
    }
}

#[async_trait::async_trait]
impl Middleware for ResilientMiddleware {
    async fn handle(
        &self,
        request: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let mut rest = Rest { next, extensions };
        drive(
            self.site,
            request,
            &mut rest,
            reqwest_middleware::Error::middleware,
        )
        .await
    }
}

/// The rest of the chain, run once per attempt.
struct Rest<'a> {
    next: Next<'a>,
    extensions: &'a mut Extensions,
}

impl Sender<reqwest::Request> for Rest<'_> {
    type Response = reqwest::Response;
    type Error = reqwest_middleware::Error;

    fn send(
        &mut self,
        request: reqwest::Request,
    ) -> impl std::future::Future<Output = reqwest_middleware::Result<reqwest::Response>> + Send + '_
    {
        self.next.clone().run(request, self.extensions)
    }
}

/// The runtime's refusal or cut inside an error from [`ResilientMiddleware`], if it is one.
///
/// ```
/// use std::time::Duration;
/// use retry_runtime::integrations::reqwest_middleware::rejected;
/// use retry_runtime::Rejected;
///
/// let cut = Rejected::AttemptTimedOut { timeout: Duration::from_secs(5) };
/// let error = reqwest_middleware::Error::middleware(cut.clone());
/// assert_eq!(rejected(&error), Some(&cut));
/// ```
pub fn rejected(error: &reqwest_middleware::Error) -> Option<&Rejected> {
    match error {
        reqwest_middleware::Error::Middleware(inner) => inner.downcast_ref::<Rejected>(),
        reqwest_middleware::Error::Reqwest(_) => None,
    }
}

/// reqwest's own failures as [`reqwest::Error`](crate::integrations::reqwest)'s class; a
/// middleware's failure by what it holds: a [`Rejected`], an [`HttpError`] (with its
/// `Retry-After` and `x-should-retry`), a `reqwest::Error`, else
/// [`Other`](ErrorClass::Other) (not retried: an unknown middleware failure is not known to
/// be transient).
impl Classify for reqwest_middleware::Error {
    fn class(&self) -> ErrorClass {
        match self {
            reqwest_middleware::Error::Reqwest(error) => error.class(),
            reqwest_middleware::Error::Middleware(inner) => {
                if let Some(rejected) = inner.downcast_ref::<Rejected>() {
                    rejected.class()
                } else if let Some(error) = inner.downcast_ref::<HttpError>() {
                    error.class()
                } else if let Some(error) = inner.downcast_ref::<reqwest::Error>() {
                    error.class()
                } else {
                    ErrorClass::Other
                }
            }
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        http_error(self).and_then(HttpError::retry_after)
    }

    fn should_retry(&self) -> Option<bool> {
        http_error(self).and_then(HttpError::should_retry)
    }

    fn rate_limits(&self) -> Option<ProviderLimits> {
        http_error(self).and_then(HttpError::rate_limits)
    }
}

fn http_error(error: &reqwest_middleware::Error) -> Option<&HttpError> {
    match error {
        reqwest_middleware::Error::Middleware(inner) => inner.downcast_ref::<HttpError>(),
        reqwest_middleware::Error::Reqwest(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_by_what_they_hold() {
        let cut = Rejected::DeadlineExceeded {
            deadline: Duration::from_secs(1),
        };
        assert_eq!(
            reqwest_middleware::Error::middleware(cut).class(),
            ErrorClass::Timeout
        );
        let mut headers = http::HeaderMap::new();
        headers.insert("retry-after", http::HeaderValue::from_static("3"));
        let busy = reqwest_middleware::Error::middleware(HttpError::new(503, &headers, b""));
        assert_eq!(busy.class(), ErrorClass::Status(503));
        assert_eq!(busy.retry_after(), Some(Duration::from_secs(3)));
        assert!(rejected(&busy).is_none());
        let unknown = reqwest_middleware::Error::middleware(std::io::Error::other("x"));
        assert_eq!(unknown.class(), ErrorClass::Other);
    }
}
