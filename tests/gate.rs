//! The gate refuses before it waits: on a paced call site (60 a minute, no burst), calls that
//! an open breaker, a spent pool or a spent workflow refuses return at once instead of each
//! first waiting its turn in the pacer's line; and a call that did wait for a permit shows
//! the wait in its report, also when the gate refused it after the wait.

mod common;

use std::sync::Once;
use std::time::Duration;

use common::{ApiError, Reply};
use retry_runtime::pace::PaceConfig;
use retry_runtime::{
    configure, observe, resilient, workflow, Budget, BudgetScope, Config, PoolConfig, Rejected,
    Spend,
};
use tokio::time::Instant;

const TEN_MS: Duration = Duration::from_millis(10);

fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let sixty = PaceConfig {
            rpm: Some(60),
            adaptive: false,
            burst: Duration::ZERO,
            ..PaceConfig::default()
        };
        let hour = |dollars| PoolConfig {
            limit: Budget::usd(dollars),
            window: Duration::from_secs(3600),
        };
        configure(
            Config::default()
                .with_pacer("gate-breaker-line", sixty.clone())
                .with_pacer("gate-pool-line", sixty.clone())
                .with_pacer("gate-workflow-line", sixty.clone())
                .with_pacer("gate-waits", sixty)
                .with_pool("gate-pool", hour(0.05))
                .with_pool("gate-pool-after-wait", hour(0.02)),
        )
        .unwrap();
    });
}

/// Ten calls, each refused as `refused` says and with no wait in its report, in under 10 ms
/// of paused time (at 60 a minute, each would otherwise first wait a second for its permit).
async fn ten_refused_at_once<Fut>(
    mut call: impl FnMut() -> Fut,
    refused: impl Fn(&ApiError) -> bool,
) where
    Fut: std::future::Future<Output = Result<Reply, ApiError>>,
{
    let start = Instant::now();
    for _ in 0..10 {
        let (result, report) = observe(call()).await;
        match &result {
            Err(error) if refused(error) => {}
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(report.attempts().is_empty(), "refused before any attempt");
        assert_eq!(
            report.paced(),
            Duration::ZERO,
            "a refusal waited for nothing"
        );
    }
    assert!(
        start.elapsed() < TEN_MS,
        "10 refusals took {:?} of paused time",
        start.elapsed()
    );
}

// ---- an open breaker ----

// Shares the breaker, not the pacer: it opens the breaker without waiting in the line.
#[resilient(max = 1, breaker = "gate-breaker")]
async fn unpaced_failure() -> Result<Reply, ApiError> {
    Err(ApiError::status(503))
}

#[resilient(max = 1, breaker = "gate-breaker", pace = "gate-breaker-line")]
async fn paced_behind_breaker() -> Result<Reply, ApiError> {
    Ok(Reply(Spend::ZERO))
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_refuses_paced_calls_without_waiting() {
    setup();
    // The default breaker opens on a run of `failures` outage failures.
    for _ in 0..retry_runtime::breaker("gate-breaker").config().failures {
        let _ = unpaced_failure().await;
    }
    ten_refused_at_once(paced_behind_breaker, |e| {
        matches!(
            e,
            ApiError::Runtime(Rejected::CircuitOpen {
                breaker: "gate-breaker",
                ..
            })
        )
    })
    .await;
}

// ---- a spent pool ----

#[resilient(max = 1, pool = "gate-pool", pace = "gate-pool-line")]
async fn paced_in_pool(cost: Spend) -> Result<Reply, ApiError> {
    Ok(Reply(cost))
}

#[tokio::test(start_paused = true)]
async fn a_spent_pool_refuses_paced_calls_without_waiting() {
    setup();
    // Spend the whole pool in one answer (it takes the first permit: no wait).
    let (spent, _) = observe(paced_in_pool(Spend::from_micros(50_000))).await;
    assert!(spent.is_ok());
    ten_refused_at_once(
        || paced_in_pool(Spend::from_micros(1_000)),
        |e| {
            matches!(e, ApiError::Runtime(Rejected::BudgetExhausted { scope, .. })
                if *scope == BudgetScope::Pool("gate-pool"))
        },
    )
    .await;
}

// ---- a spent workflow ----

#[resilient(max = 1, timeout = "10s", pace = "gate-workflow-line")]
async fn paced_in_workflow(cost: Spend) -> Result<Reply, ApiError> {
    Ok(Reply(cost))
}

#[tokio::test(start_paused = true)]
async fn a_spent_workflow_refuses_paced_calls_without_waiting() {
    setup();
    let ((), spent) = workflow(Budget::usd(0.01), async {
        assert!(paced_in_workflow(Spend::from_micros(10_000)).await.is_ok());
        ten_refused_at_once(
            || paced_in_workflow(Spend::from_micros(1_000)),
            |e| {
                matches!(e, ApiError::Runtime(Rejected::BudgetExhausted { scope, .. })
                    if *scope == BudgetScope::Workflow)
            },
        )
        .await;
    })
    .await;
    assert_eq!(spent, Spend::from_micros(10_000));
}

// ---- waits are reported ----

#[resilient(max = 1, pace = "gate-waits", pool = "gate-pool-after-wait")]
async fn paced_and_billed(cost: Spend) -> Result<Reply, ApiError> {
    Ok(Reply(cost))
}

#[tokio::test(start_paused = true)]
async fn a_wait_for_a_permit_is_in_the_report_even_when_the_call_is_refused_after_it() {
    setup();
    // The first call takes the second's permit; the next one waits a second for its own.
    let (first, report) = observe(paced_and_billed(Spend::from_micros(1_000))).await;
    assert!(first.is_ok());
    assert_eq!(report.paced(), Duration::ZERO);
    let (second, report) = observe(paced_and_billed(Spend::from_micros(1_000))).await;
    assert!(second.is_ok());
    assert_eq!(report.paced(), Duration::from_secs(1));
    assert_eq!(report.attempts()[0].paced, Duration::from_secs(1));

    // Two callers queue for permits; the pool has room for both when they join the line,
    // but the first one's answer fills it ($0.001 + $0.001 + $0.018 = $0.02): the second is
    // refused after its wait (its permit at +2 s), and its report still says how long.
    let big = Spend::from_micros(18_000);
    let a = tokio::spawn(observe(paced_and_billed(big)));
    tokio::task::yield_now().await;
    let b = tokio::spawn(observe(paced_and_billed(Spend::from_micros(1_000))));
    let (a, a_report) = a.await.unwrap();
    assert!(a.is_ok(), "{a:?}");
    assert_eq!(a_report.paced(), Duration::from_secs(1));
    let (b, b_report) = b.await.unwrap();
    match b {
        Err(ApiError::Runtime(Rejected::BudgetExhausted { .. })) => {}
        other => panic!("expected the pool to refuse after the wait, got {other:?}"),
    }
    assert!(b_report.attempts().is_empty());
    assert_eq!(
        b_report.paced(),
        Duration::from_secs(2),
        "the refused call's wait is in its report"
    );
}
