//! The documented opt-out: with `RETRY_RUNTIME_POOLS_FAIL_OPEN=1`, a pool whose configuration
//! file failed to load counts its spend without a limit (the behaviour before pools failed
//! closed), still with the file's ERROR event. (Its own binary: the environment is read once.)

mod common;

use common::{ApiError, Reply};
use retry_runtime::{pool, resilient, Spend};

#[resilient(max = 1, pool = "hourly")]
async fn pooled(cost: Spend) -> Result<Reply, ApiError> {
    Ok(Reply(cost))
}

#[tokio::test(start_paused = true)]
async fn the_opt_out_counts_without_a_limit() {
    let path = std::env::temp_dir().join(format!("retry-bad-open-{}.toml", std::process::id()));
    std::fs::write(&path, "[pool.hourly]\nlimit = \"5.00eur\"\n").unwrap();
    std::env::set_var(retry_runtime::config::CONFIG_ENV, &path);
    std::env::set_var(retry_runtime::config::POOLS_FAIL_OPEN_ENV, "1");
    for _ in 0..8 {
        assert!(pooled(Spend::from_micros(1_000_000)).await.is_ok());
    }
    assert_eq!(
        pool("hourly").ledger().total(),
        Spend::from_micros(8_000_000)
    );
    assert_eq!(pool("hourly").ledger().limit(), None);
    std::fs::remove_file(&path).ok();
}
