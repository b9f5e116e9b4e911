//! Parse and validate `#[resilient(...)]` and `#[retry_on(...)]` into a checked policy.
//!
//! Every check runs here, at compile time, and every error points at the offending token.
//! Errors are collected, not returned at the first one, so a user fixes an attribute in one go.

use proc_macro2::Span;
use retry_grammar::policy as rules;
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

/// The `Backoff` variant of each of `retry_grammar::policy::BACKOFFS`, in its order.
const BACKOFF_VARIANTS: &[&str] = &[
    "ExpJitter",
    "EqualJitter",
    "DecorrelatedJitter",
    "Exp",
    "Constant",
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
    rules::example(key)
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
                        match rules::backoff(&s.value()) {
                            Ok(i) => policy.backoff = BACKOFF_VARIANTS[i],
                            Err(why) => errors.at(&s, why),
                        }
                    }
                }
                "max" => {
                    if let Some(n) = int(&pair.value, &key, errors) {
                        match n.base10_parse::<u64>().map(rules::max_attempts) {
                            Ok(Ok(v)) => policy.max = v,
                            Ok(Err(why)) => errors.at(&n, why),
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
                        if let Err(why) = rules::duration(&key, d.nanos) {
                            errors.push(syn::Error::new(d.span, why));
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
                    if let Err(why) = rules::duration(&key, d.nanos) {
                        errors.push(syn::Error::new(d.span, why));
                    }
                }
                "breaker" | "pool" | "pace" => {
                    if let Some(s) = string(&pair.value, &key, "\"openai\"", errors) {
                        let name = s.value();
                        if let Err(why) = rules::shared_name(&key, &name) {
                            errors.at(&s, why);
                        } else {
                            policy.reject_span.get_or_insert(pair.key.span());
                            match key.as_str() {
                                "pool" => {
                                    policy.pool = Some(name);
                                    policy.metered_span.get_or_insert(pair.key.span());
                                }
                                "pace" => policy.pace = Some(name),
                                _ => policy.breaker = Some(name),
                            }
                        }
                    }
                }
                "budget" => {
                    if let Some(s) = string(&pair.value, &key, "\"0.10usd\"", errors) {
                        match rules::budget(&key, &s.value()) {
                            Ok(b) => {
                                policy.budget = Some(b);
                                policy.metered_span.get_or_insert(pair.key.span());
                            }
                            Err(why) => errors.at(&s, why),
                        }
                    }
                }
                "max_cost" => {
                    if let Some(s) = string(&pair.value, &key, "\"0.002usd\"", errors) {
                        match rules::budget(&key, &s.value()) {
                            Ok(b) => policy.max_cost = Some(b),
                            Err(why) => errors.at(&s, why),
                        }
                    }
                }
                "name" => {
                    if let Some(s) = string(&pair.value, &key, "\"openai.complete\"", errors) {
                        let label = s.value();
                        match rules::site_name(&label) {
                            Ok(()) => policy.label = Some(label),
                            Err(why) => errors.at(&s, why),
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
        if let Err((blame, why)) =
            rules::base_within_cap(policy.base.nanos, policy.cap.nanos, base_set, cap_set)
        {
            // Point at whichever of the two the user wrote; the other is the default.
            let span = match blame {
                rules::Blame::Cap => policy.cap.span,
                rules::Blame::Base => policy.base.span,
                rules::Blame::Neither => Span::call_site(),
            };
            errors.push(syn::Error::new(span, why));
        }
        policy.check_fallbacks(args, errors);
        policy.stream_key = args
            .pairs
            .iter()
            .find(|p| p.key == "first_token" || p.key == "idle")
            .map(|p| (p.key.to_string(), p.key.span()));
        if let (Some(t), Some(d)) = (policy.timeout, policy.deadline) {
            if let Err(why) = rules::timeout_within_deadline(t.nanos, d.nanos) {
                errors.push(syn::Error::new(t.span, why));
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
    /// The step as written (a function's path compared as written: syn's `PartialEq` needs
    /// its `extra-traits` feature).
    fn written(&self) -> String {
        match self {
            Fallback::Cached(_) => "cached".into(),
            Fallback::Queue(_) => "queue".into(),
            Fallback::Function(path) => quote::ToTokens::to_token_stream(path).to_string(),
        }
    }

    fn rule<'a>(&self, written: &'a str) -> rules::Step<'a> {
        match self {
            Fallback::Cached(_) => rules::Step::Cached,
            Fallback::Queue(_) => rules::Step::Queue,
            Fallback::Function(_) => rules::Step::Function(written),
        }
    }
}

/// `cached`, `queue`, `path::to_fn`, or a list of them.
fn fallback_chain(value: &Expr, errors: &mut Errors) -> Vec<Fallback> {
    let items: Vec<&Expr> = match value {
        Expr::Array(array) => array.elems.iter().collect(),
        single => vec![single],
    };
    // What the syntax says; the chain's rules are the grammar's.
    let mut read: Vec<(Fallback, &Expr)> = Vec::new();
    for item in &items {
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
        read.push((step, item));
    }
    let names: Vec<String> = read.iter().map(|(step, _)| step.written()).collect();
    let steps: Vec<rules::Step> = read
        .iter()
        .zip(&names)
        .map(|((step, _), name)| step.rule(name))
        .collect();
    let (kept, refused) = rules::fallback_steps(&steps);
    if items.is_empty() {
        for (_, why) in &refused {
            errors.at(value, why);
        }
        return Vec::new();
    }
    for (at, why) in refused {
        // `At::Chain` only when every item was unreadable (and said so): the chain is not
        // empty as written.
        if let rules::At::Step(i) = at {
            match &read[i].0 {
                Fallback::Queue(span) => errors.push(syn::Error::new(*span, why)),
                _ => errors.at(read[i].1, why),
            }
        }
    }
    let keep: Vec<usize> = kept.iter().map(|(i, _)| *i).collect();
    read.into_iter()
        .enumerate()
        .filter(|(i, _)| keep.contains(i))
        .map(|(_, (step, _))| step)
        .collect()
}

/// A per-call budget: micro-dollars or tokens.
pub type BudgetLit = rules::CallAmount;

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
        let names: Vec<String> = self.fallback.iter().map(Fallback::written).collect();
        let kept: Vec<(usize, rules::Step)> = self
            .fallback
            .iter()
            .zip(&names)
            .map(|(step, name)| step.rule(name))
            .enumerate()
            .collect();
        let written = rules::Written {
            breaker: self.breaker.is_some(),
            stale_for: key_of("stale_for").is_some(),
            key: key_of("key").is_some(),
            queue_wait: key_of("queue_wait").is_some(),
        };
        for (at, why) in rules::fallback_needs(&kept, written) {
            match at {
                rules::At::Step(i) => match &self.fallback[i] {
                    Fallback::Queue(span) | Fallback::Cached(span) => {
                        errors.push(syn::Error::new(*span, why))
                    }
                    Fallback::Function(path) => errors.at(path, why),
                },
                rules::At::Key(name) => {
                    if let Some(k) = key_of(name) {
                        errors.at(k, why)
                    }
                }
                rules::At::Chain => errors.push(syn::Error::new(Span::call_site(), why)),
            }
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
    match rules::written_duration(key, &s.value()) {
        Ok(nanos) => Some(Dur {
            nanos,
            span: s.span(),
        }),
        Err(why) => {
            errors.at(&s, why);
            None
        }
    }
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
        errors.push(syn::Error::new_spanned(list, rules::EMPTY_RETRY_ON));
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
                if let Err(why) = rules::retry_range(a, b) {
                    errors.at(item, why);
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
                    errors.at(item, rules::LISTED_TWICE);
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
    code_with(n, errors, rules::retry_code)
}

/// A 4xx or 5xx code.
fn error_code(n: &LitInt, errors: &mut Errors) -> Option<u16> {
    code_with(n, errors, rules::error_code)
}

fn code_with(
    n: &LitInt,
    errors: &mut Errors,
    rule: fn(u64, &str) -> Result<u16, String>,
) -> Option<u16> {
    // A literal too large for a u64 is no status code either.
    let value = n.base10_parse::<u64>().unwrap_or(u64::MAX);
    match rule(value, &n.to_string()) {
        Ok(code) => Some(code),
        Err(why) => {
            errors.at(n, why);
            None
        }
    }
}

fn add_range(ranges: &mut Vec<(u16, u16)>, a: u16, b: u16, item: &Expr, errors: &mut Errors) {
    match rules::not_listed(ranges, a, b) {
        Ok(()) => ranges.push((a, b)),
        Err(why) => errors.at(item, why),
    }
}
