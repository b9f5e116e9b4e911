//! Backoff formulas (Marc Brooker, "Exponential Backoff And Jitter") and the seedable jitter
//! source.
//!
//! With `n` the retry number (0 before the second attempt), `exp(n) = min(cap, base * 2^n)`:
//!
//! | formula | delay |
//! |---|---|
//! | `Exp` | `exp(n)` |
//! | `ExpJitter` (full jitter) | `U(0, exp(n))` |
//! | `EqualJitter` | `exp(n)/2 + U(0, exp(n)/2)` |
//! | `DecorrelatedJitter` | `min(cap, U(base, prev * 3))`, `prev` starting at `base` |
//! | `Constant` | `base` |
//!
//! All arithmetic is on whole nanoseconds and saturates, so no policy can overflow.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};

/// Which formula spaces the retries. The attribute spells them `"exp_jitter"`,
/// `"equal_jitter"`, `"decorrelated_jitter"`, `"exp"`, `"constant"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backoff {
    /// Full jitter: `U(0, min(cap, base * 2^n))`. The default: it spreads a fleet's retries
    /// the most, so a synchronized failure does not come back as a synchronized retry.
    ExpJitter,
    /// `exp/2 + U(0, exp/2)`: never shorter than half the exponential delay.
    EqualJitter,
    /// `min(cap, U(base, prev * 3))`: each delay grows from the previous one.
    DecorrelatedJitter,
    /// Plain exponential, no jitter: `min(cap, base * 2^n)`. Callers that failed together
    /// retry together; use only where there is one caller.
    Exp,
    /// Always `base`.
    Constant,
}

impl Backoff {
    /// Every formula, in the order the attribute's docs list them (and
    /// `retry_grammar::policy::BACKOFFS` spells them).
    pub const ALL: [Backoff; 5] = [
        Backoff::ExpJitter,
        Backoff::EqualJitter,
        Backoff::DecorrelatedJitter,
        Backoff::Exp,
        Backoff::Constant,
    ];

    /// The attribute spelling of this formula.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Backoff::ExpJitter => "exp_jitter",
            Backoff::EqualJitter => "equal_jitter",
            Backoff::DecorrelatedJitter => "decorrelated_jitter",
            Backoff::Exp => "exp",
            Backoff::Constant => "constant",
        }
    }

    /// The range `[low, high]` that the delay before retry `retry` (0-based) lies in, given
    /// the previous delay (`prev`, used by decorrelated jitter; pass `base` for the first).
    pub fn bounds(
        &self,
        retry: u32,
        base: Duration,
        cap: Duration,
        prev: Duration,
    ) -> (Duration, Duration) {
        let (base, cap) = (nanos(base), nanos(cap).max(nanos(base)));
        let exp = exp_nanos(retry, base, cap);
        let (low, high) = match self {
            Backoff::Exp => (exp, exp),
            Backoff::ExpJitter => (0, exp),
            Backoff::EqualJitter => (exp / 2, exp),
            Backoff::DecorrelatedJitter => {
                let high = nanos(prev).saturating_mul(3).max(base);
                (base.min(cap), high.min(cap))
            }
            Backoff::Constant => (base, base),
        };
        (Duration::from_nanos(low), Duration::from_nanos(high))
    }

    /// The delay before retry `retry` (0-based), drawing jitter from `jitter`.
    pub fn delay(
        &self,
        retry: u32,
        base: Duration,
        cap: Duration,
        prev: Duration,
        jitter: &mut Jitter,
    ) -> Duration {
        let (low, high) = self.bounds(retry, base, cap, prev);
        match self {
            // Equal jitter is exp/2 + U(0, exp/2), i.e. uniform over [exp/2, exp].
            Backoff::ExpJitter | Backoff::EqualJitter => {
                Duration::from_nanos(jitter.between(nanos(low), nanos(high)))
            }
            // Brooker's formula caps the draw, not the range: once `3 * prev` passes the cap,
            // a share of the delays sits at the cap (drawing under the cap instead made the
            // Brooker experiment finish 8% sooner than the published simulator's).
            Backoff::DecorrelatedJitter => {
                let base = nanos(base);
                let uncapped = nanos(prev).saturating_mul(3).max(base);
                Duration::from_nanos(jitter.between(base, uncapped)).min(high)
            }
            Backoff::Exp | Backoff::Constant => low,
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn exp_nanos(retry: u32, base: u64, cap: u64) -> u64 {
    let factor = 1u64.checked_shl(retry.min(63)).unwrap_or(u64::MAX);
    base.saturating_mul(factor).min(cap)
}

/// The seedable random source jitter is drawn from: `rand`'s [`SmallRng`] (xoshiro256++ on
/// 64-bit targets), small and fast; not for cryptography. The same seed gives the same
/// sequence (for one version of `rand` on one target width).
#[derive(Debug, Clone)]
pub struct Jitter {
    rng: SmallRng,
}

impl Jitter {
    /// A source that yields the same sequence for the same seed.
    pub fn from_seed(seed: u64) -> Self {
        Self {
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }

    /// A uniform integer in `[low, high]` (inclusive); `low` when `high <= low`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        if high <= low {
            return low;
        }
        self.rng.random_range(low..=high)
    }

    /// A fresh source for one call. Each call draws its own seed from the thread's sequence,
    /// so a call's delays do not depend on how other calls interleave with it.
    pub(crate) fn for_call() -> Self {
        THREAD_SEQUENCE.with(|seq| Jitter::from_seed(seq.borrow_mut().next_u64()))
    }
}

/// Seed for threads that start drawing jitter after `testing::seed_jitter` was called, and
/// the marker that none was set (then each thread seeds itself from the OS).
static PROCESS_SEED: AtomicU64 = AtomicU64::new(UNSEEDED);
const UNSEEDED: u64 = 0;

thread_local! {
    static THREAD_SEQUENCE: RefCell<SmallRng> = RefCell::new(initial_thread_rng());
}

fn initial_thread_rng() -> SmallRng {
    match PROCESS_SEED.load(Ordering::Relaxed) {
        // Unseeded: from the OS, so two processes (or threads) started together do not jitter
        // in lock-step; from the clock if the OS has no randomness to give (never a panic).
        UNSEEDED => SmallRng::try_from_os_rng().unwrap_or_else(|_| {
            let clock = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            SmallRng::seed_from_u64(clock)
        }),
        seed => SmallRng::seed_from_u64(seed),
    }
}

/// Reset this thread's jitter sequence (and that of threads started later) to `seed`.
pub(crate) fn seed(seed: u64) {
    // 0 is the "unseeded" marker; any other value maps to itself.
    let seed = if seed == UNSEEDED { 0x5eed } else { seed };
    PROCESS_SEED.store(seed, Ordering::Relaxed);
    THREAD_SEQUENCE.with(|seq| *seq.borrow_mut() = SmallRng::seed_from_u64(seed));
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn exp_doubles_then_caps() {
        let base = 100 * MS;
        let cap = 1000 * MS;
        let d: Vec<_> = (0..6)
            .map(|n| Backoff::Exp.bounds(n, base, cap, base).0)
            .collect();
        assert_eq!(
            d,
            vec![100 * MS, 200 * MS, 400 * MS, 800 * MS, 1000 * MS, 1000 * MS]
        );
    }

    #[test]
    fn huge_retry_numbers_saturate_at_cap() {
        let (lo, hi) = Backoff::Exp.bounds(200, Duration::from_secs(1), Duration::MAX, MS);
        assert_eq!(lo, hi);
        assert_eq!(hi, Duration::from_nanos(u64::MAX));
    }

    #[test]
    fn jittered_delays_stay_in_bounds() {
        let mut j = Jitter::from_seed(7);
        let base = 50 * MS;
        let cap = 2000 * MS;
        let mut prev = base;
        for kind in [
            Backoff::ExpJitter,
            Backoff::EqualJitter,
            Backoff::DecorrelatedJitter,
        ] {
            for n in 0..12 {
                let (lo, hi) = kind.bounds(n, base, cap, prev);
                let d = kind.delay(n, base, cap, prev, &mut j);
                assert!(
                    lo <= d && d <= hi,
                    "{kind:?} n={n}: {d:?} not in {lo:?}..={hi:?}"
                );
                prev = d;
            }
        }
    }

    #[test]
    fn decorrelated_caps_the_draw_as_brooker_does() {
        // min(cap, U(base, 3 * prev)) with 3 * prev = 3 s and cap = 1 s: about 2/3 of the
        // draws land above the cap, so about 2/3 of the delays are exactly the cap.
        let mut j = Jitter::from_seed(11);
        let (base, cap, prev) = (10 * MS, 1000 * MS, 1000 * MS);
        let at_cap = (0..3000)
            .filter(|_| Backoff::DecorrelatedJitter.delay(9, base, cap, prev, &mut j) == cap)
            .count();
        assert!(
            (1900..=2100).contains(&at_cap),
            "{at_cap} of 3000 at the cap"
        );
    }

    #[test]
    fn equal_jitter_is_at_least_half() {
        let (lo, hi) = Backoff::EqualJitter.bounds(2, 100 * MS, Duration::from_secs(9), MS);
        assert_eq!((lo, hi), (200 * MS, 400 * MS));
    }

    #[test]
    fn decorrelated_grows_from_previous() {
        let (lo, hi) =
            Backoff::DecorrelatedJitter.bounds(5, 100 * MS, Duration::from_secs(9), 700 * MS);
        assert_eq!((lo, hi), (100 * MS, 2100 * MS));
        let (lo, hi) =
            Backoff::DecorrelatedJitter.bounds(5, 100 * MS, Duration::from_secs(1), 700 * MS);
        assert_eq!((lo, hi), (100 * MS, 1000 * MS));
    }

    #[test]
    fn same_seed_same_sequence() {
        let a: Vec<u64> = {
            let mut j = Jitter::from_seed(42);
            (0..5).map(|_| j.between(0, 1000)).collect()
        };
        let b: Vec<u64> = {
            let mut j = Jitter::from_seed(42);
            (0..5).map(|_| j.between(0, 1000)).collect()
        };
        assert_eq!(a, b);
        assert!(a.iter().any(|&x| x != a[0]), "not constant: {a:?}");
    }

    #[test]
    fn full_jitter_is_roughly_uniform() {
        let mut j = Jitter::from_seed(1);
        let n = 100_000;
        let mean = (0..n).map(|_| j.between(0, 1000) as f64).sum::<f64>() / n as f64;
        assert!((mean - 500.0).abs() < 5.0, "mean {mean}");
    }
}
