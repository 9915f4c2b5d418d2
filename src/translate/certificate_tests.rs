use super::*;

fn vc() -> VclusterName {
    VclusterName::new("my").unwrap()
}

fn policy() -> CertificatePolicy {
    CertificatePolicy {
        cluster_issuers: vec!["shared-ca".into()],
        hosts: IngressPolicy::new(&vc(), Vec::new(), vec!["*.{name}.example.com".into()]),
    }
}

fn cert(spec: Value) -> Certificate {
    serde_json::from_value(json!({
        "metadata": {"name": "api", "namespace": "shop", "labels": {"app": "api", "vcluster.dev/owner": "x"}},
        "spec": spec,
    }))
    .unwrap()
}

fn leaf(extra: Value) -> Certificate {
    let mut spec = json!({
        "secretName": "api-tls",
        "dnsNames": ["api.my.example.com", "API.my.example.com."],
        "issuerRef": {"name": "shared-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"},
    });
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    cert(spec)
}

fn refused(c: &Certificate) -> Refusal {
    host_certificate(&vc(), c, &policy()).unwrap_err()
}

#[test]
fn an_allowed_certificate_goes_down_with_its_secret_renamed() {
    let c = leaf(json!({"duration": "2160h",
        "secretTemplate": {"labels": {"team": "shop", "vcluster.dev/owner": "my"}}}));
    let h = host_certificate(&vc(), &c, &policy()).unwrap().unwrap();
    assert_eq!(h.spec["secretName"], host_name(&vc(), "shop", "api-tls"));
    assert_eq!(
        h.spec["dnsNames"], c.spec["dnsNames"],
        "names are not rewritten"
    );
    assert_eq!(h.spec["issuerRef"], c.spec["issuerRef"]);
    assert_eq!(h.spec["duration"], "2160h");
    assert_eq!(
        h.spec["secretTemplate"]["labels"],
        json!({"team": "shop"}),
        "markers never reach the issued Secret"
    );
    let labels = h.metadata.labels.unwrap();
    assert_eq!(labels.get("app").map(String::as_str), Some("api"));
    assert!(!labels.contains_key("vcluster.dev/owner"));
    assert_eq!(names(&c), ["api.my.example.com"]);
}

#[test]
fn the_tenants_own_issuers_stay_inside() {
    for issuer in [
        json!({"name": "mine"}),
        json!({"name": "mine", "kind": "Issuer"}),
        json!({"name": "shared-ca", "kind": "ClusterIssuer", "group": "example.com"}),
    ] {
        let c = leaf(json!({"issuerRef": issuer}));
        assert_eq!(host_certificate(&vc(), &c, &policy()), Ok(None), "{issuer}");
    }
}

#[test]
fn other_cluster_issuers_are_refused_naming_the_allowed_ones() {
    let r = refused(&leaf(
        json!({"issuerRef": {"name": "internal-ca", "kind": "ClusterIssuer"}}),
    ));
    assert_eq!(r.reason, "CertificateIssuerDenied");
    assert!(r.message.contains("internal-ca"), "{}", r.message);
    assert!(r.message.contains("allowed: shared-ca"), "{}", r.message);
}

#[test]
fn hosts_outside_the_allowed_patterns_are_refused() {
    for names in [
        json!({"dnsNames": ["api.my.example.com", "shop.other.example.com"]}),
        json!({"dnsNames": [], "commonName": "my.example.com"}),
    ] {
        let r = refused(&leaf(names.clone()));
        assert_eq!(r.reason, "CertificateHostDenied", "{names}");
        assert!(r.message.contains("*.my.example.com"), "{}", r.message);
    }
    let r = refused(&leaf(json!({"dnsNames": []})));
    assert_eq!(r.reason, "CertificateHostDenied");
    assert!(r.message.contains("names no host"), "{}", r.message);
}

#[test]
fn what_no_host_policy_covers_is_refused() {
    for (field, value) in [
        ("isCA", json!(true)),
        ("ipAddresses", json!(["10.0.0.1"])),
        ("uris", json!(["spiffe://cluster.local/ns/x"])),
        ("emailAddresses", json!(["a@example.com"])),
        ("otherNames", json!([{"oid": "1.2.3", "utf8Value": "x"}])),
        ("literalSubject", json!("CN=kube-apiserver")),
        ("keystores", json!({"pkcs12": {"create": true}})),
    ] {
        let r = refused(&leaf(json!({ field: value })));
        assert_eq!(r.reason, "CertificateFieldDenied", "{field}");
        assert!(r.message.contains(field), "{field}: {}", r.message);
    }
    // Empty or false is the same as absent.
    let c = leaf(json!({"isCA": false, "ipAddresses": [], "uris": null}));
    assert!(host_certificate(&vc(), &c, &policy()).unwrap().is_some());
}

#[test]
fn a_certificate_without_secret_name_is_refused() {
    let mut c = leaf(json!({}));
    c.spec.as_object_mut().unwrap().remove("secretName");
    assert_eq!(refused(&c).reason, "CertificateSecretMissing");
}

#[test]
fn status_comes_up_without_host_names_and_stale_fields_are_cleared() {
    let mut v = leaf(json!({}));
    let mut h = leaf(json!({}));
    h.status = Some(json!({
        "conditions": [{"type": "Ready", "status": "True"}],
        "notAfter": "2027-01-01T00:00:00Z",
        "nextPrivateKeySecretName": "api-tls-x-shop-x-my-abcde",
    }));
    let patch = status_up(&v, &h).unwrap();
    assert_eq!(
        patch,
        json!({"status": {"conditions": [{"type": "Ready", "status": "True"}], "notAfter": "2027-01-01T00:00:00Z"}})
    );
    v.status = Some(patch["status"].clone());
    assert_eq!(status_up(&v, &h), None, "current");
    v.status = Some(
        json!({"lastFailureTime": "2026-01-01T00:00:00Z", "notAfter": "2027-01-01T00:00:00Z",
        "conditions": [{"type": "Ready", "status": "True"}]}),
    );
    assert_eq!(
        status_up(&v, &h).unwrap()["status"]["lastFailureTime"],
        Value::Null,
        "a field the host no longer reports is removed"
    );
}

#[test]
fn it_serializes_as_the_api_expects() {
    let v = serde_json::to_value(leaf(json!({}))).unwrap();
    assert_eq!(v["apiVersion"], "cert-manager.io/v1");
    assert_eq!(v["kind"], "Certificate");
    assert!(v.get("status").is_none());
    let back: Certificate = serde_json::from_value(v).unwrap();
    assert_eq!(back, leaf(json!({})));
}
