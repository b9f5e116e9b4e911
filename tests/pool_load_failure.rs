//! A configuration file named by `RETRY_RUNTIME_CONFIG` that fails to load never leaves a spend
//! limit lifted: a pooled call site refuses its calls, and the ERROR event names the file's
//! error. (Its own binary: the environment is read once per process.)

mod common;

use common::{ApiError, EventLog, Reply};
use retry_runtime::{resilient, Rejected, Spend};

#[resilient(max = 1, pool = "hourly")]
async fn pooled(cost: Spend) -> Result<Reply, ApiError> {
    Ok(Reply(cost))
}

#[tokio::test(start_paused = true)]
async fn a_file_that_fails_to_load_makes_pooled_calls_refuse() {
    let log = EventLog::global();
    let path = std::env::temp_dir().join(format!("retry-bad-{}.toml", std::process::id()));
    // A limit with a unit the runtime does not know: the whole file is refused.
    std::fs::write(
        &path,
        "[pool.hourly]\nlimit = \"5.00eur\"\nwindow = \"1h\"\n",
    )
    .unwrap();
    std::env::set_var(retry_runtime::config::CONFIG_ENV, &path);
    std::env::remove_var(retry_runtime::config::POOLS_FAIL_OPEN_ENV);

    for _ in 0..8 {
        let result = pooled(Spend::from_micros(1_000_000)).await;
        assert!(
            matches!(
                result,
                Err(ApiError::Runtime(Rejected::PoolUnconfigured {
                    pool: "hourly"
                }))
            ),
            "{result:?}"
        );
    }
    let errors: Vec<_> = log
        .events()
        .into_iter()
        .filter(|e| e.level == tracing::Level::ERROR && e.field("pool") == Some("hourly"))
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].message.contains("did not load"), "{errors:?}");
    assert!(
        errors[0].message.contains("eur"),
        "the file's own error: {errors:?}"
    );
    // Said again a minute later, for as long as calls keep coming.
    tokio::time::advance(std::time::Duration::from_secs(61)).await;
    assert!(pooled(Spend::ZERO).await.is_err());
    let again = log
        .events()
        .into_iter()
        .filter(|e| e.level == tracing::Level::ERROR && e.field("pool") == Some("hourly"))
        .count();
    assert_eq!(again, 2);
    std::fs::remove_file(&path).ok();
}
