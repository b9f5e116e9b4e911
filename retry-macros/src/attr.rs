//! Parse and validate `#[resilient(...)]` and `#[retry_on(...)]` into a checked policy.
//!
//! Every check runs here, at compile time, and every error points at the offending token.
//! Errors are collected, not returned at the first one, so a user fixes an attribute in one go.

use proc_macro2::Span;
use retry_grammar::{
    valid_name, AmountError, AmountUnit, DURATION_HINT, MAX_ATTEMPTS, NAME_MAX_LEN,
};
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, ExprRange, Ident, Lit, LitInt, LitStr, RangeLimits, Token};

/// The keys `#[resilient]` accepts, in the order the docs list them.
pub const KEYS: &[&str] = &[
    "backoff",
    "max",
    "base",
    "cap",
    "timeout",
    "deadline",
    "max_retry_after",
    "breaker",
    "budget",
    "max_cost",
    "pool",
    "pace",
    "fallback",
    "stale_for",
    "queue_wait",
    "first_token",
    "idle",
    "key",
    "name",
    "crate",
];

const BACKOFFS: &[(&str, &str)] = &[
    ("exp_jitter", "ExpJitter"),
    ("equal_jitter", "EqualJitter"),
    ("decorrelated_jitter", "DecorrelatedJitter"),
    ("exp", "Exp"),
    ("constant", "Constant"),
];

/// Caller-fault 4xx codes: retrying them sends the same wrong request again, and pays again.
const CALLER_FAULTS: &[(u16, &str)] = &[
    (400, "Bad Request: the request itself is malformed"),
    (401, "Unauthorized: the credentials are wrong"),
    (403, "Forbidden: the account may not do this"),
    (404, "Not Found: the model or endpoint does not exist"),
    (413, "Payload Too Large: the request is too big"),
    (422, "Unprocessable Entity: the request is invalid"),
];

/// One `key = value` pair as written.
pub struct Pair {
    pub key: Ident,
    pub value: Expr,
}

impl Parse for Pair {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        // `crate` is a keyword; `parse_any` accepts it as a key.
        let key = Ident::parse_any(input)?;
        if !input.peek(Token![=]) {
            return Err(syn::Error::new(
                key.span(),
                format!(
                    "`{key}` needs a value, e.g. `{}`",
                    example(&key.to_string())
                ),
            ));
        }
        input.parse::<Token![=]>()?;
        let value = input.parse()?;
        Ok(Pair { key, value })
    }
}

/// How each key is written, for messages.
fn example(key: &str) -> &'static str {
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

/// The raw `#[resilient(...)]` arguments.
pub struct Args {
    pub pairs: Punctuated<Pair, Token![,]>,
}

impl Parse for Args {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        Ok(Args {
            pairs: Punctuated::parse_terminated(input)?,
        })
    }
}

/// A duration as whole nanoseconds, with the span of the literal it came from.
#[derive(Clone, Copy)]
pub struct Dur {
    pub nanos: u64,
    pub span: Span,
}

/// A checked `#[resilient]` policy.
pub struct Policy {
    pub backoff: &'static str,
    pub max: u32,
    pub base: Dur,
    pub cap: Dur,
    pub timeout: Option<Dur>,
    pub deadline: Option<Dur>,
    pub max_retry_after: Dur,
    pub krate: Option<syn::Path>,
    /// The call site's label in reports, events and metrics (default: `module::fn`).
    pub label: Option<String>,
    pub breaker: Option<String>,
    pub budget: Option<BudgetLit>,
    /// The most one attempt can cost: what pools and workflows reserve.
    pub max_cost: Option<BudgetLit>,
    pub pool: Option<String>,
    pub pace: Option<String>,
    /// Where `budget`/`pool` were written: their need for a `Metered` success type is
    /// reported there.
    pub metered_span: Option<Span>,
    /// The fallback chain, in order.
    pub fallback: Vec<Fallback>,
    pub stale_for: Option<Dur>,
    pub queue_wait: Option<Dur>,
    /// A streaming call's limits: until the first chunk, and between chunks.
    pub first_token: Option<Dur>,
    pub idle: Option<Dur>,
    /// Where the first streaming key (`first_token`, `idle`) was written.
    pub stream_key: Option<(String, Span)>,
    /// `key = <expr>`.
    pub key: Option<Expr>,
    /// Whether `fallback = …` was written at all (even if it could not be read).
    pub fallback_written: bool,
    /// Where `timeout`/`deadline`/`breaker` were written: the executor's `From<Rejected>`
    /// requirement is reported there.
    pub reject_span: Option<Span>,
}

/// Collects errors so that all of them are reported together.
#[derive(Default)]
pub struct Errors(Option<syn::Error>);

impl Errors {
    pub fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    pub fn at<T: quote::ToTokens>(&mut self, tokens: T, message: impl std::fmt::Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    pub fn finish(self) -> Result<(), syn::Error> {
        match self.0 {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn dur(nanos: u64) -> Dur {
    Dur {
        nanos,
        span: Span::call_site(),
    }
}

impl Policy {
    /// Check every pair; errors go to `errors`, the result holds the valid values.
    pub fn from_args(args: &Args, errors: &mut Errors) -> Policy {
        let mut policy = Policy {
            backoff: "ExpJitter",
            max: 3,
            base: dur(500_000_000),
            cap: dur(30_000_000_000),
            timeout: None,
            deadline: None,
            max_retry_after: dur(60_000_000_000),
            krate: None,
            label: None,
            breaker: None,
            budget: None,
            max_cost: None,
            pool: None,
            pace: None,
            metered_span: None,
            fallback: Vec::new(),
            stale_for: None,
            queue_wait: None,
            first_token: None,
            idle: None,
            stream_key: None,
            key: None,
            fallback_written: false,
            reject_span: None,
        };
        let mut seen: Vec<String> = Vec::new();
        let (mut base_set, mut cap_set) = (false, false);
        for pair in &args.pairs {
            let key = pair.key.to_string();
            if !KEYS.contains(&key.as_str()) {
                errors.at(
                    &pair.key,
                    format!(
                        "unknown key `{key}` in #[resilient]; the valid keys are: {}",
                        KEYS.join(", ")
                    ),
                );
                continue;
            }
            if seen.contains(&key) {
                errors.at(
                    &pair.key,
                    format!("duplicate key `{key}`: each key may appear once"),
                );
                continue;
            }
            seen.push(key.clone());
            match key.as_str() {
                "backoff" => {
                    if let Some(s) = string(&pair.value, &key, "\"exp_jitter\"", errors) {
                        match BACKOFFS.iter().find(|(name, _)| *name == s.value()) {
                            Some((_, variant)) => policy.backoff = variant,
                            None => errors.at(
                                &s,
                                format!(
                                    "unknown backoff `{}`; use one of: {}",
                                    s.value(),
                                    BACKOFFS
                                        .iter()
                                        .map(|(n, _)| format!("\"{n}\""))
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                ),
                            ),
                        }
                    }
                }
                "max" => {
                    if let Some(n) = int(&pair.value, &key, errors) {
                        match n.base10_parse::<u64>() {
                            Ok(0) => errors.at(
                                &n,
                                "`max = 0` would never call the function: `max` counts attempts including the first, so use 1 for no retries",
                            ),
                            Ok(v) if v > u64::from(MAX_ATTEMPTS) => errors.at(
                                &n,
                                format!("`max = {v}` is too many attempts: at most {MAX_ATTEMPTS}; past that a call is polling, not retrying"),
                            ),
                            Ok(v) => policy.max = v as u32,
                            Err(e) => errors.push(e),
                        }
                    }
                }
                "fallback" => {
                    policy.fallback_written = true;
                    policy.fallback = fallback_chain(&pair.value, errors);
                }
                "key" => policy.key = Some(pair.value.clone()),
                "stale_for" | "queue_wait" | "first_token" | "idle" => {
                    if let Some(d) = duration(&pair.value, &key, errors) {
                        if d.nanos == 0 {
                            errors.push(syn::Error::new(
                                d.span,
                                format!("`{key}` must be longer than zero"),
                            ));
                        } else {
                            match key.as_str() {
                                "stale_for" => policy.stale_for = Some(d),
                                "queue_wait" => policy.queue_wait = Some(d),
                                "first_token" => policy.first_token = Some(d),
                                _ => policy.idle = Some(d),
                            }
                        }
                    }
                }
                "base" | "cap" | "timeout" | "deadline" | "max_retry_after" => {
                    let Some(d) = duration(&pair.value, &key, errors) else {
                        continue;
                    };
                    match key.as_str() {
                        "base" => {
                            base_set = true;
                            policy.base = d
                        }
                        "cap" => {
                            cap_set = true;
                            policy.cap = d
                        }
                        "timeout" => {
                            policy.timeout = Some(d);
                            policy.reject_span.get_or_insert(pair.key.span());
                        }
                        "deadline" => {
                            policy.deadline = Some(d);
                            policy.reject_span.get_or_insert(pair.key.span());
                        }
                        _ => policy.max_retry_after = d,
                    }
                    let nonzero = matches!(key.as_str(), "base" | "timeout" | "deadline");
                    if nonzero && d.nanos == 0 {
                        errors.push(syn::Error::new(
                            d.span,
                            format!("`{key}` must be longer than zero"),
                        ));
                    }
                }
                "breaker" | "pool" | "pace" => {
                    if let Some(s) = string(&pair.value, &key, "\"openai\"", errors) {
                        let name = s.value();
                        if valid_name(&name) {
                            policy.reject_span.get_or_insert(pair.key.span());
                            match key.as_str() {
                                "pool" => {
                                    policy.pool = Some(name);
                                    policy.metered_span.get_or_insert(pair.key.span());
                                }
                                "pace" => policy.pace = Some(name),
                                _ => policy.breaker = Some(name),
                            }
                        } else {
                            errors.at(
                                &s,
                                format!("{key} name `{name}` may use only lowercase letters, digits, `_` and `-` (1 to {NAME_MAX_LEN} characters), e.g. `{}`", example(&key)),
                            );
                        }
                    }
                }
                "budget" => {
                    if let Some(s) = string(&pair.value, &key, "\"0.10usd\"", errors) {
                        match parse_budget(&s.value()) {
                            Ok(b) => {
                                policy.budget = Some(b);
                                policy.metered_span.get_or_insert(pair.key.span());
                            }
                            Err(why) => {
                                errors.at(&s, format!("`budget = \"{}\"`: {why}", s.value()))
                            }
                        }
                    }
                }
                "max_cost" => {
                    if let Some(s) = string(&pair.value, &key, "\"0.002usd\"", errors) {
                        match parse_budget(&s.value()) {
                            Ok(b) => policy.max_cost = Some(b),
                            Err(why) if why.starts_with("a zero budget") => errors.at(
                                &s,
                                format!(
                                    "`max_cost = \"{}\"`: an attempt that costs nothing reserves nothing; leave `max_cost` out",
                                    s.value()
                                ),
                            ),
                            Err(why) => errors.at(
                                &s,
                                format!("`max_cost = \"{}\"`: {why}", s.value()),
                            ),
                        }
                    }
                }
                "name" => {
                    if let Some(s) = string(&pair.value, &key, "\"openai.complete\"", errors) {
                        let label = s.value();
                        let bad = label.chars().find(|c| {
                            c.is_whitespace()
                                || c.is_control()
                                || matches!(c, '"' | '\'' | '{' | '}' | '=' | ',')
                        });
                        if label.is_empty() || label.len() > 128 {
                            errors.at(&s, format!("`name = \"{label}\"`: a call site's name is 1 to 128 characters, e.g. `name = \"openai.complete\"`"));
                        } else if let Some(c) = bad {
                            errors.at(&s, format!("`name = \"{label}\"`: {c:?} cannot be part of a metric label value here; use letters, digits, `.`, `_`, `-`, `:`, `/`"));
                        } else {
                            policy.label = Some(label);
                        }
                    }
                }
                "crate" => {
                    if let Some(s) = string(&pair.value, &key, "\"::retry_runtime\"", errors) {
                        match s.parse::<syn::Path>() {
                            Ok(path) => policy.krate = Some(path),
                            Err(_) => errors.at(
                                &s,
                                format!(
                                    "`crate = \"{}\"` is not a path; write the path to the runtime, e.g. `crate = \"::my_crate::retry\"`",
                                    s.value()
                                ),
                            ),
                        }
                    }
                }
                _ => unreachable!("every key in KEYS is handled"),
            }
        }
        if policy.base.nanos > policy.cap.nanos {
            // Point at whichever of the two the user wrote; the other is the default.
            let (span, what) = if cap_set {
                (policy.cap.span, "`cap` is shorter than `base`")
            } else if base_set {
                (
                    policy.base.span,
                    "`base` is longer than the default `cap` of 30s",
                )
            } else {
                (Span::call_site(), "`base` is longer than `cap`")
            };
            errors.push(syn::Error::new(
                span,
                format!("{what}: the backoff could never reach its base; make `base` <= `cap`"),
            ));
        }
        policy.check_fallbacks(args, errors);
        policy.stream_key = args
            .pairs
            .iter()
            .find(|p| p.key == "first_token" || p.key == "idle")
            .map(|p| (p.key.to_string(), p.key.span()));
        if let (Some(t), Some(d)) = (policy.timeout, policy.deadline) {
            if t.nanos > d.nanos {
                errors.push(syn::Error::new(
                    t.span,
                    "`timeout` is longer than `deadline`, so it could never apply; shorten it or drop it",
                ));
            }
        }
        policy
    }
}

/// One step of a fallback chain.
pub enum Fallback {
    /// The last good answer for the same key.
    Cached(Span),
    /// Wait in the breaker's queue.
    Queue(Span),
    /// Another async fn with the same arguments.
    Function(syn::Path),
}

impl Fallback {
    fn same_as(&self, other: &Fallback) -> bool {
        match (self, other) {
            (Fallback::Cached(_), Fallback::Cached(_))
            | (Fallback::Queue(_), Fallback::Queue(_)) => true,
            (Fallback::Function(a), Fallback::Function(b)) => {
                // Compared as written (syn's `PartialEq` needs its `extra-traits` feature).
                quote::ToTokens::to_token_stream(a).to_string()
                    == quote::ToTokens::to_token_stream(b).to_string()
            }
            _ => false,
        }
    }
}

/// `cached`, `queue`, `path::to_fn`, or a list of them.
fn fallback_chain(value: &Expr, errors: &mut Errors) -> Vec<Fallback> {
    let items: Vec<&Expr> = match value {
        Expr::Array(array) => array.elems.iter().collect(),
        single => vec![single],
    };
    if items.is_empty() {
        errors.at(
            value,
            "an empty fallback chain: name `cached`, `queue` or a function, or drop `fallback`",
        );
    }
    let mut chain: Vec<Fallback> = Vec::new();
    for item in items {
        let step = match item {
            Expr::Path(p) if p.path.is_ident("cached") => Fallback::Cached(p.span()),
            Expr::Path(p) if p.path.is_ident("queue") => Fallback::Queue(p.span()),
            Expr::Path(p) if p.qself.is_none() => Fallback::Function(p.path.clone()),
            other => {
                errors.at(
                    other,
                    "a fallback is `cached`, `queue`, a path to an async fn with the same arguments (`cheaper_model`, `Self::backup`), or a list of them: `[cached, backup]`",
                );
                continue;
            }
        };
        if chain.iter().any(|s| s.same_as(&step)) {
            errors.at(item, "this fallback is already in the chain");
            continue;
        }
        if let Some(Fallback::Queue(span)) = chain.last() {
            errors.push(syn::Error::new(
                *span,
                "`queue` must be the last fallback: it waits for recovery, so nothing after it would run",
            ));
        }
        chain.push(step);
    }
    chain
}

/// A per-call budget: micro-dollars or tokens.
#[derive(Clone, Copy)]
pub struct BudgetLit {
    pub amount: u64,
    pub tokens: bool,
}

/// Largest budget: $1,000 per call, or 100 million tokens. A per-call cap above that is no cap.
const MAX_CALL_MICROS: u64 = 1_000 * 1_000_000;
const MAX_CALL_TOKENS: u64 = 100_000_000;

/// `"0.10usd"`, `"5usd"`, `"20000tok"`.
pub fn parse_budget(text: &str) -> Result<BudgetLit, String> {
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
    let amount = match retry_grammar::amount(number, unit, max) {
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
    Ok(BudgetLit { amount, tokens })
}

impl Policy {
    /// A streaming call (the function returns `Result<Streamed<_>, _>`): its keys need one,
    /// and `cached` cannot serve it (there is no answer to keep, only chunks). Reported at
    /// the key. A function (another stream) and `queue` serve it before its first chunk.
    pub fn check_streaming(&self, streaming: bool, errors: &mut Errors) {
        if let (Some((key, span)), false) = (&self.stream_key, streaming) {
            errors.push(syn::Error::new(
                *span,
                format!(
                    "`{key}` is for a streaming call: return `Result<Streamed<S>, E>` (`retry_runtime::Streamed`), with `Ok(Streamed::new(stream))` in the body"
                ),
            ));
        }
        if !streaming {
            return;
        }
        for step in &self.fallback {
            if let Fallback::Cached(span) = step {
                errors.push(syn::Error::new(
                    *span,
                    "`cached` cannot serve a stream: a streaming call's answer is its chunks as they come, not a value to keep; fall back to a function that opens another stream",
                ));
            }
        }
    }

    /// Combinations that cannot work: `queue` needs a breaker; `stale_for` and `key` need
    /// `cached`; `queue_wait` needs `queue`.
    fn check_fallbacks(&self, args: &Args, errors: &mut Errors) {
        let key_of = |name: &str| args.pairs.iter().find(|p| p.key == name).map(|p| &p.key);
        let has_cached = self
            .fallback
            .iter()
            .any(|f| matches!(f, Fallback::Cached(_)));
        let has_queue = self
            .fallback
            .iter()
            .any(|f| matches!(f, Fallback::Queue(_)));
        for step in &self.fallback {
            if let Fallback::Queue(span) = step {
                if self.breaker.is_none() {
                    errors.push(syn::Error::new(
                        *span,
                        "`fallback = queue` waits for a circuit breaker to admit again: add `breaker = \"name\"`",
                    ));
                }
            }
        }
        if let (Some(k), false) = (key_of("stale_for"), has_cached) {
            errors.at(k, "`stale_for` only applies to `fallback = cached`");
        }
        if let (Some(k), false) = (key_of("key"), has_cached) {
            errors.at(k, "`key` only applies to `fallback = cached`");
        }
        if let (Some(k), false) = (key_of("queue_wait"), has_queue) {
            errors.at(k, "`queue_wait` only applies to `fallback = queue`");
        }
    }

    /// Whether the chain has `cached`, and where.
    pub fn cached_span(&self) -> Option<Span> {
        self.fallback.iter().find_map(|f| match f {
            Fallback::Cached(span) => Some(*span),
            _ => None,
        })
    }
}

fn string(value: &Expr, key: &str, example: &str, errors: &mut Errors) -> Option<LitStr> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Some(s.clone()),
        other => {
            errors.at(
                other,
                format!("`{key}` takes a string, e.g. `{key} = {example}`"),
            );
            None
        }
    }
}

fn int(value: &Expr, key: &str, errors: &mut Errors) -> Option<LitInt> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Int(n), ..
        }) => Some(n.clone()),
        other => {
            errors.at(
                other,
                format!("`{key}` takes a whole number, e.g. `{key} = 5`"),
            );
            None
        }
    }
}

fn duration(value: &Expr, key: &str, errors: &mut Errors) -> Option<Dur> {
    let s = string(value, key, "\"500ms\"", errors)?;
    match parse_duration(&s.value()) {
        Ok(nanos) => Some(Dur {
            nanos,
            span: s.span(),
        }),
        Err(why) => {
            errors.at(
                &s,
                format!("`{key} = \"{}\"`: {why}; {DURATION_HINT}", s.value()),
            );
            None
        }
    }
}

/// `"500ms"`, `"2s"`, `"1.5s"`, `"1m"`, `"1h"` as nanoseconds; at most a day (the grammar
/// the run-time configuration uses too).
pub fn parse_duration(text: &str) -> Result<u64, String> {
    retry_grammar::duration_nanos(text)
}

/// The checked `#[retry_on(...)]` list.
pub struct RetryOn {
    pub ranges: Vec<(u16, u16)>,
    pub timeout: bool,
    pub transport: bool,
}

/// Parse and check the list inside `#[retry_on(...)]`.
pub fn retry_on(list: &syn::MetaList, errors: &mut Errors) -> Option<RetryOn> {
    let parser = Punctuated::<Expr, Token![,]>::parse_terminated;
    let items = match syn::parse::Parser::parse2(parser, list.tokens.clone()) {
        Ok(items) => items,
        Err(e) => {
            errors.push(e);
            return None;
        }
    };
    if items.is_empty() {
        errors.push(syn::Error::new_spanned(
            list,
            "#[retry_on()] lists nothing: name codes (`429`), ranges (`500..=599`), `timeout` or `transport`, or remove it to use the default set",
        ));
        return None;
    }
    let mut out = RetryOn {
        ranges: Vec::new(),
        timeout: false,
        transport: false,
    };
    for item in &items {
        match item {
            Expr::Lit(ExprLit {
                lit: Lit::Int(n), ..
            }) => {
                if let Some(code) = status_code(n, errors) {
                    add_range(&mut out.ranges, code, code, item, errors);
                }
            }
            Expr::Range(ExprRange {
                start: Some(start),
                end: Some(end),
                limits: RangeLimits::Closed(_),
                ..
            }) => {
                let (Some(a), Some(b)) = (lit_int(start, errors), lit_int(end, errors)) else {
                    continue;
                };
                // The ends must be error codes; caller faults are checked over the whole range.
                let (Some(a), Some(b)) = (error_code(&a, errors), error_code(&b, errors)) else {
                    continue;
                };
                if a > b {
                    errors.at(item, format!("empty range `{a}..={b}`: write the lower code first"));
                    continue;
                }
                if let Some((code, why)) = CALLER_FAULTS.iter().find(|(c, _)| a <= *c && *c <= b) {
                    errors.at(
                        item,
                        format!("range `{a}..={b}` includes {code} ({why}); {CALLER_FAULT_WHY}"),
                    );
                    continue;
                }
                add_range(&mut out.ranges, a, b, item, errors);
            }
            Expr::Range(_) => errors.at(
                item,
                "use an inclusive range with both ends, like `500..=599`",
            ),
            Expr::Path(p) if p.path.is_ident("timeout") || p.path.is_ident("transport") => {
                let flag = if p.path.is_ident("timeout") {
                    &mut out.timeout
                } else {
                    &mut out.transport
                };
                if *flag {
                    errors.at(item, "listed twice in #[retry_on]");
                }
                *flag = true;
            }
            other => errors.at(
                other,
                "#[retry_on] takes status codes (`429`), inclusive ranges (`500..=599`), `timeout` and `transport`",
            ),
        }
    }
    Some(out)
}

const CALLER_FAULT_WHY: &str = "a caller fault fails the same way every time, so retrying it only wastes money and quota. Remove it from #[retry_on]";

fn lit_int(e: &Expr, errors: &mut Errors) -> Option<LitInt> {
    match e {
        Expr::Lit(ExprLit {
            lit: Lit::Int(n), ..
        }) => Some(n.clone()),
        other => {
            errors.at(other, "expected a status code such as `500`");
            None
        }
    }
}

/// A single listed code: an error code that is not a caller fault.
fn status_code(n: &LitInt, errors: &mut Errors) -> Option<u16> {
    let code = error_code(n, errors)?;
    if let Some((_, why)) = CALLER_FAULTS.iter().find(|(c, _)| *c == code) {
        errors.at(n, format!("`{code}` is {why}; {CALLER_FAULT_WHY}"));
        return None;
    }
    Some(code)
}

/// A 4xx or 5xx code.
fn error_code(n: &LitInt, errors: &mut Errors) -> Option<u16> {
    let code = match n.base10_parse::<u16>() {
        Ok(code) if (100..=599).contains(&code) => code,
        _ => {
            errors.at(
                n,
                format!("`{n}` is not an HTTP status code: codes run from 100 to 599"),
            );
            return None;
        }
    };
    if code < 400 {
        let kind = match code {
            100..=199 => "an informational (1xx) response",
            200..=299 => "a success (2xx)",
            _ => "a redirect (3xx), which the HTTP client follows",
        };
        errors.at(
            n,
            format!("`{code}` is {kind}, not a failure: only 4xx and 5xx codes can be retried"),
        );
        return None;
    }
    Some(code)
}

fn add_range(ranges: &mut Vec<(u16, u16)>, a: u16, b: u16, item: &Expr, errors: &mut Errors) {
    if let Some((x, y)) = ranges.iter().find(|(x, y)| a <= *y && *x <= b) {
        let earlier = if x == y {
            format!("{x}")
        } else {
            format!("{x}..={y}")
        };
        errors.at(item, format!("duplicate: already covered by `{earlier}`"));
        return;
    }
    ranges.push((a, b));
}

#[cfg(test)]
mod tests {
    use super::parse_duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(500_000_000));
        assert_eq!(parse_duration("2s"), Ok(2_000_000_000));
        assert_eq!(parse_duration("1.5s"), Ok(1_500_000_000));
        assert_eq!(parse_duration("1m"), Ok(60_000_000_000));
        assert_eq!(parse_duration("1h"), Ok(3_600_000_000_000));
        assert_eq!(parse_duration("0ms"), Ok(0));
        assert!(parse_duration("5 parsecs").unwrap_err().contains("parsecs"));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1.s").is_err());
        assert!(parse_duration("1..2s").is_err());
        assert!(parse_duration("25h").is_err());
        assert!(parse_duration("99999999999999999999999999999h").is_err());
    }
}
