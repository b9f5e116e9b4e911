//! Measurements: the rate requests are granted at, the provider's refill rate bounded from
//! its headers, and what one rate-limit window's numbers say.

use std::time::Duration;

use super::NS_PER_SEC;

// The measured send rate: granted requests in SLOTS slots of SLOT_NS.
const SLOTS: usize = 20;
const SLOT_NS: u64 = 100_000_000;
// The minimum of the header-derived rate bounds is kept per HINT_WINDOW_NS (two windows).
const HINT_WINDOW_NS: u64 = 5 * NS_PER_SEC;

/// Requests granted over the last two seconds, in 100 ms slots: the measured send rate.
#[derive(Debug, Clone, Default)]
pub(super) struct SendRate {
    slots: [u32; SLOTS],
    // The slot number (ns / SLOT_NS) of the newest slot written.
    newest: u64,
    first_ns: Option<u64>,
}

impl SendRate {
    fn advance(&mut self, now_ns: u64) {
        let slot = now_ns / SLOT_NS;
        if slot > self.newest {
            let stale = (slot - self.newest).min(SLOTS as u64);
            for i in 1..=stale {
                self.slots[((self.newest + i) % SLOTS as u64) as usize] = 0;
            }
            self.newest = slot;
        }
    }

    pub(super) fn record(&mut self, now_ns: u64) {
        self.advance(now_ns);
        self.first_ns.get_or_insert(now_ns);
        let slot = &mut self.slots[(self.newest % SLOTS as u64) as usize];
        *slot = slot.saturating_add(1);
    }

    /// Requests per second over the window (or over the time since the first request, when
    /// that is shorter, but at least one second).
    pub(super) fn per_sec(&mut self, now_ns: u64) -> f64 {
        self.advance(now_ns);
        let Some(first) = self.first_ns else {
            return 0.0;
        };
        let count: u64 = self.slots.iter().map(|&c| u64::from(c)).sum();
        let window = (SLOTS as u64 * SLOT_NS).min(now_ns.saturating_sub(first).max(NS_PER_SEC));
        count as f64 * NS_PER_SEC as f64 / window as f64
    }
}

/// The smallest upper bound on the provider's refill rate seen in the last two windows.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct HintRate {
    current: Option<(u64, f64)>,
    previous: Option<(u64, f64)>,
}

impl HintRate {
    pub(super) fn observe(&mut self, now_ns: u64, bound: f64) {
        match self.current {
            Some((since, min)) if now_ns.saturating_sub(since) < HINT_WINDOW_NS => {
                self.current = Some((since, min.min(bound)));
            }
            _ => {
                self.previous = self.current;
                self.current = Some((now_ns, bound));
            }
        }
    }

    pub(super) fn estimate(&self, now_ns: u64) -> Option<f64> {
        let fresh = |w: Option<(u64, f64)>| {
            w.filter(|&(since, _)| now_ns.saturating_sub(since) < 2 * HINT_WINDOW_NS)
                .map(|(_, min)| min)
        };
        match (fresh(self.current), fresh(self.previous)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// What the provider's numbers say about one window: (upper bound on its refill rate per
/// second, how long until it has room for one more unit if it has none).
pub(super) fn read_window(
    limit: Option<u64>,
    remaining: Option<u64>,
    reset: Option<Duration>,
) -> Window {
    let mut out = Window::default();
    if let (Some(limit), Some(remaining), Some(reset)) = (limit, remaining, reset) {
        if remaining < limit && !reset.is_zero() {
            out.rate_bound = Some((limit - remaining) as f64 / reset.as_secs_f64());
        }
    }
    if remaining == Some(0) {
        out.empty_for = reset;
    }
    out
}

#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Window {
    pub(super) rate_bound: Option<f64>,
    pub(super) empty_for: Option<Duration>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = NS_PER_SEC;
    const MS: u64 = 1_000_000;

    #[test]
    fn send_rate_counts_the_last_two_seconds() {
        let mut r = SendRate::default();
        for i in 0..40 {
            r.record(S + i * 100 * MS); // 10/s for 4 s
        }
        assert!((r.per_sec(5 * S) - 10.0).abs() < 0.51);
        assert_eq!(r.per_sec(8 * S), 0.0);
    }
}
