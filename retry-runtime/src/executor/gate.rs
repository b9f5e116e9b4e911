//! The gate: the one component that decides whether an attempt may start, and the only one
//! in the executor that talks to the shared store.
//!
//! An admission runs in three steps, in this order, so that a refused call never waits:
//! 1. **What needs no waiting** ([`Gate::check`]): the breaker's state (a look that takes no
//!    probe slot), the call's own budget (retries), the pool's and workflows' room, and the
//!    retry budget (retries; asked here, or with the store's admission when one is shared).
//! 2. **The pacer's permit**: the only wait, first in, first out; refused at once if it would
//!    come too late for the call's deadline.
//! 3. **What an attempt takes**: the breaker's admission (a probe slot while half-open) and
//!    the ledger reservations, from this process's atomics or in one round trip to the
//!    shared store (which also answers the fleet's breaker, retry budget and pacing slot,
//!    and while the fleet's breaker is half-open leases one of its probe slots).
//!
//! The gate keeps what the attempt in flight holds (permit, admission, probe lease,
//! reservations) until the attempt's result is recorded, and gives it back if the call is
//! dropped.

use std::time::Duration;

use tokio::time::Instant;

use crate::breaker::{Admission, Breaker, BreakerState, Transition};
use crate::budget::{Held, Ledgers, Pool, SpendEstimate};
use crate::classify::ErrorClass;
use crate::clock::now_ms;
use crate::pace::ProviderLimits;
use crate::pace::{PaceError, Pacer, Permit};
use crate::regime::Regime;
use crate::rejected::Rejected;
use crate::report::{self, StopReason};
use crate::spend::{Budget, BudgetScope, Exhausted, Spend};
use crate::store::{Admit, BreakerAsk, ProbeLease, RetryRule, Shared, Verdict};

/// Why the gate refused to start an attempt.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Refusal {
    Circuit {
        breaker: &'static str,
        retry_in: Duration,
    },
    Budget(Exhausted),
    /// The pacer could not grant a permit before the call's deadline.
    Deadline {
        deadline: Duration,
    },
    /// The call's pool has no configured limit where it should have one.
    Unconfigured {
        pool: &'static str,
    },
    /// The breaker sheds load: its admission rate would admit this attempt too late.
    Shed {
        breaker: &'static str,
        regime: Regime,
    },
    /// The pacer's line is longer than its `max_wait`.
    PacerLine {
        pacer: &'static str,
        max_wait: Duration,
    },
}

/// Why the gate refused a retry: any refusal, or the retry budget (which only retries ask).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Denied {
    Refused(Refusal),
    RetryBudget,
    /// The retry budget, with its allowance cut because the breaker believes the provider is
    /// overloaded or down.
    Shed(Regime),
}

impl From<Refusal> for Denied {
    fn from(refusal: Refusal) -> Self {
        Denied::Refused(refusal)
    }
}

impl Denied {
    /// Why the call stops between retries.
    pub(crate) fn stop(self) -> StopReason {
        match self {
            Denied::Refused(refusal) => refusal.stop(false),
            Denied::RetryBudget => StopReason::RetryBudgetExhausted,
            Denied::Shed(regime) => StopReason::Shed { regime },
        }
    }
}

impl Refusal {
    /// What a refused first attempt returns.
    pub(crate) fn rejected(self) -> Rejected {
        match self {
            Refusal::Deadline { deadline } => Rejected::DeadlineExceeded { deadline },
            Refusal::Unconfigured { pool } => Rejected::PoolUnconfigured { pool },
            Refusal::PacerLine { pacer, max_wait } => Rejected::PacerLineFull { pacer, max_wait },
            Refusal::Shed { breaker, .. } => Rejected::Shed { breaker },
            Refusal::Circuit { breaker, retry_in } => Rejected::CircuitOpen { breaker, retry_in },
            Refusal::Budget(Exhausted {
                scope,
                spent,
                limit,
            }) => Rejected::BudgetExhausted {
                scope,
                spent,
                limit,
            },
        }
    }

    /// Why the call stops: before its first attempt, or between retries.
    pub(crate) fn stop(self, first: bool) -> StopReason {
        match self {
            Refusal::Deadline { .. } => StopReason::DeadlineExceeded,
            Refusal::Unconfigured { pool } => StopReason::PoolUnconfigured { pool },
            Refusal::PacerLine { max_wait, .. } => StopReason::PacerLineFull { max_wait },
            Refusal::Shed { regime, .. } => StopReason::Shed { regime },
            Refusal::Circuit { retry_in, .. } if first => StopReason::CircuitOpen { retry_in },
            Refusal::Circuit { .. } => StopReason::BreakerOpened,
            Refusal::Budget(Exhausted {
                scope,
                spent,
                limit,
            }) => StopReason::BudgetExhausted {
                scope,
                spent,
                limit,
            },
        }
    }
}

/// What the call tells the gate about the attempt it asks for.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ask {
    /// The call's first attempt (a retry otherwise).
    pub first: bool,
    /// What the attempt is expected to cost (the call budget's and the pacer's estimate).
    pub expected: Spend,
    /// What pools and workflows reserve for it, at least: the costliest attempt of this call,
    /// the policy's `max_cost` (the site's costliest attempt is added by the gate, fresh).
    pub reserve: Spend,
    /// Nothing says yet what an attempt here costs: attempts that reserve take turns.
    pub unknown: bool,
    /// The call's own budget and what the call has spent so far (asked for retries).
    pub budget: Option<(Budget, Spend)>,
    /// The latest a pacing permit is worth having (`None`: no deadline).
    pub latest_permit: Option<Instant>,
    /// The call's deadline, for the refusal that says it would be missed.
    pub deadline: Duration,
}

/// The gate of one call: see the module documentation.
#[derive(Debug)]
pub(super) struct Gate<'p> {
    function: &'static str,
    estimate: &'p SpendEstimate,
    // This call's turn at a site whose cost is unknown, until its attempt's result is in.
    turn: Option<tokio::sync::SemaphorePermit<'p>>,
    pub(super) breaker: Option<&'static Breaker>,
    pacer: Option<&'static Pacer>,
    ledgers: Ledgers,
    // What the attempt in flight holds until its result is recorded.
    permit: Option<Permit<'static>>,
    paced: Duration,
    admission: Option<Admission>,
    // A fleet-wide probe slot in the store (boxed: rare, and the gate stays small).
    lease: Option<Box<ProbeLease>>,
    held: Option<Held>,
    // The retry being admitted withdraws from the fleet's retry budget (after its backoff,
    // before the pacer's line) rather than this process's, which `check_retry` asked.
    withdraw_from_fleet: bool,
    // Waits for a permit that ended in a refusal: no attempt holds them, the report still does.
    pub(super) paced_refused: Duration,
    // Only kept under `observe`, so an unobserved call never allocates for them.
    keep_transitions: bool,
    pub(super) transitions: Vec<Transition>,
}

impl<'p> Gate<'p> {
    pub(super) fn new(
        function: &'static str,
        estimate: &'p SpendEstimate,
        breaker: Option<&'static Breaker>,
        pacer: Option<&'static Pacer>,
        ledgers: Ledgers,
        keep_transitions: bool,
    ) -> Self {
        Self {
            function,
            estimate,
            turn: None,
            breaker,
            pacer,
            ledgers,
            permit: None,
            paced: Duration::ZERO,
            admission: None,
            lease: None,
            held: None,
            withdraw_from_fleet: false,
            paced_refused: Duration::ZERO,
            keep_transitions,
            transitions: Vec::new(),
        }
    }

    /// Whether there is nothing to admit: no breaker, pacer, pool or workflow (a policy with
    /// only a `timeout` or `deadline`), so an attempt needs no admission at all.
    pub(super) fn is_empty(&self) -> bool {
        self.breaker.is_none() && self.pacer.is_none() && self.ledgers.is_empty()
    }

    /// The breaker, if it sheds load now (its admission rate is on).
    fn shedding(&self) -> Option<&'static Breaker> {
        self.breaker.filter(|b| b.rate_gate().rate().is_some())
    }

    /// Whether the attempt reserves in a pool or workflow.
    pub(super) fn reserves(&self) -> bool {
        !self.ledgers.is_empty()
    }

    /// How long the attempt being admitted (or in flight) waited for its permits.
    pub(super) fn paced(&self) -> Duration {
        self.paced
    }

    /// Step 1, from this process's state alone: everything that refuses without waiting
    /// (a retry's own budget and the retry budget are asked once, in [`Gate::check_retry`]).
    fn check(&mut self, ask: &Ask) -> Result<(), Refusal> {
        self.check_ledgers(ask)?;
        if let Some(breaker) = self.breaker {
            if let Some(retry_in) = breaker.look() {
                return Err(Refusal::Circuit {
                    breaker: breaker.name(),
                    retry_in,
                });
            }
        }
        Ok(())
    }

    /// The pool's and the workflows' part of [`Gate::check`].
    fn check_ledgers(&self, ask: &Ask) -> Result<(), Refusal> {
        if self.ledgers.is_empty() {
            return Ok(()); // nothing to ask: no clock read
        }
        self.pool_configured()?;
        self.ledgers
            .has_room(self.reserve(ask), now_ms())
            .map_err(Refusal::Budget)
    }

    /// Right after an attempt failed and the policy allows a retry: may it be made at all?
    /// An open breaker ends the call here (even one whose cooldown is over: it opened on this
    /// call's watch), as do a spent budget and a spent retry budget, so none of them is
    /// discovered after the backoff. The retry budget is asked here, in this process, or
    /// (with a shared store) with the fleet after the backoff.
    pub(super) fn check_retry(&mut self, ask: &Ask) -> Result<(), Denied> {
        if let Some((limit, spent)) = ask.budget {
            // The call's own budget: what it spent, and what one more attempt is expected
            // to cost. Asked once per retry, here.
            let after = spent
                .amount(limit.unit())
                .saturating_add(ask.expected.amount(limit.unit()));
            if after > limit.amount() {
                return Err(Denied::Refused(Refusal::Budget(Exhausted {
                    scope: BudgetScope::Call,
                    spent,
                    limit,
                })));
            }
        }
        self.check_ledgers(ask)?;
        let Some(breaker) = self.breaker else {
            return Ok(());
        };
        // Open, not a look: a half-open breaker with every probe out lets the retry wait its
        // backoff (the probes decide meanwhile); it is looked at again after the backoff.
        if breaker.state() == BreakerState::Open {
            return Err(Denied::Refused(Refusal::Circuit {
                breaker: breaker.name(),
                retry_in: Duration::ZERO,
            }));
        }
        if crate::store::shared_now().is_some() {
            self.withdraw_from_fleet = true;
            return Ok(());
        }
        self.withdraw_here(breaker)
    }

    /// This process's retry budget.
    fn withdraw_here(&mut self, breaker: &Breaker) -> Result<(), Denied> {
        if !breaker.retry_budget().try_withdraw(now_ms()) {
            return Err(refused_retry(breaker));
        }
        Ok(())
    }

    /// The fleet's retry budget (with the fleet's breaker state), in one round trip before
    /// the pacer's line: a retry the fleet refuses does not wait for a permit first. A store
    /// that does not answer leaves it to this process's budget.
    async fn withdraw_in_fleet(
        &mut self,
        shared: &'static Shared,
        breaker: &'static Breaker,
    ) -> Result<(), Denied> {
        let ask = Admit {
            breaker: Some(BreakerAsk {
                name: breaker.name(),
                deposit: false,
                withdraw: Some(RetryRule {
                    // This process's allowance: its regime's reading of the provider.
                    ratio_ppm: breaker.retry_budget().ratio_ppm(),
                    floor_per_window: u64::from(breaker.config().min_retries_per_sec)
                        * crate::retry_budget::WINDOW_SECS,
                }),
            }),
            ..Admit::default()
        };
        let Some(answer) = shared.admit(ask).await else {
            return self.withdraw_here(breaker);
        };
        if let Some(state) = answer.breaker {
            let transition = breaker.adopt(state, now_ms());
            self.note(transition);
        }
        match answer.verdict {
            Verdict::Admitted => Ok(()),
            Verdict::RetryBudget => Err(refused_retry(breaker)),
            Verdict::BreakerOpen => Err(Denied::Refused(Refusal::Circuit {
                breaker: breaker.name(),
                retry_in: answer.breaker.and_then(|b| b.open_for).unwrap_or_default(),
            })),
            // Not asked about: the store answered another question; decide here.
            Verdict::PoolFull | Verdict::PaceTooLate | Verdict::ProbesOut => {
                self.withdraw_here(breaker)
            }
        }
    }

    /// The whole admission of the first attempt: check, then the pacer's permit, then take.
    pub(super) async fn admit_first(&mut self, ask: &Ask) -> Result<(), Refusal> {
        self.paced = Duration::ZERO;
        let shared = self.shares().then(crate::store::shared_now).flatten();
        if shared.is_none() {
            // No store to ask (the common case): the steps inline. Without a pacer nothing
            // waits between checking and taking, and taking is all or nothing (a refused
            // breaker or ledger takes nothing), so the take alone decides: no await, and no
            // second look at the same atomics on the hot path.
            let mut result = Ok(());
            if self.pacer.is_some() || self.needs_turn(ask) || self.shedding().is_some() {
                result = self.check(ask);
                if result.is_ok() {
                    result = self.pace(ask).await;
                }
            }
            let result = result.and_then(|()| self.take_local(ask));
            self.after_admission(result.is_ok());
            return result;
        }
        let result = match self.check_fleet(shared, ask).await {
            Ok(()) => self.pace_and_take(shared, ask).await,
            Err(refusal) => Err(refusal),
        };
        self.after_admission(result.is_ok());
        result
    }

    /// Take over the admission a first attempt got without a gate (see `alone`).
    pub(super) fn adopt_admission(&mut self, admission: Admission) {
        self.admission = Some(admission);
    }

    /// The admission of a retry, after its backoff: check again (the breaker may have opened,
    /// a pool filled, while it slept), the fleet's retry budget if it is still to be asked,
    /// then the pacer's permit, then take.
    pub(super) async fn admit_retry(&mut self, ask: &Ask) -> Result<(), Denied> {
        self.paced = Duration::ZERO;
        let shared = self.shares().then(crate::store::shared_now).flatten();
        let result = self.admit_retry_steps(shared, ask).await;
        self.after_admission(result.is_ok());
        result
    }

    async fn admit_retry_steps(
        &mut self,
        shared: Option<&'static Shared>,
        ask: &Ask,
    ) -> Result<(), Denied> {
        self.check_fleet(shared, ask).await?;
        if let (Some(breaker), true) = (self.breaker, self.withdraw_from_fleet) {
            match shared {
                Some(shared) => self.withdraw_in_fleet(shared, breaker).await?,
                None => self.withdraw_here(breaker)?,
            }
        }
        Ok(self.pace_and_take(shared, ask).await?)
    }

    /// [`Gate::check`], where what refuses here (an open breaker, a full pool) first looks at
    /// the fleet's state: this process's copy may be out of date.
    async fn check_fleet(
        &mut self,
        shared: Option<&'static Shared>,
        ask: &Ask,
    ) -> Result<(), Refusal> {
        if let Some(shared) = shared {
            let open = self.breaker.filter(|b| b.look().is_some());
            let full = self
                .ledgers
                .pool
                .filter(|p| p.ledger().room_for(self.reserve(ask), now_ms()).is_err());
            if open.is_some() || full.is_some() {
                self.look_at_fleet(shared, open, full).await;
            }
        }
        self.check(ask)
    }

    async fn pace_and_take(
        &mut self,
        shared: Option<&'static Shared>,
        ask: &Ask,
    ) -> Result<(), Refusal> {
        self.pace(ask).await?;
        if let Some(shared) = shared {
            if let Some(admitted) = self.take_shared(shared, ask).await {
                return admitted;
            }
        }
        self.take_local(ask)
    }

    fn after_admission(&mut self, admitted: bool) {
        if !admitted {
            // The wait stays in the report; the permit goes back unused.
            self.paced_refused += self.paced;
            self.paced = Duration::ZERO;
            self.permit = None;
        }
        self.withdraw_from_fleet = false;
    }

    /// A pool whose configuration is missing where it should be refuses (and says why, once a
    /// minute): a limit never fails open in silence.
    fn pool_configured(&self) -> Result<(), Refusal> {
        match self.ledgers.pool {
            Some(pool) if pool.refuses() => Err(Refusal::Unconfigured { pool: pool.name() }),
            _ => Ok(()),
        }
    }

    /// Whether anything here is shared through a store (a workflow is this task's own).
    fn shares(&self) -> bool {
        self.ledgers.pool.is_some() || self.breaker.is_some() || self.pacer.is_some()
    }

    /// Open or full here; but the fleet's state wins, and another process's probe may have
    /// closed the breaker, or its settlement made room, since: look (nothing taken: a
    /// reservation of zero) and adopt. A store that does not answer leaves the local state.
    async fn look_at_fleet(
        &mut self,
        shared: &'static Shared,
        breaker: Option<&'static Breaker>,
        pool: Option<&'static Pool>,
    ) {
        let look = Admit {
            breaker: breaker.map(|b| BreakerAsk {
                name: b.name(),
                deposit: false,
                withdraw: None,
            }),
            pool: pool.and_then(|p| p.shared_ask(Spend::ZERO)),
            pace: None,
            probe: None,
        };
        let Some(seen) = shared.admit(look).await else {
            return;
        };
        let now = now_ms();
        if let (Some(breaker), Some(state)) = (breaker, seen.breaker) {
            let transition = breaker.adopt(state, now);
            self.note(transition);
        }
        if let (Some(pool), Some((_, committed))) = (pool, seen.pool) {
            pool.mirror(committed, now);
        }
    }

    /// Step 2: the pacer's permit (first in, first out), unless it would come after
    /// `latest_permit`.
    async fn pace(&mut self, ask: &Ask) -> Result<(), Refusal> {
        self.paced = Duration::ZERO;
        if let Some(breaker) = self.shedding() {
            // An overloaded provider: no faster than it answers (before the pacer, so a call
            // shed here takes no pacing permit).
            let line = Instant::now() + crate::overload::MAX_WAIT;
            let latest = ask.latest_permit.map_or(line, |at| at.min(line));
            match breaker.rate_gate().admit(Some(latest)).await {
                Ok(waited) => self.paced += waited,
                Err(()) => {
                    return Err(Refusal::Shed {
                        breaker: breaker.name(),
                        regime: breaker.regime(),
                    })
                }
            }
        }
        if let Some(pacer) = self.pacer {
            match pacer
                .acquire(ask.expected.tokens(), ask.latest_permit)
                .await
            {
                Ok(permit) => {
                    self.paced += permit.waited();
                    self.permit = Some(permit);
                }
                Err(PaceError::LineTooLong { max_wait, .. }) => {
                    return Err(Refusal::PacerLine {
                        pacer: pacer.name(),
                        max_wait,
                    })
                }
                Err(PaceError::WouldMissDeadline { .. }) => {
                    return Err(Refusal::Deadline {
                        deadline: ask.deadline,
                    })
                }
            }
        }
        self.take_turn(ask).await;
        Ok(())
    }

    /// What a ledger reserves for the attempt: the call's floor and the site's costliest
    /// attempt so far, read now (it may have been learnt while this call waited its turn).
    fn reserve(&self, ask: &Ask) -> Spend {
        ask.reserve.max_each(self.estimate.costliest())
    }

    /// Whether this attempt must wait for its site's turn: it reserves in a pool or workflow,
    /// and nothing (no attempt seen, no `max_cost`) says what it may cost.
    fn needs_turn(&self, ask: &Ask) -> bool {
        ask.unknown && !self.ledgers.is_empty() && self.turn.is_none()
    }

    /// At a site whose cost is unknown, one attempt that reserves runs at a time (first in,
    /// first out); the others wait here, and go on at once (without holding the turn) as soon
    /// as an attempt has said what it costs. The wait is in the report.
    async fn take_turn(&mut self, ask: &Ask) {
        if !self.needs_turn(ask) || self.estimate.is_known() {
            return;
        }
        let started = Instant::now();
        let turn = self.estimate.turn().await;
        self.paced += started.elapsed();
        if !self.estimate.is_known() {
            self.turn = turn;
        }
    }

    /// Step 3 from this process's state: reserve the expected cost in the pool and workflow
    /// ledgers, then pass the breaker (and withdraw a retry the store was to be asked about,
    /// if it could not be). All or nothing.
    fn take_local(&mut self, ask: &Ask) -> Result<(), Refusal> {
        if self.ledgers.is_empty() && self.breaker.is_none() {
            return Ok(());
        }
        self.pool_configured()?;
        let now = now_ms();
        if !self.ledgers.is_empty() {
            match self.ledgers.reserve(self.reserve(ask), now) {
                Ok(held) => self.held = Some(held),
                Err(exhausted) => return Err(Refusal::Budget(exhausted)),
            }
        }
        if let Some(breaker) = self.breaker {
            match steps::admit(&mut self.notes(), breaker, now, ask.first) {
                Ok(admission) => self.admission = Some(admission),
                Err(retry_in) => {
                    self.give_back_held();
                    return Err(Refusal::Circuit {
                        breaker: breaker.name(),
                        retry_in,
                    });
                }
            }
        }
        Ok(())
    }

    /// Step 3 through the shared store, in one round trip (see [`crate::store`]): the
    /// breaker's shared state, the retry budget, the pacer's fleet-wide slot and the pool's
    /// reservation. `None` if the store failed: the caller takes locally.
    /// (The retry budget was asked before the pacer's line: [`Gate::check_retry`].)
    async fn take_shared(
        &mut self,
        shared: &'static Shared,
        ask: &Ask,
    ) -> Option<Result<(), Refusal>> {
        // This process's breaker first (a probe slot while half-open). The admission is kept
        // in `self`, so a call dropped while the store answers gives it back.
        if let Some(breaker) = self.breaker {
            let (admission, transition) = breaker.admit(now_ms());
            self.note(transition);
            if let Admission::Rejected { retry_in } = admission {
                return Some(Err(Refusal::Circuit {
                    breaker: breaker.name(),
                    retry_in,
                }));
            }
            self.admission = Some(admission);
        }
        // The fleet's pacing slot, no later than the local pacer's permit may be.
        let (latest, line_bound) = self.pacer.map_or((ask.latest_permit, false), |p| {
            p.bound(Instant::now(), ask.latest_permit)
        });
        let max_wait = latest.map_or(Duration::MAX, |at| {
            at.saturating_duration_since(Instant::now())
        });
        // Every attempt through a breaker asks for a probe lease, taken only if the fleet's
        // breaker is half-open (this process's copy may not know yet). Until the answer, the
        // lease is this future's: dropped meanwhile, it is given back.
        let (probe, lease) = match self.breaker {
            Some(b) => {
                let (probe, lease) = ProbeLease::ask(shared, b.name(), b.config().probes);
                (Some(probe), Some(lease))
            }
            None => (None, None),
        };
        let request = Admit {
            breaker: self.breaker.map(|b| BreakerAsk {
                name: b.name(),
                deposit: ask.first,
                withdraw: None,
            }),
            pool: self
                .ledgers
                .pool
                .and_then(|p| p.shared_ask(self.reserve(ask))),
            pace: self.pacer.and_then(|p| p.shared_ask(max_wait)),
            probe,
        };
        if request.breaker.is_none() && request.pool.is_none() && request.pace.is_none() {
            // Nothing the fleet shares here (e.g. an adaptive pacer alone).
            self.give_back_admission();
            return None;
        }
        let pool_asked = request.pool.clone();
        let Some(answer) = shared.admit(request).await else {
            // The store failed (the process is now on local state): take locally, after
            // giving back what this process's breaker admitted (and a lease the store may
            // have granted before it failed: sent if it can be, or it lapses there).
            drop(lease);
            self.give_back_admission();
            return None;
        };
        let now = now_ms();
        if let (Some(breaker), Some(state)) = (self.breaker, answer.breaker) {
            let transition = breaker.adopt(state, now);
            self.note(transition);
        }
        match lease {
            Some(lease) if answer.leased => {
                if let Err(refusal) = self.hold_lease(lease, now) {
                    return Some(Err(refusal));
                }
            }
            // Not granted (the fleet is not half-open, or the admission was refused): there
            // is nothing to give back.
            Some(lease) => lease.forget(),
            None => {}
        }
        if let (Some(pool), Some((_, committed))) = (self.ledgers.pool, answer.pool) {
            pool.mirror(committed, now);
        }
        let refusal = match answer.verdict {
            Verdict::Admitted => None,
            Verdict::BreakerOpen => Some(Refusal::Circuit {
                breaker: self.breaker.map_or("", |b| b.name()),
                retry_in: answer.breaker.and_then(|b| b.open_for).unwrap_or_default(),
            }),
            // Half-open in the fleet, every probe out: as a local breaker with its probes
            // out, nothing to wait for but their results.
            Verdict::ProbesOut => Some(Refusal::Circuit {
                breaker: self.breaker.map_or("", |b| b.name()),
                retry_in: Duration::ZERO,
            }),
            Verdict::RetryBudget => {
                // Not asked (the retry budget was asked before the pacer): the store answered
                // another question, so decide here.
                self.give_back_admission();
                return None;
            }
            Verdict::PoolFull => match (self.ledgers.pool, answer.pool) {
                (Some(pool), Some((_, committed))) => {
                    Some(Refusal::Budget(pool.refused_shared(committed, now)))
                }
                _ => None,
            },
            Verdict::PaceTooLate => Some(match self.pacer {
                Some(pacer) if line_bound => Refusal::PacerLine {
                    pacer: pacer.name(),
                    max_wait: pacer.config().max_wait.unwrap_or_default(),
                },
                _ => Refusal::Deadline {
                    deadline: ask.deadline,
                },
            }),
        };
        if let Some(refusal) = refusal {
            self.give_back_admission();
            return Some(Err(refusal));
        }
        if !self.ledgers.is_empty() {
            let reserved = pool_asked
                .zip(answer.pool)
                .map(|(asked, (window, _))| (window, asked.expected));
            match self
                .ledgers
                .reserve_after_shared(reserved, self.reserve(ask), now)
            {
                Ok(held) => self.held = Some(held),
                Err(exhausted) => {
                    self.give_back_admission();
                    return Some(Err(Refusal::Budget(exhausted)));
                }
            }
        }
        if let Some(breaker) = self.breaker {
            if ask.first {
                // Also here, so that local state is warm if the store goes away.
                breaker.retry_budget().deposit(now);
            }
            let news = breaker.tick(now);
            self.regime_news(breaker, news);
        }
        if !answer.pace_wait.is_zero() {
            // The fleet's pacing slot: wait for it (the store said when).
            tokio::time::sleep(answer.pace_wait).await;
            self.paced += answer.pace_wait;
        }
        Some(Ok(()))
    }

    /// The store granted this attempt one of the fleet's probe leases: keep it (renewed) until
    /// the result. An attempt this process admitted as a normal one (its copy of the breaker
    /// was closed; the fleet's state, just adopted, is half-open) is this process's probe
    /// too, so that its result closes or re-opens the breaker here and in the store; refused
    /// here (this process's probes are all out), it gives the lease back.
    fn hold_lease(&mut self, lease: ProbeLease, now: u64) -> Result<(), Refusal> {
        if let (Some(breaker), Some(Admission::Normal)) = (self.breaker, self.admission) {
            if breaker.state() != BreakerState::Closed {
                let (again, transition) = breaker.admit(now);
                self.note(transition);
                if let Admission::Rejected { retry_in } = again {
                    drop(lease);
                    self.give_back_admission();
                    return Err(Refusal::Circuit {
                        breaker: breaker.name(),
                        retry_in,
                    });
                }
                self.admission = Some(again);
            }
        }
        self.lease = Some(Box::new(lease.held()));
        Ok(())
    }

    /// A call whose policy cannot refuse (no error to refuse with) still reserves in its
    /// workflows; past a cap it runs anyway, and a WARN event says so.
    pub(super) fn take_unrefusable(&mut self, expected: Spend) {
        if self.ledgers.is_empty() {
            return;
        }
        match self.ledgers.reserve(expected, now_ms()) {
            Ok(held) => self.held = Some(held),
            Err(Exhausted {
                scope,
                spent,
                limit,
            }) => tracing::warn!(
                target: "retry_runtime",
                function = self.function,
                %scope,
                %spent,
                %limit,
                "a call that cannot be refused (its policy has no timeout, deadline, breaker or pool) started past its workflow budget"
            ),
        }
    }

    /// Record the attempt's result: what it cost (in the ledgers it reserved in), what the
    /// pacer learns from it, and the breaker's verdict (published to the fleet).
    pub(super) fn record(
        &mut self,
        failure: Option<ErrorClass>,
        spend: Spend,
        limits: Option<ProviderLimits>,
        first: bool,
        started: Instant,
    ) {
        self.pace_feedback(failure, spend);
        if let (Some(pacer), Some(limits)) = (self.pacer, limits) {
            // The provider's own numbers beat anything learned from 429s.
            pacer.on_hint(&limits, Instant::now());
        }
        if let Some(held) = self.held.take() {
            self.ledgers.settle(held, spend, now_ms());
        }
        self.record_breaker(failure, first, started);
        // The estimate has learnt from this attempt (the call told it first): the next one
        // at this site may go.
        self.turn = None;
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

    /// A committed stream was cut and the call would continue it: the cut is the attempt's
    /// failure for the breaker now, and the continuation a new attempt that the breaker must
    /// admit (at once: a continuation does not wait). `false` if it refuses (the cut opened
    /// it, or it was open); the breaker has heard the cut either way, so the stream's end
    /// tells it nothing more. The pacer's permit and the ledgers' reservations go on to the
    /// continuation: the stream's whole spend settles them at its end.
    pub(super) fn continue_after_cut(
        &mut self,
        cut: ErrorClass,
        first: bool,
        started: Instant,
    ) -> bool {
        self.record_breaker(Some(cut), first, started);
        let Some(breaker) = self.breaker else {
            return true;
        };
        let (admission, transition) = breaker.admit(now_ms());
        self.note(transition);
        if let Admission::Rejected { .. } = admission {
            return false;
        }
        self.admission = Some(admission);
        true
    }

    fn record_breaker(&mut self, failure: Option<ErrorClass>, first: bool, started: Instant) {
        let Some(breaker) = self.breaker else {
            return;
        };
        let lease = self.lease.take();
        let Some(admission) = self.admission.take() else {
            return; // (a lease is only held with an admission; dropped, it is given back)
        };
        // A fleet probe's transitions here are noted, not published: its result goes to the
        // store with the lease, which ends the fleet's half-open period if it still goes on,
        // re-opening it on a counted failure (or whatever re-opened the copy here, e.g. the
        // regime), else closing it.
        let to = steps::record_publishing(
            &mut self.notes(),
            breaker,
            admission,
            failure,
            first,
            started,
            lease.is_none(),
        );
        let Some(lease) = lease else {
            return;
        };
        let failed = match to {
            Some(state) => state == BreakerState::Open,
            None => failure.is_some_and(|class| breaker.counts(class)),
        };
        lease.end(failed.then(|| breaker.config().cooldown));
    }

    /// Where this call's transitions go (see [`steps::Notes`]).
    fn notes(&mut self) -> steps::Notes<'_> {
        steps::Notes {
            function: self.function,
            kept: self.keep_transitions.then_some(&mut self.transitions),
        }
    }

    fn regime_news(
        &mut self,
        breaker: &'static Breaker,
        news: (Option<crate::regime::Change>, Option<Transition>),
    ) {
        self.notes().news(breaker, news);
    }

    pub(super) fn regime(&self) -> Option<Regime> {
        self.breaker.map(|b| b.regime())
    }

    fn note(&mut self, transition: Option<Transition>) {
        self.notes().note(transition);
    }

    fn give_back_admission(&mut self) {
        if let (Some(breaker), Some(admission)) = (self.breaker, self.admission.take()) {
            // A probe that never ran gives its slot back, or the breaker would stay
            // half-open with no probe to decide it.
            breaker.cancel(admission);
        }
        // And its lease in the fleet, at once (the lease's end is the backstop).
        self.lease = None;
    }

    fn give_back_held(&mut self) {
        if let Some(held) = self.held.take() {
            // An attempt that never ran, or was dropped, has an unknown bill: give back what
            // it reserved.
            self.ledgers.release(held);
        }
    }
}

/// This process's transition, to the fleet (through the store, in the background).
fn to_fleet(breaker: &'static Breaker, transition: Option<Transition>) {
    if let (Some(t), Some(shared)) = (transition, crate::store::active()) {
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
}

/// The breaker's steps of an attempt, one place for the gate and for a first attempt that
/// runs without one (`FastCall`): admit (and deposit, and tick), record the result.
pub(super) mod steps {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::{
        now_ms, report, to_fleet, Admission, Breaker, BreakerState, ErrorClass, Transition,
    };

    /// Where a call's transitions go: an event each, and the call's report when it keeps one.
    pub(in crate::executor) struct Notes<'a> {
        pub function: &'static str,
        pub kept: Option<&'a mut Vec<Transition>>,
    }

    impl Notes<'_> {
        #[inline]
        pub fn note(&mut self, transition: Option<Transition>) {
            if let Some(t) = transition {
                report::transition(self.function, t);
                if let Some(kept) = self.kept.as_mut() {
                    kept.push(t);
                }
            }
        }

        /// A transition of this process's breaker: noted, and to the fleet with `fleet` (a
        /// leased probe's result goes to the store with its lease instead).
        #[inline(always)]
        fn publish_if(
            &mut self,
            breaker: &'static Breaker,
            transition: Option<Transition>,
            fleet: bool,
        ) {
            if transition.is_some() {
                if fleet {
                    to_fleet(breaker, transition);
                }
                self.note(transition);
            }
        }

        /// What the breaker's regime said: a change of regime (an event), and a transition if
        /// it opened the breaker (published and noted).
        #[inline]
        pub fn news(
            &mut self,
            breaker: &'static Breaker,
            news: (Option<crate::regime::Change>, Option<Transition>),
        ) {
            self.news_if(breaker, news, true);
        }

        #[inline(always)]
        fn news_if(
            &mut self,
            breaker: &'static Breaker,
            (change, opened): (Option<crate::regime::Change>, Option<Transition>),
            fleet: bool,
        ) {
            if let Some(change) = change {
                report::regime_changed(self.function, breaker.name(), change);
            }
            self.publish_if(breaker, opened, fleet);
        }
    }

    /// Admit an attempt at `now_ms` (a first one deposits in the retry budget): the
    /// admission, or how long until the breaker admits a probe.
    #[inline]
    pub(in crate::executor) fn admit(
        notes: &mut Notes<'_>,
        breaker: &'static Breaker,
        now_ms: u64,
        first: bool,
    ) -> Result<Admission, Duration> {
        let (admission, transition) = breaker.admit(now_ms);
        notes.note(transition);
        // One test of the admission on the closed path, as before: the rest is half-open.
        if admission != Admission::Normal {
            if let Admission::Rejected { retry_in } = admission {
                return Err(retry_in);
            }
            probe_on_local_state(notes.function, breaker);
        }
        if first {
            breaker.retry_budget().deposit(now_ms);
        }
        notes.news(breaker, breaker.tick(now_ms));
        Ok(admission)
    }

    /// A probe admitted by this process's breaker alone: with a store configured, that means
    /// it is not answering (or not yet), so the fleet's probes are not counted together. Said
    /// once per probe (a few per cooldown): a limit that fails open says so.
    #[cold]
    #[inline(never)]
    fn probe_on_local_state(function: &'static str, breaker: &'static Breaker) {
        if let Some(shared) = crate::store::active() {
            tracing::warn!(
                target: "retry_runtime",
                function,
                breaker = breaker.name(),
                store = shared.kind(),
                "breaker half-open while the {} store is unreachable: this probe is counted by this process alone (the fleet may send up to `probes` per process)",
                shared.kind()
            );
        }
    }

    /// The attempt's result (`failure`: its class; `None` for a success), `started` at.
    #[inline]
    pub(in crate::executor) fn record(
        notes: &mut Notes<'_>,
        breaker: &'static Breaker,
        admission: Admission,
        failure: Option<ErrorClass>,
        first: bool,
        started: Instant,
    ) {
        record_publishing(notes, breaker, admission, failure, first, started, true);
    }

    /// [`record`], publishing this process's transitions or (`publish = false`, one of the
    /// fleet's probes, whose result goes to the store with its lease) only noting them. The
    /// state the last of them went to, if any.
    #[inline(always)]
    pub(in crate::executor) fn record_publishing(
        notes: &mut Notes<'_>,
        breaker: &'static Breaker,
        admission: Admission,
        failure: Option<ErrorClass>,
        first: bool,
        started: Instant,
        fleet: bool,
    ) -> Option<BreakerState> {
        let (change, opened) = breaker.observe(first, failure, started);
        let mut to = opened.map(|t| t.to);
        notes.news_if(breaker, (change, opened), fleet);
        if admission == Admission::Normal && breaker.is_quiet(failure) {
            breaker.end_run();
            return to;
        }
        let recorded = breaker.record(admission, failure, now_ms());
        to = recorded.map(|t| t.to).or(to);
        notes.publish_if(breaker, recorded, fleet);
        to
    }
}

/// A retry the retry budget refused: shed, if the breaker's regime cut the allowance.
fn refused_retry(breaker: &Breaker) -> Denied {
    match breaker.regime() {
        regime if regime.sheds() => Denied::Shed(regime),
        _ => Denied::RetryBudget,
    }
}

impl Drop for Gate<'_> {
    fn drop(&mut self) {
        self.give_back_admission();
        self.give_back_held();
    }
}
