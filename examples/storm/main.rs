//! The storm simulator: retry policies side by side during a provider incident.
//!
//! ```text
//! cargo run --release --example storm                        # all four scenarios
//! cargo run --release --example storm -- --scenario a        # just the 429 storm
//! cargo run --release --example storm -- --callers 500 --seed 42
//! cargo run --release --example storm -- --short             # the shortened runs of the test
//! ```
//!
//! A simulated LLM provider (rate limits with 429 + `retry-after-ms`, workers and a queue,
//! billing per attempt) and a population of callers run on tokio's paused clock. Each
//! scenario (a: 429 storm, b: brownout, c: hard outage, d: metastable) runs five policies:
//! a naive loop, exponential backoff without jitter, full jitter alone, the OpenAI Python
//! SDK's default, and ours with everything on. It prints a table and writes one SVG per
//! scenario (provider calls per second against capacity) to `target/storm/`.
//!
//! Same seed, same figures: the simulation's randomness and the runtime's jitter are seeded,
//! and nothing reads the wall clock (except the total wall time, printed on stderr). The model
//! and the figures' definitions are in `docs/PERFORMANCE.md`, "Storm simulator".

mod sim;

use std::path::PathBuf;

use plotters::prelude::*;

use sim::{Policy, Run, Scenario};

struct Args {
    scenarios: Vec<char>,
    short: bool,
    callers: u32,
    seed: u64,
}

fn usage() -> ! {
    eprintln!("usage: storm [--scenario a|b|c|d|all] [--callers N] [--seed S] [--short]");
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut args = Args {
        scenarios: vec!['a', 'b', 'c', 'd'],
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
                    "all" => vec!['a', 'b', 'c', 'd'],
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
    // and fallback cache (see `sim::ours`), and the paused clock runs a whole scenario in
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
    let runs = sim::run_scenario(spec, callers, seed);
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
    out.push_str(&sim::table_header());
    out.push('\n');
    for run in &runs {
        out.push_str(&sim::table_row(&sim::figures(spec, run)));
        out.push('\n');
    }
    let file = format!("scenario-{}.svg", spec.key);
    match chart(spec, &runs, &out_dir().join(&file)) {
        Ok(()) => out.push_str(&format!("    chart: target/storm/{file}\n")),
        Err(e) => out.push_str(&format!("    chart not written: {e}\n")),
    }
    out
}

fn colour(policy: Policy) -> RGBColor {
    match policy {
        Policy::Naive => RGBColor(214, 39, 40),
        Policy::Exp => RGBColor(255, 127, 14),
        Policy::FullJitter => RGBColor(148, 103, 189),
        Policy::OpenAiSdk => RGBColor(31, 119, 180),
        Policy::Ours => RGBColor(44, 160, 44),
    }
}

/// Provider calls per second (5 s averages) against capacity, one line per policy.
fn chart(
    spec: &Scenario,
    runs: &[Run],
    path: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(path.parent().expect("a directory"))?;
    const SMOOTH: usize = 5;
    let secs = spec.end().ceil() as usize + 30;
    let series: Vec<(Policy, Vec<(f64, f64)>)> = runs
        .iter()
        .map(|run| {
            let per = &run.provider.calls_per_sec;
            let points = (0..secs / SMOOTH)
                .map(|b| {
                    let sum: u32 = (b * SMOOTH..(b + 1) * SMOOTH)
                        .map(|s| per.get(s).copied().unwrap_or(0))
                        .sum();
                    ((b * SMOOTH) as f64, f64::from(sum) / SMOOTH as f64)
                })
                .collect();
            (run.policy, points)
        })
        .collect();
    let top = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(_, y)| y))
        .fold(spec.capacity_rps(0.0), f64::max)
        * 1.1;

    let root = SVGBackend::new(path, (1000, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("({}) {}", spec.key, spec.title), ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..secs as f64, 0f64..top)?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("provider calls per second")
        .draw()?;
    let capacity: Vec<(f64, f64)> = (0..secs)
        .map(|s| (s as f64, spec.capacity_rps(s as f64)))
        .collect();
    chart
        .draw_series(LineSeries::new(capacity, BLACK.stroke_width(2)))?
        .label("provider capacity")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    for (policy, points) in series {
        let c = colour(policy);
        chart
            .draw_series(LineSeries::new(points, c.stroke_width(2)))?
            .label(policy.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}
