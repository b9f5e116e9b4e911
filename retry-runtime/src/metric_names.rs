//! Counters, histograms and gauges through the `metrics` facade (feature `metrics`, on by
//! default). With no recorder installed each costs an atomic load; the per-call-site ones use
//! keys built at compile time and handles registered on the site's first call, so a
//! successful call allocates nothing for them. Install the recorder before the first call (as
//! the `metrics` crate recommends), then call [`describe`] once for the help texts and units.
//!
//! | metric | kind | labels | what | unit |
//! |---|---|---|---|---|
//! | `retry_runtime_attempts_total` | counter | `function` | attempts made (first attempts and retries) | attempts |
//! | `retry_runtime_retries_total` | counter | `function` | retries started | retries |
//! | `retry_runtime_calls_total` | counter | `function`, `stop` | calls ended, by `StopReason::as_str` | calls |
//! | `retry_runtime_rejections_total` | counter | `function`, `reason` | calls or retries refused by the runtime (`circuit_open`, `breaker_opened`, `retry_budget_exhausted`, `shed`, `pacer_line_full`, `budget_exhausted`, `pool_unconfigured`, `queue_full`, `queue_timeout`) | refusals |
//! | `retry_runtime_fallbacks_total` | counter | `function`, `kind` | degraded answers, by `cached`, `function`, `queue` | answers |
//! | `retry_runtime_spend_micros_total` | counter | `function` | money spent (successes and billed failures) | micro-dollars |
//! | `retry_runtime_spend_tokens_total` | counter | `function` | tokens spent | tokens |
//! | `retry_runtime_breaker_transitions_total` | counter | `breaker`, `to` | breaker state changes | changes |
//! | `retry_runtime_breaker_regime_changes_total` | counter | `breaker`, `to` | changes of what a breaker believes its provider is going through (`healthy`, `throttled`, `brownout`, `overload`, `outage`) | changes |
//! | `retry_runtime_store_transitions_total` | counter | `store`, `to` | a shared store became reachable (`shared`) or unreachable (`local`) | changes |
//! | `retry_runtime_call_duration_seconds` | histogram | `function`, `stop` | from a call's start to its end, waits, retries and fallbacks included (a streamed call: to its stream's end) | seconds |
//! | `retry_runtime_first_attempt_wait_seconds` | histogram | `function` | from a call's start to its first attempt's start: what the gate made it wait (the pacer's permit, an overloaded breaker's admission rate, the turn at a site whose cost is unknown); zero when nothing waited; refused calls are not in it | seconds |
//! | `retry_runtime_stream_first_chunk_seconds` | histogram | `function` | a streamed call's time to its first chunk, retries included (`StreamReport::first_chunk`) | seconds |
//! | `retry_runtime_breaker_state` | gauge | `breaker` | the breaker's state: 0 closed, 1 half-open, 2 open | state |
//! | `retry_runtime_pool_committed_micros` | gauge | `pool`, `window` | what a dollar-limited pool has committed (settled and reserved) in its current window | micro-dollars |
//! | `retry_runtime_pool_limit_micros` | gauge | `pool`, `window` | a dollar-limited pool's limit per window | micro-dollars |
//! | `retry_runtime_pool_committed_tokens` | gauge | `pool`, `window` | what a token-limited pool has committed in its current window | tokens |
//! | `retry_runtime_pool_limit_tokens` | gauge | `pool`, `window` | a token-limited pool's limit per window | tokens |
//! | `retry_runtime_pace_rate` | gauge | `pacer` | the request rate a pacer enforces now (the smaller of `rpm` and the adaptive rate; absent while neither limits) | requests per second |
//! | `retry_runtime_pace_waiting` | gauge | `pacer` | callers waiting in a pacer's line | callers |
//! | `retry_runtime_queue_length` | gauge | `breaker` | callers in a breaker's `fallback = queue` line (waiting or being served) | callers |
//!
//! A pool's `window` label is its window in seconds (`"3600s"`); a pool without a limit has no
//! gauges. Gauges are set as their state changes; some state changes with time alone (a pool's
//! window rolls over, a fixed `rpm` never changes), so call
//! [`report::refresh_gauges`](crate::report::refresh_gauges) before a scrape or every few
//! seconds. [`DURATION_BUCKETS`] are bucket bounds that suit the histograms, for exporters that
//! need them.

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
/// Histogram: seconds from a call's start to its end, labelled `function` and `stop`.
pub const CALL_DURATION: &str = "retry_runtime_call_duration_seconds";
/// Histogram: seconds from a call's start to its first attempt's start (the gate's waits:
/// pacing, an overloaded breaker's admission rate), labelled `function`.
pub const FIRST_ATTEMPT_WAIT: &str = "retry_runtime_first_attempt_wait_seconds";
/// Histogram: seconds from a streamed call's start to its first chunk, labelled `function`.
pub const STREAM_FIRST_CHUNK: &str = "retry_runtime_stream_first_chunk_seconds";
/// Gauge: a breaker's state, labelled `breaker`: 0 closed, 1 half-open, 2 open (see
/// [`BreakerState::gauge_value`](crate::BreakerState::gauge_value)).
pub const BREAKER_STATE: &str = "retry_runtime_breaker_state";
/// Gauge: micro-dollars a pool has committed in its current window, labelled `pool` and
/// `window`.
pub const POOL_COMMITTED_MICROS: &str = "retry_runtime_pool_committed_micros";
/// Gauge: a dollar-limited pool's limit in micro-dollars, labelled `pool` and `window`.
pub const POOL_LIMIT_MICROS: &str = "retry_runtime_pool_limit_micros";
/// Gauge: tokens a token-limited pool has committed in its current window, labelled `pool`
/// and `window`.
pub const POOL_COMMITTED_TOKENS: &str = "retry_runtime_pool_committed_tokens";
/// Gauge: a token-limited pool's limit in tokens, labelled `pool` and `window`.
pub const POOL_LIMIT_TOKENS: &str = "retry_runtime_pool_limit_tokens";
/// Gauge: a pacer's enforced request rate in requests per second, labelled `pacer`.
pub const PACE_RATE: &str = "retry_runtime_pace_rate";
/// Gauge: callers waiting in a pacer's line, labelled `pacer`.
pub const PACE_WAITING: &str = "retry_runtime_pace_waiting";
/// Gauge: callers in a breaker's `fallback = queue` line, labelled `breaker`.
pub const QUEUE_LENGTH: &str = "retry_runtime_queue_length";

/// What kind of metric a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (`_total`).
    Counter,
    /// A distribution of values (`_seconds`); exported as `_bucket`, `_sum`, `_count`.
    Histogram,
    /// A value that goes up and down.
    Gauge,
}

/// Every metric the runtime records, with its kind: what [`describe`] describes, and what a
/// dashboard may name.
pub const ALL: &[(&str, Kind)] = &[
    (ATTEMPTS, Kind::Counter),
    (RETRIES, Kind::Counter),
    (CALLS, Kind::Counter),
    (REJECTIONS, Kind::Counter),
    (FALLBACKS, Kind::Counter),
    (SPEND_MICROS, Kind::Counter),
    (SPEND_TOKENS, Kind::Counter),
    (BREAKER_TRANSITIONS, Kind::Counter),
    (REGIME_CHANGES, Kind::Counter),
    (STORE_TRANSITIONS, Kind::Counter),
    (CALL_DURATION, Kind::Histogram),
    (FIRST_ATTEMPT_WAIT, Kind::Histogram),
    (STREAM_FIRST_CHUNK, Kind::Histogram),
    (BREAKER_STATE, Kind::Gauge),
    (POOL_COMMITTED_MICROS, Kind::Gauge),
    (POOL_LIMIT_MICROS, Kind::Gauge),
    (POOL_COMMITTED_TOKENS, Kind::Gauge),
    (POOL_LIMIT_TOKENS, Kind::Gauge),
    (PACE_RATE, Kind::Gauge),
    (PACE_WAITING, Kind::Gauge),
    (QUEUE_LENGTH, Kind::Gauge),
];

/// Bucket upper bounds in seconds for the histograms: LLM calls take from tens of
/// milliseconds (a cached or refused answer) to minutes (a long generation with retries).
/// For exporters that need fixed buckets, e.g. `metrics-exporter-prometheus`'s
/// `set_buckets(DURATION_BUCKETS)`.
pub const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Give the installed recorder each metric's help text and unit (`# HELP` and `# TYPE` lines in
/// Prometheus' text format). Call it once, after installing the recorder; calling it again
/// changes nothing. Without the `metrics` feature it does nothing.
///
/// ```
/// // After installing a recorder (none here: the descriptions then go nowhere).
/// retry_runtime::metric_names::describe();
/// ```
pub fn describe() {
    #[cfg(feature = "metrics")]
    described::describe();
}

#[cfg(feature = "metrics")]
mod described {
    use super::*;
    use metrics::Unit;

    pub(super) fn describe() {
        for &(name, kind) in ALL {
            let (unit, help) = help(name);
            match (kind, unit) {
                (Kind::Counter, Some(u)) => metrics::describe_counter!(name, u, help),
                (Kind::Counter, None) => metrics::describe_counter!(name, help),
                (Kind::Histogram, Some(u)) => metrics::describe_histogram!(name, u, help),
                (Kind::Histogram, None) => metrics::describe_histogram!(name, help),
                (Kind::Gauge, Some(u)) => metrics::describe_gauge!(name, u, help),
                (Kind::Gauge, None) => metrics::describe_gauge!(name, help),
            }
        }
    }

    /// The unit the facade knows (none for money, which it has no unit for, nor for the
    /// breaker's state code: the help text says what they are) and the help text.
    pub(super) fn help(name: &str) -> (Option<Unit>, &'static str) {
        match name {
            ATTEMPTS => (Some(Unit::Count), "Attempts made by #[resilient] calls (first attempts and retries)."),
            RETRIES => (Some(Unit::Count), "Retries started by #[resilient] calls."),
            CALLS => (Some(Unit::Count), "Calls ended, by stop reason (StopReason::as_str)."),
            REJECTIONS => (Some(Unit::Count), "Calls or retries refused by the runtime, by reason."),
            FALLBACKS => (Some(Unit::Count), "Degraded answers served by a fallback, by kind (cached, function, queue)."),
            SPEND_MICROS => (None, "Money spent by calls (successes and billed failures), in micro-dollars (1e-6 USD)."),
            SPEND_TOKENS => (Some(Unit::Count), "Tokens spent by calls."),
            BREAKER_TRANSITIONS => (Some(Unit::Count), "Circuit breaker state changes, by the state entered."),
            REGIME_CHANGES => (Some(Unit::Count), "Changes of what a breaker believes its provider is going through (healthy, throttled, brownout, overload, outage)."),
            STORE_TRANSITIONS => (Some(Unit::Count), "The shared store became reachable (shared) or unreachable (local)."),
            CALL_DURATION => (Some(Unit::Seconds), "Seconds from a call's start to its end: waits, retries and fallbacks included; a streamed call ends with its stream."),
            FIRST_ATTEMPT_WAIT => (Some(Unit::Seconds), "Seconds from a call's start to its first attempt's start: the pacer's permit, an overloaded breaker's admission rate, the turn at a site of unknown cost (zero when nothing waited)."),
            STREAM_FIRST_CHUNK => (Some(Unit::Seconds), "Seconds from a streamed call's start to its first chunk, retries included."),
            BREAKER_STATE => (None, "Circuit breaker state: 0 closed, 1 half-open, 2 open."),
            POOL_COMMITTED_MICROS => (None, "Micro-dollars (1e-6 USD) a spend pool has committed (settled and reserved) in its current window."),
            POOL_LIMIT_MICROS => (None, "A spend pool's limit per window, in micro-dollars (1e-6 USD)."),
            POOL_COMMITTED_TOKENS => (Some(Unit::Count), "Tokens a token-limited spend pool has committed (settled and reserved) in its current window."),
            POOL_LIMIT_TOKENS => (Some(Unit::Count), "A token-limited spend pool's limit per window, in tokens."),
            PACE_RATE => (Some(Unit::CountPerSecond), "Requests per second a pacer lets through now (the smaller of its rpm and its adaptive rate)."),
            PACE_WAITING => (Some(Unit::Count), "Callers waiting in a pacer's line."),
            QUEUE_LENGTH => (Some(Unit::Count), "Callers in a breaker's fallback = queue line (waiting or being served)."),
            _ => (None, ""),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn every_name_has_help_and_a_suffix_for_its_kind() {
            for &(name, kind) in ALL {
                assert!(!help(name).1.is_empty(), "{name} has no help text");
                match kind {
                    Kind::Counter => assert!(name.ends_with("_total"), "{name}"),
                    Kind::Histogram => assert!(name.ends_with("_seconds"), "{name}"),
                    Kind::Gauge => assert!(!name.ends_with("_total"), "{name}"),
                }
            }
        }
    }
}

/// A gauge handle registered with the recorder on its first use, then reused: setting it
/// builds no key and looks nothing up. For the gauges of named state (a breaker, a pool, a
/// pacer), which may change on every attempt.
#[derive(Debug, Default)]
pub(crate) struct LazyGauge {
    #[cfg(feature = "metrics")]
    handle: std::sync::OnceLock<metrics::Gauge>,
}

impl LazyGauge {
    pub(crate) const fn new() -> Self {
        Self {
            #[cfg(feature = "metrics")]
            handle: std::sync::OnceLock::new(),
        }
    }

    /// Set the gauge `name` with the labels `labels()` (asked for once) to `value`.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn set(
        &self,
        name: &'static str,
        labels: impl FnOnce() -> Vec<(&'static str, String)>,
        value: f64,
    ) {
        #[cfg(feature = "metrics")]
        self.handle
            .get_or_init(|| {
                static METADATA: metrics::Metadata<'static> = metrics::Metadata::new(
                    "retry_runtime",
                    metrics::Level::INFO,
                    Some("retry_runtime"),
                );
                let labels: Vec<metrics::Label> = labels()
                    .into_iter()
                    .map(|(k, v)| metrics::Label::new(k, v))
                    .collect();
                let key = metrics::Key::from_parts(name, labels);
                metrics::with_recorder(|r| r.register_gauge(&key, &METADATA))
            })
            .set(value);
    }
}
