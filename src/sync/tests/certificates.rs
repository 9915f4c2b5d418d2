//! The Certificate rule's decisions, and the virtual form of the host's
//! definition.

use std::sync::Arc;

use serde_json::{Value, json};

use super::*;
use crate::sync::tests::{names, obj, removed, synced};
use crate::translate::ingress::IngressPolicy;

fn rule() -> CertificateRule {
    let vc = names().vc;
    let policy = CertificatePolicy {
        cluster_issuers: vec!["shared-ca".into()],
        hosts: IngressPolicy::new(&vc, Vec::new(), vec!["*.{name}.example.com".into()]),
    };
    CertificateRule::new(policy, Arc::default())
}

fn cert(issuer: Value, dns: &str) -> Certificate {
    obj(json!({
        "metadata": {"name": "api", "namespace": "shop"},
        "spec": {"secretName": "api-tls", "dnsNames": [dns], "issuerRef": issuer},
    }))
}

fn shared() -> Value {
    json!({"name": "shared-ca", "kind": "ClusterIssuer"})
}

#[test]
fn an_allowed_certificate_goes_down_and_the_tenants_own_stay_inside() {
    let h = synced(rule().decide(&names(), &cert(shared(), "api.vc.example.com"), None));
    assert_eq!(h.spec["secretName"], "api-tls-x-shop-x-vc");
    let own = cert(
        json!({"name": "mine", "kind": "Issuer"}),
        "api.vc.example.com",
    );
    assert!(
        removed(&rule().decide(&names(), &own, None)),
        "stays inside"
    );
    let mut gone = cert(shared(), "api.vc.example.com");
    gone.metadata.deletion_timestamp = Some(obj(json!("2026-01-01T00:00:00Z")));
    assert!(removed(&rule().decide(&names(), &gone, None)));
}

#[test]
fn refusals_carry_their_reason() {
    for (v, reason) in [
        (
            cert(
                json!({"name": "internal", "kind": "ClusterIssuer"}),
                "api.vc.example.com",
            ),
            "CertificateIssuerDenied",
        ),
        (
            cert(shared(), "api.other.example.com"),
            "CertificateHostDenied",
        ),
    ] {
        match rule().decide(&names(), &v, None) {
            Decision::Reject(got, message) => assert_eq!(got, reason, "{message}"),
            other => panic!("expected a rejection, got {other:?}"),
        }
    }
}

#[test]
fn a_name_another_teams_ingress_serves_is_refused() {
    let foreign = crate::policy::ingress_hosts::Claim {
        who: "team-b/shop".into(),
        hosts: vec!["*.vc.example.com".into()],
        created: None,
    };
    let mut r = rule();
    r.hosts = Arc::new(HostIngresses::serving(vec![foreign]));
    match r.decide(&names(), &cert(shared(), "api.vc.example.com"), None) {
        Decision::Reject(reason, message) => {
            assert_eq!(reason, "IngressHostConflict");
            assert!(
                message.contains("the certificate is not synced"),
                "{message}"
            );
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn the_virtual_definition_is_the_hosts_without_its_conversion_webhook() {
    let host: CustomResourceDefinition = obj(json!({
        "metadata": {"name": CRD_NAME, "resourceVersion": "7", "labels": {"app": "cert-manager"}},
        "spec": {
            "group": "cert-manager.io",
            "names": {"kind": "Certificate", "plural": "certificates"},
            "scope": "Namespaced",
            "versions": [{"name": "v1", "served": true, "storage": true}],
            "conversion": {"strategy": "Webhook", "webhook": {"conversionReviewVersions": ["v1"],
                "clientConfig": {"service": {"name": "cert-manager-webhook", "namespace": "cert-manager"}}}},
        },
        "status": {"storedVersions": ["v1"]},
    }));
    let v = virtual_definition(&host);
    assert_eq!(v.spec.versions, host.spec.versions);
    assert_eq!(v.spec.names, host.spec.names);
    let conversion = v.spec.conversion.as_ref().unwrap();
    assert_eq!(conversion.strategy, "None");
    assert!(conversion.webhook.is_none());
    assert!(is_mirror(&v.metadata), "marked as the syncer's");
    assert_eq!(v.metadata.resource_version, None);
    assert!(v.status.is_none());
}
