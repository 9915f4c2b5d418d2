//! The Ingress rule's decisions.

use std::sync::Arc;

use serde_json::{Value, json};

use super::*;
use crate::sync::tests::{names, obj, removed, synced};

fn ingress(host: &str, annotations: Value) -> Ingress {
    obj(json!({
        "metadata": {"name": "web", "namespace": "shop", "annotations": annotations},
        "spec": {
            "tls": [{"hosts": [host], "secretName": "web-tls"}],
            "rules": [{"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]
        }
    }))
}

fn rule(allowed_hosts: &[&str]) -> IngressRule {
    let vc = names().vc;
    let mut policy = IngressPolicy::default_for(&vc);
    if !allowed_hosts.is_empty() {
        policy = IngressPolicy::new(
            &vc,
            vec!["*snippet*".into()],
            allowed_hosts.iter().map(|h| (*h).to_owned()).collect(),
        );
    }
    IngressRule::new(policy, Arc::default())
}

#[test]
fn an_allowed_ingress_goes_down_with_its_backends_renamed() {
    let out = synced(rule(&[]).decide(&names(), &ingress("a.example.com", json!({})), None));
    let spec = out.spec.unwrap();
    let rules = spec.rules.unwrap();
    let backend = &rules[0].http.as_ref().unwrap().paths[0].backend;
    assert_eq!(backend.service.as_ref().unwrap().name, "web-x-shop-x-vc");
    assert_eq!(
        spec.tls.unwrap()[0].secret_name.as_deref(),
        Some("web-tls-x-shop-x-vc")
    );
    let allowed = rule(&["*.{name}.example.com"]);
    synced(allowed.decide(&names(), &ingress("shop.vc.example.com", json!({})), None));
}

#[test]
fn what_the_policy_refuses_is_rejected_with_its_reason() {
    let snippet = "nginx.ingress.kubernetes.io/server-snippet";
    for (case, rule, v, reason, names_it) in [
        (
            "denied annotation",
            rule(&[]),
            ingress("a.example.com", json!({snippet: "x"})),
            "IngressAnnotationDenied",
            snippet,
        ),
        (
            "host outside the allowed ones",
            rule(&["*.{name}.example.com"]),
            ingress("shop.other.example.com", json!({})),
            "IngressHostDenied",
            "shop.other.example.com",
        ),
    ] {
        match rule.decide(&names(), &v, None) {
            Decision::Reject(got, message) => {
                assert_eq!(got, reason, "{case}");
                assert!(message.contains(names_it), "{case}: {message}");
            }
            other => panic!("{case}: expected a rejection, got {other:?}"),
        }
    }
}

#[test]
fn a_deleted_ingress_goes_from_the_host_even_if_the_policy_would_refuse_it() {
    let mut v = ingress(
        "a.example.com",
        json!({"nginx.ingress.kubernetes.io/server-snippet": "x"}),
    );
    v.metadata.deletion_timestamp = Some(obj(json!("2026-01-01T00:00:00Z")));
    assert!(removed(&rule(&[]).decide(&names(), &v, None)));
}

#[test]
fn the_host_controllers_status_comes_up() {
    let v = ingress("a.example.com", json!({}));
    let mut h = v.clone();
    h.status = Some(obj(
        json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.7"}]}}),
    ));
    let patch = rule(&[]).status_up(&v, &h).unwrap();
    assert_eq!(
        patch["status"]["loadBalancer"]["ingress"][0]["ip"],
        "192.0.2.7"
    );
    assert_eq!(rule(&[]).status_up(&h, &h), None);
}

#[test]
fn asleep_the_backends_are_the_waking_page_and_awake_they_come_back() {
    let sleep = Arc::new(Sleep::default());
    let r = rule(&[]).sleeping_at(Arc::clone(&sleep), Some(("vc".into(), 8081)));
    let backend = |i: &Ingress| {
        let spec = i.spec.as_ref().unwrap();
        let path = &spec.rules.as_ref().unwrap()[0].http.as_ref().unwrap().paths[0];
        let svc = path.backend.service.clone().unwrap();
        (svc.name, svc.port.unwrap().number)
    };
    let v = ingress("a.example.com", json!({}));
    let awake = synced(r.decide(&names(), &v, None));
    assert_eq!(backend(&awake), ("web-x-shop-x-vc".into(), Some(80)));
    sleep.set_asleep(true);
    let asleep = synced(r.decide(&names(), &v, None));
    assert_eq!(backend(&asleep), ("vc".into(), Some(8081)));
    assert_eq!(
        asleep.spec.as_ref().unwrap().tls,
        awake.spec.as_ref().unwrap().tls
    );
    sleep.set_asleep(false);
    assert_eq!(
        backend(&synced(r.decide(&names(), &v, None))),
        ("web-x-shop-x-vc".into(), Some(80))
    );
    // Without a waking page, ingresses stay as they are.
    let plain = rule(&[]).sleeping_at(Arc::clone(&sleep), None);
    sleep.set_asleep(true);
    assert_eq!(
        backend(&synced(plain.decide(&names(), &v, None))),
        ("web-x-shop-x-vc".into(), Some(80))
    );
}
