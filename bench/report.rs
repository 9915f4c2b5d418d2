//! Figures of a benchmark run: percentiles, the markdown table and the
//! latency-distribution plot (an SVG with title, axes, units, legend and the
//! goal marked).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
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
    /// Peak resident set (VmHWM) over every burst and delete, MiB.
    pub peak_rss_mib: f64,
    /// Resident set when ready with no pods, MiB.
    pub idle_rss_mib: f64,
    /// Of the resident set at the end, the file-backed part (RssFile: the
    /// executable's pages, shared and reclaimable), MiB.
    pub file_rss_mib: f64,
    /// Start → /readyz with N pods on both sides (a restarted syncer), seconds.
    pub resync_ready: f64,
    /// Peak resident set of the restarted syncer right after its resync, MiB.
    pub resync_peak_rss_mib: f64,
}

/// One path's burst and delete in one round.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PathRun {
    pub burst: PathResult,
    /// Delete sent (one delete-collection per namespace, default grace) →
    /// the last pod gone: on the host, and for the virtual path in the
    /// virtual cluster too; seconds.
    pub delete: f64,
    /// Pods still there at the delete's deadline.
    pub delete_missing: usize,
    /// CPU seconds of each process of the stack during the burst ("plane program").
    pub cpu: BTreeMap<String, f64>,
    /// … and during the delete.
    pub delete_cpu: BTreeMap<String, f64>,
}

/// Both paths, one after the other (the order alternates between rounds).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Round {
    pub direct_first: bool,
    pub direct: PathRun,
    pub virt: PathRun,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SizeResult {
    pub pods: usize,
    pub namespaces: usize,
    pub nodes: u32,
    pub rounds: Vec<Round>,
    pub syncer: SyncerUse,
}

impl SizeResult {
    /// The round whose virtual p99 is the median of the rounds' (the one plotted).
    pub fn median_round(&self) -> usize {
        let mut idx: Vec<usize> = (0..self.rounds.len()).collect();
        idx.sort_by(|&a, &b| {
            self.rounds[a]
                .virt
                .burst
                .to_running
                .p99
                .total_cmp(&self.rounds[b].virt.burst.to_running.p99)
        });
        idx.get(idx.len() / 2).copied().unwrap_or(0)
    }

    fn spread(&self, f: impl Fn(&Round) -> f64) -> Spread {
        Spread::of(self.rounds.iter().map(f))
    }
}

/// The median of a figure over the rounds, and its range.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: impl Iterator<Item = f64>) -> Self {
        let mut v: Vec<f64> = values.filter(|x| !x.is_nan()).collect();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return Self {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
            };
        }
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[mid]
        } else {
            f64::midpoint(v[mid - 1], v[mid])
        };
        Self {
            median,
            min: v[0],
            max: v[v.len() - 1],
        }
    }

    /// "median (min–max)", or the median alone when every round gave the same.
    fn show(self) -> String {
        if self.median.is_nan() {
            "—".to_owned()
        } else if self.min == self.max {
            s(self.median)
        } else {
            format!("{} ({}–{})", s(self.median), s(self.min), s(self.max))
        }
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

/// CPU seconds per 1,000 pods of `key` in a run of `pods` pods.
fn per_k(cpu: &BTreeMap<String, f64>, key: &str, pods: usize) -> f64 {
    cpu.get(key).copied().unwrap_or(0.0) / pods as f64 * 1000.0
}

fn total_per_k(cpu: &BTreeMap<String, f64>, pods: usize) -> f64 {
    cpu.values().sum::<f64>() / pods as f64 * 1000.0
}

/// The process key of the host API server in [`PathRun::cpu`].
pub const HOST_APISERVER: &str = "host kube-apiserver";

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

/// A latency row: each percentile's median over the rounds and its range.
fn row(out: &mut String, r: &SizeResult, label: &str, f: impl Fn(&Round) -> Option<Summary>) {
    let pick = |g: fn(&Summary) -> f64| r.spread(|x| f(x).as_ref().map_or(f64::NAN, g)).show();
    let _ = writeln!(
        out,
        "| {label} | {} | {} | {} | {} |",
        pick(|m| m.p50),
        pick(|m| m.p90),
        pick(|m| m.p99),
        pick(|m| m.max)
    );
}

/// The title of one size's section.
pub fn heading(r: &SizeResult) -> String {
    let ns = if r.namespaces == 1 {
        "one namespace".to_owned()
    } else {
        format!("{} namespaces", r.namespaces)
    };
    format!("{} pods in {ns} ({} KWOK nodes)", r.pods, r.nodes)
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
    let _ = writeln!(
        o,
        "Every figure is the median over the rounds, with the lowest and highest in brackets; \
         a ratio is taken within each round (its two paths ran back to back) and then the median.\n"
    );
    for (r, plot) in sizes.iter().zip(plots) {
        size_section(&mut o, r, plot);
    }
    goals(&mut o, sizes);
    o
}

fn size_section(o: &mut String, r: &SizeResult, plot: &str) {
    let rounds = r.rounds.len();
    let order: Vec<&str> = r
        .rounds
        .iter()
        .map(|x| {
            if x.direct_first {
                "direct first"
            } else {
                "virtual first"
            }
        })
        .collect();
    let _ = writeln!(o, "### {}\n", heading(r));
    let _ = writeln!(o, "{rounds} rounds ({}).\n", order.join(", "));
    let _ = writeln!(o, "Latency per pod, seconds:\n");
    let _ = writeln!(o, "| measure | p50 | p90 | p99 | max |");
    let _ = writeln!(o, "|---|---|---|---|---|");
    row(o, r, "direct: creation → Running (host)", |x| {
        Some(x.direct.burst.to_running)
    });
    row(o, r, "virtual: creation → host pod exists", |x| {
        x.virt.burst.to_host
    });
    row(o, r, "virtual: creation → Running (host copy)", |x| {
        x.virt.burst.to_host_running
    });
    row(o, r, "virtual: creation → Running (virtual)", |x| {
        Some(x.virt.burst.to_running)
    });
    let q = |g: fn(&Summary) -> f64| {
        r.spread(|x| ratio(g(&x.virt.burst.to_running), g(&x.direct.burst.to_running)))
            .show()
    };
    let _ = writeln!(
        o,
        "| ratio virtual / direct | {} | {} | {} | {} |",
        q(|m| m.p50),
        q(|m| m.p90),
        q(|m| m.p99),
        q(|m| m.max)
    );
    let _ = writeln!(
        o,
        "| added p99 (virtual − direct), s | | | {} | |",
        r.spread(|x| x.virt.burst.to_running.p99 - x.direct.burst.to_running.p99)
            .show()
    );
    let _ = writeln!(o, "\nWhole burst and delete:\n");
    let _ = writeln!(
        o,
        "| path | burst wall time (s) | throughput (pods/s) | not Running at deadline | machine CPU busy (%) | delete → all gone (s) | not gone at deadline |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|");
    for (name, p) in [
        ("direct", (|x: &Round| &x.direct) as fn(&Round) -> &PathRun),
        ("virtual", |x: &Round| &x.virt),
    ] {
        let _ = writeln!(
            o,
            "| {name} | {} | {} | {} | {} | {} | {} |",
            r.spread(|x| p(x).burst.wall).show(),
            r.spread(|x| p(x).burst.throughput).show(),
            r.rounds.iter().map(|x| p(x).burst.missing).sum::<usize>(),
            r.spread(|x| p(x).burst.cpu_busy_percent).show(),
            r.spread(|x| p(x).delete).show(),
            r.rounds.iter().map(|x| p(x).delete_missing).sum::<usize>(),
        );
    }
    let _ = writeln!(
        o,
        "| ratio virtual / direct | {} | {} | | | {} | |",
        r.spread(|x| ratio(x.virt.burst.wall, x.direct.burst.wall))
            .show(),
        r.spread(|x| ratio(x.virt.burst.throughput, x.direct.burst.throughput))
            .show(),
        r.spread(|x| ratio(x.virt.delete, x.direct.delete)).show(),
    );
    cpu_table(o, r);
    let u = &r.syncer;
    let per_k_rss = (u.peak_rss_mib - u.idle_rss_mib) / (r.pods as f64 / 1000.0);
    let _ = writeln!(o, "\nSyncer (release build):\n");
    let _ = writeln!(o, "| measure | value |");
    let _ = writeln!(o, "|---|---|");
    let _ = writeln!(
        o,
        "| CPU seconds per virtual burst | {} |",
        r.spread(|x| x.virt.cpu.get(SYNCER).copied().unwrap_or(0.0))
            .show()
    );
    let _ = writeln!(
        o,
        "| peak RSS (VmHWM, every burst and delete) | {:.1} MiB |",
        u.peak_rss_mib
    );
    let _ = writeln!(
        o,
        "| RSS when ready with no pods | {:.1} MiB |",
        u.idle_rss_mib
    );
    let _ = writeln!(
        o,
        "| of the RSS, file-backed (RssFile at the end: the executable's pages) | {:.1} MiB |",
        u.file_rss_mib
    );
    let _ = writeln!(
        o,
        "| RSS per 1,000 pods ((peak − idle) / N × 1000) | {per_k_rss:.1} MiB |"
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

/// The process key of the syncer in [`PathRun::cpu`].
const SYNCER: &str = "syncer vcluster";

/// CPU seconds per 1,000 pods of each process, direct and virtual, burst and delete.
fn cpu_table(o: &mut String, r: &SizeResult) {
    let mut keys: Vec<&String> = r
        .rounds
        .iter()
        .flat_map(|x| {
            [
                &x.direct.cpu,
                &x.virt.cpu,
                &x.direct.delete_cpu,
                &x.virt.delete_cpu,
            ]
            .into_iter()
            .flat_map(BTreeMap::keys)
        })
        .collect();
    keys.sort();
    keys.dedup();
    let n = r.pods;
    let _ = writeln!(
        o,
        "\nCPU seconds per 1,000 pods, by process (plane and program):\n"
    );
    let _ = writeln!(
        o,
        "| process | burst direct | burst virtual | delete direct | delete virtual |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|");
    for k in keys {
        let _ = writeln!(
            o,
            "| {k} | {} | {} | {} | {} |",
            r.spread(|x| per_k(&x.direct.cpu, k, n)).show(),
            r.spread(|x| per_k(&x.virt.cpu, k, n)).show(),
            r.spread(|x| per_k(&x.direct.delete_cpu, k, n)).show(),
            r.spread(|x| per_k(&x.virt.delete_cpu, k, n)).show(),
        );
    }
    let _ = writeln!(
        o,
        "| all processes | {} | {} | {} | {} |",
        r.spread(|x| total_per_k(&x.direct.cpu, n)).show(),
        r.spread(|x| total_per_k(&x.virt.cpu, n)).show(),
        r.spread(|x| total_per_k(&x.direct.delete_cpu, n)).show(),
        r.spread(|x| total_per_k(&x.virt.delete_cpu, n)).show(),
    );
    let _ = writeln!(
        o,
        "| **host API server, virtual / direct** | | {} | | {} |",
        r.spread(|x| ratio(
            per_k(&x.virt.cpu, HOST_APISERVER, n),
            per_k(&x.direct.cpu, HOST_APISERVER, n)
        ))
        .show(),
        r.spread(|x| ratio(
            per_k(&x.virt.delete_cpu, HOST_APISERVER, n),
            per_k(&x.direct.delete_cpu, HOST_APISERVER, n)
        ))
        .show(),
    );
}

/// The goals, judged on the medians: at the largest size spread over
/// namespaces, and for every single-namespace size run.
fn goals(o: &mut String, sizes: &[SizeResult]) {
    let yes = |b: bool| if b { "yes" } else { "no" };
    let _ = writeln!(o, "### Goals (judged on the medians)\n");
    let _ = writeln!(o, "| shape | goal | target | measured | met |");
    let _ = writeln!(o, "|---|---|---|---|---|");
    if let Some(big) = sizes
        .iter()
        .filter(|r| r.namespaces > 1)
        .max_by_key(|r| r.pods)
    {
        let h = heading(big);
        let total = big.spread(|x| ratio(x.virt.burst.wall, x.direct.burst.wall));
        let added = big.spread(|x| x.virt.burst.to_running.p99 - x.direct.burst.to_running.p99);
        let mib_per_mb = 1.048_576;
        let rss_mb = big.syncer.peak_rss_mib.max(big.syncer.resync_peak_rss_mib) * mib_per_mb;
        let _ = writeln!(
            o,
            "| {h} | total time virtual / direct | ≤ 1.03 | {} | {} |",
            total.show(),
            yes(total.median <= 1.03)
        );
        let _ = writeln!(
            o,
            "| {h} | added p99 creation → Running | ≤ 1 s | {} s | {} |",
            added.show(),
            yes(added.median <= ADDED_P99_GOAL)
        );
        let _ = writeln!(
            o,
            "| {h} | syncer peak RSS (bursts, deletes, restart) | ≤ 50 MB | {rss_mb:.0} MB | {} |",
            yes(rss_mb <= 50.0)
        );
        let _ = writeln!(
            o,
            "| {h} | restart → ready | ≤ 2 s | {} s | {} |",
            s(big.syncer.resync_ready),
            yes(big.syncer.resync_ready <= 2.0)
        );
    }
    for r in sizes {
        let h = heading(r);
        let api = r.spread(|x| {
            ratio(
                per_k(&x.virt.cpu, HOST_APISERVER, r.pods),
                per_k(&x.direct.cpu, HOST_APISERVER, r.pods),
            )
        });
        let _ = writeln!(
            o,
            "| {h} | host API server CPU per pod in the burst, virtual / direct | ≤ 1.10 | {} | {} |",
            api.show(),
            yes(api.median <= 1.10)
        );
        if r.namespaces == 1 {
            let del = r.spread(|x| ratio(x.virt.delete, x.direct.delete));
            let _ = writeln!(
                o,
                "| {h} | delete → all gone, virtual / direct | ≤ 1.2 | {} | {} |",
                del.show(),
                yes(del.median <= 1.2)
            );
        }
    }
    if sizes.iter().all(|r| r.pods < 10_000) {
        let _ = writeln!(
            o,
            "\nThe goals are stated at 10,000 pods (the delete at 1,000 in one namespace); this run stopped at {}.",
            sizes.iter().map(|r| r.pods).max().unwrap_or(0)
        );
    }
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
fn goal_at(r: &Round) -> f64 {
    r.direct.burst.to_running.p99 + ADDED_P99_GOAL
}

fn x_max(r: &Round) -> f64 {
    let m = r
        .direct
        .burst
        .to_running
        .max
        .max(r.virt.burst.to_running.max)
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
    let i = r.median_round();
    let g = r.rounds.get(i).map_or(f64::NAN, goal_at);
    format!(
        "Round {} of {} (the one with the median virtual p99): cumulative share of the {} pods \
         Running (y, %) against time since their creation (x, s): direct, virtual, and virtual \
         until the host copy exists; the green line is the goal, direct p99 + {ADDED_P99_GOAL} s \
         = {g:.2} s.",
        i + 1,
        r.rounds.len(),
        r.pods,
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
pub fn plot(size: &SizeResult, run: &str, path: &Path) -> anyhow::Result<()> {
    let i = size.median_round();
    let r = size.rounds.get(i).context("no round to plot")?;
    let root = SVGBackend::new(path, (W, H)).into_drawing_area();
    root.fill(&WHITE)?;
    let xm = x_max(r);
    let ns = if size.namespaces == 1 {
        "1 namespace".to_owned()
    } else {
        format!("{} namespaces", size.namespaces)
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Pod creation → Running, N = {} pods in {ns} ({run}, round {} of {})",
                size.pods,
                i + 1,
                size.rounds.len()
            ),
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
        (
            &r.direct.burst.samples,
            DIRECT,
            "direct: creation → Running",
        ),
        (
            &r.virt.burst.samples,
            VIRTUAL,
            "virtual: creation → Running",
        ),
        (
            &r.virt.burst.host_samples,
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

    #[test]
    fn spread_is_the_median_and_range_of_the_rounds() {
        let sp = Spread::of([3.0, 1.0, 2.0].into_iter());
        assert_eq!((sp.median, sp.min, sp.max), (2.0, 1.0, 3.0));
        assert_eq!(sp.show(), "2.00 (1.00–3.00)");
        let even = Spread::of([4.0, 1.0, f64::NAN, 2.0, 3.0].into_iter());
        assert_eq!((even.median, even.min, even.max), (2.5, 1.0, 4.0));
        assert_eq!(Spread::of([5.0].into_iter()).show(), "5.00");
        assert_eq!(Spread::of(std::iter::empty()).show(), "—");
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
        let run = |direct: Vec<f64>, virt: Vec<f64>| PathRun {
            burst: path(if direct.is_empty() { virt } else { direct }),
            delete: 1.0,
            delete_missing: 0,
            cpu: BTreeMap::new(),
            delete_cpu: BTreeMap::new(),
        };
        let round = |slow: f64| Round {
            direct_first: true,
            direct: run((1..=100).map(|i| f64::from(i) / 10.0).collect(), vec![]),
            virt: run(vec![], (1..=100).map(|i| f64::from(i) / slow).collect()),
        };
        let r = SizeResult {
            pods: 1000,
            namespaces: 10,
            nodes: 9,
            // The median round by virtual p99 is the one with 8.0 (p99 12.4 s).
            rounds: vec![round(9.0), round(8.0), round(4.0)],
            syncer: SyncerUse {
                peak_rss_mib: 1.0,
                idle_rss_mib: 1.0,
                file_rss_mib: 1.0,
                resync_ready: 1.0,
                resync_peak_rss_mib: 1.0,
            },
        };
        assert_eq!(r.median_round(), 1);
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
            "Pod creation → Running, N = 1000 pods in 10 namespaces (2026-12-01 14:00 UTC, round 2 of 3)",
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
