//! A windowed spend pool: refuses when spent, warns once per window, refills when the window
//! rolls over. Its own test binary (one process, one configuration) so that its paused clock
//! shares nothing with the multi-thread budget tests.

mod common;

use std::time::Duration;

use common::{EventLog, Reply};
use retry_runtime::{
    configure, pool, resilient, Budget, BudgetScope, Classify, Config, ErrorClass, PoolConfig,
    Rejected, Spend,
};

const S: Duration = Duration::from_secs(1);

fn setup() {
    configure(Config::default().with_pool(
        "hourly",
        PoolConfig {
            limit: Budget::usd(0.10),
            window: 3600 * S,
        },
    ))
    .expect("configured once");
}

#[derive(Debug, Clone, PartialEq)]
enum Billed {
    Runtime(Rejected),
}

impl From<Rejected> for Billed {
    fn from(r: Rejected) -> Self {
        Billed::Runtime(r)
    }
}

impl Classify for Billed {
    fn class(&self) -> ErrorClass {
        match self {
            Billed::Runtime(r) => r.class(),
        }
    }
}

#[resilient(max = 1, pool = "hourly")]
async fn hourly(cost: Spend) -> Result<Reply, Billed> {
    Ok(Reply(cost))
}

#[tokio::test(start_paused = true)]
async fn a_pool_refuses_when_spent_warns_once_per_window_and_refills() {
    setup();
    let log = EventLog::global();
    let cost = Spend::from_micros(40_000);

    let window = |expect_ok: usize| async move {
        // Diagnostics for a failure: where the pool stood at the window's start.
        let usage = pool("hourly").usage();
        let mut ok = 0;
        for _ in 0..6 {
            match hourly(cost).await {
                Ok(_) => ok += 1,
                Err(Billed::Runtime(Rejected::BudgetExhausted {
                    scope: BudgetScope::Pool("hourly"),
                    limit,
                    spent,
                })) => {
                    assert_eq!(limit, Budget::usd(0.10));
                    assert_eq!(spent, Spend::from_micros(80_000));
                }
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            ok, expect_ok,
            "calls that fit in this window ({} committed at its start, refilling in {:?})",
            usage.committed, usage.resets_in
        );
        log.with_message("spend pool exhausted")
            .iter()
            .filter(|e| e.field("pool") == Some("hourly"))
            .count()
    };
    // $0.04 per call, $0.10 per hour: two calls fit, the third is refused, and so on.
    assert_eq!(window(2).await, 1, "one WARN in the first window, not four");
    tokio::time::advance(3600 * S).await;
    assert_eq!(
        window(2).await,
        2,
        "the pool refilled, and warned once more"
    );
    assert_eq!(pool("hourly").ledger().total(), Spend::from_micros(160_000));
}
