//! Fallbacks chosen in advance: a cached answer, another function, or a queue that waits for
//! the provider to recover. Whatever serves the answer says so, in the report and in a WARN
//! event.
//!
//! Fallbacks run only for outage-class endings ([`StopReason::is_outage`](crate::report::StopReason::is_outage)): retries exhausted,
//! breaker open, retry budget spent, deadline, a `Retry-After` too long. A `Permanent` error or
//! a caller-fault 4xx never falls back: it is a bug to surface, not an outage to hide.

use std::any::Any;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

pub use crate::config::DEFAULT_CACHE_CAPACITY;
pub(crate) use crate::queue::Place;
pub use crate::queue::Queue;
pub use crate::report::{FallbackKind, FallbackReport};

/// What `fallback = cached` can keep: a copy of each good answer is stored, and served later
/// (maybe on another thread), so the answer type is `Clone + Send + Sync + 'static`.
#[diagnostic::on_unimplemented(
    message = "`fallback = cached` keeps a copy of each good answer, so `{Self}` must be `Clone + Send + Sync + 'static`",
    label = "the answer type of a `cached` fallback",
    note = "derive `Clone` for `{Self}` (and make it `Send + Sync`, owning its data), or choose another fallback"
)]
pub trait CachedAnswer: Clone + Send + Sync + 'static {}

impl<T: Clone + Send + Sync + 'static> CachedAnswer for T {}

type Entry = (Instant, Arc<dyn Any + Send + Sync>);

/// A call site's bounded cache of last good answers, keyed by a hash of the `#[key]`
/// arguments. Least-recently-used entries are evicted past the capacity (the `lru` crate).
///
/// Keys are 64-bit hashes: two keys colliding is a 1-in-2^64 event per pair, accepted here to
/// avoid keeping copies of (possibly large) prompts.
pub struct FallbackCache {
    entries: OnceLock<Mutex<lru::LruCache<u64, Entry>>>,
}

impl fmt::Debug for FallbackCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let len = self
            .entries
            .get()
            .map(|m| m.lock().map(|c| c.len()).unwrap_or(0));
        f.debug_struct("FallbackCache").field("len", &len).finish()
    }
}

impl Default for FallbackCache {
    fn default() -> Self {
        Self::new()
    }
}

impl FallbackCache {
    /// An empty cache; its storage is created on first use, with the configured capacity.
    pub const fn new() -> Self {
        Self {
            entries: OnceLock::new(),
        }
    }

    fn entries(&self) -> &Mutex<lru::LruCache<u64, Entry>> {
        self.entries.get_or_init(|| {
            let capacity = crate::config::cache_capacity();
            let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
            Mutex::new(lru::LruCache::new(capacity))
        })
    }

    /// Remember a good answer for `key`.
    pub fn store<T: Clone + Send + Sync + 'static>(&self, key: u64, value: &T) {
        let entry: Entry = (Instant::now(), Arc::new(value.clone()));
        let mut entries = self.entries().lock().unwrap_or_else(|e| e.into_inner());
        entries.put(key, entry);
    }

    /// The last good answer for `key` and its age, if there is one no older than `stale_for`.
    pub fn fetch<T: Clone + 'static>(
        &self,
        key: u64,
        stale_for: Duration,
    ) -> Option<(T, Duration)> {
        let mut entries = self.entries().lock().unwrap_or_else(|e| e.into_inner());
        let (at, value) = entries.get(&key)?;
        let age = at.elapsed();
        if age > stale_for {
            return None;
        }
        let value = value.downcast_ref::<T>()?.clone();
        Some((value, age))
    }

    /// Number of answers held.
    pub fn len(&self) -> usize {
        self.entries().lock().map(|c| c.len()).unwrap_or_default()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The cache key of a call: a hash of its `#[key]` arguments (or `key = <expr>`).
pub fn cache_key<K: Hash + ?Sized>(key: &K) -> u64 {
    // Fixed keys: the same arguments give the same key in every process.
    let mut hasher = std::hash::DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish()
}
