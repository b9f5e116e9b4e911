//! Counters and histograms through the `metrics` facade (feature `metrics`), or no-ops
//! without it.

#[cfg(feature = "metrics")]
mod on {
    use std::time::Duration;

    use crate::metric_names as names;
    use metrics::{Counter, Histogram, Key, Label, Level, Metadata};

    static METADATA: Metadata<'static> =
        Metadata::new("retry_runtime", Level::INFO, Some("retry_runtime"));

    /// A call site's labels, built at compile time, and its counter and histogram handles,
    /// registered with the recorder on the site's first call. Afterwards a counter is one
    /// `OnceLock` load and the recorder's own increment: no key hashing, no registry lookup,
    /// no lock. Install the recorder before the first call (as the `metrics` crate
    /// recommends).
    #[derive(Debug)]
    pub struct SiteLabels {
        function: [Label; 1],
        success: [Label; 2],
        counters: std::sync::OnceLock<SiteCounters>,
        // Registered at the first chunk, so that a site that never streams has no series.
        first_chunk: std::sync::OnceLock<Histogram>,
    }

    #[derive(Debug)]
    struct SiteCounters {
        attempts: Counter,
        retries: Counter,
        successes: Counter,
        spend_micros: Counter,
        spend_tokens: Counter,
        success_duration: Histogram,
        first_wait: Histogram,
        // Whether a recorder took the handles: without one, the end of a call reads no clock
        // for a duration that would go nowhere.
        timed: bool,
    }

    /// Whether `recorder` records anything: the facade's no-op recorder (what `with_recorder`
    /// gives when none is installed) is zero-sized, and a recorder that keeps values has a
    /// field to keep them in.
    fn records(recorder: &dyn metrics::Recorder) -> bool {
        std::mem::size_of_val(recorder) != 0
    }

    impl SiteLabels {
        pub const fn new(function: &'static str) -> Self {
            Self {
                function: [Label::from_static_parts("function", function)],
                success: [
                    Label::from_static_parts("function", function),
                    Label::from_static_parts("stop", "success"),
                ],
                counters: std::sync::OnceLock::new(),
                first_chunk: std::sync::OnceLock::new(),
            }
        }

        #[inline]
        fn counters(&'static self) -> &'static SiteCounters {
            self.counters.get_or_init(|| {
                let counter = |name: &'static str, labels: &'static [Label]| {
                    let key = Key::from_static_parts(name, labels);
                    metrics::with_recorder(|r| r.register_counter(&key, &METADATA))
                };
                let histogram = |name: &'static str, labels: &'static [Label]| {
                    let key = Key::from_static_parts(name, labels);
                    metrics::with_recorder(|r| r.register_histogram(&key, &METADATA))
                };
                SiteCounters {
                    attempts: counter(names::ATTEMPTS, &self.function),
                    retries: counter(names::RETRIES, &self.function),
                    successes: counter(names::CALLS, &self.success),
                    spend_micros: counter(names::SPEND_MICROS, &self.function),
                    spend_tokens: counter(names::SPEND_TOKENS, &self.function),
                    success_duration: histogram(names::CALL_DURATION, &self.success),
                    first_wait: histogram(names::FIRST_ATTEMPT_WAIT, &self.function),
                    timed: metrics::with_recorder(records),
                }
            })
        }
    }

    fn add(key: &Key, n: u64) {
        if n > 0 {
            metrics::with_recorder(|r| r.register_counter(key, &METADATA).increment(n));
        }
    }

    fn bump(counter: &Counter, n: u64) {
        if n > 0 {
            counter.increment(n);
        }
    }

    fn record(key: &Key, value: Duration) {
        metrics::with_recorder(|r| {
            r.register_histogram(key, &METADATA)
                .record(value.as_secs_f64())
        });
    }

    /// Counters and the duration at the end of a call (`started`: when it began). `labels` is
    /// the call site's static label set (the macro's call sites); without it (a hand-built,
    /// non-static call site) keys are built at run time.
    pub fn call_ended(
        labels: Option<&'static SiteLabels>,
        function: &'static str,
        stop: &'static str,
        attempts: u64,
        micros: u64,
        tokens: u64,
        started: tokio::time::Instant,
    ) {
        let Some(labels) = labels else {
            // A call site that is not a `static`: no compile-time labels, so count without the
            // `function` label rather than allocate a label set on every call.
            add(&Key::from_static_name(names::ATTEMPTS), attempts);
            add(&Key::from_static_name(names::SPEND_MICROS), micros);
            add(&Key::from_static_name(names::SPEND_TOKENS), tokens);
            add(&Key::from_static_name(names::CALLS), 1);
            if metrics::with_recorder(records) {
                record(
                    &Key::from_static_name(names::CALL_DURATION),
                    started.elapsed(),
                );
            }
            return;
        };
        let counters = labels.counters();
        bump(&counters.attempts, attempts);
        bump(&counters.spend_micros, micros);
        bump(&counters.spend_tokens, tokens);
        if stop == "success" {
            counters.successes.increment(1);
            if counters.timed {
                // The one clock read a success adds, and only with a recorder.
                counters
                    .success_duration
                    .record(started.elapsed().as_secs_f64());
            }
        } else {
            metrics::counter!(names::CALLS, "function" => function, "stop" => stop).increment(1);
            if counters.timed {
                metrics::histogram!(names::CALL_DURATION, "function" => function, "stop" => stop)
                    .record(started.elapsed().as_secs_f64());
            }
        }
    }

    /// What a success on the fast path counts (see `FastCall`): one attempt, its spend, one
    /// successful call; no duration (nothing times it there).
    #[inline]
    pub fn fast_success(labels: &'static SiteLabels, micros: u64, tokens: u64) {
        let counters = labels.counters();
        counters.attempts.increment(1);
        bump(&counters.spend_micros, micros);
        bump(&counters.spend_tokens, tokens);
        counters.successes.increment(1);
    }

    /// Whether the recorder this call site reports to records durations (a clock read at the
    /// call's start and end is then worth making).
    pub fn timed(labels: Option<&'static SiteLabels>) -> bool {
        match labels {
            Some(labels) => labels.counters().timed,
            None => metrics::with_recorder(records),
        }
    }

    /// A call's first attempt starts, `wait` after the call did.
    pub fn first_attempt(labels: Option<&'static SiteLabels>, wait: Duration) {
        match labels {
            Some(labels) => labels.counters().first_wait.record(wait.as_secs_f64()),
            None => record(&Key::from_static_name(names::FIRST_ATTEMPT_WAIT), wait),
        }
    }

    /// A streamed call's first chunk came, `after` its start.
    pub fn first_chunk(labels: Option<&'static SiteLabels>, after: Duration) {
        match labels {
            Some(labels) => labels
                .first_chunk
                .get_or_init(|| {
                    let key = Key::from_static_parts(names::STREAM_FIRST_CHUNK, &labels.function);
                    metrics::with_recorder(|r| r.register_histogram(&key, &METADATA))
                })
                .record(after.as_secs_f64()),
            None => record(&Key::from_static_name(names::STREAM_FIRST_CHUNK), after),
        }
    }

    pub fn retry(labels: Option<&'static SiteLabels>) {
        match labels {
            Some(labels) => labels.counters().retries.increment(1),
            None => add(&Key::from_static_name(names::RETRIES), 1),
        }
    }

    pub fn rejection(function: &'static str, reason: &'static str) {
        metrics::counter!(names::REJECTIONS, "function" => function, "reason" => reason)
            .increment(1);
    }

    pub fn fallback(function: &'static str, kind: &'static str) {
        metrics::counter!(names::FALLBACKS, "function" => function, "kind" => kind).increment(1);
    }

    pub fn transition(breaker: &'static str, to: &'static str) {
        metrics::counter!(names::BREAKER_TRANSITIONS, "breaker" => breaker, "to" => to)
            .increment(1);
    }

    pub fn regime(breaker: &'static str, to: &'static str) {
        metrics::counter!(names::REGIME_CHANGES, "breaker" => breaker, "to" => to).increment(1);
    }
}

#[cfg(not(feature = "metrics"))]
mod off {
    // Without the `metrics` feature every counter is a no-op.
    #[derive(Debug)]
    pub struct SiteLabels;

    impl SiteLabels {
        pub const fn new(_function: &'static str) -> Self {
            Self
        }
    }

    pub fn call_ended(
        _: Option<&'static SiteLabels>,
        _: &'static str,
        _: &'static str,
        _: u64,
        _: u64,
        _: u64,
        _: tokio::time::Instant,
    ) {
    }
    pub fn timed(_: Option<&'static SiteLabels>) -> bool {
        false
    }
    pub fn fast_success(_: &'static SiteLabels, _: u64, _: u64) {}
    pub fn first_attempt(_: Option<&'static SiteLabels>, _: std::time::Duration) {}
    pub fn first_chunk(_: Option<&'static SiteLabels>, _: std::time::Duration) {}
    pub fn retry(_: Option<&'static SiteLabels>) {}
    pub fn rejection(_: &'static str, _: &'static str) {}
    pub fn fallback(_: &'static str, _: &'static str) {}
    pub fn transition(_: &'static str, _: &'static str) {}

    pub fn regime(_: &'static str, _: &'static str) {}
}

#[cfg(feature = "metrics")]
pub(crate) use on::*;

#[cfg(not(feature = "metrics"))]
pub(crate) use off::*;
