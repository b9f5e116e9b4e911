//! Exact half-open probes across a fleet: four OS processes share one breaker (`probes = 1`)
//! through a real `redis-server` and call one provider, an HTTP server on loopback in the
//! parent that counts every request it gets, whoever sent it.
//!
//! * While the provider is down, the breaker opens, cools down, and each half-open period lets
//!   exactly one request through, fleet-wide (without the fleet's probe lease, each process
//!   would send its own: up to four).
//! * The provider then holds the next probe unanswered; no other request comes while it is
//!   held, for longer than the lease (its process renews the lease); the parent kills that
//!   process (`SIGKILL`), and another process's probe comes within the lease, and closes the
//!   breaker for everyone.
//!
//! The test binary is its own worker (as in `tests/redis_fleet.rs`): run without
//! `PROBES_ROLE` it is the parent, which starts redis-server and the provider, re-executes
//! itself as the workers, and reads the provider's log. (`harness = false`: one `main`.)
//! Cross-process time is real time, the only clock the processes and Redis share; the
//! cooldown and the store's timeout (hence the lease) are short to keep it a few seconds.
//! Skips with a message where redis-server is not installed, unless
//! `RESILIENT_REQUIRE_REDIS=1` (CI).

#[path = "common/redis_server.rs"]
mod redis_server;

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::Router;
use redis_server::RedisServer;
use retry_runtime::store::probe_lease;
use retry_runtime::{configure, resilient, Classify, Config, ErrorClass, Rejected};
use tokio::sync::Notify;

const WORKERS: usize = 4;
/// Calls each worker keeps going at once, each pausing [`PAUSE`] between calls.
const TASKS: usize = 4;
const PAUSE: Duration = Duration::from_millis(5);
const COOLDOWN: Duration = Duration::from_millis(400);
/// The store's timeout: the probe lease is ten of them, at least 2 s (`store::probe_lease`).
const STORE_TIMEOUT: Duration = Duration::from_millis(100);
/// How long the provider stays down while the half-open periods are counted.
const DOWN_FOR: Duration = Duration::from_millis(2_400);
/// How long the provider takes to fail: long enough that processes probing on their own
/// would all be in flight at once (a real provider takes longer still).
const FAIL_AFTER: Duration = Duration::from_millis(50);

// ---- the workers ----

#[derive(Debug, Clone)]
enum ProbeError {
    Status(u16),
    Transport,
    Runtime(Rejected),
}

impl From<Rejected> for ProbeError {
    fn from(r: Rejected) -> Self {
        ProbeError::Runtime(r)
    }
}

impl Classify for ProbeError {
    fn class(&self) -> ErrorClass {
        match self {
            ProbeError::Status(code) => ErrorClass::Status(*code),
            ProbeError::Transport => ErrorClass::Transport,
            ProbeError::Runtime(r) => r.class(),
        }
    }
}

#[resilient(max = 1, breaker = "probe")]
async fn ask(http: &reqwest::Client, url: &str, worker: &str) -> Result<(), ProbeError> {
    let response = http
        .get(url)
        .header("x-worker", worker)
        .send()
        .await
        .map_err(|_| ProbeError::Transport)?;
    match response.status().as_u16() {
        200 => Ok(()),
        code => Err(ProbeError::Status(code)),
    }
}

fn config(url: &str, prefix: &str) -> Config {
    let toml = format!(
        r#"
        [store]
        redis_url = "{url}"
        prefix = "{prefix}"
        timeout = "{timeout}ms"

        [breaker.probe]
        failures = 1
        window = "60s"
        cooldown = "{cooldown}ms"
        probes = 1
        adaptive = false
        "#,
        timeout = STORE_TIMEOUT.as_millis(),
        cooldown = COOLDOWN.as_millis(),
    );
    Config::from_toml_str(&toml).expect("the fleet's configuration parses")
}

/// Call the provider from [`TASKS`] tasks until stdin closes; print what the calls got.
fn run_worker() {
    let env = |name| std::env::var(name).unwrap_or_else(|_| panic!("{name} is set"));
    let (url, prefix, provider, worker) = (
        env("PROBES_REDIS"),
        env("PROBES_PREFIX"),
        env("PROBES_PROVIDER"),
        env("PROBES_WORKER"),
    );
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            stop.store(true, Ordering::Release);
        });
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        configure(config(&url, &prefix)).expect("configured once");
        assert!(
            retry_runtime::store::wait_shared(Duration::from_secs(5)).await,
            "worker {worker}: the store never became shared"
        );
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        // [answered 200, answered otherwise, refused by the breaker, anything else]
        let counts: Arc<[AtomicU64; 4]> = Arc::new(Default::default());
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let (http, provider, worker) = (http.clone(), provider.clone(), worker.clone());
                let (stop, counts) = (stop.clone(), counts.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Acquire) {
                        let slot = match ask(&http, &provider, &worker).await {
                            Ok(()) => 0,
                            Err(ProbeError::Status(_)) => 1,
                            Err(ProbeError::Runtime(Rejected::CircuitOpen { .. })) => 2,
                            Err(_) => 3,
                        };
                        counts[slot].fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(PAUSE).await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("a worker task ends");
        }
        let [ok, failed, refused, other] = &*counts;
        println!(
            "RESULT ok={} failed={} refused={} other={}",
            ok.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed),
            refused.load(Ordering::Relaxed),
            other.load(Ordering::Relaxed),
        );
    });
}

// ---- the provider ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Every request gets a 503, after [`FAIL_AFTER`].
    Down,
    /// The next request is held, never answered; the ones after it get a 200.
    HoldNext,
    /// Every request gets a 200.
    Up,
}

#[derive(Debug, Clone, Copy)]
struct Hit {
    at: Instant,
    worker: usize,
    held: bool,
}

struct Provider {
    mode: Mutex<Mode>,
    hits: Mutex<Vec<Hit>>,
    never: Notify,
}

impl Provider {
    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// The first request after `since` that `pick` accepts, waiting up to `within`.
    fn next_hit(&self, since: Instant, within: Duration, pick: impl Fn(&Hit) -> bool) -> Hit {
        let until = Instant::now() + within;
        loop {
            if let Some(hit) = self.hits().into_iter().find(|h| h.at > since && pick(h)) {
                return hit;
            }
            assert!(
                Instant::now() < until,
                "no request reached the provider within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

async fn answer(State(provider): State<Arc<Provider>>, headers: HeaderMap) -> StatusCode {
    let worker = headers
        .get("x-worker")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(usize::MAX);
    let (status, held) = {
        let mut mode = provider.mode.lock().unwrap();
        let answer = match *mode {
            Mode::Down => (StatusCode::SERVICE_UNAVAILABLE, false),
            Mode::HoldNext => {
                *mode = Mode::Up;
                (StatusCode::OK, true)
            }
            Mode::Up => (StatusCode::OK, false),
        };
        provider.hits.lock().unwrap().push(Hit {
            at: Instant::now(),
            worker,
            held: answer.1,
        });
        answer
    };
    if held {
        provider.never.notified().await;
    }
    if status != StatusCode::OK {
        tokio::time::sleep(FAIL_AFTER).await;
    }
    status
}

/// The worker processes; those still running are killed when the parent ends (or fails).
struct Fleet(Vec<Option<Child>>);

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in self.0.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---- the parent ----

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn spawn_worker(index: usize, redis: &str, prefix: &str, provider: SocketAddr) -> Child {
    Command::new(std::env::current_exe().expect("the test binary's path"))
        .env("PROBES_ROLE", "worker")
        .env("PROBES_REDIS", redis)
        .env("PROBES_PREFIX", prefix)
        .env("PROBES_PROVIDER", format!("http://{provider}/"))
        .env("PROBES_WORKER", index.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("a worker process starts")
}

/// The requests in runs separated by more than half a cooldown: one run per half-open period
/// (the first: the calls that found the breaker still closed).
fn periods(hits: &[Hit]) -> Vec<Vec<Hit>> {
    let mut runs: Vec<Vec<Hit>> = Vec::new();
    for hit in hits {
        match runs.last_mut() {
            Some(run) if hit.at - run.last().unwrap().at <= COOLDOWN / 2 => run.push(*hit),
            _ => runs.push(vec![*hit]),
        }
    }
    runs
}

fn main() {
    if std::env::var("PROBES_ROLE").is_ok() {
        run_worker();
        return;
    }
    let Some(server) = RedisServer::start() else {
        return;
    };
    let redis = server.url();
    let prefix = format!("probes-{}-{}", std::process::id(), unix_ms());
    let lease = probe_lease(STORE_TIMEOUT);
    let started = Instant::now();

    let provider = Arc::new(Provider {
        mode: Mutex::new(Mode::Down),
        hits: Mutex::new(Vec::new()),
        never: Notify::new(),
    });
    let rt = tokio::runtime::Runtime::new().expect("the parent's runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("a loopback port for the provider");
    let address = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/", get(answer))
        .with_state(provider.clone());
    rt.spawn(async move { axum::serve(listener, app).await });

    let mut fleet = Fleet(
        (0..WORKERS)
            .map(|i| Some(spawn_worker(i, &redis, &prefix, address)))
            .collect(),
    );
    let workers = &mut fleet.0;

    // 1. The provider is down: one request per half-open period, fleet-wide.
    provider.next_hit(started, Duration::from_secs(15), |_| true);
    std::thread::sleep(DOWN_FOR);
    let down = provider.hits();
    let runs = periods(&down);
    let per_period: Vec<usize> = runs[1..].iter().map(Vec::len).collect();
    let probers: Vec<Vec<usize>> = runs[1..]
        .iter()
        .map(|run| run.iter().map(|h| h.worker).collect())
        .collect();
    let gaps: Vec<u128> = runs
        .windows(2)
        .map(|w| (w[1][0].at - w[0][0].at).as_millis())
        .collect();
    println!(
        "down for {DOWN_FOR:?} (cooldown {COOLDOWN:?}, probes = 1, {WORKERS} processes x {TASKS} \
         callers, failing in {FAIL_AFTER:?}): {} requests while it opened, then per half-open \
         period {per_period:?} \
         (sent by workers {probers:?}; periods {gaps:?} ms apart)",
        runs[0].len()
    );
    assert!(
        per_period.len() >= 3,
        "at least three half-open periods in {DOWN_FOR:?} with a {COOLDOWN:?} cooldown: {per_period:?}"
    );
    assert!(
        per_period.iter().all(|&n| n == 1),
        "exactly one request per half-open period across the fleet: {per_period:?}"
    );

    // 2. The next probe is held unanswered: nothing else comes while its process holds the
    // lease (renewed past its length), then that process is killed.
    provider.set(Mode::HoldNext);
    let asked = Instant::now();
    let held = provider.next_hit(asked, COOLDOWN * 4 + lease, |h| h.held);
    let hold_for = lease + lease / 4;
    std::thread::sleep(hold_for.saturating_sub(held.at.elapsed()));
    let meanwhile: Vec<Hit> = provider
        .hits()
        .into_iter()
        .filter(|h| h.at > held.at)
        .collect();
    assert!(
        meanwhile.is_empty(),
        "the held probe's process holds the fleet's only slot for {:?} (lease {lease:?}): \
         {meanwhile:?}",
        held.at.elapsed()
    );
    let holder = held.worker;
    let mut child = workers[holder].take().expect("the holder is running");
    child.kill().expect("SIGKILL the holder");
    let killed_at = Instant::now();
    child.wait().expect("the killed holder is reaped");
    let next = provider.next_hit(killed_at, lease * 2 + Duration::from_secs(2), |_| true);
    let freed_after = next.at - killed_at;
    println!(
        "kill: worker {holder} held the probe for {:?} (lease {lease:?}, renewed every third); \
         killed, the slot was free again after {freed_after:?}: worker {}'s probe (lease {lease:?})",
        killed_at - held.at,
        next.worker
    );
    assert_ne!(next.worker, holder);
    assert!(
        freed_after <= lease + Duration::from_millis(300),
        "a dead holder's slot is free within the lease ({lease:?}): took {freed_after:?}"
    );
    // Renewed every third of the lease, it was still good for at least two thirds of it.
    assert!(
        freed_after >= lease / 2,
        "the slot stayed leased after the holder died: freed after {freed_after:?}, lease {lease:?}"
    );

    // 3. That probe's success closed the breaker for the whole fleet.
    std::thread::sleep(Duration::from_millis(500));
    let after: Vec<Hit> = provider
        .hits()
        .into_iter()
        .filter(|h| h.at > next.at)
        .collect();
    for (i, worker) in workers.iter().enumerate() {
        if worker.is_some() {
            assert!(
                after.iter().any(|h| h.worker == i),
                "worker {i} sends again after the probe closed the breaker"
            );
        }
    }
    let mut results = Vec::new();
    for (i, worker) in workers.iter_mut().enumerate() {
        let Some(mut child) = worker.take() else {
            continue;
        };
        drop(child.stdin.take()); // end of input: the worker stops
        let out = child.wait_with_output().expect("a worker ends");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "worker {i} failed: {stdout}");
        let result = stdout
            .lines()
            .find_map(|l| l.strip_prefix("RESULT "))
            .unwrap_or_else(|| panic!("worker {i} printed no RESULT: {stdout}"))
            .to_string();
        assert!(result.ends_with("other=0"), "worker {i}: {result}");
        results.push(format!("worker {i}: {result}"));
    }
    println!("closed again: {} requests since; {results:?}", after.len());
    println!("redis probes: 3 checks passed in {:.1?}", started.elapsed());
}
