//! Named circuit breakers, shared by every call to one provider.
//!
//! Closed -> Open after a run of `failures` outage-class failures (5xx, timeout, transport;
//! 429 only with `count_429`) with no answer between them, none more than `window` after the
//! one before; with `adaptive` (the default) a longer run when failures were already common,
//! or when the breaker's regime says outage, or an overload that persists (see
//! [`crate::regime`]). With a `failure_rate`, `failures` inside `window` that are that share
//! of the calls instead. Open rejects at once for `cooldown`. Then HalfOpen admits exactly
//! `probes` calls: a probe's success closes the breaker, its outage failure re-opens it. A
//! probe whose future is dropped gives its slot back. With a shared store, `probes` counts
//! the whole fleet's probes: the gate leases them in the store as well ([`crate::store`]).
//!
//! The state is one `AtomicU64` updated by a CAS loop around pure transition functions
//! ([`State::admit`], [`State::on_result`], [`State::on_cancel`]); the failure times are a
//! ring of atomics. A closed breaker costs one atomic load to admit and one to record a
//! success: no lock, no allocation.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::classify::ErrorClass;
use crate::clock::now_ms;
use crate::config::BreakerConfig;
use crate::metric_names::{self, LazyGauge};
use crate::overload::RateGate;
use crate::queue::Queue;
mod adaptive;

use crate::regime::Tracker;
use crate::registry::{Named, Registry, Slot};
use crate::retry_budget::RetryBudget;

/// A breaker's state, as seen by a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum BreakerState {
    /// Calls flow; outage failures are counted.
    Closed,
    /// Calls are rejected without reaching the provider.
    Open,
    /// A limited number of probe calls decide whether to close or re-open.
    HalfOpen,
}

impl BreakerState {
    /// A short, stable name for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// The value of the gauge `retry_runtime_breaker_state`: 0 closed, 1 half-open, 2 open
    /// (ordered by how much the breaker holds back, so the worst of several is their `max`).
    pub fn gauge_value(&self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change of a breaker's state, as recorded in the `CallReport` of the call that caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Transition {
    /// The breaker's name.
    pub breaker: &'static str,
    /// State before.
    pub from: BreakerState,
    /// State after.
    pub to: BreakerState,
}

// Packed state: [tag:2][epoch:8][probes:14][until_ms:40]. The epoch changes on each entry
// to half-open, so a late probe result from an earlier half-open period is ignored.
const TAG_SHIFT: u32 = 62;
const EPOCH_SHIFT: u32 = 54;
const PROBES_SHIFT: u32 = 40;
const TIME_MASK: u64 = (1 << 40) - 1;
const PROBES_MASK: u64 = (1 << 14) - 1;

/// The decision-relevant part of a breaker, as a plain value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct State {
    /// Closed, open or half-open.
    pub state: BreakerState,
    /// Counts entries into half-open (wrapping), to tell probe generations apart.
    pub epoch: u8,
    /// Half-open: probes admitted in this period.
    pub probes: u16,
    /// Open: when the cooldown ends (ms on the runtime clock).
    pub until_ms: u64,
}

/// What a call gets when it asks to make an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The breaker is closed: go ahead.
    Normal,
    /// The breaker is half-open and this attempt is one of its probes.
    Probe {
        /// The half-open period the probe belongs to.
        epoch: u8,
    },
    /// The breaker is open (or half-open with all probes out).
    Rejected {
        /// Until the cooldown ends; zero while half-open probes decide.
        retry_in: Duration,
    },
}

impl State {
    const CLOSED: State = State {
        state: BreakerState::Closed,
        epoch: 0,
        probes: 0,
        until_ms: 0,
    };

    fn pack(self) -> u64 {
        let tag = match self.state {
            BreakerState::Closed => 0u64,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        };
        (tag << TAG_SHIFT)
            | (u64::from(self.epoch) << EPOCH_SHIFT)
            | ((u64::from(self.probes) & PROBES_MASK) << PROBES_SHIFT)
            | (self.until_ms & TIME_MASK)
    }

    fn unpack(bits: u64) -> State {
        State {
            state: match bits >> TAG_SHIFT {
                0 => BreakerState::Closed,
                1 => BreakerState::Open,
                _ => BreakerState::HalfOpen,
            },
            epoch: (bits >> EPOCH_SHIFT) as u8,
            probes: ((bits >> PROBES_SHIFT) & PROBES_MASK) as u16,
            until_ms: bits & TIME_MASK,
        }
    }

    /// May a call make an attempt now? Returns the admission and the next state.
    pub fn admit(self, now_ms: u64, max_probes: u16) -> (Admission, State) {
        match self.state {
            BreakerState::Closed => (Admission::Normal, self),
            BreakerState::Open if now_ms < self.until_ms => (
                Admission::Rejected {
                    retry_in: Duration::from_millis(self.until_ms - now_ms),
                },
                self,
            ),
            BreakerState::Open => {
                let epoch = self.epoch.wrapping_add(1);
                (
                    Admission::Probe { epoch },
                    State {
                        state: BreakerState::HalfOpen,
                        epoch,
                        probes: 1,
                        until_ms: 0,
                    },
                )
            }
            BreakerState::HalfOpen if self.probes < max_probes => (
                Admission::Probe { epoch: self.epoch },
                State {
                    probes: self.probes + 1,
                    ..self
                },
            ),
            BreakerState::HalfOpen => (
                Admission::Rejected {
                    retry_in: Duration::ZERO,
                },
                self,
            ),
        }
    }

    /// The result of an attempt admitted as `admission`. `opens` says whether the window
    /// now holds enough counted failures to open (computed by the caller from the ring);
    /// `counted` whether this failure counts at all (`None` for a success).
    pub fn on_result(
        self,
        admission: Admission,
        counted: Option<bool>,
        opens: bool,
        now_ms: u64,
        cooldown_ms: u64,
    ) -> State {
        let open = State {
            state: BreakerState::Open,
            epoch: self.epoch,
            probes: 0,
            until_ms: now_ms.saturating_add(cooldown_ms).min(TIME_MASK),
        };
        match (self.state, admission) {
            (BreakerState::HalfOpen, Admission::Probe { epoch }) if epoch == self.epoch => {
                match counted {
                    Some(true) => open,
                    // The provider answered (even a caller-fault error is an answer): it is up.
                    Some(false) | None => State {
                        epoch: self.epoch,
                        ..State::CLOSED
                    },
                }
            }
            (BreakerState::Closed, Admission::Normal) if counted == Some(true) && opens => open,
            _ => self,
        }
    }

    /// The shared store says another process opened the breaker until `until_ms` (on this
    /// process's clock): reject until then. A longer local cooldown is kept; half-open probes
    /// in flight are cut off only by an open state that still runs.
    pub fn forced_open(self, until_ms: u64, now_ms: u64) -> State {
        let open = State {
            state: BreakerState::Open,
            epoch: self.epoch,
            probes: 0,
            until_ms: until_ms.min(TIME_MASK),
        };
        match self.state {
            // An open state whose cooldown is already over (a process started after it and
            // finds it still stored): join the fleet's probing, half-open, without passing
            // through an open state (whose WARN would be a false alarm on every deploy).
            BreakerState::Closed if until_ms <= now_ms => State {
                state: BreakerState::HalfOpen,
                epoch: self.epoch.wrapping_add(1),
                probes: 0,
                until_ms: 0,
            },
            BreakerState::Closed => open,
            BreakerState::Open if self.until_ms >= until_ms => self,
            BreakerState::Open => open,
            BreakerState::HalfOpen if until_ms > now_ms => open,
            BreakerState::HalfOpen => self,
        }
    }

    /// The shared store says the breaker was closed (another process's probe succeeded).
    pub fn forced_closed(self) -> State {
        State {
            epoch: self.epoch,
            ..State::CLOSED
        }
    }

    /// A probe was dropped before it finished: give its slot back.
    pub fn on_cancel(self, admission: Admission) -> State {
        match (self.state, admission) {
            (BreakerState::HalfOpen, Admission::Probe { epoch })
                if epoch == self.epoch && self.probes > 0 =>
            {
                State {
                    probes: self.probes - 1,
                    ..self
                }
            }
            _ => self,
        }
    }
}

/// One named circuit breaker. Get it by name with [`breaker`]; `#[resilient(breaker = "…")]`
/// resolves it once per call site.
pub struct Breaker {
    name: &'static str,
    config: BreakerConfig,
    state: AtomicU64,
    // The last `failures` counted failure times (ms + 1; 0 = empty).
    ring: Box<[AtomicU64]>,
    next: AtomicUsize,
    // With a `failure_rate`: attempts admitted while closed, and that count at each failure in
    // `ring`, so the rate is failures over the calls since the oldest of them, with no clock
    // read on a success.
    calls: AtomicU64,
    ring_calls: Box<[AtomicU64]>,
    retry_budget: RetryBudget,
    // With `adaptive`: the regime and the signals it is read from.
    regime: Tracker,
    // The current run of counted failures: `count << 40 | last failure ms`, and the run
    // that opens, fixed when the run began.
    run: AtomicU64,
    run_to_open: AtomicU64,
    // While overloaded: admit no faster than the provider answers.
    rate_gate: RateGate,
    queue: Queue,
    // The shared store's generation of this breaker's state last adopted (0: none stored).
    shared_generation: AtomicU64,
    // The gauges of its state and of its queue's length.
    state_gauge: LazyGauge,
    queue_gauge: LazyGauge,
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("name", &self.name)
            .field("state", &self.state())
            .field("config", &self.config)
            .finish()
    }
}

impl Breaker {
    /// A breaker outside the registry, for tests and for embedding in your own types. Calls
    /// through `#[resilient(breaker = "…")]` use the registry's [`breaker`] instead.
    pub fn standalone(name: &'static str, config: BreakerConfig) -> Self {
        Self::new(name, config)
    }

    fn new(name: &'static str, config: BreakerConfig) -> Self {
        let slots = config.failures.max(1) as usize;
        Self {
            name,
            state: AtomicU64::new(State::CLOSED.pack()),
            ring: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            next: AtomicUsize::new(0),
            calls: AtomicU64::new(0),
            ring_calls: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            retry_budget: RetryBudget::new(&config),
            regime: Tracker::new(&config),
            run: AtomicU64::new(0),
            run_to_open: AtomicU64::new(u64::from(config.failures.max(1))),
            rate_gate: RateGate::new(),
            queue: Queue::new(config.queue_len as usize, config.queue_release_per_sec),
            shared_generation: AtomicU64::new(0),
            state_gauge: LazyGauge::new(),
            queue_gauge: LazyGauge::new(),
            config,
        }
    }

    /// Set the state gauge (`retry_runtime_breaker_state`) to `state`.
    fn publish_state(&self, state: BreakerState) {
        let name = self.name;
        self.state_gauge.set(
            metric_names::BREAKER_STATE,
            || vec![("breaker", name.to_string())],
            state.gauge_value(),
        );
    }

    /// Set the gauges from the state now: its state, and its queue's length (the refresh
    /// that catches what no transition said, e.g. a breaker created before the recorder).
    pub(crate) fn publish(&self) {
        self.publish_state(self.state());
        self.publish_queue();
    }

    /// Set the queue-length gauge (`retry_runtime_queue_length`) to the queue's length now:
    /// after a caller joined or left it.
    pub(crate) fn publish_queue(&self) {
        let name = self.name;
        self.queue_gauge.set(
            metric_names::QUEUE_LENGTH,
            || vec![("breaker", name.to_string())],
            self.queue.len() as f64,
        );
    }

    /// The breaker's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The configuration it was created with.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The current state. An open breaker whose cooldown has passed reports `Open` until the
    /// next call turns it half-open.
    pub fn state(&self) -> BreakerState {
        self.load().state
    }

    /// The line that `fallback = queue` callers wait in for this breaker to admit again.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// How long until this breaker may admit a call: the rest of an open breaker's cooldown,
    /// a short poll while half-open probes decide, zero when closed (or cooled down).
    pub fn wait_hint(&self, now_ms: u64) -> Duration {
        let s = self.load();
        match s.state {
            BreakerState::Closed => Duration::ZERO,
            BreakerState::Open => Duration::from_millis(s.until_ms.saturating_sub(now_ms)),
            BreakerState::HalfOpen if u32::from(s.probes) < self.config.probes => Duration::ZERO,
            BreakerState::HalfOpen => Duration::from_millis(50),
        }
    }

    /// The retry budget shared by every call through this breaker.
    pub fn retry_budget(&self) -> &RetryBudget {
        &self.retry_budget
    }

    fn load(&self) -> State {
        State::unpack(self.state.load(Ordering::Acquire))
    }

    /// CAS loop around a pure transition; returns what `f` decided and the transition, if any.
    fn update<R>(&self, mut f: impl FnMut(State) -> (R, State)) -> (R, Option<Transition>) {
        let mut bits = self.state.load(Ordering::Acquire);
        loop {
            let before = State::unpack(bits);
            let (out, after) = f(before);
            if after == before {
                return (out, None);
            }
            match self.state.compare_exchange_weak(
                bits,
                after.pack(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    let transition = (before.state != after.state).then_some(Transition {
                        breaker: self.name,
                        from: before.state,
                        to: after.state,
                    });
                    // Every change of state goes through here (admission, result, adoption
                    // of the fleet's state), so the gauge misses none. The state read again,
                    // not `after`: of two racing changes, the later set shows the newer state.
                    if transition.is_some() {
                        self.publish_state(self.state());
                    }
                    return (out, transition);
                }
                Err(actual) => bits = actual,
            }
        }
    }

    #[doc(hidden)]
    /// Ask to make an attempt now.
    pub fn admit(&self, now_ms: u64) -> (Admission, Option<Transition>) {
        // Closed is the common case: one load, no write.
        let state = self.load();
        if state.state == BreakerState::Closed {
            if self.config.failure_rate_ppm > 0 {
                self.calls.fetch_add(1, Ordering::Relaxed);
            }
            return (Admission::Normal, None);
        }
        let probes = self.config.probes.clamp(1, PROBES_MASK as u32) as u16;
        self.update(|s| s.admit(now_ms, probes))
    }

    #[doc(hidden)]
    /// What [`admit`](Self::admit) would refuse with now, without taking anything (no probe
    /// slot, no count): `Some(retry_in)` while open (or half-open with every probe out).
    /// Closed is one load, with no clock read.
    pub fn look(&self) -> Option<Duration> {
        let state = self.load();
        if state.state == BreakerState::Closed {
            return None;
        }
        let probes = self.config.probes.clamp(1, PROBES_MASK as u32) as u16;
        match state.admit(now_ms(), probes).0 {
            Admission::Rejected { retry_in } => Some(retry_in),
            _ => None,
        }
    }

    /// Whether this failure class counts toward opening.
    pub fn counts(&self, class: ErrorClass) -> bool {
        class.is_outage() || (self.config.count_429 && class == ErrorClass::Status(429))
    }

    #[doc(hidden)]
    /// Record the result of an attempt admitted as `admission`: `None` for a success.
    pub fn record(
        &self,
        admission: Admission,
        failure: Option<ErrorClass>,
        now_ms: u64,
    ) -> Option<Transition> {
        let counted = failure.map(|class| self.counts(class));
        if counted != Some(true) {
            self.end_run();
        }
        let state = self.load();
        if state.state == BreakerState::Closed && counted != Some(true) {
            return None; // The happy path: nothing to write.
        }
        let opens = state.state == BreakerState::Closed
            && admission == Admission::Normal
            && counted == Some(true)
            && if self.config.failure_rate_ppm > 0 {
                self.push_failure(now_ms)
            } else {
                self.extend_run(now_ms)
            };
        let cooldown = duration_ms(self.config.cooldown);
        let (_, transition) =
            self.update(|s| ((), s.on_result(admission, counted, opens, now_ms, cooldown)));
        if matches!(transition, Some(t) if t.to == BreakerState::Closed) {
            self.clear_failures();
        }
        transition
    }

    #[doc(hidden)]
    /// Whether recording this result would change nothing: a success (or an uncounted
    /// failure) while closed. The executor checks it first, so the happy path reads no clock.
    pub fn is_quiet(&self, failure: Option<ErrorClass>) -> bool {
        failure.is_none_or(|class| !self.counts(class)) && self.load().state == BreakerState::Closed
    }

    #[doc(hidden)]
    /// A probe's future was dropped: give its slot back.
    pub fn cancel(&self, admission: Admission) {
        if let Admission::Probe { .. } = admission {
            self.update(|s| ((), s.on_cancel(admission)));
        }
    }

    #[doc(hidden)]
    /// Adopt the shared store's state of this breaker if it changed since this process last
    /// saw it: the store's state wins (an open state rejects here too; a cleared one closes).
    pub fn adopt(&self, shared: crate::store::SharedBreaker, now_ms: u64) -> Option<Transition> {
        let seen = self
            .shared_generation
            .swap(shared.generation, Ordering::AcqRel);
        if seen == shared.generation {
            return None;
        }
        let (_, transition) = match shared.open_for {
            Some(open_for) => {
                let until = now_ms.saturating_add(duration_ms(open_for));
                self.update(|s| ((), s.forced_open(until, now_ms)))
            }
            None => self.update(|s| ((), s.forced_closed())),
        };
        if matches!(transition, Some(t) if t.to == BreakerState::Closed) {
            self.clear_failures();
        }
        transition
    }

    /// Remember a counted failure; true if the ring now holds `failures` of them in `window`.
    fn push_failure(&self, now_ms: u64) -> bool {
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.ring.len();
        let calls = self.calls.load(Ordering::Relaxed);
        self.ring_calls[slot].store(calls, Ordering::Relaxed);
        self.ring[slot].store(now_ms.saturating_add(1), Ordering::Release);
        let window = duration_ms(self.config.window);
        let recent = self
            .ring
            .iter()
            .map(|t| t.load(Ordering::Acquire))
            .filter(|&t| t != 0 && now_ms.saturating_add(1) - t.min(now_ms + 1) < window)
            .count();
        recent >= self.config.failures as usize && self.rate_reached(slot, calls)
    }

    /// With a `failure_rate`: do the failures in the ring make at least that share of the
    /// calls admitted since the oldest of them? The ring is full of recent failures here, so
    /// the oldest is the slot after the one just written.
    fn rate_reached(&self, slot: usize, calls_now: u64) -> bool {
        let ppm = self.config.failure_rate_ppm;
        if ppm == 0 {
            return true;
        }
        let oldest = (slot + 1) % self.ring.len();
        // The oldest failure's own call, and every call admitted after it was recorded.
        let since = calls_now
            .saturating_sub(self.ring_calls[oldest].load(Ordering::Relaxed))
            .saturating_add(1);
        let failures = self.ring.len() as u64;
        failures.saturating_mul(1_000_000) >= ppm.saturating_mul(since)
    }

    /// Closed again: the failures counted, the run and the regime's window are over.
    fn clear_failures(&self) {
        for t in self.ring.iter() {
            t.store(0, Ordering::Release);
        }
        self.run.store(0, Ordering::Release);
        if self.config.adaptive {
            self.regime.reset(now_ms());
            self.retry_budget.set_ratio_ppm(self.regime.allowance_ppm());
            self.rate_gate.off();
        }
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

static BREAKERS: Registry<Breaker> = Registry::new();

impl Named for Breaker {
    fn name(&self) -> &'static str {
        self.name
    }
}

/// The process-wide breaker with this name, created on first use with its configured values
/// (or the defaults). Cold path: call sites resolve it once and keep the reference.
pub fn breaker(name: &str) -> &'static Breaker {
    BREAKERS
        .get_or_create(name, |name| {
            Breaker::new(name, crate::config::breaker_config(name))
        })
        .0
}

/// Every breaker created so far (in the current test-isolation scope), for the gauges' refresh.
pub(crate) fn all_breakers() -> Vec<&'static Breaker> {
    BREAKERS.all()
}

/// A call site's breaker, resolved once: after the first call, one atomic load.
pub type BreakerSlot = Slot<Breaker>;

impl Slot<Breaker> {
    /// The breaker, if the call site names one.
    #[inline]
    pub fn get(&self) -> Option<&'static Breaker> {
        self.get_with(breaker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_open_state_whose_cooldown_is_over_is_adopted_half_open() {
        let closed = State::CLOSED;
        for until in [900, 1_000] {
            let adopted = closed.forced_open(until, 1_000);
            assert_eq!(adopted.state, BreakerState::HalfOpen, "never through Open");
            assert_eq!(adopted.probes, 0);
            assert!(matches!(adopted.admit(1_000, 1).0, Admission::Probe { .. }));
        }
        assert_eq!(closed.forced_open(1_001, 1_000).state, BreakerState::Open);
    }

    fn config(failures: u32, probes: u32) -> BreakerConfig {
        BreakerConfig {
            failures,
            probes,
            window: Duration::from_secs(60),
            cooldown: Duration::from_secs(30),
            ..BreakerConfig::default()
        }
    }

    #[test]
    fn pack_roundtrips() {
        let s = State {
            state: BreakerState::HalfOpen,
            epoch: 201,
            probes: 9000,
            until_ms: TIME_MASK,
        };
        assert_eq!(State::unpack(s.pack()), s);
        assert_eq!(State::unpack(State::CLOSED.pack()), State::CLOSED);
    }

    #[test]
    fn opens_after_failures_in_window_then_half_opens_after_cooldown() {
        let b = Breaker::new("t", config(3, 1));
        let fail = Some(ErrorClass::Status(503));
        assert_eq!(b.record(Admission::Normal, fail, 0), None);
        assert_eq!(b.record(Admission::Normal, fail, 1000), None);
        let t = b.record(Admission::Normal, fail, 2000).unwrap();
        assert_eq!((t.from, t.to), (BreakerState::Closed, BreakerState::Open));
        assert_eq!(
            b.admit(2000 + 29_999).0,
            Admission::Rejected {
                retry_in: Duration::from_millis(1)
            }
        );
        let (probe, t) = b.admit(32_000);
        assert!(matches!(probe, Admission::Probe { .. }));
        assert_eq!(t.unwrap().to, BreakerState::HalfOpen);
        assert!(matches!(b.admit(32_001).0, Admission::Rejected { .. }));
        let t = b.record(probe, None, 32_500).unwrap();
        assert_eq!(t.to, BreakerState::Closed);
    }

    #[test]
    fn a_failure_rate_keeps_rare_failures_at_high_volume_from_opening() {
        let rated = |failures| {
            Breaker::new(
                "t",
                BreakerConfig {
                    failure_rate_ppm: 500_000,
                    ..config(failures, 1)
                },
            )
        };
        let fail = Some(ErrorClass::Status(503));
        // 5 failures among 1000 calls in the window: 0.5%, far under 50%.
        let b = rated(5);
        for i in 0..1000u64 {
            let (admission, _) = b.admit(i);
            let failure = if i % 200 == 199 { fail } else { None };
            assert_eq!(b.record(admission, failure, i), None, "call {i}");
        }
        assert_eq!(b.state(), BreakerState::Closed);
        // The same 5 failures as 5 of the last 8 calls: 62% opens it.
        let b = rated(5);
        let mut opened = None;
        for (i, fails) in [false, true, true, false, true, false, true, true]
            .into_iter()
            .enumerate()
        {
            let (admission, _) = b.admit(i as u64);
            opened = opened.or(b.record(admission, fails.then_some(fail).flatten(), i as u64));
        }
        assert_eq!(opened.map(|t| t.to), Some(BreakerState::Open));
        // Without a rate, the run rule: the same 5 failures spread among answers never make a
        // run; five in a row do.
        let b = Breaker::new("t", config(5, 1));
        let mut opened = None;
        for i in 0..1000u64 {
            let (admission, _) = b.admit(i);
            let failure = if i % 200 == 199 { fail } else { None };
            opened = opened.or(b.record(admission, failure, i));
        }
        assert_eq!(opened, None);
        for i in 1000..1005u64 {
            let (admission, _) = b.admit(i);
            opened = opened.or(b.record(admission, fail, i));
        }
        assert_eq!(opened.map(|t| t.to), Some(BreakerState::Open));
    }

    #[test]
    fn failures_outside_the_window_do_not_open() {
        let b = Breaker::new("t", config(2, 1));
        let fail = Some(ErrorClass::Timeout);
        b.record(Admission::Normal, fail, 0);
        assert_eq!(b.record(Admission::Normal, fail, 60_000), None);
        assert!(b.record(Admission::Normal, fail, 61_000).is_some());
    }

    #[test]
    fn caller_faults_and_429_do_not_count_unless_configured() {
        let b = Breaker::new("t", config(1, 1));
        for class in [
            ErrorClass::Status(400),
            ErrorClass::Status(429),
            ErrorClass::Permanent,
        ] {
            assert_eq!(b.record(Admission::Normal, Some(class), 0), None);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        let strict = Breaker::new(
            "t",
            BreakerConfig {
                count_429: true,
                ..config(1, 1)
            },
        );
        assert!(strict
            .record(Admission::Normal, Some(ErrorClass::Status(429)), 0)
            .is_some());
    }

    #[test]
    fn a_failed_probe_reopens_and_a_cancelled_probe_is_returned() {
        let b = Breaker::new("t", config(1, 1));
        b.record(Admission::Normal, Some(ErrorClass::Transport), 0);
        let (probe, _) = b.admit(30_000);
        b.cancel(probe);
        let (again, _) = b.admit(30_001);
        assert_eq!(again, probe, "the returned slot is admitted again");
        let t = b
            .record(again, Some(ErrorClass::Status(500)), 30_002)
            .unwrap();
        assert_eq!(t.to, BreakerState::Open);
        assert!(matches!(b.admit(30_003).0, Admission::Rejected { .. }));
    }

    #[test]
    fn a_stale_probe_result_is_ignored() {
        let b = Breaker::new("t", config(1, 1));
        b.record(Admission::Normal, Some(ErrorClass::Transport), 0);
        let (old, _) = b.admit(30_000);
        b.record(old, Some(ErrorClass::Transport), 30_001); // re-open
        let (new, _) = b.admit(60_001);
        assert_ne!(old, new);
        assert_eq!(
            b.record(old, None, 60_002),
            None,
            "old epoch's success ignored"
        );
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.cancel(old); // also ignored
        assert!(matches!(b.admit(60_003).0, Admission::Rejected { .. }));
    }

    #[test]
    fn the_shared_state_wins_when_it_changed() {
        use crate::store::SharedBreaker;
        let b = Breaker::new("t", config(1, 1));
        let open = |generation, secs| SharedBreaker {
            generation,
            open_for: Some(Duration::from_secs(secs)),
        };
        // Opened elsewhere: rejects here for what is left of the shared cooldown.
        let t = b.adopt(open(7, 10), 1_000).unwrap();
        assert_eq!((t.from, t.to), (BreakerState::Closed, BreakerState::Open));
        assert_eq!(
            b.admit(1_001).0,
            Admission::Rejected {
                retry_in: Duration::from_millis(9_999)
            }
        );
        // The same generation again changes nothing (it was adopted).
        assert_eq!(b.adopt(open(7, 1), 2_000), None);
        assert!(matches!(b.admit(5_000).0, Admission::Rejected { .. }));
        // Closed elsewhere (the stored state was cleared): closes here too.
        let cleared = SharedBreaker {
            generation: 0,
            open_for: None,
        };
        let t = b.adopt(cleared, 5_000).unwrap();
        assert_eq!(t.to, BreakerState::Closed);
        assert_eq!(b.admit(5_001).0, Admission::Normal);
        // A stored state whose cooldown is over turns into a probe here, not a closed breaker.
        let t = b.adopt(open(9, 0), 6_000).unwrap();
        assert_eq!(
            (t.from, t.to),
            (BreakerState::Closed, BreakerState::HalfOpen),
            "no WARN"
        );
        assert!(matches!(b.admit(6_000).0, Admission::Probe { .. }));
        // A longer local cooldown is kept.
        b.record(
            Admission::Probe { epoch: 1 },
            Some(ErrorClass::Transport),
            6_001,
        );
        assert_eq!(b.adopt(open(11, 1), 6_002), None);
        assert!(matches!(
            b.admit(8_000).0,
            Admission::Rejected { retry_in } if retry_in > Duration::from_secs(20)
        ));
    }
}
