//! Services: copied to the host with selectors confined to the tenant's own
//! pods (see [`crate::translate::service`]). The host's cluster IP and node
//! ports are brought back into the virtual Service, so host pods reach a
//! Service at the address the virtual API shows; a LoadBalancer's status
//! comes up. The virtual `default/kubernetes` Service is not synced (see
//! [`super::apiservice`]). A Service of a type the vcluster may not create
//! ([`ServiceTypes`]) is refused: a Warning event and nothing on the host.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::EventType;

use super::cache::Cache;
use super::{Assembly, Context, Decision, KindSpec, Names, Rule, Side, SyncError, delete_exact};
use crate::policy::service_types::ServiceTypes;
use crate::translate::service::{
    Parity, allocation_conflict, host_service, is_kept_by_syncer, parity, status_up,
    without_allocations,
};

/// The Service rule.
#[derive(Debug)]
pub struct ServiceRule {
    virtual_services: Cache<Service>,
    types: ServiceTypes,
}

impl ServiceRule {
    /// A rule that checks the virtual cache before taking an address and
    /// syncs only Services of the allowed `types`.
    pub fn new(virtual_services: Cache<Service>, types: ServiceTypes) -> Self {
        Self {
            virtual_services,
            types,
        }
    }

    /// True when another virtual Service holds `ip`.
    fn ip_taken(&self, v: &Service, ip: &str) -> bool {
        self.virtual_services
            .find(|s| {
                s.uid() != v.uid()
                    && s.spec
                        .as_ref()
                        .and_then(|s| s.cluster_ips.as_ref())
                        .is_some_and(|ips| ips.iter().any(|i| i == ip))
            })
            .is_some()
    }
}

fn err(action: &'static str, v: &Service) -> impl FnOnce(kube::Error) -> SyncError + use<> {
    super::err_for(action, "Service", v)
}

impl Rule for ServiceRule {
    type V = Service;
    type H = Service;
    const KIND: &'static str = "Service";

    fn decide(&self, names: &Names, v: &Service, h: Option<&Service>) -> Decision<Service> {
        if is_kept_by_syncer(v) || v.metadata.deletion_timestamp.is_some() {
            return Decision::REMOVE;
        }
        if let Err(r) = self.types.check(v) {
            return Decision::Reject(r.reason, r.message);
        }
        match host_service(&names.vc, v, h) {
            Ok(s) => Decision::Sync(s),
            Err(r) => Decision::Reject(r.reason, r.message),
        }
    }

    fn on_rejected(
        &self,
        desired: &Service,
        h: Option<&Service>,
        message: &str,
    ) -> Option<Service> {
        allocation_conflict(message).then(|| without_allocations(desired, h))
    }

    async fn after_sync(
        &self,
        ctx: &Context,
        v: &Service,
        h: &Service,
    ) -> Result<Option<Duration>, SyncError> {
        let ns = v.namespace().unwrap_or_default();
        let api: Api<Service> = Api::namespaced(ctx.virt.clone(), &ns);
        match parity(v, h) {
            Parity::InSync => Ok(None),
            Parity::Patch(p) => {
                api.patch(&v.name_any(), &PatchParams::default(), &Patch::Merge(&p))
                    .await
                    .map_err(err("align node ports of", v))?;
                Ok(None)
            }
            Parity::Recreate(replacement) => {
                let ip = h
                    .spec
                    .as_ref()
                    .and_then(|s| s.cluster_ip.clone())
                    .unwrap_or_default();
                if self.ip_taken(v, &ip) {
                    let note = format!(
                        "the host gave this Service cluster IP {ip}, which another Service of this virtual cluster holds; it keeps its own address, which host pods cannot reach"
                    );
                    ctx.event(v, EventType::Warning, "ClusterIPMismatch", note)
                        .await;
                    return Ok(Some(Duration::from_secs(60)));
                }
                // The cluster IP is immutable: replace the virtual Service
                // with one at the host's address (the engine keeps the host
                // copy while the replacement is created).
                if !delete_exact(&api, &v.name_any(), v.uid(), None)
                    .await
                    .map_err(err("replace", v))?
                {
                    return Ok(None);
                }
                tracing::info!(namespace = %ns, name = %v.name_any(), cluster_ip = %ip, "virtual Service re-created at the host's cluster IP");
                if let Err(e) = api.create(&PostParams::default(), &replacement).await {
                    // Put the Service back as it was (the virtual API picks an address).
                    let mut original = (*replacement).clone();
                    if let Some(spec) = original.spec.as_mut() {
                        spec.cluster_ip = None;
                        spec.cluster_ips = None;
                    }
                    api.create(&PostParams::default(), &original)
                        .await
                        .map_err(err("restore", v))?;
                    return Err(err("re-create at the host's address", v)(e));
                }
                Ok(None)
            }
        }
    }

    fn status_up(&self, v: &Service, h: &Service) -> Option<serde_json::Value> {
        status_up(v, h)
    }
}

/// Services (and the virtual `default/kubernetes` Service's address, and the
/// virtual API's service range).
pub const KIND: KindSpec = KindSpec {
    name: "services",
    needs: &[],
    because: "",
    needs_waived_by_all_configs: false,
    register,
};

fn register(a: &mut Assembly) {
    let services = a.cache(Side::Virtual);
    a.engine(ServiceRule::new(
        services,
        a.settings().service_types.clone(),
    ));
    let ctx = a.ctx();
    let (api_service, every) = (a.settings().api_service.clone(), a.settings().resync);
    a.spawn(
        "api-service",
        super::apiservice::run(Arc::clone(&ctx), api_service),
    );
    a.spawn("service-cidr", super::cidr::run(ctx, every));
}

#[cfg(test)]
#[path = "tests/services.rs"]
mod tests;
