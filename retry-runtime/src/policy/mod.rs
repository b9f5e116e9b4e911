//! The retry policy: what `#[resilient(...)]` and `#[retry_on(...)]` say, built at compile time.
//!
//! Every constructor here is a `const fn`, so the macro emits the policy as a `static` and
//! nothing is parsed at run time. The macro has already checked the values; the builders
//! saturate instead of panicking so that a hand-built policy cannot crash a caller either.
//!
//! A policy can also be built at run time, checked by the attribute's own rules:
//! [`Policy::builder`] ([`PolicyBuilder`]), or a `[policy.NAME]` section of the configuration
//! ([`Config::policy`](crate::Config::policy)).

use std::time::Duration;

use crate::backoff::Backoff;
use crate::classify::ErrorClass;
use crate::spend::Budget;

mod builder;
pub(crate) use builder::Retryable;
pub use builder::{PolicyBuilder, PolicyError, PolicyProblem};

/// An inclusive range of HTTP status codes that a policy retries, such as `500..=599`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeRange {
    /// First code of the range.
    pub start: u16,
    /// Last code of the range (inclusive).
    pub end: u16,
}

impl CodeRange {
    /// A range of one code.
    pub const fn single(code: u16) -> Self {
        Self {
            start: code,
            end: code,
        }
    }

    /// An inclusive range `start..=end`.
    pub const fn range(start: u16, end: u16) -> Self {
        Self { start, end }
    }

    const fn contains(&self, code: u16) -> bool {
        self.start <= code && code <= self.end
    }
}

/// What a policy treats as retryable: the `#[retry_on(...)]` list.
///
/// ```
/// use retry_runtime::{CodeRange, ErrorClass, RetryOn};
///
/// const ON: RetryOn = RetryOn::new(&[CodeRange::single(429), CodeRange::range(500, 599)], true, false);
/// assert!(ON.retries(ErrorClass::Status(503)));
/// assert!(ON.retries(ErrorClass::Timeout));
/// assert!(!ON.retries(ErrorClass::Status(400)));
/// assert!(!ON.retries(ErrorClass::Transport));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryOn {
    codes: &'static [CodeRange],
    timeout: bool,
    transport: bool,
}

impl RetryOn {
    /// The default set: 408, 409, 429, 500..=599, timeouts and transport errors.
    pub const DEFAULT: RetryOn = RetryOn {
        codes: &[
            CodeRange::single(408),
            CodeRange::single(409),
            CodeRange::single(429),
            CodeRange::range(500, 599),
        ],
        timeout: true,
        transport: true,
    };

    /// A set of status code ranges, plus whether timeouts and transport errors are retried.
    pub const fn new(codes: &'static [CodeRange], timeout: bool, transport: bool) -> Self {
        Self {
            codes,
            timeout,
            transport,
        }
    }

    /// Whether an error of this class is worth another attempt under this set.
    ///
    /// `Permanent` and `Other` are never retried: the first says so, the second is an error
    /// the classifier could not place, and retrying the unknown is how retry storms start.
    pub const fn retries(&self, class: ErrorClass) -> bool {
        match class {
            ErrorClass::Status(code) => {
                let mut i = 0;
                while i < self.codes.len() {
                    if self.codes[i].contains(code) {
                        return true;
                    }
                    i += 1;
                }
                false
            }
            ErrorClass::Timeout => self.timeout,
            ErrorClass::Transport => self.transport,
            ErrorClass::Permanent | ErrorClass::Other => false,
        }
    }

    /// The status code ranges in this set.
    pub const fn codes(&self) -> &'static [CodeRange] {
        self.codes
    }
}

impl Default for RetryOn {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A complete retry policy. Built by `#[resilient]` as a `static`; can also be built by hand
/// with the `const` builders and used with [`retry`](crate::retry).
///
/// ```
/// use std::time::Duration;
/// use retry_runtime::{Backoff, Policy};
///
/// static POLICY: Policy = Policy::new("complete")
///     .with_backoff(Backoff::ExpJitter)
///     .with_max_attempts(5)
///     .with_base(Duration::from_millis(200))
///     .with_cap(Duration::from_secs(10))
///     .with_timeout(Duration::from_secs(20));
/// assert_eq!(POLICY.max_attempts(), 5);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub(crate) name: &'static str,
    pub(crate) site: &'static str,
    pub(crate) backoff: Backoff,
    pub(crate) max_attempts: u32,
    pub(crate) base: Duration,
    pub(crate) cap: Duration,
    pub(crate) timeout: Option<Duration>,
    pub(crate) deadline: Option<Duration>,
    pub(crate) max_retry_after: Duration,
    pub(crate) retry_on: RetryOn,
    pub(crate) breaker: Option<&'static str>,
    pub(crate) budget: Option<Budget>,
    pub(crate) max_cost: Option<Budget>,
    pub(crate) pool: Option<&'static str>,
    pub(crate) pace: Option<&'static str>,
    pub(crate) stale_for: Duration,
    pub(crate) queue_wait: Duration,
    pub(crate) first_token: Option<Duration>,
    pub(crate) idle: Option<Duration>,
}

/// The environment variable that turns retries off for the whole process
/// (`RETRY_RUNTIME_NO_RETRIES=1`): every call makes one attempt, with no backoff.
pub const NO_RETRIES_ENV: &str = "RETRY_RUNTIME_NO_RETRIES";

// 0: not decided yet (read the environment once), 1: retries on, 2: off.
static RETRIES: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Turn retries on or off for the whole process (tests: a failing call then fails at once).
pub(crate) fn set_retries(enabled: bool) {
    RETRIES.store(
        if enabled { 1 } else { 2 },
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// Whether retries are off for the process (asked only after a failed attempt).
pub(crate) fn retries_disabled() -> bool {
    use std::sync::atomic::Ordering::Relaxed;
    match RETRIES.load(Relaxed) {
        0 => {
            let off = std::env::var(NO_RETRIES_ENV).is_ok_and(|v| matches!(v.trim(), "1" | "true"));
            let _ = RETRIES.compare_exchange(0, if off { 2 } else { 1 }, Relaxed, Relaxed);
            RETRIES.load(Relaxed) == 2
        }
        state => state == 2,
    }
}

impl Policy {
    /// Largest `max` the attribute accepts (20): past that a call is not retrying, it is
    /// polling, and belongs in a queue.
    pub const MAX_ATTEMPTS_LIMIT: u32 = retry_grammar::MAX_ATTEMPTS;

    /// The defaults: full jitter, 3 attempts, base 500 ms, cap 30 s, no timeout,
    /// no deadline, `Retry-After` honoured up to 60 s, the default retryable set.
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            site: name,
            backoff: Backoff::ExpJitter,
            max_attempts: 3,
            base: Duration::from_millis(500),
            cap: Duration::from_secs(30),
            timeout: None,
            deadline: None,
            max_retry_after: Duration::from_secs(60),
            retry_on: RetryOn::DEFAULT,
            breaker: None,
            budget: None,
            max_cost: None,
            pool: None,
            pace: None,
            stale_for: Duration::from_secs(3600),
            queue_wait: Duration::from_secs(60),
            first_token: None,
            idle: None,
        }
    }

    /// Which backoff formula spaces the retries.
    pub const fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Attempts including the first; clamped to `1..=20`.
    pub const fn with_max_attempts(mut self, max: u32) -> Self {
        self.max_attempts = if max == 0 {
            1
        } else if max > Self::MAX_ATTEMPTS_LIMIT {
            Self::MAX_ATTEMPTS_LIMIT
        } else {
            max
        };
        self
    }

    /// The first retry's backoff scale.
    pub const fn with_base(mut self, base: Duration) -> Self {
        self.base = base;
        self
    }

    /// The largest backoff delay.
    pub const fn with_cap(mut self, cap: Duration) -> Self {
        self.cap = cap;
        self
    }

    /// Time limit of each attempt; a timed-out attempt is [`ErrorClass::Timeout`].
    pub const fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Time limit of the whole call, waits included.
    pub const fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Longest server-requested wait (`Retry-After`) honoured; a longer one stops the call.
    pub const fn with_max_retry_after(mut self, max: Duration) -> Self {
        self.max_retry_after = max;
        self
    }

    /// What is retryable.
    pub const fn with_retry_on(mut self, retry_on: RetryOn) -> Self {
        self.retry_on = retry_on;
        self
    }

    /// Route every attempt through the named, process-wide circuit breaker (and its retry
    /// budget). Names are `[a-z0-9_-]{1,64}`; settings come from [`configure`](crate::configure).
    pub const fn with_breaker(mut self, name: &'static str) -> Self {
        self.breaker = Some(name);
        self
    }

    /// Cap what one call may spend: a retry whose expected cost would not fit is not made.
    pub const fn with_budget(mut self, budget: Budget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Charge every attempt to the named spend pool (configured at run time).
    pub const fn with_pool(mut self, name: &'static str) -> Self {
        self.pool = Some(name);
        self
    }

    /// Wait for a permit from the named, shared pacer before every attempt.
    pub const fn with_pace(mut self, name: &'static str) -> Self {
        self.pace = Some(name);
        self
    }

    /// The pacer's name, if any.
    pub const fn pace(&self) -> Option<&'static str> {
        self.pace
    }

    /// Oldest cached answer `fallback = cached` may serve (default one hour).
    pub const fn with_stale_for(mut self, stale_for: Duration) -> Self {
        self.stale_for = stale_for;
        self
    }

    /// Longest a `fallback = queue` caller waits for its breaker (default 60 s).
    pub const fn with_queue_wait(mut self, queue_wait: Duration) -> Self {
        self.queue_wait = queue_wait;
        self
    }

    /// Oldest cached answer that may be served.
    pub const fn stale_for(&self) -> Duration {
        self.stale_for
    }

    /// A streaming call: the longest an attempt may go without its first chunk.
    pub const fn with_first_token(mut self, first_token: Duration) -> Self {
        self.first_token = Some(first_token);
        self
    }

    /// A streaming call: the longest gap between two chunks once the stream has begun.
    pub const fn with_idle(mut self, idle: Duration) -> Self {
        self.idle = Some(idle);
        self
    }

    /// A streaming call's `first_token`.
    pub const fn first_token(&self) -> Option<Duration> {
        self.first_token
    }

    /// A streaming call's `idle`.
    pub const fn idle(&self) -> Option<Duration> {
        self.idle
    }

    /// Longest wait in the breaker's queue.
    pub const fn queue_wait(&self) -> Duration {
        self.queue_wait
    }

    /// The most one attempt can cost (`max_cost = "0.002usd"`): what pools and workflows
    /// reserve for an attempt until the call site has seen a costlier one, so that no burst of
    /// calls passes a limit, and an unknown-cost site need not be admitted one at a time.
    pub const fn with_max_cost(mut self, max_cost: Budget) -> Self {
        self.max_cost = Some(max_cost);
        self
    }

    /// The most one attempt can cost, if the policy says.
    pub const fn max_cost(&self) -> Option<Budget> {
        self.max_cost
    }

    /// The per-call spend cap, if any.
    pub const fn budget(&self) -> Option<Budget> {
        self.budget
    }

    /// The spend pool's name, if any.
    pub const fn pool(&self) -> Option<&'static str> {
        self.pool
    }

    /// The circuit breaker's name, if any.
    pub const fn breaker(&self) -> Option<&'static str> {
        self.breaker
    }

    /// The call site's label in reports, events and metrics: its `name = "…"`, or the
    /// function's `module::fn`.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// Where the call site is written (`module::fn at file:line`), for the WARN that two sites
    /// report under one label.
    pub const fn with_site(mut self, site: &'static str) -> Self {
        self.site = site;
        self
    }

    /// Where the call site is written (its label, when built by hand without `with_site`).
    pub const fn site(&self) -> &'static str {
        self.site
    }

    /// Attempts including the first.
    pub const fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The backoff formula.
    pub const fn backoff(&self) -> Backoff {
        self.backoff
    }

    /// The backoff base.
    pub const fn base(&self) -> Duration {
        self.base
    }

    /// The backoff cap (never below the base).
    pub const fn cap(&self) -> Duration {
        if self.cap.as_nanos() < self.base.as_nanos() {
            self.base
        } else {
            self.cap
        }
    }

    /// Per-attempt timeout, if any.
    pub const fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Whole-call deadline, if any.
    pub const fn deadline(&self) -> Option<Duration> {
        self.deadline
    }

    /// Largest honoured `Retry-After`.
    pub const fn max_retry_after(&self) -> Duration {
        self.max_retry_after
    }

    /// The retryable set.
    pub const fn retry_on(&self) -> RetryOn {
        self.retry_on
    }
}
