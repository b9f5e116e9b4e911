//! Counters through the `metrics` facade (feature `metrics`), or no-ops without it.

#[cfg(feature = "metrics")]
mod on {
    use crate::metric_names as names;
    use metrics::{Counter, Key, Label, Level, Metadata};

    static METADATA: Metadata<'static> =
        Metadata::new("retry_runtime", Level::INFO, Some("retry_runtime"));

    /// A call site's labels, built at compile time, and its counter handles, registered with
    /// the recorder on the site's first call. Afterwards a counter is one `OnceLock` load and
    /// the recorder's own increment: no key hashing, no registry lookup, no lock. Install
    /// the recorder before the first call (as the `metrics` crate recommends).
    #[derive(Debug)]
    pub struct SiteLabels {
        function: [Label; 1],
        success: [Label; 2],
        counters: std::sync::OnceLock<SiteCounters>,
    }

    #[derive(Debug)]
    struct SiteCounters {
        attempts: Counter,
        retries: Counter,
        successes: Counter,
        spend_micros: Counter,
        spend_tokens: Counter,
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
            }
        }

        fn counters(&'static self) -> &'static SiteCounters {
            self.counters.get_or_init(|| {
                let counter = |name: &'static str, labels: &'static [Label]| {
                    let key = Key::from_static_parts(name, labels);
                    metrics::with_recorder(|r| r.register_counter(&key, &METADATA))
                };
                SiteCounters {
                    attempts: counter(names::ATTEMPTS, &self.function),
                    retries: counter(names::RETRIES, &self.function),
                    successes: counter(names::CALLS, &self.success),
                    spend_micros: counter(names::SPEND_MICROS, &self.function),
                    spend_tokens: counter(names::SPEND_TOKENS, &self.function),
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

    /// Counters at the end of a call. `labels` is the call site's static label set (the
    /// macro's call sites); without it (a hand-built, non-static call site) keys are built
    /// at run time.
    pub fn call_ended(
        labels: Option<&'static SiteLabels>,
        function: &'static str,
        stop: &'static str,
        attempts: u64,
        micros: u64,
        tokens: u64,
    ) {
        let Some(labels) = labels else {
            // A call site that is not a `static`: no compile-time labels, so count without the
            // `function` label rather than allocate a label set on every call.
            add(&Key::from_static_name(names::ATTEMPTS), attempts);
            add(&Key::from_static_name(names::SPEND_MICROS), micros);
            add(&Key::from_static_name(names::SPEND_TOKENS), tokens);
            add(&Key::from_static_name(names::CALLS), 1);
            return;
        };
        let counters = labels.counters();
        bump(&counters.attempts, attempts);
        bump(&counters.spend_micros, micros);
        bump(&counters.spend_tokens, tokens);
        if stop == "success" {
            counters.successes.increment(1);
        } else {
            metrics::counter!(names::CALLS, "function" => function, "stop" => stop).increment(1);
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
    ) {
    }
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
