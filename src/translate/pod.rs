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
//! - `priorityClassName`/`priority`/`preemptionPolicy` are dropped: priority
//!   classes are cluster-scoped host policy that a tenant may not pick.
//!   `runtimeClassName` passes through unchanged.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{
    Container, EnvVar, KeyToPath, ObjectFieldSelector, Pod, PodSpec, PodStatus, SecretProjection,
    Service, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use super::VclusterName;
use super::markers::{NAME_ANNOTATION, NAMESPACE_ANNOTATION, UID_ANNOTATION, copy_unreserved};
use super::names::{host_name, is_dns_label};

/// Where in-cluster clients on the host reach the virtual API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiEndpoint {
    /// Host name or IP (`KUBERNETES_SERVICE_HOST`).
    pub host: String,
    /// Port (`KUBERNETES_SERVICE_PORT`).
    pub port: u16,
}

/// The host Secret holding the virtual service-account token of the host
/// pod `host_pod_name`. The dot keeps it apart from every translated name,
/// which is a DNS label.
pub fn token_secret_name(host_pod_name: &str) -> String {
    format!("{host_pod_name}.sa-token")
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

/// Everything `pod` references.
pub fn references(pod: &Pod) -> References {
    let mut r = References::default();
    let Some(spec) = &pod.spec else { return r };
    for v in spec.volumes.iter().flatten() {
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

    /// Rewrites a volume; `false` when it must be dropped.
    fn volume(&self, v: &mut Volume) {
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
/// pod's namespace, for its service links (when the pod keeps them on).
pub fn host_pod(vc: &VclusterName, pod: &Pod, api: &ApiEndpoint, services: &[Service]) -> Pod {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let r = Renamer {
        vc,
        namespace,
        token_secret: token_secret_name(&host_name(vc, namespace, name)),
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
    for v in spec.volumes.iter_mut().flatten() {
        r.volume(v);
    }
    let links = if pod.spec.as_ref().and_then(|s| s.enable_service_links) == Some(false) {
        Vec::new()
    } else {
        service_link_env(namespace, services)
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
            annotations: Some(copy_unreserved(pod.metadata.annotations.as_ref())),
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
    let want = reported(host.status.as_ref());
    let have = reported(virtual_pod.status.as_ref());
    if want == have || host.status.is_none() {
        return None;
    }
    Some(json!({ "status": want }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vc() -> VclusterName {
        VclusterName::new("vc").unwrap()
    }

    fn api() -> ApiEndpoint {
        ApiEndpoint {
            host: "vc.team-a.svc".into(),
            port: 443,
        }
    }

    fn pod(spec: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-0", "namespace": "team", "uid": "u1",
                "labels": {"app": "web", "vcluster.dev/owner": "spoof"}},
            "spec": spec
        }))
        .unwrap()
    }

    fn full_spec() -> Value {
        json!({
            "nodeName": "somewhere",
            "serviceAccountName": "builder",
            "priorityClassName": "system-cluster-critical",
            "priority": 2000000000,
            "runtimeClassName": "gvisor",
            "imagePullSecrets": [{"name": "regcred"}],
            "volumes": [
                {"name": "cfg", "configMap": {"name": "settings"}},
                {"name": "sec", "secret": {"secretName": "creds", "optional": true}},
                {"name": "kube-api-access", "projected": {"sources": [
                    {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}
                ]}},
                {"name": "info", "downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}}
            ],
            "initContainers": [{"name": "init", "image": "busybox",
                "envFrom": [{"secretRef": {"name": "init-env"}}]}],
            "containers": [{"name": "app", "image": "nginx",
                "env": [
                    {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "a"}}},
                    {"name": "B", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "b", "optional": true}}},
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
                    {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
                ],
                "envFrom": [{"configMapRef": {"name": "more"}}]}]
        })
    }

    #[test]
    fn references_cover_every_place_a_pod_names_configs() {
        let r = references(&pod(full_spec()));
        let set = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
        assert_eq!(r.configmaps, set(&["kube-root-ca.crt", "more", "settings"]));
        assert_eq!(r.secrets, set(&["init-env"]));
        assert_eq!(r.optional_secrets, set(&["creds", "regcred"]));
        assert!(r.uses_secret("creds") && !r.uses_configmap("creds"));
    }

    #[test]
    fn host_pod_is_rewritten_for_the_host() {
        let v = vc();
        let h = host_pod(&v, &pod(full_spec()), &api(), &[]);
        let j = serde_json::to_value(&h).unwrap();
        let spec = &j["spec"];
        let n = |name: &str| host_name(&v, "team", name);
        assert_eq!(spec.get("nodeName"), None);
        assert_eq!(spec.get("serviceAccountName"), None);
        assert_eq!(spec["automountServiceAccountToken"], false);
        assert_eq!(spec["enableServiceLinks"], false);
        assert_eq!(spec.get("priorityClassName"), None);
        assert_eq!(spec.get("priority"), None);
        assert_eq!(spec["runtimeClassName"], "gvisor");
        assert_eq!(spec["hostname"], "web-0");
        assert_eq!(spec["imagePullSecrets"][0]["name"], n("regcred"));
        assert_eq!(spec["volumes"][0]["configMap"]["name"], n("settings"));
        assert_eq!(spec["volumes"][1]["secret"]["secretName"], n("creds"));
        let projected = spec["volumes"][2]["projected"]["sources"]
            .as_array()
            .unwrap();
        assert_eq!(projected.len(), 3);
        assert_eq!(projected[0].get("serviceAccountToken"), None);
        assert_eq!(
            projected[0]["secret"]["name"],
            format!("{}.sa-token", n("web-0"))
        );
        assert_eq!(projected[0]["secret"]["items"][0]["key"], "token");
        assert_eq!(projected[0]["secret"]["items"][0]["path"], "token");
        assert_eq!(projected[1]["configMap"]["name"], n("kube-root-ca.crt"));
        assert_eq!(
            projected[2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
            "metadata.annotations['vcluster.dev/namespace']"
        );
        assert_eq!(
            spec["volumes"][3]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
            "metadata.annotations['vcluster.dev/name']"
        );
        let env = &spec["containers"][0]["env"];
        assert_eq!(
            env[0]["valueFrom"]["configMapKeyRef"]["name"],
            n("settings")
        );
        assert_eq!(env[1]["valueFrom"]["secretKeyRef"]["name"], n("creds"));
        assert_eq!(
            env[2]["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.annotations['vcluster.dev/name']"
        );
        assert_eq!(
            env[3]["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.annotations['vcluster.dev/uid']"
        );
        assert_eq!(
            env[4]["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName",
            "host facts stay host facts"
        );
        assert_eq!(
            spec["containers"][0]["envFrom"][0]["configMapRef"]["name"],
            n("more")
        );
        assert_eq!(
            spec["initContainers"][0]["envFrom"][0]["secretRef"]["name"],
            n("init-env")
        );
        // Tenant labels are copied, reserved ones are not.
        assert_eq!(j["metadata"]["labels"]["app"], "web");
        assert_eq!(j["metadata"]["labels"].get("vcluster.dev/owner"), None);
    }

    #[test]
    fn api_endpoint_is_injected_unless_set_and_token_source_is_read() {
        let v = vc();
        let mut p = pod(full_spec());
        let h = serde_json::to_value(host_pod(&v, &p, &api(), &[])).unwrap();
        for c in ["containers", "initContainers"] {
            let env = h["spec"][c][0]["env"].as_array().unwrap();
            let get = |k: &str| {
                env.iter()
                    .find(|e| e["name"] == k)
                    .map(|e| e["value"].clone())
            };
            assert_eq!(
                get("KUBERNETES_SERVICE_HOST"),
                Some(json!("vc.team-a.svc")),
                "{c}"
            );
            assert_eq!(get("KUBERNETES_SERVICE_PORT"), Some(json!("443")), "{c}");
        }
        // A container that sets its own value keeps it.
        p.spec.as_mut().unwrap().containers[0]
            .env
            .as_mut()
            .unwrap()
            .push(EnvVar {
                name: "KUBERNETES_SERVICE_HOST".into(),
                value: Some("mine".into()),
                value_from: None,
            });
        let h = serde_json::to_value(host_pod(&v, &p, &api(), &[])).unwrap();
        let env = h["spec"]["containers"][0]["env"].as_array().unwrap();
        let hosts: Vec<_> = env
            .iter()
            .filter(|e| e["name"] == "KUBERNETES_SERVICE_HOST")
            .collect();
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0]["value"], "mine");

        assert_eq!(
            token_source(&p),
            Some(TokenSource {
                service_account: "builder".into(),
                expiration_seconds: 3607,
                audience: None
            })
        );
        let none = pod(json!({"containers": [{"name": "a", "image": "b"}]}));
        assert_eq!(token_source(&none), None);
    }

    #[test]
    fn service_links_match_what_a_kubelet_injects() {
        let svcs: Vec<Service> = serde_json::from_value(json!([
            {"metadata": {"name": "redis-primary"}, "spec": {"clusterIP": "10.97.0.11",
                "ports": [{"name": "redis", "port": 6379, "protocol": "TCP"}, {"port": 9121}]}},
            {"metadata": {"name": "headless"}, "spec": {"clusterIP": "None", "ports": [{"port": 80}]}},
            {"metadata": {"name": "kubernetes"}, "spec": {"clusterIP": "10.97.0.1", "ports": [{"name": "https", "port": 443}]}}
        ]))
        .unwrap();
        let env = service_link_env("default", &svcs);
        let get = |k: &str| {
            env.iter()
                .find(|e| e.name == k)
                .and_then(|e| e.value.clone())
        };
        assert_eq!(
            get("REDIS_PRIMARY_SERVICE_HOST").as_deref(),
            Some("10.97.0.11")
        );
        assert_eq!(get("REDIS_PRIMARY_SERVICE_PORT").as_deref(), Some("6379"));
        assert_eq!(
            get("REDIS_PRIMARY_SERVICE_PORT_REDIS").as_deref(),
            Some("6379")
        );
        assert_eq!(
            get("REDIS_PRIMARY_PORT").as_deref(),
            Some("tcp://10.97.0.11:6379")
        );
        assert_eq!(
            get("REDIS_PRIMARY_PORT_9121_TCP_ADDR").as_deref(),
            Some("10.97.0.11")
        );
        assert_eq!(
            get("REDIS_PRIMARY_PORT_6379_TCP_PROTO").as_deref(),
            Some("tcp")
        );
        assert!(
            get("HEADLESS_SERVICE_HOST").is_none(),
            "headless services have no links"
        );
        assert!(
            get("KUBERNETES_SERVICE_HOST").is_none(),
            "the API endpoint stands for it"
        );

        // Injected before the container's own variables, which win on a clash.
        let mut p = pod(json!({"containers": [{"name": "a", "image": "b",
            "env": [{"name": "REDIS_PRIMARY_SERVICE_PORT", "value": "1"}]}]}));
        p.metadata.namespace = Some("default".into());
        let h = host_pod(&vc(), &p, &api(), &svcs);
        let env = h.spec.unwrap().containers[0].env.clone().unwrap();
        assert_eq!(env[0].name, "REDIS_PRIMARY_SERVICE_HOST");
        let ports: Vec<_> = env
            .iter()
            .filter(|e| e.name == "REDIS_PRIMARY_SERVICE_PORT")
            .collect();
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].value.as_deref(), Some("1"));
        // A pod that turns service links off gets none.
        p.spec.as_mut().unwrap().enable_service_links = Some(false);
        let h = host_pod(&vc(), &p, &api(), &svcs);
        let env = h.spec.unwrap().containers[0].env.clone().unwrap();
        assert!(!env.iter().any(|e| e.name == "REDIS_PRIMARY_SERVICE_HOST"));
        assert_eq!(
            env.iter().filter(|e| e.name.starts_with("REDIS")).count(),
            1,
            "only its own"
        );
    }

    #[test]
    fn status_comes_up_only_when_it_differs() {
        let v = pod(json!({"containers": [{"name": "app", "image": "nginx"}]}));
        let mut h = v.clone();
        assert_eq!(status_up(&v, &h), None, "no host status yet");
        h.status = Some(
            serde_json::from_value(json!({
                "phase": "Running", "podIP": "10.244.0.7", "podIPs": [{"ip": "10.244.0.7"}],
                "hostIP": "127.0.0.1", "startTime": "2026-01-01T00:00:00Z",
                "conditions": [{"type": "Ready", "status": "True"}],
                "nominatedNodeName": "host-detail"
            }))
            .unwrap(),
        );
        let patch = status_up(&v, &h).unwrap();
        assert_eq!(patch["status"]["phase"], "Running");
        assert_eq!(patch["status"]["podIP"], "10.244.0.7");
        assert_eq!(patch["status"].get("nominatedNodeName"), None);
        let mut v2 = v.clone();
        v2.status = h.status.clone();
        assert_eq!(status_up(&v2, &h), None);
    }
}
