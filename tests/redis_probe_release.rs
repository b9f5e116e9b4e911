//! A half-open probe's fleet-wide slot in one process, against a real `redis-server`: a probe
//! whose future is dropped gives its lease back at once (well before the lease would lapse),
//! and with Redis stopped the breaker still opens, probes and closes on local state, each
//! local probe a WARN that says the fleet's probes are no longer counted together.
//!
//! "Another process" is a second `RedisStore` on the same server and prefix, asking the
//! admission script for a probe lease as a worker would. Real time, as in
//! `tests/redis_fault.rs`: the store's clock is Redis's. Skips with a message where
//! redis-server is not installed, unless `RESILIENT_REQUIRE_REDIS=1` (CI).

mod common;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{ApiError, EventLog, Reply};
use redis_server::RedisServer;
use retry_runtime::store::redis::RedisStore;
use retry_runtime::store::{
    self, probe_lease, Admit, BreakerAsk, ProbeAsk, Store, StoreConfig, StoreStatus, Update,
    Verdict,
};
use retry_runtime::{configure, resilient, Config, Rejected, Spend};
use tokio::sync::Semaphore;

const STORE_TIMEOUT: Duration = Duration::from_millis(100);
const COOLDOWN: Duration = Duration::from_millis(200);

/// What a call's body does.
#[derive(Debug, Clone, Copy)]
enum Step {
    Fail,
    Hang,
    /// Wait for a permit of [`RELEASE`], then succeed.
    Wait,
    Succeed,
}

/// Bodies entered: requests that reached "the provider".
static ENTERED: AtomicUsize = AtomicUsize::new(0);
static RELEASE: Semaphore = Semaphore::const_new(0);

async fn body(step: Step) -> Result<Reply, ApiError> {
    ENTERED.fetch_add(1, Ordering::SeqCst);
    match step {
        Step::Fail => Err(ApiError::status(503)),
        Step::Hang => std::future::pending().await,
        Step::Wait => {
            RELEASE.acquire().await.unwrap().forget();
            Ok(Reply(Spend::ZERO))
        }
        Step::Succeed => Ok(Reply(Spend::ZERO)),
    }
}

#[resilient(max = 1, breaker = "dropped")]
async fn through_dropped(step: Step) -> Result<Reply, ApiError> {
    body(step).await
}

#[resilient(max = 1, breaker = "local")]
async fn through_local(step: Step) -> Result<Reply, ApiError> {
    body(step).await
}

fn is_circuit_open(result: &Result<Reply, ApiError>) -> bool {
    matches!(result, Err(ApiError::Runtime(Rejected::CircuitOpen { .. })))
}

/// The other process's probe ask, with its own token.
fn other_probe(token: u64, lease: Duration) -> Admit {
    Admit {
        breaker: Some(BreakerAsk {
            name: "dropped",
            deposit: false,
            withdraw: None,
        }),
        probe: Some(ProbeAsk {
            token,
            probes: 1,
            lease_ms: lease.as_millis() as u64,
        }),
        ..Admit::default()
    }
}

fn redis_int(url: &str, args: &[&str]) -> i64 {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_connection().unwrap();
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query(&mut conn).unwrap()
}

/// Poll `f` (real time) until it holds, at most `within`; how long it took.
async fn until(within: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_probe_frees_its_fleet_slot_at_once_and_without_redis_probes_are_local() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let log = EventLog::global();
    let url = server.url();
    let prefix = format!("probe-release-{}", std::process::id());
    let toml = format!(
        r#"
        [store]
        redis_url = "{url}"
        prefix = "{prefix}"
        timeout = "{timeout}ms"

        [breaker.dropped]
        failures = 1
        cooldown = "{cooldown}ms"
        probes = 1
        adaptive = false

        [breaker.local]
        failures = 1
        cooldown = "{cooldown}ms"
        probes = 2
        adaptive = false
        "#,
        timeout = STORE_TIMEOUT.as_millis(),
        cooldown = COOLDOWN.as_millis(),
    );
    configure(Config::from_toml_str(&toml).unwrap()).unwrap();
    assert!(store::wait_shared(Duration::from_secs(5)).await);
    let config = StoreConfig::redis(&url)
        .unwrap()
        .with_prefix(&prefix)
        .unwrap()
        .with_timeout(STORE_TIMEOUT);
    let lease = probe_lease(STORE_TIMEOUT);
    let other = RedisStore::new(&url, &config).unwrap();
    other.ping().await.unwrap();
    let leases_key = format!("{{{prefix}}}:probes:dropped");
    let breaker_key = format!("{{{prefix}}}:breaker:dropped");
    let leases = || redis_int(&url, &["ZCARD", &leases_key]);

    // ---- Redis up: a dropped probe gives its lease back at once ----
    assert!(through_dropped(Step::Fail).await.is_err());
    until(
        Duration::from_secs(2),
        "the open state is published",
        || redis_int(&url, &["EXISTS", &breaker_key]) == 1,
    )
    .await;
    tokio::time::sleep(COOLDOWN + Duration::from_millis(20)).await;
    let entered = ENTERED.load(Ordering::SeqCst);
    let probe = tokio::spawn(through_dropped(Step::Hang));
    until(Duration::from_secs(2), "the probe holds the lease", || {
        ENTERED.load(Ordering::SeqCst) == entered + 1 && leases() == 1
    })
    .await;
    let refused = other.admit(other_probe(1, lease)).await.unwrap();
    assert_eq!(
        (refused.verdict, refused.leased),
        (Verdict::ProbesOut, false),
        "the fleet's only probe slot is held"
    );
    probe.abort();
    let dropped_at = Instant::now();
    assert!(probe.await.unwrap_err().is_cancelled());
    until(lease, "the dropped probe's lease is given back", || {
        leases() == 0
    })
    .await;
    let freed = dropped_at.elapsed();
    println!("a dropped probe's lease was given back {freed:?} after the drop (lease {lease:?})");
    assert!(
        freed < lease / 4,
        "given back at once, not when the lease lapses: {freed:?} (lease {lease:?})"
    );
    let taken = other.admit(other_probe(2, lease)).await.unwrap();
    assert_eq!(
        (taken.verdict, taken.leased),
        (Verdict::Admitted, true),
        "the other process gets the slot"
    );
    other
        .update(Update::ProbeReleased {
            breaker: "dropped",
            token: 2,
        })
        .await
        .unwrap();
    // This process probes again; its success closes the breaker for the fleet.
    assert!(through_dropped(Step::Succeed).await.is_ok());
    until(Duration::from_secs(2), "the close is published", || {
        redis_int(&url, &["EXISTS", &breaker_key]) == 0
    })
    .await;
    assert_eq!(ENTERED.load(Ordering::SeqCst), entered + 2);
    assert_eq!(leases(), 0, "the close ended the period's leases");

    // ---- Redis stopped: the breaker goes on with local probes, and says so ----
    server.stop();
    assert!(
        through_dropped(Step::Succeed).await.is_ok(),
        "goes on locally"
    );
    until(Duration::from_secs(2), "the store is local", || {
        store::status() == StoreStatus::Local
    })
    .await;
    assert!(through_local(Step::Fail).await.is_err());
    assert!(is_circuit_open(&through_local(Step::Succeed).await));
    tokio::time::sleep(COOLDOWN + Duration::from_millis(20)).await;
    let entered = ENTERED.load(Ordering::SeqCst);
    let calls: Vec<_> = (0..8)
        .map(|_| tokio::spawn(through_local(Step::Wait)))
        .collect();
    until(Duration::from_secs(2), "two probes in flight", || {
        ENTERED.load(Ordering::SeqCst) == entered + 2
    })
    .await;
    // The other six were refused at once (no permit was given yet).
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(ENTERED.load(Ordering::SeqCst), entered + 2, "probes = 2");
    RELEASE.add_permits(2);
    let mut refused = 0;
    for call in calls {
        let result = call.await.unwrap();
        if is_circuit_open(&result) {
            refused += 1;
        } else {
            assert!(result.is_ok(), "{result:?}");
        }
    }
    assert_eq!(
        refused, 6,
        "exactly `probes` calls admitted while half-open"
    );
    let warned: Vec<_> = log
        .with_message("counted by this process alone")
        .into_iter()
        .filter(|e| e.field("breaker") == Some("local"))
        .collect();
    assert_eq!(warned.len(), 2, "one WARN per local probe: {warned:?}");
    assert!(warned.iter().all(|e| e.level == tracing::Level::WARN));
    assert!(through_local(Step::Succeed).await.is_ok(), "closed again");
    println!(
        "redis stopped: 8 callers, {} probes admitted locally, {refused} refused, {} WARN",
        8 - refused,
        warned.len()
    );
}
