//! Process-wide configuration: the environment variable, set-once, and too-late. Its own test
//! binary (one process), because configuration is set once per process.

use std::time::Duration;

use retry_runtime::config::{configure_from_env, CONFIG_ENV};
use retry_runtime::{breaker, configure, Config, ConfigError};

#[test]
fn env_file_then_set_once_then_too_late() {
    let dir = std::env::temp_dir().join(format!("retry-runtime-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // A bad file is refused with its path, key and line.
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[breaker.openai]\nfailures = 5\ncooldwn = \"30s\"\n").unwrap();
    std::env::set_var(CONFIG_ENV, &bad);
    let error = configure_from_env().unwrap_err().to_string();
    assert!(error.contains("bad.toml"), "{error}");
    assert!(error.contains("line 3"), "{error}");
    assert!(error.contains("cooldwn"), "{error}");

    // A missing file says so.
    std::env::set_var(CONFIG_ENV, dir.join("missing.toml"));
    assert!(matches!(configure_from_env(), Err(ConfigError::Io { .. })));

    // A good file is installed, and breakers created afterwards use it.
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        "[breaker.from-env]\nfailures = 7\ncooldown = \"45s\"\nretry_ratio = \"5%\"\n",
    )
    .unwrap();
    std::env::set_var(CONFIG_ENV, &good);
    configure_from_env().unwrap();
    // Set once: a second call is an error, not a silent overwrite.
    assert!(matches!(
        configure(Config::default()),
        Err(ConfigError::AlreadyConfigured)
    ));
    let b = breaker("from-env");
    assert_eq!(b.config().failures, 7);
    assert_eq!(b.config().cooldown, Duration::from_secs(45));
    assert_eq!(b.config().retry_ratio_ppm, 50_000);
    assert_eq!(breaker("never-configured").config(), &Default::default());

    // After breakers exist, the error names them.
    assert!(matches!(
        configure(Config::default()),
        Err(ConfigError::TooLate { .. })
    ));
    std::fs::remove_dir_all(&dir).ok();
}
