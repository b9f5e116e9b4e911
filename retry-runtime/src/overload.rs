//! The admission rate a breaker switches on while its provider is overloaded: attempts go no
//! faster than the provider has been answering them, in arrival order, each waiting for its
//! slot (a GCRA schedule: one slot every `1 / rate` seconds).
//!
//! Why a rate and not a concurrency limit: a saturated provider answers at its capacity
//! whatever we send; anything sent faster only lengthens its queue, and a long queue is what
//! makes a slowdown metastable (a provider whose service slows as its backlog grows never
//! catches up). Admitting at the rate it answers keeps its queue where it is. A concurrency
//! limit derived from latency (Gradient2, Vegas) cannot tell slower service from queueing,
//! and halves itself into idleness when the provider's service slows.
//!
//! Off (the usual case) it costs one atomic load per attempt.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::clock::{from_ns, now_ns, to_ns};

/// How long an attempt may wait for its slot (or less, if its deadline comes first).
pub const MAX_WAIT: Duration = Duration::from_secs(5);

/// The rate and its schedule.
#[derive(Debug, Default)]
pub struct RateGate {
    // Nanoseconds between slots; 0: off.
    interval_ns: AtomicU64,
    // The next free slot, nanoseconds on the runtime clock.
    next_ns: AtomicU64,
}

impl RateGate {
    /// A gate that is off.
    pub const fn new() -> Self {
        Self {
            interval_ns: AtomicU64::new(0),
            next_ns: AtomicU64::new(0),
        }
    }

    /// The rate now (attempts a second), if the gate is on.
    pub fn rate(&self) -> Option<f64> {
        match self.interval_ns.load(Ordering::Acquire) {
            0 => None,
            ns => Some(1e9 / ns as f64),
        }
    }

    /// Admit at most `per_sec` attempts a second from now on (at least one every 10 s).
    pub fn set(&self, per_sec: f64) {
        let per_sec = if per_sec.is_finite() {
            per_sec.max(0.1)
        } else {
            0.1
        };
        let ns = (1e9 / per_sec).round().max(1.0) as u64;
        self.interval_ns.store(ns, Ordering::Release);
    }

    /// Admit freely again.
    pub fn off(&self) {
        self.interval_ns.store(0, Ordering::Release);
    }

    /// Wait for a slot, unless it would come after `latest`: then `Err(())` at once, and no
    /// slot is taken. Returns how long the attempt waited (zero when the gate is off).
    pub async fn admit(&self, latest: Option<Instant>) -> Result<Duration, ()> {
        let interval = self.interval_ns.load(Ordering::Acquire);
        if interval == 0 {
            return Ok(Duration::ZERO);
        }
        let now = now_ns();
        let latest_ns = latest.map(to_ns);
        let mut slot = 0;
        let taken = self
            .next_ns
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |next| {
                slot = next.max(now);
                match latest_ns {
                    Some(latest) if slot > latest => None,
                    _ => Some(slot.saturating_add(interval)),
                }
            });
        if taken.is_err() {
            return Err(());
        }
        if slot > now {
            tokio::time::sleep_until(from_ns(slot)).await;
        }
        Ok(Duration::from_nanos(slot - now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn slots_come_at_the_rate_and_a_late_one_is_refused_untaken() {
        let g = RateGate::new();
        assert_eq!(g.admit(None).await, Ok(Duration::ZERO), "off");
        g.set(2.0);
        let start = Instant::now();
        for _ in 0..4 {
            g.admit(None).await.unwrap();
        }
        assert_eq!(start.elapsed(), Duration::from_millis(1500));
        // The next slot is 500 ms away: refused with a bound of 100 ms, and not taken.
        let soon = Instant::now() + Duration::from_millis(100);
        assert_eq!(g.admit(Some(soon)).await, Err(()));
        let waited = g.admit(None).await.unwrap();
        assert_eq!(waited, Duration::from_millis(500));
        g.off();
        assert_eq!(g.rate(), None);
    }
}
