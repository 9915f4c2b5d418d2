//! Pods: rewritten for the host (see [`crate::translate::pod`]), created only
//! once the ConfigMaps and Secrets they need exist on the host, bound in the
//! virtual cluster to a virtual Node named after the host node once the host
//! schedules them, with status copied up. Deletion goes both ways: a virtual
//! deletion deletes the host pod with the same grace period, and once the
//! host pod is gone the virtual pod is removed, as a kubelet would; a host
//! pod that disappears on its own (deleted, evicted and removed, node lost)
//! ends its bound virtual pod the same way.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures::StreamExt as _;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    Binding, ConfigMap, Container, ObjectReference, PersistentVolumeClaim, Pod, PodSpec, Secret,
    Service, ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::json;

use super::cache::{Cache, ListWriter, Listed};
use super::feed::Readiness;
use super::nodes::VirtualNodes;
use super::{Assembly, Context, Decision, Engine, KindSpec, Names, Rule, Side, SyncError, err_for};
use crate::FIELD_MANAGER;
use crate::policy::pss::{self, Level};
use crate::sleep::{Sleep, sleeping_status, slept};
use crate::translate::markers::{Marked as _, OWNER_LABEL, source_uid};
use crate::translate::pod::TOKEN_SECRET_ANNOTATION;
use crate::translate::pod::{
    ApiEndpoint, ClusterDns, TOKEN_KEY, TokenMode, TokenSource, host_pod, host_pod_reading,
    read_token_secret, references, status_up, token_secret_name, token_source, wants_service_links,
};
use crate::translate::{VirtualKey, host_name};

/// Annotation on token Secrets: when (Unix seconds) to renew the token.
pub const RENEW_AT_ANNOTATION: &str = "vcluster.dev/token-renew-at";
/// Label on token Secrets: the host pod they belong to (the translated
/// service account for a shared one).
pub const TOKEN_FOR_LABEL: &str = "vcluster.dev/token-for";
/// Label on shared token Secrets ([`TokenMode::Shared`]).
pub const TOKEN_SHARED_LABEL: &str = "vcluster.dev/token-shared";

/// When each service-account token Secret of this vcluster is due for
/// renewal, from a metadata-only watch. Those Secrets (one per pod, or per
/// service account) stay out of the Secret engine's cache: its host watch
/// selects what was written for a virtual object.
#[derive(Debug, Default)]
pub struct TokenIndex {
    /// By Secret name: when it is due, and the uid of the host pod that owns
    /// it (empty for a shared one: no owner, the sweep removes it).
    renew_at: Arc<Listed<(i64, String)>>,
    /// One writer at a time per shared Secret, so that a burst of pods of
    /// one service account asks for one token, not one each.
    writing: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl TokenIndex {
    /// When the token Secret `name` is due (`None`: there is none), once the
    /// first list is in; with `owner`, only if that host pod owns it (one
    /// left by an earlier host pod of the same name, deleted while the
    /// vcluster slept or re-created by a StatefulSet, goes with that pod's
    /// garbage collection and must be written again).
    async fn due(&self, name: &str, owner: Option<&str>) -> Option<i64> {
        self.renew_at.wait_until_ready().await;
        let index = self.renew_at.read();
        let (at, of) = index.get(name)?;
        owner.is_none_or(|o| o == of).then_some(*at)
    }

    fn record(&self, name: &str, renew_at: i64, owner: &str) {
        self.renew_at
            .write()
            .insert(name.into(), (renew_at, owner.to_owned()));
    }

    /// The lock of shared Secret `name`'s writer.
    fn writer_of(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self
            .writing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() > 1024 {
            // Locks nobody holds or waits for.
            map.retain(|_, l| Arc::strong_count(l) > 1);
        }
        Arc::clone(map.entry(name.to_owned()).or_default())
    }

    /// Shared token Secrets no host pod reads.
    fn unread_shared(&self, host_pods: &Cache<Pod>) -> HashSet<String> {
        let read: HashSet<String> = host_pods
            .entries()
            .iter()
            .filter_map(|p| p.annotation(TOKEN_SECRET_ANNOTATION).map(str::to_owned))
            .collect();
        self.renew_at
            .read()
            .iter()
            .filter(|(name, (_, owner))| owner.is_empty() && !read.contains(&***name))
            .map(|(name, _)| name.to_string())
            .collect()
    }

    /// Deletes, every `every`, the shared token Secrets that no host pod has
    /// read at two looks in a row (a Secret written for a pod whose host copy
    /// is being created is read by then), looking once more right before.
    pub async fn sweep_shared(
        self: Arc<Self>,
        ctx: Arc<Context>,
        host_pods: Cache<Pod>,
        every: Duration,
    ) {
        let secrets: Api<Secret> = Api::namespaced(ctx.host.clone(), &ctx.names.host_namespace);
        let mut unread_before = HashSet::new();
        loop {
            tokio::time::sleep(every).await;
            self.renew_at.wait_until_ready().await;
            host_pods.wait_until_ready().await;
            let unread = self.unread_shared(&host_pods);
            let gone: Vec<&String> = unread.intersection(&unread_before).collect();
            if !gone.is_empty() {
                let still = self.unread_shared(&host_pods);
                for name in gone.into_iter().filter(|n| still.contains(*n)) {
                    match secrets.delete(name, &DeleteParams::default()).await {
                        Ok(_) => {
                            tracing::info!(secret = %name, "shared token Secret no pod reads deleted")
                        }
                        Err(kube::Error::Api(e)) if e.code == 404 => {}
                        Err(e) => {
                            tracing::warn!(secret = %name, error = %e, "delete of an unread shared token Secret failed")
                        }
                    }
                }
            }
            unread_before = unread;
        }
    }

    /// Follows this vcluster's token Secrets until the process ends.
    pub async fn run(self: Arc<Self>, ctx: Arc<Context>, config: watcher::Config) {
        let api: Api<PartialObjectMeta<Secret>> =
            Api::namespaced(ctx.host.clone(), &ctx.names.host_namespace);
        let config = config.labels(&format!("{OWNER_LABEL}={},{TOKEN_FOR_LABEL}", ctx.names.vc));
        let stream = watcher(api, config).backoff(super::outage::WatchBackoff::default());
        futures::pin_mut!(stream);
        let mut writer = ListWriter::new(Arc::clone(&self.renew_at));
        let due = |m: &PartialObjectMeta<Secret>| {
            let at = m
                .annotations()
                .get(RENEW_AT_ANNOTATION)
                .and_then(|t| t.parse::<i64>().ok())
                .unwrap_or(0);
            // A shared one has no pod owner (the vcluster's reference aside).
            let owner = if m.labels().contains_key(TOKEN_SHARED_LABEL) {
                String::new()
            } else {
                m.owner_references()
                    .first()
                    .map(|o| o.uid.clone())
                    .unwrap_or_default()
            };
            (at, owner)
        };
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(ev) => writer.apply(&ev, |m| m.name_any().into(), due),
                Err(e) => tracing::warn!(error = %e, "token secret watch error"),
            }
        }
    }
}

/// The pod rule.
#[derive(Debug)]
pub struct PodRule {
    tokens: Arc<TokenIndex>,
    /// Tokens requested while a new host pod was being written, by virtual
    /// pod uid, for the reconcile's `after_sync` to store.
    issued: std::sync::Mutex<HashMap<String, (String, i64)>>,
    host_configmaps: Cache<ConfigMap>,
    host_secrets: Cache<Secret>,
    nodes: Arc<VirtualNodes>,
    api: ApiEndpoint,
    dns: Option<ClusterDns>,
    services: Cache<Service>,
    host_claims: Option<Cache<PersistentVolumeClaim>>,
    pod_security: Level,
    sleep: Arc<Sleep>,
}

/// What the pod rule reads besides the pod: the host caches of the
/// ConfigMap and Secret engines, the virtual Services (service links), the
/// virtual nodes and the token index.
#[derive(Debug)]
pub struct PodSources {
    /// Host copies of ConfigMaps.
    pub host_configmaps: Cache<ConfigMap>,
    /// Host copies of Secrets.
    pub host_secrets: Cache<Secret>,
    /// Virtual Services.
    pub services: Cache<Service>,
    /// The virtual Nodes pods are bound to.
    pub nodes: Arc<VirtualNodes>,
    /// When each token Secret is due.
    pub tokens: Arc<TokenIndex>,
    /// Host copies of claims, when claims are synced.
    pub host_claims: Option<Cache<PersistentVolumeClaim>>,
    /// Whether the vcluster sleeps (pods are then held).
    pub sleep: Arc<Sleep>,
}

impl PodRule {
    /// A pod rule reading `src`, giving pods `api` as the virtual API's
    /// address and `dns` as their resolver, and admitting those that meet
    /// `pod_security`.
    pub fn new(
        src: PodSources,
        api: ApiEndpoint,
        dns: Option<ClusterDns>,
        pod_security: Level,
    ) -> Self {
        Self {
            tokens: src.tokens,
            issued: std::sync::Mutex::default(),
            host_configmaps: src.host_configmaps,
            host_secrets: src.host_secrets,
            nodes: src.nodes,
            api,
            dns,
            services: src.services,
            host_claims: src.host_claims,
            pod_security,
            sleep: src.sleep,
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
        let secret_name = read_token_secret(h);
        if secret_name != token_secret_name(&host_pod_name) {
            return self.ensure_shared_token(ctx, v, &src, &secret_name).await;
        }
        let now = unix_now();
        let owner = h.uid().unwrap_or_default();
        if let Some(at) = self
            .tokens
            .due(&secret_name, Some(&owner))
            .await
            .filter(|at| *at > now)
        {
            return Ok(Some(Duration::from_secs(
                u64::try_from(at - now).unwrap_or(1),
            )));
        }
        let uid = v.uid().unwrap_or_default();
        let stashed = self.issued_map().remove(&uid).filter(|(_, at)| *at > now);
        let (token, renew) = match stashed {
            Some(t) => t,
            None => self.request_token(ctx, v, &src, true).await?,
        };
        let labels = json!({OWNER_LABEL: ctx.names.vc.as_str(), TOKEN_FOR_LABEL: host_pod_name});
        let owners =
            json!([{"apiVersion": "v1", "kind": "Pod", "name": host_pod_name, "uid": h.uid()}]);
        self.write_token_secret(ctx, v, &secret_name, labels, owners, &token, renew, &owner)
            .await?;
        Ok(Some(Duration::from_secs(
            u64::try_from(renew - now).unwrap_or(60),
        )))
    }

    /// Keeps shared token Secret `name` (the pod's service account's) fresh:
    /// one writer at a time, so a burst asks for one token. Returns when this
    /// pod looks again: at the renewal, plus a share of a tenth of the
    /// lifetime fixed by the pod's uid, so that the pods of a service account
    /// do not all come back at one instant (the first renews, the rest find
    /// it fresh).
    async fn ensure_shared_token(
        &self,
        ctx: &Context,
        v: &Pod,
        src: &TokenSource,
        name: &str,
    ) -> Result<Option<Duration>, SyncError> {
        let spread = (src.expiration_seconds / 10).max(1);
        let offset = v
            .uid()
            .unwrap_or_default()
            .bytes()
            .fold(0_i64, |h, b| h.wrapping_mul(31).wrapping_add(i64::from(b)))
            .rem_euclid(spread);
        let again = |at: i64, now: i64| {
            Some(Duration::from_secs(
                u64::try_from(at - now + offset).unwrap_or(1),
            ))
        };
        let writer = self.tokens.writer_of(name);
        let _one_writer = writer.lock().await;
        let now = unix_now();
        if let Some(at) = self.tokens.due(name, None).await.filter(|at| *at > now) {
            return Ok(again(at, now));
        }
        let (token, renew) = self.request_token(ctx, v, src, false).await?;
        let ns = v.namespace().unwrap_or_default();
        let labels = json!({
            OWNER_LABEL: ctx.names.vc.as_str(),
            TOKEN_FOR_LABEL: host_name(&ctx.names.vc, &ns, &src.service_account),
            TOKEN_SHARED_LABEL: "true",
        });
        // Collected with the vcluster, as the synced copies are (no pod owns
        // it; the sweep removes it while the syncer runs).
        let owners = json!(ctx.owner_references());
        self.write_token_secret(ctx, v, name, labels, owners, &token, renew, "")
            .await?;
        Ok(again(renew, now))
    }

    /// Applies token Secret `name` for `v` with `labels` and `owners`, and
    /// records when it is due (known at once: the pod's next reconcile may
    /// come before the watch says so); `owner` is the owning host pod's uid
    /// in the index (empty for a shared one).
    #[allow(clippy::too_many_arguments)]
    async fn write_token_secret(
        &self,
        ctx: &Context,
        v: &Pod,
        name: &str,
        labels: serde_json::Value,
        owners: serde_json::Value,
        token: &str,
        renew: i64,
        owner: &str,
    ) -> Result<(), SyncError> {
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {
                "name": name,
                "namespace": ctx.names.host_namespace,
                "labels": labels,
                "annotations": {RENEW_AT_ANNOTATION: renew.to_string()},
                "ownerReferences": owners,
            },
            "type": "Opaque",
            "data": {TOKEN_KEY: base64::engine::general_purpose::STANDARD.encode(token)},
        });
        let secrets: Api<Secret> = Api::namespaced(ctx.host.clone(), &ctx.names.host_namespace);
        secrets
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await
            .map_err(err_for("write the service-account token of", "Pod", v))?;
        self.tokens.record(name, renew, owner);
        Ok(())
    }

    /// A fresh virtual service-account token for `v` (`bound`: to the
    /// virtual pod, void once it is deleted; else to nothing, valid for its
    /// lifetime) and when to renew it.
    async fn request_token(
        &self,
        ctx: &Context,
        v: &Pod,
        src: &TokenSource,
        bound: bool,
    ) -> Result<(String, i64), SyncError> {
        let ns = v.namespace().unwrap_or_default();
        let name = v.name_any();
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: src.audience.clone().map(|a| vec![a]),
                expiration_seconds: Some(src.expiration_seconds),
                bound_object_ref: bound.then(|| BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(name.clone()),
                    uid: v.uid(),
                }),
            }),
            ..TokenRequest::default()
        };
        let now = unix_now();
        let sas: Api<ServiceAccount> = Api::namespaced(ctx.virt.clone(), &ns);
        let issued = sas
            .create_token_request(&src.service_account, &PostParams::default(), &request)
            .await
            .map_err(err_for("request a service-account token for", "Pod", v))?;
        let token = issued.status.and_then(|s| s.token).unwrap_or_default();
        // Renew at 80% of the lifetime, as the kubelet does.
        Ok((token, now + src.expiration_seconds * 4 / 5))
    }

    fn issued_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, i64)>> {
        super::lock(&self.issued)
    }

    fn missing_reference(&self, names: &Names, pod: &Pod) -> Option<String> {
        let ns = pod.namespace().unwrap_or_default();
        let refs = references(pod);
        let on_host = |name: &str| host_name(&names.vc, &ns, name);
        for cm in &refs.configmaps {
            if !self
                .host_configmaps
                .contains(&on_host(cm), Some(&names.host_namespace))
            {
                return Some(format!("configmap {cm}"));
            }
        }
        for s in &refs.secrets {
            if !self
                .host_secrets
                .contains(&on_host(s), Some(&names.host_namespace))
            {
                return Some(format!("secret {s}"));
            }
        }
        // A host pod on a claim not yet copied would wait unbound on the host
        // all the same; waiting here keeps the order plain.
        if let Some(h) = &self.host_claims
            && let Some(c) = refs
                .claims
                .iter()
                .find(|c| !h.contains(&on_host(c), Some(&names.host_namespace)))
        {
            return Some(format!("claim {c}"));
        }
        None
    }
}

impl Rule for PodRule {
    type V = Pod;
    type H = Pod;
    const KIND: &'static str = "Pod";

    fn decide(&self, names: &Names, v: &Pod, h: Option<&Pod>) -> Decision<Pod> {
        if v.metadata.deletion_timestamp.is_some() {
            return match h {
                Some(_) => Decision::Remove {
                    grace_seconds: v.metadata.deletion_grace_period_seconds,
                },
                None => Decision::DeleteVirtual,
            };
        }
        if let Some(h) = h.filter(|h| of_an_earlier_pod(v, h)) {
            // The host copy of an earlier pod of this name (deleted and made
            // again at once, as a StatefulSet does): it must go before this
            // one is written. Taking it for this pod's would copy its node
            // and status up, and its deletion would then end this pod.
            return match h.metadata.deletion_timestamp {
                Some(_) => Decision::Wait(
                    "the host copy of an earlier pod of this name is still terminating".into(),
                ),
                None => Decision::Remove {
                    grace_seconds: Some(0),
                },
            };
        }
        let phase = v.status.as_ref().and_then(|s| s.phase.as_deref());
        let finished = matches!(phase, Some("Succeeded" | "Failed"));
        if h.is_none() && finished {
            // Finished: the virtual pod keeps its final status (Job history).
            return Decision::REMOVE;
        }
        if self.sleep.asleep() && !self.sleep.exempt(v) {
            // Held while the vcluster sleeps: marked (a finished pod keeps
            // its final status), then its host copy goes.
            return Decision::Hold(if finished { None } else { sleeping_status(v) });
        }
        let slept = slept(v);
        if slept && h.is_some_and(|h| h.metadata.deletion_timestamp.is_some()) {
            // Awake again before the host copy put to sleep is gone: created
            // anew once it is, and the mark stays until then.
            return Decision::Wait("its host copy put to sleep is still terminating".into());
        }
        let bound = v.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
        if bound && h.is_none() && !slept {
            // It ran on the host and its host pod is gone.
            return Decision::DeleteVirtual;
        }
        // A pod that ran before it slept was admitted then.
        if h.is_none() && !(bound && slept) {
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
            && let Some(what) = self.missing_reference(names, v)
        {
            return Decision::Wait(format!("{what} is not on the host yet"));
        }
        let mut desired = match h {
            // The Secret a host pod reads its token from is fixed at its
            // creation, and so is its environment (kept below): the Services
            // of its namespace are not read (at 1,000 Services a namespace,
            // parsing them for every pod made a restart onto 10,000 pods
            // take half an hour).
            Some(h) => host_pod_reading(
                &names.vc,
                v,
                &self.api,
                &[],
                self.dns.as_ref(),
                read_token_secret(h),
            ),
            None => {
                let services = if wants_service_links(v) {
                    self.services.objects_in(v.namespace().as_deref())
                } else {
                    Vec::new()
                };
                host_pod(&names.vc, v, &self.api, &services, self.dns.as_ref())
            }
        };
        if let (Some(h), Some(spec)) = (h.and_then(|h| h.spec.as_ref()), desired.spec.as_mut()) {
            // DNS settings are fixed at creation (a pod's spec cannot change
            // them, and a kubelet writes resolv.conf once): keep the host
            // pod's, so that turning the cluster DNS on or off, or its
            // Service moving, applies to new pods and is no 422 for old ones.
            spec.dns_policy.clone_from(&h.dns_policy);
            spec.dns_config.clone_from(&h.dns_config);
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

    async fn alongside_write(
        &self,
        ctx: &Context,
        v: &Pod,
        h: Option<&Pod>,
        writing: bool,
    ) -> Result<(), SyncError> {
        // A new host pod needs its token Secret right after it is written:
        // ask the virtual API for the token meanwhile.
        let Some(src) = token_source(v).filter(|_| writing && h.is_none()) else {
            return Ok(());
        };
        let key = VirtualKey {
            namespace: v.namespace().unwrap_or_default(),
            name: v.name_any(),
        };
        if self.api.tokens == TokenMode::Shared {
            // Written once for the service account, after the pod.
            return Ok(());
        }
        let secret_name = token_secret_name(&ctx.host_name(&key));
        let now = unix_now();
        let uid = v.uid().unwrap_or_default();
        // Current already, or asked for by an earlier attempt whose write failed.
        let stashed = self.issued_map().get(&uid).is_some_and(|(_, at)| *at > now);
        if stashed
            || self
                .tokens
                .due(&secret_name, None)
                .await
                .is_some_and(|at| at > now)
        {
            return Ok(());
        }
        let issued = self.request_token(ctx, v, &src, true).await?;
        let mut map = self.issued_map();
        if map.len() > 256 {
            // Tokens of pods whose write failed and never came back.
            map.retain(|_, (_, at)| *at > now);
        }
        map.insert(uid, issued);
        Ok(())
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
            Err(e) => Err(err_for("bind", "Pod", v)(e)),
        }
    }

    fn slim_host(h: &mut Pod) {
        // Read from the host copy: containers' env and the DNS settings
        // (kept at creation), the node, status and metadata; the images and
        // the deadline (what a pod's spec lets change) for the resync's
        // drift check; the rest of the spec never.
        if let Some(spec) = h.spec.as_mut() {
            let keep = |c: &Container| Container {
                name: c.name.clone(),
                env: c.env.clone(),
                image: c.image.clone(),
                ..Container::default()
            };
            *spec = PodSpec {
                node_name: spec.node_name.take(),
                active_deadline_seconds: spec.active_deadline_seconds,
                dns_policy: spec.dns_policy.take(),
                dns_config: spec.dns_config.take(),
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

/// Whether host copy `h` was written for an earlier virtual pod of `v`'s
/// name (its uid marker names another uid; a copy without one is taken as
/// `v`'s).
fn of_an_earlier_pod(v: &Pod, h: &Pod) -> bool {
    matches!(
        (source_uid(&h.metadata), v.metadata.uid.as_deref()),
        (Some(of), Some(uid)) if of != uid
    )
}

/// Pods (and the virtual Nodes they are bound to, their tokens and events).
pub const KIND: KindSpec = KindSpec {
    name: "pods",
    needs: &["configmaps", "secrets"],
    because: "the objects they mount",
    needs_waived_by_all_configs: false,
    register,
};

fn register(a: &mut Assembly) {
    let ctx = a.ctx();
    let src = PodSources {
        host_configmaps: a.cache(Side::Host),
        host_secrets: a.cache(Side::Host),
        services: a.cache(Side::Virtual),
        nodes: Arc::new(VirtualNodes::new(ctx.virt.clone(), ctx.host.clone())),
        tokens: Arc::new(TokenIndex::default()),
        host_claims: a
            .selected(super::claims::KIND.name)
            .then(|| a.cache(Side::Host)),
        sleep: a.shared::<Sleep>(),
    };
    // Pods created once the Services are known get every Service's links.
    let services_ready = a.ready_of::<Service>(Side::Virtual);
    let (virt, host) = a.feeds::<PodRule>();
    let (nodes, host_pods, virt_pods) = (
        Arc::clone(&src.nodes),
        host.cache.clone(),
        virt.cache.clone(),
    );
    a.spawn("virtual-nodes", async move {
        nodes
            .maintain(host_pods, virt_pods, Duration::from_secs(10))
            .await
    });
    let config = a.opts().watcher_config(Side::Host);
    a.spawn(
        "tokens",
        Arc::clone(&src.tokens).run(Arc::clone(&ctx), config),
    );
    a.spawn(
        "token-sweep",
        Arc::clone(&src.tokens).sweep_shared(
            Arc::clone(&ctx),
            host.cache.clone(),
            a.settings().resync.min(Duration::from_secs(60)),
        ),
    );
    let (opts, settings) = (a.opts(), a.settings().clone());
    let dns_address = a.shared::<crate::dns::DnsAddress>();
    a.spawn("Pod", async move {
        let api = api_endpoint(&ctx, &settings, &services_ready).await;
        // No host pod before the DNS Service has its address.
        let dns = match settings.cluster_domain.clone() {
            Some(domain) => {
                tracing::info!("pods wait for the address of the DNS Service");
                Some(ClusterDns {
                    nameserver: dns_address.wait().await,
                    domain,
                })
            }
            None => None,
        };
        // No host pod before the sleep state is known: a syncer restarted
        // while asleep must not create them first.
        let sleep = Arc::clone(&src.sleep);
        sleep.known().await;
        let rule = PodRule::new(src, api, dns, settings.pod_security);
        let engine = Engine::new(rule, ctx, virt, host);
        tokio::spawn(follow_sleep(sleep, Arc::clone(&engine)));
        engine.run(opts).await
    });
}

/// Re-queues every pod when the sleep state changes, and after a wake
/// records how long it took until every slept pod shows its host pod again.
async fn follow_sleep(sleep: Arc<Sleep>, engine: Arc<Engine<PodRule>>) {
    let mut changes = sleep.subscribe();
    loop {
        tokio::select! {
            r = changes.changed() => {
                if r.is_err() {
                    return;
                }
                engine.enqueue_all_virtual();
            }
            () = tokio::time::sleep(Duration::from_millis(250)), if sleep.waking_since().is_some() => {
                if crate::sleep::still_asleep(&engine.virtual_store()) == 0
                    && let Some(took) = sleep.woken()
                {
                    tracing::info!(seconds = took.as_secs_f64(), "every slept pod is back on the host");
                }
            }
        }
    }
}

/// Where synced pods reach the virtual API: the configured host, else the
/// vcluster Service's cluster IP once the Services are known (its DNS name
/// while it has none).
async fn api_endpoint(
    ctx: &Context,
    settings: &super::Settings,
    services_ready: &Readiness,
) -> ApiEndpoint {
    services_ready.wait().await;
    let host = match &settings.api_host {
        Some(h) => h.clone(),
        None => super::apiservice::host_ip(ctx, &settings.api_service)
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                format!("{}.{}.svc", settings.api_service, ctx.names.host_namespace)
            }),
    };
    ApiEndpoint {
        host,
        port: settings.api_port,
        tokens: settings.pod_tokens,
    }
}

#[cfg(test)]
#[path = "tests/pods.rs"]
mod tests;
