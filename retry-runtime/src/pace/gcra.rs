//! GCRA: the pure bucket arithmetic.

use std::time::Duration;

use super::{clamp_u64, NS_PER_MIN, NS_PER_SEC};

/// One GCRA bucket (a token bucket kept as a single "theoretical arrival time"), pure
/// integer arithmetic on nanoseconds: in any window of length `t` it admits at most
/// `t / interval + burst` units.
///
/// ```
/// use retry_runtime::pace::Gcra;
///
/// // 10 units a second, a burst of 3.
/// let mut bucket = Gcra::new(100_000_000, 3);
/// let t0 = 1_000_000_000;
/// for _ in 0..3 {
///     assert_eq!(bucket.earliest(t0, 1), t0); // the burst goes at once
///     bucket.take(t0, 1);
/// }
/// assert_eq!(bucket.earliest(t0, 1), t0 + 100_000_000); // then one every 100 ms
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    interval_ns: u64,
    burst: u64,
    tat_ns: u64,
}

impl Gcra {
    /// A bucket admitting one unit per `interval_ns` (at least 1) with a burst of `burst`
    /// units (at least 1), full.
    pub const fn new(interval_ns: u64, burst: u64) -> Self {
        Self {
            interval_ns: if interval_ns == 0 { 1 } else { interval_ns },
            burst: if burst == 0 { 1 } else { burst },
            tat_ns: 0,
        }
    }

    /// A bucket for `per_minute` units a minute (at least 1) whose burst is what the rate
    /// earns in `burst` (at least one unit).
    pub fn per_minute(per_minute: u64, burst: Duration) -> Self {
        let per_minute = per_minute.max(1);
        let units = u128::from(per_minute) * burst.as_nanos() / u128::from(NS_PER_MIN);
        Self::new(NS_PER_MIN / per_minute, clamp_u64(units))
    }

    /// Nanoseconds per unit.
    pub const fn interval_ns(&self) -> u64 {
        self.interval_ns
    }

    /// Units that may go at once.
    pub const fn burst(&self) -> u64 {
        self.burst
    }

    /// The theoretical arrival time: when the bucket is full again.
    pub const fn tat_ns(&self) -> u64 {
        self.tat_ns
    }

    /// Units per second.
    pub fn per_sec(&self) -> f64 {
        NS_PER_SEC as f64 / self.interval_ns as f64
    }

    fn units_ns(&self, units: u64) -> u128 {
        u128::from(units) * u128::from(self.interval_ns)
    }

    /// The earliest time at or after `ready_ns` at which `units` conform. A request heavier
    /// than the burst conforms when the bucket is full (and leaves it in debt).
    pub fn earliest(&self, ready_ns: u64, units: u64) -> u64 {
        let w = units.min(self.burst);
        let tolerance = self.units_ns(self.burst - w);
        let conform = clamp_u64(u128::from(self.tat_ns).saturating_sub(tolerance));
        conform.max(ready_ns)
    }

    /// When a request of `units` would conform behind a line of requests weighing `ahead`
    /// units in total, all served one after the other from `now_ns` without gaps.
    pub fn project(&self, now_ns: u64, ahead: u64, units: u64) -> u64 {
        let level = u128::from(self.tat_ns.max(now_ns));
        let own = units.min(self.burst);
        let end = (level + self.units_ns(ahead) + self.units_ns(own))
            .saturating_sub(self.units_ns(self.burst));
        clamp_u64(end).max(now_ns)
    }

    /// Charge `units` admitted at `at_ns` (which should conform: see [`Gcra::earliest`]).
    pub fn take(&mut self, at_ns: u64, units: u64) {
        self.tat_ns = clamp_u64(u128::from(self.tat_ns.max(at_ns)) + self.units_ns(units));
    }

    /// Correct an earlier charge by `delta` units: more (positive) pushes later requests
    /// back, less (negative) gives the difference back.
    pub fn adjust(&mut self, delta: i64) {
        let ns = self.units_ns(delta.unsigned_abs());
        self.tat_ns = if delta >= 0 {
            clamp_u64(u128::from(self.tat_ns) + ns)
        } else {
            clamp_u64(u128::from(self.tat_ns).saturating_sub(ns))
        };
    }

    /// Change the rate at `now_ns`: the units still owed are owed at the new rate.
    pub fn set_interval(&mut self, now_ns: u64, interval_ns: u64) {
        let interval_ns = interval_ns.max(1);
        if self.tat_ns > now_ns {
            let owed = u128::from(self.tat_ns - now_ns) * u128::from(interval_ns)
                / u128::from(self.interval_ns);
            self.tat_ns = clamp_u64(u128::from(now_ns) + owed);
        }
        self.interval_ns = interval_ns;
    }

    /// Change the burst (at least 1).
    pub fn set_burst(&mut self, burst: u64) {
        self.burst = burst.max(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = NS_PER_SEC;
    const MS: u64 = 1_000_000;

    #[test]
    fn gcra_spaces_after_the_burst_and_refills() {
        let mut b = Gcra::new(100 * MS, 3);
        let t0 = 10 * S;
        for _ in 0..3 {
            assert_eq!(b.earliest(t0, 1), t0);
            b.take(t0, 1);
        }
        assert_eq!(b.earliest(t0, 1), t0 + 100 * MS);
        // Idle for a second: the burst is back, no more.
        let t1 = t0 + S;
        for _ in 0..3 {
            assert_eq!(b.earliest(t1, 1), t1);
            b.take(t1, 1);
        }
        assert_eq!(b.earliest(t1, 1), t1 + 100 * MS);
    }

    #[test]
    fn gcra_projection_matches_serving_one_by_one() {
        let mut b = Gcra::new(100 * MS, 4);
        let now = 5 * S;
        b.take(now, 2);
        // Nine ahead (one of them heavier than the burst), then this one.
        let weights = [1, 1, 6, 1, 1, 2, 1, 1, 1, 3];
        let ahead: u64 = weights[..9].iter().sum();
        let projected = b.project(now, ahead, 3);
        let mut sim = b;
        let mut at = now;
        for w in weights {
            at = sim.earliest(at, w);
            sim.take(at, w);
        }
        assert_eq!(projected, at);
    }

    #[test]
    fn gcra_heavy_request_goes_when_full_and_leaves_debt() {
        let mut b = Gcra::new(MS, 1000); // 1000 tokens/s, burst 1000
        let t0 = 10 * S;
        assert_eq!(b.earliest(t0, 5000), t0);
        b.take(t0, 5000);
        // 5 s of debt: the next token conforms once the bucket is back to one token's room.
        assert_eq!(b.earliest(t0, 1), t0 + 5 * S - 999 * MS);
        b.adjust(-4000); // it really used 1000: the whole burst, so one token's wait
        assert_eq!(b.earliest(t0, 1), t0 + MS);
    }

    #[test]
    fn gcra_rate_change_rescales_what_is_owed() {
        let mut b = Gcra::new(100 * MS, 1);
        b.take(S, 1);
        b.take(S, 1); // owes until S + 200 ms
        b.set_interval(S, 200 * MS);
        assert_eq!(b.tat_ns(), S + 400 * MS);
    }

    #[test]
    fn per_minute_rounds_the_burst_down_but_keeps_one() {
        let b = Gcra::per_minute(600, Duration::from_secs(1));
        assert_eq!((b.interval_ns(), b.burst()), (100 * MS, 10));
        let b = Gcra::per_minute(30, Duration::from_secs(1));
        assert_eq!((b.interval_ns(), b.burst()), (2 * S, 1));
    }
}
