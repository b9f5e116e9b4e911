//! A spend limit never fails open in silence: a pool name the configuration does not know
//! while it configures other pools (a typo) refuses its calls, and the ERROR event names the
//! pool the user most likely meant; the opt-out lets it count without a limit instead.

mod common;

use common::{ApiError, EventLog, Reply};
use retry_runtime::{configure, resilient, Config, Rejected, Spend, StopReason};

// The file says `openai_hourly`; the code says `openai-hourly`.
#[resilient(max = 1, pool = "openai-hourly")]
async fn typo(cost: Spend) -> Result<Reply, ApiError> {
    Ok(Reply(cost))
}

#[resilient(max = 1, pool = "openai_hourly")]
async fn configured(cost: Spend) -> Result<Reply, ApiError> {
    Ok(Reply(cost))
}

#[tokio::test(start_paused = true)]
async fn a_pool_name_typo_refuses_and_names_the_configured_pool() {
    let log = EventLog::global();
    configure(
        Config::from_toml_str("[pool.openai_hourly]\nlimit = \"1.00usd\"\nwindow = \"1h\"\n")
            .unwrap(),
    )
    .unwrap();
    for _ in 0..5 {
        let (result, report) = retry_runtime::observe(typo(Spend::from_micros(1_000_000))).await;
        assert!(
            matches!(
                result,
                Err(ApiError::Runtime(Rejected::PoolUnconfigured {
                    pool: "openai-hourly"
                }))
            ),
            "{result:?}"
        );
        assert_eq!(
            report.stop(),
            Some(&StopReason::PoolUnconfigured {
                pool: "openai-hourly"
            })
        );
    }
    let errors: Vec<_> = log
        .events()
        .into_iter()
        .filter(|e| e.level == tracing::Level::ERROR && e.field("pool") == Some("openai-hourly"))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "one ERROR per minute, not one per call: {errors:?}"
    );
    assert!(
        errors[0].message.contains("did you mean `openai_hourly`"),
        "{errors:?}"
    );
    // The configured name is limited as configured.
    assert!(configured(Spend::from_micros(600_000)).await.is_ok());
    assert!(matches!(
        configured(Spend::from_micros(600_000)).await,
        Err(ApiError::Runtime(Rejected::BudgetExhausted { .. }))
    ));
}
