//! Manifests applied into a new virtual cluster once, at its first start
//! (`vcluster syncer --init-manifests FILE`, the chart's `init.manifests`):
//! a team's baseline of namespaces, RoleBindings, quotas and policies.
//!
//! Each object is server-side applied with its own field manager
//! ([`FIELD_MANAGER`]), in the order written; an object whose kind or
//! namespace does not exist yet (a CRD or Namespace earlier in the file, still
//! being established) is retried until [`APPLY_DEADLINE`]. The result is
//! recorded in the virtual cluster itself, in ConfigMap
//! `kube-system/vcluster-init` (digest of the manifests, what was applied, what
//! failed): the record lives and dies with the virtual cluster's data, so a
//! restarted syncer does not apply again what the tenant has since changed,
//! while a virtual cluster started afresh gets its baseline again. With
//! `--init-reapply` a changed file (another digest) is applied again. Each run
//! leaves an Event on the record: `InitManifestsApplied`, or a Warning
//! `InitManifestFailed` naming each object that failed and why.
//!
//! Helm charts (`--init-helm-charts FILE`, the chart's `init.helmCharts`)
//! come after the manifests, in [`helm`], and are recorded in the same
//! ConfigMap, one key per release.

pub mod helm;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, ApiResource, Scope};
use kube::runtime::events::EventType;
use serde_json::json;

use crate::sync::Context;

/// The field manager of init manifests (not the syncer's: a tenant's later
/// edits are conflicts with this manager, which a reapply forces).
pub const FIELD_MANAGER: &str = "vcluster-init";
/// Where the record is kept, in the virtual cluster.
pub const RECORD_NAMESPACE: &str = "kube-system";
/// The record's name.
pub const RECORD_NAME: &str = "vcluster-init";
/// How long objects whose kind or namespace is missing are retried.
pub const APPLY_DEADLINE: Duration = Duration::from_secs(120);

/// What `--init-manifests` asks for.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// The multi-document YAML file.
    pub file: PathBuf,
    /// Apply again when the file's digest differs from the record's.
    pub reapply: bool,
}

/// An init file that cannot be used; the syncer refuses to start with it.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The file cannot be read.
    #[error("cannot read the init {what} {path}: {message}")]
    Read {
        /// `manifests` or `helm charts`.
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// A document is not a Kubernetes object.
    #[error("init manifests {path}, document {doc}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// Its 1-based position among the documents.
        doc: usize,
        /// What is wrong.
        message: String,
    },
    /// The helm charts file is not a list of entries.
    #[error("init helm charts {path}: not a list of charts: {message}")]
    Charts {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// An entry of the helm charts file cannot be installed as written.
    #[error("init helm charts {path}, entry {entry}{release}: {message}")]
    Chart {
        /// The file.
        path: String,
        /// Its 1-based position in the list.
        entry: usize,
        /// ` (release NAME)` when the entry names one, else empty.
        release: String,
        /// What is wrong.
        message: String,
    },
}

/// The manifests of a file, read and checked at start.
#[derive(Debug, Clone)]
pub struct Manifests {
    /// The objects, in file order.
    pub objects: Vec<DynamicObject>,
    /// SHA-256 of the file, hex.
    pub digest: String,
}

/// Reads and checks `opts.file`: every document an object with apiVersion,
/// kind and metadata.name (empty documents are skipped).
pub fn load(opts: &InitOptions) -> Result<Manifests, InitError> {
    let path = opts.file.display().to_string();
    let yaml = std::fs::read_to_string(&opts.file).map_err(|e| InitError::Read {
        what: "manifests",
        path: path.clone(),
        message: e.to_string(),
    })?;
    parse(&path, &yaml)
}

/// [`load`] of text already read.
pub fn parse(path: &str, yaml: &str) -> Result<Manifests, InitError> {
    use serde::Deserialize as _;
    let mut objects = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        let err = |message: String| InitError::Parse {
            path: path.to_owned(),
            doc: i + 1,
            message,
        };
        let v = serde_json::Value::deserialize(doc).map_err(|e| err(e.to_string()))?;
        if v.is_null() {
            continue;
        }
        for field in ["apiVersion", "kind"] {
            if v[field].as_str().is_none_or(str::is_empty) {
                return Err(err(format!("no {field}")));
            }
        }
        if v["metadata"]["name"].as_str().is_none_or(str::is_empty) {
            return Err(err("no metadata.name".to_owned()));
        }
        let obj: DynamicObject = serde_json::from_value(v).map_err(|e| err(e.to_string()))?;
        objects.push(obj);
    }
    let digest = crate::translate::sha256_hex(yaml.as_bytes(), 32);
    Ok(Manifests { objects, digest })
}

/// Whether to apply, given the record's digest (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Apply the manifests.
    Apply,
    /// Leave the cluster alone, for this reason.
    Skip(&'static str),
}

/// Applied once: again only when asked and the manifests changed.
pub fn decide(recorded: Option<&str>, digest: &str, reapply: bool) -> Decision {
    match recorded {
        None => Decision::Apply,
        Some(d) if d == digest => Decision::Skip("already applied"),
        Some(_) if reapply => Decision::Apply,
        Some(_) => Decision::Skip("applied once before; --init-reapply applies a changed file"),
    }
}

/// `Kind namespace/name` of an object, for messages.
fn describe(o: &DynamicObject) -> String {
    let kind = o.types.as_ref().map_or("?", |t| t.kind.as_str());
    let name = o.metadata.name.as_deref().unwrap_or("?");
    match o.metadata.namespace.as_deref() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// Why an object is not applied yet: may it succeed later?
enum Failure {
    /// The kind or the namespace is not there yet.
    Later(String),
    /// Refused for good (invalid, forbidden).
    Final(String),
}

async fn resolve(
    virt: &kube::Client,
    cache: &mut HashMap<GroupVersionKind, (ApiResource, ApiCapabilities)>,
    o: &DynamicObject,
) -> Result<(ApiResource, ApiCapabilities), Failure> {
    let Some(types) = o.types.as_ref() else {
        return Err(Failure::Final("no apiVersion/kind".to_owned()));
    };
    let gvk = GroupVersionKind::try_from(types).map_err(|e| Failure::Final(e.to_string()))?;
    if let Some(found) = cache.get(&gvk) {
        return Ok(found.clone());
    }
    match kube::discovery::pinned_kind(virt, &gvk).await {
        Ok(found) => {
            cache.insert(gvk, found.clone());
            Ok(found)
        }
        Err(e) => Err(Failure::Later(format!(
            "the API has no kind {} in {}: {e}",
            gvk.kind, types.api_version
        ))),
    }
}

async fn apply_one(
    virt: &kube::Client,
    cache: &mut HashMap<GroupVersionKind, (ApiResource, ApiCapabilities)>,
    o: &DynamicObject,
) -> Result<(), Failure> {
    let (ar, caps) = resolve(virt, cache, o).await?;
    let name = o.metadata.name.clone().unwrap_or_default();
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Namespaced => {
            let ns = o.metadata.namespace.as_deref().unwrap_or("default");
            Api::namespaced_with(virt.clone(), ns, &ar)
        }
        Scope::Cluster => Api::all_with(virt.clone(), &ar),
    };
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    match api.patch(&name, &pp, &Patch::Apply(o)).await {
        Ok(_) => Ok(()),
        // The namespace (or a CRD's kind) is on its way.
        Err(kube::Error::Api(s)) if s.code == 404 => Err(Failure::Later(s.message)),
        Err(kube::Error::Api(s)) => Err(Failure::Final(format!("{} ({})", s.message, s.code))),
        Err(e) => Err(Failure::Later(e.to_string())),
    }
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Objects applied, as `Kind ns/name`.
    pub applied: Vec<String>,
    /// Objects that failed, with why.
    pub failed: Vec<(String, String)>,
}

/// Applies `objects` in order, retrying those that may succeed later until
/// `deadline` has passed.
pub async fn apply_all(
    virt: &kube::Client,
    objects: &[DynamicObject],
    deadline: Duration,
) -> Outcome {
    let start = Instant::now();
    let mut cache = HashMap::new();
    let mut pending: Vec<&DynamicObject> = objects.iter().collect();
    let mut out = Outcome::default();
    let mut pause = Duration::from_millis(250);
    loop {
        let mut later = Vec::new();
        let mut last_why = BTreeMap::new();
        for o in pending {
            match apply_one(virt, &mut cache, o).await {
                Ok(()) => out.applied.push(describe(o)),
                Err(Failure::Final(why)) => out.failed.push((describe(o), why)),
                Err(Failure::Later(why)) => {
                    last_why.insert(describe(o), why);
                    later.push(o);
                }
            }
        }
        if later.is_empty() {
            return out;
        }
        if start.elapsed() >= deadline {
            out.failed.extend(last_why);
            return out;
        }
        // A kind may have appeared: look again.
        cache.clear();
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
        pending = later;
    }
}

/// The record's API: ConfigMaps of [`RECORD_NAMESPACE`] in the virtual cluster.
fn records(virt: &kube::Client) -> Api<ConfigMap> {
    Api::namespaced(virt.clone(), RECORD_NAMESPACE)
}

/// The record, once the virtual API answers (absent: nothing recorded yet).
async fn read_record(records: &Api<ConfigMap>) -> Option<ConfigMap> {
    loop {
        match records.get_opt(RECORD_NAME).await {
            Ok(r) => return r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the init record; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

/// Server-side applies `data` as the record's keys of `manager` (each writer
/// applies its own keys with its own field manager); the record as written,
/// or `None` (logged) when it cannot be written.
async fn write_record(
    records: &Api<ConfigMap>,
    manager: &str,
    data: serde_json::Value,
) -> Option<ConfigMap> {
    let record = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": RECORD_NAME,
            "namespace": RECORD_NAMESPACE,
            "labels": {"app.kubernetes.io/managed-by": "vcluster"},
        },
        "data": data,
    });
    let pp = PatchParams::apply(manager).force();
    match records
        .patch(RECORD_NAME, &pp, &Patch::Apply(&record))
        .await
    {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(error = %e, "cannot write the init record");
            None
        }
    }
}

/// Applies the manifests if [`decide`] says so, records the outcome and
/// reports it with events. Never fails the syncer: everything is logged.
pub async fn run(ctx: Arc<Context>, manifests: Manifests, reapply: bool) {
    let records = records(&ctx.virt);
    let recorded = read_record(&records).await;
    let digest_of = |r: &ConfigMap| r.data.as_ref().and_then(|d| d.get("digest")).cloned();
    let decision = decide(
        recorded.as_ref().and_then(digest_of).as_deref(),
        &manifests.digest,
        reapply,
    );
    if let Decision::Skip(why) = decision {
        tracing::info!(digest = %manifests.digest, why, "init manifests not applied");
        return;
    }
    let out = apply_all(&ctx.virt, &manifests.objects, APPLY_DEADLINE).await;
    let failed: Vec<String> = out
        .failed
        .iter()
        .map(|(o, why)| format!("{o}: {why}"))
        .collect();
    let data = json!({
        "digest": manifests.digest,
        "appliedAt": k8s_openapi::jiff::Timestamp::now().to_string(),
        "applied": out.applied.join("\n"),
        "failed": failed.join("\n"),
    });
    let Some(written) = write_record(&records, FIELD_MANAGER, data).await else {
        return;
    };
    tracing::info!(applied = out.applied.len(), failed = out.failed.len(), digest = %manifests.digest, "init manifests applied");
    for line in &failed {
        ctx.event(
            &written,
            EventType::Warning,
            "InitManifestFailed",
            line.clone(),
        )
        .await;
    }
    ctx.event(
        &written,
        EventType::Normal,
        "InitManifestsApplied",
        format!(
            "applied {} of {} objects of the init manifests (sha256 {})",
            out.applied.len(),
            manifests.objects.len(),
            &manifests.digest[..12]
        ),
    )
    .await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_objects_in_order() {
        let m = parse(
            "f",
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: team}\n---\n\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: team}\ndata: {k: v}\n",
        )
        .unwrap();
        let kinds: Vec<String> = m.objects.iter().map(describe).collect();
        assert_eq!(kinds, ["Namespace team", "ConfigMap team/a"]);
        assert_eq!(m.digest.len(), 64);
        assert_ne!(parse("f", "a: 1").map(|m| m.digest).ok(), Some(m.digest));
    }

    #[test]
    fn a_document_that_is_no_object_is_named() {
        for (yaml, says) in [
            (
                "kind: ConfigMap\nmetadata: {name: a}\n",
                "document 1: no apiVersion",
            ),
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Secret\n",
                "document 2: no metadata.name",
            ),
            ("apiVersion: v1\nkind: [\n", "document 1"),
        ] {
            let e = parse("init.yaml", yaml).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains("init.yaml"), "{e}");
        }
    }

    #[test]
    fn applied_once_and_again_only_when_asked_for_a_changed_file() {
        assert_eq!(decide(None, "d1", false), Decision::Apply);
        assert!(matches!(decide(Some("d1"), "d1", false), Decision::Skip(_)));
        assert!(matches!(decide(Some("d1"), "d1", true), Decision::Skip(_)));
        assert!(matches!(decide(Some("d0"), "d1", false), Decision::Skip(_)));
        assert_eq!(decide(Some("d0"), "d1", true), Decision::Apply);
    }
}
