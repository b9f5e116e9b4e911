//! The two futures of a guarded attempt, split where the generic part begins: the admission
//! (the same type in every `#[resilient]` fn, its body compiled once, in this crate) and the
//! attempt under its limit (generic over the body, and so compiled again for each function:
//! kept to polling the body and, when the body is pending, one non-generic look at the
//! limit's timer).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

use super::call::{Call, Cut};
use super::gate::Refusal;
use crate::context::{Entered, Slot};
use crate::rejected::{CanReject, Rejected};

#[doc(hidden)]
/// What the first attempt's admission resolved to, for [`Call::run`]: admitted, or the gate's
/// refusal. Not part of the stable API.
#[derive(Debug, Clone, Copy)]
pub struct Admitted(pub(super) Result<(), Refusal>);

impl Admitted {
    /// Nothing to admit (a retry, admitted in `wait`; a gate with nothing in it).
    pub(super) const YES: Admitted = Admitted(Ok(()));
}

pin_project_lite::pin_project! {
    #[doc(hidden)]
    /// A wait of the gate's: the first attempt's admission (what [`Call::admit`] returns), or
    /// a retry's backoff and admission (awaited by [`Call::wait`]). Not part of the stable
    /// API.
    ///
    /// It polls the gate's future through a function pointer taken in this crate, so that a
    /// crate awaiting it compiles none of the gate's, pacer's or store's state machines: only
    /// the call through the pointer (and their drop glue).
    // The pointer first (`repr(C)`), beside the start of the future it polls: one cache
    // line for a woken task to read, not two.
    #[repr(C)]
    pub struct Admitting<F, O = Admitted> {
        poll: fn(Pin<&mut F>, &mut Context<'_>) -> Poll<O>,
        #[pin]
        admitting: F,
    }
}

impl<F, O> std::fmt::Debug for Admitting<F, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Admitting")
    }
}

impl<F: Future<Output = O>, O> Admitting<F, O> {
    /// Only ever instantiated in this crate (by [`Call::wait`]), where `F` is known.
    pub(super) fn new(admitting: F) -> Self {
        Admitting {
            admitting,
            poll: F::poll,
        }
    }
}

/// The gate's admission of a first attempt (by [`Call::admit`], where `F` is known), or, when
/// there is none to make (`skip`), an admission ready at once: the caller's future holds the
/// gate's future itself, one state machine fewer between a woken task and the pacer's line.
pub(super) fn first<F>(skip: bool, admitting: F) -> Admitting<F, Admitted>
where
    F: Future<Output = Result<(), Refusal>>,
{
    // Nothing to admit: ready at once, `admitting` never polled (only built, so that it is
    // built in place whatever the call needs).
    let poll = if skip {
        nothing_to_admit::<F>
    } else {
        poll_first::<F>
    };
    Admitting { admitting, poll }
}

fn poll_first<F: Future<Output = Result<(), Refusal>>>(
    admitting: Pin<&mut F>,
    cx: &mut Context<'_>,
) -> Poll<Admitted> {
    admitting.poll(cx).map(Admitted)
}

fn nothing_to_admit<F>(_: Pin<&mut F>, _: &mut Context<'_>) -> Poll<Admitted> {
    Poll::Ready(Admitted::YES)
}

impl<F, O> Future for Admitting<F, O> {
    type Output = O;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<O> {
        let this = self.project();
        (this.poll)(this.admitting, cx)
    }
}

pin_project_lite::pin_project! {
    #[doc(hidden)]
    /// What a guarded attempt runs under, apart from its body: the call, a refusal (then the
    /// body is never polled), the attempt's context, and the limit's timer. Not generic, so
    /// compiled once, here. Not part of the stable API.
    pub struct Limit<'c, 'p> {
        call: &'c mut Call<'p>,
        refused: Option<Rejected>,
        slot: Slot,
        // What the timer cuts the attempt by (`None`: no timer).
        cut: Option<Cut>,
        // Whether the task had coop budget left before the body's last poll.
        had_budget: bool,
        #[pin]
        timer: Option<Sleep>,
    }
}

impl<'c, 'p> Limit<'c, 'p> {
    /// The attempt `slot`, refused (`admitted` is `Err`) or under `limit`.
    #[cfg_attr(not(debug_assertions), inline(always))]
    pub(super) fn new(
        call: &'c mut Call<'p>,
        refused: Option<Rejected>,
        slot: Slot,
        limit: Option<(Instant, Cut)>,
    ) -> Self {
        Limit {
            call,
            refused,
            slot,
            cut: limit.map(|(_, cut)| cut),
            had_budget: false,
            timer: limit.map(|(at, _)| tokio::time::sleep_until(at)),
        }
    }

    /// Before a poll of the body: the refusal the attempt is, if the gate refused it (once);
    /// otherwise the attempt's context, current until the guard is dropped.
    #[inline]
    fn enter(self: Pin<&mut Self>) -> Result<Entered<'_>, Rejected> {
        let this = self.project();
        if let Some(refused) = this.refused.take() {
            return Err(refused);
        }
        *this.had_budget = this.cut.is_some() && tokio::task::coop::has_budget_remaining();
        Ok(this.slot.enter())
    }

    /// The body is pending: has its limit passed? Then the attempt is cut, and this is what
    /// it becomes. As tokio's `Timeout` does, a body that spent the task's coop budget does
    /// not keep its timer from firing.
    fn poll_cut(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Rejected> {
        let this = self.project();
        let (Some(timer), Some(cut)) = (this.timer.as_pin_mut(), *this.cut) else {
            return Poll::Pending;
        };
        let fired = if *this.had_budget && !tokio::task::coop::has_budget_remaining() {
            Pin::new(&mut tokio::task::coop::unconstrained(timer)).poll(cx)
        } else {
            timer.poll(cx)
        };
        fired.map(|()| this.call.cut_by(cut, this.slot.bill()))
    }
}

pin_project_lite::pin_project! {
    #[doc(hidden)]
    /// One attempt that the gate admitted (or refused: then it is that refusal, and the body
    /// is never polled), cut at its limit, in its attempt context: what [`Call::run`]
    /// returns. Not part of the stable API.
    pub struct Guarded<'c, 'p, F> {
        #[pin]
        limit: Limit<'c, 'p>,
        #[pin]
        attempt: F,
    }
}

impl<'c, 'p, F> Guarded<'c, 'p, F> {
    #[cfg_attr(not(debug_assertions), inline(always))]
    #[cfg_attr(debug_assertions, inline)]
    pub(super) fn new(limit: Limit<'c, 'p>, attempt: F) -> Self {
        Guarded { limit, attempt }
    }
}

impl<F> std::fmt::Debug for Guarded<'_, '_, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("refused", &self.limit.refused)
            .field("cut", &self.limit.cut)
            .finish_non_exhaustive()
    }
}

impl<T, E, F> Future for Guarded<'_, '_, F>
where
    F: Future<Output = Result<T, E>>,
    E: CanReject,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T, E>> {
        let this = self.project();
        let mut limit = this.limit;
        let polled = match limit.as_mut().enter() {
            Ok(_entered) => this.attempt.poll(cx),
            Err(refused) => return Poll::Ready(Err(E::from(refused))),
        };
        if polled.is_ready() {
            return polled;
        }
        match limit.poll_cut(cx) {
            Poll::Ready(cut) => Poll::Ready(Err(E::from(cut))),
            Poll::Pending => Poll::Pending,
        }
    }
}
