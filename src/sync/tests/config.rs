//! The ConfigMap and Secret rules' decisions over in-memory caches.

use serde_json::{Value, json};

use super::*;
use crate::sync::cache::filled;
use crate::sync::certs::MIRROR_LABEL;
use crate::sync::tests::{merged, names, obj, pod_using, removed, synced};

fn configmap(namespace: &str, name: &str) -> ConfigMap {
    obj(json!({
        "metadata": {"name": name, "namespace": namespace, "uid": "c1",
            "labels": {"app": "web", "vcluster.dev/owner": "spoof"}},
        "data": {"k": "v"}
    }))
}

fn secret(name: &str, extra: Value) -> Secret {
    obj(merged(
        json!({"metadata": {"name": name, "namespace": "shop"}, "data": {"k": "dg=="}}),
        extra,
    ))
}

fn mounting(volume: Value) -> Pod {
    pod_using(
        "shop",
        "web",
        json!({"containers": [{"name": "app", "image": "nginx"}], "volumes": [volume]}),
    )
}

fn ingress(namespace: &str, annotations: Value) -> Ingress {
    obj(json!({
        "metadata": {"name": "web", "namespace": namespace, "annotations": annotations},
        "spec": {"tls": [{"hosts": ["a.example.com"], "secretName": "web-tls"}]}
    }))
}

fn configmaps(pods: Vec<Pod>) -> ConfigRule<ConfigMap> {
    ConfigRule::new(Scope::Referenced, Some(filled(pods)), Some(filled(vec![])))
}

fn secrets(pods: Vec<Pod>, ingresses: Vec<Ingress>) -> ConfigRule<Secret> {
    ConfigRule::new(
        Scope::Referenced,
        Some(filled(pods)),
        Some(filled(ingresses)),
    )
}

#[test]
fn a_configmap_goes_down_only_for_a_pod_of_its_namespace() {
    let volume = json!({"name": "cfg", "configMap": {"name": "settings"}});
    let cm = configmap("shop", "settings");
    let out = synced(configmaps(vec![mounting(volume.clone())]).decide(&names(), &cm, None));
    assert_eq!(out.data, cm.data, "the content goes down");
    let labels = out.metadata.labels.unwrap();
    assert_eq!(labels.get("app").map(String::as_str), Some("web"));
    assert!(
        !labels.contains_key("vcluster.dev/owner"),
        "reserved labels are the engine's"
    );

    let cases: [(&str, Vec<Pod>, ConfigMap); 4] = [
        ("no pod", vec![], cm.clone()),
        (
            "a pod of another namespace",
            vec![mounting(volume.clone())],
            configmap("other", "settings"),
        ),
        (
            "a pod that uses another ConfigMap",
            vec![mounting(volume)],
            configmap("shop", "unused"),
        ),
        (
            "a pod that only mentions the name",
            vec![pod_using(
                "shop",
                "web",
                json!({"containers": [{"name": "app", "image": "nginx",
                    "env": [{"name": "X", "value": "settings"}]}]}),
            )],
            cm.clone(),
        ),
    ];
    for (case, pods, cm) in cases {
        let got = configmaps(pods).decide(&names(), &cm, None);
        assert!(removed(&got), "{case}: {got:?}");
    }
}

#[test]
fn optional_references_and_every_kind_of_reference_count() {
    for (case, spec) in [
        (
            "optional volume",
            json!({"containers": [{"name": "a", "image": "b"}],
                "volumes": [{"name": "v", "configMap": {"name": "settings", "optional": true}}]}),
        ),
        (
            "env from",
            json!({"containers": [{"name": "a", "image": "b",
                "envFrom": [{"configMapRef": {"name": "settings"}}]}]}),
        ),
        (
            "key of an init container",
            json!({"containers": [{"name": "a", "image": "b"}],
                "initContainers": [{"name": "i", "image": "b",
                "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "k"}}}]}]}),
        ),
    ] {
        let pods = vec![pod_using("shop", "web", spec)];
        let got = configmaps(pods).decide(&names(), &configmap("shop", "settings"), None);
        assert!(matches!(got, Decision::Sync(_)), "{case}: {got:?}");
    }
}

#[test]
fn without_synced_pods_nothing_is_referenced_and_scope_all_takes_everything() {
    let cm = configmap("shop", "settings");
    let no_pods = ConfigRule::<ConfigMap>::new(Scope::Referenced, None, None);
    assert!(removed(&no_pods.decide(&names(), &cm, None)));
    let all = ConfigRule::<ConfigMap>::new(Scope::All, None, None);
    synced(all.decide(&names(), &cm, None));
}

#[test]
fn a_deleted_configmap_goes_from_the_host_even_if_referenced() {
    let mut cm = configmap("shop", "settings");
    cm.metadata.deletion_timestamp = Some(obj(json!("2026-01-01T00:00:00Z")));
    let pods = vec![mounting(
        json!({"name": "cfg", "configMap": {"name": "settings"}}),
    )];
    assert!(removed(&configmaps(pods).decide(&names(), &cm, None)));
    let all = ConfigRule::<ConfigMap>::new(Scope::All, None, None);
    assert!(removed(&all.decide(&names(), &cm, None)));
}

#[test]
fn token_secrets_and_certificate_mirrors_never_go_down() {
    let all = ConfigRule::<Secret>::new(Scope::All, None, None);
    let token = secret(
        "default-token",
        json!({"type": "kubernetes.io/service-account-token"}),
    );
    assert!(removed(&all.decide(&names(), &token, None)));
    let mirror = secret(
        "web-tls",
        json!({"metadata": {"labels": {MIRROR_LABEL: "true"}}}),
    );
    assert!(removed(&all.decide(&names(), &mirror, None)));
    // Even when a pod mounts them.
    let pods = vec![mounting(
        json!({"name": "t", "secret": {"secretName": "default-token"}}),
    )];
    assert!(removed(&secrets(pods, vec![]).decide(
        &names(),
        &token,
        None
    )));
    let plain = secret("web-tls", json!({"type": "kubernetes.io/tls"}));
    let out = synced(all.decide(&names(), &plain, None));
    assert_eq!(out.type_.as_deref(), Some("kubernetes.io/tls"));
    assert_eq!(out.data, plain.data);
}

#[test]
fn an_ingress_tls_secret_goes_down_unless_cert_manager_writes_it() {
    let tls = secret("web-tls", json!({"type": "kubernetes.io/tls"}));
    let plain = secrets(vec![], vec![ingress("shop", json!({}))]);
    synced(plain.decide(&names(), &tls, None));
    for (case, ing) in [
        (
            "cluster issuer",
            ingress("shop", json!({"cert-manager.io/cluster-issuer": "le"})),
        ),
        (
            "issuer",
            ingress("shop", json!({"cert-manager.io/issuer": "le"})),
        ),
        (
            "tls-acme",
            ingress("shop", json!({"kubernetes.io/tls-acme": "true"})),
        ),
        ("another namespace", ingress("other", json!({}))),
    ] {
        let got = secrets(vec![], vec![ing]).decide(&names(), &tls, None);
        assert!(removed(&got), "{case}: {got:?}");
    }
    // A ConfigMap of that name is not an ingress's to ask for.
    let cm = configmap("shop", "web-tls");
    let rule = ConfigRule::<ConfigMap>::new(
        Scope::Referenced,
        Some(filled(vec![])),
        Some(filled(vec![ingress("shop", json!({}))])),
    );
    assert!(removed(&rule.decide(&names(), &cm, None)));
}

#[test]
fn pull_secrets_and_secret_keys_are_references() {
    let s = secret("regcred", json!({}));
    let pods = vec![pod_using(
        "shop",
        "web",
        json!({"containers": [{"name": "a", "image": "b"}], "imagePullSecrets": [{"name": "regcred"}]}),
    )];
    synced(secrets(pods, vec![]).decide(&names(), &s, None));
    let pods = vec![pod_using(
        "shop",
        "web",
        json!({"containers": [{"name": "a", "image": "b",
            "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "regcred", "key": "k"}}}]}]}),
    )];
    synced(secrets(pods, vec![]).decide(&names(), &s, None));
    // A ConfigMap reference of that name is not a Secret reference.
    let pods = vec![mounting(
        json!({"name": "cfg", "configMap": {"name": "regcred"}}),
    )];
    assert!(removed(&secrets(pods, vec![]).decide(&names(), &s, None)));
}

#[test]
fn the_root_ca_copy_also_trusts_the_front_door() {
    let rule = ConfigRule::<ConfigMap>::new(Scope::All, None, None)
        .trusting(Some("FRONT DOOR CA\n".into()));
    let root: ConfigMap = obj(json!({
        "metadata": {"name": "kube-root-ca.crt", "namespace": "shop"},
        "data": {"ca.crt": "VIRTUAL CA"}
    }));
    let out = synced(rule.decide(&names(), &root, None));
    assert_eq!(
        out.data.unwrap()["ca.crt"],
        "VIRTUAL CA\nFRONT DOOR CA\n",
        "pods verify the front door they reach"
    );
    // Any other ConfigMap is copied as it is.
    let other = configmap("shop", "settings");
    let out = synced(rule.decide(&names(), &other, None));
    assert_eq!(out.data, other.data);
}
