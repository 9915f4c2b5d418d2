//! The Service rule's decisions over in-memory caches.

use serde_json::{Value, json};

use super::*;
use crate::policy::service_types::ServiceTypes;
use crate::sync::cache::filled;
use crate::sync::tests::{merged, names, obj, removed, synced};
use crate::translate::markers::{NAMESPACE_LABEL, OWNER_LABEL};

fn svc(namespace: &str, name: &str, extra: Value) -> Service {
    obj(merged(
        json!({
            "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}")},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "nodePort": 30080}],
                "clusterIP": "10.96.0.5", "clusterIPs": ["10.96.0.5"], "type": "NodePort"}
        }),
        extra,
    ))
}

fn rule() -> ServiceRule {
    ServiceRule::new(filled(vec![]), ServiceTypes::default())
}

fn spec(s: &Service) -> &k8s_openapi::api::core::v1::ServiceSpec {
    s.spec.as_ref().unwrap()
}

#[test]
fn the_virtual_api_service_never_goes_down() {
    let api = svc("default", "kubernetes", json!({"spec": {"selector": null}}));
    assert!(removed(&rule().decide(&names(), &api, None)));
    // Only that one: a `kubernetes` Service elsewhere is the tenant's.
    let other = svc("shop", "kubernetes", json!({}));
    synced(rule().decide(&names(), &other, None));
}

#[test]
fn a_deleted_service_goes_from_the_host() {
    let gone = svc(
        "shop",
        "web",
        json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}),
    );
    assert!(removed(&rule().decide(&names(), &gone, None)));
}

#[test]
fn refused_forms_are_rejected_with_a_reason() {
    let v = svc(
        "shop",
        "web",
        json!({"spec": {"externalIPs": ["192.0.2.10"]}}),
    );
    match rule().decide(&names(), &v, None) {
        Decision::Reject(reason, message) => {
            assert_eq!(reason, "ExternalIPsNotAllowed");
            assert!(message.contains("externalIPs"), "{message}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    // An empty list is no external IP.
    let v = svc("shop", "web", json!({"spec": {"externalIPs": []}}));
    synced(rule().decide(&names(), &v, None));
}

#[test]
fn the_host_copy_selects_only_this_tenants_pods_and_keeps_the_hosts_address() {
    let v = svc("shop", "web", json!({}));
    let out = synced(rule().decide(&names(), &v, None));
    let sel = spec(&out).selector.clone().unwrap();
    assert_eq!(sel["app"], "web");
    assert_eq!(sel[OWNER_LABEL], "vc");
    assert_eq!(sel[NAMESPACE_LABEL], "shop");
    assert_eq!(spec(&out).cluster_ip.as_deref(), Some("10.96.0.5"));
    // The host gave it another address: that one stays (it is immutable).
    let h = svc(
        "host-ns",
        "web-x-shop-x-vc",
        json!({"spec": {"clusterIP": "10.96.0.9", "clusterIPs": ["10.96.0.9"]}}),
    );
    let out = synced(rule().decide(&names(), &v, Some(&h)));
    assert_eq!(spec(&out).cluster_ip.as_deref(), Some("10.96.0.9"));
    assert_eq!(
        spec(&out).cluster_ips.as_deref(),
        Some(&["10.96.0.9".to_owned()][..])
    );
    // A selector-less Service stays selector-less.
    let bare = svc("shop", "ext", json!({"spec": {"selector": null}}));
    assert_eq!(
        spec(&synced(rule().decide(&names(), &bare, None))).selector,
        None
    );
}

#[test]
fn an_allocation_conflict_is_retried_without_the_addresses() {
    let v = svc("shop", "web", json!({}));
    let desired = synced(rule().decide(&names(), &v, None));
    let msg = "Service \"web-x-shop-x-vc\" is invalid: spec.clusterIPs: Invalid value: []string{\"10.96.0.5\"}: failed to allocate IP 10.96.0.5: provided IP is already allocated";
    let alt = rule().on_rejected(&desired, None, msg).unwrap();
    assert_eq!(spec(&alt).cluster_ip, None);
    assert_eq!(spec(&alt).cluster_ips, None);
    assert_eq!(spec(&alt).ports.as_ref().unwrap()[0].node_port, None);
    assert_eq!(spec(&alt).selector, spec(&desired).selector);
    let range =
        "spec.ports[0].nodePort: Invalid value: 30080: provided port is not in the valid range";
    assert!(rule().on_rejected(&desired, None, range).is_some());
    // With the host's address already held, the address is kept.
    let h = svc("host-ns", "web-x-shop-x-vc", json!({}));
    let alt = rule().on_rejected(&desired, Some(&h), msg).unwrap();
    assert_eq!(spec(&alt).cluster_ip.as_deref(), Some("10.96.0.5"));
    // Any other refusal has no alternative.
    let other = "spec.ports[0].port: Invalid value: 0: must be between 1 and 65535";
    assert!(rule().on_rejected(&desired, None, other).is_none());
}

#[test]
fn load_balancer_status_comes_up() {
    let v = svc("shop", "web", json!({"spec": {"type": "LoadBalancer"}}));
    let h = svc(
        "host-ns",
        "web-x-shop-x-vc",
        json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.7"}]}}}),
    );
    let patch = rule().status_up(&v, &h).unwrap();
    assert_eq!(
        patch["status"]["loadBalancer"]["ingress"][0]["ip"],
        "192.0.2.7"
    );
    let mut up = v.clone();
    up.status = h.status.clone();
    assert_eq!(rule().status_up(&up, &h), None);
}
