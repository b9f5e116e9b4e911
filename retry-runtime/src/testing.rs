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
