//! Errors the runtime produces itself, when it cuts or refuses an attempt.

use std::fmt;
use std::time::Duration;

use crate::classify::{Classify, ErrorClass};
use crate::spend::Spend;
use crate::spend::{Budget, BudgetScope};

/// An error produced by the runtime rather than the provider: an attempt cut at its
/// `timeout`, a call cut at its `deadline`, or a call its circuit breaker or a spend limit
/// refused.
///
/// A policy that can produce one (it has `timeout`, `deadline`, `breaker` or `pool`) requires the function's
/// error type to implement `From<Rejected>`; the macro checks this at compile time.
///
/// ```
/// use retry_runtime::{Classify, ErrorClass, Rejected};
///
/// #[derive(Debug)]
/// enum LlmError {
///     Status(u16),
///     Runtime(Rejected),
/// }
///
/// impl From<Rejected> for LlmError {
///     fn from(r: Rejected) -> Self {
///         LlmError::Runtime(r)
///     }
/// }
///
/// impl Classify for LlmError {
///     fn class(&self) -> ErrorClass {
///         match self {
///             LlmError::Status(code) => ErrorClass::Status(*code),
///             LlmError::Runtime(r) => r.class(),
///         }
///     }
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejected {
    /// The attempt did not finish within the policy's per-attempt `timeout`.
    AttemptTimedOut {
        /// The per-attempt timeout that was hit.
        timeout: Duration,
    },
    /// The call's `deadline` ran out while an attempt was in flight.
    DeadlineExceeded {
        /// The whole-call deadline that was hit.
        deadline: Duration,
    },
    /// The call's circuit breaker is open: no attempt was made, the provider saw nothing.
    CircuitOpen {
        /// The breaker's name.
        breaker: &'static str,
        /// Time until the breaker admits a probe; zero while half-open probes decide.
        retry_in: Duration,
    },
    /// `fallback = queue`: the breaker's line was full.
    QueueFull {
        /// The breaker whose line it is.
        breaker: &'static str,
    },
    /// `fallback = queue`: the call waited its `queue_wait` and was not released.
    QueueTimeout {
        /// The breaker whose line it is.
        breaker: &'static str,
        /// How long it waited.
        waited: Duration,
    },
    /// A spend limit (a pool's window, or a workflow's cap) has no room for this call.
    BudgetExhausted {
        /// Which limit.
        scope: BudgetScope,
        /// What is committed against it (in its unit).
        spent: Spend,
        /// The limit.
        limit: Budget,
    },
    /// A streaming call's attempt produced no chunk within its `first_token`: cut, and
    /// retried like any timeout.
    FirstTokenTimedOut {
        /// The policy's `first_token`.
        first_token: Duration,
    },
    /// A streaming call's stream, once begun, went longer than its `idle` without a chunk:
    /// the stream ends with this error (what was delivered is not sent again).
    StreamIdle {
        /// The policy's `idle`.
        idle: Duration,
    },
    /// The call's breaker believes its provider is overloaded, so it admits attempts only as
    /// fast as the provider answers them, and this call's turn would have come too late (past
    /// 5 s, or its deadline): refused now, before its wait.
    Shed {
        /// The breaker's name.
        breaker: &'static str,
    },
    /// The pacer's line is longer than its `max_wait`: this call's turn would come later, so
    /// it is refused now (and gets its fallback now) rather than after the wait.
    PacerLineFull {
        /// The pacer's name.
        pacer: &'static str,
        /// Its `max_wait`.
        max_wait: Duration,
    },
    /// The call names a pool whose limit the configuration should give and does not: the
    /// configuration file failed to load, or it configures other pools but not this name (a
    /// typo, most likely). Refused rather than spent without a limit; an ERROR event says why.
    /// `RETRY_RUNTIME_POOLS_FAIL_OPEN=1` (or `Config::with_pools_fail_open`) lets such pools
    /// count without a limit instead.
    PoolUnconfigured {
        /// The pool's name.
        pool: &'static str,
    },
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejected::AttemptTimedOut { timeout } => {
                write!(f, "attempt timed out after {timeout:?}")
            }
            Rejected::DeadlineExceeded { deadline } => {
                write!(f, "call deadline of {deadline:?} exceeded")
            }
            Rejected::CircuitOpen { breaker, retry_in } => {
                write!(
                    f,
                    "circuit breaker `{breaker}` is open (retry in {retry_in:?})"
                )
            }
            Rejected::BudgetExhausted {
                scope,
                spent,
                limit,
            } => write!(f, "{scope} exhausted: {spent} of {limit} committed"),
            Rejected::QueueFull { breaker } => {
                write!(f, "the queue of breaker `{breaker}` is full")
            }
            Rejected::PoolUnconfigured { pool } => write!(
                f,
                "pool `{pool}` has no configured limit (see the ERROR event); refused rather than spent without one"
            ),
            Rejected::FirstTokenTimedOut { first_token } => {
                write!(f, "no first chunk within {first_token:?}")
            }
            Rejected::StreamIdle { idle } => {
                write!(f, "the stream went {idle:?} without a chunk")
            }
            Rejected::Shed { breaker } => write!(
                f,
                "breaker `{breaker}` sheds load: its provider is overloaded"
            ),
            Rejected::PacerLineFull { pacer, max_wait } => write!(
                f,
                "the line of pacer `{pacer}` is longer than its max_wait of {max_wait:?}"
            ),
            Rejected::QueueTimeout { breaker, waited } => write!(
                f,
                "waited {waited:?} in the queue of breaker `{breaker}` without being released"
            ),
        }
    }
}

impl std::error::Error for Rejected {}

/// Implemented for every error type that is `From<Rejected>`. It exists for its compile
/// error: a policy with `timeout`, `deadline`, `breaker` or `pool` whose error type lacks `From<Rejected>` is
/// told exactly what to add.
#[diagnostic::on_unimplemented(
    message = "this policy can cut or refuse an attempt, so the error type `{Self}` must implement `From<retry_runtime::Rejected>`",
    label = "`timeout`, `deadline`, `breaker` and `pool` need `From<Rejected>` for the error type",
    note = "add `impl From<retry_runtime::Rejected> for {Self}` (e.g. a `Runtime(Rejected)` variant) and classify it with `Rejected::class`"
)]
pub trait CanReject: From<Rejected> {}

impl<E: From<Rejected>> CanReject for E {}

impl Classify for Rejected {
    fn class(&self) -> ErrorClass {
        match self {
            Rejected::AttemptTimedOut { .. } => ErrorClass::Timeout,
            Rejected::DeadlineExceeded { .. }
            | Rejected::FirstTokenTimedOut { .. }
            | Rejected::StreamIdle { .. } => ErrorClass::Timeout,
            // The breaker just said no: an outer policy retrying at once would only be
            // refused again.
            Rejected::CircuitOpen { .. } => ErrorClass::Other,
            // A spent budget will not come back in seconds.
            Rejected::BudgetExhausted { .. } => ErrorClass::Permanent,
            // A configuration to fix, not an outage to wait out.
            Rejected::PoolUnconfigured { .. } => ErrorClass::Permanent,
            Rejected::QueueFull { .. }
            | Rejected::QueueTimeout { .. }
            | Rejected::PacerLineFull { .. }
            | Rejected::Shed { .. } => ErrorClass::Other,
        }
    }
}
