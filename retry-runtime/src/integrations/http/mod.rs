//! Providers' retry and rate-limit headers, parsed once into a [`RateLimitHint`], and the
//! [`HttpError`] that carries them with a bounded body snippet and the providers' rules.
//!
//! | header | form | becomes |
//! |---|---|---|
//! | `Retry-After` | delta-seconds (`7`), fractional seconds (`1.5`), HTTP-date | [`RateLimitHint::retry_after`] |
//! | `retry-after-ms` | milliseconds (`10`, `2.5`); wins over `Retry-After` | [`RateLimitHint::retry_after`] |
//! | `x-should-retry` | `true` / `false` | [`RateLimitHint::should_retry`] |
//! | `x-ratelimit-{limit,remaining}-{requests,tokens}` (OpenAI) | integer | [`LimitWindow::limit`], [`LimitWindow::remaining`] |
//! | `x-ratelimit-reset-{requests,tokens}` (OpenAI) | duration: `6m0s`, `1s`, `20ms`, `1h2m3.5s` | [`LimitWindow::reset`] |
//! | `anthropic-ratelimit-{requests,tokens}-{limit,remaining}` | integer | [`LimitWindow::limit`], [`LimitWindow::remaining`] |
//! | `anthropic-ratelimit-{requests,tokens}-reset` | RFC 3339 time | [`LimitWindow::reset`] (time left until then) |
//!
//! A value that cannot be read (negative, malformed, not ASCII, a count beyond `u64`) is
//! ignored with a DEBUG event (target `retry_runtime`, message `ignored a provider header`):
//! never a panic, never a guess. A time in the past is a zero wait. A wait above
//! [`MAX_HINTED_WAIT`] is capped there (DEBUG event `capped a provider wait`): the server asked
//! for a very long wait, and the policy's `max_retry_after` then stops the call rather than
//! retry against the server's wish.

mod error;
mod headers;
mod spend;
mod stream;
mod time;

use std::time::Duration;

use crate::classify::{Classify, ErrorClass, ProviderLimits};

pub use error::{HttpError, BODY_SNIPPET_LIMIT};
pub use headers::{LimitWindow, RateLimitHint, RETRY_AFTER, RETRY_AFTER_MS, X_SHOULD_RETRY};
// Only async-openai's prompt estimate prices a prompt by its length.
#[cfg(feature = "async-openai")]
pub(crate) use spend::prompt_cost;
pub use spend::{priced, request_prompt, stream_cut_bill};
pub use stream::{stream_event_class, StreamEvent, StreamEventError};
pub use time::MAX_HINTED_WAIT;

/// Why a header value could not be read.
type Malformed = &'static str;

/// Markers of an exhausted quota (OpenAI's `insufficient_quota`): the money is gone, not the
/// rate.
const QUOTA_MARKERS: &[&str] = &["insufficient_quota"];
/// Markers of a prompt over the model's context window (OpenAI, Azure, Anthropic).
const CONTEXT_MARKERS: &[&str] = &[
    "context_length_exceeded",
    "maximum context length",
    "prompt is too long",
];
/// Markers of a content-policy refusal (OpenAI's `content_policy_violation`, Azure's
/// `content_filter`).
const CONTENT_POLICY_MARKERS: &[&str] = &["content_policy", "content_filter"];

/// The providers' rules for a failed HTTP status and what its body says.
///
/// - a 429 whose body says `insufficient_quota` is [`ErrorClass::Permanent`]: the quota will
///   not come back in seconds, retrying only burns the rest of the budget of attempts;
/// - every 4xx about the context length (`context_length_exceeded`, "maximum context length",
///   Anthropic's "prompt is too long") or a content policy (`content_policy_violation`,
///   `content_filter`) is `Permanent`, a 429 included: the body says the prompt itself cannot
///   be served, and waiting does not make it fit, so the same prompt fails the same way;
/// - anything else is `Status(code)`, so 529 "overloaded" stays a retryable 5xx and a plain
///   429 a retryable rate limit.
///
/// Markers are matched case-insensitively anywhere in `body`, so they are found in OpenAI's,
/// Azure's and Anthropic's error shapes alike.
///
/// ```
/// use retry_runtime::integrations::http::provider_class;
/// use retry_runtime::ErrorClass;
///
/// let quota = r#"{"error":{"type":"insufficient_quota","code":"insufficient_quota"}}"#;
/// assert_eq!(provider_class(429, quota), ErrorClass::Permanent);
/// assert_eq!(provider_class(429, r#"{"error":{"code":"rate_limit_exceeded"}}"#), ErrorClass::Status(429));
/// assert_eq!(provider_class(400, r#"{"error":{"code":"context_length_exceeded"}}"#), ErrorClass::Permanent);
/// assert_eq!(provider_class(529, r#"{"type":"error","error":{"type":"overloaded_error"}}"#), ErrorClass::Status(529));
/// ```
pub fn provider_class(status: u16, body: &str) -> ErrorClass {
    class_from_texts(status, &[body])
}

/// [`provider_class`] over several texts (an error's code, type and message).
pub(crate) fn class_from_texts(status: u16, texts: &[&str]) -> ErrorClass {
    let says = |markers: &[&str]| {
        texts
            .iter()
            .any(|text| markers.iter().any(|m| contains_ignore_case(text, m)))
    };
    match status {
        429 if says(QUOTA_MARKERS) => ErrorClass::Permanent,
        400..=499 if says(CONTEXT_MARKERS) || says(CONTENT_POLICY_MARKERS) => ErrorClass::Permanent,
        _ => ErrorClass::Status(status),
    }
}

fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    n.is_empty() || h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
}

impl Classify for HttpError {
    fn class(&self) -> ErrorClass {
        provider_class(self.status(), self.body())
    }

    fn retry_after(&self) -> Option<Duration> {
        self.hints().retry_after
    }

    fn should_retry(&self) -> Option<bool> {
        self.hints().should_retry
    }

    fn rate_limits(&self) -> Option<ProviderLimits> {
        let limits = ProviderLimits::from(self.hints());
        (limits != ProviderLimits::default()).then_some(limits)
    }
}

/// The windows' figures, for a pacer (`Pacer::on_hint`); the hint's `retry_after` and
/// `should_retry` are the classifier's business, not the pacer's.
impl From<&RateLimitHint> for ProviderLimits {
    fn from(hint: &RateLimitHint) -> Self {
        Self {
            limit_requests: hint.requests.limit,
            remaining_requests: hint.requests.remaining,
            reset_requests: hint.requests.reset,
            limit_tokens: hint.tokens.limit,
            remaining_tokens: hint.tokens.remaining,
            reset_tokens: hint.tokens.reset,
        }
    }
}

/// What the submodules' tests share: a fixed clock and a header map from pairs.
#[cfg(test)]
mod test_util {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use http::{HeaderMap, HeaderValue};

    pub(super) const S: Duration = Duration::from_secs(1);
    // 2024-06-01T12:00:00Z
    const NOW_SECS: u64 = 1_717_243_200;

    pub(super) fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW_SECS)
    }

    pub(super) fn headers(pairs: &[(&'static str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_bytes(value).unwrap());
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::{headers, S};
    use super::*;

    #[test]
    fn provider_rules() {
        assert_eq!(
            provider_class(429, r#"{"error":{"type":"insufficient_quota"}}"#),
            ErrorClass::Permanent
        );
        assert_eq!(
            provider_class(429, "Rate limit reached"),
            ErrorClass::Status(429)
        );
        assert_eq!(
            provider_class(400, "This model's Maximum Context Length is 8192 tokens"),
            ErrorClass::Permanent
        );
        assert_eq!(
            provider_class(
                400,
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens > 200000 maximum"}}"#
            ),
            ErrorClass::Permanent
        );
        assert_eq!(
            provider_class(400, r#"{"error":{"code":"content_filter"}}"#),
            ErrorClass::Permanent
        );
        assert_eq!(
            provider_class(400, r#"{"error":{"code":"content_policy_violation"}}"#),
            ErrorClass::Permanent
        );
        assert_eq!(
            provider_class(400, r#"{"error":{"code":"invalid_api_key"}}"#),
            ErrorClass::Status(400)
        );
        // The markers mean something only with their status.
        assert_eq!(
            provider_class(500, "insufficient_quota context_length_exceeded"),
            ErrorClass::Status(500)
        );
        // A 429 about the prompt's size: no wait makes the prompt fit.
        assert_eq!(
            provider_class(429, "context_length_exceeded"),
            ErrorClass::Permanent
        );
        assert_eq!(provider_class(529, "overloaded"), ErrorClass::Status(529));
    }

    #[test]
    fn http_error_classifies_and_displays() {
        let e = HttpError::new(
            503,
            &headers(&[("x-should-retry", b"false"), ("retry-after", b"1")]),
            b"upstream down",
        );
        assert_eq!(e.class(), ErrorClass::Status(503));
        assert_eq!(e.should_retry(), Some(false));
        assert_eq!(e.retry_after(), Some(S));
        assert_eq!(e.to_string(), "HTTP 503: upstream down");
        assert_eq!(e.status(), 503);
        assert!(!e.is_truncated());
    }
}
