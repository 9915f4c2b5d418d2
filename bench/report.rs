//! Figures of a benchmark run: percentiles, the markdown table and the
//! latency-distribution plot (a PNG drawn pixel by pixel, no fonts: its
//! scale is written in the markdown next to it).

use std::fmt::Write as _;
use std::path::Path;

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

/// Colours of the plot.
const DIRECT: [u8; 3] = [31, 90, 200];
const VIRTUAL: [u8; 3] = [210, 40, 40];
const TO_HOST: [u8; 3] = [240, 150, 20];
const W: u32 = 800;
const H: u32 = 480;
const MARGIN: u32 = 30;

/// A "nice" grid step (1, 2 or 5 × 10^k) giving at most ~10 lines over `span`.
pub fn grid_step(span: f64) -> f64 {
    let raw = (span / 10.0).max(1e-3);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

fn x_max(r: &SizeResult) -> f64 {
    let m = r.direct.to_running.max.max(r.virt.to_running.max);
    if m.is_finite() && m > 0.0 {
        m * 1.02
    } else {
        1.0
    }
}

/// What the plot shows, for the markdown beside it.
pub fn plot_legend(r: &SizeResult) -> String {
    let xm = x_max(r);
    format!(
        "Cumulative distribution of latency per pod: x from 0 to {xm:.1} s (grey lines every {} s), \
         y from 0 to 100 % of pods (grey lines every 10 %, darker at 50/90/99 %). \
         Blue: direct, creation → Running; red: virtual, creation → Running; \
         orange: virtual, creation → host pod exists.",
        grid_step(xm)
    )
}

/// Draws the cumulative latency distributions of `r` into a PNG at `path`.
pub fn plot(r: &SizeResult, path: &Path) -> anyhow::Result<()> {
    let mut px = vec![255u8; (W * H * 3) as usize];
    let put = |px: &mut Vec<u8>, x: u32, y: u32, c: [u8; 3]| {
        if x < W && y < H {
            let i = ((y * W + x) * 3) as usize;
            px[i..i + 3].copy_from_slice(&c);
        }
    };
    let (x0, x1, y0, y1) = (MARGIN, W - MARGIN, MARGIN, H - MARGIN);
    let xm = x_max(r);
    let step = grid_step(xm);
    let to_x = |t: f64| x0 + ((t / xm).clamp(0.0, 1.0) * f64::from(x1 - x0)) as u32;
    let to_y = |f: f64| y1 - ((f.clamp(0.0, 1.0)) * f64::from(y1 - y0)) as u32;
    // Grid.
    let mut t = 0.0;
    while t <= xm {
        let x = to_x(t);
        for y in y0..=y1 {
            put(&mut px, x, y, [220, 220, 220]);
        }
        t += step;
    }
    for k in 0..=10 {
        let y = to_y(f64::from(k) / 10.0);
        for x in x0..=x1 {
            put(&mut px, x, y, [220, 220, 220]);
        }
    }
    for q in [0.5, 0.9, 0.99] {
        let y = to_y(q);
        for x in x0..=x1 {
            put(&mut px, x, y, [150, 150, 150]);
        }
    }
    // Axes.
    for x in x0..=x1 {
        put(&mut px, x, y1, [0, 0, 0]);
    }
    for y in y0..=y1 {
        put(&mut px, x0, y, [0, 0, 0]);
    }
    // Curves: a step function per series, two pixels thick.
    let series = [
        (&r.virt.host_samples, TO_HOST),
        (&r.direct.samples, DIRECT),
        (&r.virt.samples, VIRTUAL),
    ];
    for (samples, colour) in series {
        let mut v = samples.clone();
        v.sort_by(f64::total_cmp);
        let n = v.len().max(1) as f64;
        let (mut px_prev, mut py_prev) = (x0, y1);
        for (i, t) in v.iter().enumerate() {
            let (x, y) = (to_x(*t), to_y((i + 1) as f64 / n));
            for xx in px_prev..=x {
                put(&mut px, xx, py_prev, colour);
                put(&mut px, xx, py_prev.saturating_sub(1), colour);
            }
            for yy in y..=py_prev {
                put(&mut px, x, yy, colour);
                put(&mut px, x + 1, yy, colour);
            }
            (px_prev, py_prev) = (x, y);
        }
    }
    let file = std::fs::File::create(path)?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), W, H);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header()?.write_image_data(&px)?;
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

    #[test]
    fn grid_steps_are_round() {
        assert_eq!(grid_step(10.0), 1.0);
        assert_eq!(grid_step(55.0), 10.0);
        assert_eq!(grid_step(13.0), 2.0);
        assert_eq!(grid_step(240.0), 50.0);
    }
}
