//! The storm simulator: retry policies side by side during a provider incident.
//!
//! ```text
//! cargo run --release --example storm                        # all six scenarios
//! cargo run --release --example storm -- --scenario a        # just the 429 storm
//! cargo run --release --example storm -- --callers 500 --seed 42
//! cargo run --release --example storm -- --short             # the shortened runs of the test
//! ```
//!
//! A simulated LLM provider (rate limits with 429 + `retry-after-ms`, workers and a queue,
//! billing per attempt) and a population of callers run on tokio's paused clock. Each
//! scenario (a: 429 storm, b: 70% brownout, c: hard outage, d: metastable slowdown, e: 30%
//! brownout, f: a provider shedding load) runs five policies:
//! a naive loop, exponential backoff without jitter, full jitter alone, the OpenAI Python
//! SDK's default, and ours with everything on. It prints a table and writes one SVG per
//! scenario (provider calls per second against capacity) to `target/storm/`.
//!
//! Same seed, same figures: the simulation's randomness and the runtime's jitter are seeded,
//! and nothing reads the wall clock (except the total wall time, printed on stderr). The model
//! and the figures' definitions are in `docs/PERFORMANCE.md`, "Storm simulator"; the engine,
//! the table and the chart are the `storm-sim` crate (`storm/`), this is its command line.

use std::path::PathBuf;

use storm_sim::Scenario;

struct Args {
    scenarios: Vec<char>,
    short: bool,
    callers: u32,
    seed: u64,
}

fn usage() -> ! {
    eprintln!("usage: storm [--scenario a|b|c|d|e|f|all] [--callers N] [--seed S] [--short]");
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut args = Args {
        scenarios: Scenario::KEYS.to_vec(),
        short: false,
        callers: 200,
        seed: 7,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--short" {
            args.short = true;
            continue;
        }
        let value = it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--scenario" => {
                args.scenarios = match value.as_str() {
                    "all" => Scenario::KEYS.to_vec(),
                    one if one.len() == 1
                        && Scenario::by_key(one.as_bytes()[0] as char).is_some() =>
                    {
                        vec![one.as_bytes()[0] as char]
                    }
                    _ => usage(),
                }
            }
            "--callers" => {
                args.callers = value
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .unwrap_or_else(|| usage())
            }
            "--seed" => args.seed = value.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    args
}

fn out_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("storm")
}

fn main() {
    let args = parse_args();
    // Scenarios run one after the other in this process: each has its own breaker, pacer
    // and fallback cache (see the `storm_sim` crate docs), and the paused clock runs a whole scenario in
    // well under a second of wall time.
    let started = std::time::Instant::now();
    for &key in &args.scenarios {
        let mut spec = Scenario::by_key(key).unwrap_or_else(|| usage());
        if args.short {
            spec = spec.short();
        }
        print!("{}", run_one(&spec, args.callers, args.seed));
    }
    // Wall time on stderr: the figures on stdout are identical from run to run.
    eprintln!("\nall scenarios in {:.2?} of wall time", started.elapsed());
}

fn run_one(spec: &Scenario, callers: u32, seed: u64) -> String {
    let runs = storm_sim::run_scenario(spec, callers, seed);
    let mut out = format!(
        "\n({}) {}\n    {} callers, seed {}, limit {} rpm / {} tpm; incident {}..{} s of {} s\n",
        spec.key,
        spec.title,
        callers,
        seed,
        spec.rpm,
        spec.tpm,
        spec.incident_start(),
        spec.incident_end(),
        spec.end()
    );
    let figures: Vec<_> = runs.iter().map(|r| storm_sim::figures(spec, r)).collect();
    out.push_str(&storm_sim::table(&figures));
    let file = format!("scenario-{}.svg", spec.key);
    match storm_sim::chart(spec, &runs, &out_dir().join(&file)) {
        Ok(()) => out.push_str(&format!("    chart: target/storm/{file}\n")),
        Err(e) => out.push_str(&format!("    chart not written: {e}\n")),
    }
    out
}
