//! Figures of a benchmark run: percentiles, the markdown table and the
//! latency-distribution plot (an SVG with title, axes, units, legend and the
//! goal marked).

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

/// Latency summary of one path, in seconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Summary {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// Nearest-rank percentile of sorted `v` (`q` in 0..=1).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn summarize(samples: &[f64]) -> Summary {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    Summary {
        count: v.len(),
        p50: percentile(&v, 0.50),
        p90: percentile(&v, 0.90),
        p99: percentile(&v, 0.99),
        max: v.last().copied().unwrap_or(f64::NAN),
    }
}

/// One path (direct or virtual) of one size.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PathResult {
    /// Creation → host object observed (virtual path only).
    pub to_host: Option<Summary>,
    /// Creation → Running observed on the host copy (virtual path only):
    /// the difference to `to_running` is the time status takes to come up.
    pub to_host_running: Option<Summary>,
    /// Creation → Running observed.
    pub to_running: Summary,
    /// First creation → last Running, seconds.
    pub wall: f64,
    /// Pods Running per second of wall time.
    pub throughput: f64,
    /// Pods that never got there before the deadline.
    pub missing: usize,
    /// How busy the machine's cores were during the burst, percent.
    pub cpu_busy_percent: f64,
    /// Raw creation → Running samples (seconds), for the plot.
    #[serde(skip)]
    pub samples: Vec<f64>,
    #[serde(skip)]
    pub host_samples: Vec<f64>,
}

/// The syncer's resource use during one size's run.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct SyncerUse {
    /// CPU seconds (user + system) during the virtual burst.
    pub cpu_burst: f64,
    /// CPU seconds from start to the end of the burst.
    pub cpu_total: f64,
    /// Peak resident set (VmHWM), MiB.
    pub peak_rss_mib: f64,
    /// Resident set when ready with no pods, MiB.
    pub idle_rss_mib: f64,
    /// Start → /readyz with N pods on both sides (a restarted syncer), seconds.
    pub resync_ready: f64,
    /// Peak resident set of the restarted syncer, MiB.
    pub resync_peak_rss_mib: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SizeResult {
    pub pods: usize,
    pub namespaces: usize,
    pub nodes: u32,
    pub direct: PathResult,
    pub virt: PathResult,
    pub syncer: SyncerUse,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RunInfo {
    pub started_utc: String,
    pub machine: String,
    pub load_start: String,
    pub load_end: String,
    pub command: String,
}

fn s(x: f64) -> String {
    if x.is_nan() {
        "—".to_owned()
    } else {
        format!("{x:.2}")
    }
}

fn row(out: &mut String, label: &str, sm: &Summary) {
    let _ = writeln!(
        out,
        "| {label} | {} | {} | {} | {} | {} |",
        sm.count,
        s(sm.p50),
        s(sm.p90),
        s(sm.p99),
        s(sm.max)
    );
}

/// The markdown report of a run (figures only; BENCHMARKS.md wraps it).
pub fn markdown(info: &RunInfo, sizes: &[SizeResult], plots: &[String]) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "Run started {} on {}.", info.started_utc, info.machine);
    let _ = writeln!(
        o,
        "1-minute load average at start {}, at end {} (`/proc/loadavg`).\n",
        info.load_start, info.load_end
    );
    let _ = writeln!(o, "Command: `{}`\n", info.command);
    for (r, plot) in sizes.iter().zip(plots) {
        let _ = writeln!(
            o,
            "### {} pods in {} namespaces ({} KWOK nodes)\n",
            r.pods, r.namespaces, r.nodes
        );
        let _ = writeln!(o, "Latency per pod, seconds:\n");
        let _ = writeln!(o, "| measure | pods | p50 | p90 | p99 | max |");
        let _ = writeln!(o, "|---|---|---|---|---|---|");
        row(
            &mut o,
            "direct: creation → Running (host)",
            &r.direct.to_running,
        );
        if let Some(h) = &r.virt.to_host {
            row(&mut o, "virtual: creation → host pod exists", h);
        }
        if let Some(h) = &r.virt.to_host_running {
            row(&mut o, "virtual: creation → Running (host copy)", h);
        }
        row(
            &mut o,
            "virtual: creation → Running (virtual)",
            &r.virt.to_running,
        );
        let ratio = |a: f64, b: f64| if b > 0.0 { s(a / b) } else { "—".into() };
        let (d, v) = (&r.direct.to_running, &r.virt.to_running);
        let _ = writeln!(
            o,
            "| ratio virtual / direct | | {} | {} | {} | {} |",
            ratio(v.p50, d.p50),
            ratio(v.p90, d.p90),
            ratio(v.p99, d.p99),
            ratio(v.max, d.max)
        );
        let _ = writeln!(o, "\nWhole burst:\n");
        let _ = writeln!(
            o,
            "| path | wall time (s) | throughput (pods/s) | not Running at deadline | machine CPU busy |"
        );
        let _ = writeln!(o, "|---|---|---|---|---|");
        for (name, p) in [("direct", &r.direct), ("virtual", &r.virt)] {
            let _ = writeln!(
                o,
                "| {name} | {} | {:.1} | {} | {:.0} % |",
                s(p.wall),
                p.throughput,
                p.missing,
                p.cpu_busy_percent
            );
        }
        let _ = writeln!(
            o,
            "| ratio virtual / direct | {} | {} | |",
            ratio(r.virt.wall, r.direct.wall),
            ratio(r.virt.throughput, r.direct.throughput)
        );
        let u = &r.syncer;
        let per_k = (u.peak_rss_mib - u.idle_rss_mib) / (r.pods as f64 / 1000.0);
        let _ = writeln!(o, "\nSyncer (release build):\n");
        let _ = writeln!(o, "| measure | value |");
        let _ = writeln!(o, "|---|---|");
        let _ = writeln!(
            o,
            "| CPU seconds during the virtual burst | {:.1} |",
            u.cpu_burst
        );
        let _ = writeln!(
            o,
            "| CPU seconds from start to end of burst | {:.1} |",
            u.cpu_total
        );
        let _ = writeln!(o, "| peak RSS (VmHWM) | {:.1} MiB |", u.peak_rss_mib);
        let _ = writeln!(
            o,
            "| RSS when ready with no pods | {:.1} MiB |",
            u.idle_rss_mib
        );
        let _ = writeln!(
            o,
            "| RSS per 1,000 pods ((peak − idle) / N × 1000) | {per_k:.1} MiB |"
        );
        let _ = writeln!(
            o,
            "| initial resync: restart → ready with {} pods | {} s |",
            r.pods,
            s(u.resync_ready)
        );
        let _ = writeln!(
            o,
            "| peak RSS of the restarted syncer | {:.1} MiB |",
            u.resync_peak_rss_mib
        );
        let _ = writeln!(
            o,
            "\n![creation → Running, cumulative]({plot})\n\n{}\n",
            plot_legend(r)
        );
    }
    if let Some(big) = sizes.iter().max_by_key(|r| r.pods) {
        let _ = writeln!(
            o,
            "### Goals (at the largest size run, {} pods)\n",
            big.pods
        );
        let _ = writeln!(o, "| goal | target | measured | met |");
        let _ = writeln!(o, "|---|---|---|---|");
        let total = big.virt.wall / big.direct.wall;
        let added = big.virt.to_running.p99 - big.direct.to_running.p99;
        let mib_per_mb = 1.048_576;
        let rss_mb = big.syncer.peak_rss_mib.max(big.syncer.resync_peak_rss_mib) * mib_per_mb;
        let yes = |b: bool| if b { "yes" } else { "no" };
        let _ = writeln!(
            o,
            "| total time virtual / direct | ≤ 1.1 | {total:.2} | {} |",
            yes(total <= 1.1)
        );
        let _ = writeln!(
            o,
            "| added p99 creation → Running | ≤ 1 s | {added:.2} s | {} |",
            yes(added <= 1.0)
        );
        if let Some(h) = &big.virt.to_host_running {
            let _ = writeln!(
                o,
                "| … of which status coming up (p99 Running virtual − p99 Running host copy) | | {:.2} s | |",
                big.virt.to_running.p99 - h.p99
            );
        }
        let _ = writeln!(
            o,
            "| syncer peak RSS (burst or restart) | ≤ 100 MB | {rss_mb:.0} MB | {} |",
            yes(rss_mb <= 100.0)
        );
        let _ = writeln!(
            o,
            "| initial resync | ≤ 5 s | {:.2} s | {} |",
            big.syncer.resync_ready,
            yes(big.syncer.resync_ready <= 5.0)
        );
        if big.pods < 10_000 {
            let _ = writeln!(
                o,
                "\nThe goals are stated at 10,000 pods; this run stopped at {}.",
                big.pods
            );
        }
    }
    o
}

/// Colours of the plot's series.
const DIRECT: RGBColor = RGBColor(31, 90, 200);
const VIRTUAL: RGBColor = RGBColor(210, 40, 40);
const TO_HOST: RGBColor = RGBColor(240, 150, 20);
const GOAL: RGBColor = RGBColor(40, 140, 60);
const W: u32 = 900;
const H: u32 = 540;
/// The added p99 the bench's goal allows over direct, seconds.
pub const ADDED_P99_GOAL: f64 = 1.0;

/// Where the goal line stands: direct p99 plus the allowed added p99.
fn goal_at(r: &SizeResult) -> f64 {
    r.direct.to_running.p99 + ADDED_P99_GOAL
}

fn x_max(r: &SizeResult) -> f64 {
    let m = r
        .direct
        .to_running
        .max
        .max(r.virt.to_running.max)
        .max(goal_at(r));
    if m.is_finite() && m > 0.0 {
        m * 1.02
    } else {
        1.0
    }
}

/// What the plot shows, for the markdown beside it (the plot has its own title,
/// axes and legend; this is the text alternative).
pub fn plot_legend(r: &SizeResult) -> String {
    format!(
        "Cumulative share of the {} pods Running (y, %) against time since their creation \
         (x, s): direct, virtual, and virtual until the host copy exists; the green line is the \
         goal, direct p99 + {ADDED_P99_GOAL} s = {:.2} s.",
        r.pods,
        goal_at(r)
    )
}

/// The cumulative distribution of sorted `samples` as (seconds, percent) steps.
fn cdf(samples: &[f64]) -> Vec<(f64, f64)> {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len().max(1) as f64;
    let mut out = vec![(0.0, 0.0)];
    for (i, t) in v.iter().enumerate() {
        let prev = out.last().map_or(0.0, |p| p.1);
        out.push((*t, prev));
        out.push((*t, (i + 1) as f64 * 100.0 / n));
    }
    out
}

/// Draws the cumulative latency distributions of `r` into an SVG at `path`
/// (plotters' SVG backend: text is written as SVG text, so no fonts are needed
/// on the machine that draws it). `run` names the run in the title.
pub fn plot(r: &SizeResult, run: &str, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (W, H)).into_drawing_area();
    root.fill(&WHITE)?;
    let xm = x_max(r);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Pod creation → Running, N = {} pods ({run})", r.pods),
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..xm, 0.0..100.0)?;
    chart
        .configure_mesh()
        .x_desc("latency since creation (s)")
        .y_desc("pods reached (%)")
        .x_labels(12)
        .y_labels(11)
        .x_label_formatter(&|s| format!("{s:.1}"))
        .y_label_formatter(&|p| format!("{p:.0}"))
        .draw()?;
    let series = [
        (&r.direct.samples, DIRECT, "direct: creation → Running"),
        (&r.virt.samples, VIRTUAL, "virtual: creation → Running"),
        (
            &r.virt.host_samples,
            TO_HOST,
            "virtual: creation → host copy exists",
        ),
    ];
    for (samples, colour, label) in series {
        chart
            .draw_series(LineSeries::new(cdf(samples), colour.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    let g = goal_at(r);
    chart
        .draw_series(LineSeries::new(
            [(g, 0.0), (g, 100.0)],
            GOAL.stroke_width(1),
        ))?
        .label(format!("goal: direct p99 + {ADDED_P99_GOAL} s"))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], GOAL.stroke_width(1)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&[3.0], 0.9), 3.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    fn path(samples: Vec<f64>) -> PathResult {
        PathResult {
            to_host: None,
            to_host_running: None,
            to_running: summarize(&samples),
            wall: 1.0,
            throughput: 1.0,
            missing: 0,
            cpu_busy_percent: 50.0,
            host_samples: samples.iter().map(|t| t / 2.0).collect(),
            samples,
        }
    }

    #[test]
    fn the_plot_has_a_title_axes_a_legend_and_the_goal() {
        let r = SizeResult {
            pods: 1000,
            namespaces: 10,
            nodes: 9,
            direct: path((1..=100).map(|i| f64::from(i) / 10.0).collect()),
            virt: path((1..=100).map(|i| f64::from(i) / 8.0).collect()),
            syncer: SyncerUse {
                cpu_burst: 1.0,
                cpu_total: 1.0,
                peak_rss_mib: 1.0,
                idle_rss_mib: 1.0,
                resync_ready: 1.0,
                resync_peak_rss_mib: 1.0,
            },
        };
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("latency-1000.svg");
        plot(&r, "2026-12-01 14:00 UTC", &file).unwrap();
        let svg = std::fs::read_to_string(&file).unwrap();
        // plotters writes each text on its own line between the tags.
        let texts: Vec<&str> = svg
            .split("<text")
            .skip(1)
            .filter_map(|t| t.split_once('>').map(|(_, rest)| rest))
            .filter_map(|t| t.split_once("</text>").map(|(text, _)| text.trim()))
            .collect();
        for text in [
            "Pod creation → Running, N = 1000 pods (2026-12-01 14:00 UTC)",
            "latency since creation (s)",
            "pods reached (%)",
            "direct: creation → Running",
            "virtual: creation → Running",
            "virtual: creation → host copy exists",
            "goal: direct p99 + 1 s",
        ] {
            assert!(texts.contains(&text), "the plot says {text:?}: {texts:?}");
        }
        // Tick labels on both axes: 0–100 % and seconds up to the slowest pod.
        for tick in ["0", "50", "100", "0.0", "6.0", "12.0"] {
            assert!(texts.contains(&tick), "a tick labelled {tick}: {texts:?}");
        }
        // The curves end at 100 % of pods.
        assert_eq!(
            cdf(&[2.0, 1.0]),
            vec![
                (0.0, 0.0),
                (1.0, 0.0),
                (1.0, 50.0),
                (2.0, 50.0),
                (2.0, 100.0)
            ]
        );
    }
}
