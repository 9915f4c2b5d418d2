//! cert-manager sharing. An ingress annotated for cert-manager goes down
//! with its TLS Secret name translated; the host's cert-manager (its
//! ingress-shim) issues the certificate into that host Secret. So does a
//! tenant's own Certificate with `--sync certificates`
//! ([`super::certificates`]). This loop mirrors such Secrets up into the
//! virtual namespace of the ingress or Certificate under the tenant's
//! `secretName`, marked as a mirror ([`MIRROR_LABEL`]): the tenant sees its
//! certificate; edits are reverted; mirrors never go down again and are
//! removed when the ingress, the Certificate or the host Secret goes.
//!
//! Only a host Secret that carries cert-manager's certificate annotation and
//! is not the syncer's own copy of a tenant Secret is mirrored, and only under
//! a name that translates to it, so nothing else of the host namespace can be
//! read this way.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
use super::lean::Lean;
use super::{Assembly, Context, EngineOptions, Names, Side, delete_exact};
use crate::FIELD_MANAGER;
use crate::translate::certificate::{self, Certificate};
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
pub fn is_mirror(s: &impl crate::translate::markers::Marked) -> bool {
    s.label(MIRROR_LABEL).is_some_and(|v| v == "true")
}

/// A virtual cache and the host cache of the copies of its objects.
pub type Pair<K> = (Cache<K>, Cache<K>);

/// The caches the mirror reads.
#[derive(Clone)]
pub struct Sources {
    /// Virtual ingresses and their host copies, when ingresses sync.
    pub ingresses: Option<Pair<Ingress>>,
    /// Virtual Certificates and their host copies, when Certificates sync.
    pub certificates: Option<Pair<Certificate>>,
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

/// Set once the mirror is declared: ingresses and Certificates share it.
#[derive(Debug, Default)]
struct Declared(AtomicBool);

/// Declares the mirror (once, whichever of the kinds that need it asks
/// first), reading the caches of every selected kind that asks for
/// certificates.
pub fn register(a: &mut Assembly) {
    if a.shared::<Declared>().0.swap(true, Ordering::AcqRel) {
        return;
    }
    let mut ready = vec![a.ready_of::<Secret>(Side::Virtual)];
    let ingresses = a.selected("ingresses").then(|| {
        ready.push(a.ready_of::<Ingress>(Side::Virtual));
        (a.cache(Side::Virtual), a.cache(Side::Host))
    });
    let certificates = a.selected("certificates").then(|| {
        ready.push(a.ready_of::<Certificate>(Side::Virtual));
        (a.cache(Side::Virtual), a.cache(Side::Host))
    });
    let sources = Sources {
        ingresses,
        certificates,
        secrets: a.cache::<Secret>(Side::Virtual),
        ready,
    };
    let (ctx, opts) = (a.ctx(), a.opts());
    a.spawn("cert-mirrors", run(ctx, sources, opts));
}

/// What asks for a mirror: the object a conflict's Warning goes to.
#[derive(Debug, Clone)]
enum Asker {
    Ingress(Ingress),
    Certificate(Certificate),
}

/// Runs the mirror until the process ends.
async fn run(ctx: Arc<Context>, src: Sources, opts: EngineOptions) {
    let (tls, writer) = cache::cache::<Secret>();
    let api: Api<Lean<Secret>> = Api::namespaced(ctx.host.clone(), &ctx.names.host_namespace);
    let changed = Arc::new(Notify::new());
    let notify = Arc::clone(&changed);
    let watch = cache::watch(
        api,
        opts.watcher_config(Side::Host)
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

/// The mirrors there should be: for each cert-manager ingress and each
/// Certificate synced to the host, each TLS Secret cert-manager has issued
/// for its host copy, keyed by where the tenant expects it, with what asks
/// for it.
fn desired(
    names: &Names,
    src: &Sources,
    tls: &Cache<Secret>,
) -> HashMap<VirtualKey, (Secret, Asker)> {
    let own = names.ownership();
    let mut desired = HashMap::new();
    // The host Secret cert-manager issued as `host` for a copy synced to the
    // host, unless it is one of the syncer's own copies.
    let issued = |host: &str| {
        tls.get(host, Some(&names.host_namespace)).filter(|hs| {
            !own.owns(hs.meta()) && hs.annotations().contains_key(CERTIFICATE_NAME_ANNOTATION)
        })
    };
    for ing in src.ingresses.iter().flat_map(|(v, h)| synced(names, v, h)) {
        if !wants_cert_manager(&ing) {
            continue;
        }
        let ns = ing.namespace().unwrap_or_default();
        for name in tls_secrets(&ing) {
            if let Some(hs) = issued(&host_name(&names.vc, &ns, &name)) {
                let key = VirtualKey {
                    namespace: ns.clone(),
                    name,
                };
                desired.insert(key, (hs, Asker::Ingress(ing.clone())));
            }
        }
    }
    for c in src
        .certificates
        .iter()
        .flat_map(|(v, h)| synced(names, v, h))
    {
        let ns = c.namespace().unwrap_or_default();
        let host_c = host_name(&names.vc, &ns, &c.name_any());
        let Some(name) = certificate::secret_name(&c).map(str::to_owned) else {
            continue;
        };
        // Only the Secret cert-manager issued for this very Certificate.
        let Some(hs) = issued(&host_name(&names.vc, &ns, &name))
            .filter(|hs| hs.annotations().get(CERTIFICATE_NAME_ANNOTATION) == Some(&host_c))
        else {
            continue;
        };
        let key = VirtualKey {
            namespace: ns,
            name,
        };
        desired.insert(key, (hs, Asker::Certificate(c)));
    }
    desired
}

/// The live virtual objects of `virt` whose host copies are in `host`.
fn synced<K: super::Object>(names: &Names, virt: &Cache<K>, host: &Cache<K>) -> Vec<K> {
    virt.objects_in(None)
        .into_iter()
        .filter(|v| v.meta().deletion_timestamp.is_none())
        .filter(|v| {
            let ns = v.namespace().unwrap_or_default();
            host.contains(
                &host_name(&names.vc, &ns, &v.name_any()),
                Some(&names.host_namespace),
            )
        })
        .collect()
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
        Some(cur) if !is_mirror(cur.meta()) => Step::Conflict,
        Some(cur) if cur.data == host.data && cur.type_ == host.type_ => Step::Current,
        _ => Step::Write,
    }
}

/// Mirrors no ingress wants any more, with their uids.
fn stale(
    src: &Sources,
    desired: &HashMap<VirtualKey, (Secret, Asker)>,
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
    for (key, (hs, asker)) in &desired {
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
                let reason = "TLSSecretConflict";
                match asker {
                    Asker::Ingress(i) => ctx.event(i, EventType::Warning, reason, note).await,
                    Asker::Certificate(c) => ctx.event(c, EventType::Warning, reason, note).await,
                }
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
            ingresses: Some((filled(ingresses), filled(host))),
            certificates: None,
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

    fn certificate(name: &str, secret: &str, namespace: &str) -> Certificate {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"secretName": secret},
        }))
        .unwrap()
    }

    #[test]
    fn only_the_secret_issued_for_a_synced_certificate_is_wanted() {
        let for_cert = |secret: &str, cert: &str| {
            let mut s = issued(secret, "Y2VydA==", true);
            s.metadata.annotations =
                Some([(CERTIFICATE_NAME_ANNOTATION.to_owned(), cert.to_owned())].into());
            s
        };
        let tls = filled([
            for_cert("api-tls-x-shop-x-vc", "api-x-shop-x-vc"),
            // Issued for another Certificate that names the same Secret.
            for_cert("other-tls-x-shop-x-vc", "someone-else"),
            for_cert("late-tls-x-shop-x-vc", "late-x-shop-x-vc"),
        ]);
        let src = Sources {
            ingresses: None,
            certificates: Some((
                filled([
                    certificate("api", "api-tls", "shop"),
                    certificate("other", "other-tls", "shop"),
                    certificate("late", "late-tls", "shop"),
                ]),
                filled([
                    certificate("api-x-shop-x-vc", "x", "host-ns"),
                    certificate("other-x-shop-x-vc", "x", "host-ns"),
                ]),
            )),
            secrets: filled(Vec::<Secret>::new()),
            ready: Vec::new(),
        };
        let got = desired(&names(), &src, &tls);
        let keys: Vec<_> = got.keys().map(ToString::to_string).collect();
        assert_eq!(keys, ["shop/api-tls"], "issued for it, and synced");
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
