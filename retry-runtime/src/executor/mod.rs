//! The executor: the one place where backoff, classification, hints and limits meet.
//!
//! `#[resilient]` rewrites a function body into a loop that drives a `Call` (what it emits,
//! shown here with the names it uses; none of them is a stable API):
//!
//! ```text
//! let mut call = { static SITE: CallSite = CallSite::from_parts(PolicyParts { … });
//!                  Call::start_static(&SITE) };         // FastCall for the fast policies
//! let mut result = loop {
//!     let admitted = call.admit().await;                // the gate's own future
//!     let outcome = call.run(admitted, async { <the original body> }).await;
//!     // settle (sync), and for a retry wait; the fast policies match on `settle` instead
//!     if let Some(result) = call.after(outcome, spend_of).await { break result; }
//! };
//! <fallbacks, when the call ended in an outage>
//! call.done(result)                                     // delivers the report
//! ```
//!
//! Each attempt is the original body, re-run; the loop lives in the user's own function so
//! that borrowed arguments (`&mut self` among them) are simply re-borrowed per attempt.
//!
//! The parts, one file each:
//! - [`decide`]: the pure rules (retryable? attempts left? `Retry-After` within bounds? time
//!   left before the deadline?).
//! - the gate (`gate.rs`): the only place that decides whether an attempt may start, and the
//!   only one that talks to the shared store. Every refusal that needs no waiting comes first
//!   (the breaker's state, the call's budget, the pool's and workflows' room, the retry
//!   budget), then the pacer's permit, then what an attempt takes (a probe slot,
//!   reservations), so a refused call never waits in a line first.
//! - the call (`call.rs`): start, attempt, settle, wait, done, and `Drop` (a dropped call
//!   gives back what it holds and reports `Cancelled`).
//! - fallbacks (`fallbacks.rs`): cached answers, another function, the queue.
//! - streams (`stream.rs`): [`Streamed`], retried until its first chunk, then the stream's end
//!   recorded as the committing attempt's result.

use std::future::Future;

use crate::classify::Classify;
use crate::rejected::CanReject;
use crate::spend::Spend;

mod attempt;
mod built;
mod call;
mod decide;
mod fallbacks;
mod fast;
mod gate;
mod probe;
mod stream;

pub use stream::Streamed;

pub use attempt::{Admitted, Admitting, Guarded, Limit};
pub use call::Call;
pub use decide::{decide, Decision, Failure};
pub use fast::FastCall;
pub use probe::{Probe, ProbeHiddenStream, ProbeNoSpend, ProbeSpend, StreamBehindAlias};
pub use site::{CallSite, PolicyParts};

mod site;

/// What a `#[resilient]` function returns: a `Result`. A trait, so that the one place a
/// non-`Result` return type is reported is the return type itself.
#[diagnostic::on_unimplemented(
    message = "a #[resilient] fn must return `Result<T, E>`, not `{Self}`",
    label = "the error is what decides whether to retry: return `Result<T, E>` with `E: Classify`"
)]
#[doc(hidden)]
pub trait Outcome: Sized {
    /// The success type.
    type Ok;
    /// The error type.
    type Err;
    /// As a `Result`.
    fn into_result(self) -> Result<Self::Ok, Self::Err>;
    /// From a `Result`.
    fn from_result(result: Result<Self::Ok, Self::Err>) -> Self;
    /// The success value, if this is one.
    fn ok_ref(&self) -> Option<&Self::Ok>;
    /// Whether this is a success.
    fn is_ok(&self) -> bool {
        self.ok_ref().is_some()
    }
}

impl<T, E> Outcome for Result<T, E> {
    type Ok = T;
    type Err = E;
    #[inline(always)]
    fn into_result(self) -> Result<T, E> {
        self
    }
    #[inline(always)]
    fn from_result(result: Result<T, E>) -> Self {
        result
    }
    #[inline(always)]
    fn ok_ref(&self) -> Option<&T> {
        self.as_ref().ok()
    }
}

#[doc(hidden)]
/// What [`Call::settle`] decided.
#[derive(Debug)]
pub enum Settled<R: Outcome> {
    /// Return this from the function.
    Return(R),
    /// Wait ([`Call::wait`]) and make another attempt; the error is kept in case the wait
    /// ends in a refusal, when it is what the caller gets.
    Retry(R::Err),
}

#[doc(hidden)]
/// What the generated loop does after a wait.
#[derive(Debug)]
pub enum Step<R> {
    /// Make another attempt.
    Retry,
    /// Return this from the function.
    Return(R),
}

/// Run `op` under `policy` without the macro: the same executor, driven by a closure that
/// makes one attempt per call.
///
/// ```
/// use std::time::Duration;
/// use retry_runtime::{retry, CallSite, Classify, ErrorClass, Policy, Rejected};
///
/// #[derive(Debug)]
/// enum E { Busy, Runtime(Rejected) }
/// impl From<Rejected> for E { fn from(r: Rejected) -> Self { E::Runtime(r) } }
/// impl Classify for E {
///     fn class(&self) -> ErrorClass {
///         match self { E::Busy => ErrorClass::Status(503), E::Runtime(r) => r.class() }
///     }
/// }
///
/// static POLICY: Policy = Policy::new("by_hand").with_base(Duration::from_millis(1));
/// static SITE: CallSite = CallSite::new(&POLICY);
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let mut calls = 0;
/// let answer = retry(&SITE, || {
///     calls += 1;
///     let busy = calls < 2;
///     async move { if busy { Err(E::Busy) } else { Ok(42) } }
/// })
/// .await;
/// assert_eq!(answer.unwrap(), 42);
/// assert_eq!(calls, 2);
/// # }
/// ```
pub async fn retry<T, E, F, Fut>(site: &'static CallSite<'static>, mut op: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Classify + CanReject,
{
    let mut call = Call::start_static(site);
    loop {
        let admitted = call.admit().await;
        let outcome = call.run(admitted, op()).await;
        match call.settle(outcome, |_| Spend::ZERO) {
            Settled::Return(result) => return result,
            Settled::Retry(error) => {
                if let Step::Return(result) = call.wait(error).await {
                    return result;
                }
            }
        }
    }
}
