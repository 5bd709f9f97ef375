//! `metrics.png`: training loss (left) and evaluation accuracy per length bucket (right)
//! over steps, drawn with plotters' bitmap backend and no text (no fonts needed).
//! Left: loss (black), y from 0 to the largest loss. Right: accuracy from 0 to 1 with grid
//! lines at 0.25; buckets seen in training are blue, extrapolation buckets red to yellow.

use plotters::prelude::*;
use std::path::Path;
use xlstm_train::metrics::Event;

const PALETTE: [RGBColor; 4] = [
    RGBColor(200, 30, 30),
    RGBColor(230, 120, 20),
    RGBColor(200, 180, 0),
    RGBColor(140, 60, 160),
];

/// Writes the plot of `events` to `path`.
pub fn write(path: &Path, events: &[Event]) -> Result<(), String> {
    let err = |e: String| format!("plot {}: {e}", path.display());
    let root = BitMapBackend::new(path, (1000, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let (left, right) = root.split_horizontally(500);

    let losses: Vec<(f64, f64)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Train { report, .. } if report.loss.is_finite() => {
                Some((report.step as f64, report.loss))
            }
            _ => None,
        })
        .collect();
    let max_step = losses.iter().map(|p| p.0).fold(1.0, f64::max);
    let max_loss = losses.iter().map(|p| p.1).fold(1e-3, f64::max);
    let mut chart = ChartBuilder::on(&left.margin(20, 20, 20, 20))
        .build_cartesian_2d(0.0..max_step, 0.0..max_loss * 1.05)
        .map_err(|e| err(e.to_string()))?;
    frame(&mut chart, max_step, max_loss * 1.05, 4).map_err(err)?;
    chart
        .draw_series(LineSeries::new(losses, &BLACK))
        .map_err(|e| err(e.to_string()))?;

    let mut chart = ChartBuilder::on(&right.margin(20, 20, 20, 20))
        .build_cartesian_2d(0.0..max_step, 0.0..1.0)
        .map_err(|e| err(e.to_string()))?;
    frame(&mut chart, max_step, 1.0, 4).map_err(err)?;
    let mut names: Vec<(String, bool)> = Vec::new();
    for e in events {
        if let Event::Eval { result, .. } = e {
            let key = (result.bucket.name.clone(), result.bucket.in_train);
            if !names.contains(&key) {
                names.push(key);
            }
        }
    }
    let mut extrapolation = 0;
    for (name, in_train) in names {
        let color = if in_train {
            RGBColor(30, 80, 220)
        } else {
            extrapolation += 1;
            PALETTE[(extrapolation - 1) % PALETTE.len()]
        };
        let points: Vec<(f64, f64)> = events
            .iter()
            .filter_map(|e| match e {
                Event::Eval { step, result } if result.bucket.name == name => {
                    Some((*step as f64, result.accuracy))
                }
                _ => None,
            })
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| err(e.to_string()))?;
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )
            .map_err(|e| err(e.to_string()))?;
    }
    root.present().map_err(|e| err(e.to_string()))
}

/// Border and `lines` horizontal grid lines.
fn frame<DB: DrawingBackend>(
    chart: &mut ChartContext<
        '_,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    x_max: f64,
    y_max: f64,
    lines: usize,
) -> Result<(), String> {
    let grey = RGBColor(210, 210, 210);
    for i in 1..lines {
        let y = y_max * i as f64 / lines as f64;
        chart
            .draw_series(LineSeries::new([(0.0, y), (x_max, y)], &grey))
            .map_err(|e| e.to_string())?;
    }
    let border = [
        (0.0, 0.0),
        (x_max, 0.0),
        (x_max, y_max),
        (0.0, y_max),
        (0.0, 0.0),
    ];
    chart
        .draw_series(LineSeries::new(border, &BLACK))
        .map_err(|e| e.to_string())?;
    Ok(())
}
