//! The runtime's metrics in Prometheus' text format, served on loopback during a short
//! simulated incident.
//!
//! ```text
//! cargo run --example prometheus            # about 4 s, then prints what /metrics served
//! cargo run --example prometheus -- --serve # and keeps serving until Ctrl-C
//! ```
//!
//! `metrics-exporter-prometheus` is installed as the recorder and serves `/metrics` on
//! 127.0.0.1; `retry_runtime::metric_names::describe()` gives it the help texts and units. A
//! fake provider in this process answers in 30 ms; for a second and a half it fails 70% of the
//! calls with a 503. Eight callers call it through one `#[resilient]` function with a
//! breaker (it opens during the incident, probes, closes after), a pacer of 20 requests a
//! second (callers wait in its line) and a spend pool of 0.05 USD (it fills), plus a few
//! streamed calls. Then the example fetches its own `/metrics` over loopback and prints it:
//! the `# HELP` lines, the call-duration, first-attempt-wait and first-chunk histograms, and
//! the breaker, pool, pacer and queue gauges. `docs/grafana-dashboard.json` charts them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use metrics_exporter_prometheus::PrometheusBuilder;
use retry_runtime::report::refresh_gauges;
use retry_runtime::{
    breaker, configure, metric_names, pool_usage, resilient, retry_on, Classify, Config,
    ErrorClass, Metered, Rejected, Spend, Streamed,
};

const CONFIG: &str = r#"
[breaker.provider]
failures = 4        # a run of 4 failures opens it
window = "10s"
cooldown = "500ms"
adaptive = false    # the plain run rule, so that the demo opens the same way every time

[pool.demo-hourly]
limit = "0.05usd"
window = "1h"

[pace.provider]
rpm = 1200          # 20 requests a second
burst = "100ms"     # one request
adaptive = false
max_wait = "1s"
"#;

/// What the fake provider's client can fail with.
#[derive(Debug)]
enum DemoError {
    Status(u16),
    Runtime(Rejected),
}

impl From<Rejected> for DemoError {
    fn from(r: Rejected) -> Self {
        DemoError::Runtime(r)
    }
}

impl Classify for DemoError {
    fn class(&self) -> ErrorClass {
        match self {
            DemoError::Status(code) => ErrorClass::Status(*code),
            DemoError::Runtime(r) => r.class(),
        }
    }
}

/// An answer, priced at 0.002 USD.
struct Answer;

impl Metered for Answer {
    fn spend(&self) -> Spend {
        Spend::from_micros(2_000)
    }
}

/// The fake provider: 30 ms per answer; between `incident` and `recovered` (since `start`),
/// 70% of the answers are 503s (a fixed sequence, so every run is the same).
struct Provider {
    start: Instant,
    incident: Duration,
    recovered: Duration,
    calls: AtomicU64,
}

impl Provider {
    async fn answer(&self) -> Result<(), DemoError> {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let t = self.start.elapsed();
        if t >= self.incident && t < self.recovered && n % 10 < 7 {
            return Err(DemoError::Status(503));
        }
        Ok(())
    }
}

#[resilient(
    name = "demo.complete",
    max = 3,
    base = "20ms",
    cap = "100ms",
    timeout = "1s",
    breaker = "provider",
    pace = "provider",
    pool = "demo-hourly"
)]
#[retry_on(429, 500..=599, timeout)]
async fn complete(provider: &Provider) -> Result<Answer, DemoError> {
    provider.answer().await?;
    Ok(Answer)
}

/// The gauge lines of an exposition.
fn gauges(text: &str) -> String {
    let gauges: Vec<&str> = metric_names::ALL
        .iter()
        .filter(|(_, kind)| *kind == metric_names::Kind::Gauge)
        .map(|(name, _)| *name)
        .collect();
    text.lines()
        .filter(|l| gauges.iter().any(|g| l.starts_with(&format!("{g}{{"))))
        .map(|l| format!("  {l}\n"))
        .collect()
}

type Words = futures::stream::Iter<std::vec::IntoIter<Result<&'static str, DemoError>>>;

/// A streamed answer: its first chunk comes when the provider has answered.
#[resilient(name = "demo.stream", max = 2, first_token = "2s", idle = "2s")]
async fn stream(provider: &Provider) -> Result<Streamed<Words>, DemoError> {
    tokio::time::sleep(Duration::from_millis(40)).await;
    let _ = provider;
    let words = vec![Ok("metrics"), Ok("for"), Ok("dashboards")];
    Ok(Streamed::new(futures::stream::iter(words)))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let serve = std::env::args().any(|a| a == "--serve");
    // A free port on loopback (with `--serve`, the usual exporter port if it is free).
    let port = match serve {
        true => std::net::TcpListener::bind("127.0.0.1:9464")
            .or_else(|_| std::net::TcpListener::bind("127.0.0.1:0"))?,
        false => std::net::TcpListener::bind("127.0.0.1:0")?,
    }
    .local_addr()?
    .port();

    // The recorder first, then the descriptions, then the first call: call sites register
    // their handles with the recorder installed when they first run.
    PrometheusBuilder::new()
        .with_http_listener(([127, 0, 0, 1], port))
        .set_buckets(metric_names::DURATION_BUCKETS)?
        .install()?;
    metric_names::describe();
    configure(Config::from_toml_str(CONFIG)?)?;

    let provider = Arc::new(Provider {
        start: Instant::now(),
        incident: Duration::from_millis(800),
        recovered: Duration::from_millis(2300),
        calls: AtomicU64::new(0),
    });
    println!("serving http://127.0.0.1:{port}/metrics; a 70% incident from 0.8 s to 2.3 s");

    let end = Duration::from_millis(3500);
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let provider = provider.clone();
        callers.spawn(async move {
            let mut outcomes = Vec::new();
            while provider.start.elapsed() < end {
                let outcome = match complete(&provider).await {
                    Ok(_) => "ok",
                    Err(DemoError::Runtime(Rejected::CircuitOpen { .. })) => "circuit open",
                    Err(DemoError::Runtime(Rejected::BudgetExhausted { .. })) => "pool full",
                    Err(DemoError::Runtime(Rejected::PacerLineFull { .. })) => "pacer line full",
                    Err(_) => "failed",
                };
                outcomes.push(outcome);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            outcomes
        });
    }
    // The gauges mid-incident, as a scrape would see them.
    let url = format!("http://127.0.0.1:{port}/metrics");
    let http = reqwest::Client::builder().no_proxy().build()?;
    let snapshot = {
        let (http, url, provider) = (http.clone(), url.clone(), provider.clone());
        tokio::spawn(async move {
            tokio::time::sleep(
                Duration::from_millis(1500).saturating_sub(provider.start.elapsed()),
            )
            .await;
            refresh_gauges();
            let text = http.get(&url).send().await?.text().await?;
            Ok::<_, reqwest::Error>(gauges(&text))
        })
    };
    for _ in 0..5 {
        let mut words = stream(&provider).await.map_err(|e| format!("{e:?}"))?;
        while words.next().await.is_some() {}
    }
    let mut tally = std::collections::BTreeMap::<&str, u32>::new();
    while let Some(outcomes) = callers.join_next().await {
        for outcome in outcomes? {
            *tally.entry(outcome).or_default() += 1;
        }
    }

    println!("gauges at 1.5 s, mid-incident:\n{}", snapshot.await??);
    refresh_gauges();
    let usage = pool_usage("demo-hourly").ok_or("the pool was used")?;
    println!("calls: {tally:?}");
    println!(
        "breaker `provider`: {}; pool `demo-hourly`: {} of {} committed ({:.0}%), refills in {:?}",
        breaker("provider").state(),
        usage.committed,
        usage.limit.map(|l| l.to_string()).unwrap_or_default(),
        100.0 * usage.fraction().unwrap_or(0.0),
        usage.resets_in.unwrap_or_default(),
    );

    let text = http
        .get(&url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    println!("\n---- GET {url} ----\n{text}");

    if serve {
        println!("serving on; Ctrl-C to stop");
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            refresh_gauges();
        }
    }
    Ok(())
}
