//! The executor: the one place where backoff, classification, hints and limits meet.
//!
//! `#[resilient]` rewrites a function body into a loop that drives a [`Call`]:
//!
//! ```text
//! let mut call = { static POLICY: Policy = …; static SITE: CallSite = …; Call::start(&SITE) };
//! loop {
//!     let outcome = call.attempt(async { <the original body> }).await;
//!     match call.settle(outcome, spend_of) {
//!         Settled::Return(result) => return result,
//!         Settled::Retry(error) => {
//!             if let Step::Return(result) = call.wait(error).await { return result; }
//!         }
//!     }
//! }
//! ```
//!
//! Each attempt is the original body, re-run; the loop lives in the user's own function so
//! that borrowed arguments (`&mut self` among them) are simply re-borrowed per attempt. Why a
//! call stops is decided by [`decide`], a pure function of the policy, the attempt's outcome
//! and the clock; `settle` does the waiting and the reporting around it.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::backoff::Jitter;
use crate::breaker::{Admission, Breaker, BreakerSlot, BreakerState, Transition};
use crate::budget::{
    current_workflow, Budget, BudgetScope, Held, Ledgers, PoolSlot, SpendEstimate,
};
use crate::classify::{Classify, ErrorClass};
use crate::clock::now_ms;
use crate::fallback::{FallbackCache, FallbackKind, FallbackReport, Place};
use crate::pace::{Pacer, PacerSlot, Permit};
use crate::policy::Policy;
use crate::rejected::{CanReject, Rejected};
use crate::report::{self, AttemptReport, CallReport, StopReason};
use crate::spend::Spend;

/// What a `#[resilient]` function returns: a `Result`. A trait, so that the one place a
/// non-`Result` return type is reported is the return type itself.
#[diagnostic::on_unimplemented(
    message = "a #[resilient] fn must return `Result<T, E>`, not `{Self}`",
    label = "the error is what decides whether to retry: return `Result<T, E>` with `E: Classify`"
)]
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

/// What [`Call::settle`] decided.
#[derive(Debug)]
pub enum Settled<R: Outcome> {
    /// Return this from the function.
    Return(R),
    /// Wait ([`Call::wait`]) and make another attempt; the error is kept in case the wait
    /// ends in a refusal, when it is what the caller gets.
    Retry(R::Err),
}

/// What the generated loop does after a wait.
#[derive(Debug)]
pub enum Step<R> {
    /// Make another attempt.
    Retry,
    /// Return this from the function.
    Return(R),
}

/// What [`decide`] chose after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Wait this long, then make another attempt.
    Retry {
        /// The wait.
        delay: Duration,
    },
    /// End the call with the attempt's error.
    Stop(StopReason),
}

/// What the executor knows about a failed attempt when deciding what comes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// The failure's class.
    pub class: ErrorClass,
    /// The server's `x-should-retry` verdict.
    pub should_retry: Option<bool>,
    /// The server's requested wait.
    pub retry_after: Option<Duration>,
    /// Whether the call's deadline cut the attempt.
    pub cut_by_deadline: bool,
}

/// Decide, after attempt number `attempts` (1-based) failed, whether and when to retry.
///
/// `backoff` is the formula's delay for this retry; `elapsed` the time since the call began.
/// Pure: no clock, no randomness, so the rules are unit-tested one by one.
pub fn decide(
    policy: &Policy,
    attempts: u32,
    failure: Failure,
    backoff: Duration,
    elapsed: Duration,
) -> Decision {
    if failure.cut_by_deadline {
        return Decision::Stop(StopReason::DeadlineExceeded);
    }
    let retryable = match (failure.class, failure.should_retry) {
        (ErrorClass::Permanent, _) => false,
        (_, Some(false)) => return Decision::Stop(StopReason::ServerSaidNoRetry),
        (_, Some(true)) => true,
        (class, None) => policy.retry_on().retries(class),
    };
    if !retryable {
        return Decision::Stop(StopReason::NotRetryable);
    }
    if attempts >= policy.max_attempts() {
        return Decision::Stop(StopReason::AttemptsExhausted);
    }
    let mut delay = backoff;
    if let Some(requested) = failure.retry_after {
        if requested > policy.max_retry_after() {
            return Decision::Stop(StopReason::RetryAfterTooLong {
                requested,
                max: policy.max_retry_after(),
            });
        }
        // The server's wait is a floor: never retry sooner than it asked.
        delay = delay.max(requested);
    }
    if let Some(deadline) = policy.deadline() {
        // An attempt that would start at (or past) the deadline could not finish in time.
        if elapsed.saturating_add(delay) >= deadline {
            return Decision::Stop(StopReason::DeadlineExceeded);
        }
    }
    Decision::Retry { delay }
}

/// Why the executor cut the attempt in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    Timeout,
    Deadline,
}

/// A call site: its policy and the shared state it resolves once (breaker, pool) or learns
/// (the expected cost of an attempt). The macro emits one as a `static` per function.
#[derive(Debug)]
pub struct CallSite<'p> {
    policy: &'p Policy,
    breaker: BreakerSlot,
    pool: PoolSlot,
    estimate: SpendEstimate,
    cache: FallbackCache,
    pace: PacerSlot,
    labels: report::metered::SiteLabels,
}

impl<'p> CallSite<'p> {
    /// A call site for `policy`.
    pub const fn new(policy: &'p Policy) -> Self {
        Self {
            policy,
            breaker: BreakerSlot::new(policy.breaker()),
            pool: PoolSlot::new(policy.pool()),
            estimate: SpendEstimate::new(),
            cache: FallbackCache::new(),
            pace: PacerSlot::new(policy.pace()),
            labels: report::metered::SiteLabels::new(policy.name()),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &'p Policy {
        self.policy
    }

    /// What one more attempt here is expected to cost (see [`crate::budget`]).
    pub fn expected_spend(&self) -> Spend {
        self.estimate.expected()
    }
}

/// Why the runtime refused to start an attempt.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    Circuit {
        breaker: &'static str,
        retry_in: Duration,
    },
    Budget {
        scope: BudgetScope,
        spent: Spend,
        limit: Budget,
    },
    /// The pacer could not grant a permit before the call's deadline.
    Deadline { deadline: Duration },
    /// The retry budget has no room for this retry (asked at the retry's admission when the
    /// store is shared).
    RetryBudget { breaker: &'static str },
}

impl Refusal {
    fn rejected(self) -> Rejected {
        match self {
            Refusal::Deadline { deadline } => Rejected::DeadlineExceeded { deadline },
            Refusal::Circuit { breaker, retry_in } => Rejected::CircuitOpen { breaker, retry_in },
            // Only retries withdraw, and a refused retry ends the call with the last attempt's
            // error; this is what a first attempt would get if it ever came here.
            Refusal::RetryBudget { breaker } => Rejected::CircuitOpen {
                breaker,
                retry_in: Duration::ZERO,
            },
            Refusal::Budget {
                scope,
                spent,
                limit,
            } => Rejected::BudgetExhausted {
                scope,
                spent,
                limit,
            },
        }
    }

    /// Why the call stops: before its first attempt, or between retries.
    fn stop(self, first: bool) -> StopReason {
        match self {
            Refusal::Deadline { .. } => StopReason::DeadlineExceeded,
            Refusal::RetryBudget { .. } => StopReason::RetryBudgetExhausted,
            Refusal::Circuit { retry_in, .. } if first => StopReason::CircuitOpen { retry_in },
            Refusal::Circuit { .. } => StopReason::BreakerOpened,
            Refusal::Budget {
                scope,
                spent,
                limit,
            } => StopReason::BudgetExhausted {
                scope,
                spent,
                limit,
            },
        }
    }
}

/// One call in progress: the state the generated loop drives.
///
/// Not part of the stable API: use `#[resilient]`, or [`retry`] to drive a policy by hand.
#[derive(Debug)]
pub struct Call<'p> {
    site: &'p CallSite<'p>,
    // The site's compile-time metric labels, when the site is a `static` (the macro's).
    labels: Option<&'static report::metered::SiteLabels>,
    policy: &'p Policy,
    breaker: Option<&'static Breaker>,
    pacer: Option<&'static Pacer>,
    // The pacer's permit for the attempt in flight, and how long the attempt waited for it.
    permit: Option<Permit<'static>>,
    paced: Duration,
    ledgers: Ledgers,
    // The breaker's admission and the ledger reservations of the attempt in flight, until
    // its result is recorded (or given back, if the call is dropped).
    admission: Option<Admission>,
    held: Option<Held>,
    // A retry the policy allows while the store was shared: the fleet's retry budget is asked
    // with the next admission (locally, if the store is unreachable by then).
    withdraw_pending: bool,
    // Set when the first attempt was refused.
    refused: Option<Refusal>,
    spent: Spend,
    // The class of the failure being retried, for the report if the wait ends the call.
    last_class: Option<ErrorClass>,
    transitions: Vec<Transition>,
    started: Instant,
    attempt_started: Instant,
    attempts: u32,
    delay_before: Duration,
    prev_backoff: Duration,
    jitter: Option<Jitter>,
    cut: Option<Cut>,
    // `Some` only under `observe`, so an unobserved call never allocates for its report.
    observed: Option<Vec<AttemptReport>>,
    finished: bool,
    stop: Option<StopReason>,
    fallback: Option<FallbackReport>,
    // `fallback = queue`: when the call joined the line, its place, and (at the head) the
    // line itself.
    parked_at: Option<Instant>,
    place: Option<Place<'static>>,
    line_guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl<'p> Call<'p> {
    /// Start a call at a `static` call site (what the macro emits): the clock for `deadline`
    /// starts now, and metrics use the site's compile-time labels.
    pub fn start_static(site: &'static CallSite<'static>) -> Call<'static> {
        let mut call = Call::start(site);
        call.labels = Some(&site.labels);
        call
    }

    /// Start a call: the clock for `deadline` starts now.
    pub fn start(site: &'p CallSite<'p>) -> Self {
        let now = Instant::now();
        let policy = site.policy;
        Self {
            site,
            labels: None,
            policy,
            breaker: site.breaker.get(),
            pacer: site.pace.get(),
            permit: None,
            paced: Duration::ZERO,
            ledgers: Ledgers {
                pool: site.pool.get(),
                workflow: current_workflow(),
            },
            admission: None,
            held: None,
            withdraw_pending: false,
            refused: None,
            spent: Spend::ZERO,
            last_class: None,
            transitions: Vec::new(),
            started: now,
            attempt_started: now,
            attempts: 0,
            delay_before: Duration::ZERO,
            prev_backoff: policy.base(),
            jitter: None,
            cut: None,
            observed: report::claim_observer().then(Vec::new),
            finished: false,
            stop: None,
            fallback: None,
            parked_at: None,
            place: None,
            line_guard: None,
        }
    }

    /// Run one attempt with no limit of the executor's own: for policies that can neither
    /// refuse nor cut an attempt, so the error type needs no `From<Rejected>`.
    ///
    /// Inside a [`workflow`](crate::workflow) whose cap is already reached, such a call cannot
    /// be refused (there is no error to refuse it with): it runs, is counted, and a WARN
    /// event says the cap was overrun. Its retries are still stopped by the cap.
    pub async fn attempt<R, Fut>(&mut self, attempt: Fut) -> R
    where
        Fut: Future<Output = R>,
    {
        if self.attempts == 0 && !self.ledgers.is_empty() {
            if let Err(refusal) = self.admit_local() {
                tracing::warn!(
                    target: "retry_runtime",
                    function = self.policy.name(),
                    reason = ?refusal,
                    "a call that cannot be refused (its policy has no timeout, deadline, breaker or pool) started past its workflow budget"
                );
            }
        }
        self.begin_attempt();
        attempt.await
    }

    /// Run one attempt through the breaker and the spend ledgers (the first attempt is
    /// admitted here, retries in `settle`), bounded by the per-attempt `timeout` and what is
    /// left of the `deadline`. A refused call becomes `E::from(Rejected::…)` without polling
    /// `attempt`; an attempt cut short becomes `E::from(Rejected::…)`, classified as a timeout.
    // `E: CanReject` on a plain type parameter (not `R::Err`) makes rustc report the
    // trait's own message ("must implement From<Rejected>") rather than the bare `From` bound.
    pub async fn attempt_guarded<T, E, Fut>(&mut self, attempt: Fut) -> Result<T, E>
    where
        Fut: Future<Output = Result<T, E>>,
        E: CanReject,
    {
        if self.attempts == 0 {
            let admitted = match self.pace().await {
                Ok(()) => self.admit().await,
                Err(refusal) => Err(refusal),
            };
            if let Err(refusal) = admitted {
                self.refused = Some(refusal);
                return Err(E::from(refusal.rejected()));
            }
        }
        self.begin_attempt();
        let now = self.attempt_started;
        let by_timeout = self.policy.timeout().map(|t| (now + t, Cut::Timeout));
        let by_deadline = self
            .policy
            .deadline()
            .map(|d| (self.started + d, Cut::Deadline));
        let limit = match (by_timeout, by_deadline) {
            (Some(t), Some(d)) => Some(if d.0 <= t.0 { d } else { t }),
            (one, other) => one.or(other),
        };
        let Some((at, cut)) = limit else {
            return attempt.await;
        };
        match tokio::time::timeout_at(at, attempt).await {
            Ok(outcome) => outcome,
            Err(_) => {
                self.cut = Some(cut);
                let rejected = match cut {
                    Cut::Timeout => Rejected::AttemptTimedOut {
                        timeout: self.policy.timeout().unwrap_or_default(),
                    },
                    Cut::Deadline => Rejected::DeadlineExceeded {
                        deadline: self.policy.deadline().unwrap_or_default(),
                    },
                };
                Err(E::from(rejected))
            }
        }
    }

    /// Wait for the pacer's permit (first in, first out), unless it would leave the attempt
    /// less than `min(timeout, deadline / 2)` before the call's deadline. Before the breaker
    /// and the ledgers, so that a half-open probe slot or a reservation is not held while
    /// waiting.
    async fn pace(&mut self) -> Result<(), Refusal> {
        self.paced = Duration::ZERO;
        let Some(pacer) = self.pacer else {
            return Ok(());
        };
        let deadline = self.latest_permit();
        let tokens = self.site.estimate.expected().tokens();
        match pacer.acquire(tokens, deadline).await {
            Ok(permit) => {
                self.paced = permit.waited();
                self.permit = Some(permit);
                Ok(())
            }
            Err(_) => Err(Refusal::Deadline {
                deadline: self.policy.deadline().unwrap_or_default(),
            }),
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

    /// Tell the pacer how the attempt went: a 429 cuts its rate, any other answer from the
    /// provider lets it climb, a timeout or a transport error says nothing about its rate.
    fn pace_feedback(&mut self, failure: Option<ErrorClass>, spend: Spend) {
        let Some(mut permit) = self.permit.take() else {
            return;
        };
        let now = Instant::now();
        match failure {
            None => {
                if spend.tokens() > 0 {
                    permit.settle(spend.tokens());
                }
                permit.on_success(now);
            }
            Some(ErrorClass::Status(429)) => permit.on_rate_limited(now),
            Some(ErrorClass::Timeout | ErrorClass::Transport) => {}
            Some(_) => permit.on_success(now),
        }
    }

    /// Ask the shared state for the next attempt: through the shared store when one is
    /// configured and answering, else (or if it fails now) from this process's own state.
    async fn admit(&mut self) -> Result<(), Refusal> {
        if self.ledgers.pool.is_none() && self.breaker.is_none() && self.pacer.is_none() {
            // Nothing the fleet could share (a workflow is this task's own): no store, and
            // no configuration read.
            return self.admit_local();
        }
        // Without a store this is one load of an initialised `OnceLock`.
        if let Some(shared) = crate::store::shared_now() {
            if let Some(admitted) = self.admit_shared(shared).await {
                return admitted;
            }
        }
        self.admit_local()
    }

    /// Ask this process's state for the next attempt: reserve its expected cost in the pool
    /// and workflow ledgers, then pass the breaker (and, for a retry the store could not be
    /// asked about, the retry budget). All or nothing.
    fn admit_local(&mut self) -> Result<(), Refusal> {
        if self.ledgers.is_empty() && self.breaker.is_none() {
            return Ok(()); // nothing to ask: no clock read
        }
        let now = now_ms();
        if let (Some(breaker), true) = (self.breaker, self.withdraw_pending) {
            self.withdraw_pending = false;
            if !breaker.retry_budget().try_withdraw(now) {
                return Err(Refusal::RetryBudget {
                    breaker: breaker.name(),
                });
            }
        }
        if !self.ledgers.is_empty() {
            match self.ledgers.reserve(self.site.estimate.expected(), now) {
                Ok(held) => self.held = Some(held),
                Err((scope, spent, limit)) => {
                    return Err(Refusal::Budget {
                        scope,
                        spent,
                        limit,
                    })
                }
            }
        }
        if let Some(breaker) = self.breaker {
            let (admission, transition) = breaker.admit(now);
            self.note(transition);
            if let Admission::Rejected { retry_in } = admission {
                if let Some(held) = self.held.take() {
                    self.ledgers.release(held);
                }
                return Err(Refusal::Circuit {
                    breaker: breaker.name(),
                    retry_in,
                });
            }
            self.admission = Some(admission);
            if self.attempts == 0 {
                breaker.retry_budget().deposit(now);
            }
        }
        Ok(())
    }

    /// The admission through the shared store, in one round trip (see [`crate::store`]):
    /// the breaker's shared state, the retry budget, the pacer's fleet-wide slot and the
    /// pool's reservation. `None` if the store failed: the caller decides locally.
    async fn admit_shared(
        &mut self,
        shared: &'static crate::store::Shared,
    ) -> Option<Result<(), Refusal>> {
        use crate::store::{Admit, BreakerAsk, RetryRule, Verdict};
        let now = now_ms();
        let first = self.attempts == 0;
        // This process's breaker first: open here, it rejects without a round trip. The
        // admission is kept in `self`, so a call dropped while the store answers gives it
        // back.
        if let Some(breaker) = self.breaker {
            let (mut admission, transition) = breaker.admit(now);
            self.note(transition);
            if let Admission::Rejected { .. } = admission {
                // Open here; but the fleet's state wins, and another process's probe may have
                // closed it since: look (breaker only, nothing taken), adopt, ask again.
                let look = Admit {
                    breaker: Some(BreakerAsk {
                        name: breaker.name(),
                        deposit: false,
                        withdraw: None,
                    }),
                    ..Admit::default()
                };
                let seen = shared.admit(look).await?;
                if let Some(state) = seen.breaker {
                    let transition = breaker.adopt(state, now_ms());
                    self.note(transition);
                }
                let (again, transition) = breaker.admit(now_ms());
                self.note(transition);
                if let Admission::Rejected { retry_in } = again {
                    self.withdraw_pending = false;
                    return Some(Err(Refusal::Circuit {
                        breaker: breaker.name(),
                        retry_in,
                    }));
                }
                admission = again;
            }
            self.admission = Some(admission);
        }
        let expected = self.site.estimate.expected();
        // The fleet's pacing slot, no later than the local pacer's permit may be.
        let max_wait = self.latest_permit().map_or(Duration::MAX, |at| {
            at.saturating_duration_since(Instant::now())
        });
        let ask = Admit {
            breaker: self.breaker.map(|b| BreakerAsk {
                name: b.name(),
                deposit: first,
                withdraw: self.withdraw_pending.then(|| RetryRule {
                    ratio_ppm: b.config().retry_ratio_ppm,
                    floor_per_window: u64::from(b.config().min_retries_per_sec)
                        * crate::retry_budget::WINDOW_SECS,
                }),
            }),
            pool: self.ledgers.pool.and_then(|p| p.shared_ask(expected)),
            pace: self.pacer.and_then(|p| p.shared_ask(max_wait)),
        };
        if ask.breaker.is_none() && ask.pool.is_none() && ask.pace.is_none() {
            return None; // nothing the fleet shares here (e.g. an adaptive pacer alone)
        }
        let pool_asked = ask.pool.clone();
        let Some(answer) = shared.admit(ask).await else {
            // The store failed (the process is now on local state): decide locally, after
            // giving back what this process's breaker admitted.
            if let (Some(breaker), Some(admission)) = (self.breaker, self.admission.take()) {
                breaker.cancel(admission);
            }
            return None;
        };
        self.withdraw_pending = false;
        let now = now_ms();
        if let (Some(breaker), Some(state)) = (self.breaker, answer.breaker) {
            let transition = breaker.adopt(state, now);
            self.note(transition);
        }
        if let (Some(pool), Some((_, committed))) = (self.ledgers.pool, answer.pool) {
            pool.ledger().mirror(committed, now);
        }
        let refusal = match answer.verdict {
            Verdict::Admitted => None,
            Verdict::BreakerOpen => Some(Refusal::Circuit {
                breaker: self.breaker.map_or("", |b| b.name()),
                retry_in: answer.breaker.and_then(|b| b.open_for).unwrap_or_default(),
            }),
            Verdict::RetryBudget => Some(Refusal::RetryBudget {
                breaker: self.breaker.map_or("", |b| b.name()),
            }),
            Verdict::PoolFull => match (self.ledgers.pool, answer.pool) {
                (Some(pool), Some((_, committed))) => {
                    let (scope, spent, limit) = pool.refused_shared(committed, now);
                    Some(Refusal::Budget {
                        scope,
                        spent,
                        limit,
                    })
                }
                _ => None,
            },
            Verdict::PaceTooLate => Some(Refusal::Deadline {
                deadline: self.policy.deadline().unwrap_or_default(),
            }),
        };
        let give_back = |call: &mut Self| {
            if let (Some(breaker), Some(admission)) = (call.breaker, call.admission.take()) {
                breaker.cancel(admission);
            }
        };
        if let Some(refusal) = refusal {
            give_back(self);
            return Some(Err(refusal));
        }
        if !self.ledgers.is_empty() {
            let reserved = pool_asked
                .zip(answer.pool)
                .map(|(asked, (window, _))| (window, asked.expected));
            match self.ledgers.reserve_after_shared(reserved, expected, now) {
                Ok(held) => self.held = Some(held),
                Err((scope, spent, limit)) => {
                    give_back(self);
                    return Some(Err(Refusal::Budget {
                        scope,
                        spent,
                        limit,
                    }));
                }
            }
        }
        if let (Some(breaker), true) = (self.breaker, first) {
            // Also here, so that local state is warm if the store goes away.
            breaker.retry_budget().deposit(now);
        }
        if !answer.pace_wait.is_zero() {
            // The fleet's pacing slot: wait for it (the store said when).
            tokio::time::sleep(answer.pace_wait).await;
            self.paced += answer.pace_wait;
        }
        Some(Ok(()))
    }

    fn begin_attempt(&mut self) {
        // The first attempt starts when the call did (`start` just read the clock), unless
        // it waited for the pacer: its `timeout` counts from the permit.
        if self.attempts > 0 || !self.paced.is_zero() {
            self.attempt_started = Instant::now();
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
        if let Some(refusal) = self.refused.take() {
            self.finish(refusal.stop(true), None);
            return Settled::Return(outcome);
        }
        let spend = spend_of(&outcome);
        let error = match outcome.into_result() {
            Ok(value) => {
                self.site.estimate.observe(spend);
                self.pace_feedback(None, spend);
                self.charge(spend);
                self.record_breaker(None);
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
        // A cut attempt's bill is unknown to us; the error says what a failure was billed.
        let spend = if self.cut.is_some() {
            Spend::ZERO
        } else {
            error.spend()
        };
        self.pace_feedback(Some(failure.class), spend);
        if let (Some(pacer), Some(limits)) = (self.pacer, error.rate_limits()) {
            // The provider's own numbers beat anything learned from 429s.
            pacer.on_hint(&limits, Instant::now());
        }
        self.charge(spend);
        self.record_breaker(Some(failure.class));
        self.record(Some(failure.class), failure.retry_after, spend);

        let backoff = self.next_backoff();
        let elapsed = self.started.elapsed();
        let decision = match decide(self.policy, self.attempts, failure, backoff, elapsed) {
            Decision::Retry { delay } => self.fleet_allows_retry(delay),
            stop => stop,
        };
        match decision {
            Decision::Retry { delay } => {
                self.prev_backoff = backoff;
                self.delay_before = delay;
                self.last_class = Some(failure.class);
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

    /// Wait the delay `settle` chose, then ask the shared state for the next attempt. The
    /// breaker may have opened, or a pool filled, while we slept: then the call ends with the
    /// last attempt's `error`.
    pub async fn wait<R: Outcome>(&mut self, error: R::Err) -> Step<R> {
        tokio::time::sleep(self.delay_before).await;
        let admitted = match self.pace().await {
            Ok(()) => self.admit().await,
            Err(refusal) => Err(refusal),
        };
        if let Err(refusal) = admitted {
            self.finish(refusal.stop(false), self.last_class);
            return Step::Return(R::from_result(Err(error)));
        }
        Step::Retry
    }

    /// Count an attempt's real cost: in this call, and in the ledgers it reserved in.
    fn charge(&mut self, spend: Spend) {
        self.spent += spend;
        if let Some(held) = self.held.take() {
            self.ledgers.settle(held, spend, now_ms());
        }
    }

    /// What the shared state and the budgets say about a retry the policy allows: an open
    /// breaker stops the call rather than sleeping on; a retry that would not fit a budget is
    /// not started; the retry budget caps a fleet's extra load.
    fn fleet_allows_retry(&mut self, delay: Duration) -> Decision {
        let expected = self.site.estimate.expected();
        if let Some(limit) = self.policy.budget() {
            let spent = self.spent.amount(limit.unit());
            if spent.saturating_add(expected.amount(limit.unit())) > limit.amount() {
                return Decision::Stop(StopReason::BudgetExhausted {
                    scope: BudgetScope::Call,
                    spent: self.spent,
                    limit,
                });
            }
        }
        if let Err((scope, spent, limit)) = self.ledgers.has_room(expected, now_ms()) {
            return Decision::Stop(StopReason::BudgetExhausted {
                scope,
                spent,
                limit,
            });
        }
        let Some(breaker) = self.breaker else {
            return Decision::Retry { delay };
        };
        if breaker.state() == BreakerState::Open {
            return Decision::Stop(StopReason::BreakerOpened);
        }
        if crate::store::shared_now().is_some() {
            // The fleet's budget decides, at the retry's admission (one round trip with the
            // rest of it).
            self.withdraw_pending = true;
            return Decision::Retry { delay };
        }
        if !breaker.retry_budget().try_withdraw(now_ms()) {
            return Decision::Stop(StopReason::RetryBudgetExhausted);
        }
        Decision::Retry { delay }
    }

    fn record_breaker(&mut self, failure: Option<ErrorClass>) {
        if let (Some(breaker), Some(admission)) = (self.breaker, self.admission.take()) {
            if admission == Admission::Normal && breaker.is_quiet(failure) {
                return;
            }
            let transition = breaker.record(admission, failure, now_ms());
            if let (Some(t), Some(shared)) = (transition, crate::store::active()) {
                // Publish this process's transition to the fleet (in the background).
                match t.to {
                    BreakerState::Open => shared.send(crate::store::Update::BreakerOpened {
                        breaker: breaker.name(),
                        cooldown: breaker.config().cooldown,
                        force: t.from == BreakerState::HalfOpen,
                    }),
                    BreakerState::Closed => shared.send(crate::store::Update::BreakerClosed {
                        breaker: breaker.name(),
                    }),
                    BreakerState::HalfOpen => {}
                }
            }
            self.note(transition);
        }
    }

    fn note(&mut self, transition: Option<Transition>) {
        if let Some(t) = transition {
            report::transition(self.policy.name(), t);
            if self.observed.is_some() {
                self.transitions.push(t);
            }
        }
    }

    fn next_backoff(&mut self) -> Duration {
        let policy = self.policy;
        let jitter = self.jitter.get_or_insert_with(Jitter::for_call);
        policy.backoff().delay(
            self.attempts - 1,
            policy.base(),
            policy.cap(),
            self.prev_backoff,
            jitter,
        )
    }

    fn record(&mut self, class: Option<ErrorClass>, retry_after: Option<Duration>, spend: Spend) {
        if let Some(attempts) = &mut self.observed {
            let number = attempts.len() as u32 + 1;
            attempts.push(AttemptReport {
                number,
                delay_before: self.delay_before,
                elapsed: self.attempt_started.elapsed(),
                class,
                retry_after,
                spend,
                paced: self.paced,
            });
        }
    }

    /// The attempts are over: say why. The report is delivered by [`Call::done`] (after any
    /// fallback), or when the call is dropped.
    fn finish(&mut self, stop: StopReason, class: Option<ErrorClass>) {
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
        );
        if let Some(reason) = refusal_reason(&stop) {
            report::metered::rejection(self.policy.name(), reason);
        }
        self.stop = Some(stop);
    }

    /// The call is over: deliver its report, leave any queue, and hand back what the function
    /// returns.
    pub fn done<R>(&mut self, result: R) -> R {
        self.deliver();
        result
    }

    fn deliver(&mut self) {
        self.line_guard = None;
        self.place = None;
        if let Some(attempts) = self.observed.take() {
            report::deliver(CallReport {
                function: self.policy.name(),
                attempts,
                stop: self.stop.clone(),
                elapsed: self.started.elapsed(),
                breaker: self.breaker.map(|b| b.name()),
                transitions: std::mem::take(&mut self.transitions),
                spent: self.spent,
                fallback: self.fallback.take(),
            });
        }
    }

    // ---- fallbacks ----

    /// Whether this result should go to the fallbacks: a failure that ended in an outage.
    pub fn falls_back<R: Outcome>(&self, result: &R) -> bool {
        !result.is_ok() && self.stop.as_ref().is_some_and(StopReason::is_outage)
    }

    /// Remember a good answer for `fallback = cached`.
    pub fn cache_store<R>(&self, key: u64, result: &R)
    where
        R: Outcome,
        R::Ok: Clone + Send + Sync + 'static,
    {
        if let Some(value) = result.ok_ref() {
            self.site.cache.store(key, value);
        }
    }

    /// `fallback = cached`: the last good answer for `key`, if it is no older than the
    /// policy's `stale_for`.
    pub fn serve_cached<R>(&mut self, key: u64) -> Option<R>
    where
        R: Outcome,
        R::Ok: Clone + Send + Sync + 'static,
    {
        let (value, age) = self
            .site
            .cache
            .fetch::<R::Ok>(key, self.policy.stale_for())?;
        self.served(FallbackKind::Cached, Some(age), None);
        Some(R::from_result(Ok(value)))
    }

    /// `fallback = path::to_fn`: run the other function; if it answers, it served the call.
    pub async fn serve_fn<R, F>(&mut self, path: &'static str, call: F) -> R
    where
        R: Outcome,
        F: Future<Output = R>,
    {
        let result = call.await;
        if result.is_ok() {
            self.served(FallbackKind::Function(path), None, None);
        }
        result
    }

    fn served(&mut self, kind: FallbackKind, age: Option<Duration>, waited: Option<Duration>) {
        let because = self.stop.clone().unwrap_or(StopReason::Cancelled);
        let fallback = FallbackReport {
            kind,
            age,
            waited,
            because,
        };
        report::degraded(self.policy.name(), &fallback);
        self.fallback = Some(fallback);
    }

    /// `fallback = queue`: wait in the breaker's line (first in, first out) until the breaker
    /// admits again and the release schedule lets this caller go, then ask for the attempts
    /// to run again (`Step::Retry`). A full line, or a wait past `queue_wait`, ends the call
    /// with `Rejected::QueueFull` / `Rejected::QueueTimeout`.
    pub async fn park<T, E>(&mut self, result: Result<T, E>) -> Step<Result<T, E>>
    where
        E: CanReject,
    {
        let Some(breaker) = self.breaker else {
            return Step::Return(result);
        };
        let queue = breaker.queue();
        let parked_at = *self.parked_at.get_or_insert_with(Instant::now);
        let give_up = parked_at + self.policy.queue_wait();
        let timed_out = |call: &mut Self| {
            let waited = parked_at.elapsed();
            call.line_guard = None;
            call.place = None;
            call.finish(StopReason::QueueTimeout { waited }, None);
            Step::Return(Err(E::from(Rejected::QueueTimeout {
                breaker: breaker.name(),
                waited,
            })))
        };
        if self.line_guard.is_none() {
            let Some(place) = queue.join() else {
                self.finish(StopReason::QueueFull, None);
                return Step::Return(Err(E::from(Rejected::QueueFull {
                    breaker: breaker.name(),
                })));
            };
            self.place = Some(place);
            match tokio::time::timeout_at(give_up, queue.line().lock_owned()).await {
                Ok(guard) => self.line_guard = Some(guard),
                Err(_) => return timed_out(self),
            }
        }
        // At the head of the line: wait for the breaker (this caller may be its probe).
        loop {
            let wait = breaker.wait_hint(now_ms());
            if wait.is_zero() {
                break;
            }
            if Instant::now() + wait > give_up {
                tokio::time::sleep_until(give_up).await;
                return timed_out(self);
            }
            tokio::time::sleep(wait).await;
        }
        queue.await_release_slot().await;
        self.place = None;
        if breaker.state() == BreakerState::Closed {
            // No probe needed: let the next caller in line go (after its own release slot).
            self.line_guard = None;
        }
        let waited = parked_at.elapsed();
        self.rerun(waited);
        self.served(FallbackKind::Queue, None, Some(waited));
        Step::Retry
    }

    /// A new round of attempts under the same policy, after waiting in the queue.
    fn rerun(&mut self, waited: Duration) {
        self.attempts = 0;
        self.refused = None;
        self.cut = None;
        self.stop = None;
        self.finished = false;
        self.delay_before = waited;
        self.prev_backoff = self.policy.base();
        self.attempt_started = Instant::now();
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        if let (Some(breaker), Some(admission)) = (self.breaker, self.admission.take()) {
            // A probe dropped mid-attempt gives its slot back, or the breaker would stay
            // half-open with no probe to decide it.
            breaker.cancel(admission);
        }
        if let Some(held) = self.held.take() {
            // A dropped attempt's bill is unknown: give back what it reserved.
            self.ledgers.release(held);
        }
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
        | StopReason::BudgetExhausted { .. }
        | StopReason::QueueFull
        | StopReason::QueueTimeout { .. } => Some(stop.as_str()),
        _ => None,
    }
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
        let outcome = call.attempt_guarded(op()).await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{CodeRange, RetryOn};

    const S: Duration = Duration::from_secs(1);

    fn failure(class: ErrorClass) -> Failure {
        Failure {
            class,
            should_retry: None,
            retry_after: None,
            cut_by_deadline: false,
        }
    }

    #[test]
    fn caller_faults_and_permanent_are_not_retried() {
        let p = Policy::new("t");
        for class in [
            ErrorClass::Status(400),
            ErrorClass::Status(401),
            ErrorClass::Permanent,
            ErrorClass::Other,
        ] {
            assert_eq!(
                decide(&p, 1, failure(class), S, S),
                Decision::Stop(StopReason::NotRetryable),
                "{class:?}"
            );
        }
    }

    #[test]
    fn default_set_retries_rate_limits_and_outages() {
        let p = Policy::new("t");
        for class in [
            ErrorClass::Status(408),
            ErrorClass::Status(409),
            ErrorClass::Status(429),
            ErrorClass::Status(503),
            ErrorClass::Timeout,
            ErrorClass::Transport,
        ] {
            assert_eq!(
                decide(&p, 1, failure(class), S, S),
                Decision::Retry { delay: S }
            );
        }
    }

    #[test]
    fn max_attempts_stops() {
        let p = Policy::new("t").with_max_attempts(2);
        let f = failure(ErrorClass::Status(503));
        assert!(matches!(decide(&p, 1, f, S, S), Decision::Retry { .. }));
        assert_eq!(
            decide(&p, 2, f, S, S),
            Decision::Stop(StopReason::AttemptsExhausted)
        );
    }

    #[test]
    fn should_retry_overrides_the_list_but_not_permanent() {
        static ONLY_429: RetryOn = RetryOn::new(&[CodeRange::single(429)], false, false);
        let p = Policy::new("t").with_retry_on(ONLY_429);
        let mut f = failure(ErrorClass::Status(503));
        f.should_retry = Some(true);
        assert_eq!(decide(&p, 1, f, S, S), Decision::Retry { delay: S });
        f.class = ErrorClass::Status(429);
        f.should_retry = Some(false);
        assert_eq!(
            decide(&p, 1, f, S, S),
            Decision::Stop(StopReason::ServerSaidNoRetry)
        );
        f.class = ErrorClass::Permanent;
        f.should_retry = Some(true);
        assert_eq!(
            decide(&p, 1, f, S, S),
            Decision::Stop(StopReason::NotRetryable)
        );
    }

    #[test]
    fn retry_after_is_a_floor_bounded_by_max_retry_after() {
        let p = Policy::new("t").with_max_retry_after(10 * S);
        let mut f = failure(ErrorClass::Status(429));
        f.retry_after = Some(7 * S);
        assert_eq!(decide(&p, 1, f, S, S), Decision::Retry { delay: 7 * S });
        assert_eq!(decide(&p, 1, f, 9 * S, S), Decision::Retry { delay: 9 * S });
        f.retry_after = Some(11 * S);
        assert_eq!(
            decide(&p, 1, f, S, S),
            Decision::Stop(StopReason::RetryAfterTooLong {
                requested: 11 * S,
                max: 10 * S
            })
        );
    }

    #[test]
    fn no_wait_starts_that_would_end_past_the_deadline() {
        let p = Policy::new("t").with_deadline(10 * S);
        let f = failure(ErrorClass::Status(503));
        assert_eq!(
            decide(&p, 1, f, 2 * S, 7 * S),
            Decision::Retry { delay: 2 * S }
        );
        assert_eq!(
            decide(&p, 1, f, 3 * S, 7 * S),
            Decision::Stop(StopReason::DeadlineExceeded)
        );
        let mut cut = f;
        cut.cut_by_deadline = true;
        assert_eq!(
            decide(&p, 1, cut, S, S),
            Decision::Stop(StopReason::DeadlineExceeded)
        );
    }
}
