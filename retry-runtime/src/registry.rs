//! Process-wide registries of named shared state (breakers, pools, pacers), and the call-site
//! slots that resolve an entry once.
//!
//! Entries are leaked `&'static` values: a program names a fixed set of breakers, pools and
//! pacers in its attributes and configuration, so a registry stops growing at that set, and
//! every call site can keep a plain reference.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

// Test isolation: inside `isolated`, every registry lookup is keyed by the scope too, so a
// test gets breakers, pools and pacers of its own under the names its code uses. Until the
// first scope, call sites skip the check with one relaxed load.
static SCOPES_USED: AtomicBool = AtomicBool::new(false);
static NEXT_SCOPE: AtomicU64 = AtomicU64::new(1);

tokio::task_local! {
    static SCOPE: u64;
}

/// The isolation scope the current task runs in (0: none, the process-wide entries).
fn current_scope() -> u64 {
    if !SCOPES_USED.load(Ordering::Relaxed) {
        return 0;
    }
    SCOPE.try_with(|s| *s).unwrap_or(0)
}

/// Run `fut` with registries of its own: see `testing::isolated`.
pub(crate) fn isolated<F: Future>(fut: F) -> impl Future<Output = F::Output> {
    SCOPES_USED.store(true, Ordering::Relaxed);
    SCOPE.scope(NEXT_SCOPE.fetch_add(1, Ordering::Relaxed), fut)
}

/// Something a registry holds: it knows its name.
pub(crate) trait Named: Sync + 'static {
    fn name(&self) -> &'static str;
}

/// A set of named entries, created on first use.
pub(crate) struct Registry<T: Named> {
    // Each entry with the isolation scope it belongs to (0: the process's own).
    entries: OnceLock<Mutex<Vec<(u64, &'static T)>>>,
}

impl<T: Named> Registry<T> {
    pub(crate) const fn new() -> Self {
        Self {
            entries: OnceLock::new(),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Vec<(u64, &'static T)>> {
        self.entries
            .get_or_init(|| Mutex::new(Vec::new()))
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The entry named `name`, and whether this call created it (with `create`, which gets
    /// the name as a `'static` string). Cold path: call sites keep the result in a [`Slot`].
    pub(crate) fn get_or_create(
        &self,
        name: &str,
        create: impl FnOnce(&'static str) -> T,
    ) -> (&'static T, bool) {
        let scope = current_scope();
        let mut all = self.entries();
        if let Some((_, existing)) = all.iter().find(|(s, e)| *s == scope && e.name() == name) {
            return (existing, false);
        }
        let name: &'static str = Box::leak(name.to_owned().into_boxed_str());
        let created: &'static T = Box::leak(Box::new(create(name)));
        all.push((scope, created));
        (created, true)
    }

    /// The entry named `name` in the current scope, if something created it; creates nothing.
    pub(crate) fn find(&self, name: &str) -> Option<&'static T> {
        let scope = current_scope();
        self.entries()
            .iter()
            .find(|(s, e)| *s == scope && e.name() == name)
            .map(|(_, e)| *e)
    }

    /// Every entry of the current scope, in the order they were created.
    pub(crate) fn all(&self) -> Vec<&'static T> {
        let scope = current_scope();
        self.entries()
            .iter()
            .filter(|(s, _)| *s == scope)
            .map(|(_, e)| *e)
            .collect()
    }
}

/// A call site's handle on a named entry (a breaker, a pool, a pacer): resolved from its
/// registry on the first call, then one atomic load.
pub struct Slot<T: 'static> {
    name: Option<&'static str>,
    resolved: OnceLock<&'static T>,
}

impl<T> fmt::Debug for Slot<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot")
            .field("name", &self.name)
            .field("resolved", &self.resolved.get().is_some())
            .finish()
    }
}

impl<T> Slot<T> {
    /// A slot for `name`, or an empty one (the call site names none).
    pub const fn new(name: Option<&'static str>) -> Self {
        Self {
            name,
            resolved: OnceLock::new(),
        }
    }

    /// The entry, resolved with `resolve` on first use; `None` for an empty slot.
    #[inline]
    pub(crate) fn get_with(&self, resolve: fn(&str) -> &'static T) -> Option<&'static T> {
        let name = self.name?;
        if current_scope() != 0 {
            // An isolated test: its own entry, never the one this site cached for others.
            return Some(resolve(name));
        }
        Some(*self.resolved.get_or_init(|| resolve(name)))
    }
}
