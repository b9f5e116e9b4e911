//! Spend budgets through real `#[resilient]` functions: per call, per workflow, per pool.
//! Configuration is process-wide and set once: every test here uses its own pool names.

mod common;

use common::Reply;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use retry_runtime::{
    configure, observe, pool, resilient, workflow, Budget, BudgetScope, Classify, Config,
    ErrorClass, PoolConfig, Rejected, Spend, StopReason, Workflow,
};

const S: Duration = Duration::from_secs(1);

fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let p = |usd: f64, window: Duration| PoolConfig {
            limit: Budget::usd(usd),
            window,
        };
        configure(Config::default().with_pool("concurrent", p(40.0, 3600 * S)))
            .expect("configured once");
    });
}

/// An error that knows what the failed attempt was billed.
#[derive(Debug, Clone, PartialEq)]
enum Billed {
    Status(u16, Spend),
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
            Billed::Status(code, _) => ErrorClass::Status(*code),
            Billed::Runtime(r) => r.class(),
        }
    }
    fn spend(&self) -> Spend {
        match self {
            Billed::Status(_, spend) => *spend,
            Billed::Runtime(_) => Spend::ZERO,
        }
    }
}

const CENTS_2: Spend = Spend::from_micros(20_000);

#[resilient(max = 10, base = "1s", budget = "0.05usd")]
async fn capped(fail: bool, calls: &AtomicUsize) -> Result<Reply, Billed> {
    calls.fetch_add(1, Ordering::SeqCst);
    if fail {
        // A timeout after streaming started: billed, and retryable.
        return Err(Billed::Status(504, CENTS_2));
    }
    Ok(Reply(CENTS_2))
}

#[tokio::test(start_paused = true)]
async fn a_call_budget_stops_retries_before_the_attempt_that_would_exceed_it() {
    let calls = AtomicUsize::new(0);
    // One success teaches the call site that an attempt costs about $0.02.
    assert!(capped(false, &calls).await.is_ok());

    calls.store(0, Ordering::SeqCst);
    let (out, report) = observe(capped(true, &calls)).await;
    assert_eq!(out, Err(Billed::Status(504, CENTS_2)));
    // $0.02 spent + $0.02 expected fits $0.05; $0.04 + $0.02 does not.
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(report.spent(), Spend::from_micros(40_000));
    assert_eq!(
        report.stop(),
        Some(&StopReason::BudgetExhausted {
            scope: BudgetScope::Call,
            spent: Spend::from_micros(40_000),
            limit: Budget::micros(50_000),
        })
    );
    assert_eq!(report.budget_stop(), Some(BudgetScope::Call));
    let per_attempt: Vec<_> = report.attempts().iter().map(|a| a.spend).collect();
    assert_eq!(per_attempt, vec![CENTS_2, CENTS_2]);
}

#[resilient(max = 3, timeout = "10s")]
async fn answer(cost: Spend, calls: &AtomicUsize) -> Result<Reply, Billed> {
    calls.fetch_add(1, Ordering::SeqCst);
    Ok(Reply(cost))
}

#[tokio::test(start_paused = true)]
async fn a_workflow_budget_stops_calls_inside_it() {
    let calls = AtomicUsize::new(0);
    let cost = Spend::from_micros(30_000);
    let (results, spent) = workflow(Budget::usd(0.10), async {
        let mut results = Vec::new();
        for _ in 0..5 {
            results.push(observe(answer(cost, &calls)).await);
        }
        results
    })
    .await;
    // $0.03 each: three fit in $0.10; the fourth would not, and is refused unsent.
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(spent, Spend::from_micros(90_000));
    assert!(results[..3].iter().all(|(r, _)| r.is_ok()));
    for (out, report) in &results[3..] {
        assert!(matches!(
            out,
            Err(Billed::Runtime(Rejected::BudgetExhausted {
                scope: BudgetScope::Workflow,
                ..
            }))
        ));
        assert_eq!(report.budget_stop(), Some(BudgetScope::Workflow));
        assert!(report.attempts().is_empty());
    }
}

#[tokio::test(start_paused = true)]
async fn nested_workflows_only_tighten_and_spawned_tasks_carry_the_scope() {
    let calls = AtomicUsize::new(0);
    let cost = Spend::from_micros(30_000);
    let ((inner_spent, spawned_ok), outer_spent) = workflow(Budget::usd(1.00), async {
        // The inner scope allows $0.05: one call, not two, though the outer has room.
        let ((), inner_spent) = workflow(Budget::usd(0.05), async {
            assert!(answer(cost, &calls).await.is_ok());
            assert!(answer(cost, &calls).await.is_err());
        })
        .await;
        // A spawned task is inside the outer scope only if it is carried there.
        let scope = Workflow::current().unwrap();
        let spawned = tokio::spawn(scope.scope(async move {
            let calls = AtomicUsize::new(0);
            answer(Spend::from_micros(10_000), &calls).await.is_ok()
        }));
        (inner_spent, spawned.await.unwrap())
    })
    .await;
    assert!(spawned_ok);
    assert_eq!(inner_spent, cost);
    assert_eq!(outer_spent, Spend::from_micros(40_000));
}

#[resilient(max = 2, base = "10ms", pool = "concurrent", timeout = "10s")]
async fn concurrent(charge: u64, in_flight: &InFlight) -> Result<Reply, Billed> {
    in_flight.enter();
    tokio::task::yield_now().await;
    in_flight.leave();
    Ok(Reply(Spend::from_micros(charge)))
}

#[derive(Default)]
struct InFlight {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl InFlight {
    fn enter(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
    }
    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_concurrent_calls_lose_no_spend_and_overshoot_only_in_flight() {
    setup();
    let in_flight = Arc::new(InFlight::default());
    let max_charge = 10_000u64; // $0.01
    let reported = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..10_000u64)
        .map(|i| {
            let (in_flight, reported) = (in_flight.clone(), reported.clone());
            // Deterministic "random" charges in 1..=max_charge.
            let charge = 1 + (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) % max_charge;
            tokio::spawn(async move {
                let (_, report) = observe(concurrent(charge, &in_flight)).await;
                reported.fetch_add(report.spent().micros(), Ordering::SeqCst);
                report
            })
        })
        .collect();
    let mut refused = 0;
    for t in tasks {
        if t.await.unwrap().budget_stop().is_some() {
            refused += 1;
        }
    }
    let total = pool("concurrent").ledger().total().micros();
    let limit = 40_000_000u64;
    let max_in_flight = in_flight.max.load(Ordering::SeqCst) as u64;
    println!(
        "10,000 calls: pool total {total} micro-USD = reports {}; limit {limit}; {refused} refused; at most {max_in_flight} in flight",
        reported.load(Ordering::SeqCst)
    );
    assert_eq!(total, reported.load(Ordering::SeqCst), "no lost updates");
    assert!(
        refused > 0,
        "the $40 limit is below the ~$50 offered, so some are refused"
    );
    assert!(
        total <= limit + max_in_flight * max_charge,
        "{total} exceeds {limit} by more than {max_in_flight} attempts in flight"
    );
}
