//! Policies built at run time: a builder, and the configuration's `[policy.NAME]` sections,
//! checked by the attribute's own rules (`retry_grammar::policy`), refused in its words.

use std::fmt;
use std::time::Duration;

use retry_grammar::policy as rules;

use crate::backoff::Backoff;
use crate::policy::{CodeRange, Policy, RetryOn};
use crate::spend::{Budget, Unit};

/// A retry policy built at run time: from code, or from a `[policy.NAME]` section of the
/// configuration ([`Config::policy`](crate::Config::policy),
/// [`CallSite::configured`](crate::CallSite::configured)). The attribute stays the first
/// way in (checked at compile time, no lookup); this is for policies that live in
/// configuration, and for the HTTP-layer integrations.
///
/// Every value is checked by the same rules as `#[resilient]` and `#[retry_on]`, and refused
/// in the same words; [`build`](Self::build) reports every problem at once. What it builds is
/// a [`CallSite`](crate::CallSite) for the one executor ([`retry`](crate::retry), the integrations' layers): the
/// same loop, backoff, breaker, pacer, pools and reports as the attribute's.
/// [`CallSite::configured`](crate::CallSite::configured) builds the installed configuration's.
///
/// The keys are the attribute's, less what only code can say: `fallback` (and `stale_for`,
/// `queue_wait`, `key`) and the streaming keys (`first_token`, `idle`) are written at the call
/// site, with the attribute.
///
/// ```
/// use std::time::Duration;
/// use retry_runtime::{retry, Backoff, Classify, ErrorClass, Policy, Rejected};
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
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let site = Policy::builder("complete")
///     .backoff(Backoff::ExpJitter)
///     .max_attempts(4)
///     .base(Duration::from_millis(1))
///     .retry_on("429, 500..=599, timeout")
///     .build()
///     .unwrap();
///
/// let mut calls = 0;
/// let answer = retry(site, || {
///     calls += 1;
///     let busy = calls < 3;
///     async move { if busy { Err(E::Busy) } else { Ok(42) } }
/// })
/// .await;
/// assert_eq!((answer.unwrap(), calls), (42, 3));
///
/// // The attribute's rules, in its words:
/// let error = Policy::builder("bad").max_attempts(0).retry_on("400").build().unwrap_err();
/// assert!(error.to_string().contains("`max = 0` would never call the function"), "{error}");
/// assert!(error.to_string().contains("400` is Bad Request"), "{error}");
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyBuilder {
    name: String,
    backoff: Backoff,
    max: u64,
    base: Option<Duration>,
    cap: Option<Duration>,
    timeout: Option<Duration>,
    deadline: Option<Duration>,
    max_retry_after: Option<Duration>,
    retry_on: Option<Vec<Retryable>>,
    breaker: Option<String>,
    budget: Option<Budget>,
    max_cost: Option<Budget>,
    pool: Option<String>,
    pace: Option<String>,
}

/// One item of a retry list, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Retryable {
    /// A status code, and how it was written.
    Code(u64, String),
    /// An inclusive range, both ends as written.
    Range((u64, String), (u64, String)),
    /// `timeout`.
    Timeout,
    /// `transport`.
    Transport,
    /// Anything else, as written.
    Unreadable(String),
}

impl Retryable {
    /// One item of the attribute's list syntax: `429`, `500..=599`, `timeout`, `transport`.
    pub(crate) fn read(item: &str) -> Retryable {
        let item = item.trim();
        let code = |s: &str| {
            let s = s.trim();
            s.parse::<u64>()
                .ok()
                .filter(|_| !s.is_empty())
                .map(|n| (n, s.to_string()))
        };
        match item {
            "timeout" => Retryable::Timeout,
            "transport" => Retryable::Transport,
            _ => {
                if let Some((a, b)) = item.split_once("..=") {
                    match (code(a), code(b)) {
                        (Some(a), Some(b)) => Retryable::Range(a, b),
                        _ => Retryable::Unreadable(item.to_string()),
                    }
                } else if let Some(c) = code(item) {
                    Retryable::Code(c.0, c.1)
                } else {
                    Retryable::Unreadable(item.to_string())
                }
            }
        }
    }
}

/// One thing wrong with a policy: the key it is about, and what the attribute would say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyProblem {
    /// The key (`max`, `retry_on`, ...), or `name` for the policy's name.
    pub key: &'static str,
    /// What is wrong, in the attribute's words.
    pub message: String,
}

/// Why a policy was not built: every problem found, in the order of its keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy `{policy}`: {}", .problems.iter().map(|p| format!("{}: {}", p.key, p.message)).collect::<Vec<_>>().join("; "))]
pub struct PolicyError {
    /// The policy's name.
    pub policy: String,
    /// What is wrong, one entry per problem.
    pub problems: Vec<PolicyProblem>,
}

impl Policy {
    /// Build a policy at run time (see [`PolicyBuilder`]); `name` is its label in reports,
    /// events and metrics, as the attribute's `name = "…"`.
    pub fn builder(name: &str) -> PolicyBuilder {
        PolicyBuilder {
            name: name.to_string(),
            backoff: Backoff::ExpJitter,
            max: 3,
            base: None,
            cap: None,
            timeout: None,
            deadline: None,
            max_retry_after: None,
            retry_on: None,
            breaker: None,
            budget: None,
            max_cost: None,
            pool: None,
            pace: None,
        }
    }
}

impl PolicyBuilder {
    /// `backoff`: which formula spaces the retries (default full jitter).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// `max`: attempts including the first, 1 to 20 (default 3).
    pub fn max_attempts(mut self, max: u32) -> Self {
        self.max = u64::from(max);
        self
    }

    /// `base`: the first retry's backoff scale (default 500 ms).
    pub fn base(mut self, base: Duration) -> Self {
        self.base = Some(base);
        self
    }

    /// `cap`: the longest backoff delay (default 30 s).
    pub fn cap(mut self, cap: Duration) -> Self {
        self.cap = Some(cap);
        self
    }

    /// `timeout`: the time limit of each attempt.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// `deadline`: the time limit of the whole call, waits included.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// `max_retry_after`: the longest `Retry-After` honoured (default 60 s).
    pub fn max_retry_after(mut self, max: Duration) -> Self {
        self.max_retry_after = Some(max);
        self
    }

    /// What is retried, in `#[retry_on]`'s syntax: `"429, 500..=599, timeout, transport"`
    /// (default: 408, 409, 429, 500..=599, timeout, transport).
    pub fn retry_on(mut self, list: &str) -> Self {
        let items = if list.trim().is_empty() {
            Vec::new()
        } else {
            list.split(',').map(Retryable::read).collect()
        };
        self.retry_on = Some(items);
        self
    }

    /// The retry list as the configuration read it, item by item.
    pub(crate) fn retry_items(mut self, items: Vec<Retryable>) -> Self {
        self.retry_on = Some(items);
        self
    }

    /// `breaker`: route every attempt through the named circuit breaker.
    pub fn breaker(mut self, name: &str) -> Self {
        self.breaker = Some(name.to_string());
        self
    }

    /// `budget`: the most one call may spend.
    pub fn budget(mut self, budget: Budget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// `max_cost`: the most one attempt can cost (what pools and workflows reserve).
    pub fn max_cost(mut self, max_cost: Budget) -> Self {
        self.max_cost = Some(max_cost);
        self
    }

    /// `pool`: charge every attempt to the named spend pool.
    pub fn pool(mut self, name: &str) -> Self {
        self.pool = Some(name.to_string());
        self
    }

    /// `pace`: wait for a permit from the named pacer before every attempt.
    pub fn pace(mut self, name: &str) -> Self {
        self.pace = Some(name.to_string());
        self
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Check every value by the attribute's rules; every problem, in key order.
    pub fn check(&self) -> Result<(), PolicyError> {
        self.checked().map(|_| ())
    }

    /// The policy, checked, with its names kept for the life of the process.
    fn policy(&self) -> Result<Policy, PolicyError> {
        let checked = self.checked()?;
        let label = leak(&self.name);
        let mut policy = Policy::new(label)
            .with_site(leak(&format!("{label} (built at run time)")))
            .with_backoff(self.backoff)
            .with_max_attempts(checked.max)
            .with_base(checked.base)
            .with_cap(checked.cap)
            .with_max_retry_after(checked.max_retry_after);
        if let Some(t) = self.timeout {
            policy = policy.with_timeout(t);
        }
        if let Some(d) = self.deadline {
            policy = policy.with_deadline(d);
        }
        if let Some((codes, timeout, transport)) = checked.retry_on {
            let codes: &'static [CodeRange] = Box::leak(codes.into_boxed_slice());
            policy = policy.with_retry_on(RetryOn::new(codes, timeout, transport));
        }
        if let Some(name) = &self.breaker {
            policy = policy.with_breaker(leak(name));
        }
        if let Some(b) = self.budget {
            policy = policy.with_budget(b);
        }
        if let Some(c) = self.max_cost {
            policy = policy.with_max_cost(c);
        }
        if let Some(name) = &self.pool {
            policy = policy.with_pool(leak(name));
        }
        if let Some(name) = &self.pace {
            policy = policy.with_pace(leak(name));
        }
        Ok(policy)
    }

    /// The policy, checked as [`check`](Self::check) does, its names kept for the life of the
    /// process; [`build`](Self::build) makes it a call site.
    pub(crate) fn leak_policy(&self) -> Result<&'static Policy, PolicyError> {
        Ok(Box::leak(Box::new(self.policy()?)))
    }

    fn checked(&self) -> Result<Checked, PolicyError> {
        let mut problems = Vec::new();
        let mut problem =
            |key: &'static str, message: String| problems.push(PolicyProblem { key, message });
        if let Err(why) = rules::site_name(&self.name) {
            problem("name", why);
        }
        let max = rules::max_attempts(self.max).unwrap_or_else(|why| {
            problem("max", why);
            3
        });
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        for (key, d) in [
            ("base", self.base),
            ("cap", self.cap),
            ("timeout", self.timeout),
            ("deadline", self.deadline),
            ("max_retry_after", self.max_retry_after),
        ] {
            let Some(d) = d else { continue };
            if let Err(why) = rules::duration(key, nanos(d)) {
                problem(key, why);
            }
        }
        let retry_on = match &self.retry_on {
            Some(items) => retry_list(items, &mut problem),
            None => None,
        };
        for (key, name) in [
            ("breaker", &self.breaker),
            ("pool", &self.pool),
            ("pace", &self.pace),
        ] {
            if let Some(Err(why)) = name.as_deref().map(|n| rules::shared_name(key, n)) {
                problem(key, why);
            }
        }
        for (key, budget) in [("budget", self.budget), ("max_cost", self.max_cost)] {
            let Some(budget) = budget else { continue };
            let tokens = budget.unit() == Unit::Tokens;
            if let Err(why) = rules::budget_amount(key, budget.amount(), tokens) {
                problem(key, why);
            }
        }
        let defaults = Policy::new("");
        let base = self.base.unwrap_or(defaults.base);
        let cap = self.cap.unwrap_or(defaults.cap);
        let (base_set, cap_set) = (self.base.is_some(), self.cap.is_some());
        if let Err((_, why)) = rules::base_within_cap(nanos(base), nanos(cap), base_set, cap_set) {
            problem(if cap_set { "cap" } else { "base" }, why);
        }
        if let (Some(t), Some(d)) = (self.timeout, self.deadline) {
            if let Err(why) = rules::timeout_within_deadline(nanos(t), nanos(d)) {
                problem("timeout", why);
            }
        }
        if !problems.is_empty() {
            return Err(PolicyError {
                policy: self.name.clone(),
                problems,
            });
        }
        Ok(Checked {
            max,
            base,
            cap,
            max_retry_after: self.max_retry_after.unwrap_or(defaults.max_retry_after),
            retry_on,
        })
    }
}

/// What checking found, owned: `PolicyBuilder::policy` keeps it.
struct Checked {
    max: u32,
    base: Duration,
    cap: Duration,
    max_retry_after: Duration,
    /// Code ranges, `timeout`, `transport`.
    retry_on: Option<(Vec<CodeRange>, bool, bool)>,
}

/// The retry list, checked item by item as `#[retry_on]` checks it.
fn retry_list(
    items: &[Retryable],
    problem: &mut impl FnMut(&'static str, String),
) -> Option<(Vec<CodeRange>, bool, bool)> {
    let key = "retry_on";
    if items.is_empty() {
        problem(key, rules::EMPTY_RETRY_ON.to_string());
        return None;
    }
    let (mut ranges, mut timeout, mut transport) = (Vec::new(), false, false);
    let add = |ranges: &mut Vec<(u16, u16)>, a: u16, b: u16, problem: &mut dyn FnMut(String)| {
        match rules::not_listed(ranges, a, b) {
            Ok(()) => ranges.push((a, b)),
            Err(why) => problem(why),
        }
    };
    let mut ok = true;
    for item in items {
        let mut say = |why: String| {
            ok = false;
            problem(key, why)
        };
        match item {
            Retryable::Code(code, written) => match rules::retry_code(*code, written) {
                Ok(code) => add(&mut ranges, code, code, &mut say),
                Err(why) => say(why),
            },
            Retryable::Range((a, wa), (b, wb)) => {
                let ends = (rules::error_code(*a, wa), rules::error_code(*b, wb));
                match ends {
                    (Ok(a), Ok(b)) => match rules::retry_range(a, b) {
                        Ok(()) => add(&mut ranges, a, b, &mut say),
                        Err(why) => say(why),
                    },
                    (Err(why), _) | (_, Err(why)) => say(why),
                }
            }
            Retryable::Timeout | Retryable::Transport => {
                let (word, flag) = if *item == Retryable::Timeout {
                    ("timeout", &mut timeout)
                } else {
                    ("transport", &mut transport)
                };
                if std::mem::replace(flag, true) {
                    say(format!("`{word}` {}", rules::LISTED_TWICE));
                }
            }
            Retryable::Unreadable(written) => say(format!(
                "`{written}`: #[retry_on] takes status codes (`429`), inclusive ranges (`500..=599`), `timeout` and `transport`"
            )),
        }
    }
    if !ok {
        return None;
    }
    let codes: Vec<CodeRange> = ranges
        .into_iter()
        .map(|(a, b)| CodeRange::range(a, b))
        .collect();
    Some((codes, timeout, transport))
}

fn leak(text: &str) -> &'static str {
    Box::leak(text.to_string().into_boxed_str())
}

impl fmt::Display for PolicyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoffs_are_spelled_as_the_attribute_spells_them() {
        let spelled: Vec<&str> = Backoff::ALL.iter().map(Backoff::as_str).collect();
        assert_eq!(spelled, rules::BACKOFFS);
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let error = Policy::builder("two words")
            .max_attempts(21)
            .base(Duration::from_secs(40))
            .timeout(Duration::from_secs(10))
            .deadline(Duration::from_secs(5))
            .breaker("OpenAI")
            .budget(Budget::micros(0))
            .retry_on("429, 500..=599, 503, 400, 200, timeout, timeout, sometimes")
            .check()
            .unwrap_err();
        let keys: Vec<&str> = error.problems.iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "name", "max", "retry_on", "retry_on", "retry_on", "retry_on", "retry_on",
                "breaker", "budget", "base", "timeout"
            ],
            "{error}"
        );
        let text = error.to_string();
        for wants in [
            "`max = 21` is too many attempts",
            "duplicate: already covered by `500..=599`",
            "`400` is Bad Request",
            "`200` is a success (2xx)",
            "`timeout` listed twice",
            "`sometimes`: #[retry_on] takes status codes",
            "breaker name `OpenAI` may use only lowercase letters",
            "a zero budget would forbid every retry",
            "`base` is longer than the default `cap` of 30s",
            "`timeout` is longer than `deadline`",
        ] {
            assert!(text.contains(wants), "{wants}: {text}");
        }
    }

    #[test]
    fn a_built_policy_holds_what_it_was_given() {
        let site = Policy::builder("built.holds")
            .backoff(Backoff::Constant)
            .max_attempts(5)
            .base(Duration::from_millis(200))
            .cap(Duration::from_secs(2))
            .max_retry_after(Duration::from_secs(7))
            .retry_on("429, 500..=504, transport")
            .pool("hourly")
            .pace("openai")
            .max_cost(Budget::micros(2_000))
            .build()
            .unwrap();
        let p = site.policy();
        assert_eq!(p.name(), "built.holds");
        assert_eq!((p.backoff(), p.max_attempts()), (Backoff::Constant, 5));
        assert_eq!(
            (p.base(), p.cap()),
            (Duration::from_millis(200), Duration::from_secs(2))
        );
        assert_eq!(p.max_retry_after(), Duration::from_secs(7));
        assert_eq!(
            (p.pool(), p.pace(), p.breaker()),
            (Some("hourly"), Some("openai"), None)
        );
        assert_eq!(p.max_cost(), Some(Budget::micros(2_000)));
        let on = p.retry_on();
        assert!(on.retries(crate::ErrorClass::Status(504)));
        assert!(!on.retries(crate::ErrorClass::Status(505)));
        assert!(on.retries(crate::ErrorClass::Transport));
        assert!(!on.retries(crate::ErrorClass::Timeout));
        // The defaults are the attribute's.
        let d = Policy::builder("built.defaults").build().unwrap().policy();
        let a = Policy::new("built.defaults");
        assert_eq!(
            (
                d.max_attempts(),
                d.base(),
                d.cap(),
                d.retry_on(),
                d.max_retry_after()
            ),
            (
                a.max_attempts(),
                a.base(),
                a.cap(),
                a.retry_on(),
                a.max_retry_after()
            )
        );
    }
}
