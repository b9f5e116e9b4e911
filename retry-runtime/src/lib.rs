//! Production-grade retries for LLM API calls.
//!
//! Annotate an async function and it gets exponential backoff with jitter, error
//! classification before any retry, the server's `Retry-After` honoured within bounds,
//! per-attempt timeouts, a whole-call deadline and a report of everything that happened. The
//! policy is checked at compile time and built as a `static`: nothing is parsed at run time.
//! (Where a policy must live in configuration, [`Policy::builder`] and `[policy.NAME]`
//! sections build one at run time, checked by the same rules.)
//!
//! ```
//! use std::time::Duration;
//! use retry_runtime::{observe, resilient, retry_on, Classify, ErrorClass, Rejected};
//!
//! #[derive(Debug)]
//! enum LlmError {
//!     Status(u16),
//!     Runtime(Rejected),
//! }
//! impl From<Rejected> for LlmError {
//!     fn from(r: Rejected) -> Self { LlmError::Runtime(r) }
//! }
//! impl Classify for LlmError {
//!     fn class(&self) -> ErrorClass {
//!         match self {
//!             LlmError::Status(code) => ErrorClass::Status(*code),
//!             LlmError::Runtime(r) => r.class(),
//!         }
//!     }
//! }
//!
//! #[resilient(backoff = "exp_jitter", max = 5, base = "200ms", timeout = "20s", deadline = "1m")]
//! #[retry_on(429, 500..=599, timeout)]
//! async fn complete(prompt: &str) -> Result<String, LlmError> {
//!     if prompt.is_empty() {
//!         return Err(LlmError::Status(400)); // a caller fault: never retried
//!     }
//!     Ok(format!("echo: {prompt}"))
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let (reply, report) = observe(complete("hi")).await;
//! assert_eq!(reply.unwrap(), "echo: hi");
//! assert_eq!(report.attempts().len(), 1);
//! # }
//! ```
//!
//! See the crate's README for the attribute keys and `docs/ARCHITECTURE.md` for how the
//! pieces fit.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod any_error;
pub mod backoff;
pub mod breaker;
pub mod budget;
pub mod classify;
mod clock;
pub mod config;
pub mod context;
pub mod executor;
pub mod fallback;
pub mod integrations;
pub mod metric_names;
pub mod overload;
pub mod pace;
pub mod policy;
mod queue;
pub mod regime;
mod registry;
pub mod rejected;
pub mod report;
pub mod retry_budget;
pub mod spend;
pub mod store;
pub mod testing;

// What a user does, in order: declare a policy, classify errors, set limits and name shared
// state, configure it at run time, read what happened, or drive a policy by hand.

// Declaring a policy (the attributes below build these as `static`s).
pub use backoff::{Backoff, Jitter};
pub use policy::{CodeRange, Policy, PolicyBuilder, PolicyError, RetryOn};

// Classifying errors, and what the runtime itself refuses with.
pub use any_error::AnyError;
pub use classify::{Classify, ErrorClass};
pub use rejected::{CanReject, Rejected};

// Spend, limits and named shared state.
pub use breaker::{breaker, Breaker, BreakerState, Transition};
pub use budget::{pool, pool_usage, workflow, Pool, PoolUsage, Workflow};
pub use context::{current_attempt, AttemptContext, IdempotencyKey};
pub use executor::Streamed;
pub use regime::Regime;
pub use spend::{bill_on_cut, Budget, BudgetScope, Metered, Price, Spend, Unit, Usage};

// Configuring at run time.
pub use config::{configure, BreakerConfig, Config, ConfigError, PoolConfig};

// What happened: reports and fallbacks.
pub use fallback::{FallbackKind, FallbackReport};
pub use report::{observe, observe_all, AttemptReport, CallReport, StopReason, StreamReport};

// Driving a policy by hand, without the attribute.
pub use executor::{decide, retry, CallSite, Decision, Failure};

#[cfg(feature = "macros")]
#[doc(inline)]
#[doc = include_str!("../docs/resilient.md")]
pub use retry_macros::resilient;

/// List what a `#[resilient]` function retries: status codes (`429`), inclusive ranges
/// (`500..=599`), and the words `timeout` and `transport`; above or below `#[resilient]`.
///
/// Without it: 408, 409, 429, 500..=599, `timeout`, `transport`. `Permanent` and `Other`
/// errors are never retried, whatever the list says. Refused at compile time, under the
/// offending token: a code outside 100..=599, a 1xx/2xx/3xx code, a caller-fault 4xx (400,
/// 401, 403, 404, 413, 422: retrying them only pays again for the same wrong request),
/// duplicates and overlaps, and `#[retry_on]` without `#[resilient]`.
///
/// ```
/// use retry_runtime::{resilient, retry_on, Rejected};
///
/// #[resilient(max = 3)]
/// #[retry_on(429, 500..=504, 529, timeout)]
/// async fn complete() -> Result<u32, Rejected> { Ok(1) }
/// ```
#[cfg(feature = "macros")]
#[doc(inline)]
pub use retry_macros::retry_on;

/// What the macros expand to. Not a stable API: it changes with the macro crate, which is
/// why `retry-runtime` pins `retry-macros` to an exact version.
#[doc(hidden)]
pub mod __private {
    pub use crate::backoff::Backoff;
    pub use crate::budget::Budget;
    pub use crate::executor::{
        Call, CallSite, FastCall, Outcome, PolicyParts, Probe, ProbeHiddenStream, ProbeNoSpend,
        ProbeSpend, Settled, Step,
    };
    pub use crate::fallback::cache_key;
    pub use crate::policy::{CodeRange, Policy, RetryOn};
    pub use crate::spend::{Metered, Spend};
    pub use core::concat;
    pub use core::file;
    pub use core::line;
    pub use core::marker::PhantomData;
    pub use core::module_path;
    pub use core::option::Option::Some;
    pub use core::time::Duration;

    /// A `#[key]` argument of a `cached` fallback: hashed into the call's cache key.
    #[diagnostic::on_unimplemented(
        message = "`#[key]` argument of type `{Self}` must be `Hash`: the `cached` fallback is keyed by a hash of it",
        label = "not `Hash`",
        note = "derive or implement `Hash` for `{Self}`, or key the cache with `key = <expr>` (a hashable expression)"
    )]
    pub trait CacheKeyPart {
        /// Feed this argument to the call's key.
        fn hash_into(&self, hasher: &mut KeyHasher);
    }

    impl<T: std::hash::Hash + ?Sized> CacheKeyPart for T {
        #[inline]
        fn hash_into(&self, hasher: &mut KeyHasher) {
            std::hash::Hash::hash(self, &mut hasher.0);
        }
    }

    /// The hasher of a call's `#[key]` arguments (fixed keys: the same arguments give the
    /// same key in every process).
    pub struct KeyHasher(std::hash::DefaultHasher);

    impl KeyHasher {
        /// An empty key.
        #[allow(clippy::new_without_default)]
        pub fn new() -> Self {
            KeyHasher(std::hash::DefaultHasher::new())
        }

        /// The key.
        pub fn finish(&self) -> u64 {
            std::hash::Hasher::finish(&self.0)
        }
    }

    /// Hash one `#[key]` argument into the key (its bound is what reports a missing `Hash`).
    #[inline]
    pub fn key_part<T: CacheKeyPart + ?Sized>(hasher: &mut KeyHasher, part: &T) {
        part.hash_into(hasher);
    }

    /// Owned arguments are cloned for each attempt, so each attempt sees the caller's value.
    #[diagnostic::on_unimplemented(
        message = "owned argument of type `{Self}` is cloned for each attempt, but it is not `Clone`",
        label = "each retry needs a fresh copy of this argument",
        note = "take it by reference (`&{Self}`), or derive or implement `Clone` for it"
    )]
    pub trait CloneForAttempt {
        /// A fresh copy for the next attempt.
        fn clone_for_attempt(&self) -> Self;
    }

    impl<T: Clone> CloneForAttempt for T {
        #[inline(always)]
        fn clone_for_attempt(&self) -> Self {
            self.clone()
        }
    }

    /// What a success cost, for call sites with a `budget` or `pool` (which need `Metered`).
    pub fn spend_of_metered<T: Metered, E>(outcome: &Result<T, E>) -> Spend {
        match outcome {
            Ok(value) => value.spend(),
            Err(_) => Spend::ZERO,
        }
    }

    /// Autoref specialization: `(&&SpendProbe::<R>(PhantomData)).spend_fn()` picks
    /// `Metered::spend` when `R = Result<T, E>` with `T: Metered`, and "zero" otherwise, so
    /// workflow scopes count what every call site can tell them.
    pub struct SpendProbe<R>(pub PhantomData<R>);

    /// The `Metered` arm of [`SpendProbe`].
    pub trait ProbeMetered<R> {
        /// `Metered::spend` of a success.
        fn spend_fn(self) -> fn(&R) -> Spend;
    }

    impl<T: Metered, E> ProbeMetered<Result<T, E>> for &&SpendProbe<Result<T, E>> {
        fn spend_fn(self) -> fn(&Result<T, E>) -> Spend {
            spend_of_metered::<T, E>
        }
    }

    /// The fallback arm of [`SpendProbe`].
    pub trait ProbeAny<R> {
        /// Zero: the success type does not say what it cost.
        fn spend_fn(self) -> fn(&R) -> Spend;
    }

    impl<R> ProbeAny<R> for &SpendProbe<R> {
        fn spend_fn(self) -> fn(&R) -> Spend {
            no_spend::<R>
        }
    }

    /// Zero, for success types that are not `Metered`.
    pub fn no_spend<R>(_: &R) -> Spend {
        Spend::ZERO
    }

    /// Autoref specialization again: `(&&StreamProbe::<R>::new()).not_a_stream()` compiles for
    /// every success type but a `Streamed` one, which the macro only recognises when the
    /// signature says `Streamed<…>` (a type alias hides it, and the call would not be a
    /// streaming one: no first chunk awaited, no stream tracked). Emitted for calls the macro
    /// did not read as streaming.
    pub struct StreamProbe<R>(PhantomData<R>);

    impl<R> StreamProbe<R> {
        /// A probe for `R`.
        #[allow(clippy::new_without_default)]
        pub fn new() -> Self {
            StreamProbe(PhantomData)
        }
    }

    /// Implemented for nothing: its message is the error.
    #[diagnostic::on_unimplemented(
        message = "this #[resilient] fn returns a `Streamed` stream under another name: write `Result<Streamed<S>, E>` in its signature",
        label = "a `Streamed` behind a type alias",
        note = "the macro reads the signature to make a call a streaming one (retried until its first chunk, then followed to its end); an alias hides the `Streamed`"
    )]
    pub trait StreamHiddenByAlias {}

    /// The `Streamed` arm of [`StreamProbe`]: selected, then refused by its bound.
    pub trait ProbeStreamed {
        /// Refused.
        fn not_a_stream(self)
        where
            Self: Sized + StreamHiddenByAlias,
        {
        }
    }

    impl<S: futures_core::TryStream, E> ProbeStreamed
        for &&StreamProbe<Result<crate::executor::Streamed<S>, E>>
    {
    }

    /// The fallback arm of [`StreamProbe`]: anything else.
    pub trait ProbeNotStreamed {
        /// Nothing to check.
        fn not_a_stream(self)
        where
            Self: Sized,
        {
        }
    }

    impl<R> ProbeNotStreamed for &StreamProbe<R> {}
}

// The crate's README (what crates.io shows) is compiled and run as a doctest, so the example
// users copy from works. The workspace README's examples are the root package's doctests: a
// path outside this directory is not in the published crate.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
