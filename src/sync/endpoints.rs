//! Endpoints and EndpointSlices the tenant writes for its selector-less
//! Services go down, with pod references translated and only the addresses
//! the endpoint policy allows ([`crate::policy::endpoints`]: this vcluster's
//! own pods, the allowed CIDRs); the others are dropped and named in a
//! Warning event. Those of Services with a selector are derived on each side
//! by its own control plane from the synced pods, so they never go down;
//! neither do those of a Service the Service type policy refuses.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::runtime::events::EventType;

use super::addresses::AddressIndex;
use super::cache::Cache;
use super::{Assembly, Context, Decision, KindSpec, Names, Rule, Side, SyncError};
use crate::policy::endpoints::{EndpointPolicy, warning};
use crate::policy::service_types::ServiceTypes;
use crate::translate::service::{
    derived_slice, host_endpoint_slice, host_endpoints, is_api_service, is_kept_by_syncer,
    selector, slice_service,
};
use crate::translate::{Refusal, VirtualKey};

/// What both endpoint rules read.
#[derive(Debug, Clone)]
pub struct EndpointSources {
    /// Virtual Services.
    pub services: Cache<Service>,
    /// The Service types synced.
    pub types: ServiceTypes,
    /// The address policy.
    pub policy: EndpointPolicy,
    /// This vcluster's pod IPs and the host's ranges.
    pub addresses: Arc<AddressIndex>,
}

impl EndpointSources {
    /// Whether endpoints of Service `name` in `namespace` are the tenant's to give.
    pub fn tenant_managed(&self, namespace: &str, name: &str) -> bool {
        !is_api_service(Some(namespace), name)
            && self.services.get(name, Some(namespace)).is_some_and(|s| {
                selector(&s).is_none() && self.types.check(&s).is_ok() && !is_kept_by_syncer(&s)
            })
    }

    async fn warn_refused<K: kube::Resource<DynamicType = ()>>(
        &self,
        ctx: &Context,
        v: &K,
        w: Option<Refusal>,
    ) {
        if let Some(w) = w {
            ctx.event(v, EventType::Warning, w.reason, w.message).await;
        }
    }
}

/// The rule of tenant-written endpoints of kind `K`: [`EndpointsRule`] or
/// [`SliceRule`].
#[derive(Debug)]
pub struct TenantEndpoints<K> {
    src: EndpointSources,
    kind: PhantomData<fn() -> K>,
}

impl<K> TenantEndpoints<K> {
    /// A rule reading `src`.
    pub fn new(src: EndpointSources) -> Self {
        Self {
            src,
            kind: PhantomData,
        }
    }
}

/// The Endpoints rule.
pub type EndpointsRule = TenantEndpoints<Endpoints>;
/// The EndpointSlice rule.
pub type SliceRule = TenantEndpoints<EndpointSlice>;

impl Rule for EndpointsRule {
    type V = Endpoints;
    type H = Endpoints;
    const KIND: &'static str = "Endpoints";

    fn decide(&self, names: &Names, v: &Endpoints, _h: Option<&Endpoints>) -> Decision<Endpoints> {
        let ns = v.namespace().unwrap_or_default();
        if v.metadata.deletion_timestamp.is_some() || !self.src.tenant_managed(&ns, &v.name_any()) {
            return Decision::REMOVE;
        }
        let host = host_endpoints(&names.vc, v, &names.host_namespace);
        let (host, _) = self
            .src
            .policy
            .filter_endpoints(host, &self.src.addresses.known());
        Decision::Sync(host)
    }

    async fn after_sync(
        &self,
        ctx: &Context,
        v: &Endpoints,
        _h: &Endpoints,
    ) -> Result<Option<Duration>, SyncError> {
        let known = self.src.addresses.known();
        let (_, refused) = self.src.policy.filter_endpoints(v.clone(), &known);
        self.src.warn_refused(ctx, v, warning(&refused)).await;
        Ok(None)
    }
}

impl Rule for SliceRule {
    type V = EndpointSlice;
    type H = EndpointSlice;
    const KIND: &'static str = "EndpointSlice";

    fn decide(
        &self,
        names: &Names,
        v: &EndpointSlice,
        _h: Option<&EndpointSlice>,
    ) -> Decision<EndpointSlice> {
        let ns = v.namespace().unwrap_or_default();
        let service = slice_service(&v.metadata).map(str::to_owned);
        match service {
            Some(svc)
                if v.metadata.deletion_timestamp.is_none()
                    && !derived_slice(&v.metadata)
                    && self.src.tenant_managed(&ns, &svc) =>
            {
                let host = host_endpoint_slice(&names.vc, v, &svc, &names.host_namespace);
                match self
                    .src
                    .policy
                    .filter_slice(host, &self.src.addresses.known())
                {
                    Ok((host, _)) => Decision::Sync(host),
                    Err(r) => Decision::Reject(r.reason, r.message),
                }
            }
            _ => Decision::REMOVE,
        }
    }

    async fn after_sync(
        &self,
        ctx: &Context,
        v: &EndpointSlice,
        _h: &EndpointSlice,
    ) -> Result<Option<Duration>, SyncError> {
        let known = self.src.addresses.known();
        if let Ok((_, refused)) = self.src.policy.filter_slice(v.clone(), &known) {
            self.src.warn_refused(ctx, v, warning(&refused)).await;
        }
        Ok(None)
    }
}

/// The virtual keys of every tenant-written Endpoints and EndpointSlice (to
/// queue again when the addresses the policy knows change).
pub fn tenant_keys(
    src: &EndpointSources,
    endpoints: &Cache<Endpoints>,
    slices: &Cache<EndpointSlice>,
) -> (Vec<VirtualKey>, Vec<VirtualKey>) {
    let eps = endpoints
        .entries()
        .iter()
        .map(|e| VirtualKey {
            namespace: e.namespace().unwrap_or_default(),
            name: e.name_any(),
        })
        .filter(|k| src.tenant_managed(&k.namespace, &k.name))
        .collect();
    // From the parsed part of each cached slice (no slice is parsed).
    let sls = slices
        .entries()
        .iter()
        .filter(|s| !derived_slice(s.as_ref()))
        .filter_map(|s| {
            let ns = s.namespace().unwrap_or_default();
            let svc = slice_service(s.as_ref())?;
            src.tenant_managed(&ns, svc).then(|| VirtualKey {
                namespace: ns.clone(),
                name: s.name_any(),
            })
        })
        .collect();
    (eps, sls)
}

/// Endpoints and EndpointSlices of selector-less Services.
pub const KIND: KindSpec = KindSpec {
    name: "endpoints",
    needs: &["services"],
    because: "they belong to Services",
    needs_waived_by_all_configs: false,
    register,
};

fn register(a: &mut Assembly) {
    let addresses = Arc::new(AddressIndex::default());
    let src = EndpointSources {
        services: a.cache(Side::Virtual),
        types: a.settings().service_types.clone(),
        policy: a.settings().endpoint_policy.clone(),
        addresses: Arc::clone(&addresses),
    };
    // Deciding on a partial view would drop good addresses: the engines
    // start once this vcluster's pod IPs are known.
    let known = |idx: Arc<AddressIndex>| async move { idx.wait_until_ready().await };
    let endpoints = a.engine_after(
        EndpointsRule::new(src.clone()),
        known(Arc::clone(&addresses)),
    );
    let slices = a.engine_after(SliceRule::new(src.clone()), known(Arc::clone(&addresses)));
    // A Service that gains or loses its selector re-evaluates its endpoints.
    let (eps, sls) = (Arc::clone(&endpoints), Arc::clone(&slices));
    a.on_change(Side::Virtual, move |svc: &Service| {
        let namespace = svc.namespace().unwrap_or_default();
        let name = svc.name_any();
        // From the parsed part of each cached slice: this runs for every
        // Service event, and parsing the slices of the namespace each time
        // made 10,000 Services' initial list quadratic.
        let backing = sls
            .virtual_store()
            .entries()
            .into_iter()
            .filter(|s| {
                s.identity().namespace() == Some(namespace.as_str())
                    && slice_service(s.as_ref()) == Some(name.as_str())
            })
            .map(|s| VirtualKey {
                namespace: namespace.clone(),
                name: s.name_any(),
            });
        sls.enqueue_many(backing);
        eps.enqueue(VirtualKey { namespace, name });
    });
    // This vcluster's pod IPs come from the pod engine's host cache; a
    // virtual pod gaining or changing its IP makes the index look at once.
    let host_pods = a.selected("pods").then(|| a.cache::<Pod>(Side::Host));
    if host_pods.is_some() {
        let idx = Arc::clone(&addresses);
        a.on_change(Side::Virtual, move |pod: &Pod| {
            if pod.status.as_ref().is_some_and(|s| s.pod_ip.is_some()) {
                idx.poke();
            }
        });
    }
    // When the addresses the policy knows change, every tenant-written
    // Endpoints and EndpointSlice is looked at again.
    let requeue = move || {
        let (e, s) = tenant_keys(&src, &endpoints.virtual_store(), &slices.virtual_store());
        endpoints.enqueue_many(e);
        slices.enqueue_many(s);
    };
    let ctx = a.ctx();
    let index = addresses.run(
        ctx.host.clone(),
        ctx.names.host_namespace.clone(),
        host_pods,
        a.settings().resync,
        requeue,
    );
    a.spawn("endpoint-addresses", index);
}

#[cfg(test)]
#[path = "tests/endpoints.rs"]
mod tests;
