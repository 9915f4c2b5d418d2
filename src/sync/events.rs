//! Events up: host events about synced pods appear on the matching virtual
//! pods, names translated back, one virtual event per host event (updated as
//! its count grows).

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource as _, ResourceExt};

use super::cache::Cache;
use super::{Assembly, Context, KindSpec, Side};
use crate::FIELD_MANAGER;
use crate::translate::event::{Target, virtual_event};

/// Copies host pod events up until the process ends. `host_pods` and
/// `virtual_pods` are the pod engine's caches.
pub async fn run(ctx: std::sync::Arc<Context>, host_pods: Cache<Pod>, virtual_pods: Cache<Pod>) {
    let api: Api<Event> = Api::namespaced(ctx.host.clone(), &ctx.names.host_namespace);
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .applied_objects();
    futures::pin_mut!(stream);
    let own = ctx.ownership();
    while let Some(ev) = stream.next().await {
        let host_event = match ev {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "host event watch error");
                continue;
            }
        };
        if host_event.involved_object.kind.as_deref() != Some("Pod") {
            continue;
        }
        let Some(host_name) = host_event.involved_object.name.as_deref() else {
            continue;
        };
        let Some(host_pod) = host_pods.entry(host_name, Some(&ctx.names.host_namespace)) else {
            continue;
        };
        let Some(key) = own.virtual_key(host_pod.meta()) else {
            continue;
        };
        let Some(vpod) = virtual_pods.entry(&key.name, Some(&key.namespace)) else {
            continue;
        };
        let uid = vpod.uid().unwrap_or_default();
        let target = Target {
            kind: "Pod",
            key: &key,
            uid: &uid,
            host_name,
            host_namespace: &ctx.names.host_namespace,
        };
        let mut event = virtual_event(&host_event, &target);
        event.metadata.managed_fields = None;
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
