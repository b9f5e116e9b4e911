//! [`HttpError`]: a failed HTTP answer's status, header hints and a bounded body snippet.

use std::fmt;

use http::HeaderMap;

use super::RateLimitHint;

/// How much of an error body [`HttpError`] keeps: 2 KiB, cut on a character boundary.
pub const BODY_SNIPPET_LIMIT: usize = 2048;

/// A non-success HTTP answer: its status, the hints its headers carried and the start of its
/// body (at most [`BODY_SNIPPET_LIMIT`] bytes, cut on a character boundary).
///
/// Its [`Classify`](crate::Classify) applies [`provider_class`](super::provider_class), and
/// passes on `Retry-After` / `retry-after-ms` and `x-should-retry`. With the `reqwest` feature,
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
pub(super) fn snippet(body: &[u8]) -> (String, bool) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
