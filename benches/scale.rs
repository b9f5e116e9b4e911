//! How a call's cost grows with the work around it: calls through one breaker, one pool and
//! one pacer, on a tokio multi-thread runtime of 1 and 2 workers.
//!
//! - `free` rows: a few tasks per worker call in a loop through a pacer whose rate never
//!   binds (every permit takes the fast path): calls per second, and CPU per call.
//! - `line` rows: 10, 1,000 or 10,000 tasks call in a loop through a pacer of 100,000
//!   requests a second with a burst of 1 ms's worth (100), `max_wait` none. The rate binds,
//!   so every task waits in the pacer's line after each call and the line holds all of them
//!   (the measured mean is printed). Wall time per permit is then the rate's; what a permit
//!   costs is the CPU the process spends per permit issued (all threads, from
//!   `/proc/self/task/*/schedstat`; Linux only, else `-`).
//! - `pacer alone` rows: the same line, the tasks calling `Pacer::acquire` and nothing else,
//!   to tell the line's own cost from the call's around it.
//!
//! Why the 1 ms burst: tokio's timers fire on the millisecond. With no burst, once the line
//! has caught up with the clock each permit is due a full interval after the one before, so a
//! caller that comes back to the line waits for the next tick: a line of 10 would get about 10
//! permits a millisecond (10,000 a second), with a timer wake-up every 10 permits instead of
//! every 100 as in the longer lines it is compared with.
//!
//! Each row gets its own runtime and tasks (dropped after the row), and the rows are measured
//! in rounds, each round visiting every row (starting one further on each time), so that a
//! drift of the machine hits all rows alike; ratios are the median of the per-round ratios.
//! Run with `cargo bench --bench scale` (about a minute; `SCALE_ROUNDS=n` for more or fewer
//! rounds, `SCALE_THREADS=1` or `2` for one runtime size); the numbers are in
//! `docs/PERFORMANCE.md`.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use retry_runtime::pace::{pacer, PaceConfig, Pacer};
use retry_runtime::{
    breaker, configure, resilient, BreakerConfig, Budget, Config, Metered, PoolConfig, Regime,
    Rejected, Spend,
};

/// The line rows' pacer: permits a second, and its burst (the timer's resolution).
const LINE_RATE: u32 = 100_000;
const LINE_BURST: Duration = Duration::from_millis(1);
/// Callers kept in the line, by row.
const LINES: [usize; 3] = [10, 1_000, 10_000];
const THREADS: [usize; 2] = [1, 2];
/// Tasks per worker thread in the free rows.
const FREE_TASKS_PER_THREAD: usize = 2;
/// A free task yields after this many calls, so that the other tasks on its worker run
/// (a call that takes the fast path never yields by itself).
const FREE_YIELD_EVERY: u32 = 64;
const WINDOW_FREE: Duration = Duration::from_millis(400);
const WINDOW_LINE: Duration = Duration::from_millis(600);
const ROUNDS: usize = 5;

/// An answer that says what it cost, so the pool settles each call.
struct Answer(u64);

impl Metered for Answer {
    fn spend(&self) -> Spend {
        Spend::from_micros(self.0)
    }
}

#[resilient(
    max = 1,
    breaker = "scale",
    pool = "scale",
    pace = "scale-free",
    max_cost = "0.0001usd"
)]
async fn free_call() -> Result<Answer, Rejected> {
    Ok(Answer(black_box(1)))
}

#[resilient(
    max = 1,
    breaker = "scale",
    pool = "scale",
    pace = "scale-line",
    max_cost = "0.0001usd"
)]
async fn line_call() -> Result<Answer, Rejected> {
    Ok(Answer(black_box(1)))
}

fn setup() {
    let fixed = |rpm, burst| PaceConfig {
        rpm: Some(rpm),
        adaptive: false,
        burst,
        max_wait: None,
        ..PaceConfig::default()
    };
    configure(
        Config::default()
            .with_breaker("scale", BreakerConfig::default())
            .with_pool(
                "scale",
                PoolConfig {
                    // Never full: each call reserves 100 micro-dollars and settles one.
                    limit: Budget::usd(1_000_000.0),
                    window: Duration::from_secs(3600),
                },
            )
            // 4e9 a minute with a second's burst: never binds.
            .with_pacer("scale-free", fixed(4_000_000_000, Duration::from_secs(1)))
            .with_pacer("scale-line", fixed(LINE_RATE * 60, LINE_BURST)),
    )
    .expect("the bench configures retry-runtime first");
}

/// What a row's tasks do in their loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `free_call`: a pacer that never binds, no line.
    Free,
    /// `line_call`: the whole call, through the binding pacer's line.
    Call,
    /// `Pacer::acquire` on the same pacer, nothing else: what the line itself costs.
    PacerAlone,
}

#[derive(Debug, Clone, Copy)]
struct Row {
    threads: usize,
    kind: Kind,
    /// Tasks kept in the line (`Free`: tasks calling).
    tasks: usize,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    calls_per_sec: f64,
    cpu_ns_per_call: Option<f64>,
    waiting: f64,
}

/// CPU time of every thread of this process so far, in nanoseconds.
fn process_cpu_ns() -> Option<u64> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// One call of the row's kind through `line` (the line rows' pacer); whether it was answered.
async fn one(kind: Kind, line: &'static Pacer) -> bool {
    match kind {
        Kind::Free => free_call().await.is_ok(),
        Kind::Call => line_call().await.is_ok(),
        Kind::PacerAlone => line.acquire(0, None).await.is_ok(),
    }
}

fn run(row: Row) -> Sample {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(row.threads)
        .enable_time()
        .build()
        .expect("a multi-thread runtime");
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let line = pacer("scale-line");
    let sample = rt.block_on(async {
        let (warm, window) = match row.kind {
            Kind::Free => (Duration::from_millis(200), WINDOW_FREE),
            // Long enough for every task to have been served twice.
            Kind::Call | Kind::PacerAlone => (
                Duration::from_millis(200)
                    + 2 * row.tasks as u32 * Duration::from_secs(1) / LINE_RATE,
                WINDOW_LINE,
            ),
        };
        for _ in 0..row.tasks {
            let (stop, calls, refused) = (stop.clone(), calls.clone(), refused.clone());
            tokio::spawn(async move {
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    if !black_box(one(row.kind, line).await) {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    calls.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                    if row.kind == Kind::Free && n == FREE_YIELD_EVERY {
                        n = 0;
                        tokio::task::yield_now().await;
                    }
                }
            });
        }
        tokio::time::sleep(warm).await;
        let (calls0, cpu0, t0) = (
            calls.load(Ordering::Relaxed),
            process_cpu_ns(),
            Instant::now(),
        );
        let (mut waiting, mut looks) = (0usize, 0usize);
        while t0.elapsed() < window {
            tokio::time::sleep(Duration::from_millis(10)).await;
            waiting += line.waiting();
            looks += 1;
        }
        let (calls1, cpu1, elapsed) = (
            calls.load(Ordering::Relaxed),
            process_cpu_ns(),
            t0.elapsed(),
        );
        stop.store(true, Ordering::Relaxed);
        let done = (calls1 - calls0).max(1) as f64;
        Sample {
            calls_per_sec: done / elapsed.as_secs_f64(),
            cpu_ns_per_call: cpu0
                .zip(cpu1)
                .map(|(a, b)| b.saturating_sub(a) as f64 / done),
            waiting: waiting as f64 / looks.max(1) as f64,
        }
    });
    // Drops the tasks still in the line: each leaves it, so the next row starts empty.
    drop(rt);
    // Every call should have been answered by a healthy breaker: say so if not, since the
    // row then measured something else (a refusal, or the overload admission rate).
    let (refused, regime) = (refused.load(Ordering::Relaxed), breaker("scale").regime());
    if refused > 0 || regime != Regime::Healthy {
        eprintln!("scale: {row:?}: {refused} calls refused, breaker regime {regime:?}");
    }
    sample
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() {
    // `cargo test --benches` runs this without `--bench`: one short pass would say nothing,
    // so only a measuring run measures.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    setup();
    let rounds = std::env::var("SCALE_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(ROUNDS)
        .max(1);
    // `SCALE_THREADS=2` (or `1`) measures one runtime size only, e.g. to profile it.
    let only: Option<usize> = std::env::var("SCALE_THREADS")
        .ok()
        .and_then(|t| t.parse().ok());
    let mut rows = Vec::new();
    for threads in THREADS.into_iter().filter(|t| only.is_none_or(|o| o == *t)) {
        rows.push(Row {
            threads,
            kind: Kind::Free,
            tasks: threads * FREE_TASKS_PER_THREAD,
        });
        for kind in [Kind::Call, Kind::PacerAlone] {
            for tasks in LINES {
                rows.push(Row {
                    threads,
                    kind,
                    tasks,
                });
            }
        }
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::with_capacity(rounds); rows.len()];
    for round in 0..rounds {
        for k in 0..rows.len() {
            let i = (round + k) % rows.len();
            samples[i].push(run(rows[i]));
        }
        eprintln!("scale: round {} of {rounds} done", round + 1);
    }
    // The row a line row's ratio is taken against: same threads and kind, the shortest line.
    let base = |row: &Row| {
        rows.iter().position(|r| {
            row.kind != Kind::Free
                && (r.threads, r.kind, r.tasks) == (row.threads, row.kind, LINES[0])
        })
    };
    println!(
        "\nscale: calls through one breaker + pool + pacer, {rounds} rounds (medians; ratio: the \
         median of the per-round ratios of CPU per call to the same kind's row with {} in line)",
        LINES[0]
    );
    println!(
        "  {:>7}  {:<18}  {:>15}  {:>10}  {:>12}  {:>11}  {:>6}",
        "threads", "calls", "callers in line", "calls/s", "wall ns/call", "CPU ns/call", "ratio"
    );
    let mut verdicts = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let s = &samples[i];
        let calls = median(s.iter().map(|x| x.calls_per_sec).collect());
        let cpu: Vec<f64> = s.iter().filter_map(|x| x.cpu_ns_per_call).collect();
        let waiting = median(s.iter().map(|x| x.waiting).collect());
        let ratio = base(row).and_then(|b| {
            let per_round: Vec<f64> = s
                .iter()
                .zip(&samples[b])
                .filter_map(|(x, y)| Some(x.cpu_ns_per_call? / y.cpu_ns_per_call?))
                .collect();
            (!per_round.is_empty()).then(|| median(per_round))
        });
        let (what, line) = match row.kind {
            Kind::Free => ("breaker+pool+pacer", "0 (free)".to_string()),
            Kind::Call => (
                "breaker+pool+pacer",
                format!("{} ({waiting:.0})", row.tasks),
            ),
            Kind::PacerAlone => ("pacer alone", format!("{} ({waiting:.0})", row.tasks)),
        };
        if let (Some(ratio), Kind::Call, true) = (ratio, row.kind, row.tasks == LINES[2]) {
            verdicts.push((row.threads, ratio));
        }
        let cell = |x: Option<f64>, digits: usize| match x {
            Some(x) => format!("{x:.digits$}"),
            None => "-".to_string(),
        };
        println!(
            "  {:>7}  {:<18}  {:>15}  {:>10.0}  {:>12.0}  {:>11}  {:>6}",
            row.threads,
            what,
            line,
            calls,
            1e9 / calls,
            cell((!cpu.is_empty()).then(|| median(cpu)), 0),
            cell(ratio, 2),
        );
    }
    println!(
        "  callers in line: tasks kept in it, and in brackets the mean of pacer.waiting() sampled \
         every 10 ms. The line's pacer: {LINE_RATE} permits a second, burst {LINE_BURST:?}. A \
         task in line holds the call's future, {} bytes.",
        std::mem::size_of_val(&line_call())
    );
    for (threads, ratio) in verdicts {
        let verdict = if ratio <= 1.5 { "within" } else { "over" };
        println!(
            "  {threads} thread(s): CPU per call at {} in line / at {} = {ratio:.2} ({verdict} 1.5x)",
            LINES[2], LINES[0]
        );
    }
}
