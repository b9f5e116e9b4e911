//! The attempt in flight, readable from a `#[resilient]` function's body: which attempt it is,
//! and a key that names the call across its attempts, for an `Idempotency-Key` header (the
//! OpenAI SDKs send one, the same on each retry, so that a retried POST the server already
//! served is not served twice) or a retry-count header.
//!
//! ```
//! use retry_runtime::{current_attempt, resilient, Rejected};
//!
//! # #[derive(Debug)] struct ApiError;
//! # impl retry_runtime::Classify for ApiError {
//! #     fn class(&self) -> retry_runtime::ErrorClass { retry_runtime::ErrorClass::Status(503) }
//! # }
//! #[resilient(max = 3, base = "1ms")]
//! async fn send(seen: &std::sync::Mutex<Vec<(u32, String)>>) -> Result<(), ApiError> {
//!     let attempt = current_attempt().expect("inside a #[resilient] body");
//!     // e.g. `.header("Idempotency-Key", attempt.idempotency_key().to_string())`
//!     seen.lock().unwrap().push((attempt.number(), attempt.idempotency_key().to_string()));
//!     Err(ApiError)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let seen = std::sync::Mutex::new(Vec::new());
//! let _ = send(&seen).await;
//! let seen = seen.into_inner().unwrap();
//! assert_eq!(seen.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 2, 3]);
//! assert!(seen.iter().all(|(_, key)| *key == seen[0].1), "one key for the whole call");
//! assert!(current_attempt().is_none(), "outside any attempt");
//! # }
//! ```

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::task::{Context, Poll};

thread_local! {
    // The attempt whose future this thread is polling (set around each poll by `InAttempt`).
    static ATTEMPT: Cell<Option<Current>> = const { Cell::new(None) };
}

/// What the polling thread holds of the attempt in flight: its context, and what its body
/// said it will be billed if cut (micro-dollars, tokens: `bill_on_cut`), carried back into
/// the attempt's future after each poll.
#[derive(Clone, Copy)]
struct Current {
    context: AttemptContext,
    bill: (u64, u64),
}

/// The attempt a `#[resilient]` function's body is running: see [`current_attempt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AttemptContext {
    number: u32,
    key: IdempotencyKey,
}

impl AttemptContext {
    /// Which attempt this is: 1 for the first, 2 for the first retry, ….
    pub fn number(&self) -> u32 {
        self.number
    }

    /// Retries before this attempt (0 on the first): what a `x-retry-count` header says.
    pub fn retries(&self) -> u32 {
        self.number.saturating_sub(1)
    }

    /// The call's key: the same on every attempt of one call, different for every call of
    /// the process (and, with a prefix drawn from the OS at start, of any other process).
    pub fn idempotency_key(&self) -> IdempotencyKey {
        self.key
    }
}

/// A call's idempotency key; `Display` writes it as 32 hex digits (a process prefix and the
/// call's number), fit for an `Idempotency-Key` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdempotencyKey {
    process: u64,
    call: u64,
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}{:016x}", self.process, self.call)
    }
}

/// The attempt in flight, from inside a `#[resilient]` function's body (and what it calls,
/// on the same task, while the attempt's future is polled); `None` anywhere else: outside
/// any call, in a task the body spawned, in a fallback function that is not itself
/// `#[resilient]`, and in a streaming call's stream after its first chunk.
pub fn current_attempt() -> Option<AttemptContext> {
    ATTEMPT
        .try_with(Cell::get)
        .ok()
        .flatten()
        .map(|c| c.context)
}

/// Raise the bill-if-cut of the attempt in flight to at least `micros` and `tokens` (for
/// `spend::bill_on_cut`); nothing outside an attempt.
pub(crate) fn raise_bill(micros: u64, tokens: u64) {
    let _ = ATTEMPT.try_with(|slot| {
        if let Some(mut current) = slot.get() {
            current.bill = (current.bill.0.max(micros), current.bill.1.max(tokens));
            slot.set(Some(current));
        }
    });
}

/// A new call's key. No allocation and no shared write but once per thread: a thread's
/// number (drawn from one counter the first time the thread starts a call) above a
/// thread-local count.
pub(crate) fn new_call_key() -> IdempotencyKey {
    static THREADS: AtomicU32 = AtomicU32::new(0);
    thread_local! {
        static NEXT: Cell<u64> = const { Cell::new(0) };
    }
    let call = NEXT.with(|next| {
        let mut n = next.get();
        if n == 0 {
            // 24 bits of thread number, 40 bits of calls per thread (a trillion).
            n = u64::from(THREADS.fetch_add(1, Ordering::Relaxed) & 0xff_ffff) << 40;
        }
        next.set(n + 1);
        n
    });
    IdempotencyKey {
        process: process_prefix(),
        call,
    }
}

fn process_prefix() -> u64 {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    *PREFIX.get_or_init(|| {
        use rand::{RngCore, SeedableRng};
        // From the OS (never the jitter sequence, whose seeded draws must not move); the
        // clock if the OS has nothing to give.
        rand::rngs::SmallRng::try_from_os_rng().map_or_else(
            |_| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64)
            },
            |mut rng| rng.next_u64(),
        )
    })
}

/// `attempt` run as attempt `number` of the call keyed `key`.
pub(crate) fn scope<F: Future>(number: u32, key: IdempotencyKey, attempt: F) -> InAttempt<F> {
    InAttempt {
        attempt,
        slot: Slot::new(number, key),
    }
}

/// What an attempt's future carries of its attempt: its context, and what its body said it
/// will be billed if cut (micro-dollars, tokens), made current on the polling thread around
/// each poll of the body ([`Slot::enter`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot {
    context: AttemptContext,
    bill: (u64, u64),
}

impl Slot {
    /// Attempt `number` of the call keyed `key`, nothing billed yet.
    #[inline]
    pub(crate) fn new(number: u32, key: IdempotencyKey) -> Slot {
        Slot {
            context: AttemptContext { number, key },
            bill: (0, 0),
        }
    }

    /// Make the attempt current on this thread until the guard is dropped: two thread-local
    /// writes (the context in, the one before it back), no allocation. What the body said
    /// it will be billed if cut comes back with the second.
    #[inline]
    pub(crate) fn enter(&mut self) -> Entered<'_> {
        Entered::enter(self.context, &mut self.bill)
    }

    /// What the body said the attempt will be billed if cut: micro-dollars, tokens.
    pub(crate) fn bill(&self) -> (u64, u64) {
        self.bill
    }
}

pin_project_lite::pin_project! {
    #[doc(hidden)]
    /// An attempt's future, polled with its context current on the polling thread (see
    /// [`current_attempt`]). Not part of the stable API.
    #[derive(Debug)]
    pub struct InAttempt<F> {
        #[pin]
        attempt: F,
        slot: Slot,
    }
}

impl<F: Future> Future for InAttempt<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        // The slot's work is in `Entered` (not generic: compiled once, not per body).
        let _entered = this.slot.enter();
        this.attempt.poll(cx)
    }
}

/// The attempt's slot, current on this thread while it is polled; dropped (even if the
/// attempt panics), it puts the slot before back and keeps the attempt's bill.
pub(crate) struct Entered<'a> {
    before: Option<Current>,
    bill: &'a mut (u64, u64),
}

impl<'a> Entered<'a> {
    // Inline: in a release build the swap is a few instructions around the body's poll; a
    // debug build still compiles it once per crate, not once per function.
    #[inline]
    fn enter(context: AttemptContext, bill: &'a mut (u64, u64)) -> Entered<'a> {
        let current = Current {
            context,
            bill: *bill,
        };
        // While the thread's locals are being destroyed there is no slot: no context then.
        let before = ATTEMPT
            .try_with(|slot| slot.replace(Some(current)))
            .ok()
            .flatten();
        Entered { before, bill }
    }
}

impl Drop for Entered<'_> {
    #[inline]
    fn drop(&mut self) {
        if let Ok(Some(current)) = ATTEMPT.try_with(|slot| slot.replace(self.before)) {
            *self.bill = current.bill;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_per_call_and_across_threads() {
        let a = new_call_key();
        let b = new_call_key();
        assert_ne!(a, b);
        let c = std::thread::spawn(new_call_key).join().unwrap();
        assert_ne!(a, c);
        assert_ne!(b, c);
        assert_eq!(a.to_string().len(), 32);
        assert_eq!(a.process, c.process, "one prefix per process");
    }
}
