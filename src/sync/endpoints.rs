//! Endpoints and EndpointSlices the tenant writes for its selector-less
//! Services go down, with pod references translated. Those of Services with
//! a selector are derived on each side by its own control plane from the
//! synced pods, so they never go down.

use std::marker::PhantomData;

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;

use super::cache::Cache;
use super::{Assembly, Decision, KindSpec, Names, Rule, Side};
use crate::translate::VirtualKey;
use crate::translate::service::{
    derived_slice, host_endpoint_slice, host_endpoints, is_api_service, selector, slice_service,
};

/// Whether endpoints of Service `name` in `namespace` are the tenant's to give.
fn tenant_managed(services: &Cache<Service>, namespace: &str, name: &str) -> bool {
    !is_api_service(Some(namespace), name)
        && services
            .get(name, Some(namespace))
            .is_some_and(|s| selector(&s).is_none())
}

const GONE: Decision<Endpoints> = Decision::REMOVE;

/// The rule of tenant-written endpoints of kind `K`: [`EndpointsRule`] or
/// [`SliceRule`]; both read the virtual Services cache.
#[derive(Debug)]
pub struct TenantEndpoints<K> {
    services: Cache<Service>,
    kind: PhantomData<fn() -> K>,
}

impl<K> TenantEndpoints<K> {
    /// A rule reading the virtual Services cache.
    pub fn new(services: Cache<Service>) -> Self {
        Self {
            services,
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
        if v.metadata.deletion_timestamp.is_some()
            || !tenant_managed(&self.services, &ns, &v.name_any())
        {
            return GONE;
        }
        Decision::Sync(host_endpoints(&names.vc, v, &names.host_namespace))
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
        let service = slice_service(v).map(str::to_owned);
        match service {
            Some(svc)
                if v.metadata.deletion_timestamp.is_none()
                    && !derived_slice(v)
                    && tenant_managed(&self.services, &ns, &svc) =>
            {
                Decision::Sync(host_endpoint_slice(
                    &names.vc,
                    v,
                    &svc,
                    &names.host_namespace,
                ))
            }
            _ => Decision::REMOVE,
        }
    }
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
    let services = a.cache::<Service>(Side::Virtual);
    let endpoints = a.engine(EndpointsRule::new(services.clone()));
    let slices = a.engine(SliceRule::new(services));
    // A Service that gains or loses its selector re-evaluates its endpoints.
    a.on_change(Side::Virtual, move |svc: &Service| {
        let namespace = svc.namespace().unwrap_or_default();
        let name = svc.name_any();
        // Parsed: the cache keeps only the project's own labels at hand.
        let backing = slices
            .virtual_store()
            .objects_in(Some(&namespace))
            .into_iter()
            .filter(|s| slice_service(s) == Some(name.as_str()))
            .map(|s| VirtualKey {
                namespace: namespace.clone(),
                name: s.name_any(),
            });
        slices.enqueue_many(backing);
        endpoints.enqueue(VirtualKey { namespace, name });
    });
}

#[cfg(test)]
#[path = "tests/endpoints.rs"]
mod tests;
