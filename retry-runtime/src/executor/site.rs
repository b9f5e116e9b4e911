//! A call site: what the macro emits once per function, as a `static`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use crate::backoff::Backoff;
use crate::breaker::BreakerSlot;
use crate::budget::{PoolSlot, SpendEstimate};
use crate::fallback::FallbackCache;
use crate::pace::PacerSlot;
use crate::policy::{CodeRange, Policy, RetryOn};
use crate::report;
use crate::spend::{Budget, Spend};

/// A call site: its policy and the shared state it resolves once (breaker, pool) or learns
/// (the expected cost of an attempt). The macro emits one as a `static` per function.
#[derive(Debug)]
pub struct CallSite<'p> {
    source: Source<'p>,
    // What the site resolves and learns (and the policy, for a site of the macro's), made
    // at its first call: so a `static` site's initialiser, which the compiler evaluates for
    // every `#[resilient]` fn, is only this.
    state: OnceLock<SiteState>,
    // Whether this site has said its label (for the WARN that two sites share one).
    registered: AtomicBool,
}

/// Where a site's policy comes from. The attribute's parts are held inline: one `static` per
/// function (the compiler evaluates each), where a second for the parts cost it more; a site
/// made from a `Policy` (by hand, or built at run time) pays the unused bytes.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum Source<'p> {
    Policy(&'p Policy),
    Parts(PolicyParts),
}

/// What a call site resolves once (breaker, pool, pacer) or learns (the expected cost of an
/// attempt, the cached answers), its metric labels, and its policy.
#[derive(Debug)]
pub(super) struct SiteState {
    pub(super) policy: Policy,
    pub(super) breaker: BreakerSlot,
    pub(super) pool: PoolSlot,
    pub(super) estimate: SpendEstimate,
    pub(super) cache: FallbackCache,
    pub(super) pace: PacerSlot,
    pub(super) labels: report::metered::SiteLabels,
}

impl SiteState {
    fn new(policy: Policy) -> Self {
        SiteState {
            breaker: BreakerSlot::new(policy.breaker()),
            pool: PoolSlot::new(policy.pool()),
            estimate: SpendEstimate::new(),
            cache: FallbackCache::new(),
            pace: PacerSlot::new(policy.pace()),
            labels: report::metered::SiteLabels::new(policy.name()),
            policy,
        }
    }

    /// Remember a good answer for `fallback = cached` (what `Call::cache_store` and
    /// `FastCall::cache_store`, whose bounds name `cached` in the diagnostics, both do).
    pub(super) fn remember<R>(&self, key: u64, result: &R)
    where
        R: super::Outcome,
        R::Ok: crate::fallback::CachedAnswer,
    {
        if let Some(value) = result.ok_ref() {
            self.cache.store(key, value);
        }
    }
}

impl<'p> CallSite<'p> {
    /// A call site for `policy`.
    pub const fn new(policy: &'p Policy) -> Self {
        Self::of(Source::Policy(policy))
    }

    #[doc(hidden)]
    /// A call site for the policy the attribute wrote (what `#[resilient]` emits). Not part of
    /// the stable API.
    pub const fn from_parts(parts: PolicyParts) -> Self {
        Self::of(Source::Parts(parts))
    }

    const fn of(source: Source<'p>) -> Self {
        Self {
            source,
            state: OnceLock::new(),
            registered: AtomicBool::new(false),
        }
    }

    /// The site's state, made at its first use.
    #[inline]
    pub(super) fn state(&self) -> &SiteState {
        self.state.get_or_init(|| {
            SiteState::new(match self.source {
                Source::Policy(policy) => *policy,
                Source::Parts(ref parts) => parts.policy(),
            })
        })
    }

    /// A `static` site's first call says its label (once; for the WARN that two sites share
    /// one).
    #[inline]
    pub(super) fn register(&self, state: &SiteState) {
        if !self.registered.load(Ordering::Relaxed) && !self.registered.swap(true, Ordering::AcqRel)
        {
            report::site_label(state.policy.name(), state.policy.site());
        }
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.state().policy
    }

    /// What one more attempt here is expected to cost (see [`crate::budget`]).
    pub fn expected_spend(&self) -> Spend {
        self.state().estimate.expected()
    }
}

#[doc(hidden)]
/// A policy as `#[resilient]` writes it: every value the attribute can set, as plain data
/// (nanoseconds, amounts), made a [`Policy`] at the site's first call. What the macro emits
/// for its `static`: the compiler evaluates every function's initialiser, and plain data
/// costs it least (a chain of builder calls copies the whole policy at each). Not part of
/// the stable API.
#[derive(Debug, Clone, Copy)]
pub struct PolicyParts {
    /// See [`Policy::new`].
    pub name: &'static str,
    /// See [`Policy::with_site`].
    pub site: &'static str,
    /// See [`Policy::with_backoff`].
    pub backoff: Backoff,
    /// See [`Policy::with_max_attempts`].
    pub max_attempts: u32,
    /// See [`Policy::with_base`], in nanoseconds.
    pub base_ns: u64,
    /// See [`Policy::with_cap`], in nanoseconds.
    pub cap_ns: u64,
    /// See [`Policy::with_max_retry_after`], in nanoseconds.
    pub max_retry_after_ns: u64,
    /// See [`Policy::with_timeout`], in nanoseconds.
    pub timeout_ns: Option<u64>,
    /// See [`Policy::with_deadline`], in nanoseconds.
    pub deadline_ns: Option<u64>,
    /// See [`Policy::with_retry_on`]: the codes (`None`: the default set), and whether
    /// timeouts and transport errors are retried.
    pub retry_on: Option<(&'static [CodeRange], bool, bool)>,
    /// See [`Policy::with_breaker`].
    pub breaker: Option<&'static str>,
    /// See [`Policy::with_budget`]: the amount, and whether it is in tokens.
    pub budget: Option<(u64, bool)>,
    /// See [`Policy::with_max_cost`]: the amount, and whether it is in tokens.
    pub max_cost: Option<(u64, bool)>,
    /// See [`Policy::with_pool`].
    pub pool: Option<&'static str>,
    /// See [`Policy::with_pace`].
    pub pace: Option<&'static str>,
    /// See [`Policy::with_stale_for`], in nanoseconds (`None`: the default).
    pub stale_for_ns: Option<u64>,
    /// See [`Policy::with_queue_wait`], in nanoseconds (`None`: the default).
    pub queue_wait_ns: Option<u64>,
    /// See [`Policy::with_first_token`], in nanoseconds.
    pub first_token_ns: Option<u64>,
    /// See [`Policy::with_idle`], in nanoseconds.
    pub idle_ns: Option<u64>,
}

/// A nanosecond count as a duration (at most `u64::MAX` ns, some 584 years).
const fn ns(nanos: u64) -> Duration {
    Duration::from_nanos(nanos)
}

/// An amount in micro-dollars or in tokens.
const fn budget((amount, tokens): (u64, bool)) -> Budget {
    if tokens {
        Budget::tokens(amount)
    } else {
        Budget::micros(amount)
    }
}

impl PolicyParts {
    /// [`Policy::new`]'s values (the name and site empty).
    pub const DEFAULT: PolicyParts = {
        let p = Policy::new("");
        PolicyParts {
            name: "",
            site: "",
            backoff: p.backoff(),
            max_attempts: p.max_attempts(),
            base_ns: p.base().as_nanos() as u64,
            cap_ns: p.cap().as_nanos() as u64,
            max_retry_after_ns: p.max_retry_after().as_nanos() as u64,
            timeout_ns: None,
            deadline_ns: None,
            retry_on: None,
            breaker: None,
            budget: None,
            max_cost: None,
            pool: None,
            pace: None,
            stale_for_ns: None,
            queue_wait_ns: None,
            first_token_ns: None,
            idle_ns: None,
        }
    };

    /// The policy: what [`Policy::new`] and its builders make of the same values (the
    /// attempts clamped as [`Policy::with_max_attempts`] does).
    pub const fn policy(&self) -> Policy {
        let mut p = Policy::new(self.name)
            .with_site(self.site)
            .with_backoff(self.backoff)
            .with_max_attempts(self.max_attempts)
            .with_base(ns(self.base_ns))
            .with_cap(ns(self.cap_ns))
            .with_max_retry_after(ns(self.max_retry_after_ns));
        if let Some(timeout) = self.timeout_ns {
            p = p.with_timeout(ns(timeout));
        }
        if let Some(deadline) = self.deadline_ns {
            p = p.with_deadline(ns(deadline));
        }
        if let Some((codes, timeout, transport)) = self.retry_on {
            p = p.with_retry_on(RetryOn::new(codes, timeout, transport));
        }
        if let Some(name) = self.breaker {
            p = p.with_breaker(name);
        }
        if let Some(amount) = self.budget {
            p = p.with_budget(budget(amount));
        }
        if let Some(amount) = self.max_cost {
            p = p.with_max_cost(budget(amount));
        }
        if let Some(name) = self.pool {
            p = p.with_pool(name);
        }
        if let Some(name) = self.pace {
            p = p.with_pace(name);
        }
        if let Some(stale_for) = self.stale_for_ns {
            p = p.with_stale_for(ns(stale_for));
        }
        if let Some(queue_wait) = self.queue_wait_ns {
            p = p.with_queue_wait(ns(queue_wait));
        }
        if let Some(first_token) = self.first_token_ns {
            p = p.with_first_token(ns(first_token));
        }
        if let Some(idle) = self.idle_ns {
            p = p.with_idle(ns(idle));
        }
        p
    }
}
