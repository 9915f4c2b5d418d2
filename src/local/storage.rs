//! Working storage for the dev stack's host: a default StorageClass
//! ([`CLASS`]) and a small provisioner of the project's own that gives each
//! claim of that class a hostPath volume under `<state>/volumes/`, grows it
//! when the claim asks for more, and removes it (directory and volume) once
//! its claim is deleted.
//!
//! Why a provisioner and not static volumes: claims of any size bind, as
//! many as are made (a 100-replica StatefulSet needs no pre-made pool), a
//! resize completes, and everything lives in the state directory, so
//! `vcluster dev down` (or removing the directory) leaves nothing behind. The
//! host's kube-controller-manager runs the volume binder, which binds each
//! claim to the volume made for it (the volume names its claim); its built-in
//! hostPath provisioner would write under `/tmp`, shared by every stack.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeSpec,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::json;

use crate::api::{ApiError, create_if_absent};
use crate::translate::claim::{bytes, requested};

/// The dev host's default StorageClass.
pub const CLASS: &str = "vcluster-dev";
/// Its provisioner's name.
pub const PROVISIONER: &str = "vcluster.dev/dev-hostpath";
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";

/// The StorageClass, made the host's default.
pub fn storage_class() -> StorageClass {
    StorageClass {
        metadata: ObjectMeta {
            name: Some(CLASS.to_owned()),
            annotations: Some(BTreeMap::from([(
                "storageclass.kubernetes.io/is-default-class".to_owned(),
                "true".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        provisioner: PROVISIONER.to_owned(),
        reclaim_policy: Some("Delete".to_owned()),
        volume_binding_mode: Some("Immediate".to_owned()),
        allow_volume_expansion: Some(true),
        ..StorageClass::default()
    }
}

/// Creates the class (if absent).
pub async fn install(host: &kube::Client) -> Result<(), ApiError> {
    create_if_absent(&Api::all(host.clone()), &storage_class())
        .await
        .map_err(ApiError::of(format!("create storage class {CLASS}")))?;
    Ok(())
}

/// The volume for `claim`, under `root`; `None` for a claim this
/// provisioner does not serve (another class, bound, being deleted).
pub fn volume_for(claim: &PersistentVolumeClaim, root: &Path) -> Option<PersistentVolume> {
    let spec = claim.spec.as_ref()?;
    let pending = spec.volume_name.as_deref().is_none_or(str::is_empty)
        && claim.metadata.deletion_timestamp.is_none();
    if spec.storage_class_name.as_deref() != Some(CLASS) || !pending {
        return None;
    }
    let uid = claim.metadata.uid.clone()?;
    let name = format!("pvc-{uid}");
    let path = root.join(&name);
    Some(PersistentVolume {
        metadata: ObjectMeta {
            name: Some(name),
            annotations: Some(BTreeMap::from([(
                PROVISIONED_BY.to_owned(),
                PROVISIONER.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: spec.access_modes.clone(),
            capacity: Some(BTreeMap::from([(
                "storage".to_owned(),
                requested(claim)?.clone(),
            )])),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: claim.metadata.namespace.clone(),
                name: claim.metadata.name.clone(),
                uid: Some(uid),
                ..ObjectReference::default()
            }),
            host_path: Some(HostPathVolumeSource {
                path: path.to_string_lossy().into_owned(),
                type_: Some("DirectoryOrCreate".into()),
            }),
            persistent_volume_reclaim_policy: Some("Delete".into()),
            storage_class_name: Some(CLASS.to_owned()),
            volume_mode: spec.volume_mode.clone(),
            ..PersistentVolumeSpec::default()
        }),
        status: None,
    })
}

fn ours(pv: &PersistentVolume) -> bool {
    pv.annotations().get(PROVISIONED_BY).map(String::as_str) == Some(PROVISIONER)
}

/// One pass over every claim and volume of the host.
async fn pass(host: &kube::Client, root: &Path) -> Result<(), ApiError> {
    let claims: Api<PersistentVolumeClaim> = Api::all(host.clone());
    let volumes: Api<PersistentVolume> = Api::all(host.clone());
    let claim_list = claims
        .list(&ListParams::default())
        .await
        .map_err(ApiError::of("list claims"))?;
    let volume_list = volumes
        .list(&ListParams::default())
        .await
        .map_err(ApiError::of("list volumes"))?;
    let by_name: BTreeMap<String, &PersistentVolume> = volume_list
        .items
        .iter()
        .filter(|v| ours(v))
        .map(|v| (v.name_any(), v))
        .collect();
    for claim in &claim_list.items {
        if let Some(pv) = volume_for(claim, root) {
            let name = pv.name_any();
            if !by_name.contains_key(&name) {
                std::fs::create_dir_all(root.join(&name))
                    .map_err(|e| tracing::warn!(volume = %name, error = %e, "cannot make the volume's directory"))
                    .ok();
                create_if_absent(&volumes, &pv)
                    .await
                    .map_err(ApiError::of(format!("create volume {name}")))?;
                tracing::info!(volume = %name, claim = %claim.name_any(), "volume provisioned");
            }
            continue;
        }
        grow(&claims, &volumes, claim, &by_name).await?;
    }
    for pv in by_name.values() {
        let phase = pv.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Released" | "Failed")) && pv.metadata.deletion_timestamp.is_none()
        {
            let name = pv.name_any();
            let _ = std::fs::remove_dir_all(root.join(&name));
            match volumes.delete(&name, &DeleteParams::default()).await {
                Ok(_) => tracing::info!(volume = %name, "volume of a deleted claim removed"),
                Err(e) if crate::api::status_code(&e) == Some(404) => {}
                Err(e) => return Err(ApiError::new(format!("delete volume {name}"), e)),
            }
        }
    }
    Ok(())
}

/// A bound claim of ours asking for more than its volume has: the volume
/// (a directory, which has no size of its own) and the claim's status grow.
async fn grow(
    claims: &Api<PersistentVolumeClaim>,
    volumes: &Api<PersistentVolume>,
    claim: &PersistentVolumeClaim,
    by_name: &BTreeMap<String, &PersistentVolume>,
) -> Result<(), ApiError> {
    let Some(pv) = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .and_then(|n| by_name.get(n))
    else {
        return Ok(());
    };
    let Some(want) = requested(claim) else {
        return Ok(());
    };
    let has = |c: Option<
        &BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >| { c.and_then(|c| c.get("storage")).and_then(bytes) };
    let want_bytes = bytes(want);
    let pv_capacity = has(pv.spec.as_ref().and_then(|s| s.capacity.as_ref()));
    let name = pv.name_any();
    if want_bytes > pv_capacity {
        let patch = json!({"spec": {"capacity": {"storage": want}}});
        volumes
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(ApiError::of(format!("grow volume {name}")))?;
    }
    let claim_capacity = has(claim.status.as_ref().and_then(|s| s.capacity.as_ref()));
    if want_bytes > claim_capacity {
        let ns = claim.namespace().unwrap_or_default();
        let api: Api<PersistentVolumeClaim> = Api::namespaced(claims.clone().into_client(), &ns);
        let patch = json!({"status": {"capacity": {"storage": want}, "allocatedResources": {"storage": want}}});
        api.patch_status(
            &claim.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(ApiError::of(format!(
            "grow claim {ns}/{}",
            claim.name_any()
        )))?;
        tracing::info!(volume = %name, size = %want.0, "volume grown");
    }
    Ok(())
}

/// Serves claims of [`CLASS`] until the task is dropped: a pass on every
/// change of a claim or volume, and every few seconds.
pub async fn run(host: kube::Client, root: PathBuf) {
    if let Err(e) = std::fs::create_dir_all(&root) {
        tracing::warn!(dir = %root.display(), error = %e, "cannot make the volumes directory");
    }
    let claims = watcher(
        Api::<PersistentVolumeClaim>::all(host.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|_| ());
    let volumes = watcher(
        Api::<PersistentVolume>::all(host.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|_| ());
    let changes = futures::stream::select(claims, volumes);
    futures::pin_mut!(changes);
    loop {
        if let Err(e) = pass(&host, &root).await {
            tracing::warn!(error = %e, "dev storage");
        }
        tokio::select! {
            _ = changes.next() => {}
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(class: &str, volume: Option<&str>) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": "data", "namespace": "team-a", "uid": "u1"},
            "spec": {"storageClassName": class, "volumeName": volume,
                "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
        }))
        .unwrap()
    }

    #[test]
    fn a_pending_claim_of_the_class_gets_a_volume_under_the_root() {
        let pv = volume_for(&claim(CLASS, None), Path::new("/state/volumes")).unwrap();
        assert_eq!(pv.name_any(), "pvc-u1");
        let spec = pv.spec.unwrap();
        assert_eq!(spec.host_path.unwrap().path, "/state/volumes/pvc-u1");
        assert_eq!(spec.capacity.unwrap()["storage"].0, "1Gi");
        let r = spec.claim_ref.unwrap();
        assert_eq!(
            (r.namespace.as_deref(), r.uid.as_deref()),
            (Some("team-a"), Some("u1"))
        );
        assert!(volume_for(&claim("other", None), Path::new("/v")).is_none());
        assert!(volume_for(&claim(CLASS, Some("pvc-u1")), Path::new("/v")).is_none());
    }
}
