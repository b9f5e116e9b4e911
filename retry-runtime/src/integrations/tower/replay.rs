//! [`Replay`]: a request the layer can send again, one copy per attempt.

use crate::context::AttemptContext;

/// The header a POST is sent with under the layer, the same on every attempt of a call: the
/// `Idempotency-Key` that `integrations::openai::SingleAttempt` sends too.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// A request the layer can send again: each attempt sends a copy ([`replay`](Replay::replay))
/// and keeps the original for the next one.
///
/// A request that cannot be copied (a `reqwest::Request` with a streaming body) gets one
/// attempt: it is sent itself, and if it fails the call stops with
/// [`StopReason::AttemptsExhausted`](crate::StopReason::AttemptsExhausted), still under the
/// breaker, the pacer and the report.
///
/// | request | a copy | before each attempt ([`prepare`](Replay::prepare)) |
/// |---|---|---|
/// | `http::Request<B>`, `B: Clone` | method, URI, version, headers, extensions and body | a POST gets the call's `Idempotency-Key` header, unless it has one |
/// | `reqwest::Request` (feature `reqwest`) | `try_clone`: `None` for a streaming body | the same header; a JSON body with `model` and `messages` is billed as its prompt if the attempt is cut ([`request_prompt`](crate::integrations::http::request_prompt)) |
/// | async-openai's `HttpRequestFactory` (feature `async-openai`) | a clone (it rebuilds the request each time) | nothing: `integrations::openai::SingleAttempt` adds the header and the bill |
///
/// Implement it for a request type of your own:
///
/// ```
/// use retry_runtime::integrations::tower::Replay;
///
/// #[derive(Clone)]
/// struct Prompt(String);
///
/// impl Replay for Prompt {
///     fn replay(&self) -> Option<Self> {
///         Some(self.clone())
///     }
/// }
/// ```
pub trait Replay: Sized {
    /// Another copy of this request, for an attempt; `None` if it cannot be copied.
    fn replay(&self) -> Option<Self>;

    /// Called inside each attempt, right before the request is sent, with the attempt's
    /// context (its number, the call's idempotency key). Does nothing unless overridden.
    fn prepare(&mut self, attempt: &AttemptContext) {
        let _ = attempt;
    }
}

impl<B: Clone> Replay for http::Request<B> {
    fn replay(&self) -> Option<Self> {
        let mut copy = http::Request::new(self.body().clone());
        *copy.method_mut() = self.method().clone();
        *copy.uri_mut() = self.uri().clone();
        *copy.version_mut() = self.version();
        *copy.headers_mut() = self.headers().clone();
        *copy.extensions_mut() = self.extensions().clone();
        Some(copy)
    }

    fn prepare(&mut self, attempt: &AttemptContext) {
        let post = self.method() == http::Method::POST;
        mark(post, self.headers_mut(), attempt);
    }
}

#[cfg(feature = "reqwest")]
impl Replay for reqwest::Request {
    fn replay(&self) -> Option<Self> {
        self.try_clone()
    }

    fn prepare(&mut self, attempt: &AttemptContext) {
        let post = self.method() == reqwest::Method::POST;
        mark(post, self.headers_mut(), attempt);
        // Sent from here on: a cut attempt pays the prompt the provider has started on.
        if let Some(bill) = self
            .body()
            .and_then(|body| body.as_bytes())
            .and_then(crate::integrations::http::request_prompt)
        {
            crate::spend::bill_on_cut(bill);
        }
    }
}

#[cfg(feature = "async-openai")]
impl Replay for async_openai::middleware::HttpRequestFactory {
    fn replay(&self) -> Option<Self> {
        // The factory is an `Arc` around the request's inputs: it builds a fresh request for
        // each attempt, which is how async-openai's own retry layer replays it.
        Some(self.clone())
    }
}

/// One key for every attempt of the call: a POST the server already served is not served again
/// when its answer was lost on the way back.
fn mark(post: bool, headers: &mut http::HeaderMap, attempt: &AttemptContext) {
    if post && !headers.contains_key(IDEMPOTENCY_KEY) {
        if let Ok(value) = http::HeaderValue::from_str(&attempt.idempotency_key().to_string()) {
            headers.insert(IDEMPOTENCY_KEY, value);
        }
    }
}
