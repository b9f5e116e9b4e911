//! What sharing state through Redis costs per call: the same `#[resilient]` call sites with
//! the in-memory store (the default) and with the Redis store on loopback.
//!
//! The store is chosen once per process, so the bench binary is its own worker: run by
//! `cargo bench --bench store`, it starts a `redis-server` on a free loopback port and runs
//! itself twice, as the `memory` and the `redis` worker (env `STORE_BENCH_ROLE`). Each worker
//! runs criterion on the call sites (16 calls per `block_on`; criterion reports the time of 16
//! calls) and then times 20 000 single calls one by one for p50 / p99, next to a bare `async fn`
//! and, in the Redis worker, a bare `PING` on its own connection (the loopback round trip).
//! The parent prints the table and the ratios; the numbers are in `docs/PERFORMANCE.md`.
//! Without `redis-server` on the `PATH` only the memory worker runs.

use std::hint::black_box;
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::Criterion;
use retry_runtime::{configure, resilient, Config, Metered, Rejected, Spend};

const ROLE_ENV: &str = "STORE_BENCH_ROLE";
const URL_ENV: &str = "STORE_BENCH_URL";
const CALLS_PER_ITER: usize = 16;
const TIMED_CALLS: usize = 20_000;

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

/// p50 and p99 of `n` single calls of `call`, in nanoseconds.
fn percentiles<F, Fut>(rt: &tokio::runtime::Runtime, n: usize, mut call: F) -> (u64, u64)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future,
{
    let mut took: Vec<u64> = rt.block_on(async {
        let mut took = Vec::with_capacity(n);
        for _ in 0..n {
            let started = Instant::now();
            black_box(call().await);
            took.push(started.elapsed().as_nanos() as u64);
        }
        took
    });
    took.sort_unstable();
    (took[n / 2], took[n * 99 / 100])
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

    let rows = [
        ("bare", percentiles(&rt, TIMED_CALLS, || bare(1))),
        ("breaker", percentiles(&rt, TIMED_CALLS, || breaker(1))),
        (
            "breaker_pool_pace",
            percentiles(&rt, TIMED_CALLS, || everything(1)),
        ),
    ];
    for (name, (p50, p99)) in rows {
        println!("STORE {role} {name} {p50} {p99}");
    }
    if let Some(url) = url {
        let client = redis::Client::open(url.as_str()).expect("a client");
        let conn = rt
            .block_on(client.get_multiplexed_async_connection())
            .expect("a connection");
        let (p50, p99) = percentiles(&rt, TIMED_CALLS, || {
            let mut conn = conn.clone();
            async move { redis::cmd("PING").query_async::<()>(&mut conn).await }
        });
        println!("STORE {role} ping {p50} {p99}");
        // The admission script alone, on the bench's own connection: the store's round trip
        // without the runtime's hop to its store thread.
        let admit = redis::Script::new(
            &retry_runtime::store::redis::ADMIT_LUA.replace("WINDOW_SECS", "10"),
        );
        let (p50, p99) = percentiles(&rt, TIMED_CALLS, || {
            let mut conn = conn.clone();
            let mut invocation = admit.prepare_invoke();
            invocation
                .arg("{bench-raw}")
                .arg("bench")
                .arg("0")
                .arg("0")
                .arg(0)
                .arg(0);
            invocation
                .arg("")
                .arg(1)
                .arg(0)
                .arg(0)
                .arg("")
                .arg(1)
                .arg(1)
                .arg(0);
            async move { invocation.invoke_async::<Vec<i64>>(&mut conn).await }
        });
        println!("STORE {role} admit_script {p50} {p99}");
    }
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

/// Run one worker; its `STORE` lines as (role, row, p50, p99).
fn run(role: &str, url: Option<&str>) -> Vec<(String, String, u64, u64)> {
    let exe = std::env::current_exe().expect("the bench binary's path");
    let mut command = Command::new(exe);
    command.env(ROLE_ENV, role).stderr(Stdio::inherit());
    if let Some(url) = url {
        command.env(URL_ENV, url);
    }
    let out = command.output().expect("a worker runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "worker {role} failed:\n{stdout}");
    let mut rows = Vec::new();
    for line in stdout.lines() {
        match line.strip_prefix("STORE ") {
            Some(row) => {
                let f: Vec<&str> = row.split_whitespace().collect();
                if let [role, name, p50, p99] = f[..] {
                    rows.push((
                        role.to_string(),
                        name.to_string(),
                        p50.parse().unwrap_or(0),
                        p99.parse().unwrap_or(0),
                    ));
                }
            }
            None => println!("{line}"),
        }
    }
    rows
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
    let mut rows = run("memory", None);
    if let Some((_server, url)) = redis_server() {
        rows.extend(run("redis", Some(&url)));
    }
    let get = |role: &str, name: &str| {
        rows.iter()
            .find(|r| r.0 == role && r.1 == name)
            .map(|r| (r.2, r.3))
    };
    println!("\nper call, one at a time ({TIMED_CALLS} calls): p50 / p99, and minus bare");
    println!(
        "{:<8} {:<18} {:>10} {:>10} {:>12} {:>12}",
        "store", "call site", "p50 ns", "p99 ns", "p50 - bare", "p99 - bare"
    );
    for (role, name, p50, p99) in &rows {
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
}
