//! StorageClasses up: the host's classes mirrored read-only into the virtual
//! cluster when the syncer may read them (the chart's optional ClusterRole
//! rule, like nodes), so the virtual API's default-class admission fills in
//! the host's default and its resize admission knows which classes expand.
//! A mirror carries the host class's provisioner, reclaim policy, binding
//! mode, expansion flag and default marker, never its parameters or
//! topology (host details); a change a tenant makes to a mirror is reverted
//! on the next pass, and a mirror whose host class is gone is removed.
//! Classes a tenant creates are its own and are not touched.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, ListParams};

use super::Context;
use crate::api::{ApiError, status_code};

/// Label on the virtual mirrors of host classes (the vcluster's name).
pub const MIRROR_LABEL: &str = "vcluster.dev/mirrored-class";
/// The annotation that marks the default class.
pub const DEFAULT_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";

/// The host's classes, as last read.
#[derive(Debug, Default)]
pub struct HostClasses {
    classes: RwLock<BTreeMap<String, StorageClass>>,
}

impl HostClasses {
    /// The reclaim policy of host class `class` (`None`: the host's default
    /// class), `Delete` when unknown (the API's default).
    pub fn reclaim_policy(&self, class: Option<&str>) -> String {
        let classes = self.classes.read().unwrap_or_else(|e| e.into_inner());
        let found = match class {
            Some(name) => classes.get(name),
            None => classes.values().find(|c| is_default(c)),
        };
        found
            .and_then(|c| c.reclaim_policy.clone())
            .unwrap_or_else(|| "Delete".to_owned())
    }

    fn set(&self, list: Vec<StorageClass>) {
        let mut classes = self.classes.write().unwrap_or_else(|e| e.into_inner());
        *classes = list.into_iter().map(|c| (c.name_any(), c)).collect();
    }
}

fn is_default(c: &StorageClass) -> bool {
    c.annotations().get(DEFAULT_ANNOTATION).map(String::as_str) == Some("true")
}

/// The virtual mirror of host class `host` for vcluster `vc`.
pub fn mirror(vc: &str, host: &StorageClass) -> StorageClass {
    let mut annotations = BTreeMap::new();
    if is_default(host) {
        annotations.insert(DEFAULT_ANNOTATION.to_owned(), "true".to_owned());
    }
    StorageClass {
        metadata: ObjectMeta {
            name: host.metadata.name.clone(),
            labels: Some(BTreeMap::from([(MIRROR_LABEL.to_owned(), vc.to_owned())])),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        provisioner: host.provisioner.clone(),
        reclaim_policy: host.reclaim_policy.clone(),
        volume_binding_mode: host.volume_binding_mode.clone(),
        allow_volume_expansion: host.allow_volume_expansion,
        ..StorageClass::default()
    }
}

/// True when virtual class `v` shows what `want` says.
fn shows(v: &StorageClass, want: &StorageClass) -> bool {
    let default_of = |c: &StorageClass| is_default(c);
    v.provisioner == want.provisioner
        && v.reclaim_policy == want.reclaim_policy
        && v.volume_binding_mode == want.volume_binding_mode
        && v.allow_volume_expansion == want.allow_volume_expansion
        && default_of(v) == default_of(want)
        && v.labels().get(MIRROR_LABEL) == want.labels().get(MIRROR_LABEL)
}

/// One pass; `Ok(false)` when the host's classes may not be read.
async fn pass(ctx: &Context, classes: &HostClasses) -> Result<bool, ApiError> {
    let host: Api<StorageClass> = Api::all(ctx.host.clone());
    let list = match host.list(&ListParams::default()).await {
        Ok(l) => l.items,
        Err(e) if status_code(&e) == Some(403) => return Ok(false),
        Err(e) => return Err(ApiError::new("list host storage classes", e)),
    };
    classes.set(list.clone());
    let virt: Api<StorageClass> = Api::all(ctx.virt.clone());
    let vc = ctx.names.vc.as_str();
    let have: BTreeMap<String, StorageClass> = virt
        .list(&ListParams::default())
        .await
        .map_err(ApiError::of("list virtual storage classes"))?
        .into_iter()
        .map(|c| (c.name_any(), c))
        .collect();
    for h in &list {
        let want = mirror(vc, h);
        let name = want.name_any();
        match have.get(&name) {
            Some(v) if shows(v, &want) => continue,
            // A tenant's own class of that name stays its own.
            Some(v) if v.labels().get(MIRROR_LABEL).is_none() => continue,
            Some(_) => {
                // Its fixed fields differ: replace it.
                virt.delete(&name, &DeleteParams::default())
                    .await
                    .map_err(ApiError::of(format!("replace storage class {name}")))?;
            }
            None => {}
        }
        crate::api::apply(&virt, &name, &want)
            .await
            .map_err(ApiError::of(format!("mirror storage class {name}")))?;
    }
    for (name, v) in &have {
        let ours = v.labels().get(MIRROR_LABEL).map(String::as_str) == Some(vc);
        if ours && !list.iter().any(|h| h.metadata.name.as_ref() == Some(name)) {
            virt.delete(name, &DeleteParams::default())
                .await
                .map_err(ApiError::of(format!("remove storage class {name}")))?;
        }
    }
    Ok(true)
}

/// Mirrors the host's classes every `every` until the process ends.
pub async fn run(ctx: Arc<Context>, classes: Arc<HostClasses>, every: Duration) {
    let mut said = false;
    loop {
        match pass(&ctx, &classes).await {
            Ok(true) => said = false,
            Ok(false) if !said => {
                said = true;
                tracing::info!(
                    "the host's StorageClasses are not mirrored: the syncer may not read them (the chart's storageClasses ClusterRole rule grants it)"
                );
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "storage class mirror"),
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn class(name: &str, default: bool) -> StorageClass {
        serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": {DEFAULT_ANNOTATION: default.to_string(), "team": "x"}},
            "provisioner": "ebs.csi.aws.com", "reclaimPolicy": "Retain",
            "volumeBindingMode": "WaitForFirstConsumer", "allowVolumeExpansion": true,
            "parameters": {"csi.storage.k8s.io/provisioner-secret-name": "host-secret"},
            "allowedTopologies": [{"matchLabelExpressions": [{"key": "zone", "values": ["a"]}]}],
        }))
        .unwrap()
    }

    #[test]
    fn a_mirror_marks_the_default_and_leaves_host_details_behind() {
        let m = mirror("vc", &class("gp3", true));
        assert_eq!(m.annotations()[DEFAULT_ANNOTATION], "true");
        assert_eq!(m.labels()[MIRROR_LABEL], "vc");
        assert_eq!(m.allow_volume_expansion, Some(true));
        assert_eq!(m.reclaim_policy.as_deref(), Some("Retain"));
        assert_eq!(m.parameters, None);
        assert_eq!(m.allowed_topologies, None);
        assert!(!m.annotations().contains_key("team"));
        assert!(shows(&m, &m));
        let other = mirror("vc", &class("gp3", false));
        assert!(!other.annotations().contains_key(DEFAULT_ANNOTATION));
        assert!(!shows(&other, &m), "the default marker is compared");
    }

    #[test]
    fn the_reclaim_policy_comes_from_the_class_or_the_default() {
        let classes = HostClasses::default();
        assert_eq!(classes.reclaim_policy(Some("gp3")), "Delete");
        classes.set(vec![class("gp3", true)]);
        assert_eq!(classes.reclaim_policy(Some("gp3")), "Retain");
        assert_eq!(classes.reclaim_policy(None), "Retain");
        assert_eq!(classes.reclaim_policy(Some("other")), "Delete");
    }
}
