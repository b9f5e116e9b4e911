//! `configure` after a breaker was created with the defaults is refused, naming the breaker.

use retry_runtime::{breaker, configure, Config, ConfigError};

#[test]
fn configure_after_first_use_is_refused() {
    let _ = breaker("early-bird");
    match configure(Config::default()) {
        Err(ConfigError::TooLate { names }) => assert_eq!(names, vec!["early-bird"]),
        other => panic!("expected TooLate, got {other:?}"),
    }
}
