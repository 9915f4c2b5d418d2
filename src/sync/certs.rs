//! cert-manager sharing. An ingress annotated for cert-manager goes down
//! with its TLS Secret name translated; the host's cert-manager (its
//! ingress-shim) issues the certificate into that host Secret. This loop
//! mirrors such Secrets up into the ingress's virtual namespace under the
//! tenant's `secretName`, marked as a mirror ([`MIRROR_LABEL`]): the tenant
//! sees its certificate; edits are reverted; mirrors never go down again and
//! are removed when the ingress or the host Secret goes.
//!
//! Only a host Secret that carries cert-manager's certificate annotation and
//! is not the syncer's own copy of a tenant Secret is mirrored, and only under
//! a name that translates to it, so nothing else of the host namespace can be
//! read this way.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Resource as _, ResourceExt};
use serde_json::json;
use tokio::sync::Notify;

use super::cache::{self, Cache};
use super::feed::Readiness;
use super::{Context, EngineOptions, delete_exact};
use crate::FIELD_MANAGER;
use crate::translate::ingress::{tls_secrets, wants_cert_manager};
use crate::translate::{VirtualKey, host_name};

/// Label on virtual Secrets that mirror a host Secret (value `true`).
pub const MIRROR_LABEL: &str = "vcluster.dev/mirror";
/// Annotation on mirrors: `<host namespace>/<host name>` of the source.
pub const MIRROR_OF_ANNOTATION: &str = "vcluster.dev/mirror-of";
/// cert-manager's annotation on the Secrets it issues.
pub const CERTIFICATE_NAME_ANNOTATION: &str = "cert-manager.io/certificate-name";
const TLS_TYPE: &str = "kubernetes.io/tls";

/// True for a virtual Secret that mirrors a host Secret.
pub fn is_mirror(s: &impl kube::Resource) -> bool {
    s.labels().get(MIRROR_LABEL).is_some_and(|v| v == "true")
}

/// The caches the mirror reads.
#[derive(Clone)]
pub struct Sources {
    /// Virtual ingresses.
    pub ingresses: Cache<Ingress>,
    /// This vcluster's host ingresses.
    pub host_ingresses: Cache<Ingress>,
    /// Virtual Secrets.
    pub secrets: Cache<Secret>,
    /// The engines owning those caches: their initial syncs.
    pub ready: Vec<Arc<Readiness>>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources").finish_non_exhaustive()
    }
}

/// Runs the mirror until the process ends.
pub async fn run(ctx: Arc<Context>, src: Sources, opts: EngineOptions) {
    let (tls, writer) = cache::cache::<Secret>();
    let api: Api<Secret> = Api::namespaced(ctx.host.clone(), &ctx.names.host_namespace);
    let changed = Arc::new(Notify::new());
    let notify = Arc::clone(&changed);
    let watch = cache::watch(
        api,
        opts.watcher_config(super::Side::Host)
            .fields(&format!("type={TLS_TYPE}")),
        writer,
        |_| {},
        || {},
    );
    tokio::spawn(watch.for_each(move |_| {
        notify.notify_one();
        std::future::ready(())
    }));
    // Every cache complete first: a partial view would remove good mirrors.
    tls.wait_until_ready().await;
    futures::future::join_all(src.ready.iter().map(|r| r.wait())).await;
    let mut warned = HashSet::new();
    loop {
        pass(&ctx, &src, &tls, &mut warned).await;
        tokio::select! {
            () = changed.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(3)) => {}
        }
    }
}

async fn pass(ctx: &Context, src: &Sources, tls: &Cache<Secret>, warned: &mut HashSet<VirtualKey>) {
    let own = ctx.ownership();
    let mut desired: HashMap<VirtualKey, (Secret, Ingress)> = HashMap::new();
    for ing in src.ingresses.objects_in(None) {
        if !wants_cert_manager(&ing) || ing.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let ns = ing.namespace().unwrap_or_default();
        let host_ing = host_name(&ctx.names.vc, &ns, &ing.name_any());
        if !src
            .host_ingresses
            .contains(&host_ing, Some(&ctx.names.host_namespace))
        {
            continue;
        }
        for name in tls_secrets(&ing) {
            let host = host_name(&ctx.names.vc, &ns, &name);
            let Some(hs) = tls.get(&host, Some(&ctx.names.host_namespace)) else {
                continue;
            };
            if own.owns(hs.meta()) || !hs.annotations().contains_key(CERTIFICATE_NAME_ANNOTATION) {
                continue;
            }
            desired.insert(
                VirtualKey {
                    namespace: ns.clone(),
                    name,
                },
                (hs, ing.clone()),
            );
        }
    }
    for (key, (hs, ing)) in &desired {
        let current = src.secrets.get(&key.name, Some(&key.namespace));
        if let Some(cur) = &current {
            if !is_mirror(cur) {
                if warned.insert(key.clone()) {
                    let note = format!(
                        "secret {} already exists and is not a mirror of the host certificate; it is left alone",
                        key.name
                    );
                    ctx.event(ing, EventType::Warning, "TLSSecretConflict", note)
                        .await;
                }
                continue;
            }
            if cur.data == hs.data && cur.type_ == hs.type_ {
                continue;
            }
        }
        warned.remove(key);
        let mirror = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {
                "name": key.name, "namespace": key.namespace,
                "labels": {MIRROR_LABEL: "true"},
                "annotations": {MIRROR_OF_ANNOTATION: format!("{}/{}", ctx.names.host_namespace, hs.name_any())},
            },
            "type": hs.type_.clone().unwrap_or_else(|| TLS_TYPE.to_owned()),
            "data": hs.data.clone().unwrap_or_default(),
        });
        let api: Api<Secret> = Api::namespaced(ctx.virt.clone(), &key.namespace);
        match api
            .patch(
                &key.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&mirror),
            )
            .await
        {
            Ok(_) => {
                tracing::info!(secret = %key, host = %hs.name_any(), "certificate mirrored up")
            }
            Err(e) => tracing::warn!(secret = %key, error = %e, "cannot mirror the certificate"),
        }
    }
    for s in src.secrets.entries() {
        let key = VirtualKey {
            namespace: s.namespace().unwrap_or_default(),
            name: s.name_any(),
        };
        if !is_mirror(s.as_ref()) || desired.contains_key(&key) {
            continue;
        }
        let api: Api<Secret> = Api::namespaced(ctx.virt.clone(), &key.namespace);
        match delete_exact(&api, &key.name, s.uid(), None).await {
            Ok(true) => tracing::info!(secret = %key, "certificate mirror removed"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(secret = %key, error = %e, "cannot remove the certificate mirror")
            }
        }
    }
}
