//! Endpoints and EndpointSlices the tenant writes for its selector-less
//! Services go down, with pod references translated and only the addresses
//! the endpoint policy allows ([`crate::policy::endpoints`]: this vcluster's
//! own pods, the allowed CIDRs); the others are dropped and named in a
//! Warning event. Those of Services with a selector are derived on each side
//! by its own control plane from the synced pods, so they never go down;
//! neither do those of a Service the Service type policy refuses.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::runtime::events::EventType;

use super::addresses::AddressIndex;
use super::cache::Cache;
use super::{Context, Decision, Rule, SyncError};
use crate::policy::endpoints::{EndpointPolicy, warning};
use crate::policy::service_types::ServiceTypes;
use crate::translate::Refusal;
use crate::translate::service::{
    derived_slice, host_endpoint_slice, host_endpoints, is_api_service, selector, slice_service,
};

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
            && self
                .services
                .get(name, Some(namespace))
                .is_some_and(|s| selector(&s).is_none() && self.types.check(&s).is_ok())
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

const GONE: Decision<Endpoints> = Decision::Remove {
    grace_seconds: None,
};

/// The Endpoints rule.
#[derive(Debug)]
pub struct EndpointsRule {
    src: EndpointSources,
}

impl EndpointsRule {
    /// A rule reading `src`.
    pub fn new(src: EndpointSources) -> Self {
        Self { src }
    }
}

impl Rule for EndpointsRule {
    type V = Endpoints;
    type H = Endpoints;
    const KIND: &'static str = "Endpoints";

    fn decide(&self, ctx: &Context, v: &Endpoints, _h: Option<&Endpoints>) -> Decision<Endpoints> {
        let ns = v.namespace().unwrap_or_default();
        if v.metadata.deletion_timestamp.is_some() || !self.src.tenant_managed(&ns, &v.name_any()) {
            return GONE;
        }
        let host = host_endpoints(&ctx.vc, v, &ctx.host_namespace);
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

/// The EndpointSlice rule.
#[derive(Debug)]
pub struct SliceRule {
    src: EndpointSources,
}

impl SliceRule {
    /// A rule reading `src`.
    pub fn new(src: EndpointSources) -> Self {
        Self { src }
    }
}

impl Rule for SliceRule {
    type V = EndpointSlice;
    type H = EndpointSlice;
    const KIND: &'static str = "EndpointSlice";

    fn decide(
        &self,
        ctx: &Context,
        v: &EndpointSlice,
        _h: Option<&EndpointSlice>,
    ) -> Decision<EndpointSlice> {
        let ns = v.namespace().unwrap_or_default();
        let service = slice_service(v).map(str::to_owned);
        match service {
            Some(svc)
                if v.metadata.deletion_timestamp.is_none()
                    && !derived_slice(v)
                    && self.src.tenant_managed(&ns, &svc) =>
            {
                let host = host_endpoint_slice(&ctx.vc, v, &svc, &ctx.host_namespace);
                match self
                    .src
                    .policy
                    .filter_slice(host, &self.src.addresses.known())
                {
                    Ok((host, _)) => Decision::Sync(host),
                    Err(r) => Decision::Reject(r.reason, r.message),
                }
            }
            _ => Decision::Remove {
                grace_seconds: None,
            },
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
) -> (
    Vec<crate::translate::VirtualKey>,
    Vec<crate::translate::VirtualKey>,
) {
    use crate::translate::VirtualKey;
    let eps = endpoints
        .entries()
        .iter()
        .map(|e| VirtualKey {
            namespace: e.namespace().unwrap_or_default(),
            name: e.name_any(),
        })
        .filter(|k| src.tenant_managed(&k.namespace, &k.name))
        .collect();
    // Parsed: the cache keeps only the project's own labels at hand.
    let sls = slices
        .objects_in(None)
        .iter()
        .filter(|s| !derived_slice(s))
        .filter_map(|s| {
            let ns = s.namespace().unwrap_or_default();
            let svc = slice_service(s)?;
            src.tenant_managed(&ns, svc).then(|| VirtualKey {
                namespace: ns.clone(),
                name: s.name_any(),
            })
        })
        .collect();
    (eps, sls)
}
