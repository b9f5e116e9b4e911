//! A fleet of four OS processes sharing one spend pool, one breaker and one pacer through a
//! real `redis-server`.
//!
//! The test binary is its own worker: run without `FLEET_ROLE` it is the parent, which starts
//! redis-server and re-executes itself with `FLEET_ROLE` set for each worker process, then
//! reads what each printed on a `RESULT` line. (`harness = false`: one `main`, so the workers
//! run exactly the code below and nothing of libtest.) Cross-process time is real time: the
//! only clock two processes and Redis share. Skips with a message where redis-server is not
//! installed, unless `RESILIENT_REQUIRE_REDIS=1` (CI).

mod common;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::Reply;
use redis_server::RedisServer;
use retry_runtime::{
    configure, resilient, BudgetScope, Classify, Config, ErrorClass, Rejected, Spend,
};

const WORKERS: usize = 4;
/// Calls each worker keeps in flight.
const CONCURRENCY: usize = 8;
/// What one pool call costs: $0.01.
const COST: Spend = Spend::from_micros(10_000);
/// The shared pool: $1.00 an hour, for all four processes together.
const POOL_LIMIT_MICROS: u64 = 1_000_000;
/// The shared pacer: this many requests per second for the whole fleet.
const PACE_PER_SEC: u64 = 20;
/// How long the pacing workers send.
const PACE_RUN: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
enum FleetError {
    Status(u16),
    Runtime(Rejected),
}

impl From<Rejected> for FleetError {
    fn from(r: Rejected) -> Self {
        FleetError::Runtime(r)
    }
}

impl Classify for FleetError {
    fn class(&self) -> ErrorClass {
        match self {
            FleetError::Status(code) => ErrorClass::Status(*code),
            FleetError::Runtime(r) => r.class(),
        }
    }
}

#[resilient(max = 1, pool = "fleet")]
async fn billed() -> Result<Reply, FleetError> {
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(Reply(COST))
}

#[resilient(max = 1, breaker = "fleet")]
async fn failing() -> Result<Reply, FleetError> {
    Err(FleetError::Status(503))
}

#[resilient(max = 1, breaker = "fleet")]
async fn healthy() -> Result<Reply, FleetError> {
    Ok(Reply(Spend::ZERO))
}

/// Each provider call stamps the wall clock (milliseconds since the epoch), the one clock all
/// processes share.
static STAMPS: Mutex<Vec<u64>> = Mutex::new(Vec::new());

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[resilient(max = 1, pace = "fleet")]
async fn paced() -> Result<Reply, FleetError> {
    STAMPS.lock().unwrap().push(unix_ms());
    Ok(Reply(Spend::ZERO))
}

fn config(url: &str, prefix: &str) -> Config {
    let toml = format!(
        r#"
        [store]
        redis_url = "{url}"
        prefix = "{prefix}"
        timeout = "200ms"

        [pool.fleet]
        limit = "{limit}usd"
        window = "1h"

        [breaker.fleet]
        failures = 3
        window = "60s"
        cooldown = "60s"

        [pace.fleet]
        rpm = {rpm}
        adaptive = false
        burst = "50ms"
        "#,
        limit = POOL_LIMIT_MICROS as f64 / 1e6,
        rpm = PACE_PER_SEC * 60,
    );
    Config::from_toml_str(&toml).expect("the fleet's configuration parses")
}

// ---- workers ----

async fn worker(role: &str) -> String {
    match role {
        "pool" => {
            let billed_micros = Arc::new(AtomicU64::new(0));
            let refused = Arc::new(AtomicU64::new(0));
            let tasks: Vec<_> = (0..CONCURRENCY)
                .map(|_| {
                    let (billed_micros, refused) = (billed_micros.clone(), refused.clone());
                    tokio::spawn(async move {
                        // Stop at the first refusal, or after far more calls than the pool
                        // allows, so a pool that never refuses ends the test instead of hanging.
                        for _ in 0..1000 {
                            match billed().await {
                                Ok(reply) => {
                                    billed_micros.fetch_add(reply.0.micros(), Ordering::Relaxed);
                                }
                                Err(FleetError::Runtime(Rejected::BudgetExhausted {
                                    scope: BudgetScope::Pool("fleet"),
                                    ..
                                })) => {
                                    refused.fetch_add(1, Ordering::Relaxed);
                                    return;
                                }
                                Err(other) => panic!("unexpected {other:?}"),
                            }
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.expect("a pool task ends");
            }
            format!(
                "billed_micros={} refused={}",
                billed_micros.load(Ordering::Relaxed),
                refused.load(Ordering::Relaxed)
            )
        }
        "open-breaker" => {
            for calls in 1..=20 {
                if let Err(FleetError::Runtime(Rejected::CircuitOpen { .. })) = failing().await {
                    return format!("opened_after={}", calls - 1);
                }
            }
            "opened_after=never".to_string()
        }
        "use-breaker" => match healthy().await {
            Ok(_) => "admitted".to_string(),
            Err(FleetError::Runtime(Rejected::CircuitOpen { .. })) => "rejected".to_string(),
            Err(other) => format!("error={other:?}"),
        },
        "pace" => {
            let until = Instant::now() + PACE_RUN;
            let tasks: Vec<_> = (0..CONCURRENCY)
                .map(|_| {
                    tokio::spawn(async move {
                        while Instant::now() < until {
                            paced().await.expect("a paced call succeeds");
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.expect("a pace task ends");
            }
            let stamps = STAMPS.lock().unwrap();
            let list: Vec<String> = stamps.iter().map(u64::to_string).collect();
            format!("stamps={}", list.join(","))
        }
        other => panic!("unknown FLEET_ROLE {other}"),
    }
}

fn run_worker(role: &str) {
    let url = std::env::var("FLEET_URL").expect("FLEET_URL");
    let prefix = std::env::var("FLEET_PREFIX").expect("FLEET_PREFIX");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        configure(config(&url, &prefix)).expect("configured once");
        assert!(
            retry_runtime::store::wait_shared(Duration::from_secs(5)).await,
            "worker {role}: the store never became shared"
        );
        let result = worker(role).await;
        println!("RESULT {result}");
    });
}

// ---- the parent ----

/// Start `n` workers of one role at once; their `RESULT` lines, in start order.
fn spawn_workers(url: &str, prefix: &str, role: &str, n: usize) -> Vec<String> {
    let exe = std::env::current_exe().expect("the test binary's path");
    let children: Vec<_> = (0..n)
        .map(|_| {
            Command::new(&exe)
                .env("FLEET_ROLE", role)
                .env("FLEET_URL", url)
                .env("FLEET_PREFIX", prefix)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("a worker process starts")
        })
        .collect();
    children
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().expect("a worker ends");
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(out.status.success(), "worker {role} failed: {stdout}");
            stdout
                .lines()
                .find_map(|l| l.strip_prefix("RESULT ").map(str::to_string))
                .unwrap_or_else(|| panic!("worker {role} printed no RESULT: {stdout}"))
        })
        .collect()
}

fn field<'a>(result: &'a str, name: &str) -> &'a str {
    result
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {name} in {result}"))
}

fn pool_total_stays_within_limit_plus_in_flight(url: &str, prefix: &str) {
    let results = spawn_workers(url, prefix, "pool", WORKERS);
    let billed: Vec<u64> = results
        .iter()
        .map(|r| field(r, "billed_micros").parse().unwrap())
        .collect();
    let total: u64 = billed.iter().sum();
    // Reservations in flight: at most every call of every worker at once.
    let in_flight = (WORKERS * CONCURRENCY) as u64 * COST.micros();
    println!(
        "pool: billed per worker {billed:?}, total ${:.2} against a ${:.2} limit (+ ${:.2} in flight)",
        total as f64 / 1e6,
        POOL_LIMIT_MICROS as f64 / 1e6,
        in_flight as f64 / 1e6
    );
    assert!(
        total <= POOL_LIMIT_MICROS + in_flight,
        "the fleet spent {total} micros; a shared pool allows {POOL_LIMIT_MICROS} + {in_flight} in flight"
    );
    // Each process alone may spend the whole limit: spending it once in total is the sharing.
    assert!(
        total >= POOL_LIMIT_MICROS * 9 / 10,
        "the fleet spent only {total} micros of {POOL_LIMIT_MICROS}: refused too early"
    );
    for r in &results {
        assert_eq!(field(r, "refused"), CONCURRENCY.to_string(), "{r}");
    }
}

fn breaker_opened_in_one_process_rejects_in_the_others(url: &str, prefix: &str) {
    let opened = spawn_workers(url, prefix, "open-breaker", 1);
    assert_eq!(
        field(&opened[0], "opened_after"),
        "3",
        "three 503s open the breaker in the first process"
    );
    let others = spawn_workers(url, prefix, "use-breaker", WORKERS - 1);
    println!("breaker: opened in one process; the other three: {others:?}");
    assert!(
        others.iter().all(|r| r == "rejected"),
        "the other processes saw the open breaker: {others:?}"
    );
    // The control: a fleet under another prefix shares nothing with this one.
    let control = spawn_workers(url, &format!("{prefix}-control"), "use-breaker", 1);
    assert_eq!(control, ["admitted"], "another prefix has its own breaker");
}

fn pacing_is_fleet_wide(url: &str, prefix: &str) {
    let results = spawn_workers(url, prefix, "pace", WORKERS);
    let mut stamps: Vec<u64> = results
        .iter()
        .flat_map(|r| {
            field(r, "stamps")
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.parse::<u64>().unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    stamps.sort_unstable();
    assert!(!stamps.is_empty(), "no paced call was made");
    let per_worker: Vec<usize> = results
        .iter()
        .map(|r| {
            field(r, "stamps")
                .split(',')
                .filter(|s| !s.is_empty())
                .count()
        })
        .collect();
    // The busiest one-second window, sliding over every call's start.
    let busiest = (0..stamps.len())
        .map(|i| {
            stamps[i..]
                .iter()
                .take_while(|&&t| t < stamps[i] + 1000)
                .count()
        })
        .max()
        .unwrap_or(0);
    let span_ms = (stamps[stamps.len() - 1] - stamps[0]).max(1);
    let mean = stamps.len() as f64 * 1000.0 / span_ms as f64;
    let mut per_second: BTreeMap<u64, usize> = BTreeMap::new();
    for t in &stamps {
        *per_second.entry((t - stamps[0]) / 1000).or_default() += 1;
    }
    println!(
        "pace: {} calls by 4 workers {per_worker:?}, limit {PACE_PER_SEC}/s, busiest second {busiest}, \
         mean {mean:.1}/s, per second {per_second:?}",
        stamps.len()
    );
    // Within 10%, plus the one call a GCRA lets through at each window's edge.
    let allowed = (PACE_PER_SEC as f64 * 1.1).floor() as usize + 1;
    assert!(
        busiest <= allowed,
        "the fleet sent {busiest} calls in one second under a shared limit of {PACE_PER_SEC}/s"
    );
    // And it did send at (nearly) the limit: four workers alone would send 4x.
    assert!(
        mean >= PACE_PER_SEC as f64 * 0.8,
        "the fleet sent only {mean:.1}/s under a limit of {PACE_PER_SEC}/s"
    );
    assert!(
        per_worker.iter().all(|&n| n > 0),
        "every worker got a share: {per_worker:?}"
    );
}

fn main() {
    if let Ok(role) = std::env::var("FLEET_ROLE") {
        run_worker(&role);
        return;
    }
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    // One prefix per run, so a reused server never mixes runs.
    let run = format!("fleet-{}-{}", std::process::id(), unix_ms());
    let started = Instant::now();
    pool_total_stays_within_limit_plus_in_flight(&url, &format!("{run}-pool"));
    breaker_opened_in_one_process_rejects_in_the_others(&url, &format!("{run}-breaker"));
    pacing_is_fleet_wide(&url, &format!("{run}-pace"));
    println!("redis fleet: 3 checks passed in {:.1?}", started.elapsed());
}
