//! What a breaker does with its regime ([`crate::regime`]): counting each attempt's end,
//! assessing once a second, and what the assessment sets (the retry allowance, the admission
//! rate) or opens; and the run of failures that opens it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::{duration_ms, Breaker, BreakerState, Transition, TIME_MASK};
use crate::classify::ErrorClass;
use crate::clock::now_ms;
use crate::overload::RateGate;
use crate::regime::{Change, Regime, Seen, Tracker};

impl Breaker {
    /// What the breaker believes its provider is going through (always `Healthy` without
    /// `adaptive`). See [`crate::regime`].
    pub fn regime(&self) -> Regime {
        self.regime.regime()
    }

    #[doc(hidden)]
    /// The admission rate, on while the provider is overloaded.
    pub fn rate_gate(&self) -> &RateGate {
        &self.rate_gate
    }

    /// The rate attempts are admitted at while the regime is an overload read from latency
    /// or timeouts (`None`: no limit). See [`crate::regime`].
    pub fn admission_rate(&self) -> Option<f64> {
        self.rate_gate.rate()
    }

    /// The regime's tracker: its signals and belief, for tests and dashboards.
    pub fn regime_tracker(&self) -> &Tracker {
        &self.regime
    }

    #[doc(hidden)]
    /// Count an attempt's end for the regime (with `adaptive`), and assess once a second:
    /// returns a change of regime, and the transition if the assessment opened the breaker
    /// (an outage-level failure share, or an overload that persists).
    pub fn observe(
        &self,
        first: bool,
        failure: Option<ErrorClass>,
        started: Instant,
    ) -> (Option<Change>, Option<Transition>) {
        if !self.config.adaptive {
            return (None, None);
        }
        let Some(class) = failure else {
            // The happy path: an increment, and a clock read for the sampled latencies only.
            if !self.regime.success(first) {
                return (None, None);
            }
            let now = Instant::now();
            let now_ms = crate::clock::to_ns(now) / 1_000_000;
            let latency = duration_ms(now.saturating_duration_since(started));
            self.regime.latency(now_ms, latency);
            return self.assess(now_ms);
        };
        let now_ms = now_ms();
        self.regime.observe(now_ms, first, seen_failure(class));
        self.assess(now_ms)
    }

    #[doc(hidden)]
    /// [`Breaker::observe`] at a time of the caller's choosing, with the attempt's latency:
    /// for tests that drive a breaker without a runtime. Every success's latency is counted.
    pub fn observe_at(
        &self,
        first: bool,
        failure: Option<ErrorClass>,
        latency: Duration,
        now_ms: u64,
    ) -> (Option<Change>, Option<Transition>) {
        if !self.config.adaptive {
            return (None, None);
        }
        let seen = match failure {
            None => Seen::Success {
                latency_ms: duration_ms(latency),
            },
            Some(class) => seen_failure(class),
        };
        self.regime.observe(now_ms, first, seen);
        self.assess(now_ms)
    }

    #[doc(hidden)]
    /// An admission at `now_ms` (the gate read the clock for it): assess if a second has
    /// passed, so that the regime is read while only successes come (they read no clock).
    #[inline]
    pub fn tick(&self, now_ms: u64) -> (Option<Change>, Option<Transition>) {
        if !self.config.adaptive || !self.regime.due(now_ms) {
            return (None, None);
        }
        self.assess(now_ms)
    }

    /// Once a second: the regime's assessment, and what it sets here.
    fn assess(&self, now_ms: u64) -> (Option<Change>, Option<Transition>) {
        let Some(assessed) = self.regime.assess_now(now_ms) else {
            return (None, None);
        };
        self.retry_budget
            .set_ratio_ppm(assessed.belief.allowance_ppm);
        match assessed.belief.admit_rate {
            Some(rate) => self.rate_gate.set(rate),
            None => self.rate_gate.off(),
        }
        let transition = if assessed.opens && self.load().state == BreakerState::Closed {
            let until = now_ms.saturating_add(duration_ms(self.config.cooldown));
            self.update(|s| ((), s.forced_open(until, now_ms))).1
        } else {
            None
        };
        let change = assessed.change;
        (change, transition)
    }

    #[doc(hidden)]
    /// An answer (a success, or a failure that does not count) ends the run of failures.
    #[inline]
    pub fn end_run(&self) {
        if self.run.load(Ordering::Relaxed) != 0 {
            self.run.store(0, Ordering::Relaxed);
        }
    }

    /// Count a failure into the run; true if the run is now long enough to open.
    pub(super) fn extend_run(&self, now_ms: u64) -> bool {
        const SHIFT: u32 = 40;
        let window = duration_ms(self.config.window);
        let (mut began, mut run) = (false, 0);
        let _ = self
            .run
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
                let (count, last) = (bits >> SHIFT, bits & TIME_MASK);
                began = count == 0 || now_ms.saturating_sub(last) >= window;
                run = if began {
                    1
                } else {
                    (count + 1).min((1 << 23) - 1)
                };
                Some((run << SHIFT) | (now_ms & TIME_MASK))
            });
        if began {
            let required = if self.config.adaptive {
                crate::regime::run_to_open(
                    self.regime.share_before_run(now_ms),
                    self.config.failures,
                )
            } else {
                self.config.failures.max(1)
            };
            self.run_to_open
                .store(u64::from(required), Ordering::Release);
        }
        run >= self.run_to_open.load(Ordering::Acquire)
    }
}

/// How the regime counts a failed attempt: a 429 (or 529) is throttling, an outage-class
/// failure a failure, anything else (a caller fault) an answer.
fn seen_failure(class: ErrorClass) -> Seen {
    match class {
        ErrorClass::Status(429) | ErrorClass::Status(529) => Seen::Throttled,
        class if class.is_outage() => Seen::Failed {
            timeout: class == ErrorClass::Timeout,
        },
        _ => Seen::Answered,
    }
}
