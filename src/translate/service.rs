//! Services, Endpoints and EndpointSlices in their host form.
//!
//! - A Service's selector gains this vcluster's owner label and the virtual
//!   namespace label, so it selects only host pods synced from the same
//!   virtual namespace of the same vcluster. A Service without a selector
//!   stays without one (its endpoints come from the tenant).
//! - **ClusterIP parity**: the virtual API allocates from the host's service
//!   CIDR, so the host copy first asks for the very same `clusterIP(s)` and
//!   node ports. When the host has them taken ([`allocation_conflict`]), the
//!   copy is applied without them ([`without_allocations`]) and the virtual
//!   Service is brought to the host's values ([`parity`]): node ports by a
//!   patch, a cluster IP (immutable) by re-creating the virtual Service.
//! - Endpoints and EndpointSlices written by the tenant for selector-less
//!   Services go down with pod references translated.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    EndpointAddress, Endpoints, ObjectReference, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use super::markers::{Marked, NAMESPACE_LABEL, OWNER_LABEL, copy_unreserved};
use super::{Refusal, VclusterName, host_name};

/// Label naming the Service an EndpointSlice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label naming the controller that manages an EndpointSlice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// The `managed-by` value of slices the syncer writes on the host.
pub const MANAGED_BY_SYNCER: &str = "syncer.vcluster.dev";
/// The controllers whose slices are derived inside the virtual cluster and
/// never go down (the host derives its own).
const DERIVED_SLICE_MANAGERS: &[&str] = &[
    "endpointslice-controller.k8s.io",
    "endpointslicemirroring-controller.k8s.io",
];

/// True for the virtual `default/kubernetes` Service (and its endpoints):
/// it describes the virtual API itself and is never synced down.
pub fn is_api_service(namespace: Option<&str>, name: &str) -> bool {
    namespace == Some("default") && name == "kubernetes"
}

/// True for a virtual Service the syncer keeps itself: `default/kubernetes`,
/// and the `kube-system/kube-dns` it labels [`crate::dns::DNS_SERVICE_LABEL`]
/// (at the address of the vcluster's DNS Service on the host). They, and
/// their endpoints, are never synced down.
pub fn is_kept_by_syncer(svc: &Service) -> bool {
    let m = &svc.metadata;
    is_api_service(
        m.namespace.as_deref(),
        m.name.as_deref().unwrap_or_default(),
    ) || (m.namespace.as_deref() == Some("kube-system")
        && m.name.as_deref() == Some("kube-dns")
        && m.labels
            .iter()
            .flatten()
            .any(|(k, _)| k == crate::dns::DNS_SERVICE_LABEL))
}

/// A Service's selector, or `None` when it has none (selector-less).
pub fn selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    svc.spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
}

/// The host selector for a tenant selector in virtual namespace `namespace`.
pub fn host_selector(
    vc: &VclusterName,
    namespace: &str,
    selector: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut out = selector.clone();
    out.insert(OWNER_LABEL.to_owned(), vc.to_string());
    out.insert(NAMESPACE_LABEL.to_owned(), namespace.to_owned());
    out
}

fn cluster_ip(s: &Service) -> Option<&str> {
    s.spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .filter(|ip| !ip.is_empty() && *ip != "None")
}

/// True for a Service of type ExternalName.
pub fn is_external_name(s: &Service) -> bool {
    s.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("ExternalName")
}

/// The host form of virtual Service `v` (metadata other than labels and
/// annotations is set by the engine), given its current host copy `h`.
pub fn host_service(
    vc: &VclusterName,
    v: &Service,
    h: Option<&Service>,
) -> Result<Service, Refusal> {
    let namespace = v.metadata.namespace.as_deref().unwrap_or("default");
    let spec = v.spec.clone().unwrap_or_default();
    if spec
        .external_ips
        .as_ref()
        .is_some_and(|ips| !ips.is_empty())
    {
        return Err(Refusal::new(
            "ExternalIPsNotAllowed",
            "spec.externalIPs is not allowed: it would capture traffic to those addresses for every tenant of the host",
        ));
    }
    let external = is_external_name(v);
    // The host's allocation is immutable once made: keep it.
    let (cluster_ip, cluster_ips) = match h.filter(|h| cluster_ip(h).is_some() && !external) {
        Some(h) => {
            let hs = h.spec.as_ref();
            (
                hs.and_then(|s| s.cluster_ip.clone()),
                hs.and_then(|s| s.cluster_ips.clone()),
            )
        }
        None if external => (None, None),
        None => (spec.cluster_ip.clone(), spec.cluster_ips.clone()),
    };
    let host_spec = ServiceSpec {
        type_: spec.type_,
        ports: spec.ports,
        selector: selector(v).map(|s| host_selector(vc, namespace, s)),
        cluster_ip,
        cluster_ips,
        external_name: spec.external_name,
        session_affinity: spec.session_affinity,
        session_affinity_config: spec.session_affinity_config,
        publish_not_ready_addresses: spec.publish_not_ready_addresses,
        external_traffic_policy: spec.external_traffic_policy,
        internal_traffic_policy: spec.internal_traffic_policy,
        health_check_node_port: spec.health_check_node_port,
        ip_families: spec.ip_families,
        ip_family_policy: spec.ip_family_policy,
        load_balancer_class: spec.load_balancer_class,
        load_balancer_ip: spec.load_balancer_ip,
        load_balancer_source_ranges: spec.load_balancer_source_ranges,
        allocate_load_balancer_node_ports: spec.allocate_load_balancer_node_ports,
        traffic_distribution: spec.traffic_distribution,
        external_ips: None,
    };
    Ok(Service {
        metadata: ObjectMeta {
            labels: Some(copy_unreserved(v.metadata.labels.as_ref())),
            annotations: Some(copy_unreserved(v.metadata.annotations.as_ref())),
            ..ObjectMeta::default()
        },
        spec: Some(host_spec),
        status: None,
    })
}

/// True when the host refused a Service because an address or port it asked
/// for is taken or outside the host's ranges.
pub fn allocation_conflict(message: &str) -> bool {
    message.contains("already allocated") || message.contains("not in the valid range")
}

/// `desired` without the addresses and ports it asked for, so the host
/// allocates its own (kept: a cluster IP the host already holds).
pub fn without_allocations(desired: &Service, h: Option<&Service>) -> Service {
    let mut out = desired.clone();
    if let Some(spec) = out.spec.as_mut() {
        if h.and_then(cluster_ip).is_none() {
            spec.cluster_ip = None;
            spec.cluster_ips = None;
        }
        spec.health_check_node_port = None;
        for p in spec.ports.iter_mut().flatten() {
            p.node_port = None;
        }
    }
    out
}

/// What it takes to make the virtual Service show the host's allocations.
#[derive(Debug, Clone, PartialEq)]
pub enum Parity {
    /// Nothing: they agree (or the host has not allocated yet).
    InSync,
    /// A merge patch for the virtual Service (node ports).
    Patch(Value),
    /// The cluster IP differs and is immutable: replace the virtual Service
    /// with this one (same name, labels, annotations, owners).
    Recreate(Box<Service>),
}

fn node_ports_of(ports: Option<&Vec<ServicePort>>) -> Vec<Option<i32>> {
    ports.into_iter().flatten().map(|p| p.node_port).collect()
}

/// Compares the virtual Service `v` with its host copy `h`.
pub fn parity(v: &Service, h: &Service) -> Parity {
    if is_external_name(v) || is_external_name(h) {
        return Parity::InSync;
    }
    let (Some(vs), Some(hs)) = (v.spec.as_ref(), h.spec.as_ref()) else {
        return Parity::InSync;
    };
    let headless = vs.cluster_ip.as_deref() == Some("None");
    if !headless && cluster_ip(h).is_some() && cluster_ip(v) != cluster_ip(h) {
        let mut spec = vs.clone();
        spec.cluster_ip.clone_from(&hs.cluster_ip);
        spec.cluster_ips.clone_from(&hs.cluster_ips);
        spec.health_check_node_port = hs.health_check_node_port;
        for (want, have) in spec
            .ports
            .iter_mut()
            .flatten()
            .zip(hs.ports.iter().flatten())
        {
            want.node_port = have.node_port;
        }
        let m = &v.metadata;
        return Parity::Recreate(Box::new(Service {
            metadata: ObjectMeta {
                name: m.name.clone(),
                namespace: m.namespace.clone(),
                labels: m.labels.clone(),
                annotations: m.annotations.clone(),
                owner_references: m.owner_references.clone(),
                finalizers: m.finalizers.clone(),
                ..ObjectMeta::default()
            },
            spec: Some(spec),
            status: None,
        }));
    }
    let host_ports = node_ports_of(hs.ports.as_ref());
    let same_ports = node_ports_of(vs.ports.as_ref()).len() == host_ports.len();
    let differs = same_ports
        && (node_ports_of(vs.ports.as_ref()) != host_ports
            || (hs.health_check_node_port.is_some()
                && vs.health_check_node_port != hs.health_check_node_port));
    if !differs || host_ports.iter().all(Option::is_none) && hs.health_check_node_port.is_none() {
        return Parity::InSync;
    }
    let ports: Vec<ServicePort> = vs
        .ports
        .iter()
        .flatten()
        .zip(&host_ports)
        .map(|(p, np)| ServicePort {
            node_port: *np,
            ..p.clone()
        })
        .collect();
    let mut patch = json!({"spec": {"ports": ports}});
    if let Some(hc) = hs.health_check_node_port {
        patch["spec"]["healthCheckNodePort"] = json!(hc);
    }
    Parity::Patch(patch)
}

/// A merge patch copying the host's load-balancer status up, when it differs.
pub fn status_up(v: &Service, h: &Service) -> Option<Value> {
    let lb = |s: &Service| {
        s.status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .map(|lb| (lb.clone(), lb.ingress.as_ref().is_none_or(Vec::is_empty)))
    };
    super::load_balancer_patch(lb(v), lb(h))
}

/// A pod reference in the virtual namespace becomes a reference to its host
/// pod; any other reference is dropped (it names nothing on the host).
fn host_target(
    vc: &VclusterName,
    namespace: &str,
    host_namespace: &str,
    r: Option<&ObjectReference>,
) -> Option<ObjectReference> {
    let r = r?;
    let same_ns = r.namespace.as_deref().is_none_or(|ns| ns == namespace);
    if r.kind.as_deref() != Some("Pod") || !same_ns {
        return None;
    }
    Some(ObjectReference {
        kind: Some("Pod".into()),
        api_version: r.api_version.clone(),
        namespace: Some(host_namespace.to_owned()),
        name: r.name.as_deref().map(|n| host_name(vc, namespace, n)),
        ..ObjectReference::default()
    })
}

/// The host form of tenant-written Endpoints `v`.
pub fn host_endpoints(vc: &VclusterName, v: &Endpoints, host_namespace: &str) -> Endpoints {
    let namespace = v.metadata.namespace.as_deref().unwrap_or("default");
    let addr = |a: &EndpointAddress| EndpointAddress {
        target_ref: host_target(vc, namespace, host_namespace, a.target_ref.as_ref()),
        ..a.clone()
    };
    let subsets = v.subsets.as_ref().map(|subsets| {
        subsets
            .iter()
            .map(|s| {
                let mut s = s.clone();
                s.addresses = s.addresses.map(|a| a.iter().map(addr).collect());
                s.not_ready_addresses = s.not_ready_addresses.map(|a| a.iter().map(addr).collect());
                s
            })
            .collect()
    });
    Endpoints {
        metadata: ObjectMeta {
            labels: Some(copy_unreserved(v.metadata.labels.as_ref())),
            annotations: Some(copy_unreserved(v.metadata.annotations.as_ref())),
            ..ObjectMeta::default()
        },
        subsets,
    }
}

/// True when a virtual EndpointSlice was derived by the virtual control
/// plane (from a selector or mirrored from Endpoints) rather than written by
/// the tenant (`meta`: its metadata; a cached slice's parsed part holds it).
pub fn derived_slice(meta: &impl Marked) -> bool {
    meta.label(MANAGED_BY_LABEL)
        .is_some_and(|m| DERIVED_SLICE_MANAGERS.contains(&m))
}

/// The Service a virtual EndpointSlice belongs to (`meta`: its metadata).
pub fn slice_service(meta: &impl Marked) -> Option<&str> {
    meta.label(SERVICE_NAME_LABEL)
}

/// The host form of a tenant-written EndpointSlice of Service `service`.
pub fn host_endpoint_slice(
    vc: &VclusterName,
    v: &EndpointSlice,
    service: &str,
    host_namespace: &str,
) -> EndpointSlice {
    let namespace = v.metadata.namespace.as_deref().unwrap_or("default");
    let mut labels = copy_unreserved(v.metadata.labels.as_ref());
    labels.insert(
        SERVICE_NAME_LABEL.to_owned(),
        host_name(vc, namespace, service),
    );
    labels.insert(MANAGED_BY_LABEL.to_owned(), MANAGED_BY_SYNCER.to_owned());
    let endpoints = v.endpoints.as_ref().map(|list| {
        list.iter()
            .map(|e| {
                let mut e = e.clone();
                e.target_ref = host_target(vc, namespace, host_namespace, e.target_ref.as_ref());
                e
            })
            .collect()
    });
    EndpointSlice {
        metadata: ObjectMeta {
            labels: Some(labels),
            annotations: Some(copy_unreserved(v.metadata.annotations.as_ref())),
            ..ObjectMeta::default()
        },
        address_type: v.address_type.clone(),
        endpoints,
        ports: v.ports.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vc() -> VclusterName {
        VclusterName::new("vc1").unwrap()
    }

    fn svc(j: Value) -> Service {
        serde_json::from_value(j).unwrap()
    }

    #[test]
    fn selector_is_confined_to_the_virtual_namespace_and_vcluster() {
        let v = svc(json!({
            "metadata": {"name": "web", "namespace": "a", "labels": {"tier": "x", "vcluster.dev/owner": "spoof"}},
            "spec": {"selector": {"app": "web", "vcluster.dev/owner": "other"}, "ports": [{"port": 80}],
                     "clusterIP": "10.96.3.4", "clusterIPs": ["10.96.3.4"], "sessionAffinity": "ClientIP",
                     "publishNotReadyAddresses": true, "type": "NodePort"}
        }));
        let h = host_service(&vc(), &v, None).unwrap();
        let spec = h.spec.unwrap();
        let sel = spec.selector.unwrap();
        assert_eq!(sel["app"], "web");
        assert_eq!(
            sel[OWNER_LABEL], "vc1",
            "a tenant cannot widen the selector"
        );
        assert_eq!(sel[NAMESPACE_LABEL], "a");
        assert_eq!(sel.len(), 3);
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.3.4"));
        assert_eq!(spec.session_affinity.as_deref(), Some("ClientIP"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        let labels = h.metadata.labels.unwrap();
        assert_eq!(
            labels.get(OWNER_LABEL),
            None,
            "reserved labels are not copied"
        );
    }

    #[test]
    fn selector_less_headless_and_external_name_services() {
        let v = svc(json!({"metadata": {"name": "db", "namespace": "a"},
            "spec": {"ports": [{"port": 5432}], "clusterIP": "None", "selector": {}}}));
        let spec = host_service(&vc(), &v, None).unwrap().spec.unwrap();
        assert_eq!(spec.selector, None, "selector-less stays selector-less");
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));

        let v = svc(json!({"metadata": {"name": "ext", "namespace": "a"},
            "spec": {"type": "ExternalName", "externalName": "example.org"}}));
        let spec = host_service(&vc(), &v, None).unwrap().spec.unwrap();
        assert_eq!(spec.external_name.as_deref(), Some("example.org"));
        assert_eq!(spec.cluster_ip, None);
    }

    #[test]
    fn external_ips_are_refused() {
        let v = svc(json!({"metadata": {"name": "x", "namespace": "a"},
            "spec": {"ports": [{"port": 80}], "externalIPs": ["1.2.3.4"]}}));
        let r = host_service(&vc(), &v, None).unwrap_err();
        assert_eq!(r.reason, "ExternalIPsNotAllowed");
    }

    #[test]
    fn the_host_allocation_wins_once_made() {
        let v = svc(json!({"metadata": {"name": "web", "namespace": "a"},
            "spec": {"ports": [{"port": 80, "nodePort": 30001}], "clusterIP": "10.96.0.9",
                     "clusterIPs": ["10.96.0.9"], "type": "NodePort"}}));
        let h = svc(json!({"metadata": {"name": "web-x-a-x-vc1"},
            "spec": {"ports": [{"port": 80, "nodePort": 31000}], "clusterIP": "10.96.7.7",
                     "clusterIPs": ["10.96.7.7"], "type": "NodePort"}}));
        let spec = host_service(&vc(), &v, Some(&h)).unwrap().spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.7.7"));
        match parity(&v, &h) {
            Parity::Recreate(s) => {
                let s = s.spec.unwrap();
                assert_eq!(s.cluster_ips, Some(vec!["10.96.7.7".to_owned()]));
                assert_eq!(s.ports.unwrap()[0].node_port, Some(31000));
            }
            other => panic!("expected a re-creation, got {other:?}"),
        }
        // Same IP, other node port: a patch.
        let v2 = svc(json!({"metadata": {"name": "web", "namespace": "a"},
            "spec": {"ports": [{"port": 80, "nodePort": 30001}], "clusterIP": "10.96.7.7", "type": "NodePort"}}));
        match parity(&v2, &h) {
            Parity::Patch(p) => assert_eq!(p["spec"]["ports"][0]["nodePort"], 31000),
            other => panic!("expected a patch, got {other:?}"),
        }
        let v3 = svc(json!({"metadata": {"name": "web", "namespace": "a"},
            "spec": {"ports": [{"port": 80, "nodePort": 31000}], "clusterIP": "10.96.7.7", "type": "NodePort"}}));
        assert_eq!(parity(&v3, &h), Parity::InSync);
    }

    #[test]
    fn conflicts_drop_the_requested_allocations() {
        assert!(allocation_conflict(
            "spec.clusterIPs: Invalid value: [\"10.96.0.1\"]: failed to allocate IP 10.96.0.1: provided IP is already allocated"
        ));
        assert!(allocation_conflict(
            "spec.ports[0].nodePort: Invalid value: 30002: provided port is already allocated"
        ));
        assert!(!allocation_conflict(
            "spec.ports[0].port: Invalid value: 0: must be between 1 and 65535"
        ));
        let v = svc(json!({"metadata": {"name": "web", "namespace": "a"},
            "spec": {"ports": [{"port": 80, "nodePort": 30001}], "clusterIP": "10.96.0.9", "type": "NodePort"}}));
        let d = host_service(&vc(), &v, None).unwrap();
        let spec = without_allocations(&d, None).spec.unwrap();
        assert_eq!(spec.cluster_ip, None);
        assert_eq!(spec.ports.unwrap()[0].node_port, None);
    }

    #[test]
    fn load_balancer_status_goes_up() {
        let v = svc(
            json!({"metadata": {"name": "lb", "namespace": "a"}, "spec": {"type": "LoadBalancer"}}),
        );
        let h = svc(
            json!({"metadata": {"name": "lb-x-a-x-vc1"}, "spec": {"type": "LoadBalancer"},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}, {"hostname": "lb.example.com"}]}}}),
        );
        let p = status_up(&v, &h).unwrap();
        assert_eq!(
            p["status"]["loadBalancer"]["ingress"][1]["hostname"],
            "lb.example.com"
        );
        let h_empty =
            svc(json!({"metadata": {"name": "lb-x-a-x-vc1"}, "status": {"loadBalancer": {}}}));
        assert_eq!(status_up(&v, &h_empty), None);
    }

    #[test]
    fn endpoint_pod_references_are_translated_and_others_dropped() {
        let v: Endpoints = serde_json::from_value(json!({
            "metadata": {"name": "db", "namespace": "a"},
            "subsets": [{"addresses": [
                {"ip": "10.244.0.5", "targetRef": {"kind": "Pod", "name": "db-0", "namespace": "a"}},
                {"ip": "10.244.0.6", "targetRef": {"kind": "Pod", "name": "db-1", "namespace": "b"}},
                {"ip": "192.0.2.1"}],
              "ports": [{"port": 5432}]}]
        }))
        .unwrap();
        let h = host_endpoints(&vc(), &v, "host-ns");
        let addrs = h.subsets.unwrap()[0].addresses.clone().unwrap();
        let t = addrs[0].target_ref.as_ref().unwrap();
        assert_eq!(t.name.as_deref(), Some("db-0-x-a-x-vc1"));
        assert_eq!(t.namespace.as_deref(), Some("host-ns"));
        assert_eq!(
            addrs[1].target_ref, None,
            "another namespace's pod is not referenced"
        );
        assert_eq!(addrs[2].ip, "192.0.2.1");
    }

    #[test]
    fn tenant_slices_go_down_derived_ones_do_not() {
        let v: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "db-1", "namespace": "a", "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["192.0.2.1"], "targetRef": {"kind": "Pod", "name": "p"}}],
            "ports": [{"port": 5432}]
        }))
        .unwrap();
        assert!(!derived_slice(&v.metadata));
        assert_eq!(slice_service(&v.metadata), Some("db"));
        let h = host_endpoint_slice(&vc(), &v, "db", "host-ns");
        let l = h.metadata.labels.unwrap();
        assert_eq!(l[SERVICE_NAME_LABEL], "db-x-a-x-vc1");
        assert_eq!(l[MANAGED_BY_LABEL], MANAGED_BY_SYNCER);
        assert_eq!(
            h.endpoints.unwrap()[0]
                .target_ref
                .as_ref()
                .unwrap()
                .name
                .as_deref(),
            Some("p-x-a-x-vc1")
        );
        let mut derived = v.clone();
        derived.metadata.labels.as_mut().unwrap().insert(
            MANAGED_BY_LABEL.into(),
            "endpointslice-controller.k8s.io".into(),
        );
        assert!(derived_slice(&derived.metadata));
    }
}
