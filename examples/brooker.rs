//! Marc Brooker's optimistic-concurrency experiment ("Exponential Backoff And Jitter", AWS
//! Architecture Blog, 2015), with every backoff drawn by this library's
//! `retry_runtime::backoff::Backoff`.
//!
//! ```text
//! cargo run --release --example brooker                          # 10..=190 clients, seed 1
//! cargo run --release --example brooker -- --clients 100 --runs 1000 --seed 7
//! ```
//!
//! The model is that of the published simulator (aws-samples/aws-arch-backoff-simulator,
//! `src/backoff_simulator.py`), event for event:
//!
//! - one row with a version number; `clients` clients start at time 0 and each wants to write
//!   the row once;
//! - a client reads the version, then writes with it; the write succeeds only if the version
//!   is unchanged (OCC), and then bumps it;
//! - every message (read request, read reply, write request, write reply) takes
//!   `|N(10 ms, 2 ms)|` on the network;
//! - after a failed write the client sleeps `backoff(n)` (base 5 ms, cap 2 s; `n` = 1 for the
//!   first failure, as the simulator counts) on top of the reply's network delay, then reads
//!   again;
//! - **calls** = writes the row received (reads are not counted, as in the simulator);
//!   **time** = when the last client received its successful write reply.
//!
//! Each figure is the mean over `--runs` runs (100, as the simulator). A discrete-event loop
//! on a simulated clock, with all randomness from seeded `Jitter` sources: the same seed
//! gives the same table. Results are discussed in `docs/PERFORMANCE.md`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::process::ExitCode;
use std::time::Duration;

use retry_runtime::backoff::{Backoff, Jitter};

const BASE: Duration = Duration::from_millis(5);
const CAP: Duration = Duration::from_secs(2);
const NET_MEAN_NS: f64 = 10_000_000.0;
const NET_SD_NS: f64 = 2_000_000.0;

/// A strategy as the blog names it, and the library formula that computes it.
#[derive(Clone, Copy)]
pub(crate) struct Strategy {
    pub(crate) name: &'static str,
    backoff: Backoff,
    base: Duration,
}

pub(crate) const STRATEGIES: [Strategy; 5] = [
    Strategy {
        name: "exp",
        backoff: Backoff::Exp,
        base: BASE,
    },
    Strategy {
        name: "full",
        backoff: Backoff::ExpJitter,
        base: BASE,
    },
    Strategy {
        name: "equal",
        backoff: Backoff::EqualJitter,
        base: BASE,
    },
    Strategy {
        name: "decorr",
        backoff: Backoff::DecorrelatedJitter,
        base: BASE,
    },
    // The simulator's "None": retry as soon as the failure reply arrives. A constant backoff
    // of zero is the same thing in the library's terms.
    Strategy {
        name: "none",
        backoff: Backoff::Constant,
        base: Duration::ZERO,
    },
];

/// What happens next in the simulation; each carries the client it concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A client's read request reaches the row.
    ReadArrives { client: usize },
    /// The version read reaches the client.
    ReadReply { client: usize, version: u64 },
    /// A client's conditional write reaches the row.
    WriteArrives { client: usize, version: u64 },
    /// The write's outcome reaches the client.
    WriteReply { client: usize, written: bool },
}

/// One client's retry state.
struct Client {
    /// Failed writes so far: the simulator's `attempt`.
    failures: u32,
    /// The last sleep, which decorrelated jitter grows from (the simulator starts it at base).
    prev: Duration,
    jitter: Jitter,
}

/// The network: `|N(mean, sd)|` per message, drawn from a seeded source (Box-Muller).
struct Network {
    rng: Jitter,
}

impl Network {
    fn delay_ns(&mut self) -> u64 {
        let u1 = unit(self.rng.next_u64()).max(f64::MIN_POSITIVE);
        let u2 = unit(self.rng.next_u64());
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        (NET_MEAN_NS + NET_SD_NS * z).abs() as u64
    }
}

/// A uniform float in [0, 1) from 53 random bits.
fn unit(bits: u64) -> f64 {
    (bits >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A seed for one stream, distinct per (run seed, client count, run, stream), shared by all
/// strategies so they face the same network draws (common random numbers).
fn stream_seed(seed: u64, clients: usize, run: usize, stream: usize) -> u64 {
    let mut j = Jitter::from_seed(
        seed ^ (clients as u64).rotate_left(40) ^ (run as u64).rotate_left(20) ^ stream as u64,
    );
    j.next_u64()
}

/// The outcome of one run: writes the row received, and when the last client finished.
struct Outcome {
    calls: u64,
    time_ns: u64,
}

fn simulate(strategy: Strategy, clients: usize, seed: u64, run: usize) -> Outcome {
    let mut net = Network {
        rng: Jitter::from_seed(stream_seed(seed, clients, run, usize::MAX)),
    };
    let mut population: Vec<Client> = (0..clients)
        .map(|i| Client {
            failures: 0,
            prev: strategy.base,
            jitter: Jitter::from_seed(stream_seed(seed, clients, run, i)),
        })
        .collect();
    // (time, sequence) orders the queue; the sequence only breaks exact-time ties, by
    // insertion order, so a run is reproducible.
    let mut queue: BinaryHeap<Reverse<(u64, u64, Event)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |queue: &mut BinaryHeap<_>, at: u64, event: Event| {
        queue.push(Reverse((at, seq, event)));
        seq += 1;
    };
    for client in 0..clients {
        push(&mut queue, net.delay_ns(), Event::ReadArrives { client });
    }
    let mut row_version = 0u64;
    let mut calls = 0u64;
    let mut now = 0u64;
    while let Some(Reverse((at, _, event))) = queue.pop() {
        now = at;
        match event {
            Event::ReadArrives { client } => {
                let version = row_version;
                push(
                    &mut queue,
                    now + net.delay_ns(),
                    Event::ReadReply { client, version },
                );
            }
            Event::ReadReply { client, version } => push(
                &mut queue,
                now + net.delay_ns(),
                Event::WriteArrives { client, version },
            ),
            Event::WriteArrives { client, version } => {
                calls += 1;
                let written = version == row_version;
                if written {
                    row_version += 1;
                }
                push(
                    &mut queue,
                    now + net.delay_ns(),
                    Event::WriteReply { client, written },
                );
            }
            Event::WriteReply { written: true, .. } => {}
            Event::WriteReply {
                client,
                written: false,
            } => {
                let c = &mut population[client];
                c.failures += 1;
                let sleep =
                    strategy
                        .backoff
                        .delay(c.failures, strategy.base, CAP, c.prev, &mut c.jitter);
                c.prev = sleep;
                let sleep_ns = u64::try_from(sleep.as_nanos()).unwrap_or(u64::MAX);
                push(
                    &mut queue,
                    now + net.delay_ns() + sleep_ns,
                    Event::ReadArrives { client },
                );
            }
        }
    }
    Outcome {
        calls,
        time_ns: now,
    }
}

/// Mean and standard error of the mean over runs.
#[derive(Clone, Copy)]
pub(crate) struct Stat {
    pub(crate) mean: f64,
    sem: f64,
}

fn stat(xs: &[f64]) -> Stat {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 {
        xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    Stat {
        mean,
        sem: (var / n).sqrt(),
    }
}

/// Calls and completion time (ms) of one strategy at one client count.
#[derive(Clone, Copy)]
pub(crate) struct Cell {
    pub(crate) calls: Stat,
    pub(crate) time_ms: Stat,
}

pub(crate) fn measure(strategy: Strategy, clients: usize, runs: usize, seed: u64) -> Cell {
    let outcomes: Vec<Outcome> = (0..runs)
        .map(|run| simulate(strategy, clients, seed, run))
        .collect();
    let calls: Vec<f64> = outcomes.iter().map(|o| o.calls as f64).collect();
    let times: Vec<f64> = outcomes.iter().map(|o| o.time_ns as f64 / 1e6).collect();
    Cell {
        calls: stat(&calls),
        time_ms: stat(&times),
    }
}

struct Args {
    clients: Vec<usize>,
    runs: usize,
    seed: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        clients: (10..=190).step_by(10).collect(),
        runs: 100,
        seed: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--clients" => {
                args.clients = value()?
                    .split(',')
                    .map(|s| s.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("--clients: {e} (want e.g. 10,50,100)"))?;
            }
            "--runs" => args.runs = value()?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--seed" => args.seed = value()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "-h" | "--help" => {
                return Err(
                    "usage: brooker [--clients 10,20,...] [--runs 100] [--seed 1]".to_string(),
                )
            }
            other => return Err(format!("unknown flag {other}; try --help")),
        }
    }
    if args.runs == 0 || args.clients.is_empty() || args.clients.contains(&0) {
        return Err("--runs and every --clients value must be at least 1".to_string());
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    println!(
        "Brooker's OCC experiment: base {BASE:?}, cap {CAP:?}, network |N(10 ms, 2 ms)| per \
         message, mean of {} runs per cell, seed {}",
        args.runs, args.seed
    );
    let table: Vec<(usize, Vec<Cell>)> = args
        .clients
        .iter()
        .map(|&n| {
            let cells = STRATEGIES
                .iter()
                .map(|&s| measure(s, n, args.runs, args.seed))
                .collect();
            (n, cells)
        })
        .collect();

    let header = || {
        print!("{:>8}", "clients");
        for s in STRATEGIES {
            print!("{:>10}", s.name);
        }
        println!();
    };
    println!("\ncalls (writes the row received), mean per run");
    header();
    for (n, cells) in &table {
        print!("{n:>8}");
        for c in cells {
            print!("{:>10.1}", c.calls.mean);
        }
        println!();
    }
    println!("\ncompletion time (ms), mean per run");
    header();
    for (n, cells) in &table {
        print!("{n:>8}");
        for c in cells {
            print!("{:>10.0}", c.time_ms.mean);
        }
        println!();
    }

    // The ratios the blog's argument rests on, against full jitter, at 100 clients (the point
    // docs/PERFORMANCE.md compares with the published simulator), else the largest count run.
    let focus = table
        .iter()
        .find(|(n, _)| *n == 100)
        .or_else(|| table.last());
    if let Some((n, cells)) = focus {
        let full = cells[1];
        println!("\n{n} clients, relative to full jitter (± is the standard error of the mean)");
        println!(
            "{:>8} {:>16} {:>20} {:>11} {:>11}",
            "strategy", "calls", "time (ms)", "calls/full", "time/full"
        );
        for (s, c) in STRATEGIES.iter().zip(cells) {
            println!(
                "{:>8} {:>9.1} ± {:<4.1} {:>11.0} ± {:<6.0} {:>11.2} {:>11.2}",
                s.name,
                c.calls.mean,
                c.calls.sem,
                c.time_ms.mean,
                c.time_ms.sem,
                c.calls.mean / full.calls.mean,
                c.time_ms.mean / full.time_ms.mean,
            );
        }
    }
    ExitCode::SUCCESS
}
