//! Tests that share a breaker name do not leak its state into each other when each runs in
//! `testing::isolated`: the outage test leaves its breaker open, the happy-path test (in the
//! same binary, in either order, on another thread) sees a closed one of its own.

mod common;

use common::{fail, ok, ApiError, ScriptedProvider};
use retry_runtime::testing::isolated;
use retry_runtime::{breaker, observe, resilient, BreakerState, StopReason};

#[resilient(max = 1, breaker = "shared-between-tests")]
async fn complete(provider: &ScriptedProvider) -> Result<String, ApiError> {
    provider.call().await
}

#[tokio::test(start_paused = true)]
async fn an_outage_test_opens_its_breaker() {
    isolated(async {
        // The default breaker opens on a run of `failures` (10) outage failures.
        let run = breaker("shared-between-tests").config().failures;
        let provider = ScriptedProvider::new((0..run).map(|_| fail(ApiError::status(503))));
        for _ in 0..run {
            let _ = complete(&provider).await;
        }
        assert_eq!(breaker("shared-between-tests").state(), BreakerState::Open);
        let (_, report) = observe(complete(&provider)).await;
        assert!(matches!(
            report.stop(),
            Some(StopReason::CircuitOpen { .. })
        ));
        // Let the other test run meanwhile on its thread, whatever the order.
        tokio::task::yield_now().await;
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn the_happy_path_test_sees_a_closed_breaker() {
    isolated(async {
        let provider = ScriptedProvider::new([ok("fine"), ok("fine"), ok("fine")]);
        for _ in 0..3 {
            let (answer, report) = observe(complete(&provider)).await;
            assert_eq!(answer.unwrap(), "fine");
            assert_eq!(report.stop(), Some(&StopReason::Success));
        }
        assert_eq!(
            breaker("shared-between-tests").state(),
            BreakerState::Closed
        );
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn isolation_scopes_do_not_share_and_outside_is_the_process_wide_entry() {
    let a = isolated(async { breaker("shared-between-tests") as *const _ as usize }).await;
    let b = isolated(async { breaker("shared-between-tests") as *const _ as usize }).await;
    let outside = breaker("shared-between-tests") as *const _ as usize;
    assert_ne!(a, b);
    assert_ne!(a, outside);
    assert_ne!(b, outside);
}
