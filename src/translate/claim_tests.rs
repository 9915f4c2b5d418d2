use serde_json::json;

use super::*;

fn vc() -> VclusterName {
    VclusterName::new("vc").unwrap()
}

fn claim(extra: Value) -> PersistentVolumeClaim {
    let mut base = json!({
        "metadata": {"name": "data-db-0", "namespace": "shop", "uid": "u1",
            "labels": {"app": "db"},
            "annotations": {"note": "x", "pv.kubernetes.io/bind-completed": "yes",
                "volume.kubernetes.io/selected-node": "n1", "vcluster.dev/uid": "spoof"}},
        "spec": {"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem",
            "resources": {"requests": {"storage": "1Gi"}}, "storageClassName": "fast",
            "selector": {"matchLabels": {"tier": "gold"}}}
    });
    crate::sync::tests::merge(&mut base, extra);
    serde_json::from_value(base).unwrap()
}

fn policy() -> StorageClassPolicy {
    StorageClassPolicy::new(&["fast=ssd"], &["ssd", "standard"]).unwrap()
}

fn spec(c: &PersistentVolumeClaim) -> &PersistentVolumeClaimSpec {
    c.spec.as_ref().unwrap()
}

#[test]
fn the_host_claim_keeps_the_request_and_maps_the_class() {
    let out = host_claim(&vc(), &claim(json!({})), &policy(), None).unwrap();
    let s = spec(&out);
    assert_eq!(s.storage_class_name.as_deref(), Some("ssd"));
    assert_eq!(
        s.access_modes.as_deref(),
        Some(&["ReadWriteOnce".to_owned()][..])
    );
    assert_eq!(s.volume_mode.as_deref(), Some("Filesystem"));
    assert_eq!(requested(&out).unwrap().0, "1Gi");
    assert_eq!(
        s.selector.as_ref().unwrap().match_labels.as_ref().unwrap()["tier"],
        "gold"
    );
    assert_eq!(s.volume_name, None);
    // Controller and reserved annotations stay behind.
    let ann = out.metadata.annotations.unwrap();
    assert_eq!(ann.len(), 1, "{ann:?}");
    assert_eq!(ann["note"], "x");
    assert_eq!(out.metadata.labels.unwrap()["app"], "db");
}

#[test]
fn a_class_that_is_not_allowed_is_refused() {
    let r = host_claim(
        &vc(),
        &claim(json!({"spec": {"storageClassName": "gold"}})),
        &policy(),
        None,
    )
    .unwrap_err();
    assert_eq!(r.reason, "StorageClassNotAllowed");
    // No class: the host's default.
    let mut c = claim(json!({}));
    c.spec.as_mut().unwrap().storage_class_name = None;
    let out = host_claim(&vc(), &c, &policy(), None).unwrap();
    assert_eq!(spec(&out).storage_class_name, None);
}

#[test]
fn a_claim_data_source_is_renamed_and_others_are_refused() {
    let c = claim(json!({"spec": {
        "dataSource": {"kind": "PersistentVolumeClaim", "name": "seed"},
        "dataSourceRef": {"kind": "PersistentVolumeClaim", "name": "seed"}}}));
    let out = host_claim(&vc(), &c, &policy(), None).unwrap();
    assert_eq!(
        spec(&out).data_source.as_ref().unwrap().name,
        "seed-x-shop-x-vc"
    );
    assert_eq!(
        spec(&out).data_source_ref.as_ref().unwrap().name,
        "seed-x-shop-x-vc"
    );
    for bad in [
        json!({"spec": {"dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "s1"}}}),
        json!({"spec": {"dataSourceRef": {"kind": "PersistentVolumeClaim", "name": "seed", "namespace": "other"}}}),
    ] {
        let r = host_claim(&vc(), &claim(bad), &policy(), None).unwrap_err();
        assert_eq!(r.reason, "DataSourceNotSupported");
    }
}

#[test]
fn a_tenant_chosen_volume_is_refused_but_its_own_binding_is_not() {
    let r = host_claim(
        &vc(),
        &claim(json!({"spec": {"volumeName": "pvc-of-someone-else"}})),
        &policy(),
        None,
    )
    .unwrap_err();
    assert_eq!(r.reason, "VolumeNameNotSupported");
    let bound = claim(json!({"spec": {"volumeName": "pvc-u1"}}));
    let out = host_claim(&vc(), &bound, &policy(), None).unwrap();
    assert_eq!(spec(&out).volume_name, None);
}

#[test]
fn a_larger_request_goes_down_and_a_smaller_one_never_does() {
    let host = claim(json!({"spec": {"resources": {"requests": {"storage": "2Gi"}}}}));
    let v = claim(json!({"spec": {"resources": {"requests": {"storage": "3Gi"}}}}));
    let out = host_claim(&vc(), &v, &policy(), Some(&host)).unwrap();
    assert_eq!(requested(&out).unwrap().0, "3Gi");
    let v = claim(json!({"spec": {"resources": {"requests": {"storage": "1500Mi"}}}}));
    let out = host_claim(&vc(), &v, &policy(), Some(&host)).unwrap();
    assert_eq!(requested(&out).unwrap().0, "2Gi");
}

#[test]
fn quantities_compare_in_bytes() {
    let b = |s: &str| bytes(&Quantity(s.into()));
    assert_eq!(b("1Gi"), Some(1024f64.powi(3)));
    assert_eq!(b("1G"), Some(1e9));
    assert_eq!(b("1500"), Some(1500.0));
    assert_eq!(b("1e3"), Some(1000.0));
    assert_eq!(b("2x"), None);
    assert!(b("1Gi") > b("1000Mi"));
}

#[test]
fn status_and_binding_come_up() {
    let v = claim(json!({}));
    let host = claim(
        json!({"status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"],
        "capacity": {"storage": "1Gi"}}}),
    );
    let patch = status_up(&v, &host).unwrap();
    assert_eq!(patch["status"]["phase"], "Bound");
    assert_eq!(patch["status"]["capacity"]["storage"], "1Gi");
    let mut up = v.clone();
    up.status = host.status.clone();
    assert_eq!(status_up(&up, &host), None);
    assert!(is_bound(&host) && !is_bound(&v));
    let bind = bind_patch(&v).unwrap();
    assert_eq!(bind["spec"]["volumeName"], "pvc-u1");
    let bound = claim(json!({"spec": {"volumeName": "pvc-u1"}}));
    assert_eq!(bind_patch(&bound), None);
}

#[test]
fn the_virtual_volume_names_nothing_of_the_host() {
    let v = claim(json!({}));
    let host = claim(json!({
        "metadata": {"name": "data-db-0-x-shop-x-vc", "namespace": "host-ns"},
        "spec": {"volumeName": "pvc-host-uid", "storageClassName": "ssd"},
        "status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"}}}));
    let pv = virtual_volume(&vc(), &v, &host, "Retain").unwrap();
    assert_eq!(pv.metadata.name.as_deref(), Some("pvc-u1"));
    let s = pv.spec.as_ref().unwrap();
    assert_eq!(s.capacity.as_ref().unwrap()["storage"].0, "1Gi");
    assert_eq!(s.storage_class_name.as_deref(), Some("fast"));
    assert_eq!(
        s.persistent_volume_reclaim_policy.as_deref(),
        Some("Retain")
    );
    let r = s.claim_ref.as_ref().unwrap();
    assert_eq!(
        (r.namespace.as_deref(), r.name.as_deref(), r.uid.as_deref()),
        (Some("shop"), Some("data-db-0"), Some("u1"))
    );
    let text = serde_json::to_string(&pv).unwrap();
    for host_detail in [
        "host-ns",
        "pvc-host-uid",
        "x-shop-x-vc",
        "hostPath",
        "nodeAffinity",
    ] {
        assert!(!text.contains(host_detail), "{host_detail} in {text}");
    }
    // Not bound on the host: no volume.
    assert!(virtual_volume(&vc(), &v, &claim(json!({})), "Delete").is_none());
}
