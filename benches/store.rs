//! What sharing state through Redis costs per call: the same `#[resilient]` call sites with
//! the in-memory store (the default) and with the Redis store on loopback.
//!
//! The store is chosen once per process, so the bench binary is its own worker: run by
//! `cargo bench --bench store`, it starts a `redis-server` on a free loopback port and runs
//! itself twice, as the `memory` and the `redis` worker (env `STORE_BENCH_ROLE`). Each worker
//! runs criterion on the call sites (16 calls per `block_on`; criterion reports the time of 16
//! calls) and then times single calls one by one for p50 / p99: 20 rounds of 1 000 calls of
//! each row in turn, so that the machine's drift during the run falls on every row alike. Next
//! to the call sites: a bare `async fn`, and in the Redis worker the baselines, each on the
//! worker's own connection (a plain `MultiplexedConnection` of redis-rs, opened on the same
//! runtime): a bare `PING` (the loopback round trip) and the raw admission script, the same
//! `EVALSHA` with the same arguments the breaker call site sends (its first attempt's
//! admission, with the retry budget's deposit), built as one `Cmd` per call.
//!
//! Under load, the Redis worker then runs 256 concurrent callers (tasks looping on one call
//! after another) on a two-worker multi-thread runtime for a second, three times in turn for
//! the breaker call site and for the raw admission script on one connection of that runtime
//! shared by all 256 (redis-rs pipelines concurrent requests on it): calls per second each.
//! The parent prints the table and the ratios (the goals: p50 of the breaker call site at most
//! 1.1x the raw script's, its throughput at least 0.8x); the numbers are in
//! `docs/PERFORMANCE.md`. Without `redis-server` on the `PATH` only the memory worker runs.

use std::future::Future;
use std::hint::black_box;
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use retry_runtime::{configure, resilient, Config, Metered, Rejected, Spend};

const ROLE_ENV: &str = "STORE_BENCH_ROLE";
const URL_ENV: &str = "STORE_BENCH_URL";
const CALLS_PER_ITER: usize = 16;
/// Single calls timed per row: `ROUNDS` rounds of `PER_ROUND`, the rows in turn.
const ROUNDS: usize = 20;
const PER_ROUND: usize = 1_000;
const TIMED_CALLS: usize = ROUNDS * PER_ROUND;
/// Concurrent callers under load, how long each load run lasts, and how many runs per row.
const CALLERS: usize = 256;
const LOAD_RUN: Duration = Duration::from_secs(1);
const LOAD_ROUNDS: usize = 3;

/// A reply that cost one micro-dollar, so the pool settles something.
struct Billed(u64);

impl Metered for Billed {
    fn spend(&self) -> Spend {
        Spend::from_micros(1)
    }
}

async fn bare(x: u64) -> Result<u64, Rejected> {
    Ok(black_box(x))
}

#[resilient(max = 1, breaker = "bench")]
async fn breaker(x: u64) -> Result<u64, Rejected> {
    Ok(black_box(x))
}

#[resilient(max = 1, breaker = "bench-all", pool = "bench", pace = "bench")]
async fn everything(x: u64) -> Result<Billed, Rejected> {
    Ok(Billed(black_box(x)))
}

fn config(url: Option<&str>) -> Config {
    let store = url.map_or(String::new(), |url| {
        format!(
            "[store]\nredis_url = \"{url}\"\nprefix = \"bench-{}\"\n",
            std::process::id()
        )
    });
    // A pool and a pacer that never refuse or hold anyone back (a day's burst): only their
    // bookkeeping is timed.
    let toml = format!(
        "{store}\n[pool.bench]\nlimit = \"1000000usd\"\nwindow = \"1h\"\n\n\
         [pace.bench]\nrpm = 10000000\nadaptive = false\nburst = \"24h\"\n"
    );
    Config::from_toml_str(&toml).expect("the bench configuration parses")
}

/// One row's single-call timings, in nanoseconds, gathered over rounds.
struct Row<'a> {
    name: &'static str,
    call: Box<dyn FnMut() -> std::pin::Pin<Box<dyn Future<Output = ()> + 'a>> + 'a>,
    took: Vec<u64>,
}

impl<'a> Row<'a> {
    fn new<F, Fut>(name: &'static str, mut call: F) -> Self
    where
        F: FnMut() -> Fut + 'a,
        Fut: Future + 'a,
    {
        Self {
            name,
            call: Box::new(move || {
                let fut = call();
                Box::pin(async move {
                    black_box(fut.await);
                })
            }),
            took: Vec::with_capacity(TIMED_CALLS),
        }
    }

    /// p50 and p99.
    fn percentiles(&mut self) -> (u64, u64) {
        self.took.sort_unstable();
        let n = self.took.len();
        (self.took[n / 2], self.took[n * 99 / 100])
    }
}

/// Time every row's calls one by one, `PER_ROUND` at a time, the rows in turn, `ROUNDS`
/// times. (The boxing is the same for every row, and outside the timed span but for one
/// allocation, which the `bare` row shows.)
fn time_rows(rt: &tokio::runtime::Runtime, rows: &mut [Row<'_>]) {
    rt.block_on(async {
        for _ in 0..ROUNDS {
            for row in rows.iter_mut() {
                for _ in 0..PER_ROUND {
                    let started = Instant::now();
                    (row.call)().await;
                    row.took.push(started.elapsed().as_nanos() as u64);
                }
            }
        }
    });
}

/// Calls per second that `CALLERS` tasks, each looping on `call`, complete in `LOAD_RUN`.
fn throughput<F, Fut>(rt: &tokio::runtime::Runtime, call: F) -> f64
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future + Send,
{
    rt.block_on(async {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..CALLERS)
            .map(|_| {
                let (call, stop, done) = (call.clone(), stop.clone(), done.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        black_box(call().await);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let started = Instant::now();
        let before = done.load(Ordering::Relaxed);
        tokio::time::sleep(LOAD_RUN).await;
        let calls = done.load(Ordering::Relaxed) - before;
        let took = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            task.await.expect("a caller");
        }
        calls as f64 / took.as_secs_f64()
    })
}

/// The admission script with the arguments the `breaker` call site's first attempt sends
/// (a breaker look and the retry budget's deposit), under a prefix of its own.
fn raw_admit(hash: &str) -> redis::Cmd {
    let mut cmd = redis::Cmd::with_capacity(18, 160);
    cmd.arg("EVALSHA").arg(hash).arg(0).arg("{bench-raw}");
    cmd.arg("bench").arg("1").arg("0").arg(0).arg(0);
    cmd.arg("").arg(1).arg(0).arg(0);
    cmd.arg("").arg(1).arg(1).arg(0);
    cmd
}

fn worker(role: &str) {
    let url = std::env::var(URL_ENV).ok();
    configure(config(url.as_deref())).expect("configured once");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    if url.is_some() {
        let shared = rt.block_on(retry_runtime::store::wait_shared(Duration::from_secs(10)));
        assert!(shared, "the Redis store never answered");
    }
    // Warm up: resolve the call sites, learn the spend estimate, load the scripts.
    rt.block_on(async {
        for i in 0..1000 {
            breaker(i).await.unwrap();
            everything(i).await.unwrap();
        }
    });

    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let mut group = c.benchmark_group(format!("store_{role}"));
    group.bench_function("bare", |b| {
        b.iter(|| {
            rt.block_on(async {
                for i in 0..CALLS_PER_ITER as u64 {
                    black_box(bare(i).await.unwrap());
                }
            })
        })
    });
    group.bench_function("breaker", |b| {
        b.iter(|| {
            rt.block_on(async {
                for i in 0..CALLS_PER_ITER as u64 {
                    black_box(breaker(i).await.unwrap());
                }
            })
        })
    });
    group.bench_function("breaker_pool_pace", |b| {
        b.iter(|| {
            rt.block_on(async {
                for i in 0..CALLS_PER_ITER as u64 {
                    black_box(everything(i).await.unwrap().0);
                }
            })
        })
    });
    group.finish();

    let admit = redis::Script::new(&retry_runtime::store::redis::ADMIT_LUA.replace(
        "WINDOW_SECS",
        &retry_runtime::retry_budget::WINDOW_SECS.to_string(),
    ));
    let raw = url.as_ref().map(|url| {
        let client = redis::Client::open(url.as_str()).expect("a client");
        let mut conn = rt
            .block_on(client.get_multiplexed_async_connection())
            .expect("a connection");
        rt.block_on(admit.prepare_invoke().load_async(&mut conn))
            .expect("the script loads");
        (client, conn)
    });
    let hash = admit.get_hash();
    let mut rows = vec![
        Row::new("bare", || bare(1)),
        Row::new("breaker", || breaker(1)),
        Row::new("breaker_pool_pace", || everything(1)),
    ];
    if let Some((_, conn)) = &raw {
        rows.push(Row::new("ping", || {
            let mut conn = conn.clone();
            async move { redis::cmd("PING").query_async::<()>(&mut conn).await }
        }));
        rows.push(Row::new("admit_script", || {
            let mut conn = conn.clone();
            let cmd = raw_admit(hash);
            async move { cmd.query_async::<Vec<i64>>(&mut conn).await }
        }));
    }
    time_rows(&rt, &mut rows);
    for row in &mut rows {
        let (p50, p99) = row.percentiles();
        println!("STORE {role} {} {p50} {p99}", row.name);
    }
    drop(rows);

    // Under load: a runtime like `#[tokio::main]`'s on this machine's two cores.
    let Some((client, _)) = raw else { return };
    let load = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let conn = load
        .block_on(client.get_multiplexed_async_connection())
        .expect("a connection");
    let hash = hash.to_owned();
    let ours = || async { breaker(1).await.unwrap() };
    let theirs = move || {
        let mut conn = conn.clone();
        let cmd = raw_admit(&hash);
        async move { cmd.query_async::<Vec<i64>>(&mut conn).await.unwrap() }
    };
    // Warm up: this runtime's own store connection opens during the first calls.
    throughput(&load, ours);
    throughput(&load, theirs.clone());
    let (mut ours_total, mut theirs_total) = (0.0, 0.0);
    for _ in 0..LOAD_ROUNDS {
        ours_total += throughput(&load, ours);
        theirs_total += throughput(&load, theirs.clone());
    }
    let rounds = LOAD_ROUNDS as f64;
    println!("LOAD {role} breaker {:.0}", ours_total / rounds);
    println!("LOAD {role} admit_script {:.0}", theirs_total / rounds);
}

/// `redis-server` on a free loopback port, killed on drop; `None` where none is installed.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_server() -> Option<(Server, String)> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .ok()?;
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let child = match child {
        Ok(child) => Server(child),
        Err(e) => {
            eprintln!("SKIPPED the Redis rows: cannot start redis-server ({e})");
            return None;
        }
    };
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if started.elapsed() > Duration::from_secs(10) {
            eprintln!("SKIPPED the Redis rows: redis-server did not listen");
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some((child, format!("redis://127.0.0.1:{port}")))
}

/// What one worker printed: `STORE` lines as (role, row, p50, p99), `LOAD` lines as (role,
/// row, calls per second).
#[derive(Default)]
struct Printed {
    rows: Vec<(String, String, u64, u64)>,
    load: Vec<(String, String, f64)>,
}

/// Run one worker.
fn run(role: &str, url: Option<&str>, into: &mut Printed) {
    let exe = std::env::current_exe().expect("the bench binary's path");
    let mut command = Command::new(exe);
    command.env(ROLE_ENV, role).stderr(Stdio::inherit());
    if let Some(url) = url {
        command.env(URL_ENV, url);
    }
    let out = command.output().expect("a worker runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "worker {role} failed:\n{stdout}");
    for line in stdout.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f[..] {
            ["STORE", role, name, p50, p99] => into.rows.push((
                role.to_string(),
                name.to_string(),
                p50.parse().unwrap_or(0),
                p99.parse().unwrap_or(0),
            )),
            ["LOAD", role, name, per_sec] => into.load.push((
                role.to_string(),
                name.to_string(),
                per_sec.parse().unwrap_or(0.0),
            )),
            _ => println!("{line}"),
        }
    }
}

fn main() {
    if let Ok(role) = std::env::var(ROLE_ENV) {
        worker(&role);
        return;
    }
    // `cargo test --benches` runs benches once as tests: nothing to measure then.
    if std::env::args().any(|a| a == "--test") {
        return;
    }
    let mut printed = Printed::default();
    run("memory", None, &mut printed);
    if let Some((_server, url)) = redis_server() {
        run("redis", Some(&url), &mut printed);
    }
    let rows = &printed.rows;
    let get = |role: &str, name: &str| {
        rows.iter()
            .find(|r| r.0 == role && r.1 == name)
            .map(|r| (r.2, r.3))
    };
    println!(
        "\nper call, one at a time ({ROUNDS} rounds of {PER_ROUND} per row): p50 / p99, and minus bare"
    );
    println!(
        "{:<8} {:<18} {:>10} {:>10} {:>12} {:>12}",
        "store", "call site", "p50 ns", "p99 ns", "p50 - bare", "p99 - bare"
    );
    for (role, name, p50, p99) in rows {
        let (b50, b99) = get(role, "bare").unwrap_or((0, 0));
        let (o50, o99) = if matches!(name.as_str(), "bare" | "ping" | "admit_script") {
            (String::new(), String::new())
        } else {
            (
                p50.saturating_sub(b50).to_string(),
                p99.saturating_sub(b99).to_string(),
            )
        };
        println!("{role:<8} {name:<18} {p50:>10} {p99:>10} {o50:>12} {o99:>12}");
    }
    for name in ["breaker", "breaker_pool_pace"] {
        if let (Some(m), Some(r), Some(mb), Some(rb)) = (
            get("memory", name),
            get("redis", name),
            get("memory", "bare"),
            get("redis", "bare"),
        ) {
            let over = |a: u64, b: u64| a.saturating_sub(b).max(1) as f64;
            println!(
                "{name}: redis/memory overhead p50 {:.0}x, p99 {:.0}x",
                over(r.0, rb.0) / over(m.0, mb.0),
                over(r.1, rb.1) / over(m.1, mb.1)
            );
        }
    }
    if let (Some(ours), Some(raw)) = (get("redis", "breaker"), get("redis", "admit_script")) {
        println!(
            "p50 ratio, breaker call site / raw admission script: {:.2} (goal <= 1.1); p99 {:.2}",
            ours.0 as f64 / raw.0.max(1) as f64,
            ours.1 as f64 / raw.1.max(1) as f64
        );
    }
    let load = |name: &str| {
        printed
            .load
            .iter()
            .find(|r| r.0 == "redis" && r.1 == name)
            .map(|r| r.2)
    };
    if let (Some(ours), Some(raw)) = (load("breaker"), load("admit_script")) {
        println!(
            "under load, {CALLERS} concurrent callers: breaker call site {ours:.0} calls/s, raw admission script {raw:.0}/s"
        );
        println!(
            "throughput ratio, breaker call site / raw admission script: {:.2} (goal >= 0.8)",
            ours / raw.max(1.0)
        );
    }
}
