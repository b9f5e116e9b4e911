//! Hard limits hold under a burst: 10,000 calls at once, on a multi-thread runtime, inside a
//! $3.00 workflow or a $5.00 pool, each answer costing between 100 and 2,000 micro-dollars.
//! With `max_cost` the ledgers reserve what an attempt may cost, so the limit is never passed
//! (the whole burst is admitted before the first answer is in). Without it, a site nobody has
//! measured admits one attempt at a time until one says what it costs, and then reserves the
//! costliest attempt seen: a burst of attempts costlier than every one before them can still
//! pass the limit (docs/BUDGETS.md has the figures), which is what `max_cost` is for.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{ApiError, Reply};
use retry_runtime::{
    configure, pool, resilient, workflow, Budget, Config, PoolConfig, Spend, Workflow,
};
use tokio::task::JoinSet;

const CALLS: u64 = 10_000;

/// The i-th answer's cost: 100 to 2,000 micro-dollars, spread over the range.
fn cost(i: u64) -> Spend {
    Spend::from_micros(100 + (i * 7919) % 1901)
}

fn setup() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        configure(Config::default().with_pool(
            "burst-pool",
            PoolConfig {
                limit: Budget::usd(5.00),
                window: Duration::from_secs(3600),
            },
        ))
        .unwrap();
    });
}

#[resilient(max = 1, timeout = "60s", max_cost = "0.002usd")]
async fn in_workflow(i: u64) -> Result<Reply, ApiError> {
    // Long enough that the whole burst is admitted before the first answer is in.
    tokio::time::sleep(Duration::from_millis(20)).await;
    Ok(Reply(cost(i)))
}

#[resilient(max = 1, pool = "burst-pool", max_cost = "0.002usd")]
async fn in_pool(i: u64) -> Result<Reply, ApiError> {
    // Long enough that the whole burst is admitted before the first answer is in.
    tokio::time::sleep(Duration::from_millis(20)).await;
    Ok(Reply(cost(i)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_calls_at_once_never_pass_a_workflow_cap() {
    let ((), spent) = workflow(Budget::usd(3.00), async {
        let scope = Workflow::current().expect("inside the workflow");
        let mut calls = JoinSet::new();
        for i in 0..CALLS {
            calls.spawn(scope.clone().scope(in_workflow(i)));
        }
        let mut answered = 0;
        while let Some(done) = calls.join_next().await {
            answered += u64::from(done.unwrap().is_ok());
        }
        assert!(answered > 1_000, "the cap admitted {answered} calls");
        assert!(answered < CALLS, "the cap refused some");
    })
    .await;
    assert!(
        spent.micros() <= 3_002_000,
        "spent {spent} of a $3.00 workflow"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_calls_at_once_never_pass_a_pool() {
    setup();
    let mut calls = JoinSet::new();
    for i in 0..CALLS {
        calls.spawn(in_pool(i));
    }
    while calls.join_next().await.is_some() {}
    let spent = pool("burst-pool").ledger().total();
    assert!(spent.micros() <= 5_002_000, "spent {spent} of a $5.00 pool");
    assert!(spent.micros() > 2_500_000, "the pool was used: {spent}");
}

// ---- an unknown-cost site takes turns ----

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
static MOST: AtomicUsize = AtomicUsize::new(0);

#[resilient(max = 1, timeout = "60s")]
async fn unmeasured(first_wave: Arc<AtomicUsize>) -> Result<Reply, ApiError> {
    let now = IN_FLIGHT.fetch_add(1, Ordering::SeqCst) + 1;
    if first_wave.load(Ordering::SeqCst) == 0 {
        MOST.fetch_max(now, Ordering::SeqCst);
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    first_wave.fetch_add(1, Ordering::SeqCst);
    Ok(Reply(Spend::from_micros(1_000)))
}

#[tokio::test(start_paused = true)]
async fn a_site_nobody_measured_admits_one_attempt_at_a_time_until_one_says_its_cost() {
    let done = Arc::new(AtomicUsize::new(0));
    let ((), spent) = workflow(Budget::usd(0.02), async {
        let calls: Vec<_> = (0..50).map(|_| unmeasured(done.clone())).collect();
        let results = futures::future::join_all(calls).await;
        let answered = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(answered, 20, "$0.02 holds exactly 20 answers of $0.001");
    })
    .await;
    assert_eq!(
        MOST.load(Ordering::SeqCst),
        1,
        "the first attempt ran alone"
    );
    assert_eq!(spent, Spend::from_micros(20_000));
}
