//! Events up: host events about synced pods (and claims: provisioning
//! failures, waiting for a consumer, resizes) appear on the matching virtual
//! objects, names translated back, one virtual event per host event (updated
//! as its count grows).

use futures::{StreamExt, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim, Pod};
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};

use super::cache::Cache;
use super::lean::Lean;
use super::{Assembly, Context, KindSpec, Names, Object, Side};
use crate::translate::VirtualKey;
use crate::translate::event::{Target, virtual_event};

/// Finds the virtual key and uid of the source of a named host object.
type Finder = Box<dyn Fn(&Names, &str) -> Option<(VirtualKey, String)> + Send + Sync>;

/// A kind whose host events come up: its kind name and its engine's caches.
pub struct Source {
    kind: &'static str,
    /// The virtual key and uid of the source of a host object of this kind.
    find: Finder,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source").field("kind", &self.kind).finish()
    }
}

impl Source {
    /// Events about host objects of `kind` from `host`, copied onto the
    /// virtual objects of `virt` they were written for.
    pub fn new<K: Object>(kind: &'static str, host: Cache<K>, virt: Cache<K>) -> Self {
        let find = move |names: &Names, host_name: &str| {
            let host_obj = host.entry(host_name, Some(&names.host_namespace))?;
            let key = names.ownership().virtual_key(host_obj.as_ref())?;
            let vobj = virt.entry(&key.name, Some(&key.namespace))?;
            let uid = vobj.uid().unwrap_or_default();
            Some((key, uid))
        };
        Self {
            kind,
            find: Box::new(find),
        }
    }
}

/// The virtual copy of `host_event` and the virtual object's key, if it is
/// about a host object synced for a virtual object that still exists.
fn copy_of(names: &Names, sources: &[Source], host_event: &Event) -> Option<(VirtualKey, Event)> {
    let kind = host_event.involved_object.kind.as_deref()?;
    let source = sources.iter().find(|s| s.kind == kind)?;
    let host_name = host_event.involved_object.name.as_deref()?;
    let (key, uid) = (source.find)(names, host_name)?;
    let target = Target {
        kind: source.kind,
        key: &key,
        uid: &uid,
        host_name,
        host_namespace: &names.host_namespace,
    };
    let mut event = virtual_event(host_event, &target);
    event.metadata.managed_fields = None;
    Some((key, event))
}

/// Copies host events about the objects of `sources` up until the process ends.
pub async fn run(ctx: std::sync::Arc<Context>, sources: Vec<Source>) {
    let api: Api<Lean<Event>> = Api::namespaced(ctx.host.clone(), &ctx.names.host_namespace);
    let stream = watcher(api, watcher::Config::default())
        .backoff(super::outage::WatchBackoff::default())
        .applied_objects()
        .map_ok(|Lean(e)| e);
    futures::pin_mut!(stream);
    while let Some(ev) = stream.next().await {
        let host_event = match ev {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "host event watch error");
                continue;
            }
        };
        let Some((key, event)) = copy_of(&ctx.names, &sources, &host_event) else {
            continue;
        };
        let name = event.name_any();
        let virt: Api<Event> = Api::namespaced(ctx.virt.clone(), &key.namespace);
        if let Err(e) = crate::api::apply(&virt, &name, &event).await {
            tracing::warn!(event = %name, error = %e, "cannot copy host event up");
        }
    }
}

/// Host events about synced pods (and claims, when they are synced), copied up.
pub const KIND: KindSpec = KindSpec {
    name: "events",
    needs: &["pods"],
    because: "they are those of synced pods",
    needs_waived_by_all_configs: false,
    register,
};

fn register(a: &mut Assembly) {
    let mut sources = vec![Source::new::<Pod>(
        "Pod",
        a.cache(Side::Host),
        a.cache(Side::Virtual),
    )];
    if a.selected(super::claims::KIND.name) {
        sources.push(Source::new::<PersistentVolumeClaim>(
            "PersistentVolumeClaim",
            a.cache(Side::Host),
            a.cache(Side::Virtual),
        ));
    }
    a.spawn("events", run(a.ctx(), sources));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::cache::filled;
    use crate::translate::VclusterName;
    use serde_json::json;

    fn names() -> Names {
        Names::new(VclusterName::new("vc").unwrap(), "host-ns")
    }

    fn pod(name: &str, ns: &str, labels: serde_json::Value, ann: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "uid": "vuid", "labels": labels, "annotations": ann},
        }))
        .unwrap()
    }

    fn event(kind: &str, name: &str) -> Event {
        serde_json::from_value(json!({
            "metadata": {"name": format!("{name}.1"), "namespace": "host-ns"},
            "involvedObject": {"kind": kind, "name": name, "namespace": "host-ns"},
            "reason": "Pulled", "message": "pulled image", "type": "Normal", "count": 2,
        }))
        .unwrap()
    }

    #[test]
    fn host_events_of_synced_pods_land_on_their_virtual_pods() {
        let names = names();
        let key = VirtualKey {
            namespace: "shop".into(),
            name: "web".into(),
        };
        let own = names.ownership();
        let host = pod(
            "web-x-shop-x-vc",
            "host-ns",
            json!(own.labels(&key)),
            json!(own.annotations(&key, "vuid")),
        );
        let foreign = pod("other", "host-ns", json!({}), json!({}));
        let host_pods = filled([host.clone(), foreign]);
        let virtual_pods = filled([pod("web", "shop", json!({}), json!({}))]);
        let sources = [Source::new("Pod", host_pods.clone(), virtual_pods)];
        let (got_key, copy) = copy_of(&names, &sources, &event("Pod", "web-x-shop-x-vc")).unwrap();
        assert_eq!(got_key, key);
        assert_eq!(copy.involved_object.name.as_deref(), Some("web"));
        assert_eq!(copy.involved_object.namespace.as_deref(), Some("shop"));
        assert_eq!(copy.count, Some(2));
        for (what, ev) in [
            ("another kind", event("Service", "web-x-shop-x-vc")),
            ("a host pod not ours", event("Pod", "other")),
            ("an unknown pod", event("Pod", "nope")),
        ] {
            assert!(copy_of(&names, &sources, &ev).is_none(), "{what}");
        }
        let gone = [Source::new("Pod", host_pods, filled(Vec::<Pod>::new()))];
        assert!(
            copy_of(&names, &gone, &event("Pod", "web-x-shop-x-vc")).is_none(),
            "virtual pod gone"
        );
    }

    #[test]
    fn host_events_of_synced_claims_land_on_their_virtual_claims() {
        let names = names();
        let key = VirtualKey {
            namespace: "shop".into(),
            name: "data".into(),
        };
        let own = names.ownership();
        let claim = |name: &str, ns: &str, labels, ann| -> PersistentVolumeClaim {
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": ns, "uid": "cuid", "labels": labels, "annotations": ann},
            }))
            .unwrap()
        };
        let host = claim(
            "data-x-shop-x-vc",
            "host-ns",
            json!(own.labels(&key)),
            json!(own.annotations(&key, "cuid")),
        );
        let sources = [
            Source::new::<Pod>("Pod", filled([]), filled([])),
            Source::new(
                "PersistentVolumeClaim",
                filled([host]),
                filled([claim("data", "shop", json!({}), json!({}))]),
            ),
        ];
        let (got, copy) = copy_of(
            &names,
            &sources,
            &event("PersistentVolumeClaim", "data-x-shop-x-vc"),
        )
        .unwrap();
        assert_eq!(got, key);
        assert_eq!(
            copy.involved_object.kind.as_deref(),
            Some("PersistentVolumeClaim")
        );
        assert_eq!(copy.involved_object.uid.as_deref(), Some("cuid"));
        // A pod event of the same name is not the claim's.
        assert!(copy_of(&names, &sources, &event("Pod", "data-x-shop-x-vc")).is_none());
    }
}
