//! Aids for testing code that uses `#[resilient]`.
//!
//! All waiting goes through `tokio::time`, so `#[tokio::test(start_paused = true)]` runs a
//! policy's backoff instantly while `tokio::time::Instant` still measures it exactly.

/// Make jitter repeat exactly: from now on, calls started on this thread (and on threads that
/// draw their first jitter after this) see the same delays for the same seed.
///
/// Each call takes its own seed from the thread's sequence when it starts retrying, so a
/// call's delays depend only on the seed and on how many calls retried before it on this
/// thread. On a current-thread runtime (paused-time tests) that is fully deterministic.
///
/// ```
/// retry_runtime::testing::seed_jitter(42);
/// ```
pub fn seed_jitter(seed: u64) {
    crate::backoff::seed(seed);
}

/// The runtime clock in milliseconds, as breakers, retry budgets, pools and pacers see it
/// (`tokio::time`, so paused time in tests). For diagnostics in tests of windowed limits.
pub fn clock_ms() -> u64 {
    crate::clock::now_ms()
}

/// Run `fut` with breakers, pools and pacers of its own: every `#[resilient]` call (and every
/// `breaker(name)`, `pool(name)`, `pacer(name)`) inside it gets entries that belong to this
/// scope alone, under the names the code uses, created from the configuration as usual. Two
/// tests in one binary that share a breaker name then cannot leak its state into each other,
/// whatever order they run in.
///
/// The scope is task-local: a task spawned inside `fut` is not in it (wrap its future too).
///
/// ```
/// use retry_runtime::{breaker, testing::isolated, BreakerState};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let inside = isolated(async { breaker("doc-isolated") as *const _ }).await;
/// let outside = breaker("doc-isolated") as *const _;
/// assert_ne!(inside, outside);
/// assert_eq!(breaker("doc-isolated").state(), BreakerState::Closed);
/// # }
/// ```
pub fn isolated<F: std::future::Future>(fut: F) -> impl std::future::Future<Output = F::Output> {
    crate::registry::isolated(fut)
}

/// Turn retries off (or back on) for the whole process: every call then makes one attempt and
/// returns its result with no backoff (`StopReason::AttemptsExhausted` for a failure). The
/// environment variable `RETRY_RUNTIME_NO_RETRIES=1` does the same from the start, for a
/// whole test run.
pub fn set_retries(enabled: bool) {
    crate::policy::set_retries(enabled);
}
