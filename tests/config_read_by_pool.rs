//! `configure` after a pool (not a breaker) read the configuration is refused, and the error
//! names the pool rather than claiming `configure` was already called.

use retry_runtime::{configure, pool, Config, ConfigError};

#[test]
fn configure_after_a_pool_read_it_names_the_pool() {
    let _ = pool("read-first-pool");
    let error = configure(Config::default()).unwrap_err();
    assert!(
        matches!(&error, ConfigError::TooLate { names } if names == &vec!["read-first-pool"]),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(text.contains("read by: read-first-pool"), "{text}");
    assert!(!text.contains("may be called once"), "{text}");
}
