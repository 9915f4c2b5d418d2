//! The syncer's Prometheus metrics, served at `/metrics` on its health
//! listener. The engine records them per kind:
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `vcluster_syncer_reconciles_total` | counter | kind |
//! | `vcluster_syncer_reconcile_errors_total` | counter | kind, category |
//! | `vcluster_syncer_reconcile_duration_seconds` | histogram | kind |
//! | `vcluster_syncer_queue_depth` | gauge | kind |
//! | `vcluster_syncer_objects_owned` | gauge | kind |
//! | `vcluster_syncer_watch_restarts_total` | counter | kind, side |
//! | `vcluster_syncer_drift_reverted_total` | counter | kind |
//! | `vcluster_syncer_watch_errors_total` | counter | kind, side |
//! | `vcluster_syncer_admission_limit` | gauge | — |
//! | `vcluster_syncer_dns_queries_total` | counter | qtype, rcode, source |
//! | `vcluster_syncer_dns_duration_seconds` | histogram | source |
//! | `vcluster_syncer_sleeping` | gauge (1 while asleep) | |
//! | `vcluster_syncer_last_activity_timestamp_seconds` | gauge (the last counted front-door request, Unix seconds) | |
//! | `vcluster_syncer_sleeps_total` | counter | |
//! | `vcluster_syncer_wakes_total` | counter | trigger (`request`, `command`) |
//! | `vcluster_syncer_wake_duration_seconds` | histogram | |
//!
//! DNS queries (see [`crate::dns`]) count by question type, response code
//! and source: `zone` (answered from the caches), `forward` (asked
//! upstream), `cache` (an upstream answer from the forwarding cache); the
//! forwarded share and the cache hits are ratios of those series.
//! A watch restart is a relist after the first list (after expiry, a 410
//! Gone, or an API server that went away); watch errors are the failures
//! the watcher reported before retrying. The admission limit is how many
//! reconciles may run at once across every kind after an API server outage
//! (see [`super::outage`]): 0 while an API server is down, -1 when unbounded.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of per-kind metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// Labels of failed reconciles: the kind and what failed
/// ([`super::SyncError::category`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: &'static str,
    category: &'static str,
}

/// Labels of per-kind, per-side (virtual or host) metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SideLabels {
    kind: &'static str,
    side: &'static str,
}

type HistogramFamily = Family<KindLabels, Histogram, fn() -> Histogram>;

/// Labels of DNS queries.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DnsLabels {
    qtype: String,
    rcode: &'static str,
    source: &'static str,
}

/// Labels of DNS latencies.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

/// Labels of wakes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerLabels {
    trigger: &'static str,
}

type DnsHistogramFamily = Family<SourceLabels, Histogram, fn() -> Histogram>;

fn dns_histogram() -> Histogram {
    // 10 µs .. ~5 s.
    Histogram::new(exponential_buckets(0.000_01, 2.5, 15))
}

fn reconcile_histogram() -> Histogram {
    // 1 ms .. ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Every metric of the syncer and the registry that serves them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Family<KindLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    duration: HistogramFamily,
    queue_depth: Family<KindLabels, Gauge>,
    owned: Family<KindLabels, Gauge>,
    watch_restarts: Family<SideLabels, Counter>,
    drift: Family<KindLabels, Counter>,
    watch_errors: Family<SideLabels, Counter>,
    dns_queries: Family<DnsLabels, Counter>,
    dns_duration: DnsHistogramFamily,
    sleeping: Gauge,
    last_activity: Gauge,
    sleeps: Counter,
    wakes: Family<TriggerLabels, Counter>,
    wake_duration: Histogram,
    admission: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("vcluster_syncer");
        let reconciles = Family::<KindLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration = HistogramFamily::new_with_constructor(reconcile_histogram);
        let queue_depth = Family::<KindLabels, Gauge>::default();
        let owned = Family::<KindLabels, Gauge>::default();
        let watch_restarts = Family::<SideLabels, Counter>::default();
        let drift = Family::<KindLabels, Counter>::default();
        let watch_errors = Family::<SideLabels, Counter>::default();
        let dns_queries = Family::<DnsLabels, Counter>::default();
        let dns_duration = DnsHistogramFamily::new_with_constructor(dns_histogram);
        let admission = Gauge::default();
        admission.set(-1);
        registry.register(
            "admission_limit",
            "Reconciles admitted at once across every kind, limited after an API server outage or a 429 (0: paused, -1: unbounded)",
            admission.clone(),
        );
        registry.register(
            "dns_queries",
            "DNS queries answered, per question type, response code and source (zone, forward, cache)",
            dns_queries.clone(),
        );
        registry.register(
            "dns_duration_seconds",
            "Time to answer one DNS query, per source (zone, forward, cache)",
            dns_duration.clone(),
        );
        let sleeping = Gauge::default();
        let sleeps = Counter::default();
        let last_activity = Gauge::default();
        registry.register(
            "last_activity_timestamp_seconds",
            "The last front-door request that counted as activity (Unix seconds)",
            last_activity.clone(),
        );
        let wakes = Family::<TriggerLabels, Counter>::default();
        // 100 ms .. ~14 min.
        let wake_duration = Histogram::new(exponential_buckets(0.1, 2.0, 14));
        registry.register(
            "sleeping",
            "1 while the virtual cluster sleeps (its pods stopped on the host)",
            sleeping.clone(),
        );
        registry.register(
            "sleeps",
            "Times the virtual cluster fell asleep",
            sleeps.clone(),
        );
        registry.register(
            "wakes",
            "Times the virtual cluster woke, per trigger (request, command)",
            wakes.clone(),
        );
        registry.register(
            "wake_duration_seconds",
            "From a wake to every slept pod showing its host pod's status again",
            wake_duration.clone(),
        );
        registry.register(
            "reconciles",
            "Reconciles finished, per kind",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed (retried with backoff), per kind and error category",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took, per kind",
            duration.clone(),
        );
        registry.register(
            "queue_depth",
            "Keys waiting in the work queue, per kind",
            queue_depth.clone(),
        );
        registry.register(
            "objects_owned",
            "Host objects carrying this vcluster's owner label, per kind",
            owned.clone(),
        );
        registry.register(
            "watch_restarts",
            "Relists after the first list (expiry, 410 Gone, API server restart), per kind and side",
            watch_restarts.clone(),
        );
        registry.register(
            "drift_reverted",
            "Host copies the periodic resync found changed on the host (fields this syncer sets) and wrote back, per kind",
            drift.clone(),
        );
        registry.register(
            "watch_errors",
            "Errors a watch reported before retrying, per kind and side",
            watch_errors.clone(),
        );
        Self {
            registry,
            reconciles,
            errors,
            duration,
            queue_depth,
            owned,
            watch_restarts,
            drift,
            watch_errors,
            dns_queries,
            dns_duration,
            sleeping,
            last_activity,
            sleeps,
            wakes,
            wake_duration,
            admission,
        }
    }
}

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::default);

/// The process-wide metrics.
pub fn global() -> &'static Metrics {
    &GLOBAL
}

impl Metrics {
    /// Records one finished reconcile; `failed`: the category of its error.
    pub fn reconciled(&self, kind: &'static str, took: Duration, failed: Option<&'static str>) {
        let l = KindLabels { kind };
        self.reconciles.get_or_create(&l).inc();
        if let Some(category) = failed {
            self.errors
                .get_or_create(&ErrorLabels { kind, category })
                .inc();
        }
        self.duration.get_or_create(&l).observe(took.as_secs_f64());
    }

    /// Sets the queue depth and the count of owned host objects of a kind.
    pub fn levels(&self, kind: &'static str, queue_depth: usize, owned: usize) {
        let l = KindLabels { kind };
        self.queue_depth
            .get_or_create(&l)
            .set(i64::try_from(queue_depth).unwrap_or(i64::MAX));
        self.owned
            .get_or_create(&l)
            .set(i64::try_from(owned).unwrap_or(i64::MAX));
    }

    /// Sets the admission limit (`None`: unbounded).
    pub fn admission_limit(&self, limit: Option<usize>) {
        self.admission
            .set(limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX)));
    }

    /// Counts a relist of a watch (after its first list).
    pub fn watch_restarted(&self, kind: &'static str, side: &'static str) {
        self.watch_restarts
            .get_or_create(&SideLabels { kind, side })
            .inc();
    }

    /// Counts a host copy the resync found drifted and wrote back.
    pub fn drift_reverted(&self, kind: &'static str) {
        self.drift.get_or_create(&KindLabels { kind }).inc();
    }

    /// Counts an error a watch reported.
    pub fn watch_error(&self, kind: &'static str, side: &'static str) {
        self.watch_errors
            .get_or_create(&SideLabels { kind, side })
            .inc();
    }

    /// Counts one DNS query of type `qtype` answered with `rcode` from
    /// `source` (`zone`, `forward` or `cache`) in `took`.
    pub fn dns_query(
        &self,
        qtype: &str,
        rcode: &'static str,
        source: &'static str,
        took: Duration,
    ) {
        self.dns_queries
            .get_or_create(&DnsLabels {
                qtype: qtype.to_owned(),
                rcode,
                source,
            })
            .inc();
        self.dns_duration
            .get_or_create(&SourceLabels { source })
            .observe(took.as_secs_f64());
    }

    /// Sets the sleeping gauge.
    pub fn sleeping(&self, asleep: bool) {
        self.sleeping.set(i64::from(asleep));
    }

    /// Sets the time of the last counted request.
    pub fn active_at(&self, unix_seconds: i64) {
        self.last_activity.set(unix_seconds);
    }

    /// Counts a fall into sleep.
    pub fn slept(&self) {
        self.sleeps.inc();
    }

    /// Counts a wake by `trigger`.
    pub fn woke(&self, trigger: &'static str) {
        self.wakes.get_or_create(&TriggerLabels { trigger }).inc();
    }

    /// Records how long a wake took.
    pub fn woken(&self, took: Duration) {
        self.wake_duration.observe(took.as_secs_f64());
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The key numbers of a `/metrics` text per kind, one line each, for
/// `vcluster dev status`: reconciles, errors, mean reconcile time, queue
/// depth, objects owned, watch restarts.
pub fn summarize(text: &str) -> Vec<String> {
    let mut by_kind: BTreeMap<&str, BTreeMap<&str, f64>> = BTreeMap::new();
    for (kind, slot, value) in text.lines().filter_map(sample) {
        // A kind with syncer metrics gets a line even when none is summarized.
        let entry = by_kind.entry(kind).or_default();
        if let Some(slot) = slot {
            *entry.entry(slot).or_default() += value;
        }
    }
    by_kind
        .into_iter()
        .map(|(kind, m)| summary_line(kind, &m))
        .collect()
}

/// One sample line of a per-kind syncer metric: its kind, the summary's name
/// for the metric (if the summary shows it), and its value.
fn sample(line: &str) -> Option<(&str, Option<&'static str>, f64)> {
    if line.starts_with('#') {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.parse::<f64>().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, rest.strip_suffix('}').unwrap_or(rest)),
        None => (series, ""),
    };
    let slot = match name.strip_prefix("vcluster_syncer_")? {
        "reconciles_total" => Some("reconciles"),
        "reconcile_errors_total" => Some("errors"),
        "reconcile_duration_seconds_sum" => Some("seconds"),
        "queue_depth" => Some("queue"),
        "objects_owned" => Some("owned"),
        "watch_restarts_total" => Some("restarts"),
        _ => None,
    };
    let kind = labels
        .split(',')
        .find_map(|l| l.strip_prefix("kind=\""))
        .and_then(|k| k.split('"').next())?;
    Some((kind, slot, value))
}

fn summary_line(kind: &str, m: &BTreeMap<&str, f64>) -> String {
    let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
    let mean_ms = if get("reconciles") > 0.0 {
        get("seconds") / get("reconciles") * 1000.0
    } else {
        0.0
    };
    format!(
        "{kind}: {} owned, {} reconciles ({} errors, mean {mean_ms:.1} ms), queue {}, {} watch restarts",
        get("owned"),
        get("reconciles"),
        get("errors"),
        get("queue"),
        get("restarts"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_values_are_exposed_and_summarized() {
        let m = Metrics::default();
        m.reconciled("Pod", Duration::from_millis(10), None);
        m.reconciled("Pod", Duration::from_millis(30), Some("conflict"));
        m.levels("Pod", 3, 7);
        m.watch_restarted("Pod", "host");
        m.watch_error("Pod", "host");
        m.reconciled("Secret", Duration::from_millis(1), None);
        let text = m.encode();
        for want in [
            "vcluster_syncer_reconciles_total{kind=\"Pod\"} 2",
            "vcluster_syncer_reconcile_errors_total{kind=\"Pod\",category=\"conflict\"} 1",
            "vcluster_syncer_queue_depth{kind=\"Pod\"} 3",
            "vcluster_syncer_objects_owned{kind=\"Pod\"} 7",
            "vcluster_syncer_watch_restarts_total{kind=\"Pod\",side=\"host\"} 1",
            "vcluster_syncer_watch_errors_total{kind=\"Pod\",side=\"host\"} 1",
            "vcluster_syncer_reconcile_duration_seconds_count{kind=\"Pod\"} 2",
        ] {
            assert!(text.contains(want), "{want} missing in\n{text}");
        }
        let lines = summarize(&text);
        assert_eq!(
            lines,
            [
                "Pod: 7 owned, 2 reconciles (1 errors, mean 20.0 ms), queue 3, 1 watch restarts",
                "Secret: 0 owned, 1 reconciles (0 errors, mean 1.0 ms), queue 0, 0 watch restarts",
            ]
        );
    }

    #[test]
    fn summary_of_unrelated_text_is_empty() {
        assert!(summarize("# HELP x\nfoo 1\nbar{kind=\"Pod\"} nan-ish\n").is_empty());
    }
}
