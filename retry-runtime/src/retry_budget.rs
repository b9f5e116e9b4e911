//! The retry budget: a fleet of callers may add at most the retry allowance of extra load in
//! retries.
//!
//! Finagle / gRPC style. Every first attempt deposits; every retry withdraws one. Over the
//! last `WINDOW_SECS` seconds a retry is allowed while
//!
//! ```text
//! retries + 1 <= allowance * first_attempts + min_retries_per_sec * WINDOW_SECS
//! ```
//!
//! The allowance is `retry_ratio` where the breaker is not `adaptive`; otherwise it is what
//! the breaker's regime sets it to each second ([`crate::regime`]): raised in a brownout,
//! halved in an overload.
//!
//! All arithmetic is integer: the ratio is held in parts per million, so no float drift, and
//! counts live in per-second buckets of one `AtomicU64` each (second and count packed), so the
//! first attempt's deposit is one CAS: no lock, no allocation.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::BreakerConfig;
use crate::regime::{add as add_at, count_within, pack, unpack};

/// Seconds of history the budget looks at (Finagle's default TTL; the regime's window too).
pub const WINDOW_SECS: u64 = crate::regime::WINDOW_SECS;
const BUCKETS: usize = WINDOW_SECS as usize;
const PPM: u64 = 1_000_000;

/// A per-breaker retry budget. See the module docs for the rule.
#[derive(Debug)]
pub struct RetryBudget {
    ratio_ppm: AtomicU64,
    floor_per_window: u64,
    first_attempts: [AtomicU64; BUCKETS],
    retries: [AtomicU64; BUCKETS],
}

impl RetryBudget {
    /// A budget with the config's `retry_ratio` and `min_retries_per_sec`.
    pub fn new(config: &BreakerConfig) -> Self {
        Self {
            ratio_ppm: AtomicU64::new(config.retry_ratio_ppm),
            floor_per_window: u64::from(config.min_retries_per_sec) * WINDOW_SECS,
            first_attempts: Default::default(),
            retries: Default::default(),
        }
    }

    /// Count a first attempt (a deposit).
    pub fn deposit(&self, now_ms: u64) {
        add(&self.first_attempts, now_ms / 1000, 1);
    }

    /// Ask for one retry; `true` (and the retry is counted) if the budget allows it.
    pub fn try_withdraw(&self, now_ms: u64) -> bool {
        let second = now_ms / 1000;
        // Withdraw first, then check: two racing retries cannot both take the last token.
        add(&self.retries, second, 1);
        let retries = sum(&self.retries, second);
        let firsts = sum(&self.first_attempts, second);
        if allowed(retries, firsts, self.ratio_ppm(), self.floor_per_window) {
            true
        } else {
            sub(&self.retries, second);
            false
        }
    }

    /// The allowance now: retries per first attempt, parts per million.
    pub fn ratio_ppm(&self) -> u64 {
        self.ratio_ppm.load(Ordering::Acquire)
    }

    /// Set the allowance (the breaker's regime does, once a second).
    pub fn set_ratio_ppm(&self, ppm: u64) {
        self.ratio_ppm.store(ppm, Ordering::Release);
    }

    /// The floor: retries always allowed per window.
    pub fn floor_per_window(&self) -> u64 {
        self.floor_per_window
    }

    /// (first attempts, retries) in the current window, for reports and tests.
    pub fn window_counts(&self, now_ms: u64) -> (u64, u64) {
        let second = now_ms / 1000;
        (
            sum(&self.first_attempts, second),
            sum(&self.retries, second),
        )
    }
}

/// The budget rule, pure: may the window hold `retries` (this one included)?
pub fn allowed(retries: u64, first_attempts: u64, ratio_ppm: u64, floor: u64) -> bool {
    let earned =
        u128::from(first_attempts) * u128::from(ratio_ppm) + u128::from(floor) * u128::from(PPM);
    u128::from(retries) * u128::from(PPM) <= earned
}

fn add(buckets: &[AtomicU64; BUCKETS], second: u64, n: u64) {
    add_at(&buckets[(second % WINDOW_SECS) as usize], second, n);
}

fn sub(buckets: &[AtomicU64; BUCKETS], second: u64) {
    let slot = &buckets[(second % WINDOW_SECS) as usize];
    let _ = slot.fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
        let (at, count) = unpack(bits);
        (at == second && count > 0).then(|| pack(at, count - 1))
    });
}

fn sum(buckets: &[AtomicU64; BUCKETS], second: u64) -> u64 {
    buckets
        .iter()
        .map(|b| count_within(b, second, WINDOW_SECS))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(ratio: f64, floor: u32) -> RetryBudget {
        RetryBudget::new(&BreakerConfig {
            retry_ratio_ppm: (ratio * 1e6) as u64,
            min_retries_per_sec: floor,
            ..BreakerConfig::default()
        })
    }

    #[test]
    fn ratio_of_first_attempts_plus_floor() {
        let b = budget(0.2, 1);
        for _ in 0..100 {
            b.deposit(0);
        }
        let allowed = (0..1000).filter(|_| b.try_withdraw(500)).count();
        // 20% of 100 plus 1/s over a 10 s window.
        assert_eq!(allowed, 20 + 10);
        assert_eq!(b.window_counts(500), (100, 30));
    }

    #[test]
    fn the_window_rolls() {
        let b = budget(0.5, 0);
        for _ in 0..10 {
            b.deposit(0);
        }
        assert_eq!((0..10).filter(|_| b.try_withdraw(0)).count(), 5);
        // 10 s later the deposits and withdrawals have aged out: nothing earned, nothing left.
        assert!(!b.try_withdraw(10_000));
        b.deposit(10_000);
        b.deposit(10_000);
        assert!(b.try_withdraw(10_500));
        assert!(!b.try_withdraw(10_600));
    }

    #[test]
    fn no_float_drift_at_odd_ratios() {
        // 0.1 is not representable in binary floating point; in ppm it is exact.
        assert!(allowed(1, 10, 100_000, 0));
        assert!(!allowed(2, 10, 100_000, 0));
        assert!(allowed(3, 30, 100_000, 0));
    }
}
