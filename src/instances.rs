//! vclusters seen from the host, through the discovery contract
//! ([`crate::discovery`]): listing them, connecting to one (its `vc-<name>`
//! kubeconfig and a port-forward to its pod), and deleting one with
//! everything it owns.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams};
use kube::config::Kubeconfig;
use tracing::Instrument as _;

use crate::api::ApiError;
use crate::discovery::{self, COMPONENT_LABEL};
use crate::translate::markers::OWNER_LABEL;

/// Failures of the host-side commands; each names what to do.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// No such vcluster.
    #[error(
        "vcluster {name} not found in namespace {namespace} (no Secret vc-{name}); see `vcluster list`"
    )]
    NotFound {
        /// Its name.
        name: String,
        /// The namespace searched.
        namespace: String,
    },
    /// The vcluster exists but cannot be reached yet.
    #[error("vcluster {name} in namespace {namespace} is not ready: {why}")]
    NotReady {
        /// Its name.
        name: String,
        /// Its namespace.
        namespace: String,
        /// What is missing.
        why: String,
    },
    /// The host refused (RBAC).
    #[error("the host does not allow you to {what}: {message}")]
    Forbidden {
        /// The action.
        what: String,
        /// The API server's message.
        message: String,
    },
    /// Another API failure (its `what` reads "cannot <action>").
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The kubeconfig in the Secret is unusable, or a file failed.
    #[error("{0}")]
    Config(String),
}

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> InstanceError {
    let what = what.into();
    move |e| match e {
        kube::Error::Api(s) if s.code == 403 => InstanceError::Forbidden {
            what,
            message: s.message,
        },
        e => InstanceError::Api(ApiError::new(format!("cannot {what}"), e)),
    }
}

/// One vcluster as the host shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// Its name.
    pub name: String,
    /// Its host namespace.
    pub namespace: String,
    /// `Running`, `Pending`, `NotReady`, `Failed` or `NoPod`.
    pub state: String,
    /// Whether its kubeconfig Secret exists.
    pub kubeconfig: bool,
    /// Its sleep state, from its API Service (`None`: no Service readable).
    pub sleep: Option<crate::sleep::Recorded>,
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The state word of a control-plane pod.
pub fn pod_state(p: &Pod) -> String {
    let phase = p
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Pending".to_owned());
    if p.metadata.deletion_timestamp.is_some() {
        return "Terminating".to_owned();
    }
    match phase.as_str() {
        "Running" if pod_ready(p) => "Running".to_owned(),
        "Running" => "NotReady".to_owned(),
        other => other.to_owned(),
    }
}

/// The vclusters in `namespace` (or every namespace the caller may list).
pub async fn list(
    host: &kube::Client,
    namespace: Option<&str>,
) -> Result<Vec<Instance>, InstanceError> {
    let (pods, secrets): (Api<Pod>, Api<Secret>) = match namespace {
        Some(ns) => (
            Api::namespaced(host.clone(), ns),
            Api::namespaced(host.clone(), ns),
        ),
        None => (Api::all(host.clone()), Api::all(host.clone())),
    };
    let where_ =
        namespace.map_or_else(|| "all namespaces".to_owned(), |n| format!("namespace {n}"));
    let lp = |c: &str| ListParams::default().labels(&format!("{COMPONENT_LABEL}={c}"));
    let pods = pods
        .list(&lp(discovery::COMPONENT_CONTROL_PLANE))
        .await
        .map_err(kube_err(format!("list pods in {where_}")))?;
    let secrets = secrets
        .list(&lp(discovery::COMPONENT_KUBECONFIG))
        .await
        .map_err(kube_err(format!("list Secrets in {where_}")))?;
    let mut found: BTreeMap<(String, String), Instance> = BTreeMap::new();
    let instance = |m: &kube::api::ObjectMeta| {
        let name = m.labels.as_ref()?.get(discovery::INSTANCE_LABEL)?.clone();
        Some((m.namespace.clone().unwrap_or_default(), name))
    };
    for s in &secrets.items {
        if let Some(key) = instance(&s.metadata) {
            found.insert(
                key.clone(),
                Instance {
                    namespace: key.0,
                    name: key.1,
                    state: "NoPod".to_owned(),
                    kubeconfig: true,
                    sleep: None,
                },
            );
        }
    }
    for p in &pods.items {
        if let Some(key) = instance(&p.metadata) {
            let e = found.entry(key.clone()).or_insert_with(|| Instance {
                namespace: key.0,
                name: key.1,
                state: String::new(),
                kubeconfig: false,
                sleep: None,
            });
            // A Running pod wins over others of the same vcluster.
            let st = pod_state(p);
            if e.state != "Running" {
                e.state = st;
            }
        }
    }
    let mut out: Vec<Instance> = found.into_values().collect();
    for i in &mut out {
        let services: Api<Service> = Api::namespaced(host.clone(), &i.namespace);
        // Best effort: a user who may not read Services still gets the list.
        if let Ok(Some(svc)) = services.get_opt(&i.name).await {
            i.sleep = Some(crate::sleep::Recorded::of(&svc));
        }
    }
    Ok(out)
}

/// Puts vcluster `name` to sleep at once (`asleep`), or wakes it, by the
/// annotations on its API Service that its syncer follows.
pub async fn set_sleep(
    host: &kube::Client,
    name: &str,
    namespace: &str,
    asleep: bool,
) -> Result<(), InstanceError> {
    let services: Api<Service> = Api::namespaced(host.clone(), namespace);
    let what = format!("change Service {name} in namespace {namespace}");
    if services
        .get_opt(name)
        .await
        .map_err(kube_err(what.clone()))?
        .is_none()
    {
        return Err(InstanceError::NotFound {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
        });
    }
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let pairs = if asleep {
        crate::sleep::sleep_now(now)
    } else {
        crate::sleep::wake_now(now)
    };
    crate::sleep::write_state(&services, name, &pairs)
        .await
        .map_err(kube_err(what))
}

/// The admin kubeconfig of vcluster `name` from its `vc-<name>` Secret.
pub async fn kubeconfig(
    host: &kube::Client,
    name: &str,
    namespace: &str,
) -> Result<Kubeconfig, InstanceError> {
    let secret = discovery::kubeconfig_secret(name);
    let s = Api::<Secret>::namespaced(host.clone(), namespace)
        .get_opt(&secret)
        .await
        .map_err(kube_err(format!(
            "read Secret {secret} in namespace {namespace}"
        )))?
        .ok_or_else(|| InstanceError::NotFound {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
        })?;
    let yaml = s
        .data
        .as_ref()
        .and_then(|d| d.get(discovery::KUBECONFIG_KEY))
        .and_then(|b| std::str::from_utf8(&b.0).ok())
        .ok_or_else(|| InstanceError::NotReady {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            why: format!("Secret {secret} has no key {:?}", discovery::KUBECONFIG_KEY),
        })?;
    Kubeconfig::from_yaml(yaml).map_err(|e| {
        InstanceError::Config(format!("Secret {secret} holds an invalid kubeconfig: {e}"))
    })
}

/// The Running and Ready control-plane pod of vcluster `name`.
pub async fn ready_pod(
    host: &kube::Client,
    name: &str,
    namespace: &str,
) -> Result<String, InstanceError> {
    let pods = Api::<Pod>::namespaced(host.clone(), namespace)
        .list(&ListParams::default().labels(&discovery::control_plane_selector(name)))
        .await
        .map_err(kube_err(format!("list pods in namespace {namespace}")))?;
    let not_ready = |why: String| InstanceError::NotReady {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        why,
    };
    if let Some(p) = pods.items.iter().find(|p| pod_state(p) == "Running") {
        return Ok(p.metadata.name.clone().unwrap_or_default());
    }
    Err(match pods.items.first() {
        Some(p) => not_ready(format!(
            "pod {} is {}",
            p.metadata.name.as_deref().unwrap_or("?"),
            pod_state(p)
        )),
        None => not_ready("it has no control-plane pod".to_owned()),
    })
}

/// Renames the kubeconfig's first cluster, user and context to `context`,
/// points it at `server`, and makes that context current.
pub fn retarget(
    mut kc: Kubeconfig,
    context: &str,
    server: &str,
) -> Result<Kubeconfig, InstanceError> {
    let bad =
        || InstanceError::Config("the vcluster kubeconfig has no cluster, user or context".into());
    let cluster = kc.clusters.first_mut().ok_or_else(bad)?;
    cluster.name = context.to_owned();
    if let Some(c) = cluster.cluster.as_mut() {
        c.server = Some(server.to_owned());
    }
    kc.clusters.truncate(1);
    let user = kc.auth_infos.first_mut().ok_or_else(bad)?;
    user.name = context.to_owned();
    kc.auth_infos.truncate(1);
    let ctx = kc.contexts.first_mut().ok_or_else(bad)?;
    ctx.name = context.to_owned();
    if let Some(c) = ctx.context.as_mut() {
        c.cluster = context.to_owned();
        c.user = Some(context.to_owned());
    }
    kc.contexts.truncate(1);
    kc.current_context = Some(context.to_owned());
    Ok(kc)
}

/// Merges `add` (one cluster, user and context) into `base`, replacing
/// entries of the same names; the current context changes only if `switch`.
pub fn merge(mut base: Kubeconfig, add: Kubeconfig, switch: bool) -> Kubeconfig {
    for c in add.clusters {
        base.clusters.retain(|x| x.name != c.name);
        base.clusters.push(c);
    }
    for u in add.auth_infos {
        base.auth_infos.retain(|x| x.name != u.name);
        base.auth_infos.push(u);
    }
    for c in add.contexts {
        base.contexts.retain(|x| x.name != c.name);
        base.contexts.push(c);
    }
    if switch || base.current_context.as_deref().unwrap_or("").is_empty() {
        let previous = base.current_context.take().filter(|c| !c.is_empty());
        if let (Some(previous), Some(now)) = (previous, add.current_context.as_deref()) {
            remember_previous(&mut base, now, previous);
        }
        base.current_context = add.current_context;
    }
    base.api_version.get_or_insert_with(|| "v1".to_owned());
    base.kind.get_or_insert_with(|| "Config".to_owned());
    base
}

/// The context extension in which `connect --switch-context` keeps the context
/// that was current before, for `disconnect` to go back to.
pub const PREVIOUS_CONTEXT_EXTENSION: &str = "vcluster.dev/previous-context";

fn remember_previous(kc: &mut Kubeconfig, context: &str, previous: String) {
    if previous == context {
        return;
    }
    let Some(c) = kc
        .contexts
        .iter_mut()
        .find(|c| c.name == context)
        .and_then(|c| c.context.as_mut())
    else {
        return;
    };
    let ext = c.extensions.get_or_insert_with(Vec::new);
    ext.retain(|e| e.name != PREVIOUS_CONTEXT_EXTENSION);
    ext.push(kube::config::NamedExtension {
        name: PREVIOUS_CONTEXT_EXTENSION.to_owned(),
        extension: serde_json::Value::String(previous),
    });
}

/// The kubeconfig context `vcluster connect` writes for vcluster `name` in `namespace`.
pub fn context_name(name: &str, namespace: &str) -> String {
    format!("vcluster_{name}_{namespace}")
}

/// What `disconnect` changed in a kubeconfig.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnected {
    /// The context removed (with its cluster and user).
    pub context: String,
    /// The context now current, when the removed one was current: the one
    /// current before `connect` switched, if it still exists; else none.
    pub switched_to: Option<String>,
    /// Whether the removed context was the current one.
    pub was_current: bool,
}

/// Removes `context` (a context `connect` wrote: a vcluster context, its
/// cluster and user of the same name) from `kc`. Without a name, the current
/// context, which must be a vcluster's.
pub fn disconnect(
    kc: &mut Kubeconfig,
    context: Option<&str>,
) -> Result<Disconnected, InstanceError> {
    let current = kc.current_context.clone().filter(|c| !c.is_empty());
    let context = match (context, current.as_deref()) {
        (Some(c), _) => c.to_owned(),
        (None, Some(c)) if c.starts_with("vcluster_") => c.to_owned(),
        (None, Some(c)) => {
            return Err(InstanceError::Config(format!(
                "the current context {c} is not a vcluster's; name the vcluster: vcluster disconnect NAME -n NAMESPACE"
            )));
        }
        (None, None) => {
            return Err(InstanceError::Config(
                "no current context; name the vcluster: vcluster disconnect NAME -n NAMESPACE"
                    .to_owned(),
            ));
        }
    };
    let Some(pos) = kc.contexts.iter().position(|c| c.name == context) else {
        return Err(InstanceError::Config(format!(
            "no context {context} in this kubeconfig (see `kubectl config get-contexts`)"
        )));
    };
    let removed = kc.contexts.remove(pos);
    let previous = removed
        .context
        .as_ref()
        .and_then(|c| c.extensions.as_ref())
        .and_then(|e| e.iter().find(|e| e.name == PREVIOUS_CONTEXT_EXTENSION))
        .and_then(|e| e.extension.as_str().map(str::to_owned));
    // The cluster and user `connect` wrote carry the context's name; nothing
    // else may use them.
    let still_used = |kc: &Kubeconfig, f: fn(&kube::config::Context) -> Option<&str>| {
        kc.contexts
            .iter()
            .filter_map(|c| c.context.as_ref())
            .any(|c| f(c) == Some(context.as_str()))
    };
    if !still_used(kc, |c| Some(c.cluster.as_str())) {
        kc.clusters.retain(|c| c.name != context);
    }
    if !still_used(kc, |c| c.user.as_deref()) {
        kc.auth_infos.retain(|u| u.name != context);
    }
    let was_current = current.as_deref() == Some(context.as_str());
    let mut switched_to = None;
    if was_current {
        switched_to = previous.filter(|p| kc.contexts.iter().any(|c| &c.name == p));
        kc.current_context = Some(switched_to.clone().unwrap_or_default());
    }
    Ok(Disconnected {
        context,
        switched_to,
        was_current,
    })
}

/// Merges `add` into the kubeconfig file at `path` (created if missing).
pub fn merge_into_file(path: &Path, add: Kubeconfig, switch: bool) -> Result<(), InstanceError> {
    let base = if path.exists() {
        Kubeconfig::read_from(path)
            .map_err(|e| InstanceError::Config(format!("cannot read {}: {e}", path.display())))?
    } else {
        Kubeconfig::default()
    };
    let yaml = crate::kubeconfig::to_yaml(&merge(base, add, switch))
        .map_err(|e| InstanceError::Config(e.to_string()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| InstanceError::Config(format!("cannot create {}: {e}", dir.display())))?;
    }
    crate::kubeconfig::write_private(path, &yaml)
        .map_err(|e| InstanceError::Config(format!("cannot write {}: {e}", path.display())))
}

/// Forwards every connection accepted on `listener` to port `port` of pod
/// `pod` through the host API, until the future is dropped.
pub async fn forward(
    host: &kube::Client,
    namespace: &str,
    pod: &str,
    port: u16,
    listener: tokio::net::TcpListener,
) -> Result<(), InstanceError> {
    let pods: Api<Pod> = Api::namespaced(host.clone(), namespace);
    // Check once up front, so a missing permission is reported at once.
    let first = pods
        .portforward(pod, &[port])
        .await
        .map_err(kube_err(format!(
            "port-forward to pod {pod} in namespace {namespace}"
        )))?;
    let mut spare = Some(first);
    loop {
        let (mut conn, peer) = listener
            .accept()
            .await
            .map_err(|e| InstanceError::Config(format!("local listener failed: {e}")))?;
        let pf = match spare.take() {
            Some(pf) => Ok(pf),
            None => pods.portforward(pod, &[port]).await,
        };
        let mut pf = match pf {
            Ok(pf) => pf,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "port-forward failed");
                continue;
            }
        };
        let copy = async move {
            let Some(mut upstream) = pf.take_stream(port) else {
                return;
            };
            if let Err(e) = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await {
                tracing::debug!(%peer, error = %e, "forwarded connection ended");
            }
            drop(upstream);
            let _ = pf.join().await;
        };
        tokio::spawn(copy.instrument(tracing::info_span!("port-forward", %peer, pod, port)));
    }
}

/// Binds the local end of `vcluster connect` on 127.0.0.1.
pub async fn bind_local(port: u16) -> Result<(tokio::net::TcpListener, SocketAddr), InstanceError> {
    let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| InstanceError::Config(format!("cannot listen on 127.0.0.1:{port}: {e}")))?;
    let addr = l
        .local_addr()
        .map_err(|e| InstanceError::Config(format!("local listener: {e}")))?;
    Ok((l, addr))
}

/// The kinds `vcluster delete` removes, workloads first (so nothing
/// recreates what follows).
const OWNED_KINDS: &[(&str, &str, &str, &str)] = &[
    ("apps", "v1", "StatefulSet", "statefulsets"),
    ("apps", "v1", "Deployment", "deployments"),
    ("", "v1", "Pod", "pods"),
    ("", "v1", "Service", "services"),
    ("", "v1", "Endpoints", "endpoints"),
    ("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
    ("networking.k8s.io", "v1", "Ingress", "ingresses"),
    ("", "v1", "ConfigMap", "configmaps"),
    ("", "v1", "Secret", "secrets"),
    ("", "v1", "ServiceAccount", "serviceaccounts"),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "RoleBinding",
        "rolebindings",
    ),
    ("rbac.authorization.k8s.io", "v1", "Role", "roles"),
    ("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
];

/// The label selectors of everything vcluster `name` owns: its own objects,
/// the objects its syncer created, and its Helm release records.
pub fn owned_selectors(name: &str) -> [String; 3] {
    [
        discovery::instance_selector(name),
        format!("{OWNER_LABEL}={name}"),
        format!("owner=helm,name={name}"),
    ]
}

/// What `vcluster delete` did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Deleted {
    /// How many objects were deleted, per kind.
    pub kinds: Vec<(String, usize)>,
    /// How many claims (the tenant's data, and the control plane's) were
    /// kept because volumes were not to be deleted.
    pub kept_claims: usize,
}

/// Deletes vcluster `name` in `namespace` and everything it owns, its
/// PersistentVolumeClaims only with `delete_volumes` (otherwise they are
/// counted and kept, with their data).
pub async fn delete(
    host: &kube::Client,
    name: &str,
    namespace: &str,
    delete_volumes: bool,
) -> Result<Deleted, InstanceError> {
    let mut deleted = Deleted::default();
    let mut total = 0;
    for (group, version, kind, plural) in OWNED_KINDS {
        let ar =
            ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
        let api: Api<DynamicObject> = Api::namespaced_with(host.clone(), namespace, &ar);
        let mut n = 0;
        for selector in owned_selectors(name) {
            // Helm's release records are Secrets only.
            if selector.starts_with("owner=helm") && *kind != "Secret" {
                continue;
            }
            let lp = ListParams::default().labels(&selector);
            let found = match api.list_metadata(&lp).await {
                Ok(l) => l.items.len(),
                Err(kube::Error::Api(s)) if s.code == 404 => continue,
                Err(e) => {
                    return Err(kube_err(format!("list {plural} in namespace {namespace}"))(
                        e,
                    ));
                }
            };
            if found == 0 {
                continue;
            }
            if *kind == "PersistentVolumeClaim" && !delete_volumes {
                deleted.kept_claims += found;
                continue;
            }
            api.delete_collection(&DeleteParams::background(), &lp)
                .await
                .map_err(kube_err(format!(
                    "delete {plural} in namespace {namespace}"
                )))?;
            n += found;
        }
        if n > 0 {
            total += n;
            deleted.kinds.push(((*kind).to_owned(), n));
        }
    }
    if total == 0 && deleted.kept_claims == 0 {
        return Err(InstanceError::NotFound {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
        });
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kc(name: &str, server: &str) -> Kubeconfig {
        crate::kubeconfig::client_cert(name, server, "CA", "CERT", "KEY")
    }

    #[test]
    fn retarget_renames_and_points_at_the_local_end() {
        let k = retarget(
            kc("vcluster-dev", "https://dev.ns.svc:443"),
            "vcluster_dev_ns",
            "https://127.0.0.1:5000",
        )
        .unwrap();
        assert_eq!(k.current_context.as_deref(), Some("vcluster_dev_ns"));
        assert_eq!(k.clusters[0].name, "vcluster_dev_ns");
        assert_eq!(
            k.clusters[0].cluster.as_ref().unwrap().server.as_deref(),
            Some("https://127.0.0.1:5000")
        );
        let ctx = k.contexts[0].context.as_ref().unwrap();
        assert_eq!(
            (ctx.cluster.as_str(), ctx.user.as_deref()),
            ("vcluster_dev_ns", Some("vcluster_dev_ns"))
        );
        assert!(retarget(Kubeconfig::default(), "x", "y").is_err());
    }

    #[test]
    fn merge_replaces_same_names_and_switches_only_when_asked() {
        let base = kc("host", "https://h");
        let add = retarget(kc("a", "https://a"), "vc", "https://1").unwrap();
        let m = merge(base.clone(), add.clone(), false);
        assert_eq!(m.current_context.as_deref(), Some("host"));
        assert_eq!(m.contexts.len(), 2);
        let again = retarget(kc("a", "https://a"), "vc", "https://2").unwrap();
        let m = merge(m, again, true);
        assert_eq!(m.current_context.as_deref(), Some("vc"));
        assert_eq!(m.clusters.len(), 2);
        let vc = m.clusters.iter().find(|c| c.name == "vc").unwrap();
        assert_eq!(
            vc.cluster.as_ref().unwrap().server.as_deref(),
            Some("https://2")
        );
        // Into an empty file: the new context becomes current.
        let m = merge(Kubeconfig::default(), add, false);
        assert_eq!(m.current_context.as_deref(), Some("vc"));
    }

    #[test]
    fn disconnect_removes_what_connect_wrote_and_goes_back() {
        let mut host = kc("host", "https://host:6443");
        host.current_context = Some("host".to_owned());
        let vc = retarget(
            kc("x", "https://in-cluster"),
            "vcluster_a_team",
            "https://127.0.0.1:1",
        )
        .unwrap();
        let mut merged = merge(host, vc, true);
        assert_eq!(merged.current_context.as_deref(), Some("vcluster_a_team"));
        let d = disconnect(&mut merged, None).unwrap();
        assert_eq!(
            d,
            Disconnected {
                context: "vcluster_a_team".to_owned(),
                switched_to: Some("host".to_owned()),
                was_current: true
            }
        );
        assert_eq!(merged.current_context.as_deref(), Some("host"));
        let names = |k: &Kubeconfig| {
            (
                k.contexts
                    .iter()
                    .map(|c| c.name.clone())
                    .collect::<Vec<_>>(),
                k.clusters
                    .iter()
                    .map(|c| c.name.clone())
                    .collect::<Vec<_>>(),
                k.auth_infos
                    .iter()
                    .map(|c| c.name.clone())
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            names(&merged),
            (
                vec!["host".to_owned()],
                vec!["host".to_owned()],
                vec!["host".to_owned()]
            )
        );
        // Again: a clear mistake; the current one is the host's.
        let err = disconnect(&mut merged, None).unwrap_err().to_string();
        assert!(err.contains("not a vcluster's"), "{err}");
        let err = disconnect(&mut merged, Some("vcluster_a_team"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no context vcluster_a_team"), "{err}");
        assert_eq!(merged.current_context.as_deref(), Some("host"));
    }

    #[test]
    fn disconnect_of_another_context_leaves_the_current_one() {
        let mut host = kc("host", "https://host:6443");
        host.current_context = Some("host".to_owned());
        let vc = retarget(kc("x", "https://in"), "vcluster_b_ns", "https://h").unwrap();
        let mut merged = merge(host, vc, false);
        let d = disconnect(&mut merged, Some("vcluster_b_ns")).unwrap();
        assert!(!d.was_current);
        assert_eq!(merged.current_context.as_deref(), Some("host"));
        assert_eq!(merged.contexts.len(), 1);
    }

    #[test]
    fn owned_selectors_cover_instance_synced_and_helm() {
        let s = owned_selectors("vc1");
        assert_eq!(s[0], "vcluster.dev/instance=vc1");
        assert_eq!(s[1], "vcluster.dev/owner=vc1");
        assert_eq!(s[2], "owner=helm,name=vc1");
    }
}
