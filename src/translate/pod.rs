//! Pods: what a virtual pod references, its host form, and its status back.
//!
//! The host pod is the virtual pod rewritten for the host:
//! - ConfigMaps, Secrets (volumes, projected sources, env, envFrom) and
//!   imagePullSecrets point at their translated host names;
//! - no host service-account token (`automountServiceAccountToken: false`, no
//!   service account); a projected service-account-token source reads the
//!   virtual token instead, from the host Secret [`token_secret_name`] that
//!   the syncer fills by TokenRequest against the virtual API, so in-cluster
//!   clients authenticate to the virtual API;
//! - `KUBERNETES_SERVICE_HOST`/`KUBERNETES_SERVICE_PORT` point at the
//!   vcluster's API endpoint in every container that does not set them;
//! - service links off (the host's Services mean nothing to the tenant);
//! - `nodeName` cleared: the host scheduler places the pod;
//! - downward-API fields for name, namespace and uid read the source
//!   annotations, so they resolve to the virtual values;
//! - `hostname` is the virtual name (when it is a DNS label);
//! - `persistentVolumeClaim` volumes name the claim's host copy; a generic
//!   ephemeral volume becomes a `persistentVolumeClaim` volume naming the
//!   host copy of the claim the virtual plane's ephemeral-volume controller
//!   makes for it (`<pod>-<volume>`, owned by the virtual pod, so it goes
//!   with the pod): the host pod's name differs, and a claim the host made
//!   from it would belong to no one in the vcluster;
//! - `priorityClassName`/`priority`/`preemptionPolicy` are dropped: priority
//!   classes are cluster-scoped host policy that a tenant may not pick.
//!   `runtimeClassName` passes through unchanged;
//! - `ClusterFirst` (without host network) and `ClusterFirstWithHostNet`
//!   pods ask the vcluster's DNS ([`ClusterDns`]): `dnsPolicy: None` with its
//!   Service's cluster IP, the searches `<ns>.svc.<domain> svc.<domain>
//!   <domain>` and `ndots:5`, the pod's own `dnsConfig` merged in as a
//!   kubelet merges it; `Default` and `None` pods keep theirs.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{
    Container, EnvVar, KeyToPath, ObjectFieldSelector, PersistentVolumeClaimVolumeSource, Pod,
    PodDNSConfig, PodDNSConfigOption, PodSpec, PodStatus, SecretProjection, Service, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use super::VclusterName;
use super::markers::{NAME_ANNOTATION, NAMESPACE_ANNOTATION, UID_ANNOTATION, copy_unreserved};
use super::names::{host_name, is_dns_label, sha256_hex};

/// Where in-cluster clients on the host reach the virtual API, and how
/// their service-account tokens are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiEndpoint {
    /// Host name or IP (`KUBERNETES_SERVICE_HOST`).
    pub host: String,
    /// Port (`KUBERNETES_SERVICE_PORT`).
    pub port: u16,
    /// One token Secret per pod or per service account.
    pub tokens: TokenMode,
}

/// How synced pods get their virtual service-account tokens on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenMode {
    /// One host Secret per service account, namespace, audience and
    /// lifetime, with a token bound to no object: one TokenRequest and one
    /// write per service account and renewal instead of per pod. A token
    /// stays valid until it expires (the requested lifetime, one hour by
    /// default) after the last pod that read it is gone.
    #[default]
    Shared,
    /// One host Secret per pod, with a token bound to the virtual pod (what
    /// the kubelet mounts): void as soon as the pod is deleted.
    PerPod,
}

impl std::str::FromStr for TokenMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "shared" => Ok(Self::Shared),
            "per-pod" => Ok(Self::PerPod),
            other => Err(format!(
                "unknown token mode {other:?}: `shared` (one token Secret per service account) or `per-pod`"
            )),
        }
    }
}

impl std::fmt::Display for TokenMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Shared => "shared",
            Self::PerPod => "per-pod",
        })
    }
}

/// Where synced pods resolve names: the vcluster's DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDns {
    /// The cluster IP of its host Service.
    pub nameserver: String,
    /// The cluster domain.
    pub domain: String,
}

/// Nameservers a pod may have (the API's limit).
const MAX_NAMESERVERS: usize = 3;
/// Search domains a pod may have (the API's limit).
const MAX_SEARCHES: usize = 32;

/// Points a `ClusterFirst` pod of `namespace` at `dns`, as the kubelet
/// would point it at the cluster's DNS, the pod's `dnsConfig` merged in.
fn set_dns(spec: &mut PodSpec, namespace: &str, dns: &ClusterDns) {
    let host_network = spec.host_network == Some(true);
    let cluster_first = match spec.dns_policy.as_deref().unwrap_or("ClusterFirst") {
        // On the host network ClusterFirst means Default, for the kubelet too.
        "ClusterFirst" => !host_network,
        "ClusterFirstWithHostNet" => true,
        _ => false,
    };
    if !cluster_first {
        return;
    }
    let own = spec.dns_config.take().unwrap_or_default();
    let d = &dns.domain;
    let mut nameservers = vec![dns.nameserver.clone()];
    let mut searches = vec![
        format!("{namespace}.svc.{d}"),
        format!("svc.{d}"),
        d.clone(),
    ];
    for n in own.nameservers.into_iter().flatten() {
        if !nameservers.contains(&n) {
            nameservers.push(n);
        }
    }
    for s in own.searches.into_iter().flatten() {
        if !searches.contains(&s) {
            searches.push(s);
        }
    }
    nameservers.truncate(MAX_NAMESERVERS);
    searches.truncate(MAX_SEARCHES);
    let mut options = vec![PodDNSConfigOption {
        name: Some("ndots".to_owned()),
        value: Some("5".to_owned()),
    }];
    for o in own.options.into_iter().flatten() {
        // The pod's own value of an option wins.
        options.retain(|have| have.name != o.name);
        options.push(o);
    }
    spec.dns_policy = Some("None".to_owned());
    spec.dns_config = Some(PodDNSConfig {
        nameservers: Some(nameservers),
        searches: Some(searches),
        options: Some(options),
    });
}

/// The host Secret holding the virtual service-account token of the host
/// pod `host_pod_name`. The dot keeps it apart from every translated name,
/// which is a DNS label.
pub fn token_secret_name(host_pod_name: &str) -> String {
    format!("{host_pod_name}.sa-token")
}

/// The host Secret shared by the pods of `namespace` that read a token of
/// `src` (service account, audience, lifetime) in [`TokenMode::Shared`]. The
/// dot keeps it apart from every translated name, the suffix from every
/// per-pod token Secret.
pub fn shared_token_secret_name(vc: &VclusterName, namespace: &str, src: &TokenSource) -> String {
    let key = format!(
        "{}\n{}",
        src.audience.as_deref().unwrap_or_default(),
        src.expiration_seconds
    );
    format!(
        "{}.sa-token-{}",
        host_name(vc, namespace, &src.service_account),
        sha256_hex(key.as_bytes(), 4)
    )
}

/// Annotation on host pods that read a virtual service-account token: the
/// host Secret they read it from (fixed at creation, as volumes are).
pub const TOKEN_SECRET_ANNOTATION: &str = "vcluster.dev/token-secret";

/// The token Secret an existing host pod reads: its annotation's, else (a pod
/// written before the annotation) the per-pod Secret of its name.
pub fn read_token_secret(host_pod: &Pod) -> String {
    let meta = &host_pod.metadata;
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(TOKEN_SECRET_ANNOTATION))
        .cloned()
        .unwrap_or_else(|| token_secret_name(meta.name.as_deref().unwrap_or_default()))
}

/// The host Secret a new host copy of `pod` reads its service-account token from.
pub fn pod_token_secret_name(vc: &VclusterName, pod: &Pod, mode: TokenMode) -> String {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    match (mode, token_source(pod)) {
        (TokenMode::Shared, Some(src)) => shared_token_secret_name(vc, namespace, &src),
        _ => token_secret_name(&host_name(vc, namespace, name)),
    }
}

/// The key of the token in that Secret.
pub const TOKEN_KEY: &str = "token";

/// A pod's request for a service-account token (its projected source).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSource {
    /// The service account.
    pub service_account: String,
    /// Requested lifetime.
    pub expiration_seconds: i64,
    /// Requested audience, if any.
    pub audience: Option<String>,
}

/// The service-account token the pod asks for, if any (the first projected
/// serviceAccountToken source; the virtual admission plugin adds one unless
/// automounting is off).
pub fn token_source(pod: &Pod) -> Option<TokenSource> {
    let spec = pod.spec.as_ref()?;
    let src = spec
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.projected.as_ref())
        .flat_map(|p| p.sources.iter().flatten())
        .find_map(|s| s.service_account_token.as_ref())?;
    Some(TokenSource {
        service_account: spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".to_owned()),
        expiration_seconds: src.expiration_seconds.unwrap_or(3607),
        audience: src.audience.clone(),
    })
}

/// The ConfigMaps and Secrets a pod needs, by virtual name. Optional
/// references are listed separately: the pod does not wait for them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct References {
    /// Required ConfigMaps.
    pub configmaps: BTreeSet<String>,
    /// Required Secrets.
    pub secrets: BTreeSet<String>,
    /// Optional ConfigMaps.
    pub optional_configmaps: BTreeSet<String>,
    /// Optional Secrets.
    pub optional_secrets: BTreeSet<String>,
    /// Claims (a generic ephemeral volume's among them).
    pub claims: BTreeSet<String>,
}

impl References {
    fn cm(&mut self, name: &str, optional: Option<bool>) {
        if optional == Some(true) {
            self.optional_configmaps.insert(name.to_owned());
        } else {
            self.configmaps.insert(name.to_owned());
        }
    }

    fn secret(&mut self, name: &str, optional: Option<bool>) {
        if optional == Some(true) {
            self.optional_secrets.insert(name.to_owned());
        } else {
            self.secrets.insert(name.to_owned());
        }
    }

    /// True when the pod refers to ConfigMap `name` in any way.
    pub fn uses_configmap(&self, name: &str) -> bool {
        self.configmaps.contains(name) || self.optional_configmaps.contains(name)
    }

    /// True when the pod refers to Secret `name` in any way.
    pub fn uses_secret(&self, name: &str) -> bool {
        self.secrets.contains(name) || self.optional_secrets.contains(name)
    }
}

fn all_containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
}

/// The claim the ephemeral-volume controller makes for volume `volume` of
/// pod `pod`.
pub fn ephemeral_claim_name(pod: &str, volume: &str) -> String {
    format!("{pod}-{volume}")
}

/// Everything `pod` references.
pub fn references(pod: &Pod) -> References {
    let mut r = References::default();
    let Some(spec) = &pod.spec else { return r };
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    for v in spec.volumes.iter().flatten() {
        if let Some(c) = &v.persistent_volume_claim {
            r.claims.insert(c.claim_name.clone());
        }
        if v.ephemeral.is_some() {
            r.claims.insert(ephemeral_claim_name(pod_name, &v.name));
        }
        if let Some(cm) = &v.config_map {
            r.cm(&cm.name, cm.optional);
        }
        if let Some(s) = &v.secret
            && let Some(n) = &s.secret_name
        {
            r.secret(n, s.optional);
        }
        for src in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(cm) = &src.config_map {
                r.cm(&cm.name, cm.optional);
            }
            if let Some(s) = &src.secret {
                r.secret(&s.name, s.optional);
            }
        }
    }
    for c in all_containers(spec) {
        for e in c.env.iter().flatten() {
            if let Some(from) = &e.value_from {
                if let Some(k) = &from.config_map_key_ref {
                    r.cm(&k.name, k.optional);
                }
                if let Some(k) = &from.secret_key_ref {
                    r.secret(&k.name, k.optional);
                }
            }
        }
        for ef in c.env_from.iter().flatten() {
            if let Some(k) = &ef.config_map_ref {
                r.cm(&k.name, k.optional);
            }
            if let Some(k) = &ef.secret_ref {
                r.secret(&k.name, k.optional);
            }
        }
    }
    for s in spec.image_pull_secrets.iter().flatten() {
        // The kubelet tolerates a missing pull secret: do not wait for it.
        r.secret(&s.name, Some(true));
    }
    r
}

/// Field paths of the downward API that must resolve to virtual values.
fn virtual_field(path: &str) -> Option<String> {
    let ann = match path {
        "metadata.name" => NAME_ANNOTATION,
        "metadata.namespace" => NAMESPACE_ANNOTATION,
        "metadata.uid" => UID_ANNOTATION,
        _ => return None,
    };
    Some(format!("metadata.annotations['{ann}']"))
}

fn rewrite_field(sel: &mut ObjectFieldSelector) {
    if let Some(p) = virtual_field(&sel.field_path) {
        sel.field_path = p;
    }
}

struct Renamer<'a> {
    vc: &'a VclusterName,
    namespace: &'a str,
    pod: &'a str,
    token_secret: String,
}

impl Renamer<'_> {
    fn name(&self, n: &mut String) {
        *n = host_name(self.vc, self.namespace, n);
    }

    fn env(&self, env: &mut [EnvVar]) {
        for e in env {
            if let Some(from) = &mut e.value_from {
                if let Some(k) = &mut from.config_map_key_ref {
                    self.name(&mut k.name);
                }
                if let Some(k) = &mut from.secret_key_ref {
                    self.name(&mut k.name);
                }
                if let Some(f) = &mut from.field_ref {
                    rewrite_field(f);
                }
            }
        }
    }

    fn container(&self, c: &mut Container) {
        self.env(c.env.as_deref_mut().unwrap_or_default());
        for ef in c.env_from.iter_mut().flatten() {
            if let Some(k) = &mut ef.config_map_ref {
                self.name(&mut k.name);
            }
            if let Some(k) = &mut ef.secret_ref {
                self.name(&mut k.name);
            }
        }
    }

    /// Rewrites a volume.
    fn volume(&self, v: &mut Volume) {
        if let Some(c) = &mut v.persistent_volume_claim {
            self.name(&mut c.claim_name);
        }
        if v.ephemeral.take().is_some() {
            v.persistent_volume_claim = Some(PersistentVolumeClaimVolumeSource {
                claim_name: host_name(
                    self.vc,
                    self.namespace,
                    &ephemeral_claim_name(self.pod, &v.name),
                ),
                read_only: None,
            });
        }
        if let Some(cm) = &mut v.config_map {
            self.name(&mut cm.name);
        }
        if let Some(s) = &mut v.secret
            && let Some(n) = &mut s.secret_name
        {
            self.name(n);
        }
        if let Some(d) = &mut v.downward_api {
            for item in d.items.iter_mut().flatten() {
                if let Some(f) = &mut item.field_ref {
                    rewrite_field(f);
                }
            }
        }
        if let Some(p) = &mut v.projected
            && let Some(sources) = &mut p.sources
        {
            for src in sources.iter_mut() {
                if let Some(t) = src.service_account_token.take() {
                    src.secret = Some(SecretProjection {
                        name: self.token_secret.clone(),
                        items: Some(vec![KeyToPath {
                            key: TOKEN_KEY.to_owned(),
                            path: t.path,
                            mode: None,
                        }]),
                        optional: Some(false),
                    });
                    continue;
                }
                if let Some(cm) = &mut src.config_map {
                    self.name(&mut cm.name);
                }
                if let Some(s) = &mut src.secret {
                    self.name(&mut s.name);
                }
                if let Some(d) = &mut src.downward_api {
                    for item in d.items.iter_mut().flatten() {
                        if let Some(f) = &mut item.field_ref {
                            rewrite_field(f);
                        }
                    }
                }
            }
        }
    }
}

fn set_api_env(c: &mut Container, api: &ApiEndpoint) {
    let env = c.env.get_or_insert_default();
    for (name, value) in [
        ("KUBERNETES_SERVICE_HOST", api.host.clone()),
        ("KUBERNETES_SERVICE_PORT", api.port.to_string()),
    ] {
        if !env.iter().any(|e| e.name == name) {
            env.push(EnvVar {
                name: name.to_owned(),
                value: Some(value),
                value_from: None,
            });
        }
    }
}

/// The environment a kubelet gives containers for the Services of their
/// namespace (service links): `<NAME>_SERVICE_HOST`, `<NAME>_SERVICE_PORT`,
/// `<NAME>_SERVICE_PORT_<PORT NAME>` and the Docker-link style `<NAME>_PORT*`
/// variables, for every Service with a cluster IP. The `kubernetes` Service of
/// `default` is left out: the API endpoint variables stand for it.
pub fn service_link_env(namespace: &str, services: &[Service]) -> Vec<EnvVar> {
    let var = |name: String, value: String| EnvVar {
        name,
        value: Some(value),
        value_from: None,
    };
    let mut sorted: Vec<&Service> = services.iter().collect();
    sorted.sort_by_key(|s| s.metadata.name.clone());
    let mut out = Vec::new();
    for svc in sorted {
        let name = svc.metadata.name.as_deref().unwrap_or_default();
        if namespace == "default" && name == "kubernetes" {
            continue;
        }
        let Some(spec) = &svc.spec else { continue };
        let Some(ip) = spec
            .cluster_ip
            .as_deref()
            .filter(|ip| !ip.is_empty() && *ip != "None")
        else {
            continue;
        };
        let ports = spec.ports.as_deref().unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        let prefix = name.to_ascii_uppercase().replace('-', "_");
        out.push(var(format!("{prefix}_SERVICE_HOST"), ip.to_owned()));
        out.push(var(
            format!("{prefix}_SERVICE_PORT"),
            first.port.to_string(),
        ));
        for p in ports {
            if let Some(pn) = p.name.as_deref().filter(|n| !n.is_empty()) {
                let pn = pn.to_ascii_uppercase().replace('-', "_");
                out.push(var(
                    format!("{prefix}_SERVICE_PORT_{pn}"),
                    p.port.to_string(),
                ));
            }
        }
        let proto = |p: &k8s_openapi::api::core::v1::ServicePort| {
            p.protocol.clone().unwrap_or_else(|| "TCP".to_owned())
        };
        out.push(var(
            format!("{prefix}_PORT"),
            format!(
                "{}://{ip}:{}",
                proto(first).to_ascii_lowercase(),
                first.port
            ),
        ));
        for p in ports {
            let pr = proto(p);
            let base = format!("{prefix}_PORT_{}_{pr}", p.port);
            out.push(var(
                base.clone(),
                format!("{}://{ip}:{}", pr.to_ascii_lowercase(), p.port),
            ));
            out.push(var(format!("{base}_PROTO"), pr.to_ascii_lowercase()));
            out.push(var(format!("{base}_PORT"), p.port.to_string()));
            out.push(var(format!("{base}_ADDR"), ip.to_owned()));
        }
    }
    out
}

/// Puts `links` before a container's own variables, except names it sets itself.
fn add_service_links(c: &mut Container, links: &[EnvVar]) {
    let own = c.env.take().unwrap_or_default();
    let mut env: Vec<EnvVar> = links
        .iter()
        .filter(|l| !own.iter().any(|e| e.name == l.name))
        .cloned()
        .collect();
    env.extend(own);
    c.env = Some(env);
}

/// The host form of virtual pod `pod` (name, namespace and ownership markers
/// are added by the sync engine). `services` are the virtual Services of the
/// pod's namespace, for its service links (when the pod keeps them on);
/// `dns`, the vcluster's DNS when the syncer serves it.
pub fn host_pod(
    vc: &VclusterName,
    pod: &Pod,
    api: &ApiEndpoint,
    services: &[Service],
    dns: Option<&ClusterDns>,
) -> Pod {
    let token_secret = pod_token_secret_name(vc, pod, api.tokens);
    host_pod_reading(vc, pod, api, services, dns, token_secret)
}

/// Whether `pod`'s containers get the Services of its namespace as
/// environment variables (`enableServiceLinks`, true unless set false).
pub fn wants_service_links(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.enable_service_links) != Some(false)
}

/// [`host_pod`] reading its service-account token from `token_secret` (an
/// existing host pod's, which cannot change).
pub fn host_pod_reading(
    vc: &VclusterName,
    pod: &Pod,
    api: &ApiEndpoint,
    services: &[Service],
    dns: Option<&ClusterDns>,
    token_secret: String,
) -> Pod {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let mut annotations = copy_unreserved(pod.metadata.annotations.as_ref());
    if token_source(pod).is_some() {
        annotations.insert(TOKEN_SECRET_ANNOTATION.to_owned(), token_secret.clone());
    }
    let r = Renamer {
        vc,
        namespace,
        pod: name,
        token_secret,
    };
    let mut spec = pod.spec.clone().unwrap_or_default();
    spec.node_name = None;
    spec.service_account_name = None;
    spec.service_account = None;
    spec.automount_service_account_token = Some(false);
    spec.enable_service_links = Some(false);
    spec.priority_class_name = None;
    spec.priority = None;
    spec.preemption_policy = None;
    if spec.hostname.is_none() && is_dns_label(name) {
        spec.hostname = Some(name.to_owned());
    }
    if let Some(dns) = dns {
        set_dns(&mut spec, namespace, dns);
    }
    for v in spec.volumes.iter_mut().flatten() {
        r.volume(v);
    }
    let links = if wants_service_links(pod) {
        service_link_env(namespace, services)
    } else {
        Vec::new()
    };
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        r.container(c);
        set_api_env(c, api);
        add_service_links(c, &links);
    }
    for s in spec.image_pull_secrets.iter_mut().flatten() {
        r.name(&mut s.name);
    }
    Pod {
        metadata: ObjectMeta {
            labels: Some(copy_unreserved(pod.metadata.labels.as_ref())),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// The status fields that come up from the host pod.
fn reported(status: Option<&PodStatus>) -> Value {
    let s = serde_json::to_value(status.cloned().unwrap_or_default()).unwrap_or(Value::Null);
    let mut out = serde_json::Map::new();
    for field in [
        "phase",
        "conditions",
        "containerStatuses",
        "initContainerStatuses",
        "ephemeralContainerStatuses",
        "podIP",
        "podIPs",
        "hostIP",
        "hostIPs",
        "startTime",
        "message",
        "reason",
    ] {
        out.insert(
            field.to_owned(),
            s.get(field).cloned().unwrap_or(Value::Null),
        );
    }
    // Conditions set only by the virtual plane (PodScheduled comes from the
    // binding) are kept by sending the host's list merged over them below.
    Value::Object(out)
}

/// A merge patch that brings the virtual pod's status in line with the host
/// pod's, or `None` when it already is.
pub fn status_up(virtual_pod: &Pod, host: &Pod) -> Option<Value> {
    let want = host.status.as_ref()?;
    let none = PodStatus::default();
    if same_reported(want, virtual_pod.status.as_ref().unwrap_or(&none)) {
        return None;
    }
    Some(json!({ "status": reported(Some(want)) }))
}

/// Whether `a` and `b` agree on every field [`reported`] brings up: the
/// typed comparison of what comparing their two `reported` values would
/// say, without serialising either (a resync compares every pod). Times
/// compare to the nanosecond where their JSON shows seconds; the API sends
/// and the caches keep whole seconds, so the two agree.
fn same_reported(a: &PodStatus, b: &PodStatus) -> bool {
    a.phase == b.phase
        && a.conditions == b.conditions
        && a.container_statuses == b.container_statuses
        && a.init_container_statuses == b.init_container_statuses
        && a.ephemeral_container_statuses == b.ephemeral_container_statuses
        && a.pod_ip == b.pod_ip
        && a.pod_ips == b.pod_ips
        && a.host_ip == b.host_ip
        && a.host_ips == b.host_ips
        && a.start_time == b.start_time
        && a.message == b.message
        && a.reason == b.reason
}

#[cfg(test)]
#[path = "pod_tests.rs"]
mod tests;
