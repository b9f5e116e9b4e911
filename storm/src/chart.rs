//! The chart of one scenario: what each policy made the provider serve, against what it could.

use std::path::Path;

use plotters::prelude::*;

use crate::{Policy, Run, Scenario};

fn colour(policy: Policy) -> RGBColor {
    match policy {
        Policy::Naive => RGBColor(214, 39, 40),
        Policy::Exp => RGBColor(255, 127, 14),
        Policy::FullJitter => RGBColor(148, 103, 189),
        Policy::OpenAiSdk => RGBColor(31, 119, 180),
        Policy::Ours => RGBColor(44, 160, 44),
    }
}

/// Draw the provider's calls per second (5 s averages) against its capacity, one line per
/// policy, as an SVG at `path` (its directory is created).
pub fn chart(spec: &Scenario, runs: &[Run], path: &Path) -> Result<(), Box<dyn std::error::Error>> {
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
