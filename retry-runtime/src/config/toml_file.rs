//! Reading the TOML configuration: the raw sections as serde sees them, each value checked
//! with its key's own limits and unit, and every error naming the key and its line.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    breaker: BTreeMap<String, RawBreaker>,
    #[serde(default)]
    pool: BTreeMap<String, RawPool>,
    #[serde(default)]
    pace: BTreeMap<String, RawPace>,
    fallback: Option<RawFallback>,
    store: Option<RawStore>,
    #[serde(default)]
    price: BTreeMap<String, RawPrice>,
    #[serde(default)]
    policy: BTreeMap<String, RawPolicy>,
}

/// `[policy.NAME]`: a policy built at run time, with the attribute's keys and spellings.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    backoff: Option<String>,
    max: Option<i64>,
    base: Option<String>,
    cap: Option<String>,
    timeout: Option<String>,
    deadline: Option<String>,
    max_retry_after: Option<String>,
    retry_on: Option<Vec<RawRetryable>>,
    breaker: Option<String>,
    budget: Option<String>,
    max_cost: Option<String>,
    pool: Option<String>,
    pace: Option<String>,
    // What only code can say: read, to be refused with a reason rather than as unknown.
    fallback: Option<toml::Value>,
    stale_for: Option<toml::Value>,
    queue_wait: Option<toml::Value>,
    key: Option<toml::Value>,
    first_token: Option<toml::Value>,
    idle: Option<toml::Value>,
}

/// One item of `retry_on = [429, "500..=599", "timeout"]`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawRetryable {
    Code(i64),
    Text(String),
}

/// A `[policy.NAME]` section as a builder: each value read with the attribute's grammar, then
/// checked by its rules. Every problem is reported, each with its key's line.
fn policy_section(text: &str, name: &str, raw: RawPolicy) -> Result<PolicyBuilder, String> {
    let mut problems: Vec<(&'static str, String)> = Vec::new();
    let mut builder = Policy::builder(name);
    for (key, written) in [
        ("fallback", raw.fallback.is_some()),
        ("stale_for", raw.stale_for.is_some()),
        ("queue_wait", raw.queue_wait.is_some()),
        ("key", raw.key.is_some()),
        ("first_token", raw.first_token.is_some()),
        ("idle", raw.idle.is_some()),
    ] {
        if written {
            problems.push((key, format!("`{key}` is written at the call site, with `#[resilient]`: a run-time policy has no fallback chain and no stream of its own")));
        }
    }
    if let Some(backoff) = raw.backoff {
        match retry_grammar::policy::backoff(&backoff) {
            Ok(i) => builder = builder.backoff(Backoff::ALL[i]),
            Err(why) => problems.push(("backoff", why)),
        }
    }
    if let Some(max) = raw.max {
        // Negative counts read as zero attempts: refused in the attribute's words.
        builder = builder.max_attempts(u32::try_from(max.max(0)).unwrap_or(u32::MAX));
    }
    let mut duration = |key: &'static str, value: Option<String>| {
        let value = value?;
        match retry_grammar::policy::written_duration(key, &value) {
            Ok(nanos) => Some(Duration::from_nanos(nanos)),
            Err(why) => {
                problems.push((key, why));
                None
            }
        }
    };
    let base = duration("base", raw.base);
    let cap = duration("cap", raw.cap);
    let timeout = duration("timeout", raw.timeout);
    let deadline = duration("deadline", raw.deadline);
    let max_retry_after = duration("max_retry_after", raw.max_retry_after);
    for (d, set) in [
        (
            base,
            PolicyBuilder::base as fn(PolicyBuilder, Duration) -> PolicyBuilder,
        ),
        (cap, PolicyBuilder::cap),
        (timeout, PolicyBuilder::timeout),
        (deadline, PolicyBuilder::deadline),
        (max_retry_after, PolicyBuilder::max_retry_after),
    ] {
        if let Some(d) = d {
            builder = set(builder, d);
        }
    }
    for (key, value) in [("budget", raw.budget), ("max_cost", raw.max_cost)] {
        let Some(value) = value else { continue };
        match retry_grammar::policy::budget(key, &value) {
            Ok(amount) => {
                let budget = if amount.tokens {
                    Budget::tokens(amount.amount)
                } else {
                    Budget::micros(amount.amount)
                };
                builder = if key == "budget" {
                    builder.budget(budget)
                } else {
                    builder.max_cost(budget)
                };
            }
            Err(why) => problems.push((key, why)),
        }
    }
    if let Some(items) = raw.retry_on {
        let items = items
            .into_iter()
            .map(|item| match item {
                RawRetryable::Code(code) => {
                    Retryable::Code(u64::try_from(code).unwrap_or(u64::MAX), code.to_string())
                }
                RawRetryable::Text(text) => Retryable::read(&text),
            })
            .collect();
        builder = builder.retry_items(items);
    }
    if let Some(b) = raw.breaker {
        builder = builder.breaker(&b);
    }
    if let Some(p) = raw.pool {
        builder = builder.pool(&p);
    }
    if let Some(p) = raw.pace {
        builder = builder.pace(&p);
    }
    if let Err(error) = builder.check() {
        problems.extend(error.problems.into_iter().map(|p| (p.key, p.message)));
    }
    if problems.is_empty() {
        return Ok(builder);
    }
    let header = format!("[policy.{name}]");
    let quoted = format!("[policy.\"{name}\"]");
    let start = text
        .lines()
        .position(|l| {
            let l = l.trim();
            l.starts_with(&header) || l.starts_with(&quoted)
        })
        .unwrap_or(0);
    let line = |key: &str| {
        text.lines()
            .enumerate()
            .skip(start)
            .find(|(_, l)| {
                l.trim_start()
                    .strip_prefix(key)
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
            })
            .map(|(i, _)| format!(" (line {})", i + 1))
            .unwrap_or_default()
    };
    Err(problems
        .iter()
        .map(|(key, why)| format!("[policy.{name}] {key}{}: {why}", line(key)))
        .collect::<Vec<_>>()
        .join("; "))
}

/// `[price."gpt-4o-mini"] input = "0.15usd"`, `output = "0.60usd"`: dollars per million
/// tokens.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrice {
    input: PerMillion,
    output: PerMillion,
}

/// Dollars per million tokens, written like `"0.15usd"`.
struct PerMillion(u64);

impl<'de> Deserialize<'de> for PerMillion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match text.parse::<Budget>() {
            Ok(b) if b.unit() == crate::spend::Unit::Usd => Ok(PerMillion(b.amount())),
            Ok(_) => Err(de::Error::custom(format!(
                "`{text}`: a price is dollars per million tokens, written like \"0.15usd\""
            ))),
            Err(why) => Err(de::Error::custom(why)),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    redis_url: Option<String>,
    prefix: Option<String>,
    timeout: Option<Dur>,
    reconnect: Option<Dur>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPace {
    rpm: Option<Rpm>,
    tpm: Option<u64>,
    adaptive: Option<bool>,
    burst: Option<Dur>,
    max_wait: Option<MaxWait>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFallback {
    cache_capacity: Option<Capacity>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    limit: Limit,
    window: Option<Dur>,
}

/// A spend limit written like `"5.00usd"` or `"20000tok"`.
struct Limit(Budget);

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse::<Budget>().map(Limit).map_err(de::Error::custom)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreaker {
    failures: Option<Count>,
    window: Option<Dur>,
    failure_rate: Option<Share>,
    cooldown: Option<Dur>,
    probes: Option<Count>,
    count_429: Option<bool>,
    adaptive: Option<bool>,
    retry_ratio: Option<Ratio>,
    retry_ratio_max: Option<Ratio>,
    retry_step: Option<Ratio>,
    min_retries_per_sec: Option<u32>,
    queue_len: Option<Count>,
    queue_release_per_sec: Option<Count>,
}

pub(super) fn parse(text: &str) -> Result<Config, String> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut config = Config {
        cache_capacity: raw
            .fallback
            .and_then(|f| f.cache_capacity)
            .map(|c| c.0 as usize),
        ..Config::default()
    };
    let check_name = |kind: &str, name: &str| {
        if valid_name(name) {
            return Ok(());
        }
        let line = text
            .lines()
            .position(|l| l.contains(name))
            .map(|i| format!(" (line {})", i + 1))
            .unwrap_or_default();
        Err(format!(
            "{kind} name `{name}`{line} may use only a-z, 0-9, `_` and `-` (at most {} characters)",
            retry_grammar::NAME_MAX_LEN
        ))
    };
    if let Some(store) = raw.store {
        let line = |key: &str| {
            text.lines()
                .position(|l| l.trim_start().starts_with(key))
                .map(|i| format!(" (line {})", i + 1))
                .unwrap_or_default()
        };
        let mut config_store = match store.redis_url {
            Some(url) => StoreConfig::redis(&url)
                .map_err(|e| format!("[store] redis_url{}: {e}", line("redis_url")))?,
            None => StoreConfig::none(),
        };
        if let Some(prefix) = store.prefix {
            config_store = config_store
                .with_prefix(&prefix)
                .map_err(|e| format!("[store] prefix{}: {e}", line("prefix")))?;
        }
        if let Some(timeout) = store.timeout {
            config_store = config_store.with_timeout(timeout.0);
        }
        if let Some(every) = store.reconnect {
            config_store = config_store.with_reconnect_every(every.0);
        }
        config.store = Some(config_store);
    }
    for (model, raw) in raw.price {
        config
            .prices
            .insert(model, Price::micros_per_million(raw.input.0, raw.output.0));
    }
    for (name, raw) in raw.policy {
        let policy = policy_section(text, &name, raw)?;
        config.policies.insert(name, policy);
    }
    for (name, raw) in raw.pool {
        check_name("pool", &name)?;
        config.pools.insert(
            name,
            PoolConfig {
                limit: raw.limit.0,
                window: raw.window.map_or(Duration::from_secs(3600), |w| w.0),
            },
        );
    }
    for (name, raw) in raw.pace {
        check_name("pace", &name)?;
        let d = PaceConfig::default();
        config.pacers.insert(
            name,
            PaceConfig {
                rpm: raw.rpm.map(|c| c.0).or(d.rpm),
                tpm: raw.tpm.or(d.tpm),
                adaptive: raw.adaptive.unwrap_or(d.adaptive),
                burst: raw.burst.map_or(d.burst, |b| b.0),
                max_wait: raw.max_wait.map_or(d.max_wait, |w| w.0),
            },
        );
    }
    for (name, raw) in raw.breaker {
        check_name("breaker", &name)?;
        let d = BreakerConfig::default();
        let failure_rate_ppm = raw.failure_rate.map_or(d.failure_rate_ppm, |s| s.0);
        config.breakers.insert(
            name,
            BreakerConfig {
                failures: raw.failures.map_or(d.failures, |c| c.0),
                window: raw.window.map_or(d.window, |w| w.0),
                failure_rate_ppm,
                cooldown: raw.cooldown.map_or(d.cooldown, |c| c.0),
                probes: raw.probes.map_or(d.probes, |c| c.0),
                count_429: raw.count_429.unwrap_or(d.count_429),
                adaptive: raw.adaptive.unwrap_or(d.adaptive),
                retry_ratio_ppm: raw.retry_ratio.map_or(d.retry_ratio_ppm, |r| r.0),
                retry_ratio_max_ppm: raw.retry_ratio_max.map_or(d.retry_ratio_max_ppm, |r| r.0),
                retry_step_ppm: raw.retry_step.map_or(d.retry_step_ppm, |r| r.0),
                min_retries_per_sec: raw.min_retries_per_sec.unwrap_or(d.min_retries_per_sec),
                queue_len: raw.queue_len.map_or(d.queue_len, |c| c.0),
                queue_release_per_sec: raw
                    .queue_release_per_sec
                    .map_or(d.queue_release_per_sec, |c| c.0),
            },
        );
    }
    Ok(config)
}

/// A whole number in `1..=max`, or the message that says which numbers are allowed.
fn whole_in<'de, D: Deserializer<'de>>(d: D, max: i64, what: &str) -> Result<u32, D::Error> {
    let n = i64::deserialize(d)?;
    if (1..=max).contains(&n) {
        Ok(n as u32)
    } else {
        Err(de::Error::custom(format!(
            "{n} is out of range: use a whole number{what} from 1 to {max}"
        )))
    }
}

/// A provider's requests-per-minute limit: 1 up to ten million (large accounts have limits in
/// the tens of thousands, far above the 1..=1000 of [`Count`]).
struct Rpm(u32);

impl<'de> Deserialize<'de> for Rpm {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        whole_in(d, 10_000_000, " of requests per minute").map(Rpm)
    }
}

/// A count in 1..=1000.
struct Count(u32);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        whole_in(d, 1000, "").map(Count)
    }
}

/// How many answers a fallback cache keeps: 1 up to a million (the default is 1024).
struct Capacity(u32);

impl<'de> Deserialize<'de> for Capacity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        whole_in(d, 1_000_000, " of answers").map(Capacity)
    }
}

/// A share of the calls: a [`Ratio`] from 0 to 1. Checked while deserializing, so that the
/// error carries the key's line like every other.
struct Share(u64);

impl<'de> Deserialize<'de> for Share {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Ratio::deserialize(d)? {
            Ratio(ppm) if ppm > 1_000_000 => Err(de::Error::custom(
                "failure_rate is a share of the calls: write a number from 0 to 1, or from \"0%\" to \"100%\"",
            )),
            Ratio(ppm) => Ok(Share(ppm)),
        }
    }
}

/// A positive duration written like `"30s"`.
struct Dur(Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match parse_duration(&text) {
            Ok(d) if !d.is_zero() => Ok(Dur(d)),
            Ok(_) => Err(de::Error::custom("must be longer than zero")),
            Err(why) => Err(de::Error::custom(format!(
                "`{text}`: {why}; {}",
                retry_grammar::DURATION_HINT
            ))),
        }
    }
}

/// A ratio written as `0.2` or `"20%"`, held in parts per million; 0 to 10 (1000%).
/// `max_wait`: a duration, or `"none"` for no limit of its own.
struct MaxWait(Option<Duration>);

impl<'de> Deserialize<'de> for MaxWait {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text.trim() == "none" {
            return Ok(MaxWait(None));
        }
        match parse_duration(&text) {
            Ok(d) => Ok(MaxWait(Some(d))),
            Err(why) => Err(de::Error::custom(format!(
                "`{text}`: {why}; {}, or \"none\"",
                retry_grammar::DURATION_HINT
            ))),
        }
    }
}

struct Ratio(u64);

impl<'de> Deserialize<'de> for Ratio {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Ratio;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a ratio such as 0.2 or \"20%\"")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Ratio, E> {
                ratio_ppm(v).map(Ratio).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Ratio, E> {
                ratio_ppm(v as f64).map(Ratio).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Ratio, E> {
                let pct = v
                    .trim()
                    .strip_suffix('%')
                    .and_then(|n| n.trim().parse::<f64>().ok())
                    .ok_or_else(|| {
                        E::custom(format!("`{v}` is not a ratio: write 0.2 or \"20%\""))
                    })?;
                ratio_ppm(pct / 100.0).map(Ratio).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

fn ratio_ppm(v: f64) -> Result<u64, String> {
    if v.is_finite() && (0.0..=10.0).contains(&v) {
        // Converted once, here; all budget arithmetic after this is integer.
        Ok((v * 1e6).round() as u64)
    } else {
        Err(format!(
            "{v} is out of range: a ratio lies between 0 and 10 (1000%)"
        ))
    }
}

/// `"500ms"`, `"2s"`, `"1.5s"`, `"1m"`, `"1h"`; at most a day. The same grammar the
/// attribute accepts: both call [`retry_grammar::duration_nanos`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    retry_grammar::duration_nanos(text).map(Duration::from_nanos)
}
