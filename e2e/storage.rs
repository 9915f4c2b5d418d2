//! End-to-end tests of storage on the KWOK lane: the dev stack's host has a
//! default StorageClass whose claims bind (its own hostPath provisioner);
//! tenants' StatefulSets get their claims bound, see their volumes and the
//! host's classes, resize, are refused a class the vcluster may not use,
//! and delete both ways; a syncer killed between claim and pod converges.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, ResourceQuota};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use libtest_mimic::Arguments;
use serde_json::json;
use vcluster::translate::{VclusterName, host_name};

const T: Duration = Duration::from_secs(90);
const VC: &str = "st";
const HOST_NS: &str = "team-st";
const SYNCER_ARGS: &[&str] = &["--allowed-storage-classes", "vcluster-dev"];

type Env = SyncedEnv;

fn hn(ns: &str, name: &str) -> String {
    host_name(&VclusterName::new(VC).unwrap(), ns, name)
}

fn phase_of(c: &PersistentVolumeClaim) -> String {
    c.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

fn capacity(c: &PersistentVolumeClaim) -> String {
    c.status
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .map(|q| q.0.clone())
        .unwrap_or_default()
}

/// Waits until claim `name` of `api` is Bound; returns it.
async fn bound(api: &Api<PersistentVolumeClaim>, name: &str) -> PersistentVolumeClaim {
    eventually(&format!("claim {name} Bound"), T, || async {
        match api.get_opt(name).await.map_err(|e| e.to_string())? {
            Some(c) if phase_of(&c) == "Bound" => Ok(c),
            Some(c) => Err(format!("phase {:?}", phase_of(&c))),
            None => Err("absent".into()),
        }
    })
    .await
}

async fn running(api: &Api<Pod>, name: &str) {
    eventually(&format!("pod {name} Running"), T, || async {
        match api.get_opt(name).await.map_err(|e| e.to_string())? {
            Some(p) if phase(&p) == "Running" => Ok(()),
            Some(p) => Err(format!("phase {:?}", phase(&p))),
            None => Err("absent".into()),
        }
    })
    .await
}

fn claim(name: &str, class: Option<&str>, size: &str) -> serde_json::Value {
    json!({
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
            "resources": {"requests": {"storage": size}}}
    })
}

fn pod_on(name: &str, volume: serde_json::Value) -> serde_json::Value {
    json!({
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "main", "image": "postgres:17",
            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
            "volumes": [volume]}
    })
}

fn statefulset(name: &str, replicas: i32, retention: &str) -> serde_json::Value {
    json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": retention, "whenScaled": "Retain"},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {
                "containers": [{"name": "db", "image": "postgres:17",
                    "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"}]}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]
        }
    })
}

/// A StatefulSet of 2 with claim templates: both claims Bound (inside and on
/// the host), a virtual volume for each, the pods Running; then a resize.
fn statefulset_claims_bind_and_resize(env: &Env) {
    block_on(async {
        let (v, h) = clients(&env.stack).await;
        let ns = "sts";
        namespace(&v, ns).await;
        // The host's default class is mirrored, marked default.
        let classes: Api<StorageClass> = Api::all(v.clone());
        let class = present("the host's class mirrored", &classes, "vcluster-dev").await;
        assert_eq!(
            class.metadata.annotations.unwrap()["storageclass.kubernetes.io/is-default-class"],
            "true"
        );
        create(
            &Api::<StatefulSet>::namespaced(v.clone(), ns),
            statefulset("db", 2, "Retain"),
        )
        .await;
        let vclaims: Api<PersistentVolumeClaim> = Api::namespaced(v.clone(), ns);
        let hclaims: Api<PersistentVolumeClaim> = Api::namespaced(h.clone(), HOST_NS);
        let vpods: Api<Pod> = Api::namespaced(v.clone(), ns);
        let pvs: Api<PersistentVolume> = Api::all(v.clone());
        for i in 0..2 {
            let name = format!("data-db-{i}");
            let c = bound(&vclaims, &name).await;
            assert_eq!(capacity(&c), "1Gi");
            let uid = c.metadata.uid.clone().unwrap();
            let volume = format!("pvc-{uid}");
            assert_eq!(
                c.spec.as_ref().unwrap().volume_name.as_deref(),
                Some(volume.as_str())
            );
            let hc = bound(&hclaims, &hn(ns, &name)).await;
            assert_eq!(
                hc.spec.as_ref().unwrap().storage_class_name.as_deref(),
                Some("vcluster-dev")
            );
            let pv = present("the claim's virtual volume", &pvs, &volume).await;
            let spec = pv.spec.clone().unwrap();
            let r = spec.claim_ref.unwrap();
            assert_eq!(
                (r.namespace.as_deref(), r.name.as_deref()),
                (Some(ns), Some(name.as_str()))
            );
            assert_eq!(spec.storage_class_name.as_deref(), Some("vcluster-dev"));
            assert_eq!(
                spec.persistent_volume_reclaim_policy.as_deref(),
                Some("Delete")
            );
            assert!(spec.host_path.is_none(), "no host path inside: {pv:?}");
            assert!(!serde_json::to_string(&pv).unwrap().contains(HOST_NS));
            running(&vpods, &format!("db-{i}")).await;
        }
        let inside = kubectl_ok(
            &env.stack.vcluster_kubeconfig(),
            &["get", "pvc,pv", "-A"],
            None,
        );
        println!("--- inside: kubectl get pvc,pv -A\n{inside}");
        let host = kubectl_ok(
            &env.stack.host_kubeconfig(),
            &["get", "pvc", "-n", HOST_NS],
            None,
        );
        println!("--- host: kubectl get pvc -n {HOST_NS}\n{host}");
        // Resize: a larger request goes down and the capacity comes up.
        let grow = json!({"spec": {"resources": {"requests": {"storage": "2Gi"}}}});
        vclaims
            .patch("data-db-0", &PatchParams::default(), &Patch::Merge(&grow))
            .await
            .unwrap();
        eventually("the resized capacity inside", T, || async {
            let c = vclaims.get("data-db-0").await.map_err(|e| e.to_string())?;
            let uid = c.metadata.uid.clone().unwrap_or_default();
            let pv = pvs
                .get(&format!("pvc-{uid}"))
                .await
                .map_err(|e| e.to_string())?;
            let pv_cap = pv
                .spec
                .and_then(|s| s.capacity)
                .map(|c| c["storage"].0.clone());
            match (capacity(&c).as_str(), pv_cap.as_deref()) {
                ("2Gi", Some("2Gi")) => Ok(()),
                other => Err(format!("claim, volume: {other:?}")),
            }
        })
        .await;
        let hc = hclaims.get(&hn(ns, "data-db-0")).await.unwrap();
        assert_eq!(capacity(&hc), "2Gi");
    });
}

/// A claim in a class the vcluster may not use: a Warning, nothing on the host.
fn forbidden_class_is_refused_with_an_event(env: &Env) {
    block_on(async {
        let (v, h) = clients(&env.stack).await;
        let ns = "forbidden";
        namespace(&v, ns).await;
        let vclaims: Api<PersistentVolumeClaim> = Api::namespaced(v.clone(), ns);
        create(&vclaims, claim("gold", Some("gold"), "1Gi")).await;
        let ev = event_with_reason(&v, ns, "StorageClassNotAllowed").await;
        assert_eq!(ev.type_.as_deref(), Some("Warning"));
        assert!(ev.note.unwrap().contains("\"gold\""));
        let hclaims: Api<PersistentVolumeClaim> = Api::namespaced(h.clone(), HOST_NS);
        assert!(hclaims.get_opt(&hn(ns, "gold")).await.unwrap().is_none());
        assert_eq!(phase_of(&vclaims.get("gold").await.unwrap()), "Pending");
    });
}

/// Deleting the virtual claim deletes the host claim and both volumes; a
/// bound claim whose host claim is deleted goes from the virtual cluster.
fn deletion_goes_both_ways(env: &Env) {
    block_on(async {
        let (v, h) = clients(&env.stack).await;
        let ns = "deletion";
        namespace(&v, ns).await;
        let vclaims: Api<PersistentVolumeClaim> = Api::namespaced(v.clone(), ns);
        let hclaims: Api<PersistentVolumeClaim> = Api::namespaced(h.clone(), HOST_NS);
        let vpvs: Api<PersistentVolume> = Api::all(v.clone());
        let hpvs: Api<PersistentVolume> = Api::all(h.clone());
        for name in ["down", "up"] {
            create(&vclaims, claim(name, None, "1Gi")).await;
        }
        let down = bound(&vclaims, "down").await;
        bound(&vclaims, "up").await;
        let hdown = bound(&hclaims, &hn(ns, "down")).await;
        let host_volume = hdown.spec.unwrap().volume_name.unwrap();
        let virtual_volume = format!("pvc-{}", down.metadata.uid.unwrap());
        present("the virtual volume", &vpvs, &virtual_volume).await;
        vclaims
            .delete("down", &DeleteParams::default())
            .await
            .unwrap();
        gone("the host claim", &hclaims, &hn(ns, "down")).await;
        gone("the virtual volume", &vpvs, &virtual_volume).await;
        gone(
            "the host volume (its provisioner deletes it)",
            &hpvs,
            &host_volume,
        )
        .await;
        gone("the virtual claim", &vclaims, "down").await;
        // The other way.
        hclaims
            .delete(&hn(ns, "up"), &DeleteParams::default())
            .await
            .unwrap();
        gone("the virtual claim of a deleted host claim", &vclaims, "up").await;
    });
}

/// A generic ephemeral volume: the virtual plane makes the claim, the host
/// pod mounts its host copy, and the claim goes with the pod.
fn ephemeral_volume_works(env: &Env) {
    block_on(async {
        let (v, h) = clients(&env.stack).await;
        let ns = "ephemeral";
        namespace(&v, ns).await;
        let vpods: Api<Pod> = Api::namespaced(v.clone(), ns);
        let volume = json!({"name": "data", "ephemeral": {"volumeClaimTemplate": {"spec": {
            "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}}});
        create(&vpods, pod_on("scratch", volume)).await;
        let vclaims: Api<PersistentVolumeClaim> = Api::namespaced(v.clone(), ns);
        bound(&vclaims, "scratch-data").await;
        running(&vpods, "scratch").await;
        let hpod = Api::<Pod>::namespaced(h.clone(), HOST_NS)
            .get(&hn(ns, "scratch"))
            .await
            .unwrap();
        let vol = &hpod.spec.unwrap().volumes.unwrap()[0];
        assert_eq!(
            vol.persistent_volume_claim.as_ref().unwrap().claim_name,
            hn(ns, "scratch-data")
        );
        assert!(vol.ephemeral.is_none());
        vpods
            .delete("scratch", &DeleteParams::default())
            .await
            .unwrap();
        let hclaims: Api<PersistentVolumeClaim> = Api::namespaced(h.clone(), HOST_NS);
        gone(
            "the ephemeral claim on the host",
            &hclaims,
            &hn(ns, "scratch-data"),
        )
        .await;
    });
}

/// `whenDeleted: Delete`: deleting the StatefulSet deletes its claims, inside
/// and on the host (the virtual plane's controllers and garbage collector).
fn retention_policy_deletes_claims(env: &Env) {
    block_on(async {
        let (v, h) = clients(&env.stack).await;
        let ns = "retention";
        namespace(&v, ns).await;
        let sets: Api<StatefulSet> = Api::namespaced(v.clone(), ns);
        create(&sets, statefulset("cache", 1, "Delete")).await;
        let vclaims: Api<PersistentVolumeClaim> = Api::namespaced(v.clone(), ns);
        let hclaims: Api<PersistentVolumeClaim> = Api::namespaced(h.clone(), HOST_NS);
        bound(&vclaims, "data-cache-0").await;
        running(&Api::namespaced(v.clone(), ns), "cache-0").await;
        sets.delete("cache", &DeleteParams::default())
            .await
            .unwrap();
        gone("the claim inside", &vclaims, "data-cache-0").await;
        gone("the claim on the host", &hclaims, &hn(ns, "data-cache-0")).await;
    });
}

/// The syncer killed after a claim is made and before its pod: after the
/// restart the claim binds once and the pod runs.
fn syncer_killed_between_claim_and_pod(env: &Env) {
    block_on(async {
        let (v, h) = clients(&env.stack).await;
        let ns = "restart";
        namespace(&v, ns).await;
        let vclaims: Api<PersistentVolumeClaim> = Api::namespaced(v.clone(), ns);
        create(&vclaims, claim("wal", None, "1Gi")).await;
        let hclaims: Api<PersistentVolumeClaim> = Api::namespaced(h.clone(), HOST_NS);
        present("the host claim", &hclaims, &hn(ns, "wal")).await;
        env.kill_syncer();
        let vpods: Api<Pod> = Api::namespaced(v.clone(), ns);
        let volume = json!({"name": "data", "persistentVolumeClaim": {"claimName": "wal"}});
        create(&vpods, pod_on("writer", volume)).await;
        env.restart_syncer();
        bound(&vclaims, "wal").await;
        running(&vpods, "writer").await;
        let ours = hclaims
            .list(&ListParams::default().labels(&format!("vcluster.dev/namespace={ns}")))
            .await
            .unwrap();
        assert_eq!(ours.items.len(), 1, "one host claim: {:?}", ours.items);
    });
}

/// The host namespace's ResourceQuota refuses a claim: the host's refusal
/// is a Warning on the virtual claim, and the claim goes down once the quota
/// allows it.
fn a_claim_over_the_host_quota_is_refused_with_an_event(env: &Env) {
    block_on(async {
        let (v, h) = clients(&env.stack).await;
        let ns = "quota";
        namespace(&v, ns).await;
        let quotas: Api<ResourceQuota> = Api::namespaced(h.clone(), HOST_NS);
        create(
            &quotas,
            json!({"metadata": {"name": "storage"}, "spec": {"hard": {"requests.storage": "50Gi"}}}),
        )
        .await;
        // The quota controller computes its usage before it admits anything.
        eventually("the quota's usage", T, || async {
            let q = quotas.get("storage").await.map_err(|e| e.to_string())?;
            q.status
                .and_then(|s| s.used)
                .map(|_| ())
                .ok_or_else(|| "no usage yet".to_owned())
        })
        .await;
        let vclaims: Api<PersistentVolumeClaim> = Api::namespaced(v.clone(), ns);
        create(&vclaims, claim("huge", None, "100Gi")).await;
        let ev = event_with_reason(&v, ns, "SyncRejected").await;
        assert_eq!(ev.type_.as_deref(), Some("Warning"));
        let note = ev.note.unwrap();
        assert!(note.contains("exceeded quota"), "{note}");
        let hclaims: Api<PersistentVolumeClaim> = Api::namespaced(h.clone(), HOST_NS);
        assert!(hclaims.get_opt(&hn(ns, "huge")).await.unwrap().is_none());
        quotas
            .delete("storage", &DeleteParams::default())
            .await
            .unwrap();
        bound(&vclaims, "huge").await;
    });
}

/// A StatefulSet of N replicas with one claim each (N from
/// `VCLUSTER_STORAGE_SCALE`, default 10): time until every pod is Running,
/// through the vcluster and directly on the host. Figures, not a pass/fail
/// timing; it fails only if the pods do not all run.
fn statefulset_of_n_virtual_and_direct(env: &Env) {
    let n: i32 = std::env::var("VCLUSTER_STORAGE_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    block_on(async {
        let (v, h) = clients(&env.stack).await;
        let mut set = statefulset("scale", n, "Delete");
        set["spec"]["podManagementPolicy"] = "Parallel".into();
        let mut figures = Vec::new();
        for (side, client) in [("virtual", &v), ("direct", &h)] {
            let ns = format!("scale-{side}");
            namespace(client, &ns).await;
            let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
            let started = std::time::Instant::now();
            create(
                &Api::<StatefulSet>::namespaced(client.clone(), &ns),
                set.clone(),
            )
            .await;
            let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
            let want = n as usize;
            eventually(
                &format!("{n} pods Running, {n} claims Bound ({side})"),
                Duration::from_secs(600),
                || async {
                    let l = pods
                        .list(&ListParams::default())
                        .await
                        .map_err(|e| e.to_string())?;
                    let running = l.items.iter().filter(|p| phase(p) == "Running").count();
                    if running < want {
                        return Err(format!("{running} Running"));
                    }
                    let l = claims
                        .list(&ListParams::default())
                        .await
                        .map_err(|e| e.to_string())?;
                    let bound = l.items.iter().filter(|c| phase_of(c) == "Bound").count();
                    if bound == want {
                        Ok(())
                    } else {
                        Err(format!("{bound} Bound"))
                    }
                },
            )
            .await;
            figures.push((side, started.elapsed()));
        }
        println!(
            "StatefulSet of {n} with a claim each, to all Running: {}",
            figures
                .iter()
                .map(|(side, d)| format!("{side} {:.1} s", d.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(", ")
        );
    });
}

/// `vcluster delete` keeps the claims (and says so) unless `--delete-volumes`.
fn vcluster_delete_keeps_claims_unless_asked(env: &Env) {
    // Nothing may write host copies again meanwhile.
    env.kill_syncer();
    let hk = env.stack.host_kubeconfig();
    let claims = || {
        kubectl_ok(
            &hk,
            &[
                "get",
                "pvc",
                "-n",
                HOST_NS,
                "-l",
                &format!("vcluster.dev/owner={VC}"),
                "-o",
                "name",
            ],
            None,
        )
    };
    let before = claims().lines().count();
    assert!(before > 0, "the suite left claims on the host");
    let delete = |extra: &[&str]| {
        let mut args = vec![
            "delete",
            VC,
            "-n",
            HOST_NS,
            "--kubeconfig",
            hk.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = vcluster(&args);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}{stderr}");
        stdout
    };
    let out = delete(&[]);
    assert!(
        out.contains(&format!("kept {before} PersistentVolumeClaims"))
            && out.contains("--delete-volumes"),
        "{out}"
    );
    assert_eq!(claims().lines().count(), before, "claims kept");
    let out = delete(&["--delete-volumes"]);
    assert!(out.contains("PersistentVolumeClaim"), "{out}");
    eventually_sync("no claim left", T, || {
        let left = claims();
        if left.trim().is_empty() {
            Ok(())
        } else {
            Err(left)
        }
    });
}

const SHARED: &[Test<Env>] = &[
    (
        "statefulset_claims_bind_and_resize",
        statefulset_claims_bind_and_resize,
    ),
    (
        "forbidden_class_is_refused_with_an_event",
        forbidden_class_is_refused_with_an_event,
    ),
    ("deletion_goes_both_ways", deletion_goes_both_ways),
    ("ephemeral_volume_works", ephemeral_volume_works),
    (
        "retention_policy_deletes_claims",
        retention_policy_deletes_claims,
    ),
];

const SERIAL: &[Test<Env>] = &[
    (
        "syncer_killed_between_claim_and_pod",
        syncer_killed_between_claim_and_pod,
    ),
    (
        "a_claim_over_the_host_quota_is_refused_with_an_event",
        a_claim_over_the_host_quota_is_refused_with_an_event,
    ),
    (
        "statefulset_of_n_virtual_and_direct",
        statefulset_of_n_virtual_and_direct,
    ),
    // Last: it deletes the vcluster's host objects.
    (
        "vcluster_delete_keeps_claims_unless_asked",
        vcluster_delete_keeps_claims_unless_asked,
    ),
];

fn main() {
    let args = Arguments::from_args();
    list_or_check(&args, &[SHARED, SERIAL]);
    SyncedEnv::up(&["--nodes", "2"], VC, HOST_NS, SYNCER_ARGS)
        .run(&args, &[(SHARED, None), (SERIAL, Some(1))]);
}
