//! KWOK as the host's node agent: its arguments, Stage definitions and the fake
//! Nodes it manages.

use std::path::Path;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, ListParams};
use serde_json::json;

use super::LocalError;
use crate::api::{ApiError, create_if_absent};

/// The project's Stage definitions (node initialisation and heartbeat, pod
/// ready, pod complete, pod delete).
pub const STAGES: &str = include_str!("kwok-stages.yaml");

/// Annotation on a Job's pod (template): how long KWOK keeps it running
/// before it Succeeds (a Go duration such as `10m`; default 1 to 2 s).
/// KWOK's own name for it; the pod-complete Stage reads it.
pub const COMPLETE_DELAY_ANNOTATION: &str = "pod-complete.stage.kwok.x-k8s.io/delay";

/// The annotation that tells KWOK a Node is one of its fake nodes.
pub const NODE_ANNOTATION: (&str, &str) = ("kwok.x-k8s.io/node", "fake");

/// Pod IPs KWOK hands out (a /16 leaves room for the 10,000-pod benchmark).
pub const POD_CIDR: &str = "10.244.0.0/16";

/// Lease duration: kwok renews every quarter of it.
const LEASE_SECONDS: u32 = 40;

/// The fake nodes' names.
pub fn node_name(i: u32) -> String {
    format!("kwok-node-{i}")
}

/// kwok's command line. It serves the kubelet API (logs, exec, port-forward)
/// on 127.0.0.1:`port`, which the nodes advertise.
pub fn args(kubeconfig: &str, stages: &Path, port: u16, tls: (&Path, &Path)) -> Vec<String> {
    vec![
        format!("--kubeconfig={kubeconfig}"),
        format!("--config={}", stages.display()),
        format!(
            "--manage-nodes-with-annotation-selector={}={}",
            NODE_ANNOTATION.0, NODE_ANNOTATION.1
        ),
        format!("--cidr={POD_CIDR}"),
        "--node-ip=127.0.0.1".to_owned(),
        format!("--node-port={port}"),
        format!("--server-address=127.0.0.1:{port}"),
        format!("--tls-cert-file={}", tls.0.display()),
        format!("--tls-private-key-file={}", tls.1.display()),
        format!("--node-lease-duration-seconds={LEASE_SECONDS}"),
    ]
}

/// kwok's node-API simulation for every pod it manages: logs from
/// `logs_file`, exec running the command locally in `exec_dir`, and
/// port-forward to 127.0.0.1 (`front_door` for port 8443, the vcluster pod's
/// front-door port; `other` for any other port).
pub fn node_api_config(
    logs_file: &Path,
    exec_dir: &Path,
    front_door: Option<u16>,
    other: Option<u16>,
) -> String {
    let mut forwards = Vec::new();
    if let Some(port) = front_door {
        forwards.push(json!({
            "ports": [crate::discovery::FRONT_DOOR_PORT],
            "target": {"address": "127.0.0.1", "port": port},
        }));
    }
    if let Some(port) = other {
        forwards.push(json!({"target": {"address": "127.0.0.1", "port": port}}));
    }
    let meta = |name: &str| json!({"name": name});
    let api = "kwok.x-k8s.io/v1alpha1";
    let mut docs = vec![
        json!({"apiVersion": api, "kind": "ClusterLogs", "metadata": meta("vcluster-logs"),
            "spec": {"logs": [{"logsFile": logs_file.display().to_string(), "follow": false}]}}),
        json!({"apiVersion": api, "kind": "ClusterExec", "metadata": meta("vcluster-exec"),
            "spec": {"execs": [{"local": {"workDir": exec_dir.display().to_string()}}]}}),
    ];
    if !forwards.is_empty() {
        docs.push(json!({"apiVersion": api, "kind": "ClusterPortForward",
            "metadata": meta("vcluster-port-forward"), "spec": {"forwards": forwards}}));
    }
    docs.iter().map(|d| format!("---\n{d}\n")).collect()
}

/// The container log kwok serves for every pod (CRI log format).
pub const CONTAINER_LOG: &str =
    "2026-01-01T00:00:00.000000000Z stdout F hello from the host node agent (kwok)\n";

fn fake_node(i: u32) -> Result<Node, serde_json::Error> {
    let name = node_name(i);
    let capacity = [
        ("cpu", "32"),
        ("memory", "256Gi"),
        ("pods", "250"),
        ("ephemeral-storage", "1Ti"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), Quantity(v.to_owned())))
    .collect::<std::collections::BTreeMap<_, _>>();
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": { NODE_ANNOTATION.0: NODE_ANNOTATION.1 },
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node.kubernetes.io/instance-type": "kwok",
                "type": "kwok",
            },
        },
        "status": { "capacity": capacity, "allocatable": capacity },
    }))
}

/// Creates `count` fake nodes (existing ones are left as they are).
pub async fn create_nodes(client: &kube::Client, count: u32) -> Result<(), LocalError> {
    let nodes: Api<Node> = Api::all(client.clone());
    for i in 0..count {
        let node = fake_node(i).map_err(|source| LocalError::Object {
            what: format!("fake node {}", node_name(i)),
            source,
        })?;
        create_if_absent(&nodes, &node)
            .await
            .map_err(ApiError::of(format!("create node {}", node_name(i))))?;
    }
    Ok(())
}

/// How many fake nodes report Ready=True.
pub async fn ready_nodes(nodes: &Api<Node>) -> usize {
    let Ok(list) = nodes.list(&ListParams::default().labels("type=kwok")).await else {
        return 0;
    };
    list.items
        .iter()
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_define_the_node_and_pod_lifecycle() {
        let docs: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(STAGES)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .filter(|v: &serde_json::Value| !v.is_null())
            .collect();
        let names: Vec<&str> = docs
            .iter()
            .map(|d| d["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "vcluster-node-initialize",
                "vcluster-node-heartbeat",
                "vcluster-pod-ready",
                "vcluster-pod-complete",
                "vcluster-pod-delete"
            ]
        );
        let delay_from = format!(".metadata.annotations[\"{COMPLETE_DELAY_ANNOTATION}\"]");
        for from in ["durationFrom", "jitterDurationFrom"] {
            assert_eq!(
                docs[3]["spec"]["delay"][from]["jq"]["expression"], delay_from,
                "{from}"
            );
        }
        for d in &docs {
            // kwok drops a Stage without a selector and routes only apiGroup v1 to its
            // node and pod controllers, without applying defaults to -c files.
            assert_eq!(d["kind"], "Stage");
            assert_eq!(d["spec"]["resourceRef"]["apiGroup"], "v1", "{d}");
            assert!(d["spec"]["selector"].is_object(), "{d}");
            assert!(!d["spec"]["steps"].as_array().unwrap().is_empty(), "{d}");
        }
    }

    #[test]
    fn node_api_config_forwards_the_front_door_port() {
        let y = node_api_config(Path::new("/l"), Path::new("/w"), Some(1234), Some(99));
        let docs: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&y)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["ClusterLogs", "ClusterExec", "ClusterPortForward"]);
        let fwd = &docs[2]["spec"]["forwards"];
        assert_eq!(fwd[0]["ports"][0], 8443);
        assert_eq!(fwd[0]["target"]["port"], 1234);
        assert_eq!(fwd[1]["target"]["port"], 99);
        assert!(fwd[1].get("ports").is_none());
    }

    #[test]
    fn fake_nodes_carry_kwok_annotation_and_capacity() {
        let n = fake_node(3).unwrap();
        assert_eq!(n.metadata.name.as_deref(), Some("kwok-node-3"));
        let ann = n.metadata.annotations.unwrap();
        assert_eq!(
            ann.get("kwok.x-k8s.io/node").map(String::as_str),
            Some("fake")
        );
        let cap = n.status.unwrap().capacity.unwrap();
        assert_eq!(cap["pods"].0, "250");
    }
}
