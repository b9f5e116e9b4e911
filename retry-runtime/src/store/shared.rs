//! The process's handle on a [`Store`]: status, the one WARN / INFO per change, the
//! background runtime that talks to the store, reconnecting and reconciling.
//!
//! An admission runs on the caller's task when the store can answer there
//! ([`Store::admit_here`]: Redis on a connection of the caller's runtime), so that no thread
//! hop sits between a call and its round trip; the [`Watchdog`] on the store's thread bounds it
//! in real time. Otherwise (and for every write) the operation runs on the store's thread.
//!
//! What the store is owed is kept here too, in [`Owed`]: spend settled while the store was
//! away (or whose settlement was lost in flight) and the breakers this process opened. The
//! modules above only send their writes ([`Shared::send`]), whatever the status; the store
//! side decides what to keep and replays it when the store is back.

use std::collections::HashMap;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::futures::Notified;
use tokio::sync::{watch, Notify};
use tokio::task::AbortHandle;

use super::{
    Admit, Admitted, SharedBreaker, Store, StoreConfig, StoreError, StoreFuture, StoreStatus,
    Update,
};
use super::{LOCAL, SHARED, STARTING};

/// A store in use: every operation is bounded by the timeout in real time (whatever runtime
/// or paused clock the caller has): on the store's own thread and runtime, or, for an
/// admission the store answers on the caller's task, by the [`Watchdog`] there.
pub(crate) struct Shared {
    store: Arc<dyn Store>,
    handle: Handle,
    state: AtomicU8,
    changed: watch::Sender<StoreStatus>,
    timeout: Duration,
    reconnect_every: Duration,
    reconnecting: AtomicBool,
    owed: Owed,
    watchdog: Watchdog,
    probe_lease: Duration,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("kind", &self.store.kind())
            .field("status", &self.status())
            .finish()
    }
}

/// A thread with a current-thread runtime that runs the store's I/O for the whole process.
fn store_runtime() -> Option<Handle> {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("retry-runtime-store".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = tx.send(Err(error.to_string()));
                    return;
                }
            };
            let _ = tx.send(Ok(runtime.handle().clone()));
            // The runtime lives as long as the process: its tasks are the store's I/O.
            runtime.block_on(std::future::pending::<()>());
        });
    let result = match spawned {
        Ok(_) => rx.recv().map_err(|e| e.to_string()).and_then(|r| r),
        Err(error) => Err(error.to_string()),
    };
    match result {
        Ok(handle) => Some(handle),
        Err(error) => {
            tracing::error!(target: "retry_runtime", %error, "cannot start the store's thread; state stays in memory");
            None
        }
    }
}

impl Shared {
    /// Start using `store`: a background thread connects (calls never wait for it).
    pub(crate) fn start(store: Arc<dyn Store>, config: &StoreConfig) -> Option<&'static Shared> {
        let handle = store_runtime()?;
        let shared: &'static Shared = Box::leak(Box::new(Shared::new(store, handle, config)));
        shared.handle.spawn(shared.watchdog.run());
        shared.reconnect();
        Some(shared)
    }

    fn new(store: Arc<dyn Store>, handle: Handle, config: &StoreConfig) -> Self {
        Self {
            store,
            handle,
            state: AtomicU8::new(STARTING),
            changed: watch::Sender::new(StoreStatus::Local),
            timeout: config.timeout(),
            reconnect_every: config.reconnect_every(),
            reconnecting: AtomicBool::new(false),
            owed: Owed::default(),
            watchdog: Watchdog::new(config.timeout()),
            probe_lease: super::probe_lease(config.timeout()),
        }
    }

    /// What this store is (`"redis"`, `"memory"`), for events.
    pub(crate) fn kind(&self) -> &'static str {
        self.store.kind()
    }

    /// How long a half-open probe's lease holds unless renewed ([`super::probe_lease`]).
    pub(crate) fn probe_lease(&self) -> Duration {
        self.probe_lease
    }

    /// Keep a probe's lease while its attempt runs: renew it every third of the lease, on
    /// the store's thread, until the handle is aborted. A renewal that fails switches the
    /// process to local state, as any failed write does, and ends the renewals: the lease
    /// then lapses in the store.
    pub(crate) fn renew_probe(&'static self, breaker: &'static str, token: u64) -> AbortHandle {
        let lease = self.probe_lease;
        let renewal = self.handle.spawn(async move {
            loop {
                tokio::time::sleep(lease / 3).await;
                if !self.is_shared() {
                    return;
                }
                let renewed = Update::ProbeRenewed {
                    breaker,
                    token,
                    lease,
                };
                if let Err(error) = self.apply(renewed).await {
                    self.to_local(&error);
                    return;
                }
            }
        });
        renewal.abort_handle()
    }

    #[inline]
    pub(crate) fn is_shared(&self) -> bool {
        self.state.load(Ordering::Acquire) == SHARED
    }

    pub(crate) fn status(&self) -> StoreStatus {
        super::status_of(&self.state)
    }

    /// Wait (on the store's runtime, in real time, so that a caller on a paused clock does
    /// not time out at once) until the store answers, at most `within`.
    pub(crate) async fn wait_shared(&self, within: Duration) -> bool {
        if self.is_shared() {
            return true;
        }
        let mut rx = self.changed.subscribe();
        let waiting = self.handle.spawn(async move {
            let shared = rx.wait_for(|s| *s == StoreStatus::Shared);
            matches!(tokio::time::timeout(within, shared).await, Ok(Ok(_)))
        });
        waiting.await.unwrap_or(false)
    }

    /// The store answered: state is shared again (one INFO event per change).
    fn to_shared(&self) {
        let before = self.state.swap(SHARED, Ordering::AcqRel);
        if before != SHARED {
            tracing::info!(
                target: "retry_runtime",
                store = self.store.kind(),
                "{} store reachable: breakers (and their half-open probes), retry budgets, pacing and pools are shared with the fleet",
                self.store.kind()
            );
            self.changed.send_replace(StoreStatus::Shared);
            self.count(StoreStatus::Shared);
        }
    }

    fn count(&self, to: StoreStatus) {
        #[cfg(feature = "metrics")]
        metrics::counter!(
            crate::metric_names::STORE_TRANSITIONS,
            "store" => self.store.kind(),
            "to" => to.as_str()
        )
        .increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = to;
    }

    /// The one WARN event of an outage (or of a first connection that failed).
    fn went_local(&self, error: &StoreError) {
        tracing::warn!(
            target: "retry_runtime",
            store = self.store.kind(),
            %error,
            "{} store unreachable: using local state for breakers (half-open probes counted per process), retry budgets, pacing and pools; reconnecting in the background",
            self.store.kind()
        );
        self.changed.send_replace(StoreStatus::Local);
        self.count(StoreStatus::Local);
    }

    /// The store failed: run on local state (one WARN event per change) and try it again in
    /// the background.
    pub(crate) fn to_local(&'static self, error: &StoreError) {
        let before = self.state.swap(LOCAL, Ordering::AcqRel);
        if before != LOCAL {
            self.went_local(error);
        }
        self.reconnect();
    }

    /// Try the store until it answers, reconcile, then share again. One loop at a time.
    fn reconnect(&'static self) {
        if self.reconnecting.swap(true, Ordering::AcqRel) {
            return;
        }
        self.handle.spawn(async move {
            loop {
                // Connecting may take longer than one operation; it runs in the background.
                let budget = self.timeout.max(Duration::from_millis(250));
                let answer = match tokio::time::timeout(budget, self.store.ping()).await {
                    Ok(answer) => answer,
                    Err(_) => Err(StoreError::Timeout(budget)),
                };
                match answer {
                    Ok(()) => match self.reconcile(true).await {
                        Ok(()) => {
                            self.reconnecting.store(false, Ordering::Release);
                            self.to_shared();
                            // What was kept while the status changed; if that fails, it stays
                            // kept for the next loop.
                            if let Err(error) = self.reconcile(false).await {
                                self.to_local(&error);
                            }
                            return;
                        }
                        Err(error) => self.note_failure(&error),
                    },
                    Err(error) => self.note_failure(&error),
                }
                tokio::time::sleep(self.reconnect_every).await;
            }
        });
    }

    fn note_failure(&self, error: &StoreError) {
        // Still unreachable: the first failure after starting is the one WARN.
        if self
            .state
            .compare_exchange(STARTING, LOCAL, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.went_local(error);
        }
    }

    /// One admission, bounded by the timeout. `None`: the store failed (the process is now on
    /// local state) and the caller decides locally.
    pub(crate) async fn admit(&'static self, ask: Admit) -> Option<Admitted> {
        let breaker = ask.breaker.as_ref().map(|b| b.name);
        let asked = Instant::now();
        let answer = match self.store.admit_here(ask) {
            Ok(here) => self.bounded(here).await,
            Err(ask) => self.admit_on_store_thread(ask).await,
        };
        match answer {
            Ok(admitted) => {
                if let (Some(name), Some(seen)) = (breaker, admitted.breaker) {
                    self.owed.seen(name, seen, asked);
                }
                Some(admitted)
            }
            Err(error) => {
                self.to_local(&error);
                None
            }
        }
    }

    /// The admission on the store's thread, bounded there (a hop there and back).
    async fn admit_on_store_thread(&'static self, ask: Admit) -> Result<Admitted, StoreError> {
        let store = self.store.clone();
        let timeout = self.timeout;
        let answer = self
            .handle
            .spawn(async move { tokio::time::timeout(timeout, store.admit(ask)).await })
            .await;
        match answer {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(StoreError::Timeout(timeout)),
            Err(join) => Err(StoreError::Backend(format!("store task failed: {join}"))),
        }
    }

    /// `op`, polled on the caller's task, given up once the watchdog says the timeout has
    /// passed (in real time, counted by the store's thread). A panic in the store's code is
    /// its failure, as a panicking task on the store's thread would be.
    async fn bounded<T>(&'static self, mut op: StoreFuture<'_, T>) -> Result<T, StoreError> {
        let timeout = self.timeout;
        let mut watched: Option<Watched> = None;
        let mut overdue = pin!(None::<Notified<'static>>);
        std::future::poll_fn(move |cx| {
            match catch_unwind(AssertUnwindSafe(|| op.as_mut().poll(cx))) {
                Ok(Poll::Ready(answer)) => return Poll::Ready(answer),
                Ok(Poll::Pending) => {}
                Err(_) => {
                    return Poll::Ready(Err(StoreError::Backend(
                        "the store's operation panicked".into(),
                    )))
                }
            }
            // Watched from its first wait on: an answer at once needs no watching.
            let watched = watched.get_or_insert_with(|| self.watchdog.watch());
            loop {
                if watched.overdue() {
                    return Poll::Ready(Err(StoreError::Timeout(timeout)));
                }
                match overdue.as_mut().as_pin_mut() {
                    None => overdue.set(Some(watched.notified())),
                    Some(notified) => {
                        if notified.poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                        // Woken: look again (and wait again if not overdue yet).
                        overdue.set(None);
                    }
                }
            }
        })
        .await
    }

    /// Send a write in the background, whatever the status: while the store is unreachable
    /// (or when the write fails), what it carried is kept here and replayed when the store is
    /// back (see [`Owed`]).
    pub(crate) fn send(&'static self, update: Update) {
        let opened = self.owed.sending(&update);
        if !self.is_shared() {
            self.owed.undelivered(&update);
            return;
        }
        let store = self.store.clone();
        let timeout = self.timeout;
        self.handle.spawn(async move {
            let error = match tokio::time::timeout(timeout, store.update(update.clone())).await {
                Ok(Ok(())) => {
                    if let Some(opened) = opened {
                        self.owed.delivered(opened);
                    }
                    return;
                }
                Ok(Err(error)) => error,
                Err(_) => StoreError::Timeout(timeout),
            };
            self.owed.undelivered(&update);
            self.to_local(&error);
        });
    }

    /// Apply a write and wait for it (reconciliation, on the store's runtime).
    async fn apply(&self, update: Update) -> Result<(), StoreError> {
        match tokio::time::timeout(self.timeout, self.store.update(update)).await {
            Ok(answer) => answer,
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }
}

impl Shared {
    /// The store is back: publish what it is owed (see the module docs of
    /// [`crate::store`]). Breakers first, without `force` (a longer open state in the store is
    /// kept): every one kept, or only those the store never acknowledged; then spend, into
    /// each pool's current window. What fails stays owed.
    async fn reconcile(&self, every_breaker: bool) -> Result<(), StoreError> {
        for opened in self.owed.open_breakers(every_breaker) {
            self.apply(Update::BreakerOpened {
                breaker: opened.breaker,
                cooldown: opened.until.saturating_duration_since(Instant::now()),
                force: false,
            })
            .await?;
            self.owed.delivered(opened);
        }
        let mut spend = self.owed.take_spend().into_iter();
        while let Some((pool, (window_ms, amount))) = spend.next() {
            let added = self
                .apply(Update::AddSpend {
                    pool,
                    window_ms,
                    amount,
                })
                .await;
            if let Err(error) = added {
                self.owed.owe(pool, window_ms, amount);
                for (pool, (window_ms, amount)) in spend {
                    self.owed.owe(pool, window_ms, amount);
                }
                return Err(error);
            }
        }
        Ok(())
    }
}

/// Ticks of the watchdog per timeout: an operation is given up between one timeout and one
/// and an eighth after its first wait.
const TICKS: u64 = 8;
/// Buckets of waiting operations, one per tick, reused round: more than `TICKS + 1`, so that
/// an operation's bucket is not reused before it was told it is overdue.
const RING: usize = 16;
/// Ticks with nothing waiting before the watchdog sleeps until something waits again.
const QUIET_TICKS: u32 = 32;

/// The real-time bound of the admissions awaited on callers' tasks, kept by one task on the
/// store's thread, so that the caller needs no timer of its own (its clock may be paused, its
/// runtime may have no timers) and pays no hop. The watchdog ticks every `timeout / TICKS`;
/// an operation counts itself in the bucket of the tick it started in (one atomic add, one
/// subtract when it ends), and when that tick is more than `TICKS` ticks old, the watchdog
/// wakes the bucket's waiters, which give up. With nothing waiting, it stops ticking until
/// an operation wakes it.
struct Watchdog {
    tick: Duration,
    epoch: AtomicU64,
    buckets: [Bucket; RING],
    awake: AtomicBool,
    wake: Notify,
}

#[derive(Default)]
struct Bucket {
    waiting: AtomicUsize,
    overdue: Notify,
}

/// One operation the watchdog watches (counted in its bucket until dropped).
struct Watched {
    dog: &'static Watchdog,
    epoch: u64,
}

impl Watchdog {
    fn new(timeout: Duration) -> Self {
        let ticks = u32::try_from(TICKS).unwrap_or(u32::MAX);
        Self {
            tick: (timeout / ticks).max(Duration::from_millis(1)),
            epoch: AtomicU64::new(0),
            buckets: Default::default(),
            awake: AtomicBool::new(true),
            wake: Notify::new(),
        }
    }

    fn bucket(&self, epoch: u64) -> &Bucket {
        &self.buckets[(epoch % RING as u64) as usize]
    }

    fn idle(&self) -> bool {
        self.buckets
            .iter()
            .all(|b| b.waiting.load(Ordering::SeqCst) == 0)
    }

    fn watch(&'static self) -> Watched {
        let epoch = self.epoch.load(Ordering::SeqCst);
        self.bucket(epoch).waiting.fetch_add(1, Ordering::SeqCst);
        // (SeqCst with the watchdog's own store and load: it either sees this operation
        // before it sleeps, or this sees it asleep and wakes it.)
        if !self.awake.load(Ordering::SeqCst) {
            self.wake.notify_one();
        }
        Watched { dog: self, epoch }
    }

    /// The watchdog's loop, on the store's thread (real time).
    async fn run(&'static self) {
        let mut quiet = 0;
        loop {
            tokio::time::sleep(self.tick).await;
            let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
            // An operation of tick `due` started at least `TICKS` ticks ago: a timeout.
            if let Some(due) = epoch.checked_sub(TICKS + 1) {
                let bucket = self.bucket(due);
                if bucket.waiting.load(Ordering::SeqCst) > 0 {
                    bucket.overdue.notify_waiters();
                }
            }
            if !self.idle() {
                quiet = 0;
                continue;
            }
            quiet += 1;
            if quiet >= QUIET_TICKS {
                self.awake.store(false, Ordering::SeqCst);
                if self.idle() {
                    self.wake.notified().await;
                }
                self.awake.store(true, Ordering::SeqCst);
                quiet = 0;
            }
        }
    }
}

impl Watched {
    /// Ticks pass at least `tick` apart, and this operation started after its tick: more
    /// than `TICKS` ticks later, at least `TICKS * tick >= timeout` has passed.
    fn overdue(&self) -> bool {
        self.dog
            .epoch
            .load(Ordering::SeqCst)
            .saturating_sub(self.epoch)
            > TICKS
    }

    fn notified(&self) -> Notified<'static> {
        self.dog.bucket(self.epoch).overdue.notified()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.dog
            .bucket(self.epoch)
            .waiting
            .fetch_sub(1, Ordering::SeqCst);
    }
}

/// A breaker this process opened, as the store side remembers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Opened {
    breaker: &'static str,
    /// The end of its cooldown, on this process's real clock (the store thread's).
    until: Instant,
}

/// What the store is owed, replayed by [`Shared::reconcile`]:
///
/// * spend (per pool, with its window) settled while the store was away, or whose write
///   failed: a lost settlement's real cost is owed in full (its reservation stays in the
///   store's window and expires with it: the pool over-counts, never under-counts);
/// * the breakers this process opened whose cooldown is still running, delivered or not, so
///   that a store that lost them (a restarted Redis) has them again. One is forgotten when
///   this process closes it, when its cooldown ends, or when an admission asked after it was
///   delivered finds nothing stored (another process closed it: this one adopts that).
///
/// Retry-budget and pacer counts are not kept: they describe seconds that are over.
#[derive(Debug, Default)]
struct Owed {
    spend: Mutex<HashMap<&'static str, (u64, u64)>>,
    // breaker -> (its open state, when the store acknowledged it)
    breakers: Mutex<HashMap<&'static str, (Opened, Option<Instant>)>>,
    // How many breakers are kept: the admission path looks at the map only when some are.
    open: AtomicUsize,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every change below is complete between statements: a poisoned lock is still valid.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Owed {
    /// A write is about to be sent (or kept): remember a breaker's open state, forget a
    /// closed one. The open state, to confirm once the store has it.
    fn sending(&self, update: &Update) -> Option<Opened> {
        match *update {
            // A leased probe that failed re-opens the breaker as a failed local probe does.
            Update::BreakerOpened {
                breaker, cooldown, ..
            }
            | Update::ProbeEnded {
                breaker,
                reopen: Some(cooldown),
                ..
            } => {
                let now = Instant::now();
                let opened = Opened {
                    breaker,
                    // (A cooldown too long for the clock is cut to a year: still open.)
                    until: now
                        .checked_add(cooldown.min(Duration::from_secs(365 * 86_400)))
                        .unwrap_or(now),
                };
                self.breakers_mut(|b| b.insert(breaker, (opened, None)));
                Some(opened)
            }
            Update::BreakerClosed { breaker }
            | Update::ProbeEnded {
                breaker,
                reopen: None,
                ..
            } => {
                self.breakers_mut(|b| b.remove(breaker));
                None
            }
            Update::Settle { .. }
            | Update::Release { .. }
            | Update::AddSpend { .. }
            | Update::ProbeRenewed { .. }
            | Update::ProbeReleased { .. } => None,
        }
    }

    /// A write did not reach the store: keep the spend it carried. (A lost release is not
    /// kept: the reservation over-counts until its window ends; nor a probe's lease renewed
    /// or released: it lapses in the store. A breaker's open state is kept already.)
    fn undelivered(&self, update: &Update) {
        match *update {
            Update::Settle {
                pool,
                window_ms,
                real,
                ..
            } => self.owe(pool, window_ms, real),
            Update::AddSpend {
                pool,
                window_ms,
                amount,
            } => self.owe(pool, window_ms, amount),
            Update::Release { .. }
            | Update::BreakerOpened { .. }
            | Update::BreakerClosed { .. }
            | Update::ProbeEnded { .. }
            | Update::ProbeRenewed { .. }
            | Update::ProbeReleased { .. } => {}
        }
    }

    fn owe(&self, pool: &'static str, window_ms: u64, amount: u64) {
        if amount == 0 {
            return;
        }
        let mut spend = lock(&self.spend);
        let owed = spend.entry(pool).or_insert((window_ms, 0));
        *owed = (window_ms, owed.1.saturating_add(amount));
    }

    fn take_spend(&self) -> HashMap<&'static str, (u64, u64)> {
        std::mem::take(&mut *lock(&self.spend))
    }

    /// The store has this open state (unless this process opened the breaker again since).
    fn delivered(&self, opened: Opened) {
        self.breakers_mut(|b| {
            if let Some(kept) = b.get_mut(opened.breaker).filter(|k| k.0 == opened) {
                kept.1 = Some(Instant::now());
            }
        });
    }

    /// The breakers whose cooldown is still running (the others are forgotten): all, or only
    /// those not acknowledged yet.
    fn open_breakers(&self, acknowledged_too: bool) -> Vec<Opened> {
        let now = Instant::now();
        self.breakers_mut(|b| {
            b.retain(|_, (opened, _)| opened.until > now);
            b.values()
                .filter(|(_, delivered)| acknowledged_too || delivered.is_none())
                .map(|(opened, _)| *opened)
                .collect()
        })
    }

    /// An admission asked at `asked` found `seen` in the store for `breaker`. (Also forgets
    /// the breakers whose cooldown is over, so that the map empties and this path stops
    /// looking at it.)
    fn seen(&self, breaker: &'static str, seen: SharedBreaker, asked: Instant) {
        if seen.open_for.is_some() || self.open.load(Ordering::Acquire) == 0 {
            return;
        }
        self.breakers_mut(|b| {
            if b.get(breaker)
                .is_some_and(|(_, delivered)| delivered.is_some_and(|d| d <= asked))
            {
                b.remove(breaker);
            }
            b.retain(|_, (opened, _)| opened.until > asked);
        });
    }

    fn breakers_mut<R>(
        &self,
        f: impl FnOnce(&mut HashMap<&'static str, (Opened, Option<Instant>)>) -> R,
    ) -> R {
        let mut breakers = lock(&self.breakers);
        let answer = f(&mut breakers);
        self.open.store(breakers.len(), Ordering::Release);
        answer
    }
}

#[cfg(test)]
mod tests {
    //! The store side's ledger, against a `MemoryStore` on its own thread (real time: the
    //! store's thread is real time whatever the caller's clock, and nothing here reads the
    //! caller's).
    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::{BreakerAsk, PoolAsk, StoreFuture, Verdict};

    const HOUR_MS: u64 = 3_600_000;

    fn config() -> StoreConfig {
        StoreConfig::none()
            .with_timeout(Duration::from_secs(2))
            .with_reconnect_every(Duration::from_millis(10))
    }

    fn open(breaker: &'static str, cooldown: Duration) -> Update {
        Update::BreakerOpened {
            breaker,
            cooldown,
            force: false,
        }
    }

    fn look(name: &'static str) -> Admit {
        Admit {
            breaker: Some(BreakerAsk {
                name,
                deposit: false,
                withdraw: None,
            }),
            ..Admit::default()
        }
    }

    async fn committed(store: &dyn Store, pool: &'static str) -> u64 {
        let ask = Admit {
            pool: Some(PoolAsk {
                name: pool,
                window_ms: HOUR_MS,
                limit: 1_000,
                expected: 0,
            }),
            ..Admit::default()
        };
        store.admit(ask).await.unwrap().pool.unwrap().1
    }

    async fn breaker(store: &dyn Store, name: &'static str) -> Option<Duration> {
        store
            .admit(look(name))
            .await
            .unwrap()
            .breaker
            .unwrap()
            .open_for
    }

    async fn until_local(shared: &Shared) {
        let until = Instant::now() + Duration::from_secs(2);
        while shared.is_shared() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert!(!shared.is_shared(), "the failed write switched to Local");
    }

    #[tokio::test]
    async fn what_was_settled_and_opened_while_away_is_replayed_when_the_store_is_back() {
        let store = Arc::new(MemoryStore::new());
        store.set_reachable(false);
        let shared = Shared::start(store.clone(), &config()).unwrap();
        let settle = Update::Settle {
            pool: "away",
            window_ms: HOUR_MS,
            window: 0,
            reserved: 5,
            real: 3,
        };
        shared.send(settle);
        shared.send(Update::AddSpend {
            pool: "away",
            window_ms: HOUR_MS,
            amount: 7,
        });
        shared.send(open("away-open", Duration::from_secs(30)));
        shared.send(open("away-closed", Duration::from_secs(30)));
        shared.send(Update::BreakerClosed {
            breaker: "away-closed",
        });
        shared.send(open("away-short", Duration::from_millis(1)));
        tokio::time::sleep(Duration::from_millis(5)).await;

        store.set_reachable(true);
        assert!(shared.wait_shared(Duration::from_secs(5)).await);
        assert_eq!(committed(&*store, "away").await, 10, "owed: 3 + 7");
        let left = breaker(&*store, "away-open").await.expect("published");
        assert!(left > Duration::from_secs(29) && left <= Duration::from_secs(30));
        assert_eq!(breaker(&*store, "away-closed").await, None, "closed here");
        assert_eq!(breaker(&*store, "away-short").await, None, "cooled down");
        // Replayed once: nothing is owed any more.
        assert!(shared.owed.take_spend().is_empty());
    }

    #[tokio::test]
    async fn a_write_lost_in_flight_is_kept_and_replayed() {
        let store = Arc::new(MemoryStore::new());
        let shared = Shared::start(store.clone(), &config()).unwrap();
        assert!(shared.wait_shared(Duration::from_secs(5)).await);
        store.set_reachable(false);
        shared.send(Update::Settle {
            pool: "lost",
            window_ms: HOUR_MS,
            window: 0,
            reserved: 5,
            real: 4,
        });
        shared.send(open("lost-open", Duration::from_secs(30)));
        until_local(shared).await;
        store.set_reachable(true);
        assert!(shared.wait_shared(Duration::from_secs(5)).await);
        assert_eq!(
            committed(&*store, "lost").await,
            4,
            "the real cost, in full"
        );
        assert!(breaker(&*store, "lost-open").await.is_some());
    }

    /// A store that can restart empty, like a Redis without persistence.
    struct Restartable(Mutex<Arc<MemoryStore>>);

    impl Restartable {
        fn now(&self) -> Arc<MemoryStore> {
            lock(&self.0).clone()
        }
    }

    impl Store for Restartable {
        fn kind(&self) -> &'static str {
            "memory"
        }
        fn admit(&self, ask: Admit) -> StoreFuture<'_, Admitted> {
            let store = self.now();
            Box::pin(async move { store.admit(ask).await })
        }
        fn update(&self, update: Update) -> StoreFuture<'_, ()> {
            let store = self.now();
            Box::pin(async move { store.update(update).await })
        }
        fn ping(&self) -> StoreFuture<'_, ()> {
            let store = self.now();
            Box::pin(async move { store.ping().await })
        }
    }

    #[tokio::test]
    async fn a_store_that_lost_an_open_breaker_gets_it_again_unless_the_fleet_closed_it() {
        let store = Arc::new(Restartable(Mutex::new(Arc::new(MemoryStore::new()))));
        let shared = Shared::start(store.clone(), &config()).unwrap();
        assert!(shared.wait_shared(Duration::from_secs(5)).await);
        shared.send(open("kept", Duration::from_secs(30)));
        shared.send(open("closed-there", Duration::from_secs(30)));
        // Seen through the store's thread, so both sends (and their acknowledgements) ran.
        let seen = |name| async move { shared.admit(look(name)).await.unwrap() };
        assert_eq!(seen("kept").await.verdict, Verdict::BreakerOpen);
        assert_eq!(seen("closed-there").await.verdict, Verdict::BreakerOpen);
        // Another process's probe closed one; this process sees it at its next admission.
        store
            .now()
            .update(Update::BreakerClosed {
                breaker: "closed-there",
            })
            .await
            .unwrap();
        assert_eq!(seen("closed-there").await.breaker.unwrap().open_for, None);

        // The store fails, and comes back empty.
        store.now().set_reachable(false);
        assert!(shared.admit(look("kept")).await.is_none());
        *lock(&store.0) = Arc::new(MemoryStore::new());
        assert!(shared.wait_shared(Duration::from_secs(5)).await);
        assert!(
            breaker(&*store, "kept").await.is_some(),
            "published again: still open here"
        );
        assert_eq!(
            breaker(&*store, "closed-there").await,
            None,
            "the fleet had closed it"
        );
    }

    /// A store that answers on the caller's task as `here` says: at once, never, or with a
    /// panic.
    struct Here {
        memory: MemoryStore,
        here: &'static str,
    }

    impl Store for Here {
        fn kind(&self) -> &'static str {
            "memory"
        }
        fn admit(&self, ask: Admit) -> StoreFuture<'_, Admitted> {
            self.memory.admit(ask)
        }
        #[allow(clippy::result_large_err)] // as the trait's
        fn admit_here(&self, ask: Admit) -> Result<StoreFuture<'_, Admitted>, Admit> {
            match self.here {
                "answers" => Ok(self.memory.admit(ask)),
                "hangs" => Ok(Box::pin(std::future::pending())),
                "panics" => Ok(Box::pin(async { panic!("a store's bug") })),
                _ => Err(ask),
            }
        }
        fn update(&self, update: Update) -> StoreFuture<'_, ()> {
            self.memory.update(update)
        }
        fn ping(&self) -> StoreFuture<'_, ()> {
            self.memory.ping()
        }
    }

    fn here(here: &'static str, timeout: Duration) -> &'static Shared {
        let store = Arc::new(Here {
            memory: MemoryStore::new(),
            here,
        });
        let config = config().with_timeout(timeout);
        let shared = Shared::start(store, &config).unwrap();
        let until = Instant::now() + Duration::from_secs(5);
        while !shared.is_shared() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(shared.is_shared());
        shared
    }

    const TIMEOUT: Duration = Duration::from_millis(100);

    /// Given up after the timeout in real time: the watchdog counts it on the store's thread.
    /// (Whether the process went local is not looked at: the store answers its pings, so
    /// the reconnect loop may have made it shared again already.)
    fn gives_up_in_real_time(started: Instant) {
        let took = started.elapsed();
        assert!(
            took >= TIMEOUT && took < TIMEOUT * 5,
            "given up after {took:?}, the timeout is {TIMEOUT:?}"
        );
    }

    #[tokio::test]
    async fn an_admission_on_the_callers_task_is_answered_there() {
        let shared = here("answers", TIMEOUT);
        let seen = shared.admit(look("here")).await.expect("answered");
        assert_eq!(seen.verdict, Verdict::Admitted);
        assert!(shared.watchdog.idle(), "nothing left watched");
        assert!(shared.is_shared());
    }

    #[tokio::test(start_paused = true)]
    async fn an_admission_that_hangs_is_given_up_after_the_timeout_in_real_time_on_a_paused_clock()
    {
        let shared = here("hangs", TIMEOUT);
        let started = Instant::now();
        assert_eq!(shared.admit(look("hangs")).await, None);
        gives_up_in_real_time(started);
        assert!(shared.watchdog.idle());
    }

    #[test]
    fn an_admission_that_hangs_is_given_up_on_a_runtime_without_timers() {
        let shared = here("hangs", TIMEOUT);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let started = Instant::now();
        assert_eq!(runtime.block_on(shared.admit(look("hangs"))), None);
        gives_up_in_real_time(started);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_hanging_admissions_are_all_given_up() {
        let shared = here("hangs", TIMEOUT);
        let started = Instant::now();
        let waiting: Vec<_> = (0..64)
            .map(|_| tokio::spawn(shared.admit(look("hangs"))))
            .collect();
        for admission in waiting {
            assert_eq!(admission.await.unwrap(), None);
        }
        gives_up_in_real_time(started);
        assert!(shared.watchdog.idle());
    }

    #[tokio::test]
    async fn a_store_that_panics_on_the_callers_task_fails_and_the_caller_goes_on() {
        let shared = here("panics", Duration::from_secs(2));
        assert_eq!(shared.admit(look("panics")).await, None);
    }

    #[tokio::test]
    async fn a_store_that_cannot_answer_here_is_asked_on_its_thread() {
        let shared = here("elsewhere", TIMEOUT);
        let seen = shared.admit(look("elsewhere")).await.expect("answered");
        assert_eq!(seen.verdict, Verdict::Admitted);
    }
}
