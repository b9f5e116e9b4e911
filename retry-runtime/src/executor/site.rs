//! A call site: what the macro emits once per function, as a `static`.

use crate::breaker::BreakerSlot;
use crate::budget::{PoolSlot, SpendEstimate};
use crate::fallback::FallbackCache;
use crate::pace::PacerSlot;
use crate::policy::Policy;
use crate::report;
use crate::spend::Spend;

/// A call site: its policy and the shared state it resolves once (breaker, pool) or learns
/// (the expected cost of an attempt). The macro emits one as a `static` per function.
#[derive(Debug)]
pub struct CallSite<'p> {
    pub(super) policy: &'p Policy,
    pub(super) breaker: BreakerSlot,
    pub(super) pool: PoolSlot,
    pub(super) estimate: SpendEstimate,
    pub(super) cache: FallbackCache,
    pub(super) pace: PacerSlot,
    pub(super) labels: report::metered::SiteLabels,
    // Whether this site has said its label (for the WARN that two sites share one).
    pub(super) registered: std::sync::Once,
}

impl<'p> CallSite<'p> {
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
            registered: std::sync::Once::new(),
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
