//! ConfigMaps and Secrets: copied to the host when a pod in the same virtual
//! namespace references them, or an ingress names a Secret for TLS (default),
//! or all of them (`--sync-all-configs`). Service-account-token Secrets never
//! go down: the host would reject or rewrite them, and a virtual token means
//! nothing to the host API. Nor do mirrors of host certificates
//! ([`super::certs`]), nor TLS Secrets of ingresses that ask cert-manager.

use std::marker::PhantomData;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

use super::cache::Cache;
use super::{Assembly, Decision, KindSpec, Names, Object, Rule, Side, copy_unreserved};
use crate::translate::VirtualKey;
use crate::translate::ingress::{tls_secrets, wants_cert_manager};
use crate::translate::pod::{References, references};

/// Which configuration objects go down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Only those a pod references.
    Referenced,
    /// Every one.
    All,
}

/// What differs between ConfigMaps and Secrets.
pub trait ConfigKind: Object {
    /// Kind name.
    const KIND: &'static str;
    /// Whether a pod's references name this object.
    fn referenced(refs: &References, name: &str) -> bool;
    /// The host copy's content (metadata is set by the caller).
    fn content(&self) -> Self;
    /// Objects that never go down.
    fn excluded(&self) -> bool {
        false
    }
    /// Whether an ingress names this object.
    fn referenced_by_ingress(_ing: &Ingress, _name: &str) -> bool {
        false
    }
    /// The names of this kind a pod's references name.
    fn names_in(refs: &References) -> Vec<String>;
    /// The names of this kind an ingress names (its TLS Secrets).
    fn names_in_ingress(_ing: &Ingress) -> Vec<String> {
        Vec::new()
    }
    /// Drops the content (never read from the host copy: the content hash
    /// annotation says whether it is current), keeping a digest of it in
    /// [`CONTENT_DIGEST`] for the resync's drift check.
    fn slim(&mut self);
    /// Adds the front door's CA to the host copy of `name`, where pods read
    /// the CA of their API (the content, not the virtual object).
    fn trust_front_door(&mut self, _name: &str, _ca: &str) {}
}

/// The annotation a cached host ConfigMap or Secret carries in place of its
/// content (in this process only, never written): a digest of the content,
/// so the resync sees content changed on the host without keeping it. The
/// desired copy, slimmed the same way, carries the digest it should have.
pub const CONTENT_DIGEST: &str = "vcluster.dev/cached-content-digest";

fn keep_digest(meta: &mut ObjectMeta, content: &impl serde::Serialize) {
    let json = serde_json::to_vec(content).unwrap_or_default();
    meta.annotations.get_or_insert_default().insert(
        CONTENT_DIGEST.to_owned(),
        crate::translate::sha256_hex(&json, 16),
    );
}

/// The ConfigMap every namespace gets with the API's CA (`ca.crt`), which
/// service-account volumes project.
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";

impl ConfigKind for ConfigMap {
    const KIND: &'static str = "ConfigMap";
    fn referenced(refs: &References, name: &str) -> bool {
        refs.uses_configmap(name)
    }
    fn names_in(refs: &References) -> Vec<String> {
        refs.configmaps
            .iter()
            .chain(&refs.optional_configmaps)
            .cloned()
            .collect()
    }
    fn slim(&mut self) {
        keep_digest(&mut self.metadata, &(&self.data, &self.binary_data));
        self.data = None;
        self.binary_data = None;
    }
    fn trust_front_door(&mut self, name: &str, ca: &str) {
        if name != ROOT_CA_CONFIGMAP {
            return;
        }
        if let Some(bundle) = self.data.as_mut().and_then(|d| d.get_mut("ca.crt")) {
            if !bundle.ends_with('\n') {
                bundle.push('\n');
            }
            bundle.push_str(ca);
        }
    }
    fn content(&self) -> Self {
        ConfigMap {
            data: self.data.clone(),
            binary_data: self.binary_data.clone(),
            immutable: self.immutable,
            ..ConfigMap::default()
        }
    }
}

impl ConfigKind for Secret {
    const KIND: &'static str = "Secret";
    fn referenced(refs: &References, name: &str) -> bool {
        refs.uses_secret(name)
    }
    fn names_in(refs: &References) -> Vec<String> {
        refs.secrets
            .iter()
            .chain(&refs.optional_secrets)
            .cloned()
            .collect()
    }
    fn names_in_ingress(ing: &Ingress) -> Vec<String> {
        tls_secrets(ing)
    }
    fn slim(&mut self) {
        keep_digest(&mut self.metadata, &self.data);
        self.data = None;
        self.string_data = None;
    }
    fn content(&self) -> Self {
        Secret {
            data: self.data.clone(),
            type_: self.type_.clone(),
            immutable: self.immutable,
            ..Secret::default()
        }
    }
    fn excluded(&self) -> bool {
        self.type_.as_deref() == Some("kubernetes.io/service-account-token")
            || super::certs::is_mirror(kube::Resource::meta(self))
    }
    fn referenced_by_ingress(ing: &Ingress, name: &str) -> bool {
        // cert-manager writes those on the host itself.
        !wants_cert_manager(ing) && tls_secrets(ing).iter().any(|s| s == name)
    }
}

/// The rule for ConfigMaps or Secrets.
#[derive(Debug)]
pub struct ConfigRule<K> {
    scope: Scope,
    pods: Option<Cache<Pod>>,
    ingresses: Option<Cache<Ingress>>,
    front_door_ca: Option<String>,
    kind: PhantomData<fn() -> K>,
}

impl<K> ConfigRule<K> {
    /// A rule that reads references from the virtual pod and ingress caches
    /// (`None`: that kind is not synced, so it references nothing).
    pub fn new(scope: Scope, pods: Option<Cache<Pod>>, ingresses: Option<Cache<Ingress>>) -> Self {
        Self {
            scope,
            pods,
            ingresses,
            front_door_ca: None,
            kind: PhantomData,
        }
    }

    /// This rule with the front door's CA added where pods read their API's CA.
    #[must_use]
    pub fn trusting(mut self, front_door_ca: Option<String>) -> Self {
        self.front_door_ca = front_door_ca;
        self
    }
}

impl<K: ConfigKind> ConfigRule<K> {
    /// Whether a virtual pod of `namespace` references `name`. Only pods
    /// whose JSON mentions the name as a string are parsed (the cache keeps
    /// pods compressed; a scan of every pod would parse thousands).
    fn referenced_by_pod(&self, namespace: Option<&str>, name: &str) -> bool {
        let Some(pods) = &self.pods else {
            return false;
        };
        let quoted = format!("\"{name}\"");
        pods.any_entry(|p| {
            p.namespace().as_deref() == namespace
                && p.object_if(|json| contains(json, quoted.as_bytes()))
                    .is_ok_and(|p| p.is_some_and(|p| K::referenced(&references(&p), name)))
        })
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

impl<K: ConfigKind> Rule for ConfigRule<K> {
    type V = K;
    type H = K;
    const KIND: &'static str = K::KIND;

    fn slim_host(h: &mut K) {
        h.slim();
    }

    fn decide(&self, _names: &Names, v: &K, _h: Option<&K>) -> Decision<K> {
        if v.excluded() || v.meta().deletion_timestamp.is_some() {
            return Decision::REMOVE;
        }
        let ns = v.namespace();
        let name = v.name_any();
        let wanted = self.scope == Scope::All
            || self.referenced_by_pod(ns.as_deref(), &name)
            || self.ingresses.as_ref().is_some_and(|ings| {
                ings.objects_in(ns.as_deref())
                    .iter()
                    .any(|i| K::referenced_by_ingress(i, &name))
            });
        if !wanted {
            return Decision::REMOVE;
        }
        let mut out = v.content();
        if let Some(ca) = &self.front_door_ca {
            out.trust_front_door(&name, ca);
        }
        *out.meta_mut() = ObjectMeta {
            labels: Some(copy_unreserved(v.meta().labels.as_ref())),
            annotations: Some(copy_unreserved(v.meta().annotations.as_ref())),
            ..ObjectMeta::default()
        };
        Decision::Sync(out)
    }
}

/// ConfigMaps.
pub const CONFIGMAPS: KindSpec = KindSpec {
    name: "configmaps",
    needs: &["pods"],
    because: "they are synced for the pods that use them",
    needs_waived_by_all_configs: true,
    register: register::<ConfigMap>,
};

/// Secrets.
pub const SECRETS: KindSpec = KindSpec {
    name: "secrets",
    needs: &["pods"],
    because: "they are synced for the pods that use them",
    needs_waived_by_all_configs: true,
    register: register::<Secret>,
};

fn register<K: ConfigKind>(a: &mut Assembly) {
    let scope = if a.settings().sync_all_configs {
        Scope::All
    } else {
        Scope::Referenced
    };
    // What references them, where that is synced: every object of the kind
    // goes down with `Scope::All`, so nothing else needs reading then.
    let pods =
        (scope == Scope::Referenced && a.selected("pods")).then(|| a.cache::<Pod>(Side::Virtual));
    let ingresses = (scope == Scope::Referenced && a.selected("ingresses"))
        .then(|| a.cache::<Ingress>(Side::Virtual));
    let (watch_pods, watch_ingresses) = (pods.is_some(), ingresses.is_some());
    // Decisions read those caches: the engine starts once they are listed
    // (else a restart would find nothing referenced and remove every copy).
    let listed = {
        let (pods, ingresses) = (pods.clone(), ingresses.clone());
        async move {
            for cache in pods.iter() {
                cache.wait_until_ready().await;
            }
            for cache in ingresses.iter() {
                cache.wait_until_ready().await;
            }
        }
    };
    let ca = a.settings().front_door_ca.clone();
    let engine = a.engine_after(
        ConfigRule::<K>::new(scope, pods, ingresses).trusting(ca),
        listed,
    );
    let keys = |namespace: Option<String>, names: Vec<String>| {
        let namespace = namespace.unwrap_or_default();
        names.into_iter().map(move |name| VirtualKey {
            namespace: namespace.clone(),
            name,
        })
    };
    if watch_pods {
        // A pod that appears, changes or goes re-evaluates what it references.
        let engine = std::sync::Arc::clone(&engine);
        a.on_change(Side::Virtual, move |pod: &Pod| {
            engine.enqueue_many(keys(pod.namespace(), K::names_in(&references(pod))));
        });
    }
    if watch_ingresses {
        // So does an ingress, for its TLS Secrets.
        a.on_change(Side::Virtual, move |ing: &Ingress| {
            engine.enqueue_many(keys(ing.namespace(), K::names_in_ingress(ing)));
        });
    }
}

#[cfg(test)]
#[path = "tests/config.rs"]
mod tests;
