//! The first attempt's fast path (no `Call` built) counts what the full path counts. A
//! zero-sized recorder (one that times nothing: the fast path runs under it, where a recorder
//! that times calls would take the full path) collects every counter into a map; calls that
//! succeed at once, fail then succeed (handed from the fast path to the full one), and open a
//! breaker are counted as the full path would count them; and a breaker with a cached
//! fallback through reqwest against a local server, where the fast path meets the others.

mod mock_provider;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use metrics::{
    Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use retry_runtime::{
    breaker, configure, current_attempt, resilient, retry_on, BreakerConfig, BreakerState,
    Classify, Config, ErrorClass, Rejected,
};

fn counts() -> &'static Mutex<BTreeMap<String, u64>> {
    static COUNTS: OnceLock<Mutex<BTreeMap<String, u64>>> = OnceLock::new();
    COUNTS.get_or_init(Default::default)
}

/// `name{label=value,…}` of a key, labels in their order.
fn series(key: &Key) -> String {
    let labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

struct Count(String);

impl CounterFn for Count {
    fn increment(&self, n: u64) {
        *counts().lock().unwrap().entry(self.0.clone()).or_default() += n;
    }
    fn absolute(&self, n: u64) {
        counts().lock().unwrap().insert(self.0.clone(), n);
    }
}

/// Zero-sized: the runtime reads that as "durations are not recorded".
struct Counting;

impl Recorder for Counting {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(Arc::new(Count(series(key))))
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

fn setup() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        metrics::set_global_recorder(Counting).unwrap();
        let two_failures = BreakerConfig {
            failures: 2,
            adaptive: false,
            ..BreakerConfig::default()
        };
        configure(
            Config::default()
                .with_breaker("fast-path", two_failures.clone())
                .with_breaker("fast-combo", two_failures),
        )
        .unwrap();
    });
}

fn count(series: &str) -> u64 {
    counts().lock().unwrap().get(series).copied().unwrap_or(0)
}

#[derive(Debug, PartialEq)]
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
            E::Status(s) => ErrorClass::Status(*s),
            E::Runtime(r) => r.class(),
        }
    }
}

/// Fails its first `fail` calls with a 503, then answers; remembers each attempt's key.
struct Provider {
    fail: usize,
    calls: AtomicUsize,
    keys: Mutex<Vec<String>>,
}

impl Provider {
    fn new(fail: usize) -> Self {
        Provider {
            fail,
            calls: AtomicUsize::new(0),
            keys: Mutex::new(Vec::new()),
        }
    }
    fn answer(&self) -> Result<u32, E> {
        let attempt = current_attempt().expect("inside an attempt");
        self.keys
            .lock()
            .unwrap()
            .push(attempt.idempotency_key().to_string());
        if self.calls.fetch_add(1, Ordering::SeqCst) < self.fail {
            Err(E::Status(503))
        } else {
            Ok(7)
        }
    }
}

#[resilient(max = 3, base = "1ms")]
#[retry_on(500..=599)]
async fn plain(p: &Provider) -> Result<u32, E> {
    p.answer()
}

#[resilient(max = 1, breaker = "fast-path")]
#[retry_on(500..=599)]
async fn guarded(p: &Provider) -> Result<u32, E> {
    p.answer()
}

#[tokio::test(start_paused = true)]
async fn the_fast_path_counts_what_the_full_path_counts() {
    setup();
    let f = "fast_path::plain";
    // A success at once: the fast path.
    assert_eq!(plain(&Provider::new(0)).await, Ok(7));
    assert_eq!(
        count(&format!("retry_runtime_attempts_total{{function={f}}}")),
        1
    );
    assert_eq!(
        count(&format!(
            "retry_runtime_calls_total{{function={f},stop=success}}"
        )),
        1
    );
    // A failure, then a success: handed to the full path, one key for both attempts.
    let p = Provider::new(1);
    assert_eq!(plain(&p).await, Ok(7));
    assert_eq!(
        count(&format!("retry_runtime_attempts_total{{function={f}}}")),
        3
    );
    assert_eq!(
        count(&format!("retry_runtime_retries_total{{function={f}}}")),
        1
    );
    assert_eq!(
        count(&format!(
            "retry_runtime_calls_total{{function={f},stop=success}}"
        )),
        2
    );
    let keys = p.keys.lock().unwrap().clone();
    assert_eq!(keys.len(), 2);
    assert_eq!(
        keys[0], keys[1],
        "the call keeps its key across the hand-over"
    );

    // A breaker's site: two failures open it (`failures = 2`), the next call is refused.
    let g = "fast_path::guarded";
    let p = Provider::new(usize::MAX);
    assert_eq!(guarded(&p).await, Err(E::Status(503)));
    assert_eq!(guarded(&p).await, Err(E::Status(503)));
    assert_eq!(breaker("fast-path").state(), BreakerState::Open);
    assert_eq!(
        count("retry_runtime_breaker_transitions_total{breaker=fast-path,to=open}"),
        1
    );
    assert!(matches!(
        guarded(&p).await,
        Err(E::Runtime(Rejected::CircuitOpen { .. }))
    ));
    assert_eq!(
        p.calls.load(Ordering::SeqCst),
        2,
        "the refused call sent nothing"
    );
    assert_eq!(
        count(&format!(
            "retry_runtime_rejections_total{{function={g},reason=circuit_open}}"
        )),
        1
    );
    assert_eq!(
        count(&format!(
            "retry_runtime_calls_total{{function={g},stop=not_retryable}}"
        )) + count(&format!(
            "retry_runtime_calls_total{{function={g},stop=attempts_exhausted}}"
        )),
        2,
        "{:?}",
        counts().lock().unwrap()
    );
}

#[resilient(max = 2, base = "1ms", breaker = "fast-combo", fallback = cached)]
#[retry_on(500..=599)]
async fn ask(
    http: &reqwest::Client,
    url: &str,
    #[key] prompt: &str,
) -> Result<String, retry_runtime::integrations::reqwest::CallError> {
    let _ = prompt;
    let response =
        retry_runtime::integrations::reqwest::error_for_status(http.get(url).send().await?).await?;
    Ok(response.text().await?)
}

#[tokio::test(start_paused = true)]
async fn a_breaker_and_a_cached_fallback_through_a_real_client() {
    use mock_provider::{MockServer, Reply};
    setup();
    let server = MockServer::start([
        Reply::status(200).body("fresh"),
        Reply::status(503).json(r#"{"error":{"type":"server_error"}}"#),
    ])
    .await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = server.url("/v1/chat");
    let f = "fast_path::ask";
    // A success on the fast path: counted, and its answer kept for the fallback.
    assert_eq!(ask(&http, &url, "hi").await.unwrap(), "fresh");
    assert_eq!(server.hits(), 1);
    // Two 503s (the first on the fast path, the retry on the full one) open the breaker; the
    // call is served the kept answer.
    assert_eq!(ask(&http, &url, "hi").await.unwrap(), "fresh");
    assert_eq!(server.hits(), 3);
    assert_eq!(breaker("fast-combo").state(), BreakerState::Open);
    // Open: refused before the fast path sends anything, served from the cache again.
    assert_eq!(ask(&http, &url, "hi").await.unwrap(), "fresh");
    assert_eq!(server.hits(), 3, "nothing sent while the breaker is open");
    assert_eq!(
        count(&format!(
            "retry_runtime_fallbacks_total{{function={f},kind=cached}}"
        )),
        2
    );
    assert_eq!(
        count(&format!("retry_runtime_attempts_total{{function={f}}}")),
        3
    );
    assert_eq!(
        count(&format!(
            "retry_runtime_rejections_total{{function={f},reason=circuit_open}}"
        )),
        1
    );
    // Another prompt has no kept answer: the refusal reaches the caller.
    assert!(ask(&http, &url, "other").await.is_err());
}
