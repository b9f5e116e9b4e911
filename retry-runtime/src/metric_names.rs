//! Counters through the `metrics` facade (feature `metrics`, on by default). With no recorder
//! installed each costs an atomic load; the per-call-site ones use keys built at compile time,
//! so a successful call allocates nothing for them.
//!
//! | metric | labels | counts |
//! |---|---|---|
//! | `retry_runtime_attempts_total` | `function` | attempts made (first attempts and retries) |
//! | `retry_runtime_retries_total` | `function` | retries started |
//! | `retry_runtime_calls_total` | `function`, `stop` | calls ended, by `StopReason::as_str` |
//! | `retry_runtime_rejections_total` | `function`, `reason` | calls or retries refused by the runtime (`circuit_open`, `breaker_opened`, `retry_budget_exhausted`, `shed`, `pacer_line_full`, `budget_exhausted`, `pool_unconfigured`, `queue_full`, `queue_timeout`) |
//! | `retry_runtime_fallbacks_total` | `function`, `kind` | degraded answers, by `cached`, `function`, `queue` |
//! | `retry_runtime_spend_micros_total` | `function` | micro-dollars spent (successes and billed failures) |
//! | `retry_runtime_spend_tokens_total` | `function` | tokens spent |
//! | `retry_runtime_breaker_transitions_total` | `breaker`, `to` | breaker state changes |
//! | `retry_runtime_breaker_regime_changes_total` | `breaker`, `to` | changes of what a breaker believes its provider is going through (`healthy`, `throttled`, `brownout`, `overload`, `outage`) |
//! | `retry_runtime_store_transitions_total` | `store`, `to` | a shared store became reachable (`shared`) or unreachable (`local`) |

/// Attempts made.
pub const ATTEMPTS: &str = "retry_runtime_attempts_total";
/// Retries started.
pub const RETRIES: &str = "retry_runtime_retries_total";
/// Calls ended, by stop reason.
pub const CALLS: &str = "retry_runtime_calls_total";
/// Refusals, by reason.
pub const REJECTIONS: &str = "retry_runtime_rejections_total";
/// Degraded answers, by fallback kind.
pub const FALLBACKS: &str = "retry_runtime_fallbacks_total";
/// Micro-dollars spent.
pub const SPEND_MICROS: &str = "retry_runtime_spend_micros_total";
/// Tokens spent.
pub const SPEND_TOKENS: &str = "retry_runtime_spend_tokens_total";
/// Breaker state changes.
pub const BREAKER_TRANSITIONS: &str = "retry_runtime_breaker_transitions_total";
/// Breaker regime changes.
pub const REGIME_CHANGES: &str = "retry_runtime_breaker_regime_changes_total";
/// Shared-store status changes (see `retry_runtime::store`).
pub const STORE_TRANSITIONS: &str = "retry_runtime_store_transitions_total";
