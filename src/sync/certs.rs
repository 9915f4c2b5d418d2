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
use tracing::Instrument as _;

use super::cache::{self, Cache};
use super::feed::Readiness;
use super::{Context, EngineOptions, Names, delete_exact};
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
    let follow = watch.for_each(move |_| {
        notify.notify_one();
        std::future::ready(())
    });
    tokio::spawn(follow.instrument(tracing::info_span!("tls_secret_watch")));
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

/// The mirrors there should be: for each cert-manager ingress synced to
/// the host, each TLS Secret cert-manager has issued for its host copy,
/// keyed by where the tenant expects it, with the ingress that asks for it.
fn desired(
    names: &Names,
    src: &Sources,
    tls: &Cache<Secret>,
) -> HashMap<VirtualKey, (Secret, Ingress)> {
    let own = names.ownership();
    let mut desired = HashMap::new();
    for ing in src.ingresses.objects_in(None) {
        if !wants_cert_manager(&ing) || ing.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let ns = ing.namespace().unwrap_or_default();
        let host_ing = host_name(&names.vc, &ns, &ing.name_any());
        if !src
            .host_ingresses
            .contains(&host_ing, Some(&names.host_namespace))
        {
            continue;
        }
        for name in tls_secrets(&ing) {
            let host = host_name(&names.vc, &ns, &name);
            let Some(hs) = tls.get(&host, Some(&names.host_namespace)) else {
                continue;
            };
            if own.owns(hs.meta()) || !hs.annotations().contains_key(CERTIFICATE_NAME_ANNOTATION) {
                continue;
            }
            let key = VirtualKey {
                namespace: ns.clone(),
                name,
            };
            desired.insert(key, (hs, ing.clone()));
        }
    }
    desired
}

/// What to do for one wanted mirror, given the virtual Secret of that name.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// A tenant's own Secret holds the name: leave it, warn once.
    Conflict,
    /// The mirror is current.
    Current,
    /// Write the mirror.
    Write,
}

fn step(current: Option<&Secret>, host: &Secret) -> Step {
    match current {
        Some(cur) if !is_mirror(cur) => Step::Conflict,
        Some(cur) if cur.data == host.data && cur.type_ == host.type_ => Step::Current,
        _ => Step::Write,
    }
}

/// Mirrors no ingress wants any more, with their uids.
fn stale(
    src: &Sources,
    desired: &HashMap<VirtualKey, (Secret, Ingress)>,
) -> Vec<(VirtualKey, Option<String>)> {
    src.secrets
        .entries()
        .iter()
        .filter(|s| is_mirror(s.as_ref()))
        .map(|s| {
            let key = VirtualKey {
                namespace: s.namespace().unwrap_or_default(),
                name: s.name_any(),
            };
            (key, s.uid())
        })
        .filter(|(key, _)| !desired.contains_key(key))
        .collect()
}

async fn pass(ctx: &Context, src: &Sources, tls: &Cache<Secret>, warned: &mut HashSet<VirtualKey>) {
    let desired = desired(&ctx.names, src, tls);
    for (key, (hs, ing)) in &desired {
        match step(
            src.secrets.get(&key.name, Some(&key.namespace)).as_ref(),
            hs,
        ) {
            Step::Current => {}
            Step::Conflict if !warned.insert(key.clone()) => {}
            Step::Conflict => {
                let note = format!(
                    "secret {} already exists and is not a mirror of the host certificate; it is left alone",
                    key.name
                );
                ctx.event(ing, EventType::Warning, "TLSSecretConflict", note)
                    .await;
            }
            Step::Write => {
                warned.remove(key);
                write_mirror(ctx, key, hs).await;
            }
        }
    }
    for (key, uid) in stale(src, &desired) {
        let api: Api<Secret> = Api::namespaced(ctx.virt.clone(), &key.namespace);
        match delete_exact(&api, &key.name, uid, None).await {
            Ok(true) => tracing::info!(secret = %key, "certificate mirror removed"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(secret = %key, error = %e, "cannot remove the certificate mirror")
            }
        }
    }
}

async fn write_mirror(ctx: &Context, key: &VirtualKey, hs: &Secret) {
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
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match api.patch(&key.name, &params, &Patch::Apply(&mirror)).await {
        Ok(_) => tracing::info!(secret = %key, host = %hs.name_any(), "certificate mirrored up"),
        Err(e) => tracing::warn!(secret = %key, error = %e, "cannot mirror the certificate"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::cache::filled;
    use crate::translate::VclusterName;

    fn names() -> Names {
        Names::new(VclusterName::new("vc").unwrap(), "host-ns")
    }

    fn ingress(name: &str, cert_manager: bool, secret: &str) -> Ingress {
        let ann = if cert_manager {
            json!({"cert-manager.io/cluster-issuer": "ca"})
        } else {
            json!({})
        };
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop", "annotations": ann},
            "spec": {"tls": [{"hosts": ["shop.example.com"], "secretName": secret}]},
        }))
        .unwrap()
    }

    fn host_copy(name: &str) -> Ingress {
        let mut i = ingress(name, true, "x");
        i.metadata.namespace = Some("host-ns".into());
        i
    }

    fn issued(name: &str, data: &str, annotated: bool) -> Secret {
        let ann = if annotated {
            json!({CERTIFICATE_NAME_ANNOTATION: "c"})
        } else {
            json!({})
        };
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "host-ns", "annotations": ann},
            "type": TLS_TYPE,
            "data": {"tls.crt": data},
        }))
        .unwrap()
    }

    fn mirror(name: &str, data: &str) -> Secret {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop", "uid": "u1", "labels": {MIRROR_LABEL: "true"}},
            "type": TLS_TYPE,
            "data": {"tls.crt": data},
        }))
        .unwrap()
    }

    fn sources(ingresses: Vec<Ingress>, host: Vec<Ingress>, secrets: Vec<Secret>) -> Sources {
        Sources {
            ingresses: filled(ingresses),
            host_ingresses: filled(host),
            secrets: filled(secrets),
            ready: Vec::new(),
        }
    }

    #[test]
    fn only_issued_certificates_of_synced_cert_manager_ingresses_are_wanted() {
        let tls = filled([
            issued("web-tls-x-shop-x-vc", "Y2VydA==", true),
            issued("plain-tls-x-shop-x-vc", "Y2VydA==", true),
            issued("unissued-x-shop-x-vc", "Y2VydA==", false),
        ]);
        let src = sources(
            vec![
                ingress("web", true, "web-tls"),
                ingress("plain", false, "plain-tls"),
                ingress("unsynced", true, "web-tls"),
                ingress("notyet", true, "unissued"),
            ],
            vec![
                host_copy("web-x-shop-x-vc"),
                host_copy("plain-x-shop-x-vc"),
                host_copy("notyet-x-shop-x-vc"),
            ],
            vec![],
        );
        let got = desired(&names(), &src, &tls);
        let keys: Vec<_> = got.keys().map(ToString::to_string).collect();
        assert_eq!(
            keys,
            ["shop/web-tls"],
            "cert-manager only, host copy synced, issued only"
        );
    }

    #[test]
    fn a_tenant_secret_is_never_overwritten_and_current_mirrors_are_left() {
        let host = issued("h", "bmV3", true);
        let mut tenant = mirror("web-tls", "bmV3");
        tenant.metadata.labels = None;
        assert_eq!(step(Some(&tenant), &host), Step::Conflict);
        assert_eq!(step(Some(&mirror("web-tls", "bmV3")), &host), Step::Current);
        assert_eq!(
            step(Some(&mirror("web-tls", "b2xk")), &host),
            Step::Write,
            "renewed"
        );
        assert_eq!(step(None, &host), Step::Write);
    }

    #[test]
    fn mirrors_nothing_wants_are_stale() {
        let src = sources(
            vec![],
            vec![],
            vec![mirror("old-tls", "eA=="), {
                let mut own = mirror("own", "eA==");
                own.metadata.labels = None;
                own
            }],
        );
        let stale = stale(&src, &HashMap::new());
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].0.to_string(), "shop/old-tls");
        assert_eq!(stale[0].1.as_deref(), Some("u1"));
    }
}
