//! The claim rule's decisions over in-memory objects, and which virtual
//! volumes the volume loop wants.

use std::sync::Arc;

use serde_json::{Value, json};

use super::*;
use crate::sync::cache::filled;
use crate::sync::storage_classes::HostClasses;
use crate::sync::tests::{key, merged, names, obj, removed, synced};
use crate::sync::volumes::{Sources, desired};

fn claim(extra: Value) -> PersistentVolumeClaim {
    obj(merged(
        json!({
            "metadata": {"name": "data", "namespace": "shop", "uid": "u1"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast",
                "resources": {"requests": {"storage": "1Gi"}}}
        }),
        extra,
    ))
}

/// The host copy of `data`, as the engine writes it, with `extra`.
fn host_copy(extra: Value) -> PersistentVolumeClaim {
    let own = names();
    let own = own.ownership();
    let k = key("shop", "data");
    obj(merged(
        json!({
            "metadata": {"name": "data-x-shop-x-vc", "namespace": "host-ns",
                "labels": own.labels(&k), "annotations": own.annotations(&k, "u1")},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "ssd",
                "resources": {"requests": {"storage": "1Gi"}}}
        }),
        extra,
    ))
}

fn rule() -> ClaimRule {
    ClaimRule::new(StorageClassPolicy::new(&["fast=ssd"], &["ssd"]).unwrap())
}

fn bound() -> Value {
    json!({"status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"}}})
}

#[test]
fn a_claim_goes_down_in_its_host_class() {
    let out = synced(rule().decide(&names(), &claim(json!({})), None));
    assert_eq!(out.spec.unwrap().storage_class_name.as_deref(), Some("ssd"));
}

#[test]
fn a_claim_in_a_class_not_allowed_is_refused() {
    match rule().decide(
        &names(),
        &claim(json!({"spec": {"storageClassName": "gold"}})),
        None,
    ) {
        Decision::Reject(reason, message) => {
            assert_eq!(reason, "StorageClassNotAllowed");
            assert!(message.contains("\"gold\""), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn deletion_goes_both_ways() {
    let deleting = claim(json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}));
    assert!(removed(&rule().decide(
        &names(),
        &deleting,
        Some(&host_copy(json!({})))
    )));
    // Bound, and its host claim is gone: so is its volume.
    let was_bound = claim(json!({"spec": {"volumeName": "pvc-u1"}}));
    assert!(matches!(
        rule().decide(&names(), &was_bound, None),
        Decision::DeleteVirtual
    ));
    // Never bound: the host claim is (re)created.
    synced(rule().decide(&names(), &claim(json!({})), None));
}

#[test]
fn the_host_status_comes_up() {
    let patch = rule()
        .status_up(&claim(json!({})), &host_copy(bound()))
        .unwrap();
    assert_eq!(patch["status"]["phase"], "Bound");
    assert_eq!(patch["status"]["capacity"]["storage"], "1Gi");
}

fn sources(virt: Vec<PersistentVolumeClaim>, host: Vec<PersistentVolumeClaim>) -> Sources {
    Sources {
        virtual_claims: filled(virt),
        host_claims: filled(host),
        classes: Arc::new(HostClasses::default()),
        wake: Arc::default(),
    }
}

#[test]
fn a_bound_claim_gets_a_virtual_volume_and_others_do_not() {
    let want = desired(
        &names(),
        &sources(vec![claim(json!({}))], vec![host_copy(bound())]),
    );
    let pv = &want["pvc-u1"];
    let spec = pv.spec.as_ref().unwrap();
    assert_eq!(
        spec.claim_ref.as_ref().unwrap().name.as_deref(),
        Some("data")
    );
    assert_eq!(
        spec.persistent_volume_reclaim_policy.as_deref(),
        Some("Delete")
    );
    for (what, virt, host) in [
        (
            "pending on the host",
            vec![claim(json!({}))],
            vec![host_copy(json!({}))],
        ),
        ("virtual claim gone", vec![], vec![host_copy(bound())]),
        (
            "a re-created claim of the same name",
            vec![claim(json!({"metadata": {"uid": "u2"}}))],
            vec![host_copy(bound())],
        ),
        (
            "virtual claim being deleted",
            vec![claim(
                json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}),
            )],
            vec![host_copy(bound())],
        ),
    ] {
        assert!(desired(&names(), &sources(virt, host)).is_empty(), "{what}");
    }
}
