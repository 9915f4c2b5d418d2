//! PersistentVolumeClaims: their host form, the status that comes back, and
//! the virtual PersistentVolume that stands for a bound host claim's volume.
//!
//! The host claim is the virtual claim with
//! - its class mapped and checked ([`StorageClassPolicy`]);
//! - access modes, volume mode and selector unchanged (the selector picks
//!   host volumes by their labels, as it would on the host);
//! - a data source that is another claim of the same namespace renamed to
//!   that claim's host copy; any other source (snapshots, populators) and
//!   cross-namespace sources refused: they would name host objects outside
//!   the tenant's own;
//! - its storage request, never below the host claim's current one (a
//!   larger virtual request goes down: the host resizes when its class
//!   allows expansion);
//! - no `volumeName`: the host binds. The virtual claim's `volumeName` is the
//!   virtual volume's name, [`virtual_volume_name`], set once it is bound; a
//!   tenant-chosen one is refused (it would name a host volume);
//! - no controller annotations (`pv.kubernetes.io/`, `volume.kubernetes.io/`,
//!   `volume.beta.kubernetes.io/`): the host's binder, scheduler and
//!   provisioners write their own.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeSpec, TypedLocalObjectReference,
    TypedObjectReference,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use super::markers::copy_unreserved;
use super::names::host_name;
use super::{Refusal, VclusterName};
use crate::policy::storage_classes::StorageClassPolicy;

/// Label on the virtual PersistentVolumes the syncer keeps for bound claims.
pub const VOLUME_LABEL: &str = "vcluster.dev/claim-volume";
/// The CSI driver name the virtual volumes show (no host details).
pub const VOLUME_DRIVER: &str = "host-volume.vcluster.dev";
/// Annotation the binder sets on a bound claim.
pub const BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";

const CONTROLLER_PREFIXES: &[&str] = &[
    "pv.kubernetes.io/",
    "volume.kubernetes.io/",
    "volume.beta.kubernetes.io/",
];

/// The name of the virtual volume of the claim with uid `uid`.
pub fn virtual_volume_name(uid: &str) -> String {
    format!("pvc-{uid}")
}

/// The storage a claim requests.
pub fn requested(c: &PersistentVolumeClaim) -> Option<&Quantity> {
    c.spec
        .as_ref()?
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")
}

/// A storage quantity in bytes (`None` when it does not parse).
pub fn bytes(q: &Quantity) -> Option<f64> {
    let s = q.0.trim();
    let split = s
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => return None,
    };
    Some(n * mult)
}

fn controller_free(from: Option<&BTreeMap<String, String>>) -> BTreeMap<String, String> {
    let mut out = copy_unreserved(from);
    out.retain(|k, _| !CONTROLLER_PREFIXES.iter().any(|p| k.starts_with(p)));
    out
}

fn claim_source(
    vc: &VclusterName,
    namespace: &str,
    api_group: Option<&str>,
    kind: &str,
    name: &str,
) -> Result<String, Refusal> {
    if api_group.is_none_or(str::is_empty) && kind == "PersistentVolumeClaim" {
        return Ok(host_name(vc, namespace, name));
    }
    Err(Refusal::new(
        "DataSourceNotSupported",
        format!(
            "the claim's data source {kind} {name:?} is not synced to the host (only another claim of the same namespace can be); the claim is not created on the host"
        ),
    ))
}

/// The host form of virtual claim `claim` (name, namespace and ownership
/// markers are added by the sync engine), given its current host copy.
pub fn host_claim(
    vc: &VclusterName,
    claim: &PersistentVolumeClaim,
    classes: &StorageClassPolicy,
    host: Option<&PersistentVolumeClaim>,
) -> Result<PersistentVolumeClaim, Refusal> {
    let namespace = claim.metadata.namespace.as_deref().unwrap_or("default");
    let uid = claim.metadata.uid.as_deref().unwrap_or_default();
    let v = claim.spec.clone().unwrap_or_default();
    if let Some(name) = v.volume_name.as_deref().filter(|n| !n.is_empty())
        && name != virtual_volume_name(uid)
    {
        return Err(Refusal::new(
            "VolumeNameNotSupported",
            format!(
                "the claim names volume {name:?}; volumes are provisioned by the host, so a claim cannot choose one; the claim is not created on the host"
            ),
        ));
    }
    let data_source = match &v.data_source {
        Some(s) => Some(TypedLocalObjectReference {
            api_group: None,
            kind: s.kind.clone(),
            name: claim_source(vc, namespace, s.api_group.as_deref(), &s.kind, &s.name)?,
        }),
        None => None,
    };
    let data_source_ref = match &v.data_source_ref {
        Some(s) if s.namespace.as_deref().is_some_and(|n| n != namespace) => {
            return Err(Refusal::new(
                "DataSourceNotSupported",
                "the claim's data source is in another namespace; the claim is not created on the host",
            ));
        }
        Some(s) => Some(TypedObjectReference {
            api_group: None,
            kind: s.kind.clone(),
            name: claim_source(vc, namespace, s.api_group.as_deref(), &s.kind, &s.name)?,
            namespace: None,
        }),
        None => None,
    };
    let mut resources = v.resources.clone().unwrap_or_default();
    if let (Some(want), Some(have)) = (requested(claim), host.and_then(requested))
        && bytes(have).zip(bytes(want)).is_some_and(|(h, w)| h > w)
    {
        // A claim never shrinks: keep the host's larger request.
        resources
            .requests
            .get_or_insert_default()
            .insert("storage".into(), have.clone());
    }
    let spec = PersistentVolumeClaimSpec {
        access_modes: v.access_modes.clone(),
        data_source,
        data_source_ref,
        resources: Some(resources),
        selector: v.selector.clone(),
        storage_class_name: classes.host_class(v.storage_class_name.as_deref())?,
        volume_mode: v.volume_mode.clone(),
        volume_attributes_class_name: None,
        volume_name: None,
    };
    Ok(PersistentVolumeClaim {
        metadata: ObjectMeta {
            labels: Some(controller_free(claim.metadata.labels.as_ref())),
            annotations: Some(controller_free(claim.metadata.annotations.as_ref())),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    })
}

/// The claim status fields that come up from the host.
const STATUS_FIELDS: &[&str] = &[
    "phase",
    "accessModes",
    "capacity",
    "conditions",
    "allocatedResources",
    "allocatedResourceStatuses",
];

fn reported(c: &PersistentVolumeClaim) -> Value {
    let s = serde_json::to_value(c.status.clone().unwrap_or_default()).unwrap_or(Value::Null);
    STATUS_FIELDS
        .iter()
        .map(|f| ((*f).to_owned(), s.get(*f).cloned().unwrap_or(Value::Null)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// A merge patch bringing the virtual claim's status in line with the host
/// claim's, or `None` when it already is.
pub fn status_up(virt: &PersistentVolumeClaim, host: &PersistentVolumeClaim) -> Option<Value> {
    host.status.as_ref()?;
    let want = reported(host);
    (want != reported(virt)).then(|| json!({ "status": want }))
}

/// True when the host claim is bound to a volume.
pub fn is_bound(c: &PersistentVolumeClaim) -> bool {
    c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
}

/// The merge patch that binds virtual claim `virt` to its virtual volume
/// (what the binder would write), or `None` when it is.
pub fn bind_patch(virt: &PersistentVolumeClaim) -> Option<Value> {
    let uid = virt.metadata.uid.as_deref()?;
    let name = virtual_volume_name(uid);
    let has = virt.spec.as_ref().and_then(|s| s.volume_name.as_deref()) == Some(name.as_str());
    let marked = virt
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(BIND_COMPLETED));
    (!has || !marked).then(|| {
        json!({
            "metadata": {"annotations": {BIND_COMPLETED: "yes"}},
            "spec": {"volumeName": name},
        })
    })
}

/// The virtual PersistentVolume for virtual claim `virt` whose host claim
/// `host` is bound: capacity, access modes, class and volume mode of the host
/// claim, `reclaim` as its policy, a claim reference to `virt`, and a volume
/// source that names nothing of the host.
pub fn virtual_volume(
    vc: &VclusterName,
    virt: &PersistentVolumeClaim,
    host: &PersistentVolumeClaim,
    reclaim: &str,
) -> Option<PersistentVolume> {
    let uid = virt.metadata.uid.clone()?;
    let namespace = virt.metadata.namespace.clone()?;
    let name = virt.metadata.name.clone()?;
    let status = host.status.as_ref()?;
    let hspec = host.spec.as_ref()?;
    let vspec = virt.spec.as_ref();
    Some(PersistentVolume {
        metadata: ObjectMeta {
            name: Some(virtual_volume_name(&uid)),
            labels: Some(BTreeMap::from([(VOLUME_LABEL.to_owned(), vc.to_string())])),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: status.access_modes.clone(),
            capacity: status.capacity.clone(),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: Some(namespace.clone()),
                name: Some(name.clone()),
                uid: Some(uid),
                ..ObjectReference::default()
            }),
            // The class the tenant asked for (its own name for a mapped one).
            storage_class_name: vspec
                .and_then(|s| s.storage_class_name.clone())
                .or_else(|| hspec.storage_class_name.clone()),
            persistent_volume_reclaim_policy: Some(reclaim.to_owned()),
            volume_mode: hspec.volume_mode.clone(),
            csi: Some(CSIPersistentVolumeSource {
                driver: VOLUME_DRIVER.into(),
                volume_handle: format!("{namespace}/{name}"),
                ..CSIPersistentVolumeSource::default()
            }),
            ..PersistentVolumeSpec::default()
        }),
        status: None,
    })
}

#[cfg(test)]
#[path = "claim_tests.rs"]
mod tests;
