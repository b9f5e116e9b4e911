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

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;

use crate::classify::{Classify, ErrorClass};

/// The longest wait a header can ask for; longer ones are capped here (a day).
pub const MAX_HINTED_WAIT: Duration = Duration::from_secs(24 * 60 * 60);

/// How much of an error body [`HttpError`] keeps: 2 KiB, cut on a character boundary.
pub const BODY_SNIPPET_LIMIT: usize = 2048;

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

/// Why a header value could not be read.
type Malformed = &'static str;

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

#[cold]
fn capped(requested: u128) -> Duration {
    tracing::debug!(
        target: "retry_runtime",
        requested_ms = u64::try_from(requested / 1_000_000).unwrap_or(u64::MAX),
        cap_ms = MAX_HINTED_WAIT.as_millis() as u64,
        "capped a provider wait"
    );
    MAX_HINTED_WAIT
}

/// A wait of `nanos`, capped at [`MAX_HINTED_WAIT`].
fn wait_of(nanos: u128) -> Duration {
    if nanos > MAX_HINTED_WAIT.as_nanos() {
        return capped(nanos);
    }
    // Below the cap, so it fits: a day is 8.64e13 ns.
    Duration::new(
        (nanos / 1_000_000_000) as u64,
        (nanos % 1_000_000_000) as u32,
    )
}

/// A non-negative decimal number (`7`, `1.5`, `0.025`) of `unit`s; huge values are capped.
fn parse_decimal(text: &str, unit: Duration) -> Result<Duration, Malformed> {
    parse_decimal_nanos(text, unit.as_nanos()).map(wait_of)
}

/// Nanoseconds in `text` units of `unit_nanos`, saturating (the caller caps).
fn parse_decimal_nanos(text: &str, unit_nanos: u128) -> Result<u128, Malformed> {
    let (int, frac) = match text.split_once('.') {
        Some((int, frac)) => {
            if frac.is_empty() {
                return Err("not a number");
            }
            (int, frac)
        }
        None => (text, ""),
    };
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return Err(if int.starts_with('-') {
            "negative"
        } else {
            "not a number"
        });
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err("not a number");
    }
    let mut nanos: u128 = 0;
    for digit in int.bytes() {
        nanos = nanos
            .saturating_mul(10)
            .saturating_add(u128::from(digit - b'0'));
    }
    nanos = nanos.saturating_mul(unit_nanos);
    // Nine fractional digits are below a nanosecond even for seconds; the rest cannot matter.
    let mut scale = unit_nanos;
    for digit in frac.bytes().take(9) {
        scale /= 10;
        nanos = nanos.saturating_add(u128::from(digit - b'0') * scale);
    }
    Ok(nanos)
}

/// `Retry-After`: delta-seconds (fractions accepted), or an HTTP-date (past dates are zero).
fn parse_retry_after(text: &str, now: SystemTime) -> Result<Duration, Malformed> {
    if text.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.') {
        return parse_decimal(text, Duration::from_secs(1));
    }
    let at = httpdate::parse_http_date(text).map_err(|_| "neither seconds nor an HTTP-date")?;
    Ok(match at.duration_since(now) {
        Ok(wait) => wait_of(wait.as_nanos()),
        Err(_) => Duration::ZERO,
    })
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

/// A window reset: an RFC 3339 time (Anthropic) or a duration like `6m0s` (OpenAI).
fn parse_reset(text: &str, now: SystemTime) -> Result<Duration, Malformed> {
    if text.len() >= 10 && text.as_bytes().get(4) == Some(&b'-') {
        parse_rfc3339_wait(text, now)
    } else {
        parse_go_duration(text)
    }
}

/// A Go-style duration, as OpenAI sends resets: `6m0s`, `1s`, `20ms`, `1h2m3.5s`, `59.9s`.
/// A bare number is seconds.
fn parse_go_duration(text: &str) -> Result<Duration, Malformed> {
    if text.is_empty() {
        return Err("empty");
    }
    if text.starts_with('-') {
        return Err("negative");
    }
    if text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return parse_decimal(text, Duration::from_secs(1));
    }
    let mut total: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "h" => 3_600_000_000_000,
            "m" => 60_000_000_000,
            "s" => 1_000_000_000,
            "ms" => 1_000_000,
            "us" | "µs" | "μs" => 1_000,
            "ns" => 1,
            _ => return Err("not a duration"),
        };
        if number.is_empty() {
            return Err("not a duration");
        }
        total = total.saturating_add(parse_decimal_nanos(number, unit_nanos)?);
        rest = after;
    }
    Ok(wait_of(total))
}

/// The wait from `now` until an RFC 3339 time (`2024-06-01T12:00:30Z`,
/// `2024-06-01T12:00:30.5+02:00`); zero if it has passed.
fn parse_rfc3339_wait(text: &str, now: SystemTime) -> Result<Duration, Malformed> {
    let at = parse_rfc3339(text).ok_or("not an RFC 3339 time")?;
    let now = match now.duration_since(UNIX_EPOCH) {
        Ok(since) => since.as_nanos() as i128,
        Err(before) => -(before.duration().as_nanos() as i128),
    };
    let wait = at - now;
    Ok(if wait <= 0 {
        Duration::ZERO
    } else {
        wait_of(wait as u128)
    })
}

/// Nanoseconds since the Unix epoch of an RFC 3339 date-time, hand-parsed.
fn parse_rfc3339(text: &str) -> Option<i128> {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(range)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(part.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let sep = |at: usize, allowed: &[u8]| b.get(at).is_some_and(|c| allowed.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut at = 19;
    let mut frac_nanos: i128 = 0;
    if b.get(at) == Some(&b'.') {
        let start = at + 1;
        let len = b[start..].iter().take_while(|c| c.is_ascii_digit()).count();
        if len == 0 {
            return None;
        }
        let mut scale = 100_000_000;
        for d in &b[start..start + len.min(9)] {
            frac_nanos += i128::from(d - b'0') * scale;
            scale /= 10;
        }
        at = start + len;
    }
    let offset_secs: i64 = match b.get(at..)? {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (oh, om) = (digits(at + 1..at + 3)?, digits(at + 4..at + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let offset = oh * 3600 + om * 60;
            if *sign == b'+' {
                offset
            } else {
                -offset
            }
        }
        _ => return None,
    };
    // A leap second is read as the last second of its minute.
    let second = second.min(59);
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_secs;
    Some(i128::from(secs) * 1_000_000_000 + frac_nanos)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

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
/// - a 4xx about the context length (`context_length_exceeded`, "maximum context length",
///   Anthropic's "prompt is too long") or a content policy (`content_policy_violation`,
///   `content_filter`) is `Permanent`: the same prompt fails the same way;
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
        400..=499 if status != 429 && (says(CONTEXT_MARKERS) || says(CONTENT_POLICY_MARKERS)) => {
            ErrorClass::Permanent
        }
        _ => ErrorClass::Status(status),
    }
}

fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    n.is_empty() || h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
}

/// A non-success HTTP answer: its status, the hints its headers carried and the start of its
/// body (at most [`BODY_SNIPPET_LIMIT`] bytes, cut on a character boundary).
///
/// Its [`Classify`] applies [`provider_class`], and passes on `Retry-After` /
/// `retry-after-ms` and `x-should-retry`. With the `reqwest` feature,
/// `HttpError::from_response` builds one from a `reqwest::Response`.
///
/// ```
/// use std::time::Duration;
/// use http::{HeaderMap, HeaderValue};
/// use retry_runtime::integrations::http::HttpError;
/// use retry_runtime::{Classify, ErrorClass};
///
/// let mut headers = HeaderMap::new();
/// headers.insert("retry-after", HeaderValue::from_static("2"));
/// let error = HttpError::new(429, &headers, br#"{"error":{"code":"rate_limit_exceeded"}}"#);
/// assert_eq!(error.class(), ErrorClass::Status(429));
/// assert_eq!(error.retry_after(), Some(Duration::from_secs(2)));
///
/// let error = HttpError::new(429, &HeaderMap::new(), br#"{"error":{"code":"insufficient_quota"}}"#);
/// assert_eq!(error.class(), ErrorClass::Permanent);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    status: u16,
    hints: RateLimitHint,
    body: String,
    truncated: bool,
}

impl HttpError {
    /// From a status, the answer's headers and (the start of) its body.
    pub fn new(status: u16, headers: &HeaderMap, body: &[u8]) -> Self {
        Self::with_hints(status, RateLimitHint::from_headers(headers), body)
    }

    /// From a status, hints already parsed, and (the start of) the body. `body` may be longer
    /// than [`BODY_SNIPPET_LIMIT`]; only the snippet is kept.
    pub fn with_hints(status: u16, hints: RateLimitHint, body: &[u8]) -> Self {
        let (body, truncated) = snippet(body);
        Self {
            status,
            hints,
            body,
            truncated,
        }
    }

    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// What the headers said.
    pub fn hints(&self) -> &RateLimitHint {
        &self.hints
    }

    /// The start of the body, lossily decoded (invalid UTF-8 shows as U+FFFD).
    pub fn body(&self) -> &str {
        &self.body
    }

    /// Whether the body was longer than the snippet.
    pub fn is_truncated(&self) -> bool {
        self.truncated
    }
}

/// The first [`BODY_SNIPPET_LIMIT`] bytes of `body` as text, and whether there was more.
fn snippet(body: &[u8]) -> (String, bool) {
    let truncated = body.len() > BODY_SNIPPET_LIMIT;
    let cut = &body[..body.len().min(BODY_SNIPPET_LIMIT)];
    // A cut through a multi-byte character drops that character, rather than showing U+FFFD.
    let cut = match std::str::from_utf8(cut) {
        Err(e) if e.error_len().is_none() => &cut[..e.valid_up_to()],
        _ => cut,
    };
    let mut text = String::from_utf8_lossy(cut).into_owned();
    // Replacement characters are wider than the bytes they replace: cut again on a boundary.
    if text.len() > BODY_SNIPPET_LIMIT {
        let mut end = BODY_SNIPPET_LIMIT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    (text, truncated)
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {}", self.status)?;
        if !self.body.is_empty() {
            write!(f, ": {}", self.body)?;
            if self.truncated {
                f.write_str("…")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for HttpError {}

impl Classify for HttpError {
    fn class(&self) -> ErrorClass {
        provider_class(self.status, &self.body)
    }

    fn retry_after(&self) -> Option<Duration> {
        self.hints.retry_after
    }

    fn should_retry(&self) -> Option<bool> {
        self.hints.should_retry
    }

    fn rate_limits(&self) -> Option<crate::pace::ProviderLimits> {
        let limits = crate::pace::ProviderLimits::from(&self.hints);
        (limits != crate::pace::ProviderLimits::default()).then_some(limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const S: Duration = Duration::from_secs(1);
    // 2024-06-01T12:00:00Z
    const NOW_SECS: u64 = 1_717_243_200;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW_SECS)
    }

    fn headers(pairs: &[(&'static str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_bytes(value).unwrap());
        }
        map
    }

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
    fn go_durations() {
        let ok = |text: &str| parse_go_duration(text).unwrap();
        assert_eq!(ok("6m0s"), 360 * S);
        assert_eq!(ok("1s"), S);
        assert_eq!(ok("20ms"), Duration::from_millis(20));
        assert_eq!(ok("1h2m3.5s"), Duration::from_millis(3_723_500));
        assert_eq!(ok("59.928s"), Duration::from_millis(59_928));
        assert_eq!(ok("1.5ms"), Duration::from_micros(1500));
        assert_eq!(ok("7us"), Duration::from_micros(7));
        assert_eq!(ok("7µs"), Duration::from_micros(7));
        assert_eq!(ok("3ns"), Duration::from_nanos(3));
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("2"), 2 * S);
        for bad in ["", "-1s", "1x", "s", "1.s", "1m-2s", "ms1", "1..5s", "1 s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rfc3339_times() {
        let wait = |text: &str| parse_rfc3339_wait(text, now()).unwrap();
        assert_eq!(wait("2024-06-01T12:00:30Z"), 30 * S);
        assert_eq!(wait("2024-06-01t12:00:30z"), 30 * S);
        assert_eq!(wait("2024-06-01 12:00:30Z"), 30 * S);
        assert_eq!(wait("2024-06-01T12:00:00.25Z"), Duration::from_millis(250));
        assert_eq!(wait("2024-06-01T14:00:05+02:00"), 5 * S);
        assert_eq!(wait("2024-06-01T11:00:05-01:00"), 5 * S);
        assert_eq!(wait("2024-06-01T11:59:00Z"), Duration::ZERO);
        assert_eq!(wait("1969-12-31T23:59:59Z"), Duration::ZERO);
        assert_eq!(
            wait("2024-06-01T12:00:00.123456789123Z"),
            Duration::from_nanos(123_456_789)
        );
        for bad in [
            "2024-06-01T12:00:30",
            "2024-13-01T12:00:30Z",
            "2023-02-29T12:00:30Z",
            "2024-06-31T12:00:30Z",
            "2024-06-01T24:00:30Z",
            "2024-06-01T12:00:30+2:00",
            "2024-06-01T12:00:30.Z",
            "2024-06-01T12:00:30ZZ",
            "2024-06-01",
            "2024-06-01T12:00:3xZ",
        ] {
            assert!(parse_rfc3339_wait(bad, now()).is_err(), "{bad:?}");
        }
        // Leap days exist.
        assert!(parse_rfc3339("2024-02-29T00:00:00Z").is_some());
        assert_eq!(
            parse_rfc3339("1970-01-01T00:00:00Z"),
            Some(0),
            "the epoch is zero"
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
        assert_eq!(
            provider_class(429, "context_length_exceeded"),
            ErrorClass::Status(429)
        );
        assert_eq!(provider_class(529, "overloaded"), ErrorClass::Status(529));
    }

    #[test]
    fn snippets_are_bounded_on_a_char_boundary() {
        let long = "é".repeat(5000); // 10,000 bytes, 2-byte characters
        let (text, truncated) = snippet(long.as_bytes());
        assert!(truncated);
        assert_eq!(text.len(), BODY_SNIPPET_LIMIT);
        assert!(text.chars().all(|c| c == 'é'));

        let mut odd = vec![b'a'];
        odd.extend("€".repeat(1000).as_bytes()); // 3-byte characters, cut mid-character
        let (text, truncated) = snippet(&odd);
        assert!(truncated);
        assert!(text.len() <= BODY_SNIPPET_LIMIT);
        assert!(!text.contains('\u{FFFD}'));

        let invalid = vec![0xff; 5000];
        let (text, truncated) = snippet(&invalid);
        assert!(truncated);
        assert!(text.len() <= BODY_SNIPPET_LIMIT);

        assert_eq!(snippet(b"short"), ("short".to_string(), false));
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
