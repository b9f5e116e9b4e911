//! The process's handle on a [`Store`]: status, the one WARN / INFO per change, the
//! background runtime that talks to the store, reconnecting and reconciling.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::watch;

use super::{Admit, Admitted, Store, StoreConfig, StoreError, StoreStatus, Update};
use super::{LOCAL, SHARED, STARTING};

/// A store in use: every operation runs on the store's own thread and runtime (real time,
/// whatever runtime or paused clock the caller has), bounded there by the timeout.
pub(crate) struct Shared {
    store: Arc<dyn Store>,
    handle: Handle,
    state: AtomicU8,
    changed: watch::Sender<StoreStatus>,
    timeout: Duration,
    reconnect_every: Duration,
    reconnecting: AtomicBool,
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
        }
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
                "{} store reachable: breakers, retry budgets, pacing and pools are shared with the fleet",
                self.store.kind()
            );
            self.changed.send_replace(StoreStatus::Shared);
            self.count(StoreStatus::Shared);
        }
    }

    fn count(&self, to: StoreStatus) {
        #[cfg(feature = "metrics")]
        metrics::counter!(
            crate::report::metric_names::STORE_TRANSITIONS,
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
            "{} store unreachable: using local state for breakers, retry budgets, pacing and pools; reconnecting in the background",
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
                    Ok(()) => match reconcile(self).await {
                        Ok(()) => {
                            self.reconnecting.store(false, Ordering::Release);
                            self.to_shared();
                            // Spend settled locally while the status changed.
                            let _ = reconcile_pools(self).await;
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
        let store = self.store.clone();
        let timeout = self.timeout;
        let answer = self
            .handle
            .spawn(async move { tokio::time::timeout(timeout, store.admit(ask)).await })
            .await;
        let error = match answer {
            Ok(Ok(Ok(admitted))) => return Some(admitted),
            Ok(Ok(Err(error))) => error,
            Ok(Err(_)) => StoreError::Timeout(timeout),
            Err(join) => StoreError::Backend(format!("store task failed: {join}")),
        };
        self.to_local(&error);
        None
    }

    /// Send a write in the background. While the store is unreachable (or when the write
    /// fails), what it carried is kept locally for reconciliation.
    pub(crate) fn send(&'static self, update: Update) {
        if !self.is_shared() {
            keep_local(&update);
            return;
        }
        let store = self.store.clone();
        let timeout = self.timeout;
        self.handle.spawn(async move {
            let error = match tokio::time::timeout(timeout, store.update(update.clone())).await {
                Ok(Ok(())) => return,
                Ok(Err(error)) => error,
                Err(_) => StoreError::Timeout(timeout),
            };
            keep_local(&update);
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

/// What a write that could not reach the store leaves behind: a pool's real spend is owed to
/// the shared window (reconciled on return). A lost settlement's reservation stays in its
/// window (it over-counts, never under-counts). Breaker writes are not replayed: open
/// breakers are published again by [`reconcile`].
fn keep_local(update: &Update) {
    match *update {
        Update::Settle { pool, real, .. } => crate::budget::pool(pool).owe(real),
        Update::AddSpend { pool, amount, .. } => crate::budget::pool(pool).owe(amount),
        Update::Release { .. } | Update::BreakerOpened { .. } | Update::BreakerClosed { .. } => {}
    }
}

/// The store is back: publish what happened locally (see the module docs of
/// [`crate::store`]).
async fn reconcile(shared: &Shared) -> Result<(), StoreError> {
    for (breaker, open_for) in crate::breaker::open_breakers() {
        shared
            .apply(Update::BreakerOpened {
                breaker,
                cooldown: open_for,
                force: false,
            })
            .await?;
    }
    reconcile_pools(shared).await
}

async fn reconcile_pools(shared: &Shared) -> Result<(), StoreError> {
    for pool in crate::budget::pools() {
        let Some(window_ms) = pool.window_ms() else {
            continue;
        };
        let amount = pool.take_owed();
        if amount == 0 {
            continue;
        }
        let added = shared
            .apply(Update::AddSpend {
                pool: pool.name(),
                window_ms,
                amount,
            })
            .await;
        if let Err(error) = added {
            pool.owe(amount);
            return Err(error);
        }
    }
    Ok(())
}
