//! The Endpoints and EndpointSlice rules' decisions over in-memory caches.

use serde_json::{Value, json};

use super::*;
use crate::policy::endpoints::EndpointPolicy;
use crate::policy::service_types::ServiceTypes;
use crate::sync::cache::filled;
use crate::sync::tests::{merged, names, obj, removed, synced};
use crate::translate::service::{MANAGED_BY_LABEL, MANAGED_BY_SYNCER, SERVICE_NAME_LABEL};

/// Virtual Services of namespace `shop`: `db` without a selector, `web`
/// with one; and a selector-less `default/kubernetes`.
/// The Services, with an address policy that lets every test address
/// through (the policy itself is tested in `crate::policy::endpoints`).
fn sources() -> EndpointSources {
    EndpointSources {
        services: services(),
        types: ServiceTypes::default(),
        policy: EndpointPolicy::parse("192.0.2.0/24").unwrap(),
        addresses: Arc::default(),
    }
}

fn services() -> Cache<Service> {
    let svc = |ns: &str, name: &str, selector: Value| -> Service {
        obj(json!({"metadata": {"name": name, "namespace": ns},
            "spec": {"selector": selector, "ports": [{"port": 5432}]}}))
    };
    filled(vec![
        svc("shop", "db", Value::Null),
        svc("shop", "web", json!({"app": "web"})),
        svc("default", "kubernetes", Value::Null),
    ])
}

fn endpoints(namespace: &str, name: &str, extra: Value) -> Endpoints {
    obj(merged(
        json!({
            "metadata": {"name": name, "namespace": namespace},
            "subsets": [{"addresses": [
                {"ip": "192.0.2.1", "targetRef": {"kind": "Pod", "name": "db-0", "namespace": namespace}},
                {"ip": "192.0.2.2", "targetRef": {"kind": "Node", "name": "n1"}}
            ], "ports": [{"port": 5432}]}]
        }),
        extra,
    ))
}

fn slice(service: Option<&str>, extra: Value) -> EndpointSlice {
    let labels = service.map_or(json!({}), |s| json!({SERVICE_NAME_LABEL: s}));
    obj(merged(
        json!({
            "metadata": {"name": "db-abc", "namespace": "shop", "labels": labels},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["192.0.2.1"], "targetRef": {"kind": "Pod", "name": "db-0"}}],
            "ports": [{"port": 5432}]
        }),
        extra,
    ))
}

#[test]
fn endpoints_go_down_only_for_selector_less_services() {
    let rule = EndpointsRule::new(sources());
    let out = synced(rule.decide(&names(), &endpoints("shop", "db", json!({})), None));
    let addrs = out.subsets.unwrap()[0].addresses.clone().unwrap();
    assert_eq!(addrs[0].ip, "192.0.2.1");
    let target = addrs[0].target_ref.as_ref().unwrap();
    assert_eq!(target.name.as_deref(), Some("db-0-x-shop-x-vc"));
    assert_eq!(target.namespace.as_deref(), Some("host-ns"));
    assert_eq!(
        addrs[1].target_ref, None,
        "a reference to a non-pod names nothing on the host"
    );
    for (case, v) in [
        (
            "a Service with a selector",
            endpoints("shop", "web", json!({})),
        ),
        ("no such Service", endpoints("shop", "nothing", json!({}))),
        (
            "the virtual API's own",
            endpoints("default", "kubernetes", json!({})),
        ),
        (
            "deleted",
            endpoints(
                "shop",
                "db",
                json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}),
            ),
        ),
    ] {
        let got = rule.decide(&names(), &v, None);
        assert!(removed(&got), "{case}: {got:?}");
    }
}

#[test]
fn tenant_slices_go_down_under_the_host_service_name() {
    let rule = SliceRule::new(sources());
    let out = synced(rule.decide(&names(), &slice(Some("db"), json!({})), None));
    let labels = out.metadata.labels.unwrap();
    assert_eq!(labels[SERVICE_NAME_LABEL], "db-x-shop-x-vc");
    assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY_SYNCER);
    let target = out.endpoints.unwrap()[0].target_ref.clone().unwrap();
    assert_eq!(target.name.as_deref(), Some("db-0-x-shop-x-vc"));
    assert_eq!(target.namespace.as_deref(), Some("host-ns"));
}

#[test]
fn derived_and_orphan_slices_never_go_down() {
    let rule = SliceRule::new(sources());
    for (case, v) in [
        (
            "derived by the endpoint slice controller",
            slice(
                Some("db"),
                json!({"metadata": {"labels": {MANAGED_BY_LABEL: "endpointslice-controller.k8s.io"}}}),
            ),
        ),
        (
            "mirrored from Endpoints",
            slice(
                Some("db"),
                json!({"metadata": {"labels": {MANAGED_BY_LABEL: "endpointslicemirroring-controller.k8s.io"}}}),
            ),
        ),
        (
            "of a Service with a selector",
            slice(Some("web"), json!({})),
        ),
        ("of no Service", slice(None, json!({}))),
        ("of an unknown Service", slice(Some("nothing"), json!({}))),
        (
            "deleted",
            slice(
                Some("db"),
                json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}),
            ),
        ),
    ] {
        let got = rule.decide(&names(), &v, None);
        assert!(removed(&got), "{case}: {got:?}");
    }
}
