//! The first attempt without a [`Call`]: for a policy whose first attempt nothing can cut
//! and only a breaker can refuse (no timeout, deadline, pacer or pool: what the macro
//! checks; a breaker with no store and no admission rate on, checked here), in a call
//! nobody observes, outside any workflow, with no subscriber to see its events and no
//! recorder timing it. A success there is the common case and all that needs doing is what
//! it counts; the call's full state (the `Call`, some 900 bytes of it) is built only when the
//! first attempt fails, or when anything of the above is there to see it.
//!
//! What a success counts is what the full path counts: the site's spend estimate, the
//! attempts, spend and calls counters. The attempt runs in its attempt context
//! ([`current_attempt`](crate::current_attempt)), and a failed one hands its key to the
//! `Call` built for the rest of the call, so the key stays the call's.

use std::future::Future;

use tokio::time::Instant;

use super::gate::steps::{self, Notes};
use super::site::SiteState;
use super::{Admitted, Admitting, Call, CallSite, Guarded, Outcome, Settled, Step};
use crate::breaker::{Admission, Breaker};
use crate::classify::Classify;
use crate::context::{IdempotencyKey, InAttempt};
use crate::rejected::CanReject;
use crate::report::{self, StopReason};
use crate::spend::Spend;

#[doc(hidden)]
/// A call at a site whose first attempt may run without a [`Call`] (what the macro emits for
/// such a policy). Not part of the stable API.
#[derive(Debug)]
pub struct FastCall {
    site: &'static CallSite<'static>,
    state: &'static SiteState,
    call: Option<Call<'static>>,
    // The first attempt ran (or runs) on the fast path, with this key.
    fast: Option<IdempotencyKey>,
    // A fast first attempt's breaker, its admission and its start, at a breaker's site.
    admitted: Option<(&'static Breaker, Admission, Instant)>,
}

impl FastCall {
    /// Start a call at `site`.
    #[inline]
    pub fn start_static(site: &'static CallSite<'static>) -> FastCall {
        let state = site.state();
        site.register(state);
        FastCall {
            site,
            state,
            call: None,
            fast: None,
            admitted: None,
        }
    }

    /// Whether nothing can see this call's start: no observer, no workflow, no events, no
    /// recorded durations. (The policy itself was checked by the macro.)
    #[inline]
    fn unseen(&self) -> bool {
        !report::observing()
            && !crate::budget::in_workflow()
            && !report::events_on()
            && !report::metered::timed(Some(&self.state.labels))
    }

    fn call(&mut self) -> &mut Call<'static> {
        let site = self.site;
        self.call.get_or_insert_with(|| Call::start_static(site))
    }

    /// Whether the first attempt runs on the fast path ([`FastCall::run_fast`]): nothing can
    /// see the call. Decided once, before the first attempt.
    #[inline]
    pub fn fast_first(&mut self) -> bool {
        if self.call.is_none() && self.fast.is_none() && self.unseen() {
            self.fast = Some(crate::context::new_call_key());
            return true;
        }
        false
    }

    /// [`FastCall::fast_first`] at a breaker's site: also the breaker is the whole gate (no
    /// store to ask, no admission rate switched on) and admits the attempt, at one clock
    /// read.
    #[inline]
    pub fn fast_first_guarded(&mut self) -> bool {
        if self.call.is_some() || self.fast.is_some() || !self.unseen() {
            return false;
        }
        let state = self.state;
        let Some(breaker) = state.breaker.get() else {
            return false;
        };
        if state.pace.get().is_some()
            || state.pool.get().is_some()
            || breaker.rate_gate().rate().is_some()
            || crate::store::shared_now().is_some()
        {
            return false;
        }
        let now = Instant::now();
        let mut notes = Notes {
            function: self.state.policy.name(),
            kept: None,
        };
        let now_ms = crate::clock::to_ns(now) / 1_000_000;
        // Refused (open): the full path asks again, is refused alike and says so.
        let Ok(admission) = steps::admit(&mut notes, breaker, now_ms, true) else {
            return false;
        };
        self.admitted = Some((breaker, admission, now));
        self.fast = Some(crate::context::new_call_key());
        true
    }

    /// The fast first attempt, in its attempt context.
    #[inline]
    pub fn run_fast<F: Future>(&self, attempt: F) -> impl Future<Output = F::Output> {
        let key = self.fast.unwrap_or_else(crate::context::new_call_key);
        crate::context::scope(1, key, attempt)
    }

    /// Run an attempt on the full path (see [`Call::attempt`]).
    #[inline]
    pub fn attempt<Fut: Future>(&mut self, attempt: Fut) -> InAttempt<Fut> {
        self.call().attempt(attempt)
    }

    /// The admission of an attempt on the full path (see [`Call::admit`]).
    #[cfg_attr(not(debug_assertions), inline)]
    pub fn admit(&mut self) -> Admitting<impl Sized + use<'_>, Admitted> {
        self.call().admit()
    }

    /// Run an attempt the gate admitted, on the full path (see [`Call::run`]).
    #[inline]
    pub fn run<T, E, Fut>(&mut self, admitted: Admitted, attempt: Fut) -> Guarded<'_, 'static, Fut>
    where
        Fut: Future<Output = Result<T, E>>,
        E: CanReject,
    {
        self.call().run(admitted, attempt)
    }

    /// Classify the attempt's outcome and decide (see [`Call::settle`]).
    #[inline]
    pub fn settle<R>(&mut self, outcome: R, spend_of: fn(&R) -> Spend) -> Settled<R>
    where
        R: Outcome,
        R::Err: Classify,
    {
        let Some(key) = self.fast else {
            return self.call().settle(outcome, spend_of);
        };
        if outcome.is_ok() {
            self.fast = None;
            let spend = spend_of(&outcome);
            self.state.estimate.observe(spend);
            if let Some((breaker, admission, started)) = self.admitted.take() {
                let mut notes = Notes {
                    function: self.state.policy.name(),
                    kept: None,
                };
                steps::record(&mut notes, breaker, admission, None, true, started);
            }
            report::metered::fast_success(&self.state.labels, spend.micros(), spend.tokens());
            return Settled::Return(outcome);
        }
        // The first attempt failed: the rest of the call is the full path's, with the
        // attempt counted as made (and its start unread: nothing could see it).
        self.fast = None;
        let admitted = self
            .admitted
            .take()
            .map(|(_, admission, started)| (admission, started));
        let mut call = Call::start_static(self.site);
        call.after_unseen_attempt(key, admitted);
        let settled = call.settle(outcome, spend_of);
        self.call = Some(call);
        settled
    }

    /// Wait before the next attempt (see [`Call::wait`]).
    pub async fn wait<R: Outcome>(&mut self, error: R::Err) -> Step<R> {
        self.call().wait(error).await
    }

    /// The call is over (see [`Call::done`]).
    #[inline]
    pub fn done<R>(&mut self, result: R) -> R {
        match self.call.as_mut() {
            Some(call) => call.done(result),
            None => result,
        }
    }

    /// `fallback = cached` alone, at the end (see [`Call::done_cached`]): a fast success is
    /// only remembered.
    #[inline]
    pub fn done_cached<R>(&mut self, key: u64, result: R) -> R
    where
        R: Outcome,
        R::Ok: crate::fallback::CachedAnswer,
    {
        match self.call.as_mut() {
            Some(call) => call.done_cached(key, result),
            None => {
                self.state.remember(key, &result);
                result
            }
        }
    }

    /// Whether the call falls back (see [`Call::falls_back`]): only after a failure, when
    /// the full path has the call.
    pub fn falls_back<R: Outcome>(&self, result: &R) -> bool {
        self.call
            .as_ref()
            .is_some_and(|call| call.falls_back(result))
    }

    /// `fallback = cached` (see [`Call::serve_cached`]).
    pub fn serve_cached<R>(&mut self, key: u64) -> Option<R>
    where
        R: Outcome,
        R::Ok: crate::fallback::CachedAnswer,
    {
        self.call().serve_cached(key)
    }

    /// `fallback = path::to_fn` (see [`Call::serve_fn`]).
    pub async fn serve_fn<R, F>(&mut self, path: &'static str, call: F) -> R
    where
        R: Outcome,
        F: Future<Output = R>,
    {
        self.call().serve_fn(path, call).await
    }

    /// `fallback = queue` (see [`Call::park`]): only after a failure, when the full path
    /// has the call.
    pub async fn park<T, E>(&mut self, result: Result<T, E>) -> Step<Result<T, E>>
    where
        E: CanReject,
    {
        self.call().park(result).await
    }

    /// Remember a good answer for `fallback = cached` (see [`Call::cache_store`]).
    pub fn cache_store<R>(&self, key: u64, result: &R)
    where
        R: Outcome,
        R::Ok: crate::fallback::CachedAnswer,
    {
        self.state.remember(key, result);
    }
}

impl Drop for FastCall {
    fn drop(&mut self) {
        // Dropped during a fast first attempt: the caller gave up. Say so, as the full path
        // does (its `Call`, if there is one, says so itself).
        // A probe that never finished gives its slot back, as the full path's gate does.
        if let Some((breaker, admission, _)) = self.admitted.take() {
            breaker.cancel(admission);
        }
        // (No event: nothing could see one when the attempt started.)
        if self.fast.is_some() && self.call.is_none() {
            report::metered::call_ended(
                Some(&self.state.labels),
                self.state.policy.name(),
                StopReason::Cancelled.as_str(),
                1,
                0,
                0,
                crate::clock::unread(),
            );
        }
    }
}
