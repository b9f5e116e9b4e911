//! The call: start, attempt, settle, wait, done, and what a dropped call gives back.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::attempt::{Admitted, Admitting, Guarded, Limit};
use super::decide::{decide, Decision, Failure};
use super::gate::{Ask, Gate, Refusal};
use super::site::SiteState;
use super::{CallSite, Outcome, Settled, Step};
use crate::backoff::Jitter;
use crate::budget::{current_workflow, Ledgers};
use crate::classify::{Classify, ErrorClass};
use crate::context::{IdempotencyKey, InAttempt, Slot};
use crate::fallback::{FallbackReport, Place};
use crate::policy::Policy;
use crate::rejected::{CanReject, Rejected};
use crate::report::{self, AttemptReport, CallReport, StopReason};
use crate::spend::{Spend, Unit};

/// Why the executor cut the attempt in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cut {
    Timeout,
    Deadline,
}

#[doc(hidden)]
/// One call in progress: the state the generated loop drives.
///
/// Not part of the stable API: use `#[resilient]`, or [`retry`](super::retry) to drive a
/// policy by hand.
// In this order (`repr(C)`): what every call touches first and together (a call woken in the
// pacer's line reads the gate and these, so they share as few cache lines as they can), and
// last what only retries, refusals, streams, fallbacks and the queue need, made when needed.
#[derive(Debug)]
#[repr(C)]
pub struct Call<'p> {
    // Everything about starting an attempt, and what the attempt in flight holds.
    pub(super) gate: Gate<'p>,
    // What the first attempt's admission asks the gate (kept here while it is asked).
    first_ask: Option<Ask>,
    pub(super) site: &'p SiteState,
    // The site's compile-time metric labels, when the site is a `static` (the macro's).
    labels: Option<&'static report::metered::SiteLabels>,
    pub(super) policy: &'p Policy,
    pub(super) started: Instant,
    pub(super) attempt_started: Instant,
    // The call's idempotency key, the same for each of its attempts (`current_attempt`).
    key: IdempotencyKey,
    pub(super) spent: Spend,
    // The most an attempt of this call has cost so far: a floor for the next one's estimate
    // (the site's estimate learns from successes; this call's own billed failures say more).
    costliest: Spend,
    // `Some` only under `observe`, so an unobserved call never allocates for its report.
    observed: Option<Vec<AttemptReport>>,
    // Its seat in the observer (when `observed`).
    seat: usize,
    pub(super) attempts: u32,
    pub(super) cut: Option<Cut>,
    pub(super) finished: bool,
    // No attempt after the one in flight, whatever the policy allows (`last_attempt`).
    last: bool,
    pub(super) cold: Option<Cold>,
}

/// What a call needs only once it retries, is refused, streams, falls back or queues: made
/// then ([`Call::cold`]), so that a first-attempt success never writes it.
#[derive(Debug)]
pub(super) struct Cold {
    // Why the attempts ended (kept for the report, the fallbacks and their report: a success
    // that nothing observes needs none).
    pub(super) stop: Option<StopReason>,
    // Set when the first attempt was refused.
    pub(super) refused: Option<Refusal>,
    // A streaming call: when its first chunk came (the call is committed: nothing is retried
    // after it), and, once the stream is over, what it did.
    pub(super) committed: Option<Instant>,
    pub(super) stream: Option<crate::report::StreamReport>,
    // What the attempt just cut said it would be billed if cut (`bill_on_cut`).
    pub(super) cut_bill: Spend,
    // The class of the failure being retried, for the report if the wait ends the call.
    pub(super) last_class: Option<ErrorClass>,
    pub(super) delay_before: Duration,
    pub(super) prev_backoff: Duration,
    pub(super) jitter: Option<Jitter>,
    pub(super) fallback: Option<FallbackReport>,
    // `fallback = queue`: when the call joined the line, its place, and (at the head) the
    // line itself.
    pub(super) parked_at: Option<Instant>,
    pub(super) place: Option<Place<'static>>,
    pub(super) line_guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Cold {
    fn new(policy: &Policy) -> Cold {
        Cold {
            stop: None,
            refused: None,
            committed: None,
            stream: None,
            cut_bill: Spend::ZERO,
            last_class: None,
            delay_before: Duration::ZERO,
            prev_backoff: policy.base(),
            jitter: None,
            fallback: None,
            parked_at: None,
            place: None,
            line_guard: None,
        }
    }
}

impl<'p> Call<'p> {
    /// Start a call at a `static` call site (what the macro emits): the clock for `deadline`
    /// starts now, and metrics use the site's compile-time labels.
    // Inlined into the function's future, so the call is built where it lives, not moved there
    // (in an optimised build: a debug build would compile the whole start again in each
    // function, for nothing it measures).
    #[cfg_attr(not(debug_assertions), inline(always))]
    #[cfg_attr(debug_assertions, inline)]
    pub fn start_static(site: &'static CallSite<'static>) -> Call<'static> {
        let state = site.state();
        site.register(state);
        Call::start_labelled(state, Some(&state.labels))
    }

    /// Start a call: the clock for `deadline` starts now.
    #[cfg_attr(not(debug_assertions), inline(always))]
    #[cfg_attr(debug_assertions, inline)]
    pub fn start(site: &'p CallSite<'p>) -> Self {
        Call::start_labelled(site.state(), None)
    }

    #[cfg_attr(not(debug_assertions), inline(always))]
    #[cfg_attr(debug_assertions, inline)]
    fn start_labelled(
        site: &'p SiteState,
        labels: Option<&'static report::metered::SiteLabels>,
    ) -> Self {
        let policy = &site.policy;
        let seat = report::claim_observer();
        let observed = seat.map(|_| Vec::new());
        let ledgers = Ledgers {
            pool: site.pool.get(),
            workflow: current_workflow(),
        };
        let (breaker, pacer) = (site.breaker.get(), site.pace.get());
        // The start is read only if something will read it: a deadline, a timeout or a
        // stream's limits, a breaker (latency) or a pacer, a report, an event or a recorded
        // duration. A plain success otherwise reads no clock; a retry reads it for its attempt.
        let timed = policy.deadline().is_some()
            || policy.timeout().is_some()
            || policy.first_token().is_some()
            || policy.idle().is_some()
            || observed.is_some()
            || breaker.is_some()
            || pacer.is_some()
            || report::events_on()
            || report::metered::timed(labels);
        let now = if timed {
            Instant::now()
        } else {
            crate::clock::unread()
        };
        Self {
            gate: Gate::new(
                policy.name(),
                &site.estimate,
                breaker,
                pacer,
                ledgers,
                observed.is_some(),
            ),
            first_ask: None,
            site,
            labels,
            policy,
            started: now,
            attempt_started: now,
            key: crate::context::new_call_key(),
            spent: Spend::ZERO,
            costliest: Spend::ZERO,
            observed,
            seat: seat.unwrap_or(0),
            attempts: 0,
            cut: None,
            finished: false,
            last: false,
            cold: None,
        }
    }

    /// What only retries, refusals, streams, fallbacks and the queue need, made at the first
    /// need.
    #[inline]
    pub(super) fn cold(&mut self) -> &mut Cold {
        let policy = self.policy;
        self.cold.get_or_insert_with(|| Cold::new(policy))
    }

    /// The delay slept before the attempt in flight.
    fn delay_before(&self) -> Duration {
        self.cold
            .as_ref()
            .map_or(Duration::ZERO, |c| c.delay_before)
    }

    /// When a streaming call's first chunk came (it is committed).
    pub(super) fn committed(&self) -> Option<Instant> {
        self.cold.as_ref().and_then(|c| c.committed)
    }

    /// The call's first attempt ran without it (see `FastCall`) and failed: count it as made,
    /// under the key it ran with.
    pub(super) fn after_unseen_attempt(
        &mut self,
        key: IdempotencyKey,
        admitted: Option<(crate::breaker::Admission, Instant)>,
    ) {
        self.attempts = 1;
        self.key = key;
        // At a breaker's site: the breaker's admission is the gate's to record, and its start
        // was read (the breaker's latency and the report's times count from it).
        if let Some((admission, started)) = admitted {
            self.gate.adopt_admission(admission);
            self.started = started;
            self.attempt_started = started;
        }
    }

    /// Run one attempt with no limit of the executor's own: for policies that can neither
    /// refuse nor cut an attempt, so the error type needs no `From<Rejected>`.
    ///
    /// Inside a [`workflow`](crate::workflow) whose cap is already reached, such a call cannot
    /// be refused (there is no error to refuse it with): it runs, is counted, and a WARN
    /// event says the cap was overrun. Its retries are still stopped by the cap.
    #[inline]
    pub fn attempt<Fut: Future>(&mut self, attempt: Fut) -> InAttempt<Fut> {
        self.begin_unguarded();
        crate::context::scope(self.attempts, self.key, attempt)
    }

    fn begin_unguarded(&mut self) {
        if self.attempts == 0 {
            self.gate.take_unrefusable(self.site.estimate.expected());
        }
        self.begin_attempt();
    }

    /// The first attempt's admission through the gate (retries are admitted in `wait`, and a
    /// gate with nothing in it admits at once): await it, then hand what it resolves to to
    /// [`Call::run`] with the attempt. Its future is the same type for every function, and
    /// compiled once, here.
    // Inlined in an optimised build, so that the gate's future is built where it is awaited
    // (not returned and copied, a kilobyte); a debug build compiles it once, here. It is built
    // even when there is nothing to admit (then never polled): built on one branch only, it
    // would be copied.
    #[cfg_attr(not(debug_assertions), inline)]
    pub fn admit(&mut self) -> Admitting<impl Sized + use<'_, 'p>, Admitted> {
        let admits = self.attempts == 0 && !self.gate.is_empty();
        let ask = self.first_ask.insert(self.ask(true));
        super::attempt::first(!admits, self.gate.admit_first(ask))
    }

    /// Run one attempt that [`Call::admit`] admitted, bounded by the per-attempt `timeout` and
    /// what is left of the `deadline`. A refused call becomes `E::from(Rejected::…)` without
    /// polling `attempt`; an attempt cut short becomes `E::from(Rejected::…)`, classified as a
    /// timeout.
    // `E: CanReject` on a plain type parameter (not `R::Err`) makes rustc report the
    // trait's own message ("must implement From<Rejected>") rather than the bare `From` bound.
    #[cfg_attr(not(debug_assertions), inline(always))]
    #[cfg_attr(debug_assertions, inline)]
    pub fn run<T, E, Fut>(&mut self, admitted: Admitted, attempt: Fut) -> Guarded<'_, 'p, Fut>
    where
        Fut: Future<Output = Result<T, E>>,
        E: CanReject,
    {
        // What does not depend on the body is in non-generic functions, compiled once here
        // rather than in every `#[resilient]` fn.
        Guarded::new(self.begin_run(admitted), attempt)
    }

    /// [`Call::admit`], then [`Call::run`]: one attempt through the gate, under its limit.
    pub async fn attempt_guarded<T, E, Fut>(&mut self, attempt: Fut) -> Result<T, E>
    where
        Fut: Future<Output = Result<T, E>>,
        E: CanReject,
    {
        let admitted = self.admit().await;
        self.run(admitted, attempt).await
    }

    /// The attempt begins, unless its admission refused it: its context, and when it is cut,
    /// and by what (the `timeout`, or what is left of the `deadline`), if either is set.
    // Inlined in an optimised build: the limit (a timer among it) is built in place, not
    // returned and copied.
    #[cfg_attr(not(debug_assertions), inline(always))]
    fn begin_run(&mut self, admitted: Admitted) -> Limit<'_, 'p> {
        let (refused, limit) = match admitted.0 {
            Ok(()) => (None, self.begin_guarded()),
            Err(refusal) => {
                self.cold().refused = Some(refusal);
                (Some(refusal.rejected()), None)
            }
        };
        let slot = Slot::new(self.attempts, self.key);
        Limit::new(self, refused, slot, limit)
    }

    /// The attempt begins: when it is cut, and by what (the `timeout`, or what is left of
    /// the `deadline`), if either is set.
    fn begin_guarded(&mut self) -> Option<(Instant, Cut)> {
        self.begin_attempt();
        let now = self.attempt_started;
        let by_timeout = self.policy.timeout().map(|t| (now + t, Cut::Timeout));
        let by_deadline = self
            .policy
            .deadline()
            .map(|d| (self.started + d, Cut::Deadline));
        match (by_timeout, by_deadline) {
            (Some(t), Some(d)) => Some(if d.0 <= t.0 { d } else { t }),
            (one, other) => one.or(other),
        }
    }

    /// The attempt was cut by `cut`; its body said it would be billed `bill` (micro-dollars,
    /// tokens) if so.
    pub(super) fn cut_by(&mut self, cut: Cut, (micros, tokens): (u64, u64)) -> Rejected {
        self.cut = Some(cut);
        self.cold().cut_bill = Spend::new(micros, tokens);
        match cut {
            Cut::Timeout => Rejected::AttemptTimedOut {
                timeout: self.policy.timeout().unwrap_or_default(),
            },
            Cut::Deadline => Rejected::DeadlineExceeded {
                deadline: self.policy.deadline().unwrap_or_default(),
            },
        }
    }

    /// What the gate needs to know about the next attempt.
    fn ask(&self, first: bool) -> Ask {
        let max_cost = self.policy.max_cost().map(|limit| match limit.unit() {
            Unit::Usd => Spend::from_micros(limit.amount()),
            Unit::Tokens => Spend::from_tokens(limit.amount()),
        });
        // Only pools and workflows reserve: elsewhere the site's knowledge is not read.
        let reserves = self.gate.reserves();
        Ask {
            first,
            expected: self.site.estimate.expected().max_each(self.costliest),
            reserve: self.costliest.max_each(max_cost.unwrap_or(Spend::ZERO)),
            unknown: reserves
                && max_cost.is_none()
                && self.costliest.is_zero()
                && !self.site.estimate.is_known(),
            budget: self.policy.budget().map(|limit| (limit, self.spent)),
            latest_permit: self.latest_permit(),
            deadline: self.policy.deadline().unwrap_or_default(),
        }
    }

    /// The latest a pacing permit is worth having: the attempt must still be able to run
    /// after it, so it leaves the attempt its `timeout`, at most half the deadline (a permit at
    /// the deadline itself buys an attempt that is cut at once, and the cut counts against the
    /// breaker). `None` without a deadline.
    fn latest_permit(&self) -> Option<Instant> {
        self.policy.deadline().map(|d| {
            let room = self.policy.timeout().unwrap_or(d).min(d / 2);
            self.started + (d - room)
        })
    }

    fn begin_attempt(&mut self) {
        // The first attempt starts when the call did (`start` just read the clock), unless
        // it waited for the pacer: its `timeout` counts from the permit.
        if self.attempts > 0 || !self.gate.paced().is_zero() {
            self.attempt_started = Instant::now();
        }
        // The call's own first attempt (not a round run again after the queue): how long the
        // gate held it, from instants already read.
        if self.attempts == 0 && self.cold.as_ref().is_none_or(|c| c.parked_at.is_none()) {
            report::metered::first_attempt(
                self.labels,
                self.attempt_started.saturating_duration_since(self.started),
            );
        }
        self.attempts += 1;
        self.cut = None;
    }

    /// Classify the attempt's outcome and decide: return it, or retry after a wait.
    /// `spend_of` tells what a success cost (zero where the success type is not
    /// [`Metered`](crate::Metered)). Synchronous, so that the one `E: Classify` bound is
    /// checked (and reported) in one place.
    pub fn settle<R>(&mut self, outcome: R, spend_of: fn(&R) -> Spend) -> Settled<R>
    where
        R: Outcome,
        R::Err: Classify,
    {
        if let Some(refusal) = self.cold.as_mut().and_then(|c| c.refused.take()) {
            self.finish(refusal.stop(true), None);
            return Settled::Return(outcome);
        }
        let spend = spend_of(&outcome);
        let error = match outcome.into_result() {
            Ok(value) if self.committed().is_some() => {
                // A stream's first chunk: the attempt goes on until the stream ends (see
                // `stream.rs`); only its report entry is written now.
                self.record(None, None, Spend::ZERO);
                return Settled::Return(R::from_result(Ok(value)));
            }
            Ok(value) => {
                self.site.estimate.observe(spend);
                self.spent += spend;
                self.gate
                    .record(None, spend, None, self.attempts == 1, self.attempt_started);
                self.record(None, None, spend);
                self.finish(StopReason::Success, None);
                return Settled::Return(R::from_result(Ok(value)));
            }
            Err(error) => error,
        };
        let failure = match self.cut {
            Some(cut) => Failure {
                class: ErrorClass::Timeout,
                should_retry: None,
                retry_after: None,
                cut_by_deadline: cut == Cut::Deadline,
            },
            None => Failure {
                class: error.class(),
                should_retry: error.should_retry(),
                retry_after: error.retry_after(),
                cut_by_deadline: false,
            },
        };
        // A cut attempt is billed what its body said it would be (`bill_on_cut`: at least the
        // prompt, which the provider has started on); the error says what a failure was billed.
        let spend = if self.cut.is_some() {
            std::mem::take(&mut self.cold().cut_bill)
        } else {
            error.spend()
        };
        self.spent += spend;
        self.costliest = self.costliest.max_each(spend);
        self.site.estimate.observe_billed(spend);
        self.gate.record(
            Some(failure.class),
            spend,
            error.rate_limits(),
            self.attempts == 1,
            self.attempt_started,
        );
        self.record(Some(failure.class), failure.retry_after, spend);

        let backoff = self.next_backoff();
        let elapsed = self.started.elapsed();
        let decision = match decide(self.policy, self.attempts, failure, backoff, elapsed) {
            // Retries switched off for the process (tests), or this call cannot make another
            // attempt (`last_attempt`): this attempt was the last.
            Decision::Retry { .. } if self.last || crate::policy::retries_disabled() => {
                Decision::Stop(StopReason::AttemptsExhausted)
            }
            // What the shared state says about a retry the policy allows: an open breaker,
            // a budget without room or a spent retry budget stops the call before its backoff.
            Decision::Retry { delay } => match self.gate.check_retry(&self.ask(false)) {
                Ok(()) => Decision::Retry { delay },
                Err(denied) => Decision::Stop(denied.stop()),
            },
            stop => stop,
        };
        match decision {
            Decision::Retry { delay } => {
                let cold = self.cold();
                cold.prev_backoff = backoff;
                cold.delay_before = delay;
                cold.last_class = Some(failure.class);
                report::metered::retry(self.labels);
                report::retrying(
                    self.policy.name(),
                    self.attempts,
                    failure.class,
                    delay,
                    failure.retry_after,
                );
                Settled::Retry(error)
            }
            Decision::Stop(reason) => {
                self.finish(reason, Some(failure.class));
                Settled::Return(R::from_result(Err(error)))
            }
        }
    }

    /// [`Call::settle`], then, for a retry, [`Call::wait`]: what the function returns, or
    /// `None` to make the next attempt (what the generated loop awaits after each attempt,
    /// but for the fast first attempt's policies, which settle without an await).
    pub async fn after<R>(&mut self, outcome: R, spend_of: fn(&R) -> Spend) -> Option<R>
    where
        R: Outcome,
        R::Err: Classify,
    {
        match self.settle(outcome, spend_of) {
            Settled::Return(result) => Some(result),
            Settled::Retry(error) => match self.wait(error).await {
                Step::Return(result) => Some(result),
                Step::Retry => None,
            },
        }
    }

    /// Wait the delay `settle` chose, then ask the gate for the next attempt. The breaker may
    /// have opened, or a pool filled, while we slept: then the call ends with the last
    /// attempt's `error`.
    pub async fn wait<R: Outcome>(&mut self, error: R::Err) -> Step<R> {
        if self.back_off().await {
            return Step::Retry;
        }
        Step::Return(R::from_result(Err(error)))
    }

    /// [`Call::wait`]'s waits, the same future for every `R`, compiled once, here: whether
    /// the retry may be made.
    fn back_off(&mut self) -> Admitting<impl Sized + use<'_, 'p>, bool> {
        Admitting::new(self.back_off_steps())
    }

    async fn back_off_steps(&mut self) -> bool {
        tokio::time::sleep(self.delay_before()).await;
        let ask = self.ask(false);
        if let Err(denied) = self.gate.admit_retry(&ask).await {
            let class = self.cold().last_class;
            self.finish(denied.stop(), class);
            return false;
        }
        true
    }

    /// The attempt about to start is the call's last, whatever the policy allows: its request
    /// cannot be sent again (a streaming body, at the HTTP layer). If it fails, the call stops
    /// with [`StopReason::AttemptsExhausted`].
    pub fn last_attempt(&mut self) {
        self.last = true;
    }

    fn next_backoff(&mut self) -> Duration {
        let (policy, attempts) = (self.policy, self.attempts);
        let cold = self.cold();
        let jitter = cold.jitter.get_or_insert_with(Jitter::for_call);
        policy.backoff().delay(
            attempts - 1,
            policy.base(),
            policy.cap(),
            cold.prev_backoff,
            jitter,
        )
    }

    fn record(&mut self, class: Option<ErrorClass>, retry_after: Option<Duration>, spend: Spend) {
        if let Some(attempts) = &mut self.observed {
            let delay_before = self
                .cold
                .as_ref()
                .map_or(Duration::ZERO, |c| c.delay_before);
            let number = attempts.len() as u32 + 1;
            attempts.push(AttemptReport {
                number,
                delay_before,
                elapsed: self.attempt_started.elapsed(),
                class,
                retry_after,
                spend,
                paced: self.gate.paced(),
            });
        }
    }

    /// The attempts are over: say why. The report is delivered by [`Call::done`] (after any
    /// fallback), or when the call is dropped.
    pub(super) fn finish(&mut self, stop: StopReason, class: Option<ErrorClass>) {
        self.finished = true;
        report::finished(
            self.policy.name(),
            self.attempts,
            &stop,
            class,
            self.started,
        );
        report::metered::call_ended(
            self.labels,
            self.policy.name(),
            stop.as_str(),
            u64::from(self.attempts),
            self.spent.micros(),
            self.spent.tokens(),
            self.started,
        );
        if let Some(reason) = refusal_reason(&stop) {
            report::metered::rejection(self.policy.name(), reason);
        }
        // Read by the report, the fallbacks (after a failure) and their report.
        if self.observed.is_some() || stop != StopReason::Success {
            self.cold().stop = Some(stop);
        }
    }

    // In this file rather than with the other fallbacks, so that a `cached` answer that is
    // not `Clone` is reported against `Call::cache_store`, not a private module's impl block.
    /// Remember a good answer for `fallback = cached`.
    pub fn cache_store<R>(&self, key: u64, result: &R)
    where
        R: Outcome,
        R::Ok: crate::fallback::CachedAnswer,
    {
        self.site.remember(key, result);
    }

    /// `fallback = cached` alone, once the attempts are over: remember a good answer, serve
    /// the kept one if the call ended in an outage, and finish as [`Call::done`] does.
    pub fn done_cached<R>(&mut self, key: u64, result: R) -> R
    where
        R: Outcome,
        R::Ok: crate::fallback::CachedAnswer,
    {
        self.site.remember(key, &result);
        let result = if self.falls_back(&result) {
            self.serve_cached(key).unwrap_or(result)
        } else {
            result
        };
        self.done(result)
    }

    /// The call is over: deliver its report, leave any queue, and hand back what the function
    /// returns.
    pub fn done<R>(&mut self, result: R) -> R {
        self.deliver();
        result
    }

    /// A committed stream was cut (`cut`; the attempt started at `started`, as far as the
    /// regime's latency goes) and a continuation of it would be opened: the breaker hears the
    /// cut and must admit the continuation, the call's next attempt (its report entry written
    /// now, its result at the stream's end). `false` if the breaker refuses it.
    pub(super) fn continue_stream(&mut self, cut: ErrorClass, started: Instant) -> bool {
        if !self
            .gate
            .continue_after_cut(cut, self.attempts == 1, started)
        {
            return false;
        }
        if let Some(last) = self.observed.as_mut().and_then(|a| a.last_mut()) {
            last.class = Some(cut);
        }
        self.attempts += 1;
        self.attempt_started = Instant::now();
        self.cold().delay_before = Duration::ZERO;
        self.record(None, None, Spend::ZERO);
        true
    }

    /// A committed stream ended (`failure`: how it failed; `None` for its end or its drop):
    /// the attempt's result, what it spent, why the call stopped, and its report.
    pub(super) fn end_stream(
        &mut self,
        failure: Option<ErrorClass>,
        spend: Spend,
        attempt_started: Instant,
        stop: StopReason,
        stream: crate::report::StreamReport,
    ) {
        self.spent += spend;
        match failure {
            None => self.site.estimate.observe(spend),
            Some(_) => self.site.estimate.observe_billed(spend),
        }
        self.gate
            .record(failure, spend, None, self.attempts == 1, attempt_started);
        // The committed attempt's entry was written at its first chunk: it ends as its stream.
        if let Some(last) = self.observed.as_mut().and_then(|a| a.last_mut()) {
            last.class = failure;
            last.spend = spend;
        }
        self.cold().stream = Some(stream);
        self.finish(stop, failure);
        self.deliver();
    }

    /// A streamed call's first chunk came (`committed` was just set): the time to it, for its
    /// histogram, from the instants the report takes it from.
    pub(super) fn first_chunk_came(&self) {
        if let Some(at) = self.committed() {
            report::metered::first_chunk(self.labels, at.saturating_duration_since(self.started));
        }
    }

    /// Leave the breaker's queue, if the call is in it.
    pub(super) fn leave_queue(&mut self) {
        if self.cold.as_mut().and_then(|c| c.place.take()).is_some() {
            if let Some(breaker) = self.gate.breaker {
                breaker.publish_queue();
            }
        }
    }

    fn deliver(&mut self) {
        if let Some(cold) = &mut self.cold {
            cold.line_guard = None;
        }
        self.leave_queue();
        if let Some(attempts) = self.observed.take() {
            let (fallback, stream) = match &mut self.cold {
                Some(cold) => (cold.fallback.take(), cold.stream),
                None => (None, None),
            };
            report::deliver(
                self.seat,
                CallReport {
                    function: self.policy.name(),
                    attempts,
                    stop: self.cold.as_ref().and_then(|c| c.stop.clone()),
                    elapsed: self.started.elapsed(),
                    breaker: self.gate.breaker.map(|b| b.name()),
                    transitions: std::mem::take(&mut self.gate.transitions),
                    spent: self.spent,
                    fallback,
                    paced_refused: self.gate.paced_refused,
                    regime: self.gate.regime(),
                    stream,
                },
            );
        }
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        // What the attempt in flight holds (a probe slot, reservations) the gate gives back
        // when it is dropped, right after this.
        if !self.finished {
            // Dropped mid-call: the caller gave up on us. Say so rather than vanish.
            self.finish(StopReason::Cancelled, None);
        }
        self.deliver();
    }
}

/// The `rejections_total` reason of a stop, if the runtime refused something.
fn refusal_reason(stop: &StopReason) -> Option<&'static str> {
    match stop {
        StopReason::CircuitOpen { .. }
        | StopReason::BreakerOpened
        | StopReason::RetryBudgetExhausted
        | StopReason::Shed { .. }
        | StopReason::PacerLineFull { .. }
        | StopReason::BudgetExhausted { .. }
        | StopReason::PoolUnconfigured { .. }
        | StopReason::QueueFull
        | StopReason::QueueTimeout { .. } => Some(stop.as_str()),
        _ => None,
    }
}
