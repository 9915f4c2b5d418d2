//! PersistentVolumeClaims: copied to the host with the class mapped and
//! checked and claim data sources renamed (see [`crate::translate::claim`]);
//! a claim the policy refuses is not on the host and gets a Warning event.
//! The host claim's status comes up, and once it is bound the virtual claim
//! is bound to a virtual PersistentVolume of its own ([`super::volumes`]),
//! as the binder would bind it (the virtual plane runs no binder). Host
//! events about the claim (provisioning failures, waiting for a consumer,
//! quota refusals of the host are `SyncRejected` events) come up with the
//! pods' ([`super::events`]); the host's StorageClasses are mirrored when the
//! syncer may read them ([`super::storage_classes`]).
//!
//! Deletion goes both ways: deleting the virtual claim deletes the host
//! claim (the host keeps it while a host pod uses it); a bound claim whose
//! host claim is gone (its volume with it) is deleted in the virtual cluster.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::ResourceExt as _;
use kube::api::{Api, Patch, PatchParams};
use tokio::sync::Notify;

use super::{Assembly, Context, Decision, KindSpec, Names, Rule, Side, SyncError, err_for};
use crate::policy::storage_classes::StorageClassPolicy;
use crate::translate::claim::{bind_patch, host_claim, is_bound, status_up, virtual_volume_name};

/// The claim rule.
#[derive(Debug)]
pub struct ClaimRule {
    classes: StorageClassPolicy,
}

impl ClaimRule {
    /// A rule that maps and checks classes with `classes`.
    pub fn new(classes: StorageClassPolicy) -> Self {
        Self { classes }
    }
}

/// True when the virtual claim was bound to its virtual volume.
fn was_bound(v: &PersistentVolumeClaim) -> bool {
    let uid = v.uid().unwrap_or_default();
    v.spec.as_ref().and_then(|s| s.volume_name.as_deref()) == Some(&virtual_volume_name(&uid))
}

impl Rule for ClaimRule {
    type V = PersistentVolumeClaim;
    type H = PersistentVolumeClaim;
    const KIND: &'static str = "PersistentVolumeClaim";

    fn decide(
        &self,
        names: &Names,
        v: &PersistentVolumeClaim,
        h: Option<&PersistentVolumeClaim>,
    ) -> Decision<PersistentVolumeClaim> {
        if v.metadata.deletion_timestamp.is_some() {
            return Decision::REMOVE;
        }
        if h.is_none() && was_bound(v) {
            // Its host claim, and the volume with it, is gone.
            return Decision::DeleteVirtual;
        }
        match host_claim(&names.vc, v, &self.classes, h) {
            Ok(c) => Decision::Sync(c),
            Err(r) => Decision::Reject(r.reason, r.message),
        }
    }

    async fn after_sync(
        &self,
        ctx: &Context,
        v: &PersistentVolumeClaim,
        h: &PersistentVolumeClaim,
    ) -> Result<Option<Duration>, SyncError> {
        let Some(patch) = bind_patch(v).filter(|_| is_bound(h)) else {
            return Ok(None);
        };
        let api: Api<PersistentVolumeClaim> =
            Api::namespaced(ctx.virt.clone(), &v.namespace().unwrap_or_default());
        api.patch(
            &v.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(err_for("bind", "PersistentVolumeClaim", v))?;
        Ok(None)
    }

    fn status_up(
        &self,
        v: &PersistentVolumeClaim,
        h: &PersistentVolumeClaim,
    ) -> Option<serde_json::Value> {
        status_up(v, h)
    }
}

/// PersistentVolumeClaims (and the virtual volumes of bound ones, and the
/// host's StorageClasses).
pub const KIND: KindSpec = KindSpec {
    name: "persistentvolumeclaims",
    needs: &[],
    because: "",
    needs_waived_by_all_configs: false,
    register,
};

fn register(a: &mut Assembly) {
    let rule = ClaimRule::new(a.settings().storage_classes.clone());
    let engine = a.engine(rule);
    let wake = Arc::new(Notify::new());
    for side in [Side::Virtual, Side::Host] {
        let wake = Arc::clone(&wake);
        a.on_change(side, move |_: &PersistentVolumeClaim| wake.notify_one());
    }
    let classes = Arc::new(super::storage_classes::HostClasses::default());
    let every = a.settings().resync.min(Duration::from_secs(30));
    let sources = super::volumes::Sources {
        virtual_claims: engine.virtual_store(),
        host_claims: engine.host_store(),
        classes: Arc::clone(&classes),
        wake,
    };
    a.spawn("volumes", super::volumes::run(a.ctx(), sources, every));
    a.spawn(
        "storage-classes",
        super::storage_classes::run(a.ctx(), classes, every),
    );
}

#[cfg(test)]
#[path = "tests/claims.rs"]
mod tests;
