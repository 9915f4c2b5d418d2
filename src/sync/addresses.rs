//! What the endpoint address policy ([`crate::policy::endpoints`]) needs to
//! know of the host, kept current:
//!
//! - **this vcluster's pod IPs**: read from the pod engine's host cache
//!   (only host pods carrying this vcluster's owner label are in it), every
//!   [`POD_PERIOD`]; only pods that changed (by resource version) are parsed
//!   again. Finished pods and host-network pods (pod IP = host IP) do not
//!   count; a virtual pod whose IP changes makes it look at once
//!   ([`AddressIndex::poke`]). When the set changes, `on_change` runs (at once, then at most
//!   once per [`POD_PERIOD`] while the changes keep coming): the syncer queues the
//!   tenant's Endpoints and EndpointSlices again, so an address that stops
//!   being one of its pods (the pod went, or its IP changed) leaves the host
//!   copy within a few seconds, and one that becomes one goes down.
//! - **host ranges**: the host's service range (as `vcluster service-cidr`
//!   finds it) and, when the syncer may list Nodes (the chart's optional
//!   ClusterRole), every node's addresses and pod ranges; refreshed every
//!   resync period.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use serde::Deserialize;

use super::cache::Cache;
use super::cidr::host_service_cidrs;
use super::feed::Readiness;
use crate::policy::endpoints::{Cidr, HostRange, Known};

/// How often the pod IPs are looked at.
pub const POD_PERIOD: Duration = Duration::from_secs(2);

/// The shortest time between two looks when pokes ask for them sooner.
const MIN_GAP: Duration = Duration::from_millis(200);

/// The IPs of this vcluster's host pods, kept by looking at the pod cache:
/// a pod is parsed again only when its resource version changed, and the
/// set is rebuilt only when an IP came or went (a count per IP: two pods
/// may hold the same one, a finished pod's IP taken by a new one).
/// A look at 10,000 unchanged pods allocates nothing.
#[derive(Debug, Default)]
struct PodIps {
    pods: HashMap<Box<str>, PodIpsOf>,
    counts: HashMap<IpAddr, u32>,
    generation: u64,
}

#[derive(Debug)]
struct PodIpsOf {
    resource_version: Option<String>,
    ips: Vec<IpAddr>,
    seen: u64,
}

impl PodIps {
    /// Looks at every cached pod; true when the set of IPs changed.
    fn look(&mut self, pods: &Cache<Pod>) -> bool {
        self.generation += 1;
        let generation = self.generation;
        let mut changed = false;
        for c in pods.entries() {
            let meta = c.identity();
            let uid = meta.uid().unwrap_or_default();
            let rv = meta.resource_version();
            if let Some(p) = self.pods.get_mut(uid)
                && p.resource_version.as_deref() == rv
            {
                p.seen = generation;
                continue;
            }
            let ips = c
                .view::<PodView>()
                .map(|v| own_ips(v.status))
                .unwrap_or_default();
            let before = self.pods.insert(
                uid.into(),
                PodIpsOf {
                    resource_version: rv.map(str::to_owned),
                    ips: ips.clone(),
                    seen: generation,
                },
            );
            if before.as_ref().is_some_and(|b| b.ips == ips) {
                continue;
            }
            changed |= count(&mut self.counts, &ips, true);
            if let Some(b) = before {
                changed |= count(&mut self.counts, &b.ips, false);
            }
        }
        let counts = &mut self.counts;
        self.pods.retain(|_, p| {
            let keep = p.seen == generation;
            if !keep {
                changed |= count(counts, &p.ips, false);
            }
            keep
        });
        changed
    }

    /// Every IP held by a pod.
    fn all(&self) -> HashSet<IpAddr> {
        self.counts.keys().copied().collect()
    }
}

/// Counts `ips` in (`add`) or out; true when one of them came or went.
fn count(counts: &mut HashMap<IpAddr, u32>, ips: &[IpAddr], add: bool) -> bool {
    let mut changed = false;
    for ip in ips {
        if add {
            let n = counts.entry(*ip).or_insert(0);
            changed |= *n == 0;
            *n += 1;
        } else if let Some(n) = counts.get_mut(ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(ip);
                changed = true;
            }
        }
    }
    changed
}

#[derive(Deserialize)]
struct PodView {
    status: Option<StatusView>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StatusView {
    phase: Option<String>,
    #[serde(rename = "podIP")]
    pod_ip: Option<String>,
    #[serde(default, rename = "podIPs")]
    pod_ips: Vec<PodIpView>,
    #[serde(rename = "hostIP")]
    host_ip: Option<String>,
}

#[derive(Deserialize)]
struct PodIpView {
    ip: String,
}

/// The IPs a host pod (its status) gives this vcluster.
fn own_ips(status: Option<StatusView>) -> Vec<IpAddr> {
    let Some(s) = status else {
        return Vec::new();
    };
    if matches!(s.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return Vec::new();
    }
    let mut ips: Vec<&str> = s.pod_ips.iter().map(|p| p.ip.as_str()).collect();
    ips.extend(s.pod_ip.as_deref());
    let mut out: Vec<IpAddr> = ips
        .into_iter()
        .filter(|ip| Some(*ip) != s.host_ip.as_deref())
        .filter_map(|ip| ip.parse().ok())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The host ranges of the host's service CIDRs and of its Nodes.
pub fn host_ranges(service_cidrs: &[String], nodes: &[Node]) -> Vec<HostRange> {
    let mut out: Vec<HostRange> = service_cidrs
        .iter()
        .filter_map(|c| {
            c.parse::<Cidr>().ok().map(|cidr| HostRange {
                cidr,
                what: format!("the host's service range {c}"),
            })
        })
        .collect();
    for n in nodes {
        let name = n.metadata.name.clone().unwrap_or_default();
        let spec = n.spec.as_ref();
        let mut pod_cidrs: Vec<String> = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
        pod_cidrs.extend(spec.and_then(|s| s.pod_cidr.clone()));
        pod_cidrs.sort();
        pod_cidrs.dedup();
        for c in pod_cidrs {
            if let Ok(cidr) = c.parse::<Cidr>() {
                out.push(HostRange {
                    cidr,
                    what: format!("host node {name}'s pod range {c}"),
                });
            }
        }
        for a in n
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
        {
            if let Ok(cidr) = a.address.parse::<Cidr>() {
                out.push(HostRange {
                    cidr,
                    what: format!("host node {name}'s address"),
                });
            }
        }
    }
    out
}

/// When the change hook runs: at once for the first change after a quiet
/// period, then at most once per `period` while changes keep coming (a burst
/// changes the pod IPs many times a second, and the hook looks at every
/// tenant-written Endpoints and EndpointSlice: run on each change, its cost
/// grew with pods times Services). The view itself is replaced at each look;
/// only the requeue is paced.
#[derive(Debug)]
struct Paced {
    period: Duration,
    last: Option<tokio::time::Instant>,
    owed: bool,
}

impl Paced {
    fn new(period: Duration) -> Self {
        Self {
            period,
            last: None,
            owed: false,
        }
    }

    /// Notes a look at `now` (`changed`: the view changed); true when the
    /// hook is to run now.
    fn changed(&mut self, changed: bool, now: tokio::time::Instant) -> bool {
        self.owed |= changed;
        if self.owed && self.last.is_none_or(|t| now >= t + self.period) {
            self.owed = false;
            self.last = Some(now);
            return true;
        }
        false
    }

    /// How long to wait for the next look: [`POD_PERIOD`]-like `period`, or
    /// less when a run of the hook is owed sooner.
    fn nap(&self, now: tokio::time::Instant) -> Duration {
        match self.last {
            Some(t) if self.owed => (t + self.period).saturating_duration_since(now),
            _ => self.period,
        }
    }
}

/// The current knowledge, shared with the endpoint rules.
#[derive(Debug, Default)]
pub struct AddressIndex {
    known: RwLock<Arc<Known>>,
    ready: Readiness,
    wake: tokio::sync::Notify,
}

impl AddressIndex {
    /// What is known now.
    pub fn known(&self) -> Arc<Known> {
        Arc::clone(&self.known.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Looks at the pods again now rather than at the next period (called
    /// when a virtual pod gains or changes its IP, which the syncer copies
    /// up from the host copy its cache already holds).
    pub fn poke(&self) {
        self.wake.notify_one();
    }

    /// Waits for the first complete view (pods and host ranges).
    pub async fn wait_until_ready(&self) {
        self.ready.wait().await;
    }

    /// Replaces the view; true when it changed.
    fn set(&self, k: Known) -> bool {
        let mut cur = self.known.write().unwrap_or_else(|e| e.into_inner());
        if **cur == k {
            return false;
        }
        *cur = Arc::new(k);
        true
    }

    /// Keeps the view current until the process ends. `host_pods`: the pod
    /// engine's host cache (`None` when pods are not synced: no pod IPs).
    pub async fn run(
        self: Arc<Self>,
        host: kube::Client,
        host_namespace: String,
        host_pods: Option<Cache<Pod>>,
        ranges_every: Duration,
        on_change: impl Fn() + Send + 'static,
    ) {
        if let Some(p) = &host_pods {
            p.wait_until_ready().await;
        }
        let mut ips = PodIps::default();
        let mut ranges = Vec::new();
        let mut ranges_at: Option<tokio::time::Instant> = None;
        let mut warned_nodes = false;
        let mut hook = Paced::new(POD_PERIOD);
        loop {
            let ranges_read = ranges_at.is_none_or(|t| t.elapsed() >= ranges_every);
            if ranges_read {
                ranges_at = Some(tokio::time::Instant::now());
                let cidrs = match host_service_cidrs(&host, &host_namespace, true).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "endpoint policy: cannot find the host's service range");
                        Vec::new()
                    }
                };
                let nodes = match Api::<Node>::all(host.clone())
                    .list(&ListParams::default())
                    .await
                {
                    Ok(l) => l.items,
                    Err(e) => {
                        if !warned_nodes {
                            warned_nodes = true;
                            tracing::info!(error = %e, "endpoint policy: cannot list host Nodes; node addresses and pod ranges are refused only as addresses outside this vcluster's pods and the allowed CIDRs");
                        }
                        Vec::new()
                    }
                };
                ranges = host_ranges(&cidrs, &nodes);
            }
            let pods_changed = host_pods.as_ref().is_some_and(|p| ips.look(p));
            let changed = (pods_changed || ranges_read)
                && self.set(Known {
                    own_pods: ips.all(),
                    host: ranges.clone(),
                });
            let now = tokio::time::Instant::now();
            if !self.ready.is_set() {
                self.ready.set();
            } else if hook.changed(changed, now) {
                on_change();
            }
            tokio::select! {
                () = tokio::time::sleep(hook.nap(now)) => {}
                () = self.wake.notified() => {
                    // Pokes come with every pod of a burst: one look per
                    // MIN_GAP serves them all.
                    tokio::time::sleep_until(now + MIN_GAP).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_live_pod_network_ips_are_own() {
        let s = |j: serde_json::Value| {
            serde_json::from_value::<PodView>(json!({"status": j}))
                .unwrap()
                .status
        };
        assert_eq!(
            own_ips(s(
                json!({"phase": "Running", "podIP": "10.0.0.5", "podIPs": [{"ip": "10.0.0.5"}, {"ip": "fd00::5"}], "hostIP": "172.18.0.2"})
            )),
            vec![
                "10.0.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
        assert!(own_ips(s(json!({"phase": "Succeeded", "podIP": "10.0.0.5"}))).is_empty());
        assert!(
            own_ips(s(
                json!({"phase": "Running", "podIP": "172.18.0.2", "hostIP": "172.18.0.2"})
            ))
            .is_empty(),
            "host network"
        );
        assert!(own_ips(None).is_empty());
    }

    fn pod(uid: &str, rv: &str, ip: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": uid, "namespace": "h", "uid": uid, "resourceVersion": rv},
            "status": {"phase": "Running", "podIP": ip, "hostIP": "172.18.0.2"}
        }))
        .unwrap()
    }

    #[test]
    fn pod_ips_change_only_when_an_ip_comes_or_goes() {
        let mut ips = PodIps::default();
        let look = |ips: &mut PodIps, pods: Vec<Pod>| ips.look(&super::super::cache::filled(pods));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(look(
            &mut ips,
            vec![pod("a", "1", "10.0.0.1"), pod("b", "1", "10.0.0.2")]
        ));
        assert_eq!(ips.all(), HashSet::from([ip("10.0.0.1"), ip("10.0.0.2")]));
        assert!(!look(
            &mut ips,
            vec![pod("a", "1", "10.0.0.1"), pod("b", "1", "10.0.0.2")]
        ));
        // A new version with the same IP: no change.
        assert!(!look(
            &mut ips,
            vec![pod("a", "2", "10.0.0.1"), pod("b", "1", "10.0.0.2")]
        ));
        // A new IP.
        assert!(look(
            &mut ips,
            vec![pod("a", "3", "10.0.0.3"), pod("b", "1", "10.0.0.2")]
        ));
        assert_eq!(ips.all(), HashSet::from([ip("10.0.0.3"), ip("10.0.0.2")]));
        // Two pods with one IP (a finished pod's taken by a new one): it
        // stays while either holds it.
        assert!(!look(
            &mut ips,
            vec![
                pod("a", "3", "10.0.0.3"),
                pod("b", "1", "10.0.0.2"),
                pod("c", "1", "10.0.0.2")
            ]
        ));
        assert!(!look(
            &mut ips,
            vec![pod("a", "3", "10.0.0.3"), pod("c", "1", "10.0.0.2")]
        ));
        assert!(look(&mut ips, vec![pod("a", "3", "10.0.0.3")]));
        assert_eq!(ips.all(), HashSet::from([ip("10.0.0.3")]));
        assert!(look(&mut ips, vec![]));
        assert!(ips.all().is_empty());
        assert!(ips.pods.is_empty() && ips.counts.is_empty());
    }

    #[test]
    fn the_change_hook_runs_at_once_then_at_most_once_a_period() {
        let t0 = tokio::time::Instant::now();
        let ms = Duration::from_millis;
        let mut p = Paced::new(ms(2000));
        assert!(!p.changed(false, t0), "nothing changed");
        assert!(p.changed(true, t0), "the first change runs it at once");
        assert!(!p.changed(true, t0 + ms(100)), "a burst: owed");
        assert!(!p.changed(false, t0 + ms(500)), "still owed, not due");
        assert_eq!(p.nap(t0 + ms(500)), ms(1500), "woken when it falls due");
        assert!(p.changed(false, t0 + ms(2000)), "owed and due: runs");
        assert!(!p.changed(false, t0 + ms(2100)), "paid");
        assert_eq!(p.nap(t0 + ms(2100)), ms(2000));
        assert!(
            p.changed(true, t0 + ms(9000)),
            "after a quiet period: at once"
        );
    }

    #[test]
    fn host_ranges_name_what_they_are() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n1"},
            "spec": {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"]},
            "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.2"}, {"type": "Hostname", "address": "n1"}]}
        }))
        .unwrap();
        let r = host_ranges(&["10.96.0.0/16".to_owned()], &[node]);
        let whats: Vec<_> = r.iter().map(|r| r.what.as_str()).collect();
        assert_eq!(
            whats,
            [
                "the host's service range 10.96.0.0/16",
                "host node n1's pod range 10.244.0.0/24",
                "host node n1's address"
            ]
        );
    }
}
