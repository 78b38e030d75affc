//! SVG plots of `cargo xtask bench cluster`: throughput against client count, and latency
//! percentiles against client count, one line per system and operation.
//!
//! plotters' SVG backend is built without its `ttf` feature, so it needs no system fonts: text is
//! written as SVG `<text>` elements and sized by an estimate.

use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::prelude::*;

use crate::bench_cluster::{PhaseStats, SystemRun};

const COLORS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

/// The phases the runs measured: puts and linearizable gets always, sequential gets if any run
/// has them.
fn picks(runs: &[SystemRun]) -> Vec<(&'static str, Pick)> {
    let mut picks = vec![("puts", Pick::Writes), ("linearizable gets", Pick::Reads)];
    if runs
        .iter()
        .flat_map(|r| &r.rows)
        .any(|row| row.seq_reads.is_some())
    {
        picks.push(("sequential gets", Pick::SeqReads));
    }
    picks
}

/// Writes `<prefix>-throughput.svg` and `<prefix>-latency.svg` into `dir`; returns their paths.
/// Runs with session-consistent reads get those plotted too.
pub fn write_plots(dir: &Path, prefix: &str, runs: &[SystemRun]) -> anyhow::Result<Vec<PathBuf>> {
    let throughput = dir.join(format!("{prefix}-throughput.svg"));
    let latency = dir.join(format!("{prefix}-latency.svg"));
    draw_throughput(&throughput, runs)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("drawing {}", throughput.display()))?;
    draw_latency(&latency, runs)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("drawing {}", latency.display()))?;
    Ok(vec![throughput, latency])
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// A log-scale client axis whose labels are exactly the client counts measured.
fn client_axis(runs: &[SystemRun]) -> plotters::coord::combinators::WithKeyPoints<LogCoord<f64>> {
    let mut counts: Vec<f64> = runs
        .iter()
        .flat_map(|r| r.rows.iter().map(|row| row.clients as f64))
        .collect();
    counts.sort_by(f64::total_cmp);
    counts.dedup();
    let max = counts.last().copied().unwrap_or(1.0);
    (0.8..(max * 1.25).max(2.0))
        .log_scale()
        .with_key_points(counts)
}

fn draw_throughput(path: &Path, runs: &[SystemRun]) -> DrawResult {
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = runs
        .iter()
        .flat_map(|r| r.rows.iter())
        .flat_map(|row| [Some(&row.writes), Some(&row.reads), row.seq_reads.as_ref()])
        .flatten()
        .map(PhaseStats::ops_per_sec)
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Throughput vs concurrent clients (3 members, loopback, fsync on)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(client_axis(runs), 0.0..max * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("concurrent clients")
        .y_desc("operations / s")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    let mut color = 0;
    for run in runs {
        for (label, pick) in picks(runs) {
            let c = COLORS[color % COLORS.len()];
            color += 1;
            let points: Vec<(f64, f64)> = run
                .rows
                .iter()
                .filter_map(|row| Some((row.clients as f64, pick.of(row)?.ops_per_sec())))
                .collect();
            if points.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))?
                .label(format!("{} {label}", run.name))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
            chart.draw_series(points.into_iter().map(|p| Circle::new(p, 4, c.filled())))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[derive(Clone, Copy)]
enum Pick {
    Writes,
    Reads,
    SeqReads,
}

impl Pick {
    fn of(self, row: &crate::bench_cluster::Row) -> Option<&PhaseStats> {
        match self {
            Pick::Writes => Some(&row.writes),
            Pick::Reads => Some(&row.reads),
            Pick::SeqReads => row.seq_reads.as_ref(),
        }
    }
}

fn draw_latency(path: &Path, runs: &[SystemRun]) -> DrawResult {
    let picks = picks(runs);
    let root = SVGBackend::new(path, (600 * picks.len() as u32, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, picks.len()));
    for (area, (title, pick)) in panels.iter().zip(picks) {
        let max = runs
            .iter()
            .flat_map(|r| r.rows.iter())
            .filter_map(|row| Some(pick.of(row)?.p99_us.max(1) as f64 / 1000.0))
            .fold(0.01, f64::max);
        let min = runs
            .iter()
            .flat_map(|r| r.rows.iter())
            .filter_map(|row| Some(pick.of(row)?.p50_us.max(1) as f64 / 1000.0))
            .fold(f64::INFINITY, f64::min)
            .min(max);
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!("{title}: latency p50 (solid) and p99 (dashed)"),
                ("sans-serif", 18),
            )
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(client_axis(runs), (min / 1.5..max * 1.5).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("concurrent clients")
            .y_desc("latency (ms)")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.2}"))
            .draw()?;
        for (i, run) in runs.iter().enumerate() {
            let c = COLORS[(2 * i) % COLORS.len()];
            let at = |q: fn(&PhaseStats) -> u64| -> Vec<(f64, f64)> {
                run.rows
                    .iter()
                    .filter_map(|row| {
                        Some((row.clients as f64, q(pick.of(row)?).max(1) as f64 / 1000.0))
                    })
                    .collect()
            };
            let (p50, p99) = (at(|s| s.p50_us), at(|s| s.p99_us));
            if p50.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(p50.clone(), c.stroke_width(2)))?
                .label(format!("{} p50", run.name))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
            chart.draw_series(p50.into_iter().map(|p| Circle::new(p, 4, c.filled())))?;
            chart
                .draw_series(DashedLineSeries::new(p99.clone(), 6, 4, c.stroke_width(2)))?
                .label(format!("{} p99", run.name))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 8, y)], c.stroke_width(2))
                });
            chart.draw_series(
                p99.into_iter()
                    .map(|p| TriangleMarker::new(p, 5, c.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench_cluster::Row;
    use std::time::Duration;

    #[test]
    fn plots_name_every_system_and_need_no_fonts() {
        let stats = |ops: u64, p99: u64| PhaseStats {
            ops,
            elapsed: Duration::from_secs(1),
            p50_us: p99 / 3,
            p99_us: p99,
            max_us: p99 * 2,
            server_cpu: Duration::from_millis(ops),
            busiest_server_cpu: Duration::from_millis(ops / 2),
            client_cpu: Duration::from_millis(ops / 2),
        };
        let run = |name: &str, scale: u64| SystemRun {
            name: name.into(),
            rows: [1, 16, 64, 256]
                .iter()
                .map(|&clients| Row {
                    clients,
                    writes: stats(scale * clients as u64, 1000 + clients as u64),
                    reads: stats(2 * scale * clients as u64, 500),
                    seq_reads: None,
                })
                .collect(),
        };
        let dir = tempfile::tempdir().unwrap();
        let files = write_plots(
            dir.path(),
            "cluster",
            &[run("quorate", 100), run("etcd 3.4.23", 40)],
        )
        .unwrap();
        assert_eq!(files.len(), 2);
        for f in files {
            let svg = std::fs::read_to_string(&f).unwrap();
            assert!(svg.starts_with("<svg"), "{}", f.display());
            assert!(svg.contains("quorate"), "{}", f.display());
            assert!(svg.contains("etcd 3.4.23"), "{}", f.display());
            assert!(
                svg.contains(">\n256\n<") || svg.contains(">256<"),
                "client counts label the axis"
            );
        }
    }
}
