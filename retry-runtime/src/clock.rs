//! The runtime's one clock: `tokio::time`, so that every behaviour runs on paused time in
//! tests, with one epoch for every module that stores a time as a number.
//!
//! Times are counted from the first reading in the process plus a day: a paused runtime whose
//! clock started slightly before that first reading still gets distinct, correctly ordered
//! times instead of all saturating to zero. Breakers, ledgers and queues keep milliseconds;
//! the pacer keeps nanoseconds; both are the same count at two resolutions.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

const NS_PER_MS: u64 = 1_000_000;
const OFFSET_NS: u64 = 86_400 * 1_000_000_000;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// A stand-in for an instant nobody will read: the clock's origin, with no clock read (but
/// the process's first). A call whose start no deadline, breaker, pacer, report, event or
/// metric can see keeps this instead of reading the clock.
pub(crate) fn unread() -> Instant {
    epoch()
}

/// `at` in nanoseconds since the clock's origin.
pub(crate) fn to_ns(at: Instant) -> u64 {
    let epoch = epoch();
    let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    match at.checked_duration_since(epoch) {
        Some(after) => OFFSET_NS.saturating_add(ns(after)),
        None => OFFSET_NS.saturating_sub(ns(epoch.saturating_duration_since(at))),
    }
}

/// The instant `ns` nanoseconds after the clock's origin (the inverse of [`to_ns`]).
pub(crate) fn from_ns(ns: u64) -> Instant {
    let epoch = epoch();
    if ns >= OFFSET_NS {
        epoch + Duration::from_nanos(ns - OFFSET_NS)
    } else {
        epoch
            .checked_sub(Duration::from_nanos(OFFSET_NS - ns))
            .unwrap_or(epoch)
    }
}

/// Now, in nanoseconds.
pub(crate) fn now_ns() -> u64 {
    to_ns(Instant::now())
}

/// Now, in milliseconds.
pub(crate) fn now_ms() -> u64 {
    now_ns() / NS_PER_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_epoch_at_two_resolutions() {
        let a = now_ns();
        tokio::time::advance(Duration::from_millis(1500)).await;
        let b = now_ns();
        assert_eq!(b - a, 1_500_000_000);
        assert_eq!(now_ms(), b / NS_PER_MS);
        assert_eq!(to_ns(from_ns(b)), b);
        // Before the origin, still ordered.
        if let Some(earlier) = Instant::now().checked_sub(Duration::from_secs(3600)) {
            assert!(to_ns(earlier) < a);
        }
    }
}
