//! Virtual PersistentVolumes: one for each virtual claim whose host claim is
//! bound ([`crate::translate::claim::virtual_volume`]: capacity, access
//! modes, class, reclaim policy, a claim reference to the virtual claim and
//! nothing of the host), so `kubectl get pv` and charts that read volumes
//! work; removed when the claim goes or is no longer bound. A loop beside
//! the claim engine, level-triggered: each pass compares what should exist
//! with the volumes carrying [`VOLUME_LABEL`], woken by every claim change
//! on either side and at least every `every`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;
use tokio::sync::Notify;

use super::cache::Cache;
use super::storage_classes::HostClasses;
use super::{Context, Names};
use crate::api::ApiError;
use crate::translate::claim::{VOLUME_LABEL, is_bound, virtual_volume};
use crate::translate::markers::source_uid;

/// What the loop reads: the claim engine's caches, the host's classes (for
/// the reclaim policy) and the wake-up the claim hooks ring.
#[derive(Debug)]
pub struct Sources {
    /// Virtual claims.
    pub virtual_claims: Cache<PersistentVolumeClaim>,
    /// Host copies of claims.
    pub host_claims: Cache<PersistentVolumeClaim>,
    /// The host's StorageClasses, when readable.
    pub classes: Arc<HostClasses>,
    /// Rung on every claim change.
    pub wake: Arc<Notify>,
}

/// The virtual volumes that should exist, by name.
pub fn desired(names: &Names, src: &Sources) -> BTreeMap<String, PersistentVolume> {
    let own = names.ownership();
    let mut out = BTreeMap::new();
    for h in src.host_claims.entries() {
        let Ok(h) = h.object() else { continue };
        if !is_bound(&h) {
            continue;
        }
        let Some(key) = own.virtual_key(&h.metadata) else {
            continue;
        };
        let Some(v) = src.virtual_claims.get(&key.name, Some(&key.namespace)) else {
            continue;
        };
        // Written for this very claim, not an earlier one of the same name.
        if v.metadata.uid.as_deref() != source_uid(&h.metadata)
            || v.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        let class = h
            .spec
            .as_ref()
            .and_then(|s| s.storage_class_name.as_deref());
        let reclaim = src.classes.reclaim_policy(class);
        if let Some(pv) = virtual_volume(&names.vc, &v, &h, &reclaim) {
            out.insert(pv.name_any(), pv);
        }
    }
    out
}

fn phase(pv: &PersistentVolume) -> Option<&str> {
    pv.status.as_ref().and_then(|s| s.phase.as_deref())
}

fn capacity(pv: &PersistentVolume) -> Option<&BTreeMap<String, Quantity>> {
    pv.spec.as_ref().and_then(|s| s.capacity.as_ref())
}

/// Writes volume `pv` (when absent or resized) and marks it Bound.
async fn keep(
    api: &Api<PersistentVolume>,
    pv: &PersistentVolume,
    current: Option<&PersistentVolume>,
) -> Result<(), ApiError> {
    let name = pv.name_any();
    // Of the volume's spec only its capacity changes (a resize).
    if current
        .is_none_or(|c| capacity(c) != capacity(pv) && c.metadata.deletion_timestamp.is_none())
    {
        crate::api::apply(api, &name, pv)
            .await
            .map_err(ApiError::of(format!("write virtual volume {name}")))?;
    }
    if current.and_then(phase) != Some("Bound") {
        let status = json!({"status": {"phase": "Bound"}});
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .map_err(ApiError::of(format!("bind virtual volume {name}")))?;
    }
    Ok(())
}

/// Releases and deletes volume `pv`, whose claim is gone or unbound.
async fn remove(api: &Api<PersistentVolume>, pv: &PersistentVolume) -> Result<(), ApiError> {
    let name = pv.name_any();
    // Released first: the volume-protection finalizer holds a bound one.
    if phase(pv) == Some("Bound") {
        let status = json!({"status": {"phase": "Released"}});
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .map_err(ApiError::of(format!("release virtual volume {name}")))?;
    }
    if pv.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    match api.delete(&name, &DeleteParams::default()).await {
        Ok(_) => {
            tracing::info!(volume = %name, "virtual volume removed: its claim is gone or unbound");
            Ok(())
        }
        Err(e) if crate::api::status_code(&e) == Some(404) => Ok(()),
        Err(e) => Err(ApiError::new(format!("delete virtual volume {name}"), e)),
    }
}

/// One pass: creates or updates the volumes that should exist, removes the
/// rest of this vcluster's; a failure on one volume does not hold up the others.
async fn pass(ctx: &Context, src: &Sources) -> Result<(), ApiError> {
    let api: Api<PersistentVolume> = Api::all(ctx.virt.clone());
    let selector = format!("{VOLUME_LABEL}={}", ctx.names.vc);
    let have: BTreeMap<String, PersistentVolume> = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(ApiError::of("list virtual volumes"))?
        .into_iter()
        .map(|pv| (pv.name_any(), pv))
        .collect();
    let wanted = desired(&ctx.names, src);
    for (name, pv) in &wanted {
        if let Err(e) = keep(&api, pv, have.get(name)).await {
            tracing::warn!(error = %e, "virtual volume");
        }
    }
    for pv in have
        .iter()
        .filter(|(n, _)| !wanted.contains_key(*n))
        .map(|(_, pv)| pv)
    {
        if let Err(e) = remove(&api, pv).await {
            tracing::warn!(error = %e, "virtual volume");
        }
    }
    Ok(())
}

/// Keeps the virtual volumes until the process ends.
pub async fn run(ctx: Arc<Context>, src: Sources, every: Duration) {
    src.virtual_claims.wait_until_ready().await;
    src.host_claims.wait_until_ready().await;
    loop {
        if let Err(e) = pass(&ctx, &src).await {
            tracing::warn!(error = %e, "virtual volumes");
        }
        tokio::select! {
            () = src.wake.notified() => {}
            () = tokio::time::sleep(every) => {}
        }
    }
}
