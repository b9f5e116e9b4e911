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
//! **Rates above the timer's.** Tokio's timers fire on the millisecond, so a head that slept
//! is often 1–2 ms past its due time. The next head is charged from when the line was handed
//! on to it (the due time of the permit before, or its own arrival if later; at most 2 ms
//! before now), not from when it got there: the permits due within each millisecond go out
//! together, and a line keeps rates above a thousand a second (charged from its arrival at
//! the head, a line came out at two permits a millisecond whatever its rate). With no burst,
//! a caller back in the line is due a full interval after the permit before it, so a line of
//! N callers gets about N permits a millisecond; a burst of a millisecond's worth lifts that.
//! Each permit in a line costs the same whatever the line's length (the line is tokio's
//! intrusive FIFO, and only the head waits on the pacer's timer or its rate changes); the
//! figures are in `docs/PERFORMANCE.md` ("Scale").
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
//! current request rate is the gauge `retry_runtime_pace_rate{pacer}` ([`RATE_GAUGE`]), set
//! when it changes, and the line's length `retry_runtime_pace_waiting{pacer}`, set when a
//! caller joins or leaves it; [`crate::report::refresh_gauges`] sets both from the state now
//! (a fixed `rpm` never changes, so only the refresh shows it).
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
//!
//! # Source layout
//!
//! * `gcra.rs`: [`Gcra`], the pure bucket arithmetic.
//! * `cubic.rs`: [`Cubic`], the adaptive rate's law, and its constants.
//! * `measure.rs`: the measured send rate, the provider's rate from its headers, and what
//!   one rate-limit window's numbers say.
//! * `core.rs`: the state behind the pacer's lock: its buckets, the adaptive state, and how
//!   a success, a 429 or a header changes the rate.
//! * `pacer.rs`: [`Pacer`] and [`Permit`]: the line and its places, [`Pacer::acquire`],
//!   reporting answers, and the shared store's ask.
//! * `mod.rs` (this file): the re-exports and the registry ([`pacer()`], [`register_pacer`],
//!   [`PacerSlot`]).

mod core;
mod cubic;
mod gcra;
mod measure;
mod pacer;

pub use self::core::{HINT_MARGIN, HINT_TTL, MIN_CUT_GAP};
pub use self::cubic::{
    Cubic, BETA, BETA_REST, HOLD_MAX, HOLD_MIN, MIN_RATE, PLATEAU, PROBE, SCALE_C,
};
pub use self::gcra::Gcra;
pub use self::pacer::{PaceError, Pacer, Permit, RATE_GAUGE};

use crate::registry::{Named, Registry, Slot};

const NS_PER_SEC: u64 = 1_000_000_000;
const NS_PER_MIN: u64 = 60 * NS_PER_SEC;

fn clamp_u64(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------------------
// Configuration and hints (defined with the run-time configuration and the classifier).

pub use crate::config::PaceConfig;

pub use crate::classify::ProviderLimits;

// ---------------------------------------------------------------------------------------
// The registry.

/// [`register_pacer`] found a pacer of that name already.
#[derive(Debug, thiserror::Error)]
#[error("a pacer named `{}` already exists; register pacers at startup, before their first use", .existing.name())]
pub struct AlreadyExists {
    /// The pacer already registered under the name.
    pub existing: &'static Pacer,
}

static PACERS: Registry<Pacer> = Registry::new();

impl Named for Pacer {
    fn name(&self) -> &'static str {
        Pacer::name(self)
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

/// Every pacer created so far (in the current test-isolation scope), for the gauges' refresh.
pub(crate) fn all_pacers() -> Vec<&'static Pacer> {
    PACERS.all()
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
