//! Virtual Nodes: one for each host node that runs this vcluster's pods, so
//! virtual pods can be bound and `kubectl get pods -o wide` names their node.
//!
//! They are fakes that reveal little of the host: the host node's name, a
//! Hostname address only, capacity, allocatable, kubelet version, OS and
//! architecture copied from the host node when the syncer may read it
//! (otherwise generous defaults and `vcluster` as the version), and Ready
//! conditions kept fresh together with a Lease in `kube-node-lease`, as a
//! kubelet would. A virtual Node no pod needs any more is deleted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use super::cache::Cache;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;
use tokio::sync::Mutex;

use super::SyncError;
use crate::FIELD_MANAGER;

/// Label on the virtual Nodes the syncer manages.
pub const FAKE_NODE_LABEL: &str = "vcluster.dev/fake-node";

/// How long a freshly ensured node is kept even if no pod shows up on it.
const GRACE: Duration = Duration::from_secs(60);

/// The virtual Nodes of one vcluster.
pub struct VirtualNodes {
    virt: kube::Client,
    host: kube::Client,
    ensured: Mutex<HashMap<String, Instant>>,
}

impl std::fmt::Debug for VirtualNodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtualNodes").finish_non_exhaustive()
    }
}

/// Now, as Kubernetes writes `MicroTime` (exactly six fractional digits).
fn micro_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.microsecond()
    )
}

/// Now, as Kubernetes writes `Time` (whole seconds).
fn seconds_now() -> String {
    let m = micro_now();
    format!("{}Z", &m[..19])
}

fn api_err(action: &'static str, node: &str, e: kube::Error) -> SyncError {
    super::api_err(action, "Node", node, e)
}

/// The status of virtual Node `name` as a fresh kubelet reports it, at `now`.
fn node_status(
    name: &str,
    capacity: BTreeMap<String, Quantity>,
    allocatable: BTreeMap<String, Quantity>,
    info: serde_json::Value,
    now: &str,
) -> serde_json::Value {
    let cond = |t: &str, s: &str, reason: &str| {
        json!({
            "type": t, "status": s, "reason": reason,
            "lastHeartbeatTime": now, "lastTransitionTime": now,
        })
    };
    json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
        "status": {
            "capacity": capacity, "allocatable": allocatable,
            "addresses": [{"type": "Hostname", "address": name}],
            "conditions": [
                cond("Ready", "True", "KubeletReady"),
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID"),
            ],
            "nodeInfo": info,
        },
    })
}

/// The nodes the pods of `pods` are bound to (host pods: the host nodes they run on).
fn needed_nodes(host_pods: &Cache<Pod>) -> HashSet<String> {
    #[derive(serde::Deserialize)]
    struct Bound {
        spec: Option<NodeOf>,
    }
    #[derive(serde::Deserialize)]
    struct NodeOf {
        #[serde(rename = "nodeName")]
        node_name: Option<String>,
    }
    host_pods
        .entries()
        .iter()
        .filter_map(|p| p.view::<Bound>().ok()?.spec?.node_name)
        .collect()
}

/// Whether virtual Node `name` stays: a pod needs it, or it was ensured
/// less than [`GRACE`] ago (a pod is being bound to it).
fn stays(name: &str, needed: &HashSet<String>, ensured: Option<Instant>, now: Instant) -> bool {
    needed.contains(name) || ensured.is_some_and(|t| now.duration_since(t) < GRACE)
}

fn default_capacity() -> BTreeMap<String, Quantity> {
    [
        ("cpu", "64"),
        ("memory", "256Gi"),
        ("pods", "1000"),
        ("ephemeral-storage", "1Ti"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), Quantity(v.to_owned())))
    .collect()
}

impl VirtualNodes {
    /// Virtual Nodes written with `virt`, sized from the host via `host`.
    pub fn new(virt: kube::Client, host: kube::Client) -> Self {
        Self {
            virt,
            host,
            ensured: Mutex::new(HashMap::new()),
        }
    }

    /// Makes sure virtual Node `name` exists and is Ready.
    pub async fn ensure(&self, name: &str) -> Result<(), SyncError> {
        // Held across the write: `maintain` deletes under the same lock, so a
        // node cannot be removed between this check and the binding after it.
        let mut ensured = self.ensured.lock().await;
        if !ensured.contains_key(name) {
            self.write(name).await?;
        }
        // Every use restarts the grace period.
        ensured.insert(name.to_owned(), Instant::now());
        Ok(())
    }

    async fn write(&self, name: &str) -> Result<(), SyncError> {
        let nodes: Api<Node> = Api::all(self.virt.clone());
        // Capacity from the host node if this syncer may read nodes (optional
        // cluster-wide permission), otherwise defaults.
        let (capacity, allocatable, info) =
            match Api::<Node>::all(self.host.clone()).get_opt(name).await {
                Ok(Some(n)) => {
                    let st = n.status.unwrap_or_default();
                    (
                        st.capacity.unwrap_or_else(default_capacity),
                        st.allocatable.unwrap_or_else(default_capacity),
                        st.node_info,
                    )
                }
                _ => (default_capacity(), default_capacity(), None),
            };
        let info = node_info(info.as_ref());
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let node = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {
                FAKE_NODE_LABEL: "true",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
            }},
        });
        nodes
            .patch(name, &params, &Patch::Apply(&node))
            .await
            .map_err(|e| api_err("create virtual", name, e))?;
        let status = node_status(name, capacity, allocatable, info, &seconds_now());
        nodes
            .patch_status(name, &params, &Patch::Apply(&status))
            .await
            .map_err(|e| api_err("report status of virtual", name, e))?;
        self.renew_lease(name).await
    }

    async fn renew_lease(&self, name: &str) -> Result<(), SyncError> {
        let leases: Api<Lease> = Api::namespaced(self.virt.clone(), "kube-node-lease");
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name},
            "spec": {
                "holderIdentity": name,
                "leaseDurationSeconds": 40,
                "renewTime": micro_now(),
            },
        });
        leases
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&lease),
            )
            .await
            .map(|_| ())
            .map_err(|e| api_err("renew lease of virtual", name, e))
    }

    /// Every `period`: renews the Nodes that host or virtual pods still need
    /// and deletes the others (`host_pods`, `virt_pods`: the pod engine's caches).
    pub async fn maintain(&self, host_pods: Cache<Pod>, virt_pods: Cache<Pod>, period: Duration) {
        // Nothing is decided on partial caches: a restarted syncer that
        // looked before its first lists would find no pod needing any node,
        // delete them all, and the virtual pod garbage collector would then
        // delete every pod bound to them.
        host_pods.wait_until_ready().await;
        virt_pods.wait_until_ready().await;
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            // Also the nodes virtual pods are bound to: a pod whose host copy
            // sleeps, or was created again on another host node, must not lose
            // its node (the virtual pod garbage collector would delete it).
            let mut needed = needed_nodes(&host_pods);
            needed.extend(needed_nodes(&virt_pods));
            let nodes: Api<Node> = Api::all(self.virt.clone());
            let existing = match nodes
                .list(&ListParams::default().labels(&format!("{FAKE_NODE_LABEL}=true")))
                .await
            {
                Ok(l) => l.items,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list virtual nodes");
                    continue;
                }
            };
            for n in existing {
                let name = n.metadata.name.unwrap_or_default();
                // Decide and delete under the lock `ensure` takes: a pod being
                // bound to this node right now either kept it (recent) or
                // waits, then recreates it.
                let mut ensured = self.ensured.lock().await;
                if stays(&name, &needed, ensured.get(&name).copied(), Instant::now()) {
                    drop(ensured);
                    if let Err(e) = self.write(&name).await {
                        tracing::warn!(node = %name, error = %e, "cannot renew virtual node");
                    }
                    continue;
                }
                ensured.remove(&name);
                match nodes.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => tracing::info!(node = %name, "removed virtual node no pod needs"),
                    Err(e) => {
                        tracing::warn!(node = %name, error = %e, "cannot remove virtual node")
                    }
                }
            }
        }
    }
}

/// The virtual Node's `nodeInfo`: the host node's kubelet version, operating
/// system and architecture when the syncer may read it (what clients and
/// charts check); nothing that identifies the machine (kernel, OS image,
/// machine and boot IDs) is copied.
fn node_info(host: Option<&k8s_openapi::api::core::v1::NodeSystemInfo>) -> serde_json::Value {
    let pick = |f: fn(&k8s_openapi::api::core::v1::NodeSystemInfo) -> &str, default: &str| {
        host.map(f)
            .filter(|v| !v.is_empty())
            .unwrap_or(default)
            .to_owned()
    };
    json!({
        "architecture": pick(|i| &i.architecture, "amd64"),
        "operatingSystem": pick(|i| &i.operating_system, "linux"),
        "kubeletVersion": pick(|i| &i.kubelet_version, "vcluster"),
        "kubeProxyVersion": pick(|i| &i.kube_proxy_version, "vcluster"),
        "containerRuntimeVersion": "vcluster", "kernelVersion": "", "osImage": "",
        "machineID": "", "systemUUID": "", "bootID": "",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nothing_is_removed_before_the_pod_caches_are_listed() {
        type Body = kube::client::Body;
        let (virt, mut virt_api) =
            tower_test::mock::pair::<http::Request<Body>, http::Response<Body>>();
        let nodes = VirtualNodes::new(
            kube::Client::new(virt, "default"),
            crate::sync::tests::idle_client(),
        );
        let ((host_pods, _hw), (virt_pods, _vw)) = (
            crate::sync::cache::cache::<Pod>(),
            crate::sync::cache::cache::<Pod>(),
        );
        let run = nodes.maintain(host_pods, virt_pods, Duration::from_millis(10));
        tokio::select! {
            () = run => panic!("maintain returned"),
            req = virt_api.next_request() => {
                panic!("asked the virtual API before the caches were listed: {:?}", req.map(|(r, _)| r.uri().clone()));
            }
            () = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
    }

    fn pod(name: &str, node: Option<&str>) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "vc-host"},
            "spec": {"containers": [{"name": "c"}], "nodeName": node},
        }))
        .unwrap()
    }

    #[test]
    fn nodes_in_use_are_those_of_scheduled_host_pods() {
        let pods = crate::sync::cache::filled([
            pod("a", Some("node-1")),
            pod("b", Some("node-1")),
            pod("c", Some("node-2")),
            pod("pending", None),
        ]);
        let mut got: Vec<_> = needed_nodes(&pods).into_iter().collect();
        got.sort();
        assert_eq!(got, ["node-1", "node-2"]);
    }

    #[test]
    fn a_node_stays_while_needed_or_just_ensured() {
        let now = Instant::now();
        let needed: HashSet<String> = ["used".to_owned()].into();
        for (name, ensured, want) in [
            ("used", None, true),
            ("fresh", Some(now), true),
            ("fresh", now.checked_sub(GRACE / 2), true),
            ("stale", now.checked_sub(GRACE * 2), false),
            ("never", None, false),
        ] {
            assert_eq!(stays(name, &needed, ensured, now), want, "{name}");
        }
    }

    #[test]
    fn a_virtual_node_reports_ready_with_a_hostname_only() {
        let status = node_status(
            "n1",
            default_capacity(),
            default_capacity(),
            node_info(None),
            "2026-01-01T00:00:00Z",
        );
        let st = &status["status"];
        assert_eq!(
            st["addresses"],
            json!([{"type": "Hostname", "address": "n1"}])
        );
        let ready = st["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["status"], "True");
        assert_eq!(st["capacity"]["pods"], "1000");
    }
}
