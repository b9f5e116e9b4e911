//! [`AnyError`]: for a `#[resilient]` function whose errors are of many types (the shape
//! `anyhow::Result` and `Box<dyn Error>` code has), classified by what the library knows.
//!
//! `Classify` cannot be implemented for `anyhow::Error` or `Box<dyn Error>` in a user's crate
//! (the orphan rule), and neither says what its inner error is. `AnyError` holds any error,
//! takes `?` from any `std::error::Error`, and classifies by looking through the error and
//! its sources for an error the library can classify: the runtime's [`Rejected`], `std::io`'s
//! errors, and with the integrations' features `HttpError`, `StreamEventError`,
//! `reqwest::Error`, `CallError` and async-openai's `OpenAIError`. An error none of them is
//! is [`Other`](ErrorClass::Other): not retried, so a bug is never retried as an outage.
//!
//! ```
//! use retry_runtime::{resilient, retry_on, AnyError, Classify, ErrorClass};
//!
//! #[resilient(max = 3, base = "1ms", timeout = "10s")]
//! #[retry_on(transport, timeout)]
//! async fn read_prompt(path: &str) -> Result<String, AnyError> {
//!     let text = std::fs::read_to_string(path)?; // io::Error: NotFound is `Other`
//!     let n: u32 = text.trim().parse()?; // ParseIntError: unknown to the library, `Other`
//!     Ok(n.to_string())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let error = read_prompt("/no/such/file").await.unwrap_err();
//! assert_eq!(error.class(), ErrorClass::Other);
//! assert!(error.downcast_ref::<std::io::Error>().is_some());
//!
//! // From anyhow: `anyhow::Error` converts into `Box<dyn Error + Send + Sync>`.
//! let boxed: Box<dyn std::error::Error + Send + Sync> = "no answer".into();
//! assert_eq!(AnyError::from_boxed(boxed).class(), ErrorClass::Other);
//! # }
//! ```

use std::error::Error;
use std::fmt;
use std::time::Duration;

use crate::classify::{Classify, ErrorClass, ProviderLimits};
use crate::rejected::Rejected;
use crate::spend::Spend;

/// Any error, classified by the first error in its chain that the library knows (see the
/// [module docs](self)). `?` converts any `std::error::Error + Send + Sync + 'static` into it;
/// [`AnyError::from_boxed`] takes a boxed one (what `anyhow::Error::into` gives).
pub struct AnyError(Box<dyn Error + Send + Sync + 'static>);

impl AnyError {
    /// From a boxed error: `AnyError::from_boxed(anyhow_error.into())`.
    pub fn from_boxed(error: Box<dyn Error + Send + Sync + 'static>) -> Self {
        AnyError(error)
    }

    /// The error inside.
    pub fn get_ref(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.0
    }

    /// The error inside, boxed (for `anyhow::Error::from_boxed` or `?` into a `Box<dyn Error>`).
    pub fn into_inner(self) -> Box<dyn Error + Send + Sync + 'static> {
        self.0
    }

    /// The error inside, if it is a `T`.
    pub fn downcast_ref<T: Error + 'static>(&self) -> Option<&T> {
        self.0.downcast_ref::<T>()
    }

    /// The first error in the chain (the error inside, then its sources) that the library can
    /// classify.
    fn known(&self) -> Option<&dyn Classify> {
        let mut next: Option<&(dyn Error + 'static)> = Some(&*self.0);
        while let Some(error) = next {
            if let Some(known) = known(error) {
                return Some(known);
            }
            next = error.source();
        }
        None
    }
}

/// `error` as one of the error types the library classifies.
fn known<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a dyn Classify> {
    if let Some(e) = error.downcast_ref::<Rejected>() {
        return Some(e);
    }
    #[cfg(feature = "async-openai")]
    if let Some(e) = error.downcast_ref::<async_openai::error::OpenAIError>() {
        return Some(e);
    }
    #[cfg(feature = "reqwest")]
    {
        if let Some(e) = error.downcast_ref::<crate::integrations::reqwest::CallError>() {
            return Some(e);
        }
        if let Some(e) = error.downcast_ref::<reqwest::Error>() {
            return Some(e);
        }
    }
    #[cfg(feature = "http")]
    {
        if let Some(e) = error.downcast_ref::<crate::integrations::http::HttpError>() {
            return Some(e);
        }
        if let Some(e) = error.downcast_ref::<crate::integrations::http::StreamEventError>() {
            return Some(e);
        }
    }
    if let Some(e) = error.downcast_ref::<std::io::Error>() {
        return Some(e);
    }
    None
}

impl<E: Error + Send + Sync + 'static> From<E> for AnyError {
    fn from(error: E) -> Self {
        AnyError(Box::new(error))
    }
}

impl Classify for AnyError {
    fn class(&self) -> ErrorClass {
        self.known().map_or(ErrorClass::Other, Classify::class)
    }

    fn retry_after(&self) -> Option<Duration> {
        self.known().and_then(Classify::retry_after)
    }

    fn should_retry(&self) -> Option<bool> {
        self.known().and_then(Classify::should_retry)
    }

    fn rate_limits(&self) -> Option<ProviderLimits> {
        self.known().and_then(Classify::rate_limits)
    }

    fn spend(&self) -> Spend {
        self.known().map_or(Spend::ZERO, Classify::spend)
    }
}

impl fmt::Display for AnyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for AnyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl AsRef<dyn Error + Send + Sync + 'static> for AnyError {
    fn as_ref(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An application error wrapping a known one as its source, as `anyhow::Context` does.
    #[derive(Debug)]
    struct Context(std::io::Error);
    impl fmt::Display for Context {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("while asking the provider")
        }
    }
    impl Error for Context {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn the_first_known_error_in_the_chain_classifies() {
        let cut = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let wrapped = AnyError::from(Context(cut));
        assert_eq!(wrapped.class(), ErrorClass::Transport);
        assert_eq!(wrapped.to_string(), "while asking the provider");

        let rejected = AnyError::from(Rejected::AttemptTimedOut {
            timeout: Duration::from_secs(1),
        });
        assert_eq!(rejected.class(), ErrorClass::Timeout);

        let unknown = AnyError::from("x".parse::<u32>().unwrap_err());
        assert_eq!(unknown.class(), ErrorClass::Other);
        assert_eq!(unknown.retry_after(), None);
    }

    #[cfg(feature = "http")]
    #[test]
    fn provider_errors_keep_their_hints() {
        let mut headers = http::HeaderMap::new();
        headers.insert("retry-after", http::HeaderValue::from_static("3"));
        let error = crate::integrations::http::HttpError::new(429, &headers, b"{}");
        let any = AnyError::from(error);
        assert_eq!(any.class(), ErrorClass::Status(429));
        assert_eq!(any.retry_after(), Some(Duration::from_secs(3)));
    }
}
