//! A call's own billed failures are a floor for what its next attempt is expected to cost: with
//! `budget = "0.10usd"` and every failed attempt billed $0.04, the call makes exactly two
//! attempts ($0.08) instead of a third that takes it to $0.12. (The site's estimate alone,
//! learnt from successes, is zero before the first success.)

use retry_runtime::{
    observe, resilient, Classify, ErrorClass, Metered, Rejected, Spend, StopReason,
};

#[derive(Debug)]
enum Billed {
    Overloaded,
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
            Billed::Overloaded => ErrorClass::Status(503),
            Billed::Runtime(r) => r.class(),
        }
    }
    fn spend(&self) -> Spend {
        match self {
            Billed::Overloaded => Spend::from_micros(40_000),
            Billed::Runtime(_) => Spend::ZERO,
        }
    }
}

struct Answer;

impl Metered for Answer {
    fn spend(&self) -> Spend {
        Spend::from_micros(1_000)
    }
}

#[resilient(max = 5, base = "10ms", budget = "0.10usd")]
async fn always_billed_failure() -> Result<Answer, Billed> {
    Err(Billed::Overloaded)
}

#[tokio::test(start_paused = true)]
async fn billed_failures_bound_the_next_attempt() {
    let (result, report) = observe(always_billed_failure()).await;
    assert!(matches!(result, Err(Billed::Overloaded)));
    assert_eq!(report.attempts().len(), 2, "{report}");
    assert_eq!(report.spent(), Spend::from_micros(80_000));
    assert!(
        matches!(report.stop(), Some(StopReason::BudgetExhausted { .. })),
        "{:?}",
        report.stop()
    );
}
