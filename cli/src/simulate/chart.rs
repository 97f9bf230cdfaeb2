//! The SVG charts: backlog, workers and wait over time, one line per policy.

use std::path::Path;

use plotters::prelude::*;
use threadtide::sim::{Profile, Run};

const COLORS: [RGBColor; 3] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
];

/// One sampled instant of a run: time, backlog summed, workers summed, longest wait (min).
type Point = (f64, f64, f64, f64);
/// A chart: its file, its y label, and which value of a [`Point`] it draws.
type Chart = (&'static str, &'static str, fn(&Point) -> f64);

/// Writes `backlog.svg`, `workers.svg` and `wait.svg` into `out`.
pub(super) fn all(out: &Path, profile: &Profile, runs: &[Run]) -> Result<(), String> {
    let hours = profile.horizon.as_secs_f64() >= 2.0 * 3600.0;
    let (unit, scale) = if hours {
        ("hours", 3600.0)
    } else {
        ("minutes", 60.0)
    };
    // Per policy: (t, backlog summed, workers summed, longest wait) per sampled instant.
    let points: Vec<Vec<Point>> = runs
        .iter()
        .map(|r| {
            let mut v: Vec<Point> = Vec::new();
            for s in &r.series {
                let t = s.at.as_secs_f64() / scale;
                match v.last_mut() {
                    Some(last) if last.0 == t => {
                        last.1 += s.backlog as f64;
                        last.2 += s.workers as f64;
                        last.3 = last.3.max(s.wait.as_secs_f64() / 60.0);
                    }
                    _ => v.push((
                        t,
                        s.backlog as f64,
                        s.workers as f64,
                        s.wait.as_secs_f64() / 60.0,
                    )),
                }
            }
            v
        })
        .collect();
    let charts: [Chart; 3] = [
        ("backlog.svg", "jobs waiting", |p| p.1),
        ("workers.svg", "workers alive", |p| p.2),
        ("wait.svg", "oldest job's wait (minutes)", |p| p.3),
    ];
    for (file, label, pick) in charts {
        let series: Vec<(&str, Vec<(f64, f64)>)> = runs
            .iter()
            .zip(&points)
            .map(|(r, pts)| (r.policy, pts.iter().map(|p| (p.0, pick(p))).collect()))
            .collect();
        let title = format!("{}: {label}", profile.name);
        draw(&out.join(file), &title, unit, label, &series).map_err(|e| format!("{file}: {e}"))?;
    }
    Ok(())
}

fn draw(
    path: &Path,
    title: &str,
    x_unit: &str,
    y_label: &str,
    series: &[(&str, Vec<(f64, f64)>)],
) -> Result<(), Box<dyn std::error::Error>> {
    let xmax = series
        .iter()
        .flat_map(|(_, v)| v.iter().map(|p| p.0))
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let ymax = series
        .iter()
        .flat_map(|(_, v)| v.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        .max(1.0);
    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax * 1.05)?;
    chart
        .configure_mesh()
        .x_desc(x_unit)
        .y_desc(y_label)
        .draw()?;
    for (i, (name, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
