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
    #[error("build the kubernetes Service: {0}")]
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

/// One round: true when the virtual Service now has the host's address.
pub async fn ensure(ctx: &Context, host_service: &str) -> Result<bool, ApiServiceError> {
    let Some(ip) = host_ip(ctx, host_service)
        .await
        .map_err(fail("read the vcluster's host Service"))?
    else {
        tracing::debug!(
            service = host_service,
            "no vcluster Service on the host yet"
        );
        return Ok(false);
    };
    let api: Api<Service> = Api::namespaced(ctx.virt.clone(), "default");
    let current = api
        .get_opt("kubernetes")
        .await
        .map_err(fail("read the virtual kubernetes Service"))?;
    let mut target_port = json!(443);
    if let Some(cur) = &current {
        let spec = cur.spec.as_ref();
        if spec.and_then(|s| s.cluster_ip.as_deref()) == Some(ip.as_str()) {
            return Ok(true);
        }
        if let Some(tp) = spec
            .and_then(|s| s.ports.as_ref())
            .and_then(|p| p.first())
            .and_then(|p| p.target_port.as_ref())
        {
            target_port = serde_json::to_value(tp).unwrap_or(target_port);
        }
        delete_exact(&api, "kubernetes", cur.metadata.uid.clone(), None)
            .await
            .map_err(fail("replace the virtual kubernetes Service"))?;
    }
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "sessionAffinity": "None",
                 "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": target_port}]}
    }))?;
    let created = create_if_absent(&api, &svc)
        .await
        .map_err(fail("create the virtual kubernetes Service"))?;
    if created == Created::AlreadyExisted {
        // The API server re-created it first: next round.
        return Ok(false);
    }
    tracing::info!(cluster_ip = %ip, "virtual kubernetes Service points at the vcluster Service");
    Ok(true)
}

/// Keeps the virtual `kubernetes` Service at host Service `host_service`'s
/// address until the process ends.
pub async fn run(ctx: Arc<Context>, host_service: String) {
    loop {
        let wait = match ensure(&ctx, &host_service).await {
            Ok(true) => Duration::from_secs(30),
            Ok(false) => Duration::from_secs(2),
            Err(e) => {
                tracing::warn!(error = %e, "cannot point the virtual kubernetes Service at the vcluster");
                Duration::from_secs(5)
            }
        };
        tokio::time::sleep(wait).await;
    }
}
