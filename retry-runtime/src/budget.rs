//! Spend limits: per call (`budget = "0.10usd"`), per workflow ([`workflow`]) and per time
//! window (`pool = "openai-hourly"`), hard and logged.
//!
//! Workflows and pools are [`Ledger`]s: a limit and one `AtomicU64` holding the window and
//! the *committed* amount (settled spend plus reservations in flight). An attempt reserves
//! its expected cost before it starts and settles its real cost after, so concurrent callers
//! cannot all see room for the last dollar: a ledger exceeds its limit only by what attempts
//! in flight cost beyond what they reserved.
//!
//! **The expected cost of an attempt** is a running estimate per call site: an exponentially
//! weighted moving average of what successful attempts there cost (weight 1/8 on the newest,
//! integer arithmetic). Successes, because the attempt about to be made may well succeed and
//! cost a full answer. Within one call, the costliest attempt so far is a floor for the next
//! one's estimate (its own billed failures say more than the site's successes). Before the
//! first success at a call site the estimate is zero: the first attempts are limited only by
//! what has actually been spent.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::PoolSetting;
use crate::metric_names::{self, LazyGauge};
use crate::registry::{Named, Registry, Slot};
use crate::spend::{Exhausted, Spend, Unit};

pub use crate::spend::{Budget, BudgetScope};

// Ledger word: [window:24][committed:40].
const COMMITTED_BITS: u32 = 40;
const COMMITTED_MASK: u64 = (1 << COMMITTED_BITS) - 1;
const WINDOW_MASK: u64 = (1 << (64 - COMMITTED_BITS)) - 1;

fn pack(window: u64, committed: u64) -> u64 {
    ((window & WINDOW_MASK) << COMMITTED_BITS) | committed.min(COMMITTED_MASK)
}

fn unpack(bits: u64) -> (u64, u64) {
    (bits >> COMMITTED_BITS, bits & COMMITTED_MASK)
}

/// The ledger rule: `expected` more fits under `limit` with `committed` already taken. A
/// reached limit refuses even a zero estimate.
fn fits(committed: u64, expected: u64, limit: u64) -> bool {
    committed < limit && committed.saturating_add(expected) <= limit
}

#[doc(hidden)]
/// A reservation held by an attempt in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    window: u64,
    amount: u64,
}

/// A limit with lock-free reserve / settle. Pools roll over each `window`; a workflow's
/// ledger has no window.
#[derive(Debug)]
pub struct Ledger {
    limit: Option<Budget>,
    window_ms: Option<u64>,
    state: AtomicU64,
    total_micros: AtomicU64,
    total_tokens: AtomicU64,
    warned_window: AtomicU64,
}

impl Ledger {
    /// A ledger with an optional limit (none: it only counts) and an optional window.
    pub fn new(limit: Option<Budget>, window: Option<Duration>) -> Self {
        Self {
            limit,
            window_ms: window.map(|w| (w.as_millis() as u64).max(1)),
            state: AtomicU64::new(pack(0, 0)),
            total_micros: AtomicU64::new(0),
            total_tokens: AtomicU64::new(0),
            warned_window: AtomicU64::new(u64::MAX),
        }
    }

    /// The limit, if any.
    pub fn limit(&self) -> Option<Budget> {
        self.limit
    }

    fn window_at(&self, now_ms: u64) -> u64 {
        self.window_ms.map_or(0, |w| (now_ms / w) & WINDOW_MASK)
    }

    #[doc(hidden)]
    /// Reserve `expected` (in the limit's unit) for an attempt. Refused, with what is
    /// committed in the current window, when it would not fit or the limit is already reached.
    pub fn reserve(&self, expected: u64, now_ms: u64) -> Result<Reservation, u64> {
        let window = self.window_at(now_ms);
        let Some(limit) = self.limit else {
            return Ok(Reservation { window, amount: 0 });
        };
        let mut bits = self.state.load(Ordering::Acquire);
        loop {
            let (at, committed) = unpack(bits);
            let committed = if at == window { committed } else { 0 }; // a new window starts empty
            if !fits(committed, expected, limit.amount()) {
                return Err(committed);
            }
            let next = pack(window, committed + expected);
            match self
                .state
                .compare_exchange_weak(bits, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    return Ok(Reservation {
                        window,
                        amount: expected,
                    })
                }
                Err(actual) => bits = actual,
            }
        }
    }

    #[doc(hidden)]
    /// Replace a reservation by the real cost.
    pub fn settle(&self, reservation: Reservation, real: Spend, now_ms: u64) {
        self.total_micros.fetch_add(real.micros(), Ordering::AcqRel);
        self.total_tokens.fetch_add(real.tokens(), Ordering::AcqRel);
        let Some(limit) = self.limit else { return };
        let real = real.amount(limit.unit());
        let window = self.window_at(now_ms);
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
                let (at, committed) = unpack(bits);
                Some(if at == window && at == reservation.window {
                    pack(
                        at,
                        committed
                            .saturating_sub(reservation.amount)
                            .saturating_add(real),
                    )
                } else if at == window {
                    // Reserved in an earlier window (already rolled over): charge this one.
                    pack(at, committed.saturating_add(real))
                } else {
                    pack(window, real)
                })
            });
    }

    #[doc(hidden)]
    /// Give a reservation back (the attempt never ran, or was dropped).
    pub fn release(&self, reservation: Reservation) {
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
                let (at, committed) = unpack(bits);
                (at == reservation.window)
                    .then(|| pack(at, committed.saturating_sub(reservation.amount)))
            });
    }

    /// Would an attempt expected to cost `expected` fit now? If not: what is committed, and
    /// the limit (a ledger without a limit always has room).
    pub fn room_for(&self, expected: Spend, now_ms: u64) -> Result<(), (Spend, Budget)> {
        let Some(limit) = self.limit else {
            return Ok(());
        };
        let committed = self.committed(now_ms);
        if fits(committed, expected.amount(limit.unit()), limit.amount()) {
            Ok(())
        } else {
            Err((amount(limit.unit(), committed), limit))
        }
    }

    /// Committed (settled plus reserved) in the current window, in the limit's unit.
    pub fn committed(&self, now_ms: u64) -> u64 {
        let (at, committed) = unpack(self.state.load(Ordering::Acquire));
        if at == self.window_at(now_ms) {
            committed
        } else {
            0
        }
    }

    /// Committed in the window of the ledger's last write, with no clock read: what it is
    /// right after a reservation or a settlement.
    fn committed_latest(&self) -> u64 {
        unpack(self.state.load(Ordering::Acquire)).1
    }

    /// Everything ever settled here (all windows).
    pub fn total(&self) -> Spend {
        Spend::new(
            self.total_micros.load(Ordering::Acquire),
            self.total_tokens.load(Ordering::Acquire),
        )
    }

    /// True once per window: the first time the limit is hit in it.
    fn first_hit_in_window(&self, now_ms: u64) -> bool {
        let window = self.window_at(now_ms);
        self.warned_window.swap(window, Ordering::AcqRel) != window
    }
}

/// A named spend pool shared by every call site that names it, configured at run time with
/// `[pool.NAME] limit = "5.00usd"`, `window = "1h"`.
#[derive(Debug)]
pub struct Pool {
    name: &'static str,
    ledger: Ledger,
    // Why the pool refuses every call (its configuration is missing where it should be), and
    // when that was last said (ms on the runtime clock).
    refused: Option<String>,
    said_at: AtomicU64,
    committed_gauge: LazyGauge,
    limit_gauge: LazyGauge,
}

/// What a pool has committed in its current window, against its limit: from
/// [`pool_usage`] or [`Pool::usage`].
///
/// With a shared store, `committed` is the fleet's committed amount as this process last saw
/// it (each admission through the store mirrors it); `total` is what this process settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolUsage {
    /// Settled spend plus the reservations of attempts in flight, in the current window, in
    /// the limit's unit (micro-dollars or tokens). Zero for a pool without a limit, which
    /// only counts (see `total`).
    pub committed: Spend,
    /// The most the pool lets calls commit in one window; `None` for a pool without a limit.
    pub limit: Option<Budget>,
    /// The window the limit applies to; `None` without a limit.
    pub window: Option<Duration>,
    /// Time until the current window rolls over and the pool refills; `None` without a limit.
    pub resets_in: Option<Duration>,
    /// Everything settled in the pool since the process started, all windows.
    pub total: Spend,
}

impl PoolUsage {
    /// `committed` over `limit` (1.0 when full; a little over 1.0 when attempts in flight cost
    /// more than they reserved); `None` without a limit.
    pub fn fraction(&self) -> Option<f64> {
        let limit = self.limit?;
        let committed = self.committed.amount(limit.unit());
        Some(if limit.amount() == 0 {
            1.0
        } else {
            committed as f64 / limit.amount() as f64
        })
    }
}

/// What the pool named `name` has committed in its current window, and its limit; `None` if no
/// call (nor [`pool`]) has used that name yet. It creates no pool and reads the clock once.
///
/// ```
/// use retry_runtime::{pool, pool_usage, Spend};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// assert_eq!(pool_usage("doc-usage"), None); // never named yet
/// pool("doc-usage"); // a call naming the pool creates it
/// let usage = pool_usage("doc-usage").unwrap();
/// assert_eq!(usage.committed, Spend::ZERO);
/// // No configuration here, so the pool only counts: no limit, no window.
/// assert_eq!((usage.limit, usage.fraction()), (None, None));
/// # }
/// ```
pub fn pool_usage(name: &str) -> Option<PoolUsage> {
    POOLS.find(name).map(Pool::usage)
}

/// Every pool created so far (in the current test-isolation scope), for the gauges' refresh.
pub(crate) fn all_pools() -> Vec<&'static Pool> {
    POOLS.all()
}

impl Pool {
    /// What the pool has committed in its current window, and its limit (see [`PoolUsage`]).
    /// Reads the clock once.
    pub fn usage(&self) -> PoolUsage {
        let ledger = &self.ledger;
        let now_ms = crate::clock::now_ms();
        let limit = ledger.limit;
        let window_ms = ledger.window_ms.filter(|_| limit.is_some());
        PoolUsage {
            committed: limit.map_or(Spend::ZERO, |l| amount(l.unit(), ledger.committed(now_ms))),
            limit,
            window: window_ms.map(Duration::from_millis),
            resets_in: window_ms.map(|w| Duration::from_millis(w - now_ms % w)),
            total: ledger.total(),
        }
    }

    /// Set the pool's gauges (committed and limit, in the limit's unit) to `committed`; a
    /// pool without a limit has none.
    fn publish_committed(&self, committed: u64) {
        let (Some(limit), Some(window_ms)) = (self.ledger.limit, self.ledger.window_ms) else {
            return;
        };
        let (committed_name, limit_name) = match limit.unit() {
            Unit::Usd => (
                metric_names::POOL_COMMITTED_MICROS,
                metric_names::POOL_LIMIT_MICROS,
            ),
            Unit::Tokens => (
                metric_names::POOL_COMMITTED_TOKENS,
                metric_names::POOL_LIMIT_TOKENS,
            ),
        };
        let name = self.name;
        let labels = || {
            let window = if window_ms % 1000 == 0 {
                format!("{}s", window_ms / 1000)
            } else {
                format!("{window_ms}ms")
            };
            vec![("pool", name.to_string()), ("window", window)]
        };
        self.committed_gauge
            .set(committed_name, labels, committed as f64);
        self.limit_gauge
            .set(limit_name, labels, limit.amount() as f64);
    }

    /// After a reservation, settlement or release: the gauges follow the ledger, with no
    /// clock read.
    fn publish(&self) {
        self.publish_committed(self.ledger.committed_latest());
    }

    /// Set the gauges from the current window (a window that rolled over with no call in it
    /// is empty, though no write said so).
    pub(crate) fn refresh(&self) {
        self.publish_committed(self.ledger.committed(crate::clock::now_ms()));
    }

    /// Take the fleet's committed amount as the ledger's, as the shared store just said, and
    /// show it.
    pub(crate) fn mirror(&self, committed: u64, now_ms: u64) {
        self.ledger.mirror(committed, now_ms);
        self.publish();
    }

    /// Whether this pool refuses every call (its configuration is missing where it should
    /// be). The ERROR event that says why comes at most once a minute, for as long as calls
    /// keep coming: an operator who missed the first one sees it again.
    pub(crate) fn refuses(&self) -> bool {
        let Some(why) = &self.refused else {
            return false; // a configured pool: no clock read, nothing else
        };
        let now_ms = crate::clock::now_ms();
        let said = self.said_at.load(Ordering::Acquire);
        if (said == 0 || now_ms.saturating_sub(said) >= 60_000)
            && self
                .said_at
                .compare_exchange(said, now_ms.max(1), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            tracing::error!(target: "retry_runtime", pool = self.name, "{why}: its calls are refused (set {}=1 to count without a limit)", crate::config::POOLS_FAIL_OPEN_ENV);
        }
        true
    }

    /// The pool's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Its ledger: limit, committed amount, total spend.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Log the first refusal of each window (one WARN event, not one per call).
    pub(crate) fn refused(&self, committed: u64, now_ms: u64) {
        if self.ledger.first_hit_in_window(now_ms) {
            let limit = self.ledger.limit.map(|l| l.to_string()).unwrap_or_default();
            tracing::warn!(
                target: "retry_runtime",
                pool = self.name,
                limit = %limit,
                committed,
                "spend pool exhausted: calls are refused until the window rolls over"
            );
        }
    }
}

static POOLS: Registry<Pool> = Registry::new();

impl Named for Pool {
    fn name(&self) -> &'static str {
        self.name
    }
}

/// The process-wide pool with this name, created on first use from the run-time config. With
/// no pool configured at all, a pool counts spend but limits nothing, and says so once; a pool
/// the configuration should limit and does not (the file failed to load, or it configures
/// other pools but not this name) refuses its calls with `Rejected::PoolUnconfigured` and an
/// ERROR event, unless `RETRY_RUNTIME_POOLS_FAIL_OPEN=1` lets it count without a limit.
pub fn pool(name: &str) -> &'static Pool {
    POOLS
        .get_or_create(name, |name| {
            let (config, refused) = match crate::config::pool_config(name) {
                PoolSetting::Limited(config) => (Some(config), None),
                PoolSetting::Unlimited => {
                    tracing::warn!(target: "retry_runtime", pool = name, "pool is not configured: it counts spend but limits nothing; add [pool.{name}] to the configuration");
                    (None, None)
                }
                PoolSetting::Refused { why } => (None, Some(why)),
            };
            Pool {
                name,
                ledger: Ledger::new(config.map(|c| c.limit), config.map(|c| c.window)),
                refused,
                said_at: AtomicU64::new(0),
                committed_gauge: LazyGauge::new(),
                limit_gauge: LazyGauge::new(),
            }
        })
        .0
}

/// A call site's pool, resolved once.
pub type PoolSlot = Slot<Pool>;

impl Slot<Pool> {
    /// The pool, if the call site names one.
    #[inline]
    pub fn get(&self) -> Option<&'static Pool> {
        self.get_with(pool)
    }
}

/// Running estimate of one attempt's cost at a call site (see the module docs): an average of
/// what successes cost (the expected cost), and the most any attempt has cost (what pools and
/// workflows reserve). Until the site has seen a cost, attempts that reserve in a pool or
/// workflow take turns: one at a time, so that a burst of calls at a site nobody has measured
/// cannot all be admitted on an estimate of zero.
#[derive(Debug)]
pub struct SpendEstimate {
    // EWMA scaled by 8: est = scaled / 8; update scaled += x - scaled / 8.
    micros8: AtomicU64,
    tokens8: AtomicU64,
    // The costliest attempt seen (a success or a billed failure), per unit.
    max_micros: AtomicU64,
    max_tokens: AtomicU64,
    known: std::sync::atomic::AtomicBool,
    turn: tokio::sync::Semaphore,
}

impl Default for SpendEstimate {
    fn default() -> Self {
        Self::new()
    }
}

impl SpendEstimate {
    /// No observations yet.
    pub const fn new() -> Self {
        Self {
            micros8: AtomicU64::new(0),
            tokens8: AtomicU64::new(0),
            max_micros: AtomicU64::new(0),
            max_tokens: AtomicU64::new(0),
            known: std::sync::atomic::AtomicBool::new(false),
            turn: tokio::sync::Semaphore::const_new(1),
        }
    }

    /// Learn from a successful attempt's cost (a success says what an answer costs, even a
    /// free one).
    pub fn observe(&self, spend: Spend) {
        fn update(cell: &AtomicU64, x: u64) {
            let next = |s: u64| {
                if s == 0 {
                    x.saturating_mul(8)
                } else {
                    (s - s / 8).saturating_add(x)
                }
            };
            // At a steady cost the average does not move: a load, and no write (which would
            // take the cache line from the other cores on every call).
            let s = cell.load(Ordering::Acquire);
            if next(s) == s {
                return;
            }
            let _ = cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| Some(next(s)));
        }
        if !spend.is_zero() {
            update(&self.micros8, spend.micros());
            update(&self.tokens8, spend.tokens());
        }
        self.observe_billed(spend);
        self.mark_known();
    }

    // Reads first: on the happy path the costliest and `known` rarely change, and a load
    // leaves the cache line shared where a write would bounce it between cores.
    fn mark_known(&self) {
        if !self.known.load(Ordering::Acquire) {
            self.known.store(true, Ordering::Release);
        }
    }

    /// Learn from a failed attempt's bill: it raises the most an attempt is known to cost.
    pub fn observe_billed(&self, spend: Spend) {
        if spend.is_zero() {
            return;
        }
        let raise = |cell: &AtomicU64, x: u64| {
            if x > cell.load(Ordering::Acquire) {
                cell.fetch_max(x, Ordering::AcqRel);
            }
        };
        raise(&self.max_micros, spend.micros());
        raise(&self.max_tokens, spend.tokens());
        self.mark_known();
    }

    /// The expected cost of one more attempt.
    pub fn expected(&self) -> Spend {
        Spend::new(
            self.micros8.load(Ordering::Acquire) / 8,
            self.tokens8.load(Ordering::Acquire) / 8,
        )
    }

    /// The most one attempt has cost here: what a ledger reserves for the next one.
    pub fn costliest(&self) -> Spend {
        Spend::new(
            self.max_micros.load(Ordering::Acquire),
            self.max_tokens.load(Ordering::Acquire),
        )
    }

    /// Whether any attempt here has said what it costs.
    pub fn is_known(&self) -> bool {
        self.known.load(Ordering::Acquire)
    }

    /// Wait for this site's turn to make an attempt of unknown cost.
    pub(crate) async fn turn(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.turn.acquire().await.ok()
    }
}

// ---- workflows ----

/// One workflow scope: its ledger, and the scope it is nested in.
#[derive(Debug)]
pub struct WorkflowScope {
    ledger: Ledger,
    parent: Option<Arc<WorkflowScope>>,
}

impl WorkflowScope {
    /// This scope and every scope it is nested in, innermost first.
    pub(crate) fn chain(self: &Arc<Self>) -> impl Iterator<Item = &WorkflowScope> {
        std::iter::successors(Some(&**self), |s| s.parent.as_deref())
    }
}

tokio::task_local! {
    static WORKFLOW: Arc<WorkflowScope>;
}

/// A handle to the workflow the current task runs in; carry it into spawned tasks.
///
/// Spawned tasks do not inherit a workflow silently (task-locals do not cross `spawn`).
/// To keep a spawned task's calls inside the cap, take the handle and scope the task:
///
/// ```
/// use retry_runtime::{workflow, Budget, Workflow};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let ((), spent) = workflow(Budget::usd(1.00), async {
///     let scope = Workflow::current().expect("inside a workflow");
///     tokio::spawn(scope.scope(async { /* #[resilient] calls here count too */ }))
///         .await
///         .unwrap();
/// })
/// .await;
/// assert!(spent.is_zero());
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Workflow(Arc<WorkflowScope>);

impl Workflow {
    /// The workflow of the current task, if any.
    pub fn current() -> Option<Workflow> {
        WORKFLOW.try_with(|w| Workflow(w.clone())).ok()
    }

    /// Run `fut` inside this workflow (e.g. a spawned task's body).
    pub fn scope<F: Future>(self, fut: F) -> impl Future<Output = F::Output> {
        WORKFLOW.scope(self.0, fut)
    }

    /// What calls in this scope have spent so far.
    pub fn spent(&self) -> Spend {
        self.0.ledger.total()
    }

    /// This scope's own limit.
    pub fn limit(&self) -> Option<Budget> {
        self.0.ledger.limit
    }
}

/// Whether this task is inside a [`workflow`] (without taking its scope).
pub(crate) fn in_workflow() -> bool {
    WORKFLOW.try_with(|_| ()).is_ok()
}

pub(crate) fn current_workflow() -> Option<Arc<WorkflowScope>> {
    WORKFLOW.try_with(Arc::clone).ok()
}

/// Run `fut` with `budget` capping everything `#[resilient]` calls spend inside it; returns
/// the output and what was spent.
///
/// A call that would start past the cap is refused with `Rejected::BudgetExhausted`; a
/// retry that would not fit stops its call with `StopReason::BudgetExhausted`. Scopes nest,
/// and a nested scope can only tighten: each call is charged to every enclosing scope and
/// must fit in all of them.
///
/// ```
/// use retry_runtime::{workflow, Budget};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let (answer, spent) = workflow(Budget::usd(1.00), async { 42 }).await;
/// assert_eq!((answer, spent.micros()), (42, 0));
/// # }
/// ```
pub async fn workflow<F: Future>(budget: Budget, fut: F) -> (F::Output, Spend) {
    let scope = Arc::new(WorkflowScope {
        ledger: Ledger::new(Some(budget), None),
        parent: current_workflow(),
    });
    let output = WORKFLOW.scope(scope.clone(), fut).await;
    (output, scope.ledger.total())
}

/// The reservations an attempt holds in its pool and workflow scopes.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Held {
    pool: Option<PoolHold>,
    // Workflow ledgers have no window; each scope reserved `expected` in its own unit.
    workflow: Option<Spend>,
}

/// Where the pool's reservation is: in this process's ledger, or in the shared store.
#[derive(Debug, Clone, Copy)]
enum PoolHold {
    Local(Reservation),
    /// In the store's window `window` (the store's clock), `amount` in the pool's unit.
    Shared {
        window: u64,
        amount: u64,
    },
}

/// The ledgers a call charges: its pool and its workflow chain.
#[derive(Debug, Default)]
pub(crate) struct Ledgers {
    pub(crate) pool: Option<&'static Pool>,
    pub(crate) workflow: Option<Arc<WorkflowScope>>,
}

fn reservation_in(ledger: &Ledger, expected: Spend) -> Reservation {
    Reservation {
        window: 0,
        amount: ledger.limit.map_or(0, |l| expected.amount(l.unit())),
    }
}

impl Pool {
    /// What the shared store needs to reserve `expected` here; `None` for a pool without a
    /// limit (it only counts, locally).
    pub(crate) fn shared_ask(&self, expected: Spend) -> Option<crate::store::PoolAsk> {
        let limit = self.ledger.limit?;
        Some(crate::store::PoolAsk {
            name: self.name,
            window_ms: self.ledger.window_ms?,
            limit: limit.amount(),
            expected: expected.amount(limit.unit()),
        })
    }

    /// A refusal by the shared store: what is committed there, as the scope, spend and limit
    /// a `Rejected::BudgetExhausted` carries (logged once per window, like a local refusal).
    pub(crate) fn refused_shared(&self, committed: u64, now_ms: u64) -> Exhausted {
        self.refused(committed, now_ms);
        let limit = self.ledger.limit.unwrap_or(Budget::micros(0));
        Exhausted {
            scope: BudgetScope::Pool(self.name),
            spent: amount(limit.unit(), committed),
            limit,
        }
    }
}

impl Ledger {
    /// Take the fleet's committed amount (as the shared store just said) as this ledger's,
    /// so that if the store becomes unreachable, local state goes on from the fleet's total
    /// rather than from this process's share of it.
    pub(crate) fn mirror(&self, committed: u64, now_ms: u64) {
        if self.limit.is_some() {
            let window = self.window_at(now_ms);
            self.state.store(pack(window, committed), Ordering::Release);
        }
    }

    /// Correct the mirrored amount by a settlement made in the shared store.
    fn mirror_settle(&self, reserved: u64, real: u64, now_ms: u64) {
        let window = self.window_at(now_ms);
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
                let (at, committed) = unpack(bits);
                (at == window)
                    .then(|| pack(at, committed.saturating_sub(reserved).saturating_add(real)))
            });
    }

    fn count(&self, real: Spend) {
        self.total_micros.fetch_add(real.micros(), Ordering::AcqRel);
        self.total_tokens.fetch_add(real.tokens(), Ordering::AcqRel);
    }
}

impl Ledgers {
    pub(crate) fn is_empty(&self) -> bool {
        self.pool.is_none() && self.workflow.is_none()
    }

    /// Reserve `expected` everywhere, or nowhere: on refusal, what was reserved is released.
    pub(crate) fn reserve(&self, expected: Spend, now_ms: u64) -> Result<Held, Exhausted> {
        let mut held = Held::default();
        if let Some(pool) = self.pool {
            let unit_amount = pool.ledger.limit.map_or(0, |l| expected.amount(l.unit()));
            match pool.ledger.reserve(unit_amount, now_ms) {
                Ok(r) => {
                    held.pool = Some(PoolHold::Local(r));
                    pool.publish();
                }
                Err(committed) => {
                    pool.refused(committed, now_ms);
                    let limit = pool.ledger.limit.unwrap_or(Budget::micros(0));
                    let spent = amount(limit.unit(), committed);
                    return Err(Exhausted {
                        scope: BudgetScope::Pool(pool.name),
                        spent,
                        limit,
                    });
                }
            }
        }
        self.add_workflows(held, expected, now_ms)
    }

    /// The pool's reservation was made in the shared store (`shared`: its window and amount,
    /// `None` for a pool it does not hold, e.g. one without a limit); reserve the rest
    /// locally, or give the shared reservation back.
    pub(crate) fn reserve_after_shared(
        &self,
        shared: Option<(u64, u64)>,
        expected: Spend,
        now_ms: u64,
    ) -> Result<Held, Exhausted> {
        let mut held = Held::default();
        if let Some(pool) = self.pool {
            held.pool = Some(match shared {
                Some((window, amount)) => PoolHold::Shared { window, amount },
                // A pool without a limit only counts: locally.
                None => PoolHold::Local(Reservation {
                    window: pool.ledger.window_at(now_ms),
                    amount: 0,
                }),
            });
        }
        self.add_workflows(held, expected, now_ms)
    }

    /// Complete `held` (the pool's part) with the workflows' reservations, or give it all back.
    fn add_workflows(
        &self,
        mut held: Held,
        expected: Spend,
        now_ms: u64,
    ) -> Result<Held, Exhausted> {
        match self.reserve_workflows(expected, now_ms) {
            Ok(workflow) => {
                held.workflow = workflow;
                Ok(held)
            }
            Err(refused) => {
                self.release(held);
                Err(refused)
            }
        }
    }

    fn reserve_workflows(&self, expected: Spend, now_ms: u64) -> Result<Option<Spend>, Exhausted> {
        let Some(scope) = &self.workflow else {
            return Ok(None);
        };
        for (i, s) in scope.chain().enumerate() {
            let want = reservation_in(&s.ledger, expected);
            if let Err(committed) = s.ledger.reserve(want.amount, now_ms) {
                for undo in scope.chain().take(i) {
                    undo.ledger.release(reservation_in(&undo.ledger, expected));
                }
                let limit = s.ledger.limit.unwrap_or(Budget::micros(0));
                return Err(Exhausted {
                    scope: BudgetScope::Workflow,
                    spent: amount(limit.unit(), committed),
                    limit,
                });
            }
        }
        Ok(Some(expected))
    }

    /// Replace the reservations by the attempt's real cost.
    pub(crate) fn settle(&self, held: Held, real: Spend, now_ms: u64) {
        if let (Some(pool), Some(hold)) = (self.pool, held.pool) {
            match hold {
                PoolHold::Local(r) => {
                    pool.ledger.settle(r, real, now_ms);
                    // Configured to share, but settled on local state: owed to the store
                    // (which keeps it while it is away, and adds it when it is back).
                    if let (Some(shared), Some(limit), Some(window_ms)) = (
                        crate::store::active(),
                        pool.ledger.limit,
                        pool.ledger.window_ms,
                    ) {
                        let amount = real.amount(limit.unit());
                        if amount > 0 {
                            shared.send(crate::store::Update::AddSpend {
                                pool: pool.name,
                                window_ms,
                                amount,
                            });
                        }
                    }
                }
                PoolHold::Shared { window, amount } => {
                    pool.ledger.count(real);
                    if let (Some(shared), Some(limit), Some(window_ms)) = (
                        crate::store::active(),
                        pool.ledger.limit,
                        pool.ledger.window_ms,
                    ) {
                        let real = real.amount(limit.unit());
                        pool.ledger.mirror_settle(amount, real, now_ms);
                        shared.send(crate::store::Update::Settle {
                            pool: pool.name,
                            window_ms,
                            window,
                            reserved: amount,
                            real,
                        });
                    }
                }
            }
            pool.publish();
        }
        if let (Some(scope), Some(expected)) = (&self.workflow, held.workflow) {
            for s in scope.chain() {
                s.ledger
                    .settle(reservation_in(&s.ledger, expected), real, now_ms);
            }
        }
    }

    /// Give the reservations back (the attempt was dropped).
    pub(crate) fn release(&self, held: Held) {
        if let (Some(pool), Some(hold)) = (self.pool, held.pool) {
            match hold {
                PoolHold::Local(r) => {
                    pool.ledger.release(r);
                    pool.publish();
                }
                PoolHold::Shared { window, amount } => {
                    if let Some(shared) = crate::store::active() {
                        shared.send(crate::store::Update::Release {
                            pool: pool.name,
                            window,
                            reserved: amount,
                        });
                    }
                }
            }
        }
        if let (Some(scope), Some(expected)) = (&self.workflow, held.workflow) {
            for s in scope.chain() {
                s.ledger.release(reservation_in(&s.ledger, expected));
            }
        }
    }

    /// Would one more attempt costing `expected` fit everywhere? (Checked before a retry's
    /// wait, so a call does not sleep for an attempt it could not afford.)
    pub(crate) fn has_room(&self, expected: Spend, now_ms: u64) -> Result<(), Exhausted> {
        if let Some(pool) = self.pool {
            pool.ledger
                .room_for(expected, now_ms)
                .map_err(|(spent, limit)| {
                    pool.refused(spent.amount(limit.unit()), now_ms);
                    Exhausted {
                        scope: BudgetScope::Pool(pool.name),
                        spent,
                        limit,
                    }
                })?;
        }
        if let Some(scope) = &self.workflow {
            for s in scope.chain() {
                s.ledger
                    .room_for(expected, now_ms)
                    .map_err(|(spent, limit)| Exhausted {
                        scope: BudgetScope::Workflow,
                        spent,
                        limit,
                    })?;
            }
        }
        Ok(())
    }
}

fn amount(unit: Unit, value: u64) -> Spend {
    match unit {
        Unit::Usd => Spend::from_micros(value),
        Unit::Tokens => Spend::from_tokens(value),
    }
}
