//! A call site: what the macro emits once per function, as a `static`.

use crate::breaker::BreakerSlot;
use crate::budget::{PoolSlot, SpendEstimate};
use crate::fallback::FallbackCache;
use crate::pace::PacerSlot;
use crate::policy::Policy;
use crate::report;
use crate::spend::Spend;
use std::sync::OnceLock;

/// A call site: its policy and the shared state it resolves once (breaker, pool) or learns
/// (the expected cost of an attempt). The macro emits one as a `static` per function.
#[derive(Debug)]
pub struct CallSite<'p> {
    pub(super) policy: &'p Policy,
    // What the site resolves and learns, made at its first call: so a `static` site's
    // initialiser, which the compiler evaluates for every `#[resilient]` fn, is only this.
    state: OnceLock<SiteState>,
    // Whether this site has said its label (for the WARN that two sites share one).
    pub(super) registered: std::sync::Once,
}

/// What a call site resolves once (breaker, pool, pacer) or learns (the expected cost of an
/// attempt, the cached answers), and its metric labels.
#[derive(Debug)]
pub(super) struct SiteState {
    pub(super) breaker: BreakerSlot,
    pub(super) pool: PoolSlot,
    pub(super) estimate: SpendEstimate,
    pub(super) cache: FallbackCache,
    pub(super) pace: PacerSlot,
    pub(super) labels: report::metered::SiteLabels,
}

impl SiteState {
    fn new(policy: &Policy) -> Self {
        SiteState {
            breaker: BreakerSlot::new(policy.breaker()),
            pool: PoolSlot::new(policy.pool()),
            estimate: SpendEstimate::new(),
            cache: FallbackCache::new(),
            pace: PacerSlot::new(policy.pace()),
            labels: report::metered::SiteLabels::new(policy.name()),
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
        Self {
            policy,
            state: OnceLock::new(),
            registered: std::sync::Once::new(),
        }
    }

    /// The site's state, made at its first use.
    #[inline]
    pub(super) fn state(&self) -> &SiteState {
        self.state.get_or_init(|| SiteState::new(self.policy))
    }

    /// The policy.
    pub fn policy(&self) -> &'p Policy {
        self.policy
    }

    /// What one more attempt here is expected to cost (see [`crate::budget`]).
    pub fn expected_spend(&self) -> Spend {
        self.state().estimate.expected()
    }
}
