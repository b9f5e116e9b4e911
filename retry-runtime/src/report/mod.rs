//! What happened in a call: the [`CallReport`], [`observe`], and the `tracing` events.
//!
//! Events use the target `retry_runtime` and these fields, so a log search can filter on them:
//!
//! | event | level | fields |
//! |---|---|---|
//! | `retrying` | INFO | `function`, `attempt` (the one that failed, from 1), `class`, `status`, `delay_ms`, `retry_after_ms` |
//! | `call finished` | DEBUG on success, WARN otherwise | `function`, `attempts`, `stop`, `class`, `status`, `elapsed_ms` |
//! | `breaker transition` | WARN when opening, INFO otherwise | `function`, `breaker`, `from`, `to` |
//! | `degraded answer served by a fallback` | WARN | `function`, `fallback` (`cached`, `function`, `queue`), `fallback_fn`, `age_ms`, `waited_ms`, `because` |
//! | `spend pool exhausted` | WARN, once per window | `pool`, `limit`, `committed` |
//! | `pace rate cut` | INFO (DEBUG for header-driven drops under 5%) | `pacer`, `rate_before`, `rate_after`, `reason` |

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use crate::breaker::{BreakerState, Transition};
use crate::classify::ErrorClass;
use crate::regime::{Change, Regime};
use crate::spend::Spend;
use crate::spend::{Budget, BudgetScope};

/// What served a degraded answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum FallbackKind {
    /// The last good answer for the same key.
    Cached,
    /// Another function (a cheaper model, another provider), by path.
    Function(&'static str),
    /// The call waited in its breaker's queue and was served after recovery.
    Queue,
}

impl FallbackKind {
    /// Every kind's [`as_str`](Self::as_str) name: the `kind` label values of
    /// `retry_runtime_fallbacks_total`.
    pub const NAMES: &'static [&'static str] = &["cached", "function", "queue"];

    /// A short, stable name for logs and metrics: `cached`, `function`, `queue`.
    pub fn as_str(&self) -> &'static str {
        match self {
            FallbackKind::Cached => "cached",
            FallbackKind::Function(_) => "function",
            FallbackKind::Queue => "queue",
        }
    }
}

impl fmt::Display for FallbackKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FallbackKind::Function(path) => write!(f, "function `{path}`"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// The fallback that served a call, in its [`CallReport`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct FallbackReport {
    /// What served the answer.
    pub kind: FallbackKind,
    /// For `Cached`: how old the answer was.
    pub age: Option<Duration>,
    /// For `Queue`: how long the call waited to be released.
    pub waited: Option<Duration>,
    /// Why the call fell back.
    pub because: StopReason,
}

/// Why a call ended. Every way out of the executor has its own reason.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub enum StopReason {
    /// An attempt succeeded.
    Success,
    /// The error is not retryable under the policy (`#[retry_on]` list, or `Permanent`).
    NotRetryable,
    /// The server said not to retry (`x-should-retry: false`).
    ServerSaidNoRetry,
    /// `max` attempts were made and the last one failed.
    AttemptsExhausted,
    /// The server asked for a wait (`Retry-After`) longer than the policy's `max_retry_after`.
    RetryAfterTooLong {
        /// What the server asked for.
        requested: Duration,
        /// The policy's `max_retry_after`.
        max: Duration,
    },
    /// The next wait would have ended past the call's `deadline`, or an attempt was cut by it.
    DeadlineExceeded,
    /// The call's future was dropped before it finished.
    Cancelled,
    /// The circuit breaker was open: no attempt was made.
    CircuitOpen {
        /// Time until the breaker admits a probe; zero while half-open probes decide.
        retry_in: Duration,
    },
    /// The breaker opened while this call was retrying, so it stopped instead of waiting on.
    BreakerOpened,
    /// The breaker's retry budget had no room for another retry (a fleet-wide storm guard).
    RetryBudgetExhausted,
    /// `fallback = queue`: the breaker's line was full.
    QueueFull,
    /// `fallback = queue`: the call waited `queue_wait` without being released.
    QueueTimeout {
        /// How long it waited.
        waited: Duration,
    },
    /// A spend limit had no room: the per-call `budget` for a retry, or a pool or workflow
    /// (refusing the first attempt, or stopping a retry).
    BudgetExhausted {
        /// Which limit.
        scope: BudgetScope,
        /// What was spent (per call) or committed (pool, workflow) against it.
        spent: Spend,
        /// The limit.
        limit: Budget,
    },
    /// The call names a pool whose configuration is missing (see
    /// [`Rejected::PoolUnconfigured`](crate::Rejected::PoolUnconfigured)): refused.
    PoolUnconfigured {
        /// The pool's name.
        pool: &'static str,
    },
    /// A streaming call's stream ended with an error after `chunks` chunks had been
    /// delivered (a cut connection, an error event, its `idle` or the deadline): the call was
    /// committed at its first chunk, so nothing was retried or sent twice.
    StreamCut {
        /// Chunks the caller received.
        chunks: u64,
        /// How the stream failed.
        class: ErrorClass,
    },
    /// The pacer's line was longer than its `max_wait`: refused at once (the first attempt,
    /// or a retry) rather than after the wait.
    PacerLineFull {
        /// The pacer's `max_wait`.
        max_wait: Duration,
    },
    /// Shed: the breaker believes its provider is overloaded (or down). A retry: it cut the
    /// retry allowance, and the retry budget had no room left under it. A first attempt: it
    /// admits attempts only as fast as the provider answers, and this call's turn would have
    /// come too late.
    Shed {
        /// What the breaker believed.
        regime: Regime,
    },
}

impl StopReason {
    /// Every reason's [`as_str`](Self::as_str) name, in declaration order: the `stop` label
    /// values of `retry_runtime_calls_total`, for dashboards and for tests that want to see
    /// each one.
    pub const NAMES: &'static [&'static str] = &[
        "success",
        "not_retryable",
        "server_said_no_retry",
        "attempts_exhausted",
        "retry_after_too_long",
        "deadline_exceeded",
        "cancelled",
        "circuit_open",
        "breaker_opened",
        "retry_budget_exhausted",
        "queue_full",
        "queue_timeout",
        "budget_exhausted",
        "pool_unconfigured",
        "shed",
        "pacer_line_full",
        "stream_cut",
    ];

    /// A short, stable name for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            StopReason::Success => "success",
            StopReason::NotRetryable => "not_retryable",
            StopReason::ServerSaidNoRetry => "server_said_no_retry",
            StopReason::AttemptsExhausted => "attempts_exhausted",
            StopReason::RetryAfterTooLong { .. } => "retry_after_too_long",
            StopReason::DeadlineExceeded => "deadline_exceeded",
            StopReason::Cancelled => "cancelled",
            StopReason::CircuitOpen { .. } => "circuit_open",
            StopReason::BreakerOpened => "breaker_opened",
            StopReason::RetryBudgetExhausted => "retry_budget_exhausted",
            StopReason::BudgetExhausted { .. } => "budget_exhausted",
            StopReason::QueueFull => "queue_full",
            StopReason::QueueTimeout { .. } => "queue_timeout",
            StopReason::PoolUnconfigured { .. } => "pool_unconfigured",
            StopReason::Shed { .. } => "shed",
            StopReason::PacerLineFull { .. } => "pacer_line_full",
            StopReason::StreamCut { .. } => "stream_cut",
        }
    }

    /// Whether the call ended in success.
    pub fn is_success(&self) -> bool {
        matches!(self, StopReason::Success)
    }

    /// Whether this ending is an outage (the provider could not serve us) rather than a
    /// verdict on the request: only these run a fallback. Retries exhausted, breaker open,
    /// retry budget spent or shed, a pacer's line too long, deadline, a `Retry-After` too long. Never a caller fault or a
    /// `Permanent` error, never a spend limit.
    pub fn is_outage(&self) -> bool {
        matches!(
            self,
            StopReason::AttemptsExhausted
                | StopReason::CircuitOpen { .. }
                | StopReason::BreakerOpened
                | StopReason::RetryBudgetExhausted
                | StopReason::Shed { .. }
                | StopReason::PacerLineFull { .. }
                | StopReason::DeadlineExceeded
                | StopReason::RetryAfterTooLong { .. }
        )
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::StreamCut { chunks, class } => {
                write!(f, "stream_cut (after {chunks} chunk(s): {class})")
            }
            StopReason::RetryAfterTooLong { requested, max } => write!(
                f,
                "retry_after_too_long (server asked {requested:?}, policy allows {max:?})"
            ),
            StopReason::BudgetExhausted {
                scope,
                spent,
                limit,
            } => write!(f, "budget_exhausted ({scope}: {spent} of {limit})"),
            StopReason::PoolUnconfigured { pool } => {
                write!(f, "pool_unconfigured (pool `{pool}`)")
            }
            other => f.write_str(other.as_str()),
        }
    }
}

/// One attempt of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct AttemptReport {
    /// 1 for the first attempt.
    pub number: u32,
    /// How long the runtime waited before starting this attempt (zero for the first).
    pub delay_before: Duration,
    /// How long the attempt itself took.
    pub elapsed: Duration,
    /// `None` if the attempt succeeded, else the class of its failure.
    pub class: Option<ErrorClass>,
    /// The server's requested wait, if the failure carried one.
    pub retry_after: Option<Duration>,
    /// What the attempt cost (`Metered` for a success, `Classify::spend` for a failure).
    pub spend: Spend,
    /// How long the attempt waited for its pacer's permit (zero without `pace`).
    pub paced: Duration,
}

impl AttemptReport {
    /// Whether this attempt succeeded.
    pub fn succeeded(&self) -> bool {
        self.class.is_none()
    }
}

/// Everything that happened in one `#[resilient]` call. Get it with [`observe`].
///
/// ```
/// use retry_runtime::{observe, resilient, Classify, ErrorClass, StopReason};
///
/// #[derive(Debug)]
/// struct Flaky(u16);
/// impl Classify for Flaky {
///     fn class(&self) -> ErrorClass { ErrorClass::Status(self.0) }
/// }
///
/// #[resilient(max = 2, backoff = "constant", base = "10ms")]
/// async fn ask(fail_first: &std::sync::atomic::AtomicBool) -> Result<&'static str, Flaky> {
///     if fail_first.swap(false, std::sync::atomic::Ordering::SeqCst) {
///         return Err(Flaky(503));
///     }
///     Ok("hello")
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let flag = std::sync::atomic::AtomicBool::new(true);
/// let (answer, report) = observe(ask(&flag)).await;
/// assert_eq!(answer.unwrap(), "hello");
/// assert_eq!(report.attempts().len(), 2);
/// assert_eq!(report.stop(), Some(&StopReason::Success));
/// println!("{report}");
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct CallReport {
    pub(crate) function: &'static str,
    pub(crate) attempts: Vec<AttemptReport>,
    pub(crate) stop: Option<StopReason>,
    pub(crate) elapsed: Duration,
    pub(crate) breaker: Option<&'static str>,
    pub(crate) transitions: Vec<Transition>,
    pub(crate) spent: Spend,
    pub(crate) fallback: Option<FallbackReport>,
    // Time spent waiting for a pacer's permit by an admission that was refused after it (so
    // no attempt holds it).
    pub(crate) paced_refused: Duration,
    pub(crate) regime: Option<Regime>,
    pub(crate) stream: Option<StreamReport>,
}

/// What a streaming call's stream did, once it began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct StreamReport {
    /// From the call's start to its first chunk (retries and waits included).
    pub first_chunk: Duration,
    /// Chunks the caller received.
    pub chunks: u64,
    /// From the first chunk to the stream's end (or its cut, or its drop).
    pub streamed: Duration,
}

impl CallReport {
    /// The `#[resilient]` function (module path and name); empty if no call was observed.
    pub fn function(&self) -> &'static str {
        self.function
    }

    /// Every attempt, in order.
    pub fn attempts(&self) -> &[AttemptReport] {
        &self.attempts
    }

    /// Why the call ended; `None` if no `#[resilient]` call ran inside the observed future.
    pub fn stop(&self) -> Option<&StopReason> {
        self.stop.as_ref()
    }

    /// Time from the call's start to its end, waits included.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// The circuit breaker the call went through, if any.
    pub fn breaker(&self) -> Option<&'static str> {
        self.breaker
    }

    /// Breaker state changes this call caused, in order.
    pub fn transitions(&self) -> &[Transition] {
        &self.transitions
    }

    /// A streaming call's stream: time to the first chunk, chunks, how long it streamed
    /// (`None` for a call that is not streamed, or whose stream never began).
    pub fn stream(&self) -> Option<&StreamReport> {
        self.stream.as_ref()
    }

    /// What the call's breaker believed its provider was going through when the call ended
    /// (`None` without a breaker): see [`crate::regime`].
    pub fn regime(&self) -> Option<Regime> {
        self.regime
    }

    /// The fallback that served the answer, if the call degraded: its kind, and for a cached
    /// answer its age. `stop()` still says why the call fell back.
    pub fn fallback(&self) -> Option<&FallbackReport> {
        self.fallback.as_ref()
    }

    /// What all attempts together cost.
    pub fn spent(&self) -> Spend {
        self.spent
    }

    /// The limit that ended the call, if a budget did.
    pub fn budget_stop(&self) -> Option<BudgetScope> {
        match &self.stop {
            Some(StopReason::BudgetExhausted { scope, .. }) => Some(*scope),
            _ => None,
        }
    }

    /// Number of retries (attempts after the first).
    pub fn retries(&self) -> u32 {
        (self.attempts.len() as u32).saturating_sub(1)
    }

    /// Total time spent waiting for the pacer's permits.
    pub fn paced(&self) -> Duration {
        self.attempts.iter().map(|a| a.paced).sum::<Duration>() + self.paced_refused
    }

    /// Total time spent waiting between attempts.
    pub fn total_delay(&self) -> Duration {
        self.attempts.iter().map(|a| a.delay_before).sum()
    }
}

impl fmt::Display for CallReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stop = match &self.stop {
            Some(stop) => stop.to_string(),
            None => return f.write_str("no #[resilient] call observed"),
        };
        write!(
            f,
            "{}: {} after {} attempt(s) in {:?}",
            self.function,
            stop,
            self.attempts.len(),
            self.elapsed,
        )?;
        if !self.spent.is_zero() {
            write!(f, ", spent {}", self.spent)?;
        }
        if let Some(s) = &self.stream {
            write!(
                f,
                ", first chunk after {:?}, {} chunk(s) in {:?}",
                s.first_chunk, s.chunks, s.streamed
            )?;
        }
        writeln!(f)?;
        for a in &self.attempts {
            let outcome = match a.class {
                None => "ok".to_string(),
                Some(class) => class.to_string(),
            };
            write!(
                f,
                "  #{} waited {:>8.3?} ran {:>8.3?} -> {}",
                a.number, a.delay_before, a.elapsed, outcome
            )?;
            if let Some(ra) = a.retry_after {
                write!(f, " (retry-after {ra:?})")?;
            }
            if !a.spend.is_zero() {
                write!(f, " [{}]", a.spend)?;
            }
            if !a.paced.is_zero() {
                write!(f, " (paced {:.3?})", a.paced)?;
            }
            writeln!(f)?;
        }
        for t in &self.transitions {
            writeln!(f, "  breaker `{}`: {} -> {}", t.breaker, t.from, t.to)?;
        }
        if let Some(fb) = &self.fallback {
            write!(f, "  served by fallback: {}", fb.kind)?;
            if let Some(age) = fb.age {
                write!(f, ", {age:?} old")?;
            }
            if let Some(waited) = fb.waited {
                write!(f, ", after {waited:?} in the queue")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

// What an `observe` (or `observe_all`) in scope collects: the first call's report, or every
// call's, each in the seat it took when it started.
// The first seat has a field of its own, so that `observe` allocates nothing for its slot.
pub(crate) struct ObserverSlot {
    all: bool,
    seats: usize,
    first: Option<CallReport>,
    rest: Vec<Option<CallReport>>,
}

tokio::task_local! {
    static OBSERVER: RefCell<ObserverSlot>;
}

async fn observed<F: Future>(fut: F, all: bool) -> (F::Output, ObserverSlot) {
    let slot = RefCell::new(ObserverSlot {
        all,
        seats: 0,
        first: None,
        rest: Vec::new(),
    });
    OBSERVER
        .scope(slot, async move {
            let output = fut.await;
            let slot = OBSERVER.with(|s| {
                let mut s = s.borrow_mut();
                ObserverSlot {
                    all,
                    seats: s.seats,
                    first: s.first.take(),
                    rest: std::mem::take(&mut s.rest),
                }
            });
            (output, slot)
        })
        .await
}

/// Run `fut` and return its output with the report of the first `#[resilient]` call that ran
/// inside it (the outermost, when calls nest). [`observe_all`] gives every call's.
///
/// The report is collected only under `observe`: an unobserved call builds no report and so
/// allocates nothing on its happy path. Spawned tasks are not observed (task-local scope).
pub async fn observe<F: Future>(fut: F) -> (F::Output, CallReport) {
    let (output, slot) = observed(fut, false).await;
    (output, slot.first.unwrap_or_default())
}

/// Run `fut` and return its output with the report of every `#[resilient]` call that ran
/// inside it, in the order the calls started (a fallback's own call, nested in the call it
/// serves, comes right after it). A call still running when `fut` ends (dropped with it)
/// reports `Cancelled`.
///
/// ```
/// use retry_runtime::{observe_all, resilient, Rejected};
///
/// #[resilient(max = 1)]
/// async fn step(n: u32) -> Result<u32, Rejected> { Ok(n) }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let (_, reports) = observe_all(async { (step(1).await, step(2).await) }).await;
/// assert_eq!(reports.len(), 2);
/// assert!(reports.iter().all(|r| r.attempts().len() == 1));
/// # }
/// ```
pub async fn observe_all<F: Future>(fut: F) -> (F::Output, Vec<CallReport>) {
    let (output, slot) = observed(fut, true).await;
    let reports = slot
        .first
        .into_iter()
        .chain(slot.rest.into_iter().flatten());
    (output, reports.collect())
}

/// Claim a seat in the current observer for a call that is starting: `Some(seat)` if this
/// call will report (the first call under `observe`, every call under `observe_all`).
/// Whether this task is inside [`observe`] or [`observe_all`] (without claiming a seat).
pub(crate) fn observing() -> bool {
    OBSERVER.try_with(|_| ()).is_ok()
}

pub(crate) fn claim_observer() -> Option<usize> {
    OBSERVER
        .try_with(|slot| {
            let mut slot = slot.borrow_mut();
            if !slot.all && slot.seats > 0 {
                return None;
            }
            let seat = slot.seats;
            slot.seats += 1;
            if seat > 0 {
                slot.rest.push(None);
            }
            Some(seat)
        })
        .ok()
        .flatten()
}

/// Hand the finished report to the seat that this call claimed.
pub(crate) fn deliver(seat: usize, report: CallReport) {
    let _ = OBSERVER.try_with(|slot| {
        let mut slot = slot.borrow_mut();
        match seat {
            0 => slot.first = Some(report),
            n => {
                if let Some(place) = slot.rest.get_mut(n - 1) {
                    *place = Some(report);
                }
            }
        }
    });
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A call site's first call says its label: two sites that report, log and count under one
/// label (two impls' `complete`, say) are a WARN naming both, once, since a dashboard would
/// merge them. Give one a `name = "…"`.
pub(crate) fn site_label(label: &'static str, site: &'static str) {
    static SITES: std::sync::Mutex<Vec<(&'static str, &'static str)>> =
        std::sync::Mutex::new(Vec::new());
    let mut sites = SITES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, other)) = sites.iter().find(|(l, s)| *l == label && *s != site) {
        tracing::warn!(
            target: "retry_runtime",
            function = label,
            site,
            other_site = *other,
            "two #[resilient] call sites report under one label; give one a `name = \"…\"`"
        );
    }
    sites.push((label, site));
}

/// Emitted before each retry's wait.
pub(crate) fn retrying(
    function: &'static str,
    attempt: u32,
    class: ErrorClass,
    delay: Duration,
    retry_after: Option<Duration>,
) {
    tracing::info!(
        target: "retry_runtime",
        function,
        attempt,
        class = class.as_str(),
        status = class.status(),
        delay_ms = millis(delay),
        retry_after_ms = retry_after.map(millis),
        "retrying"
    );
}

/// Emitted on each breaker state change.
/// Emitted when a breaker's regime changes: WARN into an overload or outage, INFO otherwise.
pub(crate) fn regime_changed(function: &'static str, breaker: &'static str, c: Change) {
    metered::regime(breaker, c.to.as_str());
    let share = format!("{:.0}%", 100.0 * c.failure_share);
    let allowance = format!("{:.0}%", c.allowance_ppm as f64 / 1e4);
    if c.to.sheds() {
        tracing::warn!(target: "retry_runtime", function, breaker, from = c.from.as_str(), to = c.to.as_str(), why = c.why.as_str(), failure_share = %share, retry_allowance = %allowance, "breaker regime");
    } else {
        tracing::info!(target: "retry_runtime", function, breaker, from = c.from.as_str(), to = c.to.as_str(), why = c.why.as_str(), failure_share = %share, retry_allowance = %allowance, "breaker regime");
    }
}

pub(crate) fn transition(function: &'static str, t: Transition) {
    metered::transition(t.breaker, t.to.as_str());
    if t.to == BreakerState::Open {
        tracing::warn!(target: "retry_runtime", function, breaker = t.breaker, from = t.from.as_str(), to = t.to.as_str(), "breaker transition");
    } else {
        tracing::info!(target: "retry_runtime", function, breaker = t.breaker, from = t.from.as_str(), to = t.to.as_str(), "breaker transition");
    }
}

/// Emitted for every degraded answer: what served it, how old it is, and why.
pub(crate) fn degraded(function: &'static str, fallback: &FallbackReport) {
    metered::fallback(function, fallback.kind.as_str());
    let path = match fallback.kind {
        FallbackKind::Function(path) => Some(path),
        _ => None,
    };
    tracing::warn!(
        target: "retry_runtime",
        function,
        fallback = fallback.kind.as_str(),
        fallback_fn = path,
        age_ms = fallback.age.map(millis),
        waited_ms = fallback.waited.map(millis),
        because = fallback.because.as_str(),
        "degraded answer served by a fallback"
    );
}

/// Emitted once when a call ends, however it ends. Takes the start instant, not the elapsed
/// time: reading the clock is left to the event, which skips it when it is filtered out.
/// Whether a call's end may be an event a subscriber sees (`finished` is a WARN or a DEBUG
/// event): a global level load, so a process without a subscriber reads no clock for it.
pub(crate) fn events_on() -> bool {
    tracing::level_enabled!(tracing::Level::WARN)
}

pub(crate) fn finished(
    function: &'static str,
    attempts: u32,
    stop: &StopReason,
    class: Option<ErrorClass>,
    started: tokio::time::Instant,
) {
    if stop.is_success() {
        tracing::debug!(
            target: "retry_runtime",
            function,
            attempts,
            stop = stop.as_str(),
            elapsed_ms = millis(started.elapsed()),
            "call finished"
        );
    } else {
        tracing::warn!(
            target: "retry_runtime",
            function,
            attempts,
            stop = stop.as_str(),
            class = class.map(|c| c.as_str()),
            status = class.and_then(|c| c.status()),
            elapsed_ms = millis(started.elapsed()),
            "call finished"
        );
    }
}

pub use crate::metric_names;

pub(crate) mod metered;

/// Set every gauge from the state now: each breaker's state and queue length, each pool's
/// committed amount and limit, each pacer's rate and line (names in [`metric_names`]).
///
/// The gauges are also set as that state changes, but some of it changes with time alone: a
/// pool's window rolls over with no call in it, a pacer's fixed `rpm` never changes, and a
/// breaker or pacer created before the recorder was installed has said nothing yet. Call this
/// before each scrape, or every few seconds from a task of your own; it takes the registries'
/// locks briefly and reads the clock once per pool. Without the `metrics` feature the gauges
/// go nowhere.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// retry_runtime::report::refresh_gauges();
/// # }
/// ```
pub fn refresh_gauges() {
    for breaker in crate::breaker::all_breakers() {
        breaker.publish();
    }
    for pool in crate::budget::all_pools() {
        pool.refresh();
    }
    for pacer in crate::pace::all_pacers() {
        pacer.publish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_list_every_stop_reason_and_fallback_kind() {
        // An exhaustive match: a new variant does not compile until it has a place here,
        // and then this test fails until NAMES has its name.
        fn seat(stop: &StopReason) -> usize {
            match stop {
                StopReason::Success => 0,
                StopReason::NotRetryable => 1,
                StopReason::ServerSaidNoRetry => 2,
                StopReason::AttemptsExhausted => 3,
                StopReason::RetryAfterTooLong { .. } => 4,
                StopReason::DeadlineExceeded => 5,
                StopReason::Cancelled => 6,
                StopReason::CircuitOpen { .. } => 7,
                StopReason::BreakerOpened => 8,
                StopReason::RetryBudgetExhausted => 9,
                StopReason::QueueFull => 10,
                StopReason::QueueTimeout { .. } => 11,
                StopReason::BudgetExhausted { .. } => 12,
                StopReason::PoolUnconfigured { .. } => 13,
                StopReason::Shed { .. } => 14,
                StopReason::PacerLineFull { .. } => 15,
                StopReason::StreamCut { .. } => 16,
            }
        }
        let d = Duration::ZERO;
        let every = [
            StopReason::Success,
            StopReason::NotRetryable,
            StopReason::ServerSaidNoRetry,
            StopReason::AttemptsExhausted,
            StopReason::RetryAfterTooLong {
                requested: d,
                max: d,
            },
            StopReason::DeadlineExceeded,
            StopReason::Cancelled,
            StopReason::CircuitOpen { retry_in: d },
            StopReason::BreakerOpened,
            StopReason::RetryBudgetExhausted,
            StopReason::QueueFull,
            StopReason::QueueTimeout { waited: d },
            StopReason::BudgetExhausted {
                scope: BudgetScope::Call,
                spent: Spend::ZERO,
                limit: Budget::micros(1),
            },
            StopReason::PoolUnconfigured { pool: "p" },
            StopReason::Shed {
                regime: Regime::Overload,
            },
            StopReason::PacerLineFull { max_wait: d },
            StopReason::StreamCut {
                chunks: 3,
                class: ErrorClass::Transport,
            },
        ];
        assert_eq!(StopReason::NAMES.len(), every.len());
        for (i, stop) in every.iter().enumerate() {
            assert_eq!(seat(stop), i);
            assert_eq!(StopReason::NAMES[i], stop.as_str());
        }
        let kinds = |kind: &FallbackKind| match kind {
            FallbackKind::Cached => 0,
            FallbackKind::Function(_) => 1,
            FallbackKind::Queue => 2,
        };
        for kind in [
            FallbackKind::Cached,
            FallbackKind::Function("f"),
            FallbackKind::Queue,
        ] {
            assert_eq!(FallbackKind::NAMES[kinds(&kind)], kind.as_str());
        }
    }
}
