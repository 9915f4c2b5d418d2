//! Services: copied to the host with selectors confined to the tenant's own
//! pods (see [`crate::translate::service`]). The host's cluster IP and node
//! ports are brought back into the virtual Service, so host pods reach a
//! Service at the address the virtual API shows; a LoadBalancer's status
//! comes up. The virtual `default/kubernetes` Service is not synced (see
//! [`super::apiservice`]). A Service of a type the vcluster may not create
//! ([`ServiceTypes`]) is refused: a Warning event and nothing on the host.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::EventType;
use tracing::Instrument as _;

use super::cache::Cache;
use super::{Assembly, Context, Decision, KindSpec, Names, Rule, Side, SyncError, delete_exact};
use crate::policy::service_types::ServiceTypes;
use crate::translate::service::{
    Parity, allocation_conflict, host_service, is_external_name, is_kept_by_syncer, parity,
    selector, status_up, without_allocations,
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
                // The tenant's own Endpoints of a selector-less Service: the
                // virtual endpoints controller deletes the Endpoints of a
                // Service it finds gone, which the replacement below makes it
                // see; they are put back (see `keep_tenant_endpoints`).
                let endpoints: Api<Endpoints> = Api::namespaced(ctx.virt.clone(), &ns);
                let kept = if selector(v).is_none() && !is_external_name(v) {
                    endpoints
                        .get_opt(&v.name_any())
                        .await
                        .map_err(err("read the Endpoints of", v))?
                } else {
                    None
                };
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
                // Kept from now on, whether the replacement or the restored
                // original ends up holding the name.
                if let Some(kept) = kept {
                    let name = v.name_any();
                    tokio::spawn(
                        keep_tenant_endpoints(
                            endpoints,
                            api.clone(),
                            kept,
                            v.uid(),
                            ENDPOINTS_KEPT_FOR,
                        )
                        .instrument(
                            tracing::info_span!("keep-endpoints", namespace = %ns, name = %name),
                        ),
                    );
                }
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

/// How long after a Service is replaced its tenant-written Endpoints are put
/// back if they go: the virtual endpoints controller deletes them at most once,
/// when it handles the Service's deletion, which is soon unless the virtual
/// control plane is very busy.
const ENDPOINTS_KEPT_FOR: Duration = Duration::from_secs(60);

/// `kept` (a tenant's Endpoints) as it would be created anew: its content,
/// without its identity, and without owner references to the replaced
/// Service `old_service` (whose garbage collection would take it again).
fn endpoints_to_restore(kept: &Endpoints, old_service: Option<&str>) -> Endpoints {
    let m = &kept.metadata;
    let owners: Vec<_> = m
        .owner_references
        .iter()
        .flatten()
        .filter(|o| Some(o.uid.as_str()) != old_service)
        .cloned()
        .collect();
    Endpoints {
        metadata: ObjectMeta {
            name: m.name.clone(),
            namespace: m.namespace.clone(),
            labels: m.labels.clone(),
            annotations: m.annotations.clone(),
            owner_references: (!owners.is_empty()).then_some(owners),
            ..ObjectMeta::default()
        },
        subsets: kept.subsets.clone(),
    }
}

/// Keeps a tenant's Endpoints through the replacement of their selector-less
/// Service (at the host's cluster IP): the virtual endpoints controller, which
/// handles the old Service's deletion, deletes the Endpoints of a Service it
/// does not find, and may do so before it sees the replacement. For `window`
/// after the replacement, the Endpoints are followed (so a change the tenant
/// makes meanwhile is what comes back) and created again from their last
/// content when they go. A deletion by the tenant inside the window is undone
/// too; after it, Endpoints are the tenant's alone again.
async fn keep_tenant_endpoints(
    api: Api<Endpoints>,
    services: Api<Service>,
    mut kept: Endpoints,
    old_service: Option<String>,
    window: Duration,
) {
    use futures::StreamExt as _;
    use kube::runtime::{WatchStreamExt as _, watcher};
    let name = kept.name_any();
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let follow = async {
        let mut events = watcher(api.clone(), config).default_backoff().boxed();
        let mut listed = false;
        while let Some(ev) = events.next().await {
            let gone = match ev {
                Ok(watcher::Event::Apply(e)) => {
                    kept = e;
                    false
                }
                Ok(watcher::Event::InitApply(e)) => {
                    (kept, listed) = (e, true);
                    false
                }
                Ok(watcher::Event::Init) => {
                    listed = false;
                    false
                }
                Ok(watcher::Event::Delete(_)) => true,
                // A list without it: gone before the watch began.
                Ok(watcher::Event::InitDone) => !listed,
                Err(_) => false,
            };
            if gone {
                if !service_stays(&services, &name).await {
                    // The tenant deleted the Service itself: its Endpoints go with it.
                    return;
                }
                let again = endpoints_to_restore(&kept, old_service.as_deref());
                match api.create(&PostParams::default(), &again).await {
                    Ok(_) => tracing::info!(
                        "the tenant's Endpoints put back after the Service was replaced"
                    ),
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => tracing::warn!(error = %e, "cannot put the tenant's Endpoints back"),
                }
            }
        }
    };
    let _ = tokio::time::timeout(window, follow).await;
}

/// Whether Service `name` is there, waiting up to 2 s for it (the replacement
/// may still be on its way when its Endpoints go); false when it is gone for
/// good, or cannot be read.
async fn service_stays(services: &Api<Service>, name: &str) -> bool {
    for _ in 0..10 {
        match services.get_opt(name).await {
            Ok(Some(s)) if s.metadata.deletion_timestamp.is_none() => return true,
            Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(_) => return false,
        }
    }
    false
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
