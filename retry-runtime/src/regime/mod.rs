//! What a breaker believes its provider is going through, and what it does about it.
//!
//! A failure count cannot tell a provider that fails at random (a brownout: retries pay) from
//! one that fails because it is saturated (an overload: retries make it worse) or one that is
//! down (an outage: nothing pays). Each breaker therefore reads four signals from the attempts
//! it sees, once a second over the last [`WINDOW_SECS`] seconds:
//!
//! - the **failure share**: outage-class failures (5xx, timeouts, transport) over the attempts
//!   the provider answered or failed; 429s are *throttling* and counted apart;
//! - the **latency gradient**: the mean latency of the window's successes over a slow
//!   baseline of it;
//! - the **load**: first attempts a second now, against what they were while all was well
//!   (first attempts are the callers' own load; retries are the runtime's answer to failures);
//! - **retry success**: how often retries succeed, against first attempts.
//!
//! From them, [`assess`] names a [`Regime`], first match wins:
//!
//! | regime | when | what the breaker does |
//! |---|---|---|
//! | `Outage` | failure share >= 90% | opens (and halves the retry allowance) |
//! | `Overload` | gradient >= 1.5, or timeouts >= 10% of attempts, or (failing, and) first attempts >= 1.25x their healthy rate, or retries succeed under half as often as first attempts, or the failure share rose 15 points while retries were raised | halves the retry allowance each second; read from latency or timeouts, admits attempts no faster than the provider answered them, 15% more ([`crate::overload`]); read from the provider (not from retries alone), opens after 10 s of overload with half the attempts failing |
//! | `Brownout` | failure share >= 5%, none of the above | raises the retry allowance by `retry_step` each second, up to `retry_ratio_max` |
//! | `Throttled` | 429s >= 5% of attempts | nothing here: the pacer and `Retry-After` answer a 429 |
//! | `Healthy` | otherwise | moves the allowance back to `retry_ratio` |
//!
//! The **retry allowance** is the retry budget's ratio ([`crate::retry_budget`]): retries
//! allowed per first attempt over the window, plus `min_retries_per_sec`. It moves by
//! additive increase and multiplicative decrease ([`next_allowance`]), as TCP's window does:
//! raised slowly while retries pay, halved at once when they hurt, never above
//! `retry_ratio_max`. A call's own `max` is never passed: the allowance only refuses retries.
//!
//! The constants and why:
//! - 1.5 for the gradient is Netflix Gradient2's `rttTolerance` (an overload read from it
//!   ends under 1.25); the gradient compares the window's mean success latency, with at
//!   least [`MIN_SAMPLES`] successes, so that one slow answer is not an overload. The
//!   baseline follows that mean with weight 0.05 a second (0.01 while overloaded, so that an
//!   overload is not learnt as normal within a minute).
//! - 90% for an outage: a 70% brownout's 10 s window at 5 attempts a second stays under 80%
//!   with probability above 99.9%.
//! - The load test uses first attempts only: retries rise with *any* failure, so they cannot
//!   say whether our load caused it. A brownout leaves first attempts where they were.
//! - Retry success under half of first-attempt success says failures are correlated (the
//!   same overloaded provider fails the retry too); a brownout fails them independently. It
//!   and the 15-point rise are read only beyond three standard errors: at 5 attempts a second
//!   a share over 10 s moves by 6 points by chance.
//! - The admission rate is 15% above what the provider answered while success latency holds
//!   (to find out that it can answer more), 15% under it while latency rises by 2% a second
//!   or more (the provider's queue is growing: let it drain). A rate cannot see queueing by
//!   itself: at 15% over a saturated provider's rate, its queue grows by 15% of it a second.
//! - The latency baseline and the healthy load are learnt from full windows only, for
//!   [`LEARN_SECS`] before either is compared against: a young window holds its fastest
//!   answers first.
//!
//! The breaker also opens on a **run** of outage failures with no answer between them
//! ([`run_to_open`]): `failures` long (30 by default) when failures were rare before the run,
//! longer when the window was already failing: long enough that a brownout at the share seen
//! before the run produces it with a chance under 1 in 10 million (at most 10 x `failures`).
//! A hard outage after health opens in `failures` attempts; a 70% brownout needs a run of 46,
//! which it all but never makes. `failures` itself is what protects the first seconds of a
//! brownout, before the window has seen it: a 70% brownout begins with 30 failures in a row
//! one time in 44 000.
//!
//! The counters are per-second buckets of packed atomics, as the retry budget's, no lock. A
//! success is one atomic increment and no clock read (counted in a second at the next
//! assessment); its latency is sampled, every success of a second's first 16 and then one in
//! 8 (a clock read and one CAS loop). A failure is a clock read and one or two CAS loops. The
//! assessment runs once a second, on whichever admission or failure comes first in a new
//! second.

use std::fmt;

use crate::config::BreakerConfig;

mod tracker;

pub(crate) use tracker::{add, count_within, pack, unpack};
pub use tracker::{Assessed, Change, Seen, Tracker, LATENCY_SAMPLE_EVERY, LATENCY_SAMPLE_FIRST};

/// Seconds of history the regime is read from (the retry budget's window too).
pub const WINDOW_SECS: u64 = 10;
/// Seconds of the latest attempts the run rule also reads the failure share from.
pub const RECENT_SECS: u64 = 3;

/// Fewer attempts than this in the window say nothing: the belief is kept.
pub const MIN_SAMPLES: u64 = 10;
/// Seconds of full windows the latency baseline and the healthy load must be learnt from
/// before an overload is read from them.
pub const LEARN_SECS: u64 = 10;
/// Below this failure share nothing is failing.
pub const FAILING_SHARE: f64 = 0.05;
/// At or above this failure share the provider is down.
pub const OUTAGE_SHARE: f64 = 0.9;
/// Success latency over its baseline at or above which the provider is saturated.
pub const LATENCY_TOLERANCE: f64 = 1.5;
/// ... and under which an overload read from latency is over.
pub const LATENCY_RECOVERED: f64 = 1.25;
/// Timeouts over attempts at or above which the provider is saturated.
pub const TIMEOUT_SHARE: f64 = 0.1;
/// First attempts a second over their healthy rate at or above which failures came with our
/// own load.
pub const LOAD_RISE: f64 = 1.25;
/// Retry success over first-attempt success under which failures are correlated.
pub const RETRY_SUCCESS_RATIO: f64 = 0.5;
/// How much the failure share may rise while retries are raised before the raise is undone.
pub const WORSE_WITH_RETRIES: f64 = 0.15;
/// 429s over attempts at or above which the provider is throttling.
pub const THROTTLED_SHARE: f64 = 0.05;
/// Seconds of overload, with [`OVERLOAD_OPEN_SHARE`] failing, after which the breaker opens.
pub const OVERLOAD_OPEN_SECS: u64 = 10;
/// The failure share a persisting overload opens the breaker at.
pub const OVERLOAD_OPEN_SHARE: f64 = 0.5;
/// How much faster than the provider answered an overloaded breaker admits: the room to
/// find out that it can answer more.
pub const RATE_PROBE: f64 = 0.15;
/// The slowest admission rate, attempts a second.
pub const MIN_RATE: f64 = 0.5;
/// The chance a brownout may have of producing the run of failures that opens the breaker.
pub const RUN_CHANCE: f64 = 1e-7;
/// The longest run that opens the breaker, in multiples of its `failures`.
pub const RUN_CAP: u32 = 10;

/// What a breaker believes its provider is going through. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum Regime {
    /// Nothing is failing.
    #[default]
    Healthy,
    /// The provider says "slow down" (429): the pacer's business, not the breaker's.
    Throttled,
    /// Failures at random, with the provider's latency as usual: retries pay.
    Brownout,
    /// The provider is saturated: retries make it worse and are shed.
    Overload,
    /// (Nearly) every attempt fails.
    Outage,
}

impl Regime {
    /// Every regime's [`as_str`](Self::as_str) name, in declaration order.
    pub const NAMES: &'static [&'static str] =
        &["healthy", "throttled", "brownout", "overload", "outage"];

    /// A short, stable name for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        Self::NAMES[*self as usize]
    }

    /// Whether retries are being shed in this regime.
    pub fn sheds(&self) -> bool {
        matches!(self, Regime::Overload | Regime::Outage)
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => Regime::Throttled,
            2 => Regime::Brownout,
            3 => Regime::Overload,
            4 => Regime::Outage,
            _ => Regime::Healthy,
        }
    }
}

impl fmt::Display for Regime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which signal decided the regime (the event's `why`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum Why {
    /// The failure share (outage, brownout) or its absence (healthy).
    #[default]
    FailureShare,
    /// Successes are slower than their baseline.
    Latency,
    /// Attempts time out.
    Timeouts,
    /// Failures came with a rise of our own first attempts.
    LoadRise,
    /// Retries succeed much less often than first attempts.
    RetriesFail,
    /// The failure share rose while retries were raised.
    WorseWithRetries,
    /// 429s.
    Throttling,
}

impl Why {
    /// A short, stable name for logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Why::FailureShare => "failure_share",
            Why::Latency => "latency",
            Why::Timeouts => "timeouts",
            Why::LoadRise => "load_rise",
            Why::RetriesFail => "retries_fail",
            Why::WorseWithRetries => "worse_with_retries",
            Why::Throttling => "throttling",
        }
    }
}

/// What a breaker saw over the window: the input of [`assess`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Signals {
    /// First attempts that succeeded (or got an answer that is not an outage failure).
    pub first_ok: u64,
    /// First attempts that failed with an outage-class failure.
    pub first_failed: u64,
    /// Retries that succeeded (or got an answer).
    pub retry_ok: u64,
    /// Retries that failed with an outage-class failure.
    pub retry_failed: u64,
    /// Attempts answered with a 429 (or the provider's "overloaded, slow down").
    pub throttled: u64,
    /// Attempts cut by their timeout (counted in the failed ones too).
    pub timeouts: u64,
    /// Successes over the whole window (their latency is summed below).
    pub window_ok: u64,
    /// Ditto, milliseconds.
    pub window_latency_ms: u64,
    /// Seconds of history the window holds: [`WINDOW_SECS`], or less in the first seconds
    /// of a breaker (or after it was forgotten). 0 is read as a full window.
    pub span_secs: u64,
}

impl Signals {
    /// Attempts the provider answered or failed (429s apart).
    pub fn answered(&self) -> u64 {
        self.first_ok + self.first_failed + self.retry_ok + self.retry_failed
    }

    /// Outage-class failures over answered attempts (0 with none).
    pub fn failure_share(&self) -> f64 {
        ratio(self.first_failed + self.retry_failed, self.answered())
    }

    /// First attempts a second over the window.
    pub fn firsts_per_sec(&self) -> f64 {
        (self.first_ok + self.first_failed) as f64 / self.span() as f64
    }

    /// Seconds of history the window holds.
    pub fn span(&self) -> u64 {
        match self.span_secs {
            0 => WINDOW_SECS,
            secs => secs.min(WINDOW_SECS),
        }
    }

    /// The mean latency of the window's successes, with enough of them to say.
    pub fn window_latency(&self) -> Option<f64> {
        (self.window_ok >= MIN_SAMPLES)
            .then(|| self.window_latency_ms as f64 / self.window_ok as f64)
    }
}

/// The standard error of the difference of two shares `p` of `n` and `q` of `m` attempts.
fn standard_error(p: f64, n: u64, q: f64, m: u64) -> f64 {
    let var = |share: f64, count: u64| share * (1.0 - share) / count.max(1) as f64;
    (var(p, n) + var(q, m)).sqrt()
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// What the breaker believed after its last assessment: the state [`assess`] reads besides
/// the signals.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Belief {
    /// The regime.
    pub regime: Regime,
    /// Which signal decided it.
    pub why: Why,
    /// Seconds it has lasted.
    pub for_secs: u64,
    /// Baseline success latency, milliseconds (0: not known yet).
    pub baseline_ms: f64,
    /// First attempts a second while healthy (0: not known yet).
    pub healthy_firsts: f64,
    /// Seconds of full windows the baseline and the healthy load were learnt from: neither
    /// is compared against before [`LEARN_SECS`].
    pub learnt_secs: u64,
    /// In a brownout that has lasted a window: the failure share then, against which a rise
    /// under raised retries is measured.
    pub brownout_share: Option<f64>,
    /// The retry allowance, retries per first attempt in parts per million.
    pub allowance_ppm: u64,
    /// While overloaded (read from latency or timeouts): the attempts a second to admit, the
    /// rate the provider answered at (plus [`RATE_PROBE`]).
    pub admit_rate: Option<f64>,
    /// The window's mean success latency at the last assessment (0: none), for its trend.
    pub last_latency_ms: f64,
    /// The failure share when the window was last forgotten (the breaker closed): what the
    /// run rule goes by until the window holds enough attempts again.
    pub share_at_reset: f64,
}

/// The knobs, from `[breaker.NAME]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// The allowance where nothing fails (`retry_ratio`).
    pub base_ppm: u64,
    /// Its ceiling (`retry_ratio_max`).
    pub max_ppm: u64,
    /// What a second of brownout adds, and a second of health moves back (`retry_step`).
    pub step_ppm: u64,
}

impl Tuning {
    /// The breaker configuration's knobs.
    pub fn of(config: &BreakerConfig) -> Self {
        Self {
            base_ppm: config.retry_ratio_ppm.min(config.retry_ratio_max_ppm),
            max_ppm: config.retry_ratio_max_ppm,
            step_ppm: config.retry_step_ppm,
        }
    }
}

/// The regime the signals show, and which signal decided; `None` when the window holds too
/// few attempts to say (the belief is kept).
pub fn assess(s: &Signals, belief: &Belief) -> Option<(Regime, Why)> {
    let answered = s.answered();
    if answered + s.throttled < MIN_SAMPLES {
        return None;
    }
    let fail = s.failure_share();
    if answered >= MIN_SAMPLES && fail >= OUTAGE_SHARE {
        return Some((Regime::Outage, Why::FailureShare));
    }
    if let Some(latency) = s.window_latency() {
        // Once overloaded by latency, it must fall back under a lower bar to leave.
        let tolerance = if belief.regime == Regime::Overload {
            LATENCY_RECOVERED
        } else {
            LATENCY_TOLERANCE
        };
        // Latencies are counted in whole milliseconds: a rise under one (a provider that
        // answers within the millisecond, whose baseline is 0) is below what they can show.
        if belief.learnt_secs >= LEARN_SECS
            && latency >= tolerance * belief.baseline_ms
            && latency - belief.baseline_ms >= 1.0
        {
            return Some((Regime::Overload, Why::Latency));
        }
    }
    if answered > 0 && ratio(s.timeouts, answered) >= TIMEOUT_SHARE {
        return Some((Regime::Overload, Why::Timeouts));
    }
    if fail >= FAILING_SHARE {
        if load_rose(s, belief) {
            return Some((Regime::Overload, Why::LoadRise));
        }
        let firsts = s.first_ok + s.first_failed;
        let retries = s.retry_ok + s.retry_failed;
        // Only once a brownout has lasted a window: at its start the window's first attempts
        // still hold the successes from before it. And only beyond chance (three standard
        // errors), which at low volume is most of what a share does.
        if belief.brownout_share.is_some() && firsts >= MIN_SAMPLES && retries >= MIN_SAMPLES {
            let first_success = ratio(s.first_ok, firsts);
            let retry_success = ratio(s.retry_ok, retries);
            if retry_success < RETRY_SUCCESS_RATIO * first_success
                && first_success - retry_success
                    > 3.0 * standard_error(first_success, firsts, retry_success, retries)
            {
                return Some((Regime::Overload, Why::RetriesFail));
            }
        }
        if let Some(before) = belief.brownout_share {
            let n = answered;
            if fail >= before + WORSE_WITH_RETRIES
                && fail - before > 3.0 * standard_error(before, n, fail, n)
            {
                return Some((Regime::Overload, Why::WorseWithRetries));
            }
        }
        return Some((Regime::Brownout, Why::FailureShare));
    }
    if ratio(s.throttled, answered + s.throttled) >= THROTTLED_SHARE {
        return Some((Regime::Throttled, Why::Throttling));
    }
    Some((Regime::Healthy, Why::FailureShare))
}

/// Whether first attempts rose well above their healthy rate: by [`LOAD_RISE`], and by more
/// than three standard deviations of a Poisson count at that rate (so that chance at low
/// volume does not look like a rise).
pub fn load_rose(s: &Signals, belief: &Belief) -> bool {
    if belief.learnt_secs < LEARN_SECS || belief.healthy_firsts <= 0.0 {
        return false;
    }
    let expected = belief.healthy_firsts * s.span() as f64;
    let seen = (s.first_ok + s.first_failed) as f64;
    seen >= LOAD_RISE * expected && seen >= expected + 3.0 * expected.sqrt()
}

/// The retry allowance after a second in `regime`: additive increase in a brownout up to the
/// ceiling, halved in an overload or outage, back toward the base otherwise.
pub fn next_allowance(allowance_ppm: u64, regime: Regime, t: &Tuning) -> u64 {
    let a = allowance_ppm.min(t.max_ppm);
    match regime {
        Regime::Brownout => a.saturating_add(t.step_ppm).min(t.max_ppm),
        Regime::Overload | Regime::Outage => a / 2,
        Regime::Healthy | Regime::Throttled if a > t.base_ppm => {
            a.saturating_sub(t.step_ppm).max(t.base_ppm)
        }
        Regime::Healthy | Regime::Throttled => a.saturating_add(t.step_ppm).min(t.base_ppm),
    }
}

/// The belief after a second: the assessed regime (or the old one, with too few samples),
/// the allowance, the latency baseline and the healthy load moved on.
pub fn next_belief(belief: &Belief, s: &Signals, t: &Tuning) -> Belief {
    let assessed = assess(s, belief);
    let (regime, why) = assessed.unwrap_or((belief.regime, Why::FailureShare));
    let mut next = Belief {
        regime,
        why: if assessed.is_some() { why } else { belief.why },
        for_secs: if regime == belief.regime {
            belief.for_secs.saturating_add(1)
        } else {
            0
        },
        allowance_ppm: next_allowance(belief.allowance_ppm, regime, t),
        ..*belief
    };
    // The baseline and the healthy load are learnt from full windows only (a young one says
    // too little, and its first successes are its fastest), as a plain mean at first.
    if s.span() == WINDOW_SECS && s.answered() >= MIN_SAMPLES {
        let learning = matches!(regime, Regime::Healthy | Regime::Throttled);
        let n = belief.learnt_secs.saturating_add(1);
        // A plain mean while learning (weight 1/n), the slow average after.
        let weight = |slow: f64| {
            if belief.learnt_secs < LEARN_SECS {
                (1.0 / n as f64).max(slow)
            } else {
                slow
            }
        };
        if let Some(latency) = s.window_latency() {
            if learning || belief.learnt_secs >= LEARN_SECS {
                next.baseline_ms = next_baseline(belief.baseline_ms, latency, regime, weight(0.0));
            }
        }
        if learning {
            next.healthy_firsts += weight(0.1) * (s.firsts_per_sec() - belief.healthy_firsts);
            next.learnt_secs = n;
        }
    }
    if s.answered() >= MIN_SAMPLES {
        next.share_at_reset = 0.0;
    }
    next.last_latency_ms = s.window_latency().unwrap_or(0.0);
    next.admit_rate = match (regime, why) {
        (Regime::Overload, Why::Latency | Why::Timeouts) => {
            let rising = match s.window_latency() {
                Some(now) => belief.last_latency_ms > 0.0 && now > belief.last_latency_ms * 1.02,
                None => false,
            };
            Some(admit_rate(s, rising))
        }
        // Too few samples to say: keep the rate the belief had.
        (Regime::Overload, _) if assessed.is_none() => belief.admit_rate,
        _ => None,
    };
    next.brownout_share = match regime {
        Regime::Brownout if belief.regime == Regime::Brownout => belief
            .brownout_share
            .or((next.for_secs >= WINDOW_SECS).then(|| s.failure_share())),
        _ => None,
    };
    next
}

/// The rate an overloaded breaker admits at: what the provider answered over the window, a
/// little more ([`RATE_PROBE`]) to find out whether it can answer more, or as much less while
/// success latency is `rising` (by 2% a second: the provider's queue is growing), at least
/// [`MIN_RATE`].
pub fn admit_rate(s: &Signals, rising: bool) -> f64 {
    let answered = (s.first_ok + s.retry_ok) as f64 / s.span() as f64;
    let probe = if rising { -RATE_PROBE } else { RATE_PROBE };
    (answered * (1.0 + probe)).max(MIN_RATE)
}

/// The success-latency baseline after a second whose mean success latency was `latency_ms`:
/// an average with weight 0.05 a second (0.01 in an overload, so that an overload is not
/// learnt as normal within a minute), or `at_least` while it is first being learnt.
pub fn next_baseline(baseline_ms: f64, latency_ms: f64, regime: Regime, at_least: f64) -> f64 {
    if baseline_ms <= 0.0 {
        return latency_ms;
    }
    let weight: f64 = if regime == Regime::Overload {
        0.01
    } else {
        0.05
    };
    baseline_ms + weight.max(at_least) * (latency_ms - baseline_ms)
}

/// How long a run of outage failures (with no answer between them) opens the breaker, when
/// `share_before` of the window's attempts were failing as the run began: see the module
/// docs.
pub fn run_to_open(share_before: f64, failures: u32) -> u32 {
    let failures = failures.max(1);
    let cap = failures.saturating_mul(RUN_CAP);
    if share_before.is_nan() || share_before <= 0.0 {
        return failures;
    }
    if share_before >= 1.0 {
        return cap;
    }
    let needed = (RUN_CHANCE.ln() / share_before.ln()).ceil();
    if needed >= f64::from(cap) {
        cap
    } else {
        (needed as u32).clamp(failures, cap)
    }
}

/// Whether a persisting overload should open the breaker now.
///
/// Only an overload read from the provider itself (latency, timeouts, our load) opens: one
/// read from retries alone (they fail more, or the share rose while they were raised) cuts
/// the allowance, which is its whole answer.
pub fn overload_opens(belief: &Belief, s: &Signals) -> bool {
    belief.regime == Regime::Overload
        && matches!(belief.why, Why::Latency | Why::Timeouts | Why::LoadRise)
        && belief.for_secs >= OVERLOAD_OPEN_SECS
        && s.failure_share() >= OVERLOAD_OPEN_SHARE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuning() -> Tuning {
        Tuning::of(&BreakerConfig::default())
    }

    fn signals(first_ok: u64, first_failed: u64, retry_ok: u64, retry_failed: u64) -> Signals {
        Signals {
            first_ok,
            first_failed,
            retry_ok,
            retry_failed,
            window_ok: first_ok + retry_ok,
            window_latency_ms: (first_ok + retry_ok) * 1000,
            ..Signals::default()
        }
    }

    fn healthy_belief() -> Belief {
        Belief {
            baseline_ms: 1000.0,
            healthy_firsts: 5.0,
            learnt_secs: LEARN_SECS,
            allowance_ppm: 200_000,
            ..Belief::default()
        }
    }

    #[test]
    fn a_provider_answering_within_the_millisecond_is_not_overloaded() {
        // Its successes count 0 ms, so its baseline is 0: equal latency is no rise.
        let fast = Belief {
            baseline_ms: 0.0,
            ..healthy_belief()
        };
        let same = Signals {
            window_latency_ms: 0,
            ..signals(50, 0, 0, 0)
        };
        assert_eq!(assess(&same, &fast).unwrap().0, Regime::Healthy);
        // A few 1 ms answers among them (a descheduled thread) are under the clock's step.
        let jitter = Signals {
            window_latency_ms: 5,
            ..same
        };
        let learnt = Belief {
            baseline_ms: 0.02,
            ..fast
        };
        assert_eq!(assess(&jitter, &learnt).unwrap().0, Regime::Healthy);
        // A rise the milliseconds do show still is one.
        let slower = Signals {
            window_latency_ms: 50 * 2,
            ..same
        };
        assert_eq!(
            assess(&slower, &learnt).unwrap(),
            (Regime::Overload, Why::Latency)
        );
    }

    #[test]
    fn the_four_kinds_are_told_apart() {
        let b = healthy_belief();
        assert_eq!(
            assess(&signals(50, 0, 0, 0), &b).unwrap().0,
            Regime::Healthy
        );
        // 70% fail, first attempts at their healthy rate, retries as good as first attempts.
        let brownout = signals(15, 35, 25, 60);
        assert_eq!(assess(&brownout, &b).unwrap().0, Regime::Brownout);
        assert_eq!(
            assess(&signals(0, 50, 0, 10), &b).unwrap().0,
            Regime::Outage
        );
        // The same failures with successes three times slower than usual.
        let slow = Signals {
            window_latency_ms: brownout.window_ok * 3000,
            ..brownout
        };
        assert_eq!(assess(&slow, &b).unwrap(), (Regime::Overload, Why::Latency));
        // The same failures when our first attempts doubled.
        let loaded = signals(30, 70, 25, 60);
        assert_eq!(
            assess(&loaded, &b).unwrap(),
            (Regime::Overload, Why::LoadRise)
        );
        let throttled = Signals {
            throttled: 20,
            ..signals(50, 0, 0, 0)
        };
        assert_eq!(assess(&throttled, &b).unwrap().0, Regime::Throttled);
        assert_eq!(assess(&signals(3, 2, 0, 0), &b), None, "too few to say");
    }

    #[test]
    fn the_allowance_rises_additively_and_falls_by_half() {
        let t = tuning();
        let mut a = t.base_ppm;
        for _ in 0..100 {
            a = next_allowance(a, Regime::Brownout, &t);
        }
        assert_eq!(a, t.max_ppm);
        assert_eq!(next_allowance(a, Regime::Overload, &t), t.max_ppm / 2);
        let mut back = t.max_ppm;
        for _ in 0..100 {
            back = next_allowance(back, Regime::Healthy, &t);
        }
        assert_eq!(back, t.base_ppm);
    }

    #[test]
    fn a_run_opens_sooner_after_health_than_in_a_brownout() {
        assert_eq!(run_to_open(0.0, 5), 5);
        assert_eq!(run_to_open(0.3, 5), 14);
        assert_eq!(run_to_open(0.3, 30), 30);
        assert_eq!(run_to_open(0.7, 30), 46);
        assert_eq!(run_to_open(0.99, 5), 50);
        assert_eq!(run_to_open(f64::NAN, 5), 5);
    }
}
