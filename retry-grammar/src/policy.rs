//! The rules a retry policy's values obey, and how each refusal is worded: the `#[resilient]`
//! and `#[retry_on]` attributes check them at compile time (pointing at the offending token),
//! a policy built at run time (a builder, a `[policy.NAME]` section) checks them when it is
//! built (naming the key). One set of rules, so that a policy one accepts the other accepts
//! too, and both refuse it in the same words.
//!
//! ```
//! use retry_grammar::policy;
//!
//! assert_eq!(policy::max_attempts(5), Ok(5));
//! assert!(policy::max_attempts(0).unwrap_err().contains("use 1 for no retries"));
//! assert!(policy::retry_code(400, "400").unwrap_err().contains("Bad Request"));
//! assert_eq!(policy::budget("budget", "0.10usd").map(|b| b.amount), Ok(100_000));
//! ```

use crate::{amount, valid_name, AmountError, AmountUnit, MAX_ATTEMPTS, NAME_MAX_LEN};

/// The backoff formulas, as written (`backoff = "exp_jitter"`), in the order the docs list them.
pub const BACKOFFS: &[&str] = &[
    "exp_jitter",
    "equal_jitter",
    "decorrelated_jitter",
    "exp",
    "constant",
];

/// Which of [`BACKOFFS`] `name` is.
pub fn backoff(name: &str) -> Result<usize, String> {
    BACKOFFS.iter().position(|b| *b == name).ok_or_else(|| {
        format!(
            "unknown backoff `{name}`; use one of: {}",
            BACKOFFS
                .iter()
                .map(|n| format!("\"{n}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// `max`: attempts including the first, 1 to [`MAX_ATTEMPTS`].
pub fn max_attempts(max: u64) -> Result<u32, String> {
    match max {
        0 => Err("`max = 0` would never call the function: `max` counts attempts including the first, so use 1 for no retries".into()),
        v if v > u64::from(MAX_ATTEMPTS) => Err(format!(
            "`max = {v}` is too many attempts: at most {MAX_ATTEMPTS}; past that a call is polling, not retrying"
        )),
        v => Ok(v as u32),
    }
}

/// The duration keys that must be longer than zero (`cap` and `max_retry_after` may be zero:
/// no wait, no honoured `Retry-After`).
pub const POSITIVE_DURATIONS: &[&str] = &[
    "base",
    "timeout",
    "deadline",
    "stale_for",
    "queue_wait",
    "first_token",
    "idle",
];

/// A duration of `key`, in nanoseconds: at most [`LONGEST_NANOS`](crate::LONGEST_NANOS), and
/// longer than zero if the key says so.
pub fn duration(key: &str, nanos: u64) -> Result<u64, String> {
    if nanos > crate::LONGEST_NANOS {
        Err(format!("`{key}` is longer than the limit of one day"))
    } else if nanos == 0 && POSITIVE_DURATIONS.contains(&key) {
        Err(format!("`{key}` must be longer than zero"))
    } else {
        Ok(nanos)
    }
}

/// A duration of `key` as written (`timeout = "20s"`), in nanoseconds; the error quotes the
/// key and value and says how to write one. Its limits are [`duration`]'s, checked apart.
pub fn written_duration(key: &str, text: &str) -> Result<u64, String> {
    crate::duration_nanos(text)
        .map_err(|why| format!("`{key} = \"{text}\"`: {why}; {}", crate::DURATION_HINT))
}

/// How each key is written, for messages.
pub fn example(key: &str) -> &'static str {
    match key {
        "backoff" => "backoff = \"exp_jitter\"",
        "max" => "max = 5",
        "base" => "base = \"500ms\"",
        "cap" => "cap = \"30s\"",
        "timeout" => "timeout = \"20s\"",
        "deadline" => "deadline = \"2m\"",
        "max_retry_after" => "max_retry_after = \"60s\"",
        "breaker" => "breaker = \"openai\"",
        "budget" => "budget = \"0.10usd\"",
        "max_cost" => "max_cost = \"0.002usd\"",
        "pool" => "pool = \"openai-hourly\"",
        "pace" => "pace = \"openai\"",
        "fallback" => "fallback = cached",
        "stale_for" => "stale_for = \"1h\"",
        "queue_wait" => "queue_wait = \"60s\"",
        "first_token" => "first_token = \"10s\"",
        "idle" => "idle = \"30s\"",
        "key" => "key = prompt.to_string()",
        "name" => "name = \"openai.complete\"",
        "crate" => "crate = \"::retry_runtime\"",
        _ => "key = value",
    }
}

/// The name of a breaker, pool or pacer (`key` is `breaker`, `pool` or `pace`).
pub fn shared_name(key: &str, name: &str) -> Result<(), String> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(format!(
            "{key} name `{name}` may use only lowercase letters, digits, `_` and `-` (1 to {NAME_MAX_LEN} characters), e.g. `{}`",
            example(key)
        ))
    }
}

/// A call site's label in reports, events and metrics (`name = "openai.complete"`).
pub fn site_name(label: &str) -> Result<(), String> {
    let bad = label.chars().find(|c| {
        c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '{' | '}' | '=' | ',')
    });
    if label.is_empty() || label.len() > 128 {
        Err(format!("`name = \"{label}\"`: a call site's name is 1 to 128 characters, e.g. `name = \"openai.complete\"`"))
    } else if let Some(c) = bad {
        Err(format!("`name = \"{label}\"`: {c:?} cannot be part of a metric label value here; use letters, digits, `.`, `_`, `-`, `:`, `/`"))
    } else {
        Ok(())
    }
}

/// A per-call amount: micro-dollars, or tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallAmount {
    /// Micro-dollars or tokens.
    pub amount: u64,
    /// Whether `amount` is tokens.
    pub tokens: bool,
}

/// Largest per-call amount: $1,000, or 100 million tokens. A per-call cap above that is no cap.
pub const MAX_CALL_MICROS: u64 = 1_000 * 1_000_000;
/// See [`MAX_CALL_MICROS`].
pub const MAX_CALL_TOKENS: u64 = 100_000_000;

/// `budget` or `max_cost` (`key`), written `"0.10usd"`, `"5usd"` or `"20000tok"`; the error
/// quotes the key and value.
pub fn budget(key: &str, text: &str) -> Result<CallAmount, String> {
    call_amount(text).map_err(|why| {
        if key == "max_cost" && why.starts_with("a zero budget") {
            format!("`max_cost = \"{text}\"`: an attempt that costs nothing reserves nothing; leave `max_cost` out")
        } else {
            format!("`{key} = \"{text}\"`: {why}")
        }
    })
}

/// `budget` or `max_cost` (`key`) given as a number already (micro-dollars or tokens): the
/// same limits as [`budget`], in the same words.
pub fn budget_amount(key: &str, amount: u64, tokens: bool) -> Result<CallAmount, String> {
    let text = if tokens {
        format!("{amount}tok")
    } else {
        format!("{}.{:06}usd", amount / 1_000_000, amount % 1_000_000)
    };
    budget(key, &text)
}

fn call_amount(text: &str) -> Result<CallAmount, String> {
    let forms = "write dollars as \"0.10usd\" or tokens as \"20000tok\"";
    let (number, tokens) = if let Some(n) = text.strip_suffix("usd") {
        (n, false)
    } else if let Some(n) = text.strip_suffix("tok") {
        (n, true)
    } else {
        let unit = text.trim_start_matches(|c: char| c.is_ascii_digit() || c == '.' || c == '-');
        return Err(if unit.is_empty() {
            format!("no unit; {forms}")
        } else {
            format!("unknown unit `{unit}`; {forms}")
        });
    };
    if number.starts_with('-') {
        return Err(format!("a budget cannot be negative; {forms}"));
    }
    let out_of_range =
        || "out of range: a per-call budget is at most \"1000usd\" or \"100000000tok\"".to_string();
    let (unit, max) = if tokens {
        (AmountUnit::Tokens, MAX_CALL_TOKENS)
    } else {
        (AmountUnit::Usd, MAX_CALL_MICROS)
    };
    let amount = match amount(number, unit, max) {
        Ok(amount) => amount,
        Err(AmountError::NotPlain) => {
            // `1e9usd`: say what is wrong with the value, not only with its spelling.
            let limit = if tokens {
                MAX_CALL_TOKENS as f64
            } else {
                1_000.0
            };
            return Err(match number.parse::<f64>() {
                Ok(v) if v > limit => format!("{}; {forms}", out_of_range()),
                _ => format!("`{number}` is not a plain decimal amount; {forms}"),
            });
        }
        Err(AmountError::FractionalTokens) => {
            return Err("tokens are whole numbers, e.g. \"20000tok\"".into())
        }
        Err(AmountError::TooManyDecimals) => {
            return Err("more than six decimals: dollars are counted in micro-dollars".into())
        }
        Err(AmountError::TooLarge) => return Err(out_of_range()),
    };
    if amount == 0 {
        return Err("a zero budget would forbid every retry; use `max = 1` for no retries".into());
    }
    Ok(CallAmount { amount, tokens })
}

/// Which of `base` and `cap` a refusal of the pair belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// `cap`, as written.
    Cap,
    /// `base`, as written (the `cap` is the default).
    Base,
    /// Neither was written (cannot happen with the defaults; kept for hand-built policies).
    Neither,
}

/// `base` must not be longer than `cap` (`*_set`: whether each was written, to blame the one
/// the user wrote).
pub fn base_within_cap(
    base: u64,
    cap: u64,
    base_set: bool,
    cap_set: bool,
) -> Result<(), (Blame, String)> {
    if base <= cap {
        return Ok(());
    }
    let (blame, what) = if cap_set {
        (Blame::Cap, "`cap` is shorter than `base`")
    } else if base_set {
        (
            Blame::Base,
            "`base` is longer than the default `cap` of 30s",
        )
    } else {
        (Blame::Neither, "`base` is longer than `cap`")
    };
    Err((
        blame,
        format!("{what}: the backoff could never reach its base; make `base` <= `cap`"),
    ))
}

/// `timeout` must not be longer than `deadline`.
pub fn timeout_within_deadline(timeout: u64, deadline: u64) -> Result<(), String> {
    if timeout > deadline {
        Err(
            "`timeout` is longer than `deadline`, so it could never apply; shorten it or drop it"
                .into(),
        )
    } else {
        Ok(())
    }
}

/// Caller-fault 4xx codes: retrying them sends the same wrong request again, and pays again.
pub const CALLER_FAULTS: &[(u16, &str)] = &[
    (400, "Bad Request: the request itself is malformed"),
    (401, "Unauthorized: the credentials are wrong"),
    (403, "Forbidden: the account may not do this"),
    (404, "Not Found: the model or endpoint does not exist"),
    (413, "Payload Too Large: the request is too big"),
    (422, "Unprocessable Entity: the request is invalid"),
];

const CALLER_FAULT_WHY: &str = "a caller fault fails the same way every time, so retrying it only wastes money and quota. Remove it from #[retry_on]";

/// A 4xx or 5xx code (`written`: the code as the user wrote it).
pub fn error_code(code: u64, written: &str) -> Result<u16, String> {
    let code = match u16::try_from(code) {
        Ok(code) if (100..=599).contains(&code) => code,
        _ => {
            return Err(format!(
                "`{written}` is not an HTTP status code: codes run from 100 to 599"
            ))
        }
    };
    if code < 400 {
        let kind = match code {
            100..=199 => "an informational (1xx) response",
            200..=299 => "a success (2xx)",
            _ => "a redirect (3xx), which the HTTP client follows",
        };
        return Err(format!(
            "`{code}` is {kind}, not a failure: only 4xx and 5xx codes can be retried"
        ));
    }
    Ok(code)
}

/// One listed code: an error code that is not a caller fault.
pub fn retry_code(code: u64, written: &str) -> Result<u16, String> {
    let code = error_code(code, written)?;
    match CALLER_FAULTS.iter().find(|(c, _)| *c == code) {
        Some((_, why)) => Err(format!("`{code}` is {why}; {CALLER_FAULT_WHY}")),
        None => Ok(code),
    }
}

/// An inclusive range of error codes (both ends already [`error_code`]s): not empty, and no
/// caller fault inside.
pub fn retry_range(start: u16, end: u16) -> Result<(), String> {
    if start > end {
        return Err(format!(
            "empty range `{start}..={end}`: write the lower code first"
        ));
    }
    match CALLER_FAULTS.iter().find(|(c, _)| start <= *c && *c <= end) {
        Some((code, why)) => Err(format!(
            "range `{start}..={end}` includes {code} ({why}); {CALLER_FAULT_WHY}"
        )),
        None => Ok(()),
    }
}

/// A code or range must not overlap one listed before it.
pub fn not_listed(listed: &[(u16, u16)], start: u16, end: u16) -> Result<(), String> {
    match listed.iter().find(|(x, y)| start <= *y && *x <= end) {
        Some((x, y)) if x == y => Err(format!("duplicate: already covered by `{x}`")),
        Some((x, y)) => Err(format!("duplicate: already covered by `{x}..={y}`")),
        None => Ok(()),
    }
}

/// What `timeout` or `transport` listed twice is told.
pub const LISTED_TWICE: &str = "listed twice in #[retry_on]";

/// What an empty retry list is told.
pub const EMPTY_RETRY_ON: &str = "#[retry_on()] lists nothing: name codes (`429`), ranges (`500..=599`), `timeout` or `transport`, or remove it to use the default set";

/// One step of a fallback chain, for [`fallback_steps`] and [`fallback_needs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step<'a> {
    /// The last good answer for the same key.
    Cached,
    /// Wait in the breaker's queue.
    Queue,
    /// Another function, as written.
    Function(&'a str),
}

/// Where a refusal of a fallback chain belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// The whole `fallback` value.
    Chain,
    /// The chain's step at this index.
    Step(usize),
    /// The key of that name (`stale_for`, `key`, `queue_wait`).
    Key(&'static str),
}

/// The keys a fallback chain's combinations depend on: which of them were written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// `breaker`.
    pub breaker: bool,
    /// `stale_for`.
    pub stale_for: bool,
    /// `key` (or a `#[key]` argument).
    pub key: bool,
    /// `queue_wait`.
    pub queue_wait: bool,
}

/// The steps of a chain kept, each with its index in the chain as written.
pub type Kept<'a> = Vec<(usize, Step<'a>)>;

/// Refusals, each with where it belongs.
pub type Refusals = Vec<(At, String)>;

/// Check a fallback chain's steps: not empty, no step twice, `queue` last. Returns the steps
/// kept (duplicates dropped, each with its index in `chain`) and every refusal, in order.
pub fn fallback_steps<'a>(chain: &[Step<'a>]) -> (Kept<'a>, Refusals) {
    let mut errors = Vec::new();
    if chain.is_empty() {
        errors.push((
            At::Chain,
            "an empty fallback chain: name `cached`, `queue` or a function, or drop `fallback`"
                .to_string(),
        ));
    }
    let mut kept: Vec<(usize, Step<'a>)> = Vec::new();
    for (i, step) in chain.iter().enumerate() {
        if kept.iter().any(|(_, s)| s == step) {
            errors.push((At::Step(i), "this fallback is already in the chain".into()));
            continue;
        }
        if let Some((q, Step::Queue)) = kept.last() {
            errors.push((At::Step(*q), "`queue` must be the last fallback: it waits for recovery, so nothing after it would run".into()));
        }
        kept.push((i, *step));
    }
    (kept, errors)
}

/// Check what a fallback chain (as [`fallback_steps`] kept it) needs of the other keys, and
/// the keys that only make sense with one of its steps.
pub fn fallback_needs(kept: &[(usize, Step<'_>)], written: Written) -> Refusals {
    let mut errors = Vec::new();
    for (i, step) in kept {
        if *step == Step::Queue && !written.breaker {
            errors.push((At::Step(*i), "`fallback = queue` waits for a circuit breaker to admit again: add `breaker = \"name\"`".into()));
        }
    }
    let has = |s: Step| kept.iter().any(|(_, k)| *k == s);
    if written.stale_for && !has(Step::Cached) {
        errors.push((
            At::Key("stale_for"),
            "`stale_for` only applies to `fallback = cached`".into(),
        ));
    }
    if written.key && !has(Step::Cached) {
        errors.push((
            At::Key("key"),
            "`key` only applies to `fallback = cached`".into(),
        ));
    }
    if written.queue_wait && !has(Step::Queue) {
        errors.push((
            At::Key("queue_wait"),
            "`queue_wait` only applies to `fallback = queue`".into(),
        ));
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(retry_code(429, "429"), Ok(429));
        assert!(retry_code(200, "200").unwrap_err().contains("success"));
        assert!(retry_code(700, "700").unwrap_err().contains("100 to 599"));
        assert!(retry_range(500, 400).unwrap_err().contains("empty range"));
        assert!(retry_range(400, 499).unwrap_err().contains("includes 400"));
        assert_eq!(retry_range(500, 599), Ok(()));
        assert!(not_listed(&[(500, 599)], 503, 503)
            .unwrap_err()
            .contains("`500..=599`"));
        assert_eq!(not_listed(&[(429, 429)], 500, 599), Ok(()));
    }

    #[test]
    fn chains() {
        let none = Written::default();
        let (kept, errors) = fallback_steps(&[Step::Queue, Step::Cached]);
        assert_eq!(kept.len(), 2);
        assert!(errors
            .iter()
            .any(|(at, e)| *at == At::Step(0) && e.contains("last")));
        let needs = fallback_needs(&kept, none);
        assert!(needs
            .iter()
            .any(|(at, e)| *at == At::Step(0) && e.contains("breaker")));
        let (kept, errors) = fallback_steps(&[Step::Cached, Step::Cached]);
        assert_eq!((kept.len(), errors[0].0), (1, At::Step(1)));
        let (kept, _) = fallback_steps(&[Step::Function("backup")]);
        let needs = fallback_needs(
            &kept,
            Written {
                stale_for: true,
                queue_wait: true,
                ..none
            },
        );
        assert_eq!(needs.len(), 2);
    }

    #[test]
    fn amounts_and_names() {
        assert!(budget("budget", "5eur")
            .unwrap_err()
            .starts_with("`budget = \"5eur\"`: unknown unit `eur`"));
        assert_eq!(
            budget_amount("budget", 100_000, false).map(|b| b.amount),
            Ok(100_000)
        );
        assert!(budget_amount("budget", 0, true)
            .unwrap_err()
            .contains("zero budget"));
        assert!(budget_amount("budget", 2_000_000_000, false)
            .unwrap_err()
            .contains("out of range"));
        assert!(budget("max_cost", "0usd")
            .unwrap_err()
            .contains("reserves nothing"));
        assert_eq!(
            budget("budget", "20000tok"),
            Ok(CallAmount {
                amount: 20_000,
                tokens: true
            })
        );
        assert!(shared_name("breaker", "Open AI")
            .unwrap_err()
            .contains("e.g. `breaker = \"openai\"`"));
        assert!(site_name("a b").is_err());
        assert!(base_within_cap(2, 1, true, false).is_err());
        assert_eq!(backoff("exp"), Ok(3));
        assert!(backoff("fibonacci").unwrap_err().contains("\"exp_jitter\""));
    }
}
