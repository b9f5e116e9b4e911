//! The `[store]` settings: where state shared across processes lives, and the checks on them
//! (a URL this build can use, a key prefix Redis can hold). The store itself reads them.

use std::fmt;
use std::time::Duration;

use super::ConfigError;

/// The environment variable that sets (and overrides) the Redis URL.
pub const REDIS_URL_ENV: &str = "RETRY_RUNTIME_REDIS_URL";
/// The key namespace used when none is configured.
pub const DEFAULT_PREFIX: &str = "resilient";
/// The per-operation timeout used when none is configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);
/// How often an unreachable store is tried again, when not configured.
pub const DEFAULT_RECONNECT: Duration = Duration::from_millis(500);

/// The `[store]` settings: where shared state lives, under which key prefix, and how long an
/// operation may take.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreConfig {
    redis_url: Option<String>,
    prefix: String,
    timeout: Duration,
    reconnect_every: Duration,
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field("redis_url", &self.redis_url.as_deref().map(redact))
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("reconnect_every", &self.reconnect_every)
            .finish()
    }
}

/// The URL without its password, for logs.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

impl StoreConfig {
    /// Share state through the Redis server at `url` (`redis://host:port[/db]`, with an
    /// optional `user:password@`). Refused: an unparsable URL, `rediss://` (this build has no
    /// TLS), or a build without the `redis` feature.
    pub fn redis(url: &str) -> Result<Self, ConfigError> {
        check_url(url).map_err(invalid)?;
        Ok(Self {
            redis_url: Some(url.to_owned()),
            ..Self::none()
        })
    }

    /// Settings without a URL (`[store]` with only a prefix or timeout): the URL may come from
    /// `RETRY_RUNTIME_REDIS_URL`.
    pub(crate) fn none() -> Self {
        Self {
            redis_url: None,
            prefix: DEFAULT_PREFIX.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            reconnect_every: DEFAULT_RECONNECT,
        }
    }

    /// The key namespace (default `"resilient"`): processes that share state use the same
    /// one. 1 to 64 characters, no spaces, quotes or braces.
    pub fn with_prefix(mut self, prefix: &str) -> Result<Self, ConfigError> {
        check_prefix(prefix).map_err(invalid)?;
        self.prefix = prefix.to_owned();
        Ok(self)
    }

    /// How long one store operation may take before the call goes on with local state
    /// (default 50 ms; kept within 1 ms to 10 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.clamp(Duration::from_millis(1), Duration::from_secs(10));
        self
    }

    /// How often an unreachable store is tried again (default 500 ms; kept within 10 ms to
    /// 1 minute).
    pub fn with_reconnect_every(mut self, every: Duration) -> Self {
        self.reconnect_every = every.clamp(Duration::from_millis(10), Duration::from_secs(60));
        self
    }

    /// The Redis URL, as configured (`RETRY_RUNTIME_REDIS_URL` is applied when the store
    /// starts).
    pub fn redis_url(&self) -> Option<&str> {
        self.redis_url.as_deref()
    }

    /// The key namespace.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The per-operation timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How often an unreachable store is tried again.
    pub fn reconnect_every(&self) -> Duration {
        self.reconnect_every
    }
}

fn invalid(message: String) -> ConfigError {
    ConfigError::Invalid {
        path: None,
        message,
    }
}

pub(crate) fn check_url(url: &str) -> Result<(), String> {
    let rest = if let Some(rest) = url.strip_prefix("redis://") {
        rest
    } else if url.starts_with("rediss://") {
        return Err(format!(
            "`{}`: rediss:// (TLS) is not supported by this build; use redis:// on a trusted network or a TLS tunnel",
            redact(url)
        ));
    } else if url.starts_with("redis+unix://") || url.starts_with("unix://") {
        url
    } else {
        return Err(format!(
            "`{}` is not a Redis URL: write redis://host:port, e.g. \"redis://127.0.0.1:6379\"",
            redact(url)
        ));
    };
    if rest.is_empty() || rest.starts_with('/') || rest.starts_with(':') {
        return Err(format!("`{}` names no host", redact(url)));
    }
    #[cfg(feature = "redis")]
    {
        ::redis::Client::open(url).map_err(|e| format!("`{}`: {e}", redact(url)))?;
        Ok(())
    }
    #[cfg(not(feature = "redis"))]
    {
        Err(format!(
            "`{}`: retry-runtime was built without the `redis` feature; enable it to share state through Redis",
            redact(url)
        ))
    }
}

fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() || prefix.len() > 64 {
        return Err(format!("`{prefix}` must be 1 to 64 characters"));
    }
    if let Some(c) = prefix
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '{' | '}' | '"' | '\''))
    {
        return Err(format!("`{prefix}` may not contain {c:?}"));
    }
    Ok(())
}

/// The URL from `RETRY_RUNTIME_REDIS_URL`, if set: checked, or a configuration error.
pub(crate) fn env_url() -> Result<Option<String>, ConfigError> {
    match std::env::var(REDIS_URL_ENV) {
        Ok(url) if !url.trim().is_empty() => {
            let url = url.trim().to_owned();
            check_url(&url).map_err(|e| invalid(format!("{REDIS_URL_ENV}: {e}")))?;
            Ok(Some(url))
        }
        Ok(_) | Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(invalid(format!("{REDIS_URL_ENV} is not valid UTF-8")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(check_url("http://x")
            .unwrap_err()
            .contains("not a Redis URL"));
        assert!(check_url("rediss://h:1").unwrap_err().contains("TLS"));
        assert!(check_url("redis://").unwrap_err().contains("no host"));
        #[cfg(feature = "redis")]
        {
            assert!(check_url("redis://127.0.0.1:6390").is_ok());
            assert!(check_url("redis://127.0.0.1:6390/2").is_ok());
        }
        #[cfg(not(feature = "redis"))]
        assert!(check_url("redis://127.0.0.1:6390")
            .unwrap_err()
            .contains("without the `redis` feature"));
    }

    #[test]
    fn prefixes_and_redaction() {
        assert!(check_prefix("fleet-a:v1").is_ok());
        assert!(check_prefix("").is_err());
        assert!(check_prefix("a b").is_err());
        assert!(check_prefix("{x}").is_err());
        assert_eq!(redact("redis://:secret@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }
}
