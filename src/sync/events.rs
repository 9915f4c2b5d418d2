//! Events up: host events about synced pods appear on the matching virtual
//! pods, names translated back, one virtual event per host event (updated as
//! its count grows).

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource as _, ResourceExt};

use super::cache::Cache;
use super::{Assembly, Context, KindSpec, Names, Side};
use crate::FIELD_MANAGER;
use crate::translate::VirtualKey;
use crate::translate::event::{Target, virtual_event};

/// The virtual copy of `host_event` and the virtual pod's key, if it is
/// about a host pod synced for a virtual pod that still exists.
fn copy_of(
    names: &Names,
    host_pods: &Cache<Pod>,
    virtual_pods: &Cache<Pod>,
    host_event: &Event,
) -> Option<(VirtualKey, Event)> {
    if host_event.involved_object.kind.as_deref() != Some("Pod") {
        return None;
    }
    let host_name = host_event.involved_object.name.as_deref()?;
    let host_pod = host_pods.entry(host_name, Some(&names.host_namespace))?;
    let key = names.ownership().virtual_key(host_pod.meta())?;
    let vpod = virtual_pods.entry(&key.name, Some(&key.namespace))?;
    let uid = vpod.uid().unwrap_or_default();
    let target = Target {
        kind: "Pod",
        key: &key,
        uid: &uid,
        host_name,
        host_namespace: &names.host_namespace,
    };
    let mut event = virtual_event(host_event, &target);
    event.metadata.managed_fields = None;
    Some((key, event))
}

/// Copies host pod events up until the process ends. `host_pods` and
/// `virtual_pods` are the pod engine's caches.
pub async fn run(ctx: std::sync::Arc<Context>, host_pods: Cache<Pod>, virtual_pods: Cache<Pod>) {
    let api: Api<Event> = Api::namespaced(ctx.host.clone(), &ctx.names.host_namespace);
    let stream = watcher(api, watcher::Config::default())
        .backoff(super::outage::WatchBackoff::default())
        .applied_objects();
    futures::pin_mut!(stream);
    while let Some(ev) = stream.next().await {
        let host_event = match ev {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "host event watch error");
                continue;
            }
        };
        let Some((key, event)) = copy_of(&ctx.names, &host_pods, &virtual_pods, &host_event) else {
            continue;
        };
        let name = event.name_any();
        let virt: Api<Event> = Api::namespaced(ctx.virt.clone(), &key.namespace);
        let mut value = match serde_json::to_value(&event) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "cannot serialize event");
                continue;
            }
        };
        value["apiVersion"] = "v1".into();
        value["kind"] = "Event".into();
        if let Err(e) = virt
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&value),
            )
            .await
        {
            tracing::warn!(event = %name, error = %e, "cannot copy host event up");
        }
    }
}

/// Host events about synced pods, copied up.
pub const KIND: KindSpec = KindSpec {
    name: "events",
    needs: &["pods"],
    because: "they are those of synced pods",
    needs_waived_by_all_configs: false,
    register,
};

fn register(a: &mut Assembly) {
    let (host_pods, virtual_pods) = (a.cache(Side::Host), a.cache(Side::Virtual));
    a.spawn("events", run(a.ctx(), host_pods, virtual_pods));
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
        let host_pods = filled([host, foreign]);
        let virtual_pods = filled([pod("web", "shop", json!({}), json!({}))]);
        let (got_key, copy) = copy_of(
            &names,
            &host_pods,
            &virtual_pods,
            &event("Pod", "web-x-shop-x-vc"),
        )
        .unwrap();
        assert_eq!(got_key, key);
        assert_eq!(copy.involved_object.name.as_deref(), Some("web"));
        assert_eq!(copy.involved_object.namespace.as_deref(), Some("shop"));
        assert_eq!(copy.count, Some(2));
        for (what, ev) in [
            ("another kind", event("Service", "web-x-shop-x-vc")),
            ("a host pod not ours", event("Pod", "other")),
            ("an unknown pod", event("Pod", "nope")),
        ] {
            assert!(
                copy_of(&names, &host_pods, &virtual_pods, &ev).is_none(),
                "{what}"
            );
        }
        let gone = filled(Vec::<Pod>::new());
        assert!(
            copy_of(&names, &host_pods, &gone, &event("Pod", "web-x-shop-x-vc")).is_none(),
            "virtual pod gone"
        );
    }
}
