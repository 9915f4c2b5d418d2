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
use super::{Context, Decision, Object, Rule, copy_unreserved};
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
    /// Drops the content (never read from the host copy: the content hash
    /// annotation says whether it is current).
    fn slim(&mut self);
}

impl ConfigKind for ConfigMap {
    const KIND: &'static str = "ConfigMap";
    fn referenced(refs: &References, name: &str) -> bool {
        refs.uses_configmap(name)
    }
    fn slim(&mut self) {
        self.data = None;
        self.binary_data = None;
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
    fn slim(&mut self) {
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
            || super::certs::is_mirror(self)
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
    pods: Cache<Pod>,
    ingresses: Cache<Ingress>,
    kind: PhantomData<fn() -> K>,
}

impl<K> ConfigRule<K> {
    /// A rule that reads references from the virtual pod and ingress caches.
    pub fn new(scope: Scope, pods: Cache<Pod>, ingresses: Cache<Ingress>) -> Self {
        Self {
            scope,
            pods,
            ingresses,
            kind: PhantomData,
        }
    }
}

impl<K: ConfigKind> ConfigRule<K> {
    /// Whether a virtual pod of `namespace` references `name`. Only pods
    /// whose JSON mentions the name as a string are parsed (the cache keeps
    /// pods compressed; a scan of every pod would parse thousands).
    fn referenced_by_pod(&self, namespace: Option<&str>, name: &str) -> bool {
        let quoted = format!("\"{name}\"");
        self.pods.any_entry(|p| {
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

    fn decide(&self, _ctx: &Context, v: &K, _h: Option<&K>) -> Decision<K> {
        if v.excluded() || v.meta().deletion_timestamp.is_some() {
            return Decision::Remove {
                grace_seconds: None,
            };
        }
        let ns = v.namespace();
        let name = v.name_any();
        let wanted = self.scope == Scope::All
            || self.referenced_by_pod(ns.as_deref(), &name)
            || self
                .ingresses
                .objects_in(ns.as_deref())
                .iter()
                .any(|i| K::referenced_by_ingress(i, &name));
        if !wanted {
            return Decision::Remove {
                grace_seconds: None,
            };
        }
        let mut out = v.content();
        *out.meta_mut() = ObjectMeta {
            labels: Some(copy_unreserved(v.meta().labels.as_ref())),
            annotations: Some(copy_unreserved(v.meta().annotations.as_ref())),
            ..ObjectMeta::default()
        };
        Decision::Sync(out)
    }
}
