//! Error classification: what went wrong, and is it worth another attempt?

use std::fmt;
use std::time::Duration;

/// What kind of failure an attempt ended in. The policy's `#[retry_on]` list decides which
/// classes are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum ErrorClass {
    /// The provider answered with this HTTP status code.
    Status(u16),
    /// The attempt ran out of time (the per-attempt `timeout`, or a client-side timeout).
    Timeout,
    /// The request never got an answer: connection refused or reset, DNS, TLS.
    Transport,
    /// Retrying cannot help: an exhausted quota, a prompt over the context length, a
    /// content-policy refusal. Never retried, never falls back.
    Permanent,
    /// Anything the classifier could not place. Not retried: retrying the unknown is how
    /// retry storms start.
    Other,
}

impl ErrorClass {
    /// A short, stable name for logs and metrics: `status_429`, `timeout`, `transport`,
    /// `permanent`, `other`. Status names come from a table, so this never allocates.
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorClass::Status(code) => status_name(*code),
            ErrorClass::Timeout => "timeout",
            ErrorClass::Transport => "transport",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Other => "other",
        }
    }

    /// The HTTP status code, for `Status`.
    pub fn status(&self) -> Option<u16> {
        match self {
            ErrorClass::Status(code) => Some(*code),
            _ => None,
        }
    }

    /// Whether this failure means the provider is unwell (5xx, timeout, transport) rather
    /// than the caller being wrong. Breakers count only these.
    pub fn is_outage(&self) -> bool {
        matches!(
            self,
            ErrorClass::Status(500..=599) | ErrorClass::Timeout | ErrorClass::Transport
        )
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorClass::Status(code) => write!(f, "status {code}"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// The codes a provider actually sends get their own name; others their class's.
const STATUS_NAMES: &[(u16, &str)] = &[
    (400, "status_400"),
    (401, "status_401"),
    (403, "status_403"),
    (404, "status_404"),
    (408, "status_408"),
    (409, "status_409"),
    (413, "status_413"),
    (422, "status_422"),
    (429, "status_429"),
    (500, "status_500"),
    (502, "status_502"),
    (503, "status_503"),
    (504, "status_504"),
    (529, "status_529"),
];

fn status_name(code: u16) -> &'static str {
    match STATUS_NAMES.iter().find(|(c, _)| *c == code) {
        Some((_, name)) => name,
        None if (400..500).contains(&code) => "status_4xx",
        None if (500..600).contains(&code) => "status_5xx",
        None => "status_other",
    }
}

/// Tells a policy what went wrong with an attempt. Implement it for your error type.
///
/// Only [`class`](Classify::class) is required. The other methods carry the provider's own
/// hints, already parsed; the HTTP integrations fill them from headers.
///
/// ```
/// use std::time::Duration;
/// use retry_runtime::{Classify, ErrorClass};
///
/// #[derive(Debug)]
/// enum LlmError {
///     Http { status: u16, retry_after: Option<Duration> },
///     Network,
/// }
///
/// impl Classify for LlmError {
///     fn class(&self) -> ErrorClass {
///         match self {
///             LlmError::Http { status, .. } => ErrorClass::Status(*status),
///             LlmError::Network => ErrorClass::Transport,
///         }
///     }
///     fn retry_after(&self) -> Option<Duration> {
///         match self {
///             LlmError::Http { retry_after, .. } => *retry_after,
///             LlmError::Network => None,
///         }
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not say whether a failed attempt is worth retrying",
    label = "the error type of a `#[resilient]` fn must implement `Classify`",
    note = "implement `retry_runtime::Classify` for `{Self}`: map each error to an `ErrorClass` (`Status(code)`, `Timeout`, `Transport`, `Permanent`, `Other`)",
    note = "if `{Self}` comes from another crate (`anyhow::Error`, `Box<dyn Error>`, a client's error), the orphan rule forbids that impl here: return `retry_runtime::AnyError` (any error, classified by the errors the library knows in its chain), or your own error type that wraps it (`enum LlmError {{ Api(TheirError), Runtime(Rejected) }}`) and classify the wrapper"
)]
pub trait Classify {
    /// The class of this failure.
    fn class(&self) -> ErrorClass;

    /// How long the server asked us to wait (`Retry-After`, `retry-after-ms`). Used as a floor
    /// on the next delay, bounded by the policy's `max_retry_after`.
    fn retry_after(&self) -> Option<Duration> {
        None
    }

    /// The server's own verdict (`x-should-retry`). `Some(_)` overrides the `#[retry_on]`
    /// list, except that a `Permanent` error is never retried.
    fn should_retry(&self) -> Option<bool> {
        None
    }

    /// The provider's rate-limit numbers carried by this answer (`x-ratelimit-*`,
    /// `anthropic-ratelimit-*`): a `pace` pacer snaps its rate to them. The `http`
    /// integration's `HttpError` (and the errors built on it) fill this in.
    fn rate_limits(&self) -> Option<ProviderLimits> {
        None
    }

    /// What this failed attempt was billed (a timeout after streaming started, say).
    /// Counted against budgets and pools; zero by default.
    fn spend(&self) -> crate::spend::Spend {
        crate::spend::Spend::ZERO
    }
}

/// What an answer tells about the provider's rate limits ([`Classify::rate_limits`]; the
/// `http` integration reads it from headers), for a pacer's
/// [`Pacer::on_hint`](crate::pace::Pacer::on_hint): the request and token windows' `limit`,
/// what `remaining` of it, and the time until it is full again (`reset`).
///
/// ```
/// use std::time::Duration;
/// use retry_runtime::classify::ProviderLimits;
///
/// let limits = ProviderLimits {
///     limit_requests: Some(500),
///     remaining_requests: Some(499),
///     reset_requests: Some(Duration::from_millis(120)),
///     ..ProviderLimits::default()
/// };
/// assert!(limits.limit_tokens.is_none());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProviderLimits {
    /// The most requests the provider's window holds.
    pub limit_requests: Option<u64>,
    /// Requests left in it.
    pub remaining_requests: Option<u64>,
    /// Time until the request window is full again.
    pub reset_requests: Option<Duration>,
    /// The most tokens the provider's window holds.
    pub limit_tokens: Option<u64>,
    /// Tokens left in it.
    pub remaining_tokens: Option<u64>,
    /// Time until the token window is full again.
    pub reset_tokens: Option<Duration>,
}

impl Classify for std::io::Error {
    fn class(&self) -> ErrorClass {
        use std::io::ErrorKind::*;
        match self.kind() {
            TimedOut | WouldBlock => ErrorClass::Timeout,
            ConnectionRefused | ConnectionReset | ConnectionAborted | NotConnected | BrokenPipe
            | UnexpectedEof | Interrupted | AddrNotAvailable => ErrorClass::Transport,
            _ => ErrorClass::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outage_classes_are_5xx_timeout_transport() {
        assert!(ErrorClass::Status(503).is_outage());
        assert!(ErrorClass::Timeout.is_outage());
        assert!(ErrorClass::Transport.is_outage());
        assert!(!ErrorClass::Status(429).is_outage());
        assert!(!ErrorClass::Status(400).is_outage());
        assert!(!ErrorClass::Permanent.is_outage());
    }

    #[test]
    fn names_are_stable() {
        assert_eq!(ErrorClass::Status(429).as_str(), "status_429");
        assert_eq!(ErrorClass::Status(418).as_str(), "status_4xx");
        assert_eq!(ErrorClass::Status(599).as_str(), "status_5xx");
        assert_eq!(ErrorClass::Timeout.to_string(), "timeout");
        assert_eq!(ErrorClass::Status(503).to_string(), "status 503");
    }
}
