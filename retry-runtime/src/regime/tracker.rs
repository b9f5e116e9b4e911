//! The counters a breaker's regime is read from, and the once-a-second assessment over them.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

use super::{
    assess, next_belief, overload_opens, ratio, Belief, Regime, Signals, Tuning, Why,
    FAILING_SHARE, MIN_SAMPLES, RECENT_SECS, WINDOW_SECS,
};
use crate::config::BreakerConfig;

const BUCKETS: usize = WINDOW_SECS as usize;

/// How an attempt ended, as the regime counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// A success, with its latency in milliseconds.
    Success {
        /// The attempt's latency.
        latency_ms: u64,
    },
    /// An answer that is not an outage failure (a caller fault: the provider is up).
    Answered,
    /// An outage-class failure; `timeout` if the attempt was cut by its timeout.
    Failed {
        /// Cut by its timeout.
        timeout: bool,
    },
    /// A 429.
    Throttled,
}

// Counter fields of a bucket, `pack`ed counts but for LATENCY (see `add_ok`). Successes
// reach FIRST_OK and RETRY_OK through the pending counters, flushed once a second.
const FIRST_OK: usize = 0;
const FIRST_FAILED: usize = 1;
const RETRY_OK: usize = 2;
const RETRY_FAILED: usize = 3;
const THROTTLED: usize = 4;
const TIMEOUTS: usize = 5;
// Answers that are not successes (caller faults), first attempts or retries alike.
const ANSWERED: usize = 6;
// Sampled successes and their latency, one word.
const LATENCY: usize = 7;
const FIELDS: usize = 8;

/// A second's first this-many successes have their latency sampled, then one in
/// [`LATENCY_SAMPLE_EVERY`]: all of them at low volume, and at high volume one clock read per
/// eight successes instead of one each.
pub const LATENCY_SAMPLE_FIRST: u64 = 16;
/// See [`LATENCY_SAMPLE_FIRST`].
pub const LATENCY_SAMPLE_EVERY: u64 = 8;

// The latency field: `second mod 2^24 << 40 | count << 24 | latency sum (ms)`, each part
// saturating (65 535 samples and 4.6 hours of latency per second).
const OK_SECOND_MASK: u64 = (1 << 24) - 1;
const OK_COUNT_MAX: u64 = (1 << 16) - 1;
const OK_LATENCY_MAX: u64 = (1 << 24) - 1;

fn pack_ok(second: u64, count: u64, latency_ms: u64) -> u64 {
    ((second & OK_SECOND_MASK) << 40)
        | (count.min(OK_COUNT_MAX) << 24)
        | latency_ms.min(OK_LATENCY_MAX)
}

fn unpack_ok(bits: u64) -> (u64, u64, u64) {
    (
        bits >> 40,
        (bits >> 24) & OK_COUNT_MAX,
        bits & OK_LATENCY_MAX,
    )
}

/// Count one latency sample in `second`: one CAS loop.
fn add_ok(slot: &AtomicU64, second: u64, latency_ms: u64) {
    let mut bits = slot.load(Ordering::Acquire);
    loop {
        let (at, count, sum) = unpack_ok(bits);
        let next = if at == second & OK_SECOND_MASK {
            pack_ok(second, count + 1, sum.saturating_add(latency_ms))
        } else {
            pack_ok(second, 1, latency_ms)
        };
        match slot.compare_exchange_weak(bits, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return,
            Err(actual) => bits = actual,
        }
    }
}

/// The latency field's (count, sum) if it was written within `secs` seconds up to
/// `second` (its second is kept modulo 2^24: compared as a wrapping difference).
fn ok_within(slot: &AtomicU64, second: u64, secs: u64) -> (u64, u64) {
    let (at, count, sum) = unpack_ok(slot.load(Ordering::Acquire));
    if (second & OK_SECOND_MASK).wrapping_sub(at) & OK_SECOND_MASK < secs {
        (count, sum)
    } else {
        (0, 0)
    }
}

/// A regime change, for the breaker's event and the report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Change {
    /// Before.
    pub from: Regime,
    /// After.
    pub to: Regime,
    /// Which signal decided.
    pub why: Why,
    /// The failure share over the window.
    pub failure_share: f64,
    /// The retry allowance now, parts per million.
    pub allowance_ppm: u64,
}

/// What an assessment came to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Assessed {
    /// The change of regime, if any.
    pub change: Option<Change>,
    /// Whether the breaker should open: an outage, or an overload that persists.
    pub opens: bool,
    /// The belief now.
    pub belief: Belief,
}

/// One breaker's regime: per-second counters and the belief, assessed once a second.
#[derive(Debug)]
pub struct Tracker {
    tuning: Tuning,
    buckets: [[AtomicU64; FIELDS]; BUCKETS],
    // The last second assessed (+1; 0 = never).
    assessed: AtomicU64,
    // The second the window's history begins (+1; 0 = nothing seen yet).
    since: AtomicU64,
    // Successes (first attempts, retries) not yet counted in a second: a success reads no
    // clock; the next assessment (or clocked observation) counts them in its second.
    pending: [AtomicU64; 2],
    regime: AtomicU8,
    allowance: AtomicU64,
    belief: Mutex<Belief>,
}

/// The second (on the runtime clock) and count, packed as `second << 32 | count`.
pub(crate) fn pack(second: u64, count: u64) -> u64 {
    (second << 32) | count.min(u64::from(u32::MAX))
}

/// The inverse of [`pack`].
pub(crate) fn unpack(bits: u64) -> (u64, u64) {
    (bits >> 32, bits & u64::from(u32::MAX))
}

/// Add `n` to a packed per-second counter; a counter last written in an older second starts
/// over.
pub(crate) fn add(slot: &AtomicU64, second: u64, n: u64) {
    let mut bits = slot.load(Ordering::Acquire);
    loop {
        let (at, count) = unpack(bits);
        let next = if at == second {
            pack(second, count.saturating_add(n))
        } else {
            pack(second, n)
        };
        match slot.compare_exchange_weak(bits, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return,
            Err(actual) => bits = actual,
        }
    }
}

/// A packed counter's count if it was written within `secs` seconds up to `second`.
pub(crate) fn count_within(slot: &AtomicU64, second: u64, secs: u64) -> u64 {
    let (at, count) = unpack(slot.load(Ordering::Acquire));
    if at <= second && second - at < secs {
        count
    } else {
        0
    }
}

impl Tracker {
    /// A tracker with the configuration's knobs, believing all is well.
    pub fn new(config: &BreakerConfig) -> Self {
        let tuning = Tuning::of(config);
        Self {
            tuning,
            buckets: Default::default(),
            assessed: AtomicU64::new(0),
            since: AtomicU64::new(0),
            pending: Default::default(),
            regime: AtomicU8::new(Regime::Healthy as u8),
            allowance: AtomicU64::new(tuning.base_ppm),
            belief: Mutex::new(Belief {
                allowance_ppm: tuning.base_ppm,
                ..Belief::default()
            }),
        }
    }

    /// The regime believed now.
    pub fn regime(&self) -> Regime {
        Regime::from_u8(self.regime.load(Ordering::Acquire))
    }

    /// The retry allowance now, retries per first attempt in parts per million.
    pub fn allowance_ppm(&self) -> u64 {
        self.allowance.load(Ordering::Acquire)
    }

    /// While overloaded: the attempts a second to admit.
    pub fn admission_rate(&self) -> Option<f64> {
        self.belief().admit_rate
    }

    /// The belief after the last assessment.
    pub fn belief(&self) -> Belief {
        *self.belief.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Count an attempt's end.
    pub fn observe(&self, now_ms: u64, first: bool, seen: Seen) {
        let second = now_ms / 1000;
        if self.since.load(Ordering::Relaxed) == 0 {
            let _ = self
                .since
                .compare_exchange(0, second + 1, Ordering::AcqRel, Ordering::Relaxed);
        }
        let bucket = &self.buckets[(second % WINDOW_SECS) as usize];
        match seen {
            Seen::Success { latency_ms } => {
                add(&bucket[if first { FIRST_OK } else { RETRY_OK }], second, 1);
                add_ok(&bucket[LATENCY], second, latency_ms);
            }
            Seen::Answered => add(&bucket[ANSWERED], second, 1),
            Seen::Failed { timeout } => {
                add(
                    &bucket[if first { FIRST_FAILED } else { RETRY_FAILED }],
                    second,
                    1,
                );
                if timeout {
                    add(&bucket[TIMEOUTS], second, 1);
                }
            }
            Seen::Throttled => add(&bucket[THROTTLED], second, 1),
        }
    }

    /// Count a success without reading the clock (it is counted in a second at the next
    /// assessment); returns whether to sample its latency ([`Tracker::latency`]).
    pub fn success(&self, first: bool) -> bool {
        let n = self.pending[usize::from(!first)].fetch_add(1, Ordering::AcqRel) + 1;
        n <= LATENCY_SAMPLE_FIRST || n.is_multiple_of(LATENCY_SAMPLE_EVERY)
    }

    /// A sampled success's latency, counted in the second it ended.
    pub fn latency(&self, now_ms: u64, latency_ms: u64) {
        let second = now_ms / 1000;
        add_ok(
            &self.buckets[(second % WINDOW_SECS) as usize][LATENCY],
            second,
            latency_ms,
        );
    }

    /// Count the pending successes in `now_ms`'s second.
    fn flush(&self, now_ms: u64) {
        let second = now_ms / 1000;
        for (pending, field) in self.pending.iter().zip([FIRST_OK, RETRY_OK]) {
            if pending.load(Ordering::Acquire) > 0 {
                let n = pending.swap(0, Ordering::AcqRel);
                if n > 0 {
                    if self.since.load(Ordering::Relaxed) == 0 {
                        let _ = self.since.compare_exchange(
                            0,
                            second + 1,
                            Ordering::AcqRel,
                            Ordering::Relaxed,
                        );
                    }
                    add(
                        &self.buckets[(second % WINDOW_SECS) as usize][field],
                        second,
                        n,
                    );
                }
            }
        }
    }

    /// Field `f` summed over the `secs` seconds up to `second`.
    fn sum(&self, f: usize, second: u64, secs: u64) -> u64 {
        self.buckets
            .iter()
            .map(|b| count_within(&b[f], second, secs))
            .sum()
    }

    /// The window's signals as of `now_ms`.
    pub fn signals(&self, now_ms: u64) -> Signals {
        let second = now_ms / 1000;
        let field = |f: usize, secs: u64| self.sum(f, second, secs);
        let (timed, latency) = self
            .buckets
            .iter()
            .map(|b| ok_within(&b[LATENCY], second, WINDOW_SECS))
            .fold((0, 0), |(c, l), (c2, l2)| (c + c2, l + l2));
        let first_ok = field(FIRST_OK, WINDOW_SECS);
        let retry_ok = field(RETRY_OK, WINDOW_SECS);
        Signals {
            // A caller fault is an answer (the provider is up): counted with first attempts.
            first_ok: first_ok + field(ANSWERED, WINDOW_SECS),
            first_failed: field(FIRST_FAILED, WINDOW_SECS),
            retry_ok,
            retry_failed: field(RETRY_FAILED, WINDOW_SECS),
            throttled: field(THROTTLED, WINDOW_SECS),
            timeouts: field(TIMEOUTS, WINDOW_SECS),
            window_ok: timed,
            window_latency_ms: latency,
            span_secs: match self.since.load(Ordering::Acquire) {
                0 => WINDOW_SECS,
                since => (second + 2).saturating_sub(since).clamp(1, WINDOW_SECS),
            },
        }
    }

    /// Whether `now_ms` is in a second not yet assessed (one load).
    #[inline]
    pub fn due(&self, now_ms: u64) -> bool {
        self.assessed.load(Ordering::Acquire) < now_ms / 1000 + 1
    }

    /// Assess, if this second has not been: one call a second does it (a CAS picks which).
    /// Returns `None` if it was not this call, else what came of it.
    pub fn assess_now(&self, now_ms: u64) -> Option<Assessed> {
        let tag = now_ms / 1000 + 1;
        let last = self.assessed.load(Ordering::Acquire);
        if last >= tag
            || self
                .assessed
                .compare_exchange(last, tag, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return None;
        }
        // Seconds with no assessment (no attempt ended) count as one: the signals are the
        // window's anyway.
        self.flush(now_ms);
        let signals = self.signals(now_ms);
        // Never a wait on the call's path: the CAS above makes this call the second's only
        // assessor, so the lock is free unless a reader (a test, `reset` as the breaker
        // closes) holds it this instant; then this second is simply not assessed.
        let mut belief = match self.belief.try_lock() {
            Ok(belief) => belief,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        let before = *belief;
        let why = assess(&signals, &before).map(|(_, why)| why);
        *belief = next_belief(&before, &signals, &self.tuning);
        let after = *belief;
        drop(belief);
        self.allowance.store(after.allowance_ppm, Ordering::Release);
        self.regime.store(after.regime as u8, Ordering::Release);
        let change = (after.regime != before.regime).then(|| Change {
            from: before.regime,
            to: after.regime,
            why: why.unwrap_or(Why::FailureShare),
            failure_share: signals.failure_share(),
            allowance_ppm: after.allowance_ppm,
        });
        Some(Assessed {
            change,
            opens: after.regime == Regime::Outage || overload_opens(&after, &signals),
            belief: after,
        })
    }

    /// Forget the window (the breaker closed after an outage: what it counted is over), and
    /// believe all is well again, keeping the latency baseline and the healthy load, and the
    /// failure share seen until now for the run rule.
    pub fn reset(&self, now_ms: u64) {
        let share = self.signals(now_ms).failure_share();
        self.since.store(now_ms / 1000 + 1, Ordering::Release);
        for pending in &self.pending {
            pending.store(0, Ordering::Release);
        }
        for bucket in &self.buckets {
            for slot in bucket {
                slot.store(0, Ordering::Release);
            }
        }
        let mut belief = self.belief.lock().unwrap_or_else(|p| p.into_inner());
        *belief = Belief {
            regime: Regime::Healthy,
            why: Why::FailureShare,
            for_secs: 0,
            brownout_share: None,
            admit_rate: None,
            allowance_ppm: self.tuning.base_ppm,
            share_at_reset: share.max(belief.share_at_reset),
            ..*belief
        };
        self.allowance
            .store(self.tuning.base_ppm, Ordering::Release);
        self.regime.store(Regime::Healthy as u8, Ordering::Release);
    }

    /// The failure share the run rule goes by as a run begins: the higher of the window's
    /// and the last [`RECENT_SECS`]' (a brownout that has just begun has not filled the
    /// window yet), or, while the window holds too few attempts since it was forgotten, the
    /// share before that.
    pub fn share_before_run(&self, now_ms: u64) -> f64 {
        self.flush(now_ms);
        let second = now_ms / 1000;
        let share = |secs: u64| {
            let field = |f: usize| self.sum(f, second, secs);
            // Without the run's own first failure, counted just before this is asked.
            let failed = (field(FIRST_FAILED) + field(RETRY_FAILED)).saturating_sub(1);
            let answered = failed + field(FIRST_OK) + field(RETRY_OK) + field(ANSWERED);
            // Under the failing share nothing was failing: the configured run decides.
            (answered >= MIN_SAMPLES).then(|| match ratio(failed, answered) {
                share if share < FAILING_SHARE => 0.0,
                share => share,
            })
        };
        match (share(WINDOW_SECS), share(RECENT_SECS)) {
            (Some(window), recent) => window.max(recent.unwrap_or(0.0)),
            // Too few to say (and mostly the run itself): what was seen before the reset.
            (None, _) => self.belief().share_at_reset,
        }
    }
}
