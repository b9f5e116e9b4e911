//! The pacer: its line, its permits, and the reports of the provider's answers.

use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::sync::{Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;

use tokio::sync::Notify;

use tokio::time::Instant;

use super::core::{Core, RateChange};
use super::gcra::Gcra;
use super::{PaceConfig, ProviderLimits};
use crate::clock::{from_ns, to_ns};
use crate::metric_names::{self, LazyGauge};

/// The gauge holding each pacer's current request rate (requests per second), labelled
/// `pacer`: [`metric_names::PACE_RATE`], under the name it had first.
pub const RATE_GAUGE: &str = metric_names::PACE_RATE;
// A header-driven drop of at least this share is an INFO event, a smaller one DEBUG.
const HINT_EVENT_DROP: f64 = 0.05;

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
    /// The permit would come later than the pacer's `max_wait` from the caller's arrival.
    #[error("pacer `{pacer}`'s line is longer than its max_wait of {max_wait:?}")]
    LineTooLong {
        /// The pacer.
        pacer: &'static str,
        /// Its `max_wait`.
        max_wait: Duration,
    },
}

/// A named, shared, client-side rate limiter. Get one by name with [`pacer`] (or
/// [`register_pacer`] at startup); see the module docs for the model.
///
/// [`pacer`]: super::pacer()
/// [`register_pacer`]: super::register_pacer
pub struct Pacer {
    name: &'static str,
    config: PaceConfig,
    core: Mutex<Core>,
    // tokio's mutex queues its waiters first in, first out: that is the line.
    line: tokio::sync::Mutex<()>,
    // Wakes the head of the line when the rate rises or tokens are given back.
    changed: Notify,
    // The gauges of its rate and of its line's length.
    rate_gauge: LazyGauge,
    waiting_gauge: LazyGauge,
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
            rate_gauge: LazyGauge::new(),
            waiting_gauge: LazyGauge::new(),
        }
    }

    /// Set the gauges from the state now: the rate (none while nothing limits) and the
    /// line's length. For the refresh: a fixed `rpm` never changes, so nothing else sets it.
    pub(crate) fn publish(&self) {
        let (rate, waiting) = {
            let core = self.lock();
            (core.effective_rate(), core.queued_requests)
        };
        if let Some(rate) = rate {
            self.publish_rate(rate);
        }
        self.publish_waiting(waiting);
    }

    fn publish_rate(&self, rate: f64) {
        let name = self.name;
        self.rate_gauge.set(
            metric_names::PACE_RATE,
            || vec![("pacer", name.to_string())],
            rate,
        );
    }

    /// After the line changed (outside the pacer's lock: a first use registers the gauge).
    fn publish_waiting(&self, waiting: u64) {
        let name = self.name;
        self.waiting_gauge.set(
            metric_names::PACE_WAITING,
            || vec![("pacer", name.to_string())],
            waiting as f64,
        );
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
    /// unknown), in arrival order, until `deadline` at the latest, and no longer than the
    /// pacer's `max_wait`.
    ///
    /// Returns [`PaceError::WouldMissDeadline`] (or [`PaceError::LineTooLong`], when the
    /// `max_wait` comes first) at once if the projected turn is past the bound, and otherwise
    /// as soon as it turns out to be (never after it). A dropped future leaves the line
    /// without holding up the callers behind it.
    pub async fn acquire(
        &self,
        weight_tokens: u64,
        deadline: Option<Instant>,
    ) -> Result<Permit<'_>, PaceError> {
        // One async fn (its caller's future holds one state machine, not two nested ones).
        let arrived = Instant::now();
        let (deadline, line_bound) = self.bound(arrived, deadline);
        let arrived_ns = to_ns(arrived);
        if let Some(deadline) = deadline.filter(|&deadline| deadline < arrived) {
            return Err(self.miss(arrived, deadline, line_bound));
        }
        let waiting = {
            let mut core = self.lock();
            if core.queued_requests == 0 && core.conform(arrived_ns, weight_tokens) <= arrived_ns {
                // The fast path: nobody waiting, room in every bucket.
                core.take(arrived_ns, weight_tokens);
                return Ok(self.permit(arrived, arrived, weight_tokens));
            }
            let projected = core.project(arrived_ns, weight_tokens);
            if let Some(deadline) = deadline {
                if projected > to_ns(deadline) {
                    return Err(self.miss(from_ns(projected), deadline, line_bound));
                }
            }
            core.queued_requests += 1;
            core.queued_tokens = core.queued_tokens.saturating_add(weight_tokens);
            core.queued_requests
        };
        self.publish_waiting(waiting);
        // What the caller needs once at the head, together (a caller woken in a long line
        // reads it cold: in one place it is a cache line or two).
        let mut place = Place {
            pacer: self,
            tokens: weight_tokens,
            joined: true,
            head: false,
            arrived,
            deadline,
            line_bound,
            ready_ns: None,
        };
        let line = self.line.lock();
        let _turn = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, line).await {
                Ok(turn) => turn,
                Err(_) => {
                    return Err(self.miss(self.projected(place.tokens), deadline, line_bound))
                }
            },
            None => line.await,
        };
        place.head = true;
        loop {
            // A look, and when it does not serve, a second one once `changed` exists: created
            // before that look, it sees every `notify_waiters` from then on (not enabled, i.e.
            // registered, until polled). A head served at the first look, as most are within
            // a burst, builds no `Notified` at all.
            match self.at_head(&mut place) {
                Head::Served(permit) => return Ok(permit),
                Head::Missed(error) => return Err(error),
                Head::Wait(_) => {}
            }
            let mut changed = pin!(self.changed.notified());
            let at = match self.at_head(&mut place) {
                Head::Served(permit) => return Ok(permit),
                Head::Missed(error) => return Err(error),
                Head::Wait(at) => at,
            };
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

    /// The latest a permit is worth having for a caller arriving at `arrived`: its own
    /// `deadline`, or the pacer's `max_wait` from its arrival if that comes first (then `true`:
    /// the line, not the deadline, refuses).
    pub(crate) fn bound(
        &self,
        arrived: Instant,
        deadline: Option<Instant>,
    ) -> (Option<Instant>, bool) {
        let Some(line) = self.config.max_wait.map(|wait| arrived + wait) else {
            return (deadline, false);
        };
        match deadline {
            Some(deadline) if deadline <= line => (Some(deadline), false),
            _ => (Some(line), true),
        }
    }

    /// A look at the line from its head: served now (the permit is taken and the caller
    /// leaves the line), too late for its deadline, or to wait until the instant (ns) it could
    /// be served. At the first look, the first moment it could have been served is read (once).
    fn at_head(&self, place: &mut Place<'_>) -> Head<'_> {
        let now = Instant::now();
        let (arrived, deadline, weight_tokens) = (place.arrived, place.deadline, place.tokens);
        let mut core = self.lock();
        let ready_ns = *place
            .ready_ns
            .get_or_insert_with(|| core.ready_at_head(to_ns(arrived), to_ns(now)));
        let at = core.conform(ready_ns, weight_tokens);
        if let Some(deadline) = deadline.filter(|&deadline| now > deadline) {
            // Woken after the deadline (timers fire on the millisecond): too late.
            drop(core);
            let earliest = from_ns(at.max(to_ns(now)));
            return Head::Missed(self.miss(earliest, deadline, place.line_bound));
        }
        if at <= to_ns(now) {
            core.take(at, weight_tokens);
            core.queued_requests = core.queued_requests.saturating_sub(1);
            core.queued_tokens = core.queued_tokens.saturating_sub(weight_tokens);
            place.joined = false;
            let waiting = core.queued_requests;
            drop(core);
            self.publish_waiting(waiting);
            return Head::Served(self.permit(arrived, now, weight_tokens));
        }
        match deadline {
            Some(deadline) if at > to_ns(deadline) => {
                Head::Missed(self.miss(from_ns(at), deadline, place.line_bound))
            }
            _ => Head::Wait(at),
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

    /// The refusal of a caller whose turn comes at `earliest`, past `deadline`: the pacer's
    /// `max_wait` when that was the bound (`line_bound`), else the caller's own deadline.
    fn miss(&self, earliest: Instant, deadline: Instant, line_bound: bool) -> PaceError {
        if line_bound {
            return PaceError::LineTooLong {
                pacer: self.name,
                max_wait: self.config.max_wait.unwrap_or_default(),
            };
        }
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
    ///
    /// [`MIN_CUT_GAP`]: super::MIN_CUT_GAP
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
            self.publish_rate(rate);
        }
    }
}

/// A caller's place in the line until it is served; dropping it (the caller was cancelled,
/// or refused) takes its weight out of the count the projections use.
struct Place<'a> {
    pacer: &'a Pacer,
    tokens: u64,
    joined: bool,
    // At the head: leaving hands the line on now.
    head: bool,
    // When the caller arrived, the latest its permit is worth having, and whether that bound
    // is the pacer's `max_wait` (then a miss is `LineTooLong`).
    arrived: Instant,
    deadline: Option<Instant>,
    line_bound: bool,
    // At the head: the first moment this caller could have been served.
    ready_ns: Option<u64>,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if self.joined {
            let now_ns = if self.head {
                Some(to_ns(Instant::now()))
            } else {
                None
            };
            let waiting = {
                let mut core = self.pacer.lock();
                core.queued_requests = core.queued_requests.saturating_sub(1);
                core.queued_tokens = core.queued_tokens.saturating_sub(self.tokens);
                if let Some(now_ns) = now_ns {
                    core.handed_ns = core.handed_ns.max(now_ns);
                }
                core.queued_requests
            };
            self.pacer.publish_waiting(waiting);
        }
    }
}

/// What a look from the head of the line found.
enum Head<'a> {
    Served(Permit<'a>),
    Missed(PaceError),
    Wait(u64),
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
    ///
    /// [`MIN_CUT_GAP`]: super::MIN_CUT_GAP
    pub fn on_rate_limited(&self, now: Instant) {
        self.pacer.rate_limited(now, Some(self.granted_at));
    }
}
