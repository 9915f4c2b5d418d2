//! Pods: rewritten for the host (see [`crate::translate::pod`]), created only
//! once the ConfigMaps and Secrets they need exist on the host, bound in the
//! virtual cluster to a virtual Node named after the host node once the host
//! schedules them, with status copied up. Deletion goes both ways: a virtual
//! deletion deletes the host pod with the same grace period, and once the
//! host pod is gone the virtual pod is removed, as a kubelet would; a host
//! pod that disappears on its own (deleted, evicted and removed, node lost)
//! ends its bound virtual pod the same way.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Binding, ConfigMap, ObjectReference, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};

use super::nodes::VirtualNodes;
use super::{Context, Decision, Rule, SyncError};
use crate::translate::pod::{host_pod, references, status_up};
use crate::translate::{VirtualKey, host_name};

/// The pod rule.
#[derive(Debug)]
pub struct PodRule {
    host_configmaps: Store<ConfigMap>,
    host_secrets: Store<Secret>,
    nodes: Arc<VirtualNodes>,
}

impl PodRule {
    /// A pod rule that checks references against the host caches of the
    /// ConfigMap and Secret engines.
    pub fn new(
        host_configmaps: Store<ConfigMap>,
        host_secrets: Store<Secret>,
        nodes: Arc<VirtualNodes>,
    ) -> Self {
        Self {
            host_configmaps,
            host_secrets,
            nodes,
        }
    }

    fn missing_reference(&self, ctx: &Context, pod: &Pod) -> Option<String> {
        let ns = pod.namespace().unwrap_or_default();
        let refs = references(pod);
        let on_host = |name: &str| host_name(&ctx.vc, &ns, name);
        for cm in &refs.configmaps {
            let key = ObjectRef::new(&on_host(cm)).within(&ctx.host_namespace);
            if self.host_configmaps.get(&key).is_none() {
                return Some(format!("configmap {cm}"));
            }
        }
        for s in &refs.secrets {
            let key = ObjectRef::new(&on_host(s)).within(&ctx.host_namespace);
            if self.host_secrets.get(&key).is_none() {
                return Some(format!("secret {s}"));
            }
        }
        None
    }
}

impl Rule for PodRule {
    type V = Pod;
    type H = Pod;
    const KIND: &'static str = "Pod";

    fn decide(&self, ctx: &Context, v: &Pod, h: Option<&Pod>) -> Decision<Pod> {
        if v.metadata.deletion_timestamp.is_some() {
            return match h {
                Some(_) => Decision::Remove {
                    grace_seconds: v.metadata.deletion_grace_period_seconds,
                },
                None => Decision::DeleteVirtual,
            };
        }
        let phase = v.status.as_ref().and_then(|s| s.phase.as_deref());
        if h.is_none() && matches!(phase, Some("Succeeded" | "Failed")) {
            // Finished: the virtual pod keeps its final status (Job history).
            return Decision::Remove {
                grace_seconds: None,
            };
        }
        let bound = v.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
        if bound && h.is_none() {
            // It ran on the host and its host pod is gone.
            return Decision::DeleteVirtual;
        }
        if h.is_none()
            && let Some(what) = self.missing_reference(ctx, v)
        {
            return Decision::Wait(format!("{what} is not on the host yet"));
        }
        Decision::Sync(host_pod(&ctx.vc, v))
    }

    async fn after_sync(&self, ctx: &Context, v: &Pod, h: &Pod) -> Result<(), SyncError> {
        let virtual_node = v.spec.as_ref().and_then(|s| s.node_name.clone());
        let host_node = h.spec.as_ref().and_then(|s| s.node_name.clone());
        let (None, Some(node)) = (virtual_node, host_node) else {
            return Ok(());
        };
        self.nodes.ensure(&node).await?;
        let ns = v.namespace().unwrap_or_default();
        let name = v.name_any();
        let binding = Binding {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                ..ObjectMeta::default()
            },
            target: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(node.clone()),
                ..ObjectReference::default()
            },
        };
        let pods: Api<Pod> = Api::namespaced(ctx.virt.clone(), &ns);
        match pods
            .create_subresource::<Binding, serde_json::Value>(
                "binding",
                &name,
                &PostParams::default(),
                &binding,
            )
            .await
        {
            Ok(_) => Ok(()),
            // Already bound (a concurrent reconcile won): fine.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(SyncError::Api {
                action: "bind",
                kind: "Pod",
                key: format!(
                    "{}",
                    VirtualKey {
                        namespace: ns,
                        name
                    }
                ),
                source: Box::new(e),
            }),
        }
    }

    fn status_up(&self, v: &Pod, h: &Pod) -> Option<serde_json::Value> {
        // Before the binding the virtual pod is Pending/unscheduled; status
        // follows once it is bound (the binding sets PodScheduled itself).
        v.spec.as_ref().and_then(|s| s.node_name.as_ref())?;
        status_up(v, h)
    }
}
