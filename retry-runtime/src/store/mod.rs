//! Distributed state: share breakers, retry budgets, pacing and spend pools across a fleet of
//! processes.
//!
//! By default every process keeps its own state: each breaker, pool and pacer holds it in its
//! own atomics (the in-memory store: no lock, no allocation, no I/O on the happy path), and
//! [`status`] says [`StoreStatus::Memory`]. With the `redis` feature and a `[store]` section
//! (or `RETRY_RUNTIME_REDIS_URL`), the operations that must agree across processes go through a
//! [`Store`]: the Redis store (`store::redis::RedisStore`) shares them through one Redis server.
//!
//! ```toml
//! [store]
//! redis_url = "redis://127.0.0.1:6379"   # RETRY_RUNTIME_REDIS_URL overrides it
//! prefix = "resilient"                    # key namespace; one per fleet that shares state
//! timeout = "50ms"                        # per operation
//! reconnect = "500ms"                     # how often to try again while unreachable
//! ```
//!
//! # What is shared, and how
//!
//! * **Admission, one round trip.** Before an attempt, one script (Redis: one `EVALSHA`) checks
//!   the breaker's shared open state, reserves the attempt's expected cost in the pool's
//!   current window, takes the pacer's next slot in the fleet-wide request bucket, and counts
//!   the retry budget's deposit (first attempts) or withdrawal (retries). All or nothing.
//! * **Half-open probes, fleet-wide.** While the breaker's shared open state has cooled down,
//!   the same round trip takes one of its `probes` leases (or refuses the attempt): the fleet
//!   sends exactly `probes` probes at a time. A lease lasts [`probe_lease`] unless its holder
//!   renews it (every third of it, while the attempt runs); the first probe's result ends the
//!   half-open period and every lease in it, and a dropped probe gives its lease back at once.
//!   A process that dies holding one frees it when it lapses, at most one lease later.
//! * **After the attempt**, settling the pool (real cost minus reservation), giving a dropped
//!   attempt's reservation back and publishing a breaker's transition are sent in the
//!   background: the caller does not wait for them.
//! * **Time** is the store's clock (Redis `TIME`): windows and buckets agree across processes
//!   whose own clocks differ.
//!
//! # When the store is unreachable
//!
//! Each operation has a short timeout ([`StoreConfig::with_timeout`], 50 ms by default; an
//! admission awaited on the caller's task is given up within an eighth of it after, by a
//! watchdog that ticks on the store's thread). An
//! operation that fails or times out switches the process to local state ([`StoreStatus::Local`]):
//! calls go on with the in-memory behaviour, one WARN event says so (target `retry_runtime`),
//! and a background task tries the store again every `reconnect` (500 ms). When it answers,
//! the process reconciles and shares again (one INFO event):
//!
//! * spend settled locally while away (or whose settlement was lost) is added to the pool's
//!   *current* shared window;
//! * a breaker this process opened is published if its cooldown is still running (an open
//!   breaker already in the store for longer is kept), so that a store that lost it (a
//!   restarted Redis) has it again;
//! * from then on the store's breaker state wins over the local one;
//! * the retry budget's and the pacer's local counts are not replayed: they describe seconds
//!   that are over.
//!
//! While the store is away, a half-open breaker admits its `probes` in each process, as
//! without a store; each such probe is a WARN event (target `retry_runtime`) that says so.
//!
//! Nothing here panics or propagates a store error to a call: a call never waits for the store
//! longer than the timeout, and connecting happens in the background.
//!
//! See `docs/ARCHITECTURE.md` ("Distributed state") for the keys and scripts.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::config::ConfigError;

pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;

mod probe;
mod shared;

pub(crate) use probe::ProbeLease;
pub(crate) use shared::Shared;

/// Where the shared state lives now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreStatus {
    /// No shared store is configured: every process keeps its own state.
    Memory,
    /// The shared store is configured and answering: state is shared with the fleet.
    Shared,
    /// The shared store is configured but unreachable (or not reached yet): this process runs
    /// on its local state and tries the store again in the background.
    Local,
}

impl StoreStatus {
    /// A short, stable name for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            StoreStatus::Memory => "memory",
            StoreStatus::Shared => "shared",
            StoreStatus::Local => "local",
        }
    }
}

impl fmt::Display for StoreStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a store operation failed. Logged, never returned to a call: the call goes on with
/// local state.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The operation did not answer within the configured timeout.
    #[error("the store did not answer within {0:?}")]
    Timeout(Duration),
    /// There is no connection (yet, or any more).
    #[error("not connected to the store")]
    NotConnected,
    /// The store answered with an error, or the connection failed.
    #[error("store error: {0}")]
    Backend(String),
    /// The store's answer did not have the expected shape.
    #[error("unexpected answer from the store: {0}")]
    Protocol(String),
}

/// A boxed future returned by [`Store`] operations (the store path may allocate; the in-memory
/// default never goes through it).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// The shared operations behind breakers, retry budgets, pacing and pools.
///
/// `redis::RedisStore` (feature `redis`) shares them through Redis; [`memory::MemoryStore`]
/// implements the same rules inside one process (for tests, and as the reference the Redis
/// scripts follow). Every time in these operations is the store's own clock.
pub trait Store: Send + Sync + 'static {
    /// What this store is, for events (`"redis"`, `"memory"`).
    fn kind(&self) -> &'static str;

    /// Everything an attempt's admission needs, in one round trip, all or nothing.
    fn admit(&self, ask: Admit) -> StoreFuture<'_, Admitted>;

    /// [`Store::admit`] on the caller's own task, when this store can answer there with no
    /// other thread in between (Redis: on a connection of the caller's tokio runtime); `Err`
    /// gives the ask back, and the runtime runs [`Store::admit`] on the store's thread
    /// instead (the default). The runtime bounds the future by the store's timeout in real
    /// time, from its own thread: the future must need neither the caller's clock (which may
    /// be paused) nor its timers (which it may not have).
    // The ask goes back by value, moved: boxing it would allocate on every admission.
    #[allow(clippy::result_large_err)]
    fn admit_here(&self, ask: Admit) -> Result<StoreFuture<'_, Admitted>, Admit> {
        Err(ask)
    }

    /// Apply a write that the caller does not wait for.
    fn update(&self, update: Update) -> StoreFuture<'_, ()>;

    /// Check (and, if needed, re-establish) the connection.
    fn ping(&self) -> StoreFuture<'_, ()>;
}

#[doc(hidden)]
/// One admission: the parts an attempt's call site needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admit {
    /// The call site's breaker and retry budget.
    pub breaker: Option<BreakerAsk>,
    /// The call site's pool, when it has a limit.
    pub pool: Option<PoolAsk>,
    /// The call site's pacer, when it has a known request rate (`rpm`).
    pub pace: Option<PaceAsk>,
    /// With [`Admit::breaker`]: an attempt that, while the breaker's stored open state has
    /// cooled down (half-open in the fleet), must hold one of its probe leases or be refused
    /// ([`Verdict::ProbesOut`]). `None`: a look, or a retry's withdrawal; no lease is asked.
    pub probe: Option<ProbeAsk>,
}

#[doc(hidden)]
/// The probe-lease part of an [`Admit`]: see [`probe_lease`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeAsk {
    /// The lease's token, unique in the fleet (a process's random number plus a count): what
    /// renews and releases it.
    pub token: u64,
    /// How many probes the breaker admits while half-open (its `probes`, at least 1).
    pub probes: u32,
    /// How long the lease holds unless renewed, in milliseconds of the store's clock.
    pub lease_ms: u64,
}

#[doc(hidden)]
/// The breaker part of an [`Admit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerAsk {
    /// The breaker's name.
    pub name: &'static str,
    /// A first attempt: deposit in the retry budget.
    pub deposit: bool,
    /// A retry: withdraw from the retry budget, under this rule.
    pub withdraw: Option<RetryRule>,
}

#[doc(hidden)]
/// The retry budget's rule (see [`crate::retry_budget`]): over the last
/// [`WINDOW_SECS`](crate::retry_budget::WINDOW_SECS) seconds, `retries * 10^6 <= first_attempts *
/// ratio_ppm + floor_per_window * 10^6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryRule {
    /// Retries per first attempt, in parts per million.
    pub ratio_ppm: u64,
    /// Retries always allowed per window.
    pub floor_per_window: u64,
}

#[doc(hidden)]
/// The pool part of an [`Admit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolAsk {
    /// The pool's name.
    pub name: &'static str,
    /// The window, in milliseconds of the store's clock.
    pub window_ms: u64,
    /// The limit, in the pool's unit (micro-dollars or tokens).
    pub limit: u64,
    /// What the attempt is expected to cost, in the same unit.
    pub expected: u64,
}

#[doc(hidden)]
/// The pacing part of an [`Admit`]: one request from a fleet-wide GCRA bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaceAsk {
    /// The pacer's name.
    pub name: &'static str,
    /// Microseconds per request (60 000 000 / rpm).
    pub interval_us: u64,
    /// Requests that may go at once after an idle spell (at least 1).
    pub burst: u64,
    /// The longest wait the caller accepts (what is left before its deadline).
    pub max_wait_us: u64,
}

#[doc(hidden)]
/// What the store decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Everything was taken: go ahead (after [`Admitted::pace_wait`]).
    Admitted,
    /// The breaker is open in the store.
    BreakerOpen,
    /// The fleet's retry budget has no room for this retry.
    RetryBudget,
    /// The pool's window has no room.
    PoolFull,
    /// The pacer's next slot comes after the caller's deadline.
    PaceTooLate,
    /// The breaker is half-open in the store and every one of its probe leases is held.
    ProbesOut,
}

#[doc(hidden)]
/// The breaker's shared state, as the store sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedBreaker {
    /// Changes whenever some process opens or closes the breaker in the store; zero while no
    /// open state is stored.
    pub generation: u64,
    /// How long the stored open state still rejects (zero: its cooldown is over);
    /// `None`: nothing is stored (closed).
    pub open_for: Option<Duration>,
}

#[doc(hidden)]
/// The store's answer to an [`Admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// The decision.
    pub verdict: Verdict,
    /// The breaker's shared state (when asked about a breaker).
    pub breaker: Option<SharedBreaker>,
    /// The pool's current window number (the store's time / window) and what is committed in
    /// it (after this reservation, when admitted).
    pub pool: Option<(u64, u64)>,
    /// How long to wait before sending (the pacer's slot).
    pub pace_wait: Duration,
    /// The attempt took the probe lease it asked for ([`Admit::probe`]): the breaker is
    /// half-open in the store, and this attempt is one of its probes.
    pub leased: bool,
}

#[doc(hidden)]
/// A write the caller does not wait for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// Replace a pool reservation by the real cost (in the pool's unit). If the window has
    /// rolled over since, the real cost is charged to the current one.
    Settle {
        /// The pool.
        pool: &'static str,
        /// Its window, in milliseconds.
        window_ms: u64,
        /// The window the reservation was made in.
        window: u64,
        /// The amount reserved.
        reserved: u64,
        /// The real cost.
        real: u64,
    },
    /// Give a reservation back (the attempt was dropped before it was billed).
    Release {
        /// The pool.
        pool: &'static str,
        /// The window the reservation was made in.
        window: u64,
        /// The amount reserved.
        reserved: u64,
    },
    /// Add spend to the pool's current window (reconciling what was spent on local state).
    AddSpend {
        /// The pool.
        pool: &'static str,
        /// Its window, in milliseconds.
        window_ms: u64,
        /// The amount, in the pool's unit.
        amount: u64,
    },
    /// A breaker opened in this process: reject in the whole fleet for `cooldown`. With
    /// `force` (a failed probe), replace a running open state; without, keep it.
    BreakerOpened {
        /// The breaker.
        breaker: &'static str,
        /// How long it rejects.
        cooldown: Duration,
        /// Replace a running open state.
        force: bool,
    },
    /// A breaker closed in this process (its probe succeeded): clear the shared open state
    /// (and the probe leases of its half-open period).
    BreakerClosed {
        /// The breaker.
        breaker: &'static str,
    },
    /// A probe still running: its lease holds `lease` from now (if it is still held: a lease
    /// that lapsed, or whose half-open period ended, is not taken again).
    ProbeRenewed {
        /// The breaker.
        breaker: &'static str,
        /// The lease's token ([`ProbeAsk::token`]).
        token: u64,
        /// How long it holds from now.
        lease: Duration,
    },
    /// A leased probe's result: it ends its half-open period, re-opening the breaker for
    /// `cooldown` (`Some`: it failed) or closing it (`None`: the provider answered), if the
    /// period is still the one it was leased in (its lease is still in the store); otherwise
    /// (another probe's result ended it first, or the lease lapsed and another was taken)
    /// nothing changes.
    ProbeEnded {
        /// The breaker.
        breaker: &'static str,
        /// The lease's token ([`ProbeAsk::token`]).
        token: u64,
        /// Re-open for this long; `None`: close.
        reopen: Option<Duration>,
    },
    /// A probe ended without a result (it was dropped, or refused by a later check of its
    /// admission): give its lease back.
    ProbeReleased {
        /// The breaker.
        breaker: &'static str,
        /// The lease's token ([`ProbeAsk::token`]).
        token: u64,
    },
}

/// The shortest lease a half-open probe holds in the store (see [`probe_lease`]).
pub const PROBE_LEASE_MIN: Duration = Duration::from_secs(2);

/// How long a half-open breaker's probe holds its fleet-wide slot unless renewed, for a store
/// whose per-operation `timeout` is this ([`StoreConfig::with_timeout`]): ten timeouts, and
/// at least [`PROBE_LEASE_MIN`] (2 s with the default 50 ms).
///
/// The process that holds it renews it every third of it while the attempt runs, so a live
/// probe keeps its slot however long it takes; one whose process dies (or loses the store)
/// frees it at most one lease after its last renewal, and a dropped probe gives it back at
/// once. Ten timeouts: a renewal may take a whole timeout, and a live probe should not lose
/// its lease to one slow answer.
///
/// ```
/// use std::time::Duration;
/// use retry_runtime::store::{probe_lease, DEFAULT_TIMEOUT};
///
/// assert_eq!(probe_lease(DEFAULT_TIMEOUT), Duration::from_secs(2));
/// assert_eq!(probe_lease(Duration::from_millis(500)), Duration::from_secs(5));
/// ```
pub fn probe_lease(timeout: Duration) -> Duration {
    timeout.saturating_mul(10).max(PROBE_LEASE_MIN)
}

pub(crate) use crate::config::store::{env_url, redact};
pub use crate::config::store::{
    StoreConfig, DEFAULT_PREFIX, DEFAULT_RECONNECT, DEFAULT_TIMEOUT, REDIS_URL_ENV,
};

// ---- the process's store ----

static ACTIVE: OnceLock<Option<&'static Shared>> = OnceLock::new();
// Whether `install` or the configuration already decided the store (for a clear error).
static INSTALLED: AtomicBool = AtomicBool::new(false);

fn from_config() -> Option<&'static Shared> {
    let config = crate::config::store_config();
    let url = match env_url() {
        Ok(Some(url)) => Some(url),
        Ok(None) => config
            .as_ref()
            .and_then(|c| c.redis_url().map(str::to_owned)),
        Err(error) => {
            tracing::error!(target: "retry_runtime", %error, "ignoring {REDIS_URL_ENV}; state stays in memory");
            None
        }
    };
    let url = url?;
    let config = config.unwrap_or_else(StoreConfig::none);
    start_redis(&url, &config)
}

#[cfg(feature = "redis")]
fn start_redis(url: &str, config: &StoreConfig) -> Option<&'static Shared> {
    match redis::RedisStore::new(url, config) {
        Ok(store) => Shared::start(Arc::new(store), config),
        Err(error) => {
            tracing::error!(target: "retry_runtime", %error, url = %redact(url), "cannot use this Redis URL; state stays in memory");
            None
        }
    }
}

#[cfg(not(feature = "redis"))]
fn start_redis(url: &str, _config: &StoreConfig) -> Option<&'static Shared> {
    tracing::error!(target: "retry_runtime", url = %redact(url), "a Redis URL is configured but retry-runtime was built without the `redis` feature; state stays in memory");
    None
}

/// The process's shared store, started on first use; `None` when state stays in memory.
#[inline]
pub(crate) fn active() -> Option<&'static Shared> {
    *ACTIVE.get_or_init(|| {
        INSTALLED.store(true, Ordering::Release);
        from_config()
    })
}

/// The shared store if it is answering now: the one check the hot path makes (one load of
/// an initialised `OnceLock`, then one of an atomic flag when a store is configured).
#[inline]
pub(crate) fn shared_now() -> Option<&'static Shared> {
    active().filter(|s| s.is_shared())
}

/// Use `store` for this process's shared state instead of the configured one. Call it at
/// startup (after [`configure`](crate::configure), before the first call that uses a breaker,
/// pool or pacer): the store is chosen once.
///
/// ```
/// use std::sync::Arc;
/// use retry_runtime::store::{self, memory::MemoryStore, StoreStatus};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// store::install(Arc::new(MemoryStore::new())).unwrap();
/// assert!(store::wait_shared(std::time::Duration::from_secs(5)).await);
/// assert_eq!(store::status(), StoreStatus::Shared);
/// assert!(store::install(Arc::new(MemoryStore::new())).is_err());
/// # }
/// ```
pub fn install(store: Arc<dyn Store>) -> Result<(), ConfigError> {
    if INSTALLED.swap(true, Ordering::AcqRel) {
        return Err(ConfigError::AlreadyConfigured);
    }
    let config = crate::config::store_config().unwrap_or_else(StoreConfig::none);
    let shared = Shared::start(store, &config);
    ACTIVE
        .set(shared)
        .map_err(|_| ConfigError::AlreadyConfigured)
}

/// Where the shared state lives now: [`StoreStatus::Memory`] without a configured store,
/// [`StoreStatus::Shared`] while it answers, [`StoreStatus::Local`] while it does not (or
/// before the first connection). Starts the store (in the background) if nothing used it yet,
/// which loads the configuration like the first breaker does.
pub fn status() -> StoreStatus {
    match active() {
        None => StoreStatus::Memory,
        Some(shared) if shared.is_shared() => StoreStatus::Shared,
        Some(_) => StoreStatus::Local,
    }
}

/// Wait until the configured store answers (state is shared), at most `within`; `true` if it
/// does. `false` at once when no store is configured. Connecting happens in the background
/// either way: calls never wait for it.
pub async fn wait_shared(within: Duration) -> bool {
    match active() {
        None => false,
        Some(shared) => shared.wait_shared(within).await,
    }
}

// Status codes for the atomic in `Shared`.
pub(crate) const STARTING: u8 = 0;
pub(crate) const SHARED: u8 = 1;
pub(crate) const LOCAL: u8 = 2;

pub(crate) fn status_of(code: &AtomicU8) -> StoreStatus {
    match code.load(Ordering::Acquire) {
        SHARED => StoreStatus::Shared,
        _ => StoreStatus::Local,
    }
}
