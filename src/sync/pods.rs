//! Pods: rewritten for the host (see [`crate::translate::pod`]), created only
//! once the ConfigMaps and Secrets they need exist on the host, bound in the
//! virtual cluster to a virtual Node named after the host node once the host
//! schedules them, with status copied up. Deletion goes both ways: a virtual
//! deletion deletes the host pod with the same grace period, and once the
//! host pod is gone the virtual pod is removed, as a kubelet would; a host
//! pod that disappears on its own (deleted, evicted and removed, node lost)
//! ends its bound virtual pod the same way.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    Binding, ConfigMap, Container, ObjectReference, Pod, PodSpec, Secret, Service, ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::json;

use super::nodes::VirtualNodes;
use super::{Context, Decision, Rule, SyncError};
use crate::FIELD_MANAGER;
use crate::policy::pss::{self, Level};
use crate::translate::markers::OWNER_LABEL;
use crate::translate::pod::{
    ApiEndpoint, TOKEN_KEY, host_pod, references, status_up, token_secret_name, token_source,
};
use crate::translate::{VirtualKey, host_name};

/// Annotation on token Secrets: when (Unix seconds) to renew the token.
pub const RENEW_AT_ANNOTATION: &str = "vcluster.dev/token-renew-at";
/// Label on token Secrets: the host pod they belong to.
pub const TOKEN_FOR_LABEL: &str = "vcluster.dev/token-for";

/// The pod rule.
#[derive(Debug)]
pub struct PodRule {
    host_configmaps: Store<ConfigMap>,
    host_secrets: Store<Secret>,
    nodes: Arc<VirtualNodes>,
    api: ApiEndpoint,
    services: Store<Service>,
    pod_security: Level,
}

impl PodRule {
    /// A pod rule that checks references against the host caches of the
    /// ConfigMap and Secret engines.
    pub fn new(
        host_configmaps: Store<ConfigMap>,
        host_secrets: Store<Secret>,
        nodes: Arc<VirtualNodes>,
        api: ApiEndpoint,
        services: Store<Service>,
        pod_security: Level,
    ) -> Self {
        Self {
            host_configmaps,
            host_secrets,
            nodes,
            api,
            services,
            pod_security,
        }
    }

    /// Keeps the host Secret with the pod's virtual service-account token
    /// fresh; returns when to look again.
    async fn ensure_token(
        &self,
        ctx: &Context,
        v: &Pod,
        h: &Pod,
    ) -> Result<Option<Duration>, SyncError> {
        let Some(src) = token_source(v) else {
            return Ok(None);
        };
        let host_pod_name = h.name_any();
        let secret_name = token_secret_name(&host_pod_name);
        let now = unix_now();
        let cached = self
            .host_secrets
            .get(&ObjectRef::new(&secret_name).within(&ctx.host_namespace));
        let renew_at = cached.as_ref().and_then(|s| {
            s.annotations()
                .get(RENEW_AT_ANNOTATION)
                .and_then(|t| t.parse::<i64>().ok())
        });
        if let Some(at) = renew_at.filter(|at| *at > now) {
            return Ok(Some(Duration::from_secs(
                u64::try_from(at - now).unwrap_or(1),
            )));
        }
        let ns = v.namespace().unwrap_or_default();
        let key = VirtualKey {
            namespace: ns.clone(),
            name: v.name_any(),
        };
        let err = |action: &'static str| {
            let key = key.to_string();
            move |e| SyncError::Api {
                action,
                kind: "Pod",
                key,
                source: Box::new(e),
            }
        };
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: src.audience.clone().map(|a| vec![a]),
                expiration_seconds: Some(src.expiration_seconds),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(key.name.clone()),
                    uid: v.uid(),
                }),
            }),
            ..TokenRequest::default()
        };
        let sas: Api<ServiceAccount> = Api::namespaced(ctx.virt.clone(), &ns);
        let issued = sas
            .create_token_request(&src.service_account, &PostParams::default(), &request)
            .await
            .map_err(err("request a service-account token for"))?;
        let token = issued.status.and_then(|s| s.token).unwrap_or_default();
        // Renew at 80% of the lifetime, as the kubelet does.
        let renew = now + src.expiration_seconds * 4 / 5;
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {
                "name": secret_name,
                "namespace": ctx.host_namespace,
                "labels": {OWNER_LABEL: ctx.vc.as_str(), TOKEN_FOR_LABEL: host_pod_name},
                "annotations": {RENEW_AT_ANNOTATION: renew.to_string()},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": host_pod_name, "uid": h.uid()}],
            },
            "type": "Opaque",
            "data": {TOKEN_KEY: base64::engine::general_purpose::STANDARD.encode(token)},
        });
        let secrets: Api<Secret> = Api::namespaced(ctx.host.clone(), &ctx.host_namespace);
        secrets
            .patch(
                &secret_name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await
            .map_err(err("write the service-account token of"))?;
        Ok(Some(Duration::from_secs(
            u64::try_from(renew - now).unwrap_or(60),
        )))
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
        if h.is_none() {
            // Checked at creation, as admission would: a pod already running
            // on the host is not ended by a later change of level.
            let violations = pss::check(v, self.pod_security);
            if !violations.is_empty() {
                return Decision::Reject(
                    "PodSecurityViolation",
                    pss::message(self.pod_security, &violations),
                );
            }
        }
        if h.is_none()
            && let Some(what) = self.missing_reference(ctx, v)
        {
            return Decision::Wait(format!("{what} is not on the host yet"));
        }
        let ns = v.namespace();
        let services: Vec<Service> = self
            .services
            .state()
            .iter()
            .filter(|s| s.namespace() == ns)
            .map(|s| (**s).clone())
            .collect();
        let mut desired = host_pod(&ctx.vc, v, &self.api, &services);
        if let (Some(h), Some(spec)) = (h.and_then(|h| h.spec.as_ref()), desired.spec.as_mut()) {
            // Container environments are fixed at creation (as service links
            // are for a kubelet): keep the host pod's.
            for (want, have) in spec.containers.iter_mut().zip(&h.containers) {
                want.env.clone_from(&have.env);
            }
            for (want, have) in spec
                .init_containers
                .iter_mut()
                .flatten()
                .zip(h.init_containers.iter().flatten())
            {
                want.env.clone_from(&have.env);
            }
        }
        Decision::Sync(desired)
    }

    async fn after_sync(
        &self,
        ctx: &Context,
        v: &Pod,
        h: &Pod,
    ) -> Result<Option<Duration>, SyncError> {
        let again = self.ensure_token(ctx, v, h).await?;
        let virtual_node = v.spec.as_ref().and_then(|s| s.node_name.clone());
        let host_node = h.spec.as_ref().and_then(|s| s.node_name.clone());
        let (None, Some(node)) = (virtual_node, host_node) else {
            return Ok(again);
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
            Ok(_) => Ok(again),
            // Already bound (a concurrent reconcile won): fine.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(again),
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

    fn slim_host(h: &mut Pod) {
        // Read from the host copy: containers' env (kept at creation), the
        // node, status and metadata; the rest of the spec never.
        if let Some(spec) = h.spec.as_mut() {
            let keep = |c: &Container| Container {
                name: c.name.clone(),
                env: c.env.clone(),
                ..Container::default()
            };
            *spec = PodSpec {
                node_name: spec.node_name.take(),
                containers: spec.containers.iter().map(keep).collect(),
                init_containers: spec
                    .init_containers
                    .as_ref()
                    .map(|cs| cs.iter().map(keep).collect()),
                ..PodSpec::default()
            };
        }
    }

    fn status_up(&self, v: &Pod, h: &Pod) -> Option<serde_json::Value> {
        // Before the binding the virtual pod is Pending/unscheduled; status
        // follows once it is bound (the binding sets PodScheduled itself).
        // The engine calls this after `after_sync`, which has bound the
        // virtual pod whenever the host pod has a node: so a host node means
        // bound, even if `v` (read before the binding) does not show it yet.
        // This saves a second reconcile per pod in a burst.
        let bound = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
        if !bound(v) && !bound(h) {
            return None;
        }
        status_up(v, h)
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
