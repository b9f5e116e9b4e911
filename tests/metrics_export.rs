//! The metrics a dashboard needs, through a real recorder: `metrics-exporter-prometheus`
//! installed as the global recorder, its text rendered after real calls through
//! `#[resilient]` (paused time). Each test runs `isolated`, so that another test's
//! `refresh_gauges` (which refreshes the entries of its own scope) cannot set its gauges. And
//! the Grafana dashboard in `docs/` names only metrics that exist.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use futures::StreamExt;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use retry_runtime::metric_names::{self, Kind};
use retry_runtime::report::refresh_gauges;
use retry_runtime::testing::isolated;
use retry_runtime::{
    breaker, configure, pool_usage, resilient, BreakerState, Budget, Classify, Config, ErrorClass,
    Metered, Rejected, Spend, Streamed,
};

const CONFIG: &str = r#"
[breaker.mx-breaker]
failures = 3
window = "60s"
cooldown = "1s"
adaptive = false

[pool.mx-pool]
limit = "0.01usd"
window = "1h"

[pace.mx-pacer]
rpm = 60
adaptive = false
"#;

/// The recorder, installed once for this binary before any call, and the configuration.
fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets(metric_names::DURATION_BUCKETS)
            .unwrap()
            .install_recorder()
            .unwrap();
        metric_names::describe();
        configure(Config::from_toml_str(CONFIG).unwrap()).unwrap();
        handle
    })
}

/// The value of one series (`name{labels}` exactly as rendered), if it is there.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
        rest.trim().parse().ok()
    })
}

#[derive(Debug)]
enum E {
    Status(u16),
    Runtime(Rejected),
}

impl From<Rejected> for E {
    fn from(r: Rejected) -> Self {
        E::Runtime(r)
    }
}

impl Classify for E {
    fn class(&self) -> ErrorClass {
        match self {
            E::Status(code) => ErrorClass::Status(*code),
            E::Runtime(r) => r.class(),
        }
    }
}

#[resilient(name = "mx.flaky", max = 1, breaker = "mx-breaker")]
async fn flaky(fail: &AtomicBool) -> Result<u32, E> {
    tokio::time::sleep(Duration::from_millis(100)).await;
    if fail.load(Ordering::SeqCst) {
        return Err(E::Status(503));
    }
    Ok(1)
}

#[tokio::test(start_paused = true)]
async fn the_breaker_state_gauge_follows_its_transitions() {
    isolated(async {
        let handle = recorder();
        let state = r#"retry_runtime_breaker_state{breaker="mx-breaker"}"#;
        let fail = AtomicBool::new(true);

        assert!(flaky(&fail).await.is_err());
        // No transition yet: only the refresh says "closed".
        assert_eq!(value(&handle.render(), state), None);
        refresh_gauges();
        assert_eq!(value(&handle.render(), state), Some(0.0));

        assert!(flaky(&fail).await.is_err());
        assert!(flaky(&fail).await.is_err());
        assert_eq!(breaker("mx-breaker").state(), BreakerState::Open);
        let text = handle.render();
        assert_eq!(value(&text, state), Some(2.0), "open, set by the transition");
        let refused = flaky(&fail).await;
        assert!(matches!(refused, Err(E::Runtime(Rejected::CircuitOpen { .. }))));

        // After the cooldown a successful probe closes it: 0 again, through half-open.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        fail.store(false, Ordering::SeqCst);
        assert_eq!(flaky(&fail).await.unwrap(), 1);
        let text = handle.render();
        assert_eq!(value(&text, state), Some(0.0));
        let to = |s: &str| {
            value(
                &text,
                &format!(r#"retry_runtime_breaker_transitions_total{{breaker="mx-breaker",to="{s}"}}"#),
            )
        };
        assert_eq!((to("open"), to("half_open"), to("closed")), (Some(1.0), Some(1.0), Some(1.0)));

        // Every call's duration, by how it ended: three failures of 100 ms, a refusal at once,
        // a success of 100 ms.
        let duration = |stop: &str, part: &str| {
            value(
                &text,
                &format!(
                    r#"retry_runtime_call_duration_seconds_{part}{{function="mx.flaky",stop="{stop}"}}"#
                ),
            )
        };
        assert_eq!(duration("attempts_exhausted", "count"), Some(3.0));
        assert_eq!(duration("circuit_open", "count"), Some(1.0));
        assert_eq!(duration("success", "count"), Some(1.0));
        let failed = duration("attempts_exhausted", "sum").unwrap();
        assert!((failed - 0.3).abs() < 0.005, "{failed}");
        assert!(duration("circuit_open", "sum").unwrap() < 0.001);
        let bucket = |le: &str| {
            value(
                &text,
                &format!(
                    r#"retry_runtime_call_duration_seconds_bucket{{function="mx.flaky",stop="success",le="{le}"}}"#
                ),
            )
        };
        assert_eq!((bucket("0.05"), bucket("0.1"), bucket("+Inf")), (Some(0.0), Some(1.0), Some(1.0)));
    })
    .await;
}

/// An answer that says what it cost.
struct Priced(u64);

impl Metered for Priced {
    fn spend(&self) -> Spend {
        Spend::from_micros(self.0)
    }
}

#[resilient(name = "mx.pooled", max = 1, pool = "mx-pool")]
async fn pooled(micros: u64) -> Result<Priced, E> {
    Ok(Priced(micros))
}

#[tokio::test(start_paused = true)]
async fn the_pool_gauges_and_usage_follow_the_ledger() {
    isolated(async {
        let handle = recorder();
        let committed = r#"retry_runtime_pool_committed_micros{pool="mx-pool",window="3600s"}"#;
        let limit = r#"retry_runtime_pool_limit_micros{pool="mx-pool",window="3600s"}"#;

        assert!(pooled(3_000).await.is_ok());
        assert!(pooled(3_000).await.is_ok());
        let text = handle.render();
        assert_eq!(value(&text, committed), Some(6_000.0));
        assert_eq!(value(&text, limit), Some(10_000.0));
        let usage = pool_usage("mx-pool").unwrap();
        assert_eq!(usage.committed, Spend::from_micros(6_000));
        assert_eq!(usage.limit, Some(Budget::usd(0.01)));
        assert_eq!(usage.window, Some(Duration::from_secs(3600)));
        assert_eq!(usage.fraction(), Some(0.6));
        assert_eq!(usage.total, Spend::from_micros(6_000));

        // Full: the next call that would not fit is refused, and the gauge says why.
        assert!(pooled(3_000).await.is_ok());
        let refused = pooled(3_000).await;
        assert!(matches!(
            refused,
            Err(E::Runtime(Rejected::BudgetExhausted { .. }))
        ));
        assert_eq!(value(&handle.render(), committed), Some(9_000.0));

        // The window rolls over with no call in it: the usage and the refreshed gauge say so.
        let resets_in = pool_usage("mx-pool").unwrap().resets_in.unwrap();
        tokio::time::sleep(resets_in).await;
        let usage = pool_usage("mx-pool").unwrap();
        assert_eq!(usage.committed, Spend::ZERO);
        assert_eq!(usage.total, Spend::from_micros(9_000));
        assert_eq!(
            value(&handle.render(), committed),
            Some(9_000.0),
            "no write said so yet"
        );
        refresh_gauges();
        assert_eq!(value(&handle.render(), committed), Some(0.0));
        assert_eq!(pool_usage("mx-no-such-pool"), None);
    })
    .await;
}

#[resilient(name = "mx.paced", max = 1, pace = "mx-pacer")]
async fn paced() -> Result<u32, E> {
    Ok(7)
}

#[tokio::test(start_paused = true)]
async fn a_paced_call_records_its_wait_and_the_line_its_length() {
    isolated(async {
        let handle = recorder();
        // One request a second, a burst of one: three callers at once are served at 0, 1 s, 2 s
        // (polled on this task, so that they share its isolated pacer).
        let calls = futures::future::join_all((0..3).map(|_| paced()));
        let line = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            value(&handle.render(), r#"retry_runtime_pace_waiting{pacer="mx-pacer"}"#)
        };
        let (answers, waiting) = tokio::join!(calls, line);
        assert_eq!(waiting, Some(2.0), "two callers in line");
        assert!(answers.into_iter().all(|a| a.unwrap() == 7));
        refresh_gauges();
        let text = handle.render();
        assert_eq!(
            value(&text, r#"retry_runtime_pace_waiting{pacer="mx-pacer"}"#),
            Some(0.0)
        );
        assert_eq!(
            value(&text, r#"retry_runtime_pace_rate{pacer="mx-pacer"}"#),
            Some(1.0),
            "the fixed rate, shown by the refresh"
        );
        let wait = |part: &str| {
            value(
                &text,
                &format!(r#"retry_runtime_first_attempt_wait_seconds_{part}{{function="mx.paced"}}"#),
            )
        };
        assert_eq!(wait("count"), Some(3.0));
        let sum = wait("sum").unwrap();
        assert!((sum - 3.0).abs() < 0.01, "waits of 0, 1 and 2 s: {sum}");
        let bucket = |le: &str| {
            value(
                &text,
                &format!(
                    r#"retry_runtime_first_attempt_wait_seconds_bucket{{function="mx.paced",le="{le}"}}"#
                ),
            )
        };
        assert_eq!((bucket("0.005"), bucket("1"), bucket("2.5")), (Some(1.0), Some(2.0), Some(3.0)));
    })
    .await;
}

type Words = futures::stream::Iter<std::vec::IntoIter<Result<&'static str, E>>>;

#[resilient(name = "mx.streamed", max = 1, first_token = "5s")]
async fn streamed() -> Result<Streamed<Words>, E> {
    tokio::time::sleep(Duration::from_millis(250)).await;
    Ok(Streamed::new(futures::stream::iter(vec![Ok("a"), Ok("b")])))
}

#[tokio::test(start_paused = true)]
async fn a_streamed_call_records_its_time_to_first_chunk() {
    isolated(async {
        let handle = recorder();
        let mut words = streamed().await.unwrap();
        // Recorded when the first chunk came, before the stream is read.
        let first = |text: &str, part: &str| {
            value(
                text,
                &format!(
                    r#"retry_runtime_stream_first_chunk_seconds_{part}{{function="mx.streamed"}}"#
                ),
            )
        };
        let text = handle.render();
        assert_eq!(first(&text, "count"), Some(1.0));
        let sum = first(&text, "sum").unwrap();
        assert!((sum - 0.25).abs() < 0.005, "{sum}");
        while words.next().await.is_some() {}
        drop(words);
        let text = handle.render();
        assert_eq!(
            value(
                &text,
                r#"retry_runtime_call_duration_seconds_count{function="mx.streamed",stop="success"}"#
            ),
            Some(1.0),
            "the call ends with its stream"
        );
        // A site that never streams has no first-chunk series.
        assert_eq!(plain().await.unwrap(), 1);
        let text = handle.render();
        assert!(text.contains(r#"retry_runtime_first_attempt_wait_seconds_count{function="mx.plain"}"#));
        assert!(!text.contains(r#"retry_runtime_stream_first_chunk_seconds_count{function="mx.plain"}"#));
    })
    .await;
}

/// A site of its own (each test's series are its own: the recorder is shared).
#[resilient(name = "mx.plain", max = 1)]
async fn plain() -> Result<u32, E> {
    Ok(1)
}

#[tokio::test(start_paused = true)]
async fn described_metrics_have_help_and_type_lines() {
    isolated(async {
        let handle = recorder();
        assert_eq!(plain().await.unwrap(), 1);
        let text = handle.render();
        for (name, kind) in [
            (metric_names::CALL_DURATION, "histogram"),
            (metric_names::FIRST_ATTEMPT_WAIT, "histogram"),
            (metric_names::CALLS, "counter"),
        ] {
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "no HELP for {name}:\n{text}"
            );
            assert!(text.contains(&format!("# TYPE {name} {kind}")), "{name}");
        }
    })
    .await;
}

// ---- the dashboard ----

/// Every string in the dashboard, wherever it is nested, and whether it is a PromQL `expr`.
fn strings(value: &serde_json::Value, key: &str, out: &mut Vec<(bool, String)>) {
    match value {
        serde_json::Value::Object(map) => map.iter().for_each(|(k, v)| strings(v, k, out)),
        serde_json::Value::Array(items) => items.iter().for_each(|v| strings(v, key, out)),
        serde_json::Value::String(s) => out.push((key == "expr", s.clone())),
        _ => {}
    }
}

/// The metric names an expression uses: its identifiers that start with `retry_runtime_`.
fn metric_names_in(expr: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("retry_runtime_") {
        let boundary = at == 0
            || !rest[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if boundary {
            names.push(&tail[..end]);
        }
        rest = &tail[end..];
    }
    names
}

/// Whether `name` is one the runtime records (a histogram also as `_bucket`, `_sum`, `_count`).
fn exists(name: &str) -> bool {
    metric_names::ALL.iter().any(|&(known, kind)| {
        name == known
            || (kind == Kind::Histogram
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| name.strip_suffix(suffix) == Some(known)))
    })
}

#[test]
fn the_dashboard_names_only_metrics_that_exist() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(dashboard["panels"]
        .as_array()
        .is_some_and(|p| !p.is_empty()));
    let mut all = Vec::new();
    strings(&dashboard, "", &mut all);
    let exprs = all.iter().filter(|(expr, _)| *expr).count();
    assert!(exprs >= 20, "{exprs} expressions");
    let mut used = std::collections::BTreeSet::new();
    // Every name anywhere (queries, template variables, descriptions) is a metric the runtime
    // records; every expression names one.
    for (expr, text) in &all {
        let names = metric_names_in(text);
        assert!(
            !*expr || !names.is_empty(),
            "an expression with no metric: {text}"
        );
        for name in names {
            assert!(
                exists(name),
                "`{name}` in `{text}` is not a metric the runtime records"
            );
            if *expr {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix).filter(|b| exists(b)))
                    .unwrap_or(name);
                used.insert(base.to_string());
            }
        }
    }
    // It charts what the service team asked for.
    for needed in [
        metric_names::CALL_DURATION,
        metric_names::FIRST_ATTEMPT_WAIT,
        metric_names::STREAM_FIRST_CHUNK,
        metric_names::BREAKER_STATE,
        metric_names::POOL_COMMITTED_MICROS,
        metric_names::POOL_LIMIT_MICROS,
        metric_names::PACE_RATE,
        metric_names::PACE_WAITING,
        metric_names::QUEUE_LENGTH,
    ] {
        assert!(
            used.contains(needed),
            "the dashboard does not chart {needed}"
        );
    }
}

#[test]
fn the_name_check_can_fail() {
    assert_eq!(
        metric_names_in("sum(rate(retry_runtime_calls_total[5m])) / x_retry_runtime_no"),
        ["retry_runtime_calls_total"]
    );
    assert!(exists("retry_runtime_call_duration_seconds_bucket"));
    assert!(!exists("retry_runtime_calls_total_bucket"));
    assert!(!exists("retry_runtime_call_duration"));
}
