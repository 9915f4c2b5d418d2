//! The virtual `default/kubernetes` Service points at the vcluster's API
//! Service on the host: same cluster IP, port 443. A host pod that reaches
//! the address the virtual API shows for `kubernetes` thus reaches the
//! vcluster (through its front door), not the host's API. The virtual API
//! server creates that Service at the first address of its range; the
//! syncer re-creates it at the host Service's address (cluster IPs are
//! immutable) and checks again periodically.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use serde_json::json;

use super::{Context, delete_exact};
use crate::api::{ApiError, Created, create_if_absent};

/// Why one round failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiServiceError {
    /// An API call failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The Service could not be built.
    #[error("build a virtual Service: {0}")]
    Build(#[from] serde_json::Error),
}

fn fail(what: &'static str) -> impl FnOnce(kube::Error) -> ApiServiceError {
    move |e| ApiServiceError::Api(ApiError::new(what, e))
}

/// The cluster IP of host Service `name` in the vcluster's host namespace.
pub async fn host_ip(ctx: &Context, name: &str) -> Result<Option<String>, kube::Error> {
    let svc = Api::<Service>::namespaced(ctx.host.clone(), &ctx.names.host_namespace)
        .get_opt(name)
        .await?;
    Ok(svc
        .and_then(|s| s.spec)
        .and_then(|s| s.cluster_ip)
        .filter(|ip| !ip.is_empty() && ip != "None"))
}

/// A virtual Service the syncer keeps at the cluster IP of a host Service
/// (`default/kubernetes` at the vcluster's API Service; `kube-system/kube-dns`
/// at its DNS Service).
#[derive(Debug, Clone, Copy)]
pub struct Pinned {
    /// Its namespace.
    pub namespace: &'static str,
    /// Its name.
    pub name: &'static str,
    /// The Service at `ip`, given the one there now (whose ports it may keep).
    pub build: fn(ip: &str, current: Option<&Service>) -> serde_json::Value,
    /// Whether the Service there now may be replaced.
    pub replaceable: fn(&Service) -> bool,
}

/// The virtual `default/kubernetes` Service.
pub const KUBERNETES: Pinned = Pinned {
    namespace: "default",
    name: "kubernetes",
    build: kubernetes_service,
    replaceable: |_| true,
};

fn kubernetes_service(ip: &str, current: Option<&Service>) -> serde_json::Value {
    let target_port = current
        .and_then(|c| c.spec.as_ref())
        .and_then(|s| s.ports.as_ref())
        .and_then(|p| p.first())
        .and_then(|p| p.target_port.as_ref())
        .and_then(|tp| serde_json::to_value(tp).ok())
        .unwrap_or(json!(443));
    json!({
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "sessionAffinity": "None",
                 "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": target_port}]}
    })
}

/// Where one round of [`ensure`] left a pinned Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pin {
    /// The host Service has no cluster IP yet.
    NoHostAddress,
    /// The virtual Service has the host Service's address.
    Placed(String),
    /// The host Service has this address; the virtual Service not yet (or a
    /// tenant's Service holds the name).
    Pending(String),
}

/// One round: puts the virtual Service `p` at the host Service's address.
pub async fn ensure(ctx: &Context, host_service: &str, p: &Pinned) -> Result<Pin, ApiServiceError> {
    let Some(ip) = host_ip(ctx, host_service)
        .await
        .map_err(fail("read the vcluster's host Service"))?
    else {
        tracing::debug!(service = host_service, "no such host Service yet");
        return Ok(Pin::NoHostAddress);
    };
    let api: Api<Service> = Api::namespaced(ctx.virt.clone(), p.namespace);
    let current = api
        .get_opt(p.name)
        .await
        .map_err(fail("read a virtual Service the syncer keeps"))?;
    if let Some(cur) = &current {
        let spec = cur.spec.as_ref();
        if spec.and_then(|s| s.cluster_ip.as_deref()) == Some(ip.as_str()) {
            return Ok(Pin::Placed(ip));
        }
        if !(p.replaceable)(cur) {
            tracing::warn!(
                namespace = p.namespace,
                name = p.name,
                "a virtual Service of the tenant's holds the name: left alone"
            );
            return Ok(Pin::Pending(ip));
        }
        delete_exact(&api, p.name, cur.metadata.uid.clone(), None)
            .await
            .map_err(fail("replace a virtual Service the syncer keeps"))?;
    }
    let svc: Service = serde_json::from_value((p.build)(&ip, current.as_ref()))?;
    let created = create_if_absent(&api, &svc)
        .await
        .map_err(fail("create a virtual Service the syncer keeps"))?;
    if created == Created::AlreadyExisted {
        // The API server re-created it first: next round.
        return Ok(Pin::Pending(ip));
    }
    tracing::info!(namespace = p.namespace, name = p.name, cluster_ip = %ip, "virtual Service points at host Service {host_service}");
    Ok(Pin::Placed(ip))
}

/// Keeps the virtual Service `p` at host Service `host_service`'s address
/// until the process ends, telling `known` the host address each round it
/// is known (whether or not the virtual Service has it yet).
pub async fn run_pinned(
    ctx: Arc<Context>,
    host_service: String,
    p: Pinned,
    known: impl Fn(&str) + Send,
) {
    loop {
        let wait = match ensure(&ctx, &host_service, &p).await {
            Ok(Pin::Placed(ip)) => {
                known(&ip);
                Duration::from_secs(30)
            }
            Ok(Pin::Pending(ip)) => {
                known(&ip);
                Duration::from_secs(2)
            }
            Ok(Pin::NoHostAddress) => Duration::from_secs(2),
            Err(e) => {
                tracing::warn!(error = %e, namespace = p.namespace, name = p.name, "cannot point a virtual Service at its host Service");
                Duration::from_secs(5)
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// Keeps the virtual `kubernetes` Service at host Service `host_service`'s
/// address until the process ends.
pub async fn run(ctx: Arc<Context>, host_service: String) {
    run_pinned(ctx, host_service, KUBERNETES, |_| {}).await;
}
