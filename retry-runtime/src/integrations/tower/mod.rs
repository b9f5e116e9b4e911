//! `tower`: [`ResilientLayer`], the executor as a layer. Each request through it is one call
//! under a policy, as a `#[resilient]` function's call is: classified, `Retry-After` honoured
//! up to the policy's `max_retry_after`, the breaker, retry budget, pacer and pools asked, the
//! attempt context set for each attempt, a report for [`observe`](crate::observe), metrics.
//!
//! The policy is a [`CallSite`]: a `static` (below), or one built at run time.
//!
//! ```no_run
//! # #[cfg(feature = "async-openai")] {
//! // `examples/tower_openai.rs` is the whole program, against a local mock of the API.
//! use std::time::Duration;
//! use async_openai::{config::OpenAIConfig, Client};
//! use retry_runtime::integrations::openai::SingleAttempt;
//! use retry_runtime::integrations::tower::ResilientLayer;
//! use retry_runtime::{CallSite, Policy};
//! use tower_layer::Layer;
//!
//! static POLICY: Policy = Policy::new("openai")
//!     .with_max_attempts(3)
//!     .with_base(Duration::from_millis(500))
//!     .with_max_retry_after(Duration::from_secs(20))
//!     .with_breaker("openai");
//! static SITE: CallSite = CallSite::new(&POLICY);
//!
//! let http = reqwest::Client::new();
//! let service = ResilientLayer::new(&SITE).layer(SingleAttempt::new(http.clone()));
//! let client = Client::build(http, OpenAIConfig::new()).with_http_service(service);
//! # let _ = client;
//! # }
//! ```
//!
//! # What the service takes and gives
//!
//! - **The request** is sent again on each attempt, so it must be [`Replay`]: async-openai's
//!   `HttpRequestFactory`, `http::Request<B>` with a `Clone` body, `reqwest::Request` (one
//!   attempt if its body is a stream), or a type of yours.
//! - **The answer** ([`HttpResponse`]: `http::Response<B>`, `reqwest::Response`) with a 4xx or
//!   5xx status is a failed attempt, classified by the `http` integration's rules (status,
//!   `Retry-After`, `retry-after-ms`, `x-should-retry`, and for a `reqwest::Response` the
//!   start of its body: a 429 `insufficient_quota` is never retried). When the call ends on
//!   such an answer (attempts spent, not retryable, the breaker opened), **that answer is the
//!   service's response**, as it would have been without the layer: async-openai builds its
//!   `ApiError` from it, a `reqwest` caller reads its status.
//! - **The inner service's errors** (`S::Error: Classify`) are classified as themselves, and
//!   the last one is the call's error. With `integrations::openai::SingleAttempt`
//!   underneath (feature `async-openai`), a failed answer arrives as such an error, headers
//!   kept; with async-openai's `ReqwestService`, as a failed answer.
//! - **The runtime's own verdicts** (the breaker open, a pool or the pacer refusing, an attempt
//!   cut at its `timeout` or the call's `deadline`) are errors: `S::Error: From<Rejected>`, as
//!   for a `#[resilient]` function's error type. async-openai's `OpenAIError`,
//!   `integrations::reqwest::CallError` and [`AnyError`](crate::AnyError) (for a stack whose
//!   errors are boxed) have it, with `Classify`; a refusal is returned before the inner
//!   service sees the request.
//!
//! # Spend
//!
//! A successful `reqwest::Response` whose body is JSON (up to 1 MiB) is read for its
//! `usage` (OpenAI's or Anthropic's) and priced at its `model` ([`priced`]): budgets, pools,
//! workflows and the report count it. Streams (`text/event-stream`), other bodies, and any
//! `http::Response<B>` are counted as zero; a `reqwest::Request` with a JSON chat body is
//! charged its prompt if its attempt is cut. So a `budget` or `pool` on a layer's policy
//! counts what JSON answers say they cost, and a streaming call through the layer counts
//! nothing: use `#[resilient]` with `Streamed` for streams under a spend limit.
//!
//! [`priced`]: crate::integrations::http::priced

mod drive;
mod replay;
mod response;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::classify::Classify;
use crate::executor::CallSite;
use crate::rejected::Rejected;

pub(crate) use drive::{drive, Sender};
pub use replay::Replay;
pub use response::HttpResponse;

/// A `tower` layer that makes each request through it one call at its [`CallSite`] (see the
/// [module docs](self) for what it takes and gives).
///
/// ```
/// use std::convert::Infallible;
/// use retry_runtime::integrations::tower::ResilientLayer;
/// use retry_runtime::{CallSite, Policy, Rejected};
/// use tower_layer::Layer;
///
/// static POLICY: Policy = Policy::new("echo").with_max_attempts(3);
/// static SITE: CallSite = CallSite::new(&POLICY);
///
/// // Any service of `http` requests and answers whose error can carry a `Rejected`.
/// #[derive(Clone)]
/// struct Echo;
/// impl tower_service::Service<http::Request<String>> for Echo {
///     type Response = http::Response<String>;
///     type Error = Rejected;
///     type Future = std::future::Ready<Result<http::Response<String>, Rejected>>;
///     fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Rejected>> {
///         std::task::Poll::Ready(Ok(()))
///     }
///     fn call(&mut self, request: http::Request<String>) -> Self::Future {
///         std::future::ready(Ok(http::Response::new(request.into_body())))
///     }
/// }
///
/// let service = ResilientLayer::new(&SITE).layer(Echo);
/// # let _ = service;
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ResilientLayer {
    site: &'static CallSite<'static>,
}

impl ResilientLayer {
    /// A layer whose requests are calls at `site`: its policy, and the breaker, pool and pacer
    /// the policy names.
    pub fn new(site: &'static CallSite<'static>) -> Self {
        Self { site }
    }
}

impl<S> tower_layer::Layer<S> for ResilientLayer {
    type Service = ResilientService<S>;

    fn layer(&self, inner: S) -> ResilientService<S> {
        ResilientService {
            inner,
            site: self.site,
        }
    }
}

/// The service [`ResilientLayer`] makes: each request is one call at the layer's site, whose
/// attempts go to the inner service `S`.
///
/// Readiness is the inner service's: `poll_ready` asks it, the first attempt is sent on the
/// service made ready (a clone takes its place, as `tower`'s own retry does), and each retry
/// waits for its clone to be ready again, inside the attempt's `timeout`.
#[derive(Debug, Clone)]
pub struct ResilientService<S> {
    inner: S,
    site: &'static CallSite<'static>,
}

impl<S> ResilientService<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, back.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req> tower_service::Service<Req> for ResilientService<S>
where
    Req: Replay + Send + 'static,
    S: tower_service::Service<Req> + Clone + Send + 'static,
    S::Response: HttpResponse,
    S::Error: Classify + From<Rejected> + Send + 'static,
    S::Future: Send,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        // The service just made ready goes with the call; a clone waits for the next one.
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        let site = self.site;
        Box::pin(async move {
            let mut sender = Inner {
                service,
                ready: true,
            };
            drive(site, request, &mut sender, S::Error::from).await
        })
    }
}

/// The inner service, sending one copy per attempt.
struct Inner<S> {
    service: S,
    // Whether `poll_ready` said so and no request was sent since.
    ready: bool,
}

impl<S, Req> Sender<Req> for Inner<S>
where
    Req: Send + 'static,
    S: tower_service::Service<Req> + Send,
    S::Response: HttpResponse,
    S::Error: Classify + Send,
    S::Future: Send,
{
    type Response = S::Response;
    type Error = S::Error;

    async fn send(&mut self, request: Req) -> Result<S::Response, S::Error> {
        if !std::mem::replace(&mut self.ready, false) {
            std::future::poll_fn(|cx| self.service.poll_ready(cx)).await?;
        }
        self.service.call(request).await
    }
}
