//! One reconcile of one key: read both caches, let the rule decide, and
//! carry the decision out on the host (create-only apply, 409 → foreign
//! check, the rule's alternative on rejection, exact deletes) and back up
//! (status, the rule's follow-up work).

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use super::engine::Engine;
use super::error::send_unread;
use super::{Decision, HASH_ANNOTATION, Rule, SyncError, api_err, delete_exact, rejected};
use crate::FIELD_MANAGER;
use crate::translate::VirtualKey;

/// What became of the host copy in one reconcile.
enum Written<H> {
    /// Written; the API's answer.
    Applied(H),
    /// Already as desired.
    Unchanged,
    /// A foreign object holds the name.
    Collision,
    /// The host copy read from the cache is gone or was replaced since.
    Stale,
}

/// `value` with the content hash `hash` among its annotations.
fn stamp(value: &mut serde_json::Value, hash: &str) {
    if let Some(ann) = value
        .pointer_mut("/metadata/annotations")
        .and_then(|a| a.as_object_mut())
    {
        ann.insert(HASH_ANNOTATION.to_owned(), hash.into());
    }
}

fn hash_of(value: &serde_json::Value) -> String {
    crate::translate::sha256_hex(value.to_string().as_bytes(), 8)
}

fn to_json<R: Rule>(obj: &R::H) -> Result<serde_json::Value, SyncError> {
    serde_json::to_value(obj).map_err(|source| SyncError::Serialize {
        kind: R::KIND,
        source,
    })
}

/// Whether cached host copy `h` holds every field of `desired` as it is
/// there: what a forced apply of `desired` would leave as it is. The cache
/// keeps host copies slimmed ([`Rule::slim_host`]), so `desired` is slimmed
/// the same way first. Fields others added (server defaults, the
/// scheduler's node, a host controller's annotation) are not drift: an
/// apply would not remove them either. A value the API server writes back
/// in another form (a quantity `1000m` read back as `1`) counts as drift,
/// so such a copy is applied at every resync as before.
fn holds<R: Rule>(h: &R::H, desired: &R::H) -> bool {
    let mut want = desired.clone();
    R::slim_host(&mut want);
    match (serde_json::to_value(h), serde_json::to_value(&want)) {
        (Ok(have), Ok(want)) => covers(&have, &want),
        _ => false,
    }
}

/// Whether `have` has everything `want` has (objects: each key of `want`,
/// recursively; lists: the same length, item by item). An empty or null
/// `want` is covered by an absent field (the API omits empty ones).
fn covers(have: &serde_json::Value, want: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (have, want) {
        (Value::Object(have), Value::Object(want)) => want.iter().all(|(k, w)| match have.get(k) {
            Some(h) => covers(h, w),
            None => absent_is_same(w),
        }),
        (Value::Array(have), Value::Array(want)) => {
            have.len() == want.len() && have.iter().zip(want).all(|(h, w)| covers(h, w))
        }
        (Value::Number(h), Value::Number(w)) => h == w || h.as_f64() == w.as_f64(),
        (Value::Null, w) => absent_is_same(w),
        (h, w) => h == w,
    }
}

/// Whether `want` means the same as an absent field.
fn absent_is_same(want: &serde_json::Value) -> bool {
    match want {
        serde_json::Value::Null => true,
        serde_json::Value::Object(m) => m.is_empty(),
        serde_json::Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// Which host object a write is for.
enum Target {
    /// None is cached: created only if nothing holds the name.
    New,
    /// The cached one of this uid: written only while it is still there.
    Existing(String),
}

/// Whether the API refused a write for a precondition [`Target`] set: 409
/// (nothing holds the name any more) or 422 on `metadata.uid` (another object
/// holds it now).
fn stale(status: &kube::core::Status) -> bool {
    status.code == 409 || (status.code == 422 && status.message.contains("metadata.uid"))
}

/// A server-side apply of `value` with `metadata.<field>` set to `precondition`
/// for this request only.
async fn apply_with<K>(
    api: &Api<K>,
    name: &str,
    value: &mut serde_json::Value,
    field: &str,
    precondition: &str,
) -> Result<K, kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let meta = value.get_mut("metadata").and_then(|m| m.as_object_mut());
    let had = meta.map(|m| m.insert(field.to_owned(), precondition.into()));
    let result = api.patch(name, &params, &Patch::Apply(&*value)).await;
    if let Some(meta) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        match had.flatten() {
            Some(before) => meta.insert(field.to_owned(), before),
            None => meta.remove(field),
        };
    }
    result
}

fn strip<K: Resource>(mut o: K) -> K {
    o.managed_fields_mut().clear();
    o
}

impl<R: Rule> Engine<R> {
    fn host_api(&self) -> Api<R::H> {
        Api::namespaced(self.ctx.host.clone(), &self.ctx.names.host_namespace)
    }

    fn virt_api(&self, namespace: &str) -> Api<R::V> {
        Api::namespaced(self.ctx.virt.clone(), namespace)
    }

    /// Reconciles one key; `Ok(Some(d))` asks to be called again after `d`.
    #[tracing::instrument(skip(self), fields(kind = R::KIND, key = %key))]
    pub(crate) async fn reconcile(
        &self,
        key: &VirtualKey,
        force: bool,
    ) -> Result<Option<Duration>, SyncError> {
        let names = &self.ctx.names;
        let host_name = names.host_name(key);
        let v = self.virt.try_get(&key.name, Some(&key.namespace))?;
        let h = self.host.try_get(&host_name, Some(&names.host_namespace))?;
        // Ours means written for this very source: host controllers copy a
        // Service's labels (the owner label among them) onto what they derive.
        let (h, derived) = match h {
            Some(h) => match names.ownership().virtual_key(h.meta()) {
                Some(of) if of == *key => (Some(h), None),
                Some(_) => (None, Some(None)),
                None => (None, Some(Some(h))),
            },
            None => (None, None),
        };
        let Some(v) = v else {
            return self.source_gone(key, h).await;
        };
        match self.rule.decide(names, &v, h.as_ref()) {
            // Derived by a host controller from one of our objects under the
            // same name (the Endpoints the host made for our Service while it
            // had a selector, left behind when the tenant removed it): ours to
            // take over. Only a sync adopts it; nothing else deletes it.
            Decision::Sync(desired) if matches!(derived, Some(Some(_))) => {
                tracing::info!(host = %host_name, "taking over a host object derived from one of ours");
                self.sync(key, &v, derived.flatten(), desired, force).await
            }
            // Owned by us but for another source: should not happen with the
            // name scheme; treat it as a collision all the same.
            Decision::Sync(_) if derived.is_some() => self.collision(&v, &host_name).await,
            Decision::Sync(desired) => self.sync(key, &v, h, desired, force).await,
            other => self.settle(key, &v, h, other).await,
        }
    }

    /// The virtual object is gone: so goes its host copy.
    async fn source_gone(
        &self,
        key: &VirtualKey,
        h: Option<R::H>,
    ) -> Result<Option<Duration>, SyncError> {
        let Some(h) = h else { return Ok(None) };
        // The cache may lag a re-creation (a rule may replace a virtual
        // object): delete only what the API confirms gone.
        let key_text = key.to_string();
        if self
            .virt_api(&key.namespace)
            .get_metadata_opt(&key.name)
            .await
            .map_err(|e| api_err("get", R::KIND, &key_text, e))?
            .is_some()
        {
            return Ok(Some(Duration::from_millis(200)));
        }
        self.delete_host(&h, &key_text, None).await?;
        Ok(None)
    }

    /// Carries out a decision other than [`Decision::Sync`].
    async fn settle(
        &self,
        key: &VirtualKey,
        v: &R::V,
        h: Option<R::H>,
        decision: Decision<R::H>,
    ) -> Result<Option<Duration>, SyncError> {
        let key_text = key.to_string();
        match decision {
            Decision::Sync(_) => Ok(None),
            Decision::Remove { grace_seconds } => {
                if let Some(h) = h {
                    self.delete_host(&h, &key_text, grace_seconds).await?;
                }
                Ok(None)
            }
            Decision::DeleteVirtual => self.delete_virtual(key, v).await,
            Decision::Reject(reason, note) => {
                // Refused: nothing of it stays on the host.
                if let Some(h) = h {
                    self.delete_host(&h, &key_text, None).await?;
                }
                self.ctx.event(v, EventType::Warning, reason, note).await;
                Ok(None)
            }
            Decision::Wait(why) => {
                tracing::debug!(why, "waiting");
                Ok(Some(Duration::from_secs(1)))
            }
            Decision::Hold(status) => {
                // The mark first: a restart after the delete still knows why
                // the host copy is gone.
                if let Some(patch) = status {
                    self.patch_virtual_status(key, &patch).await?;
                }
                if let Some(h) = h {
                    self.delete_host(&h, &key_text, None).await?;
                }
                Ok(None)
            }
        }
    }

    /// The virtual object is finished: removed once its host copy is gone.
    async fn delete_virtual(
        &self,
        key: &VirtualKey,
        v: &R::V,
    ) -> Result<Option<Duration>, SyncError> {
        let key_text = key.to_string();
        // The cache may lag a fresh host write: confirm the host copy is gone.
        if self
            .host_api()
            .get_metadata_opt(&self.ctx.host_name(key))
            .await
            .map_err(|e| api_err("get", R::KIND, &key_text, e))?
            .is_some()
        {
            return Ok(Some(Duration::from_millis(500)));
        }
        delete_exact(&self.virt_api(&key.namespace), &key.name, v.uid(), Some(0))
            .await
            .map_err(|e| api_err("delete", R::KIND, &key_text, e))?;
        Ok(None)
    }

    /// Writes `desired` as the host copy (when its content changed, or
    /// `force`), then the rule's follow-up work and the status up.
    async fn sync(
        &self,
        key: &VirtualKey,
        v: &R::V,
        h: Option<R::H>,
        mut desired: R::H,
        force: bool,
    ) -> Result<Option<Duration>, SyncError> {
        let names = &self.ctx.names;
        let own = names.ownership();
        let uid = v.uid().unwrap_or_default();
        let meta = desired.meta_mut();
        meta.name = Some(names.host_name(key));
        meta.namespace = Some(names.host_namespace.clone());
        meta.labels.get_or_insert_default().extend(own.labels(key));
        meta.annotations
            .get_or_insert_default()
            .extend(own.annotations(key, &uid));
        // Collected with the vcluster (a copy written before it had an owner
        // gains the reference on this write: its content hash changes).
        meta.owner_references = self.ctx.owner_references();
        meta.managed_fields = None;
        meta.resource_version = None;
        meta.uid = None;
        let mut value = to_json::<R>(&desired)?;
        let hash = hash_of(&value);
        stamp(&mut value, &hash);
        let current = h
            .as_ref()
            .and_then(|h| h.annotations().get(HASH_ANNOTATION));
        // The resync (`force`) looks for drift: a copy whose fields differ
        // from what this syncer applies, its content hash left as it was.
        let unchanged = current.map(String::as_str) == Some(hash.as_str());
        let drifted = force && unchanged && h.as_ref().is_some_and(|h| !holds::<R>(h, &desired));
        if drifted {
            tracing::info!(host = %names.host_name(key), "the host copy drifted: written back");
            super::metrics::global().drift_reverted(R::KIND);
        }
        let writing = drifted || !unchanged;
        // The rule's work that does not need the write's result goes at the
        // same time (one round trip less per new object).
        let write = self.write(key, v, &desired, h.as_ref(), value, &hash, writing);
        let alongside = self.rule.alongside_write(&self.ctx, v, h.as_ref(), writing);
        let (written, alongside) = futures::join!(write, alongside);
        let applied = match written? {
            Written::Collision => return self.collision(v, &names.host_name(key)).await,
            // Decided on a host copy that is no more: decided again on what
            // the cache holds once it has seen the change.
            Written::Stale => return Ok(Some(Duration::from_millis(100))),
            Written::Applied(out) => Some(out),
            Written::Unchanged => None,
        };
        alongside?;
        let Some(host_now) = applied.as_ref().or(h.as_ref()) else {
            return Ok(None);
        };
        let again = self.rule.after_sync(&self.ctx, v, host_now).await?;
        if let Some(patch) = self.rule.status_up(v, host_now) {
            self.patch_virtual_status(key, &patch).await?;
        }
        Ok(again)
    }

    /// A merge patch of the virtual object's status subresource.
    async fn patch_virtual_status(
        &self,
        key: &VirtualKey,
        patch: &serde_json::Value,
    ) -> Result<(), SyncError> {
        let api = self.virt_api(&key.namespace);
        let pp = PatchParams::default();
        let sent = send_unread(&api, "patch_status", |r| {
            r.patch_subresource("status", &key.name, &pp, &Patch::Merge(patch))
        })
        .await;
        sent.map_err(|e| api_err("update status of", R::KIND, &key.to_string(), e))
    }

    /// Applies the host copy, or the rule's alternative when the host
    /// refuses it; a refusal that stays is told to the tenant.
    #[allow(clippy::too_many_arguments)]
    async fn write(
        &self,
        key: &VirtualKey,
        v: &R::V,
        desired: &R::H,
        h: Option<&R::H>,
        mut value: serde_json::Value,
        hash: &str,
        writing: bool,
    ) -> Result<Written<R::H>, SyncError> {
        if !writing {
            return Ok(Written::Unchanged);
        }
        let key_text = key.to_string();
        let host_name = self.ctx.host_name(key);
        // Not in the cache: created only if absent (a foreign object may
        // hold the name, and the cache sees only ours).
        let target = match h.and_then(|h| h.uid()) {
            Some(uid) => Target::Existing(uid),
            None => Target::New,
        };
        let mut result = self.apply_host(&host_name, &mut value, &target).await;
        if let Err(kube::Error::Api(status)) = &result
            && rejected(status.code)
            && let Some(alt) = self.rule.on_rejected(desired, h, &status.message)
        {
            tracing::info!(reason = %status.message, "host refused the copy; applying the rule's alternative");
            let mut alt_value = to_json::<R>(&alt)?;
            stamp(&mut alt_value, hash);
            result = self.apply_host(&host_name, &mut alt_value, &target).await;
        }
        match result {
            Err(kube::Error::Api(status)) if stale(&status) => {
                tracing::debug!(host = %host_name, reason = %status.message, "the host copy changed under the decision");
                Ok(Written::Stale)
            }
            Ok(Some(out)) => {
                tracing::debug!(host = %host_name, "applied");
                Ok(Written::Applied(strip(out)))
            }
            Ok(None) => Ok(Written::Collision),
            Err(kube::Error::Api(status)) if rejected(status.code) => {
                // The host refuses this object as it is: tell the tenant,
                // then keep retrying with backoff (it may be fixed either side).
                let note = format!(
                    "the host API rejected the {} copy: {}",
                    R::KIND,
                    status.message
                );
                self.ctx
                    .event(v, EventType::Warning, "SyncRejected", note)
                    .await;
                Err(api_err(
                    "apply",
                    R::KIND,
                    &key_text,
                    kube::Error::Api(status),
                ))
            }
            Err(e) => Err(api_err("apply", R::KIND, &key_text, e)),
        }
    }

    /// Server-side applies `value` as the host object `name`. For a
    /// [`Target::New`] copy, only if nothing holds the name: if something
    /// does, it is looked at and written over only if this vcluster owns it
    /// (`Ok(None)`: a foreign object holds the name; it is left as it is).
    ///
    /// A [`Target::Existing`] copy's apply carries the uid it was decided
    /// on: an apply creates what is gone, and a decision made before a host
    /// controller deleted the copy (a kubelet or KWOK ending a pod) would
    /// otherwise bring it back after the delete. With the uid the API server
    /// refuses it: 409 when nothing holds the name, 422 (uid immutable) when
    /// another object does.
    ///
    /// The create-only apply carries resourceVersion "1" as a precondition:
    /// an apply that creates ignores it, one that would change an existing
    /// object fails with 409 Conflict, because no object has that version
    /// (etcd's first write is revision 2; on kine's SQL backends the
    /// revision is the row id, and row 1 is kine's own `compact_rev_key`,
    /// written before it serves). One round trip per new copy
    /// instead of a GET before the apply, and no window between them.
    async fn apply_host(
        &self,
        name: &str,
        value: &mut serde_json::Value,
        target: &Target,
    ) -> Result<Option<R::H>, kube::Error> {
        let api = self.host_api();
        let uid = match target {
            Target::Existing(uid) => uid.clone(),
            Target::New => match apply_with(&api, name, value, "resourceVersion", "1").await {
                // Something holds the name: ours, not cached yet, or foreign.
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    match api.get_opt(name).await? {
                        Some(existing) if self.ctx.ownership().owns(existing.meta()) => {
                            existing.uid().unwrap_or_default()
                        }
                        Some(_) => return Ok(None),
                        // Gone again since: decided anew.
                        None => return Err(kube::Error::Api(status)),
                    }
                }
                other => return other.map(Some),
            },
        };
        apply_with(&api, name, value, "uid", &uid).await.map(Some)
    }

    async fn collision(&self, v: &R::V, host_name: &str) -> Result<Option<Duration>, SyncError> {
        let names = &self.ctx.names;
        let note = format!(
            "cannot sync to host: {} {host_name} already exists in host namespace {} and is not managed by vcluster {}",
            R::KIND,
            names.host_namespace,
            names.vc
        );
        tracing::warn!(
            host = host_name,
            "name collision with a foreign host object"
        );
        self.ctx
            .event(v, EventType::Warning, "SyncNameCollision", note)
            .await;
        // Look again later: the foreign object may go away.
        Ok(Some(Duration::from_secs(30)))
    }

    async fn delete_host(
        &self,
        h: &R::H,
        key_text: &str,
        grace_seconds: Option<i64>,
    ) -> Result<(), SyncError> {
        let meta = h.meta();
        // Already going, as fast as asked or faster: a second delete would
        // change nothing (a shorter grace still goes through, as it does for
        // a kubelet).
        if meta.deletion_timestamp.is_some()
            && (grace_seconds.is_none() || meta.deletion_grace_period_seconds <= grace_seconds)
        {
            return Ok(());
        }
        let grace = grace_seconds.and_then(|g| u32::try_from(g).ok());
        delete_exact(&self.host_api(), &h.name_any(), h.uid(), grace)
            .await
            .map(drop)
            .map_err(|e| api_err("delete host copy of", R::KIND, key_text, e))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::covers;

    #[test]
    fn a_copy_covers_what_was_applied_and_not_what_changed() {
        let want = json!({"metadata": {"labels": {"a": "1"}, "annotations": {}},
            "spec": {"containers": [{"name": "c", "image": "x", "ports": []}], "n": 1}});
        // Server defaults, others' fields and omitted empties are covered.
        let have = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "uid": "u"},
            "spec": {"containers": [{"name": "c", "image": "x", "imagePullPolicy": "Always"}],
                     "n": 1.0, "nodeName": "n1"},
            "status": {"phase": "Running"}});
        assert!(covers(&have, &want));
        let changed = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut h = have.clone();
            edit(&mut h);
            covers(&h, &want)
        };
        assert!(!changed(&|h| h["metadata"]["labels"]["a"] = "2".into()));
        assert!(!changed(&|h| {
            h["metadata"]["labels"].as_object_mut().unwrap().remove("a");
        }));
        assert!(!changed(
            &|h| h["spec"]["containers"][0]["image"] = "y".into()
        ));
        assert!(!changed(&|h| {
            h["spec"]["containers"]
                .as_array_mut()
                .unwrap()
                .push(json!({"name": "extra"}));
        }));
        assert!(!changed(&|h| h["spec"]["n"] = 2.into()));
        assert!(!changed(
            &|h| h["spec"]["containers"][0]["ports"] = json!([{"containerPort": 1}])
        ));
    }
}
