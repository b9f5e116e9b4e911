//! Pacing: keep under a provider's rate limit instead of bouncing off it.
//!
//! A [`Pacer`] is a named, shared, client-side rate limiter. Every attempt to the provider
//! first asks it for a [`Permit`] ([`Pacer::acquire`]); the pacer hands permits out no faster
//! than the provider is known (or believed) to accept requests, in arrival order, and tells a
//! caller at once when its deadline cannot be met.
//!
//! # The model
//!
//! A permit is granted when every active bucket admits it:
//!
//! * **Known limits** from [`PaceConfig`]: `rpm` (requests per minute, every request weighs
//!   one) and `tpm` (tokens per minute, a request weighs what the caller says it will use).
//!   Each is a GCRA ([`Gcra`], the "generic cell rate algorithm", a token bucket kept as one
//!   theoretical arrival time): in any window of length `t` it admits at most
//!   `rate × t + burst` units. The burst is `rate × PaceConfig::burst` (one second's worth by
//!   default, at least one unit): providers' per-minute limits tolerate that much, and it
//!   lets an idle client start without waiting. A request heavier than the whole burst (a
//!   50 000-token prompt against a small `tpm`) is admitted when the bucket is full and
//!   leaves it in debt, so it delays the next ones instead of waiting forever.
//! * **An adaptive request rate**, learned from the provider's answers (below). Its bucket
//!   has no burst (one request at a time, evenly spaced): a rate learned from an unknown
//!   provider says nothing about how bursty it may be.
//! * **The provider's own numbers**, when it sends rate-limit headers ([`ProviderLimits`],
//!   [`Pacer::on_hint`]): they cap the adaptive rate and the token rate, and `remaining = 0`
//!   holds every request until the provider has room again.
//!
//! # Adaptive rate: the law and its constants
//!
//! **The reference** is the adaptive retry mode of the AWS SDKs (botocore's
//! `ClientRateLimiter` and `CubicCalculator`). On a throttled answer the rate drops to `β × W`,
//! where `W` is the rate it was sent at (`min(measured send rate, current rate)`) and
//! `β = 0.7`. On a success it follows CUBIC, `r(t) = C × (t − K)³ + W`, with `C = 0.4`
//! (requests/s per s³) and `K = ∛(W × (1 − β) / C)` (when the curve is back at `W`), capped
//! at twice the measured send rate. The bucket is off until the first throttle and never
//! goes below 0.5 requests/s.
//!
//! Against a fixed limit that law oscillates. It is back at `W` after `K` (2 s at 10 req/s),
//! then its convex branch runs past the limit within a second or two. The result is a 30% cut
//! every few seconds, a 429 share of several percent and an average well under the limit.
//! This module keeps AWS's `β`, `C`, `K`, floor and cap, and changes what happens around
//! the ceiling:
//!
//! 1. **A plateau, then bounded probe steps.** After a cut, AWS's concave climb stops at
//!    a plateau of `PLATEAU = 0.97 × W` and rests there for a *hold*. Then the rate probes in
//!    steps: a cubic rise (same `C`) to `PROBE = 5%` above the plateau, held for a hold in
//!    its turn. A step that held becomes the new plateau, and the next step is twice as tall
//!    (5%, 10%, 20%… of the plateau, at most 100%). While under the rate the last 429 came at
//!    (the *ceiling*), steps stop at the ceiling. At the ceiling they go `PROBE` at a time.
//!    A step that holds past the ceiling means the limit rose: the ceiling is forgotten and
//!    the doubling starts over from 5%. This is CUBIC's shape (fast far from the ceiling,
//!    careful near it), made of held steps, so the overshoot when a step finds the limit is
//!    at most one small step.
//! 2. **What a 429 means depends on where the curve is:**
//!    * *probing* above the plateau: the step found the limit. The rate goes back to the
//!      plateau (the last rate that held).
//!    * *resting* on a plateau (one reached after a cut: for at least `HOLD_MIN`): the
//!      plateau is a little high. The rate goes back to the plateau before the last
//!      promotion if there was one, else it steps down to `BETA_REST = 0.95` of the plateau.
//!      A provider with a large burst lets a rate just over its limit through for a while,
//!      so a step can hold and still be too high.
//!    * *climbing* after a cut (or just arrived on its plateau): the ceiling is well under
//!      what the curve assumed. The rate takes AWS's cut, `β × W`, and climbs back towards
//!      `(1 + β) / 2 × W` only: TCP CUBIC's *fast convergence*. Without it, the climb after a
//!      cut nearly restores the rate before the next 429 arrives, and each round trims only
//!      ~10%.
//!    * the first 429: AWS's cut.
//!
//!    Each fall-back or step down doubles the hold (from `HOLD_MIN = 2 s` up to
//!    `HOLD_MAX = 64 s`): the better the limit is known, the less often it is probed.
//! 3. **One cut per overshoot.** A provider's window remembers an overshoot for a while, so
//!    the requests already sent, and those sent in the `MIN_CUT_GAP = 1 s` after a cut, meet
//!    that memory. Their 429s do not cut again. [`Permit::on_rate_limited`] knows when its
//!    request was granted. [`Pacer::on_rate_limited`] does not, and uses the time of the
//!    answer instead (a cut at most once per `MIN_CUT_GAP`).
//! 4. **The measured send rate** is the requests granted over the last 2 s (in 100 ms
//!    slots), not AWS's 0.5 s buckets smoothed 0.8, which jump by ±20% at 10 req/s. The base of
//!    a cut is `min(current rate, 1.25 × measured)`: a pacer whose callers keep it busy is cut
//!    from its own rate, one with idle room from what it really sent. AWS's cap of twice the
//!    measured rate limits how far the rate may *rise* above what is sent. Unlike AWS's, it does
//!    not pull the rate down while callers are idle, so an idle pacer does not start slowly
//!    again.
//!
//! The figures, from `tests/pace.rs` (paused time; 30 callers each wanting one request a
//! second; answers after 60–180 ms). Against a provider allowing 10 requests in any sliding
//! second, the rate settles within 10% of 10/s after 3–15 s, with a mean of 9.6/s, and then
//! 0.3% of attempts get a 429 (30 seeds). Against a token bucket of 10 refilled at 10/s, it
//! settles in 4–29 s, with a mean of 9.96/s and 0.2–0.3% 429s.
//!
//! # Rate-limit headers
//!
//! OpenAI and Anthropic limit with token buckets that refill continuously and send the
//! bucket's `limit`, `remaining` and `reset` (time until it is full again). Then the refill
//! rate is `(limit − remaining) / reset`. `remaining` is an integer (rounded down), so one
//! answer only bounds the rate from above; the pacer takes the smallest such bound seen in
//! the last 10 s (exact whenever the bucket was full before the request, as it is for a client
//! that keeps under the limit) and paces at `HINT_MARGIN = 95%` of it for `HINT_TTL = 10 s`
//! after the last header. A 429 still cuts below that, and successes climb back to it.
//! `remaining = 0` holds every request until the provider has one request's room again.
//! Tokens are handled the same way and cap the token rate. In the simulation above, with
//! headers on every answer, the rate is 9.5/s from the first answers on and no attempt gets
//! a 429, first minute included (30 seeds).
//!
//! # The line: FIFO, deadlines, cancellation
//!
//! A caller that finds nobody waiting and room in every bucket gets its permit at once: one
//! uncontended lock around a few integer operations, no allocation, no await. Otherwise it
//! joins a line, a `tokio::sync::Mutex` (tokio's mutex hands itself over in first-in,
//! first-out order): waiters are served in arrival order, and the head sleeps until the
//! buckets admit it (woken early if the rate rises). A dropped waiter leaves the line: its
//! place in tokio's queue and its weight in the pacer's count go with it, and it took nothing
//! from the buckets, so nobody behind it waits longer.
//!
//! **Deadlines.** On arrival the pacer computes when this caller would be served: the time at
//! which the buckets will have admitted everyone ahead of it and then it. If that is past the
//! deadline, [`PaceError::WouldMissDeadline`] comes back at once, without waiting and without
//! taking a place. The projection is exact for one bucket at a constant rate, and a lower
//! bound otherwise; so a waiter whose turn recedes (the rate was cut while it waited) is
//! refused when its turn comes and is too late, or at its deadline at the latest: no waiter
//! waits past its deadline.
//!
//! # Token weights and settling
//!
//! `acquire(weight_tokens, …)` charges the token bucket with an estimate of what the request
//! will use (zero when unknown: then only the request count is paced). When the answer says
//! what it really used, [`Permit::settle`] corrects the bucket by the difference: a request
//! that used more pushes the next ones back, one that used less gives the rest back.
//!
//! # Observability
//!
//! Each cut of the rate is a `tracing` event (target `retry_runtime`, message `pace rate cut`)
//! with fields `pacer`, `rate_before`, `rate_after` (requests per second; `inf` when there was
//! no limit yet) and `reason` (`rate_limited`, or `hint` for a provider's headers lowering it
//! by 5% or more; smaller header corrections are DEBUG). With the `metrics` feature, the
//! current request rate is the gauge `retry_runtime_pace_rate{pacer}` ([`RATE_GAUGE`]).
//!
//! ```
//! use std::time::Duration;
//! use retry_runtime::pace::{PaceConfig, Pacer};
//! use tokio::time::Instant;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // 120 requests per minute, no burst beyond one request.
//! let pacer = Pacer::standalone("doc", PaceConfig {
//!     rpm: Some(120),
//!     burst: Duration::ZERO,
//!     ..PaceConfig::default()
//! });
//! let deadline = Some(Instant::now() + Duration::from_secs(5));
//! let mut permit = pacer.acquire(800, deadline).await.unwrap(); // ~800 tokens expected
//! // ... call the provider ...
//! permit.settle(650); // it used 650
//! permit.on_success(Instant::now());
//! assert_eq!(pacer.rate(), Some(2.0));
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::sync::{Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;

use tokio::sync::Notify;

use tokio::time::Instant;

use crate::clock::{from_ns, to_ns};
use crate::registry::{Named, Registry, Slot};

/// The gauge holding each pacer's current request rate (requests per second), labelled
/// `pacer`.
pub const RATE_GAUGE: &str = "retry_runtime_pace_rate";

/// AWS's multiplicative decrease: the rate after the first 429, or one that comes while the
/// rate still climbs after a cut, as a share of the rate it came at.
pub const BETA: f64 = 0.7;
/// The cut for a 429 after resting on a plateau a while: it was a little too high.
pub const BETA_REST: f64 = 0.95;
/// How far above the plateau the first probe step goes (the next ones double).
pub const PROBE: f64 = 0.05;
/// AWS's CUBIC scale constant, in requests per second per second cubed.
pub const SCALE_C: f64 = 0.4;
/// Where the climb after a cut pauses, as a share of the rate the 429 came at.
pub const PLATEAU: f64 = 0.97;
/// The first pause on a plateau (and each probe step); a 429 that answers a probe doubles it.
pub const HOLD_MIN: Duration = Duration::from_secs(2);
/// The longest pause on a plateau.
pub const HOLD_MAX: Duration = Duration::from_secs(64);
/// AWS's floor: the adaptive rate never drops below this many requests per second.
pub const MIN_RATE: f64 = 0.5;
/// Requests sent this soon after a cut (or before it) meet the provider's memory of the
/// overshoot: their 429s do not cut again.
pub const MIN_CUT_GAP: Duration = Duration::from_secs(1);
/// The share of the provider's announced rate the pacer keeps to.
pub const HINT_MARGIN: f64 = 0.95;
/// How long the provider's numbers cap the rate after the last header that carried them.
pub const HINT_TTL: Duration = Duration::from_secs(10);

const NS_PER_SEC: u64 = 1_000_000_000;
const NS_PER_MIN: u64 = 60 * NS_PER_SEC;
// The base of a cut: min(rate, MEASURED_SLACK × measured).
const MEASURED_SLACK: f64 = 1.25;
// The measured send rate: granted requests in SLOTS slots of SLOT_NS.
const SLOTS: usize = 20;
const SLOT_NS: u64 = 100_000_000;
// The minimum of the header-derived rate bounds is kept per HINT_WINDOW_NS (two windows).
const HINT_WINDOW_NS: u64 = 5 * NS_PER_SEC;
// A header-driven drop of at least this share is an INFO event, a smaller one DEBUG.
const HINT_EVENT_DROP: f64 = 0.05;

fn clamp_u64(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------------------
// GCRA: the pure bucket arithmetic.

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

fn interval_for(per_sec: f64) -> u64 {
    if per_sec.is_finite() && per_sec > 0.0 {
        (NS_PER_SEC as f64 / per_sec)
            .round()
            .clamp(1.0, u64::MAX as f64) as u64
    } else {
        u64::MAX
    }
}

// ---------------------------------------------------------------------------------------
// The adaptive law, pure.

/// The adaptive rate's curve: AWS's CUBIC concave climb after a cut to a plateau just under
/// the ceiling, a hold there, then probe steps: a cubic rise to [`PROBE`] above the plateau,
/// held in turn; a step that held becomes the new plateau and the next step is twice as tall
/// (see the module docs). Pure: the rate is a function of time; [`Cubic::promoted`] moves
/// the plateau up when a step held.
///
/// ```
/// use std::time::Duration;
/// use retry_runtime::pace::{Cubic, PLATEAU, PROBE};
///
/// let s = 1_000_000_000u64;
/// let law = Cubic::cut(10.0, 100 * s, Duration::from_secs(10));
/// assert!((law.rate_at(100 * s) - 7.0).abs() < 1e-9);        // 0.7 × 10 right after the cut
/// let on_plateau = law.plateau_from_ns() + 5 * s;
/// assert!((law.rate_at(on_plateau) - PLATEAU * 10.0).abs() < 1e-9);
/// assert!(!law.probing(on_plateau));
/// // Probe steps go 5% above the plateau, but no higher than the rate the 429 came at.
/// let probing = law.plateau_from_ns() + 20 * s;
/// assert!(law.probing(probing));
/// assert!((law.rate_at(probing) - 10.0).abs() < 1e-9);
/// assert!((1.0 + PROBE) * PLATEAU * 10.0 > 10.0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cubic {
    // AWS's W: the rate the last far cut came at; shapes the climb before the plateau.
    w_max: f64,
    // The plateau: the last rate that held.
    level: f64,
    plateau_from_ns: u64,
    hold_ns: u64,
    // Probe steps that held since the plateau was set: each doubles the next.
    steps: u32,
    // The plateau before the last promotion (equal to `level` when there was none).
    previous: f64,
    // Whether the curve started with a cut (and its climb), rather than on a plateau.
    after_cut: bool,
    // The rate the last 429 came at (infinite when none did): probe steps stop there, and
    // go past it one small step at a time.
    ceiling: f64,
}

fn secs_between(a: u64, b: u64) -> f64 {
    (i128::from(a) - i128::from(b)) as f64 / NS_PER_SEC as f64
}

fn ns_of_secs(secs: f64) -> u64 {
    (secs.max(0.0) * NS_PER_SEC as f64).min(u64::MAX as f64) as u64
}

impl Cubic {
    /// AWS's cut at `now_ns`: from a rate of `w_max` to `BETA × w_max`, then its CUBIC climb
    /// to the plateau at `PLATEAU × w_max`, held for `hold`.
    pub fn cut(w_max: f64, now_ns: u64, hold: Duration) -> Self {
        Self::recover(BETA * w_max, w_max, w_max, now_ns, hold)
    }

    /// From `rate` at `now_ns`, AWS's CUBIC climb towards `w_max`, to the plateau at
    /// `PLATEAU × w_max`, held for `hold`; `ceiling` is the rate the 429 came at.
    pub fn recover(rate: f64, w_max: f64, ceiling: f64, now_ns: u64, hold: Duration) -> Self {
        let w_max = w_max.max(MIN_RATE);
        let level = PLATEAU * w_max;
        // K: when AWS's curve is back at W; D: how long before K it reaches the plateau.
        let k = ((w_max - rate).max(0.0) / SCALE_C).cbrt();
        let d = ((w_max - level) / SCALE_C).cbrt();
        Self {
            w_max,
            level,
            plateau_from_ns: now_ns.saturating_add(ns_of_secs(k - d)),
            hold_ns: clamp_u64(hold.as_nanos()),
            steps: 0,
            previous: level,
            after_cut: true,
            ceiling,
        }
    }

    /// A curve standing on its plateau at `level` from `now_ns`, for `hold`: a probe fell
    /// back to the last rate that held, or the provider announced its rate.
    pub fn plateau(level: f64, now_ns: u64, hold: Duration) -> Self {
        let level = level.max(MIN_RATE);
        Self {
            w_max: level,
            level,
            plateau_from_ns: now_ns,
            hold_ns: clamp_u64(hold.as_nanos()),
            steps: 0,
            previous: level,
            after_cut: false,
            ceiling: f64::INFINITY,
        }
    }

    /// The plateau: the last rate that held (or, after a cut, `PLATEAU` of the rate it came
    /// at).
    pub fn level(&self) -> f64 {
        self.level
    }

    /// When the plateau starts.
    pub fn plateau_from_ns(&self) -> u64 {
        self.plateau_from_ns
    }

    /// How long the plateau (and each probe step) lasts.
    pub fn hold(&self) -> Duration {
        Duration::from_nanos(self.hold_ns)
    }

    fn probe_from_ns(&self) -> u64 {
        self.plateau_from_ns.saturating_add(self.hold_ns)
    }

    /// Whether the curve is above its plateau at `now_ns`: probing for more.
    pub fn probing(&self, now_ns: u64) -> bool {
        now_ns >= self.probe_from_ns()
    }

    /// The curve after a 429 at `now_ns`, holding for `hold`, unless the 429 calls for
    /// AWS's cut (`None`). The rules, in order:
    ///
    /// * probing above the plateau: back to the plateau (the probe found the limit);
    /// * on a plateau (one reached after a cut: for at least [`HOLD_MIN`]): back to the
    ///   plateau before the last promotion if there was one (that step held, but not long
    ///   enough: a provider with a large burst lets a rate just over its limit through for
    ///   a while), else [`BETA_REST`] of it (the plateau is a little too high);
    /// * still climbing after a cut, or just arrived on its plateau: `None` (the ceiling is
    ///   well under what the curve assumed).
    ///
    /// `at` is the rate the 429 came at: the new ceiling.
    pub fn after_429(&self, now_ns: u64, at: f64, hold: Duration) -> Option<Self> {
        let rest = if self.after_cut {
            HOLD_MIN
        } else {
            Duration::ZERO
        };
        let rested = self
            .plateau_from_ns
            .saturating_add(clamp_u64(rest.as_nanos()));
        let level = if self.probing(now_ns) {
            self.level
        } else if now_ns >= rested && self.previous < self.level {
            self.previous
        } else if now_ns >= rested {
            BETA_REST * self.level
        } else {
            return None;
        };
        let level = level.max(MIN_RATE);
        Some(Self {
            w_max: level,
            level,
            plateau_from_ns: now_ns,
            hold_ns: clamp_u64(hold.as_nanos()),
            steps: 0,
            previous: self.previous.min(level),
            after_cut: false,
            ceiling: at.max(level),
        })
    }

    /// The rate the current probe step rises to: `PROBE`, then twice, four times… that
    /// share above the plateau (at most twice the plateau), but no higher than the ceiling
    /// while under it, and a single `PROBE` above the plateau at the ceiling.
    fn step(&self) -> f64 {
        let share = PROBE * f64::from(1u32 << self.steps.min(16));
        let step = (1.0 + share.min(1.0)) * self.level;
        if self.level * (1.0 + PROBE / 2.0) < self.ceiling {
            step.min(self.ceiling)
        } else if self.level <= self.ceiling {
            (1.0 + PROBE) * self.level
        } else {
            step
        }
    }

    /// When the probe step has been held for a whole hold without a 429.
    fn step_held_ns(&self) -> u64 {
        let rise = ((self.step() - self.level).max(0.0) / SCALE_C).cbrt();
        self.probe_from_ns()
            .saturating_add(ns_of_secs(rise))
            .saturating_add(self.hold_ns)
    }

    /// The rate the curve gives at `now_ns` (requests per second).
    pub fn rate_at(&self, now_ns: u64) -> f64 {
        let probe_from = self.probe_from_ns();
        let rate = if now_ns < self.plateau_from_ns {
            // AWS's curve, shifted to reach the plateau at `plateau_from`.
            let d = ((self.w_max - self.level).max(0.0) / SCALE_C).cbrt();
            self.w_max + SCALE_C * (secs_between(now_ns, self.plateau_from_ns) - d).powi(3)
        } else if now_ns < probe_from {
            self.level
        } else {
            let t = secs_between(now_ns, probe_from);
            (self.level + SCALE_C * t.powi(3)).min(self.step())
        };
        rate.max(MIN_RATE)
    }

    /// The curve as of `now_ns`: each probe step held for a whole hold without a 429 becomes
    /// the plateau (the limit is higher), and the next step, twice as tall, starts from it.
    pub fn promoted(mut self, now_ns: u64) -> Self {
        // Each step lasts at least a hold; a few dozen steps are hours of silence.
        for _ in 0..64 {
            let held = self.step_held_ns();
            if now_ns < held || self.hold_ns == 0 {
                break;
            }
            let level = self.step();
            // Past the ceiling and held: the limit rose; forget it, and start the doubling
            // over from a small step.
            let (ceiling, steps) = if level > self.ceiling {
                (f64::INFINITY, 0)
            } else {
                (self.ceiling, self.steps + 1)
            };
            self = Self {
                w_max: level,
                level,
                plateau_from_ns: held - self.hold_ns,
                hold_ns: self.hold_ns,
                steps,
                previous: self.level,
                after_cut: false,
                ceiling,
            };
        }
        self
    }
}

/// Requests granted over the last two seconds, in 100 ms slots: the measured send rate.
#[derive(Debug, Clone, Default)]
struct SendRate {
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

    fn record(&mut self, now_ns: u64) {
        self.advance(now_ns);
        self.first_ns.get_or_insert(now_ns);
        let slot = &mut self.slots[(self.newest % SLOTS as u64) as usize];
        *slot = slot.saturating_add(1);
    }

    /// Requests per second over the window (or over the time since the first request, when
    /// that is shorter, but at least one second).
    fn per_sec(&mut self, now_ns: u64) -> f64 {
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
struct HintRate {
    current: Option<(u64, f64)>,
    previous: Option<(u64, f64)>,
}

impl HintRate {
    fn observe(&mut self, now_ns: u64, bound: f64) {
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

    fn estimate(&self, now_ns: u64) -> Option<f64> {
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
fn read_window(limit: Option<u64>, remaining: Option<u64>, reset: Option<Duration>) -> Window {
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
struct Window {
    rate_bound: Option<f64>,
    empty_for: Option<Duration>,
}

// ---------------------------------------------------------------------------------------
// Configuration, hints and errors.

pub use crate::config::PaceConfig;

pub use crate::classify::ProviderLimits;

/// Why a pacer refused a permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PaceError {
    /// The permit could not be had before the deadline: refused on arrival when the projected
    /// turn is past it, or later if the turn receded (the rate was cut) or the deadline came.
    #[error("pacer `{pacer}` cannot grant a permit before the deadline: the earliest turn is {:?} past it", .earliest.saturating_duration_since(*.deadline))]
    WouldMissDeadline {
        /// The pacer.
        pacer: &'static str,
        /// The earliest time a permit could be had (as projected when refused).
        earliest: Instant,
        /// The caller's deadline.
        deadline: Instant,
    },
}

/// [`register_pacer`] found a pacer of that name already.
#[derive(Debug, thiserror::Error)]
#[error("a pacer named `{}` already exists; register pacers at startup, before their first use", .existing.name())]
pub struct AlreadyExists {
    /// The pacer already registered under the name.
    pub existing: &'static Pacer,
}

// ---------------------------------------------------------------------------------------
// The pacer.

/// The adaptive part of the state.
#[derive(Debug, Clone)]
struct Adaptive {
    // `None` until the first 429 or header: no adaptive limit yet.
    law: Option<Cubic>,
    rate: Option<f64>,
    bucket: Gcra,
    hold: Duration,
    last_cut_ns: Option<u64>,
    // The provider's announced request rate (already with the margin) and until when it holds.
    cap: Option<(f64, u64)>,
}

/// Everything a decision needs, behind one short lock.
#[derive(Debug)]
struct Core {
    requests: Option<Gcra>,
    tokens: Option<Gcra>,
    configured_token_interval: Option<u64>,
    token_burst: Duration,
    adaptive: Adaptive,
    hint_requests: HintRate,
    hint_tokens: HintRate,
    // `remaining = 0`: nothing is granted before this.
    hold_until_ns: u64,
    queued_requests: u64,
    queued_tokens: u64,
    send: SendRate,
}

/// A change of the adaptive rate, to report outside the lock.
#[derive(Debug, Clone, Copy)]
struct RateChange {
    before: Option<f64>,
    after: f64,
    reason: &'static str,
}

impl Core {
    fn new(config: &PaceConfig) -> Self {
        Self {
            requests: config
                .rpm
                .map(|rpm| Gcra::per_minute(u64::from(rpm), config.burst)),
            tokens: config.tpm.map(|tpm| Gcra::per_minute(tpm, config.burst)),
            configured_token_interval: config.tpm.map(|tpm| NS_PER_MIN / tpm.max(1)),
            token_burst: config.burst,
            adaptive: Adaptive {
                law: None,
                rate: None,
                bucket: Gcra::new(u64::MAX, 1),
                hold: HOLD_MIN,
                last_cut_ns: None,
                cap: None,
            },
            hint_requests: HintRate::default(),
            hint_tokens: HintRate::default(),
            hold_until_ns: 0,
            queued_requests: 0,
            queued_tokens: 0,
            send: SendRate::default(),
        }
    }

    /// When a request of `tokens`, ready at `ready_ns`, conforms to every bucket.
    fn conform(&self, ready_ns: u64, tokens: u64) -> u64 {
        let mut at = ready_ns.max(self.hold_until_ns);
        if let Some(b) = &self.requests {
            at = at.max(b.earliest(ready_ns, 1));
        }
        if let Some(b) = &self.tokens {
            at = at.max(b.earliest(ready_ns, tokens));
        }
        if self.adaptive.rate.is_some() {
            at = at.max(self.adaptive.bucket.earliest(ready_ns, 1));
        }
        at
    }

    /// When a newcomer weighing `tokens` would be served behind everyone queued.
    fn project(&self, now_ns: u64, tokens: u64) -> u64 {
        let ahead = self.queued_requests;
        let mut at = now_ns.max(self.hold_until_ns);
        if let Some(b) = &self.requests {
            at = at.max(b.project(now_ns, ahead, 1));
        }
        if let Some(b) = &self.tokens {
            at = at.max(b.project(now_ns, self.queued_tokens, tokens));
        }
        if self.adaptive.rate.is_some() {
            at = at.max(self.adaptive.bucket.project(now_ns, ahead, 1));
        }
        at
    }

    fn take(&mut self, at_ns: u64, tokens: u64) {
        if let Some(b) = &mut self.requests {
            b.take(at_ns, 1);
        }
        if let Some(b) = &mut self.tokens {
            b.take(at_ns, tokens);
        }
        if self.adaptive.rate.is_some() {
            self.adaptive.bucket.take(at_ns, 1);
        }
        self.send.record(at_ns);
    }

    fn set_rate(&mut self, now_ns: u64, rate: f64, reason: &'static str) -> Option<RateChange> {
        let rate = rate.max(MIN_RATE);
        let before = self.adaptive.rate;
        if before == Some(rate) {
            return None;
        }
        let interval = interval_for(rate);
        if before.is_none() {
            // The bucket starts now, empty of debt.
            self.adaptive.bucket = Gcra::new(interval, 1);
        } else {
            self.adaptive.bucket.set_interval(now_ns, interval);
        }
        self.adaptive.rate = Some(rate);
        Some(RateChange {
            before,
            after: rate,
            reason,
        })
    }

    fn cap(&self, now_ns: u64) -> Option<f64> {
        self.adaptive
            .cap
            .filter(|&(_, until)| now_ns < until)
            .map(|(cap, _)| cap)
    }

    /// A 429. `granted_ns`: when the request was granted, if known.
    fn on_rate_limited(&mut self, now_ns: u64, granted_ns: Option<u64>) -> Option<RateChange> {
        if let Some(last) = self.adaptive.last_cut_ns {
            // The provider's window remembers the overshoot a while: a request sent before
            // the last cut, or within `MIN_CUT_GAP` after it, met that memory. Without the
            // grant time, the answer's time stands in for it.
            let sent = granted_ns.unwrap_or(now_ns);
            let echo = sent < last.saturating_add(clamp_u64(MIN_CUT_GAP.as_nanos()));
            if echo {
                return None;
            }
        }
        let measured = self.send.per_sec(now_ns);
        let from_sends = if measured > 0.0 {
            MEASURED_SLACK * measured
        } else {
            f64::INFINITY
        };
        let base = match self.adaptive.rate {
            Some(rate) => rate.min(from_sends),
            None => from_sends,
        };
        let base = if base.is_finite() { base } else { MIN_RATE };
        let longer = (self.adaptive.hold * 2).min(HOLD_MAX);
        let at = self.adaptive.rate.unwrap_or(base);
        let fall_back = self
            .adaptive
            .law
            .and_then(|law| law.promoted(now_ns).after_429(now_ns, at, longer));
        let law = match fall_back {
            // A probe step found the limit, or a plateau was a little high: back to the last
            // rate that held (or just under the plateau), and hold longer before probing.
            Some(law) => {
                self.adaptive.hold = longer;
                law
            }
            // The first 429: AWS's cut.
            None if self.adaptive.law.is_none() => Cubic::cut(base, now_ns, self.adaptive.hold),
            // Still climbing after a cut: the ceiling is lower still. AWS's cut, and TCP
            // CUBIC's fast convergence: climb back towards (1 + BETA) / 2 of the rate only.
            None => Cubic::recover(
                BETA * base,
                (1.0 + BETA) / 2.0 * base,
                base,
                now_ns,
                self.adaptive.hold,
            ),
        };
        self.adaptive.law = Some(law);
        self.adaptive.last_cut_ns = Some(now_ns);
        // A 429 never raises the rate (the curve may be above a capped rate).
        let rate = law
            .rate_at(now_ns)
            .min(self.adaptive.rate.unwrap_or(f64::INFINITY));
        self.set_rate(now_ns, rate, "rate_limited")
    }

    /// A success: follow the curve, no higher than twice what is sent (unless it already
    /// was) and the provider's announced rate.
    fn on_success(&mut self, now_ns: u64) -> Option<RateChange> {
        let (Some(law), Some(current)) = (self.adaptive.law, self.adaptive.rate) else {
            return None;
        };
        let law = law.promoted(now_ns);
        self.adaptive.law = Some(law);
        let measured = self.send.per_sec(now_ns);
        let mut rate = law.rate_at(now_ns);
        if rate > current {
            rate = rate.min(current.max(2.0 * measured));
        }
        let mut reason = "success";
        if let Some(cap) = self.cap(now_ns).filter(|&cap| cap < rate) {
            rate = cap;
            reason = "hint";
        }
        self.set_rate(now_ns, rate, reason)
    }

    fn on_hint(&mut self, now_ns: u64, limits: &ProviderLimits) -> Option<RateChange> {
        let requests = read_window(
            limits.limit_requests,
            limits.remaining_requests,
            limits.reset_requests,
        );
        let tokens = read_window(
            limits.limit_tokens,
            limits.remaining_tokens,
            limits.reset_tokens,
        );
        if let Some(bound) = requests.rate_bound {
            self.hint_requests.observe(now_ns, bound);
        }
        if let Some(bound) = tokens.rate_bound {
            self.hint_tokens.observe(now_ns, bound);
        }
        let request_rate = self.hint_requests.estimate(now_ns);
        let token_rate = self.hint_tokens.estimate(now_ns);
        // An empty window: hold everything until it has room for one more.
        for (window, limit, rate) in [
            (requests, limits.limit_requests, request_rate),
            (tokens, limits.limit_tokens, token_rate),
        ] {
            if let Some(reset) = window.empty_for {
                let refilled = match (limit, rate) {
                    (Some(limit), Some(rate)) if rate > 0.0 => {
                        Duration::from_secs_f64((limit.saturating_sub(1)) as f64 / rate)
                    }
                    _ => Duration::ZERO,
                };
                let wait = clamp_u64(reset.saturating_sub(refilled).as_nanos());
                self.hold_until_ns = self.hold_until_ns.max(now_ns.saturating_add(wait));
            }
        }
        if let Some(rate) = token_rate {
            let hinted = interval_for(HINT_MARGIN * rate);
            let interval = self
                .configured_token_interval
                .map_or(hinted, |configured| configured.max(hinted));
            let burst = Gcra::per_minute(NS_PER_MIN / interval.max(1), self.token_burst).burst();
            match &mut self.tokens {
                Some(bucket) => {
                    bucket.set_interval(now_ns, interval);
                    bucket.set_burst(burst);
                }
                None => self.tokens = Some(Gcra::new(interval, burst)),
            }
        }
        let cap = HINT_MARGIN * request_rate?;
        let until = now_ns.saturating_add(clamp_u64(HINT_TTL.as_nanos()));
        self.adaptive.cap = Some((cap, until));
        match self.adaptive.rate {
            // No rate yet, or a higher one: the curve rests at the provider's rate.
            Some(rate) if rate <= cap => None,
            _ => {
                self.adaptive.law = Some(Cubic::plateau(cap, now_ns, self.adaptive.hold));
                self.set_rate(now_ns, cap, "hint")
            }
        }
    }

    fn effective_rate(&self) -> Option<f64> {
        let configured = self.requests.map(|b| b.per_sec());
        match (configured, self.adaptive.rate) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// A named, shared, client-side rate limiter. Get one by name with [`pacer`] (or
/// [`register_pacer`] at startup); see the module docs for the model.
pub struct Pacer {
    name: &'static str,
    config: PaceConfig,
    core: Mutex<Core>,
    // tokio's mutex queues its waiters first in, first out: that is the line.
    line: tokio::sync::Mutex<()>,
    // Wakes the head of the line when the rate rises or tokens are given back.
    changed: Notify,
}

impl fmt::Debug for Pacer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pacer")
            .field("name", &self.name)
            .field("config", &self.config)
            .field("rate", &self.rate())
            .field("waiting", &self.waiting())
            .finish()
    }
}

impl Pacer {
    /// A pacer outside the registry, for tests and for embedding in your own types.
    pub fn standalone(name: &'static str, config: PaceConfig) -> Self {
        Self {
            name,
            core: Mutex::new(Core::new(&config)),
            config,
            line: tokio::sync::Mutex::new(()),
            changed: Notify::new(),
        }
    }

    /// The pacer's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The configuration it was created with.
    pub fn config(&self) -> &PaceConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // The state is consistent between statements: a panic elsewhere cannot tear it.
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The request rate enforced now, in requests per second: the smaller of the configured
    /// `rpm` and the adaptive rate; `None` while neither limits anything.
    pub fn rate(&self) -> Option<f64> {
        self.lock().effective_rate()
    }

    /// Callers waiting in line now.
    pub fn waiting(&self) -> usize {
        usize::try_from(self.lock().queued_requests).unwrap_or(usize::MAX)
    }

    /// Wait for a permit to send one request expected to use `weight_tokens` tokens (zero if
    /// unknown), in arrival order, until `deadline` at the latest.
    ///
    /// Returns [`PaceError::WouldMissDeadline`] at once if the projected turn is past the
    /// deadline, and otherwise as soon as it turns out to be (never after the deadline). A
    /// dropped future leaves the line without holding up the callers behind it.
    pub async fn acquire(
        &self,
        weight_tokens: u64,
        deadline: Option<Instant>,
    ) -> Result<Permit<'_>, PaceError> {
        let arrived = Instant::now();
        let arrived_ns = to_ns(arrived);
        if let Some(deadline) = deadline.filter(|&deadline| deadline < arrived) {
            return Err(self.miss(arrived, deadline));
        }
        {
            let mut core = self.lock();
            if core.queued_requests == 0 && core.conform(arrived_ns, weight_tokens) <= arrived_ns {
                // The fast path: nobody waiting, room in every bucket.
                core.take(arrived_ns, weight_tokens);
                return Ok(self.permit(arrived, arrived, weight_tokens));
            }
            let projected = core.project(arrived_ns, weight_tokens);
            if let Some(deadline) = deadline {
                if projected > to_ns(deadline) {
                    return Err(self.miss(from_ns(projected), deadline));
                }
            }
            core.queued_requests += 1;
            core.queued_tokens = core.queued_tokens.saturating_add(weight_tokens);
        }
        let mut place = Place {
            pacer: self,
            tokens: weight_tokens,
            joined: true,
        };
        let line = self.line.lock();
        let _turn = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, line).await {
                Ok(turn) => turn,
                Err(_) => return Err(self.miss(self.projected(weight_tokens), deadline)),
            },
            None => line.await,
        };
        // At the head: the first moment this caller could have been served.
        let ready_ns = to_ns(Instant::now());
        loop {
            let mut changed = pin!(self.changed.notified());
            changed.as_mut().enable();
            let now = Instant::now();
            let at = {
                let mut core = self.lock();
                let at = core.conform(ready_ns, weight_tokens);
                if let Some(deadline) = deadline.filter(|&deadline| now > deadline) {
                    // Woken after the deadline (timers fire on the millisecond): too late.
                    drop(core);
                    return Err(self.miss(from_ns(at.max(to_ns(now))), deadline));
                }
                if at <= to_ns(now) {
                    core.take(at, weight_tokens);
                    core.queued_requests = core.queued_requests.saturating_sub(1);
                    core.queued_tokens = core.queued_tokens.saturating_sub(weight_tokens);
                    place.joined = false;
                    return Ok(self.permit(arrived, now, weight_tokens));
                }
                at
            };
            if let Some(deadline) = deadline {
                if at > to_ns(deadline) {
                    return Err(self.miss(from_ns(at), deadline));
                }
            }
            let mut sleep = pin!(tokio::time::sleep_until(from_ns(at)));
            std::future::poll_fn(|cx| {
                if sleep.as_mut().poll(cx).is_ready() || changed.as_mut().poll(cx).is_ready() {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
        }
    }

    /// What the shared store needs to take one request from the fleet-wide bucket of this
    /// pacer's known request rate (`rpm`, with the configured burst); `None` without one
    /// (adaptive and token pacing stay per process). `max_wait`: the longest the caller may
    /// wait for its slot.
    pub(crate) fn shared_ask(&self, max_wait: Duration) -> Option<crate::store::PaceAsk> {
        let rpm = u64::from(self.config.rpm?);
        let bucket = Gcra::per_minute(rpm, self.config.burst);
        Some(crate::store::PaceAsk {
            name: self.name,
            interval_us: (bucket.interval_ns() / 1000).max(1),
            burst: bucket.burst(),
            max_wait_us: u64::try_from(max_wait.as_micros()).unwrap_or(u64::MAX),
        })
    }

    fn projected(&self, tokens: u64) -> Instant {
        let now = to_ns(Instant::now());
        from_ns(self.lock().project(now, tokens))
    }

    fn miss(&self, earliest: Instant, deadline: Instant) -> PaceError {
        PaceError::WouldMissDeadline {
            pacer: self.name,
            earliest,
            deadline,
        }
    }

    fn permit(&self, arrived: Instant, granted: Instant, tokens: u64) -> Permit<'_> {
        Permit {
            pacer: self,
            granted_at: granted,
            waited: granted.saturating_duration_since(arrived),
            tokens,
        }
    }

    /// A request through this pacer succeeded (or failed for a reason other than its rate
    /// limit): the adaptive rate climbs along its curve.
    pub fn on_success(&self, now: Instant) {
        if self.config.adaptive {
            let change = self.lock().on_success(to_ns(now));
            self.report(change);
        }
    }

    /// A request through this pacer got a 429 (when it was granted is unknown: prefer
    /// [`Permit::on_rate_limited`]). Lowers the adaptive rate (see the module docs), at
    /// most once per [`MIN_CUT_GAP`].
    pub fn on_rate_limited(&self, now: Instant) {
        self.rate_limited(now, None);
    }

    fn rate_limited(&self, now: Instant, granted: Option<Instant>) {
        if self.config.adaptive {
            let change = self.lock().on_rate_limited(to_ns(now), granted.map(to_ns));
            self.report(change);
        }
    }

    /// The provider's rate-limit numbers, from an answer's headers: cap the adaptive request
    /// rate and the token rate at 95% of what the provider announces, and hold requests while
    /// it has no room (`remaining = 0`).
    pub fn on_hint(&self, limits: &ProviderLimits, now: Instant) {
        if !self.config.adaptive {
            return;
        }
        let change = self.lock().on_hint(to_ns(now), limits);
        self.report(change);
        // A token rate or a hold may have changed too: let the head look again.
        self.changed.notify_waiters();
    }

    fn settle(&self, delta: i64) {
        if delta == 0 {
            return;
        }
        if let Some(bucket) = &mut self.lock().tokens {
            bucket.adjust(delta);
        }
        if delta < 0 {
            self.changed.notify_waiters();
        }
    }

    fn report(&self, change: Option<RateChange>) {
        let Some(change) = change else {
            return;
        };
        let before = change.before.unwrap_or(f64::INFINITY);
        if change.after > before {
            self.changed.notify_waiters();
        } else {
            let drop = 1.0 - change.after / before;
            if change.reason == "hint" && drop < HINT_EVENT_DROP {
                tracing::debug!(
                    target: "retry_runtime",
                    pacer = self.name,
                    rate_before = before,
                    rate_after = change.after,
                    reason = change.reason,
                    "pace rate cut"
                );
            } else {
                tracing::info!(
                    target: "retry_runtime",
                    pacer = self.name,
                    rate_before = before,
                    rate_after = change.after,
                    reason = change.reason,
                    "pace rate cut"
                );
            }
        }
        #[cfg(feature = "metrics")]
        if let Some(rate) = self.rate() {
            metrics::gauge!(RATE_GAUGE, "pacer" => self.name).set(rate);
        }
    }
}

/// A caller's place in the line until it is served; dropping it (the caller was cancelled,
/// or refused) takes its weight out of the count the projections use.
struct Place<'a> {
    pacer: &'a Pacer,
    tokens: u64,
    joined: bool,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if self.joined {
            let mut core = self.pacer.lock();
            core.queued_requests = core.queued_requests.saturating_sub(1);
            core.queued_tokens = core.queued_tokens.saturating_sub(self.tokens);
        }
    }
}

/// Leave to send one request: how long the caller waited for it, and the way to tell the
/// pacer how the request went and what it really used.
#[derive(Debug)]
#[must_use = "a permit is leave to send one request; report its answer with on_success / on_rate_limited"]
pub struct Permit<'a> {
    pacer: &'a Pacer,
    granted_at: Instant,
    waited: Duration,
    tokens: u64,
}

impl Permit<'_> {
    /// How long the caller waited for this permit (for the `CallReport`).
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// When the permit was granted.
    pub fn granted_at(&self) -> Instant {
        self.granted_at
    }

    /// The tokens charged for this request so far: the estimate, until [`Permit::settle`].
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// The request really used `real_tokens`: correct the token bucket by the difference from
    /// what was charged. May be called again (each call corrects from the last).
    pub fn settle(&mut self, real_tokens: u64) {
        let delta = i128::from(real_tokens) - i128::from(self.tokens);
        let delta = i64::try_from(delta).unwrap_or(if delta > 0 { i64::MAX } else { i64::MIN });
        self.pacer.settle(delta);
        self.tokens = real_tokens;
    }

    /// The request succeeded (or failed for another reason than its rate limit).
    pub fn on_success(&self, now: Instant) {
        self.pacer.on_success(now);
    }

    /// The request got a 429. Lowers the adaptive rate (see the module docs), unless this
    /// request was granted before the last cut or within [`MIN_CUT_GAP`] after it: then it
    /// met the provider's memory of the overshoot that cut already answered.
    pub fn on_rate_limited(&self, now: Instant) {
        self.pacer.rate_limited(now, Some(self.granted_at));
    }
}

// ---------------------------------------------------------------------------------------
// The registry.

static PACERS: Registry<Pacer> = Registry::new();

impl Named for Pacer {
    fn name(&self) -> &'static str {
        self.name
    }
}

fn find_or_create(name: &str, config: PaceConfig) -> (&'static Pacer, bool) {
    PACERS.get_or_create(name, |name| Pacer::standalone(name, config))
}

/// The process-wide pacer with this name, created on first use with its run-time
/// configuration (`[pace.NAME]`, else [`PaceConfig::default()`]) unless [`register_pacer`]
/// created it first. Cold path: call
/// sites resolve it once ([`PacerSlot`]) and keep the reference.
///
/// ```
/// let a = retry_runtime::pace::pacer("doc-openai");
/// let b = retry_runtime::pace::pacer("doc-openai");
/// assert!(std::ptr::eq(a, b));
/// ```
pub fn pacer(name: &str) -> &'static Pacer {
    PACERS
        .get_or_create(name, |name| {
            Pacer::standalone(name, crate::config::pace_config(name))
        })
        .0
}

/// Create the pacer `name` with `config`; an error (carrying the existing one) if a pacer of
/// that name was already created, by an earlier registration or a first use.
///
/// ```
/// use retry_runtime::pace::{pacer, register_pacer, PaceConfig};
///
/// let config = PaceConfig { rpm: Some(500), ..PaceConfig::default() };
/// let p = register_pacer("doc-anthropic", config.clone()).unwrap();
/// assert!(std::ptr::eq(p, pacer("doc-anthropic")));
/// assert!(register_pacer("doc-anthropic", config).is_err());
/// ```
pub fn register_pacer(name: &str, config: PaceConfig) -> Result<&'static Pacer, AlreadyExists> {
    match find_or_create(name, config) {
        (created, true) => {
            crate::config::fixed_by(created.name());
            Ok(created)
        }
        (existing, false) => Err(AlreadyExists { existing }),
    }
}

/// A call site's pacer, resolved once: after the first call, one atomic load.
pub type PacerSlot = Slot<Pacer>;

impl Slot<Pacer> {
    /// The pacer, if the call site names one.
    #[inline]
    pub fn get(&self) -> Option<&'static Pacer> {
        self.get_with(pacer)
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

    #[test]
    fn cubic_cut_is_aws_law_until_the_plateau_then_steps() {
        let now = 100 * S;
        let law = Cubic::cut(10.0, now, Duration::from_secs(5));
        let k = (10.0f64 * 0.3 / 0.4).cbrt();
        // AWS: r(t) = C (t - K)^3 + W, at t = 0.5 s.
        let t = 0.5;
        let aws = 0.4 * (t - k).powi(3) + 10.0;
        assert!((law.rate_at(now + S / 2) - aws).abs() < 1e-6);
        assert!((law.rate_at(now) - 7.0).abs() < 1e-9);
        // Rising to the plateau, then flat for the hold.
        let p = law.plateau_from_ns();
        assert!(law.rate_at(p - MS) < PLATEAU * 10.0);
        assert!((law.rate_at(p + 4 * S) - 9.7).abs() < 1e-9);
        assert!(!law.probing(p + 4 * S));
        // Then the probe: a cubic rise from the plateau (gentle first), stopping at the
        // ceiling (the rate the 429 came at), which is under one step.
        let probe = p + 5 * S;
        assert!(law.probing(probe));
        assert!((law.rate_at(probe) - 9.7).abs() < 1e-9);
        assert!((law.rate_at(probe + S / 2) - (9.7 + 0.4 / 8.0)).abs() < 1e-9);
        assert!((law.rate_at(probe + 2 * S) - 10.0).abs() < 1e-9);
        // A step held for a whole hold becomes the plateau.
        assert_eq!(law.promoted(probe + 2 * S), law);
        let held = |law: &Cubic| law.step_held_ns();
        let at_ceiling = law.promoted(held(&law));
        assert!((at_ceiling.level() - 10.0).abs() < 1e-9);
        // At the ceiling: one small step.
        let far = at_ceiling.plateau_from_ns() + 60 * S;
        assert!((at_ceiling.rate_at(far) - 10.5).abs() < 1e-9);
        // Past it and held: the limit rose; the ceiling is forgotten and the doubling starts
        // over: 5%, then 10%.
        let past = at_ceiling.promoted(held(&at_ceiling));
        assert!((past.level() - 10.5).abs() < 1e-9);
        let far = past.plateau_from_ns() + 60 * S;
        assert!((past.rate_at(far) - 10.5 * 1.05).abs() < 1e-9);
        let next = past.promoted(held(&past));
        let far = next.plateau_from_ns() + 60 * S;
        assert!((next.rate_at(far) - 10.5 * 1.05 * 1.1).abs() < 1e-9);
    }

    #[test]
    fn cubic_never_goes_under_the_floor() {
        let law = Cubic::cut(0.1, S, HOLD_MIN);
        assert!(law.rate_at(S) >= MIN_RATE);
    }

    #[test]
    fn what_a_429_means_depends_on_where_the_curve_is() {
        let hold = Duration::from_secs(5);
        let longer = Duration::from_secs(10);
        let law = Cubic::cut(10.0, 100 * S, hold);
        let p = law.plateau_from_ns();
        // Climbing after the cut, or just arrived on the plateau: the ceiling is lower still.
        assert!(law.after_429(100 * S + S / 2, 8.0, longer).is_none());
        assert!(law.after_429(p + S, 9.7, longer).is_none());
        // Resting on the plateau a while: a little too high, step down.
        let down = law.after_429(p + 3 * S, 9.7, longer).unwrap();
        assert!((down.level() - BETA_REST * 9.7).abs() < 1e-9);
        assert_eq!(down.hold(), longer);
        // Probing: back to the plateau.
        let back = law.after_429(p + 5 * S + S / 2, 9.75, longer).unwrap();
        assert!((back.level() - 9.7).abs() < 1e-9);
        // A plateau reached by a promotion: back to the one before it.
        let promoted = law.promoted(law.step_held_ns());
        let rest = promoted.plateau_from_ns() + hold.as_nanos() as u64 / 2;
        let before = promoted.after_429(rest, 10.0, longer).unwrap();
        assert!((before.level() - 9.7).abs() < 1e-9);
        // A plateau reached by falling back: any 429 on it is a step down, at once.
        let again = before
            .after_429(before.plateau_from_ns(), 9.7, longer)
            .unwrap();
        assert!((again.level() - BETA_REST * 9.7).abs() < 1e-9);
    }

    /// Callers keep sending at 10/s: record their grants up to `until`.
    fn send_until(core: &mut Core, sent: &mut u64, until: u64) {
        while *sent < until {
            core.take(*sent, 0);
            *sent += 100 * MS;
        }
    }

    #[test]
    fn first_429_is_aws_cut_and_one_while_climbing_converges_fast() {
        let mut core = Core::new(&PaceConfig::default());
        let mut sent = 10 * S;
        let now = 12 * S;
        send_until(&mut core, &mut sent, now);
        let first = core.on_rate_limited(now, Some(now)).unwrap();
        assert_eq!(first.before, None);
        // 1.25 x the measured 10/s (19 grants in the last 2 s: 9.5/s).
        assert!((first.after - BETA * 1.25 * 9.5).abs() < 1e-6, "{first:?}");
        // Still climbing 1.5 s later: AWS's cut from the current rate, and a lower plateau.
        let later = now + 1500 * MS;
        send_until(&mut core, &mut sent, later);
        let climbing = core.adaptive.rate.unwrap();
        let second = core.on_rate_limited(later, Some(later)).unwrap();
        assert!((second.after - BETA * climbing).abs() < 1e-6, "{second:?}");
        let law = core.adaptive.law.unwrap();
        assert!((law.level() - PLATEAU * (1.0 + BETA) / 2.0 * climbing).abs() < 1e-9);
    }

    #[test]
    fn a_probe_that_finds_the_limit_falls_back_and_doubles_the_hold() {
        let mut core = Core::new(&PaceConfig::default());
        let mut sent = 10 * S;
        send_until(&mut core, &mut sent, 12 * S);
        core.on_rate_limited(12 * S, Some(12 * S)).unwrap();
        let law = core.adaptive.law.unwrap();
        let probing = law.plateau_from_ns() + HOLD_MIN.as_nanos() as u64 + 500 * MS;
        send_until(&mut core, &mut sent, probing);
        core.adaptive.rate = Some(law.rate_at(probing));
        let back = core.on_rate_limited(probing, Some(probing)).unwrap();
        assert!((back.after - law.level()).abs() < 1e-9, "{back:?}");
        assert!(back.after < back.before.unwrap());
        assert_eq!(core.adaptive.law.unwrap().hold(), 2 * HOLD_MIN);
    }

    #[test]
    fn echoes_of_an_overshoot_do_not_cut_again() {
        // With grant times: sent before the cut, or within the gap after it.
        let mut core = Core::new(&PaceConfig::default());
        core.take(S, 0);
        assert!(core.on_rate_limited(S, Some(S)).is_some());
        assert!(core.on_rate_limited(3 * S, Some(S - MS)).is_none());
        assert!(core.on_rate_limited(3 * S, Some(S + 999 * MS)).is_none());
        assert!(core.on_rate_limited(3 * S, Some(2 * S)).is_some());
        // Without: the answer's time stands in for the grant's.
        let mut core = Core::new(&PaceConfig::default());
        core.take(S, 0);
        assert!(core.on_rate_limited(S, None).is_some());
        assert!(core.on_rate_limited(S + 999 * MS, None).is_none());
        assert!(core.on_rate_limited(2 * S, None).is_some());
    }

    #[test]
    fn the_climb_stays_within_twice_the_measured_rate() {
        let mut core = Core::new(&PaceConfig::default());
        core.take(S, 0);
        core.on_rate_limited(S, Some(S)).unwrap();
        // Nothing more is sent for a minute: the curve would be far above 2 x measured.
        let change = core.on_success(61 * S);
        assert!(change.is_none(), "{change:?}");
        assert!(core.adaptive.rate.unwrap() <= 1.25 * 0.7 + 1e-9);
    }

    #[test]
    fn hints_bound_the_rate_and_an_empty_window_holds() {
        let mut core = Core::new(&PaceConfig::default());
        let now = 10 * S;
        let limits = ProviderLimits {
            limit_requests: Some(10),
            remaining_requests: Some(9),
            reset_requests: Some(Duration::from_millis(100)),
            ..ProviderLimits::default()
        };
        let change = core.on_hint(now, &limits).unwrap();
        assert!((change.after - HINT_MARGIN * 10.0).abs() < 1e-9);
        // A looser bound does not raise it; a tighter one lowers it.
        let loose = ProviderLimits {
            remaining_requests: Some(5),
            reset_requests: Some(Duration::from_millis(400)),
            ..limits
        };
        assert!(core.on_hint(now + MS, &loose).is_none());
        let empty = ProviderLimits {
            remaining_requests: Some(0),
            reset_requests: Some(Duration::from_millis(1_250)),
            ..limits
        };
        let change = core.on_hint(now + 2 * MS, &empty).unwrap();
        assert!((change.after - HINT_MARGIN * 8.0).abs() < 1e-9);
        // Room for one request comes back after 1.25 s - 9 / 8 per s = 125 ms.
        assert_eq!(core.hold_until_ns, now + 2 * MS + 125 * MS);
        // Successes climb no higher than the cap while the headers are fresh.
        assert!(core.on_success(now + 3 * S).is_none());
    }

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
