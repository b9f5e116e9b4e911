//! Fallbacks chosen in advance: a cached answer, another function, or a queue that waits for
//! the provider to recover. Whatever serves the answer says so, in the report and in a WARN
//! event.
//!
//! Fallbacks run only for outage-class endings ([`StopReason::is_outage`]): retries exhausted,
//! breaker open, retry budget spent, deadline, a `Retry-After` too long. A `Permanent` error or
//! a caller-fault 4xx never falls back: it is a bug to surface, not an outage to hide.

use std::any::Any;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::report::StopReason;

/// What served a degraded answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FallbackKind {
    /// The last good answer for the same key.
    Cached,
    /// Another function (a cheaper model, another provider), by path.
    Function(&'static str),
    /// The call waited in its breaker's queue and was served after recovery.
    Queue,
}

impl FallbackKind {
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

/// The fallback that served a call, in its [`CallReport`](crate::CallReport).
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// Default number of answers a call site keeps for `fallback = cached`; set
/// `[fallback] cache_capacity` in the run-time configuration to change it.
pub const DEFAULT_CACHE_CAPACITY: usize = 1024;

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

/// A breaker's waiting line for `fallback = queue`: first in, first out, bounded in length,
/// and released at a controlled rate so that recovery is not a second storm.
#[derive(Debug)]
pub struct Queue {
    line: Arc<tokio::sync::Mutex<()>>,
    waiting: AtomicUsize,
    max_len: usize,
    interval_ms: u64,
    // When the next caller may be released (ms on the runtime clock).
    next_release_ms: AtomicU64,
}

impl Queue {
    /// A queue of at most `max_len` waiters, releasing at most `per_sec` callers a second.
    pub fn new(max_len: usize, per_sec: u32) -> Self {
        Self {
            // tokio's Mutex queues waiters in FIFO order: that is the line.
            line: Arc::new(tokio::sync::Mutex::new(())),
            waiting: AtomicUsize::new(0),
            max_len,
            interval_ms: 1000 / u64::from(per_sec.max(1)),
            next_release_ms: AtomicU64::new(0),
        }
    }

    /// Callers waiting (or being served) now.
    pub fn len(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Whether nobody waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Join the line; `None` if it is full.
    pub(crate) fn join(&self) -> Option<Place<'_>> {
        let mut n = self.waiting.load(Ordering::Acquire);
        loop {
            if n >= self.max_len {
                return None;
            }
            match self
                .waiting
                .compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(Place { queue: self }),
                Err(actual) => n = actual,
            }
        }
    }

    pub(crate) fn line(&self) -> Arc<tokio::sync::Mutex<()>> {
        self.line.clone()
    }

    /// Wait until the release schedule lets the next caller go, and book the slot after.
    pub(crate) async fn await_release_slot(&self) {
        let now = crate::breaker::now_ms();
        let at = self.next_release_ms.load(Ordering::Acquire);
        if at > now {
            tokio::time::sleep(Duration::from_millis(at - now)).await;
        }
        let now = crate::breaker::now_ms();
        self.next_release_ms
            .store(now.saturating_add(self.interval_ms), Ordering::Release);
    }
}

/// A caller's place in a [`Queue`]; leaving (or being dropped) frees it.
#[derive(Debug)]
pub(crate) struct Place<'q> {
    queue: &'q Queue,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.queue.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}
