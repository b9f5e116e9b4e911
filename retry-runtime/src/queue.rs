//! A breaker's waiting line for `fallback = queue`, below the breaker that owns one and the
//! fallback that parks callers in it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
        let now = crate::clock::now_ms();
        let at = self.next_release_ms.load(Ordering::Acquire);
        if at > now {
            tokio::time::sleep(Duration::from_millis(at - now)).await;
        }
        let now = crate::clock::now_ms();
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
