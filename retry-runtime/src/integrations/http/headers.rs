//! Reading the providers' retry and rate-limit headers into a [`RateLimitHint`]: which
//! header holds what, and what an unreadable value becomes (nothing, with a DEBUG event).

use std::time::{Duration, SystemTime};

use http::HeaderMap;

use super::time::{parse_decimal, parse_reset, parse_retry_after};
use super::Malformed;

/// `Retry-After` (RFC 9110): seconds, or an HTTP-date.
pub const RETRY_AFTER: &str = "retry-after";
/// `retry-after-ms`: milliseconds, sent by OpenAI and Azure OpenAI.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";
/// `x-should-retry`: the server's own verdict, `true` or `false` (OpenAI, Anthropic).
pub const X_SHOULD_RETRY: &str = "x-should-retry";

/// Where one provider keeps one window's figures: limit, remaining, reset.
struct WindowHeaders {
    limit: &'static str,
    remaining: &'static str,
    reset: &'static str,
}

const OPENAI_REQUESTS: WindowHeaders = WindowHeaders {
    limit: "x-ratelimit-limit-requests",
    remaining: "x-ratelimit-remaining-requests",
    reset: "x-ratelimit-reset-requests",
};
const OPENAI_TOKENS: WindowHeaders = WindowHeaders {
    limit: "x-ratelimit-limit-tokens",
    remaining: "x-ratelimit-remaining-tokens",
    reset: "x-ratelimit-reset-tokens",
};
const ANTHROPIC_REQUESTS: WindowHeaders = WindowHeaders {
    limit: "anthropic-ratelimit-requests-limit",
    remaining: "anthropic-ratelimit-requests-remaining",
    reset: "anthropic-ratelimit-requests-reset",
};
const ANTHROPIC_TOKENS: WindowHeaders = WindowHeaders {
    limit: "anthropic-ratelimit-tokens-limit",
    remaining: "anthropic-ratelimit-tokens-remaining",
    reset: "anthropic-ratelimit-tokens-reset",
};

/// What a provider's headers say about retrying and about its rate limits, from a failure or
/// a success alike (pacing learns from both).
///
/// ```
/// use std::time::Duration;
/// use http::{HeaderMap, HeaderValue};
/// use retry_runtime::integrations::http::RateLimitHint;
///
/// let mut headers = HeaderMap::new();
/// headers.insert("retry-after-ms", HeaderValue::from_static("250"));
/// headers.insert("x-ratelimit-remaining-requests", HeaderValue::from_static("0"));
/// headers.insert("x-ratelimit-reset-requests", HeaderValue::from_static("6m0s"));
/// headers.insert("x-ratelimit-reset-tokens", HeaderValue::from_static("not a duration"));
///
/// let hint = RateLimitHint::from_headers(&headers);
/// assert_eq!(hint.retry_after, Some(Duration::from_millis(250)));
/// assert_eq!(hint.requests.remaining, Some(0));
/// assert_eq!(hint.requests.reset, Some(Duration::from_secs(360)));
/// assert_eq!(hint.tokens.reset, None); // garbage is ignored (with a DEBUG event)
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimitHint {
    /// How long the server asked us to wait: `retry-after-ms` if it can be read, else
    /// `Retry-After`. An HTTP-date in the past is zero.
    pub retry_after: Option<Duration>,
    /// The server's verdict from `x-should-retry`.
    pub should_retry: Option<bool>,
    /// The request-count window.
    pub requests: LimitWindow,
    /// The token-count window.
    pub tokens: LimitWindow,
}

/// One rate-limit window as the provider reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LimitWindow {
    /// The most the window allows.
    pub limit: Option<u64>,
    /// What is left of it.
    pub remaining: Option<u64>,
    /// Time until the window is full again (zero if the reset time has passed).
    pub reset: Option<Duration>,
}

impl LimitWindow {
    /// Whether nothing is known about this window.
    pub fn is_empty(&self) -> bool {
        self.limit.is_none() && self.remaining.is_none() && self.reset.is_none()
    }

    /// Whether the provider says the window is used up (`remaining` is zero).
    pub fn is_exhausted(&self) -> bool {
        self.remaining == Some(0)
    }
}

impl RateLimitHint {
    /// Read every header this type knows, with the system clock for HTTP-dates and RFC 3339
    /// times.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        Self::from_headers_at(headers, SystemTime::now())
    }

    /// Read every header this type knows, as of `now` (dates are turned into waits from it).
    ///
    /// ```
    /// use std::time::{Duration, SystemTime, UNIX_EPOCH};
    /// use http::{HeaderMap, HeaderValue};
    /// use retry_runtime::integrations::http::RateLimitHint;
    ///
    /// let mut headers = HeaderMap::new();
    /// headers.insert("anthropic-ratelimit-tokens-reset", HeaderValue::from_static("2024-06-01T12:00:30Z"));
    /// headers.insert("retry-after", HeaderValue::from_static("Sat, 01 Jun 2024 12:00:05 GMT"));
    /// let now = UNIX_EPOCH + Duration::from_secs(1_717_243_200); // 2024-06-01T12:00:00Z
    ///
    /// let hint = RateLimitHint::from_headers_at(&headers, now);
    /// assert_eq!(hint.tokens.reset, Some(Duration::from_secs(30)));
    /// assert_eq!(hint.retry_after, Some(Duration::from_secs(5)));
    /// ```
    pub fn from_headers_at(headers: &HeaderMap, now: SystemTime) -> Self {
        let from_ms = read(headers, RETRY_AFTER_MS, |v| {
            parse_decimal(v, Duration::from_millis(1))
        });
        let retry_after =
            from_ms.or_else(|| read(headers, RETRY_AFTER, |v| parse_retry_after(v, now)));
        let should_retry = read(headers, X_SHOULD_RETRY, parse_bool);
        let requests =
            window(headers, &OPENAI_REQUESTS, now).or(window(headers, &ANTHROPIC_REQUESTS, now));
        let tokens =
            window(headers, &OPENAI_TOKENS, now).or(window(headers, &ANTHROPIC_TOKENS, now));
        Self {
            retry_after,
            should_retry,
            requests,
            tokens,
        }
    }

    /// Whether the headers said nothing this type knows.
    pub fn is_empty(&self) -> bool {
        self.retry_after.is_none()
            && self.should_retry.is_none()
            && self.requests.is_empty()
            && self.tokens.is_empty()
    }
}

impl LimitWindow {
    /// Each figure from `self`, or else from `other`.
    fn or(self, other: LimitWindow) -> LimitWindow {
        LimitWindow {
            limit: self.limit.or(other.limit),
            remaining: self.remaining.or(other.remaining),
            reset: self.reset.or(other.reset),
        }
    }
}

fn window(headers: &HeaderMap, names: &WindowHeaders, now: SystemTime) -> LimitWindow {
    LimitWindow {
        limit: read(headers, names.limit, parse_count),
        remaining: read(headers, names.remaining, parse_count),
        reset: read(headers, names.reset, |v| parse_reset(v, now)),
    }
}

/// Read one header with `parse`; anything unreadable is ignored with a DEBUG event.
fn read<T>(
    headers: &HeaderMap,
    name: &'static str,
    parse: impl FnOnce(&str) -> Result<T, Malformed>,
) -> Option<T> {
    let value = headers.get(name)?;
    // `to_str` accepts visible ASCII only: obs-text and non-UTF-8 bytes end here.
    let text = match value.to_str() {
        Ok(text) => text.trim(),
        Err(_) => {
            ignored(name, value.as_bytes(), "not visible ASCII");
            return None;
        }
    };
    match parse(text) {
        Ok(parsed) => Some(parsed),
        Err(reason) => {
            ignored(name, value.as_bytes(), reason);
            None
        }
    }
}

#[cold]
fn ignored(header: &'static str, value: &[u8], reason: Malformed) {
    // Bounded: a hostile header does not get to write a megabyte into the logs.
    let shown = String::from_utf8_lossy(&value[..value.len().min(64)]);
    tracing::debug!(
        target: "retry_runtime",
        header,
        value = %shown,
        reason,
        "ignored a provider header"
    );
}

/// `x-should-retry`: `true` or `false`, any case.
fn parse_bool(text: &str) -> Result<bool, Malformed> {
    if text.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if text.eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        Err("neither true nor false")
    }
}

/// A count: a non-negative integer that fits in `u64`.
fn parse_count(text: &str) -> Result<u64, Malformed> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(if text.starts_with('-') {
            "negative"
        } else {
            "not an integer"
        });
    }
    text.parse().map_err(|_| "too large")
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{headers, now, S};
    use super::super::MAX_HINTED_WAIT;
    use super::*;

    fn hint(pairs: &[(&'static str, &[u8])]) -> RateLimitHint {
        RateLimitHint::from_headers_at(&headers(pairs), now())
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(hint(&[("retry-after", b"7")]).retry_after, Some(7 * S));
        assert_eq!(
            hint(&[("retry-after", b"1.5")]).retry_after,
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            hint(&[("retry-after", b"0.000000001")]).retry_after,
            Some(Duration::from_nanos(1))
        );
        assert_eq!(hint(&[("retry-after", b" 3 ")]).retry_after, Some(3 * S));
        assert_eq!(
            hint(&[("retry-after", b"Sat, 01 Jun 2024 12:00:09 GMT")]).retry_after,
            Some(9 * S)
        );
        // In the past: no wait.
        assert_eq!(
            hint(&[("retry-after", b"Sat, 01 Jun 2024 11:00:00 GMT")]).retry_after,
            Some(Duration::ZERO)
        );
        // RFC 850 and asctime, which HTTP-date also allows.
        assert_eq!(
            hint(&[("retry-after", b"Saturday, 01-Jun-24 12:00:10 GMT")]).retry_after,
            Some(10 * S)
        );
        assert_eq!(
            hint(&[("retry-after", b"Sat Jun  1 12:00:11 2024")]).retry_after,
            Some(11 * S)
        );
    }

    #[test]
    fn retry_after_ms_wins_and_falls_back() {
        let both = hint(&[("retry-after", b"2"), ("retry-after-ms", b"10")]);
        assert_eq!(both.retry_after, Some(Duration::from_millis(10)));
        let frac = hint(&[("retry-after-ms", b"2.5")]);
        assert_eq!(frac.retry_after, Some(Duration::from_micros(2500)));
        let bad_ms = hint(&[("retry-after", b"2"), ("retry-after-ms", b"soon")]);
        assert_eq!(bad_ms.retry_after, Some(2 * S));
    }

    #[test]
    fn garbage_is_ignored() {
        for value in [
            &b"-1"[..],
            b"-0.5",
            b"1.",
            b".5",
            b"1e3",
            b"NaN",
            b"inf",
            b"",
            b"soon",
            b"1,5",
            b"0x10",
            b"Sat, 32 Jun 2024 12:00:00 GMT",
            b"\xff\xfe",
            b"1\xc3\xa9",
        ] {
            assert_eq!(
                hint(&[("retry-after", value)]).retry_after,
                None,
                "{value:?}"
            );
            assert_eq!(
                hint(&[("retry-after-ms", value)]).retry_after,
                None,
                "{value:?}"
            );
            assert_eq!(
                hint(&[("x-ratelimit-reset-tokens", value)]).tokens.reset,
                None
            );
            assert_eq!(
                hint(&[("anthropic-ratelimit-requests-limit", value)])
                    .requests
                    .limit,
                None
            );
        }
        assert_eq!(hint(&[("x-should-retry", b"yes")]).should_retry, None);
        assert_eq!(
            hint(&[("x-ratelimit-remaining-tokens", b"99999999999999999999999")])
                .tokens
                .remaining,
            None
        );
    }

    #[test]
    fn huge_waits_are_capped_at_a_day() {
        let day = MAX_HINTED_WAIT;
        for value in [
            &b"86401"[..],
            b"99999999999999999999999999999999999999999999999999",
            b"1000000000000000000000.5",
        ] {
            assert_eq!(hint(&[("retry-after", value)]).retry_after, Some(day));
        }
        assert_eq!(
            hint(&[("retry-after-ms", b"86400001")]).retry_after,
            Some(day)
        );
        assert_eq!(
            hint(&[("retry-after", b"Fri, 31 Dec 9999 23:59:59 GMT")]).retry_after,
            Some(day)
        );
        assert_eq!(
            hint(&[("x-ratelimit-reset-requests", b"9999999h")])
                .requests
                .reset,
            Some(day)
        );
        assert_eq!(
            hint(&[("anthropic-ratelimit-tokens-reset", b"9999-12-31T23:59:59Z")])
                .tokens
                .reset,
            Some(day)
        );
    }

    #[test]
    fn should_retry() {
        assert_eq!(
            hint(&[("x-should-retry", b"true")]).should_retry,
            Some(true)
        );
        assert_eq!(
            hint(&[("x-should-retry", b"FALSE")]).should_retry,
            Some(false)
        );
    }

    #[test]
    fn openai_and_anthropic_windows() {
        let h = hint(&[
            ("x-ratelimit-limit-requests", b"60"),
            ("x-ratelimit-remaining-requests", b"59"),
            ("x-ratelimit-reset-requests", b"1s"),
            ("x-ratelimit-limit-tokens", b"150000"),
            ("x-ratelimit-remaining-tokens", b"149984"),
            ("x-ratelimit-reset-tokens", b"6m0s"),
        ]);
        assert_eq!(h.requests.limit, Some(60));
        assert_eq!(h.requests.remaining, Some(59));
        assert_eq!(h.requests.reset, Some(S));
        assert_eq!(h.tokens.limit, Some(150_000));
        assert_eq!(h.tokens.remaining, Some(149_984));
        assert_eq!(h.tokens.reset, Some(360 * S));
        assert!(!h.requests.is_exhausted());

        let h = hint(&[
            ("anthropic-ratelimit-requests-limit", b"50"),
            ("anthropic-ratelimit-requests-remaining", b"0"),
            (
                "anthropic-ratelimit-requests-reset",
                b"2024-06-01T12:00:30Z",
            ),
            ("anthropic-ratelimit-tokens-limit", b"40000"),
            ("anthropic-ratelimit-tokens-remaining", b"39000"),
            ("anthropic-ratelimit-tokens-reset", b"2024-06-01T12:01:00Z"),
        ]);
        assert_eq!(h.requests.limit, Some(50));
        assert!(h.requests.is_exhausted());
        assert_eq!(h.requests.reset, Some(30 * S));
        assert_eq!(h.tokens.limit, Some(40_000));
        assert_eq!(h.tokens.remaining, Some(39_000));
        assert_eq!(h.tokens.reset, Some(60 * S));
        assert!(hint(&[]).is_empty());
    }
}
