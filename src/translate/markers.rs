//! Ownership markers on host objects.
//!
//! Every host object the syncer writes carries:
//! - label [`OWNER_LABEL`] = the vcluster name: the syncer's host watches
//!   select on it, and it never changes or deletes an object without it;
//! - label [`NAMESPACE_LABEL`] = the virtual namespace (translated selectors
//!   use it to keep a tenant's Service inside its own namespace);
//! - annotations [`NAME_ANNOTATION`], [`NAMESPACE_ANNOTATION`] and
//!   [`UID_ANNOTATION`] naming the virtual source.
//!
//! The virtual key of a host object is read from these markers, never parsed
//! out of its name.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::VclusterName;

/// Label: the vcluster that owns this host object.
pub const OWNER_LABEL: &str = "vcluster.dev/owner";
/// Label: the virtual namespace of the source object.
pub const NAMESPACE_LABEL: &str = "vcluster.dev/namespace";
/// Annotation: the virtual name of the source object.
pub const NAME_ANNOTATION: &str = "vcluster.dev/name";
/// Annotation: the virtual namespace of the source object.
pub const NAMESPACE_ANNOTATION: &str = "vcluster.dev/namespace";
/// Annotation: the uid of the source object.
pub const UID_ANNOTATION: &str = "vcluster.dev/uid";
/// The prefix reserved for the syncer's own labels and annotations; tenants'
/// keys with it are not copied to the host.
pub const RESERVED_PREFIX: &str = "vcluster.dev/";

/// Where a host object came from in the virtual cluster.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VirtualKey {
    /// Virtual namespace (empty for cluster-scoped sources).
    pub namespace: String,
    /// Virtual name.
    pub name: String,
}

/// The ownership of a host object by one vcluster.
#[derive(Debug, Clone)]
pub struct Ownership<'a> {
    vc: &'a VclusterName,
}

impl<'a> Ownership<'a> {
    /// Ownership markers of vcluster `vc`.
    pub fn new(vc: &'a VclusterName) -> Self {
        Self { vc }
    }

    /// The label selector that finds the host objects this vcluster wrote
    /// for a virtual object (they carry the source's namespace label too;
    /// the syncer's own helpers, such as service-account token Secrets, carry
    /// only the owner label and stay out of the engines' caches).
    pub fn selector(&self) -> String {
        format!("{OWNER_LABEL}={},{NAMESPACE_LABEL}", self.vc)
    }

    /// Labels to set on the host object of `source` (added to the copied ones).
    pub fn labels(&self, source: &VirtualKey) -> BTreeMap<String, String> {
        BTreeMap::from([
            (OWNER_LABEL.to_owned(), self.vc.to_string()),
            (NAMESPACE_LABEL.to_owned(), source.namespace.clone()),
        ])
    }

    /// Annotations to set on the host object of `source` with uid `uid`.
    pub fn annotations(&self, source: &VirtualKey, uid: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (NAME_ANNOTATION.to_owned(), source.name.clone()),
            (NAMESPACE_ANNOTATION.to_owned(), source.namespace.clone()),
            (UID_ANNOTATION.to_owned(), uid.to_owned()),
        ])
    }

    /// True when the host object carries this vcluster's ownership label.
    pub fn owns(&self, host: &impl Marked) -> bool {
        host.label(OWNER_LABEL)
            .is_some_and(|v| v == self.vc.as_str())
    }

    /// The virtual source of an owned host object, from its annotations.
    /// `None` for objects this vcluster does not own or that lack the markers.
    pub fn virtual_key(&self, host: &impl Marked) -> Option<VirtualKey> {
        if !self.owns(host) {
            return None;
        }
        Some(VirtualKey {
            namespace: host.annotation(NAMESPACE_ANNOTATION)?.to_owned(),
            name: host.annotation(NAME_ANNOTATION)?.to_owned(),
        })
    }
}

/// The uid of the virtual object host object `host` was written for (its
/// [`UID_ANNOTATION`]); `None` without the marker.
pub fn source_uid(host: &impl Marked) -> Option<&str> {
    host.annotation(UID_ANNOTATION)
}

/// What labels and annotations are read from: an object's metadata, or the
/// part of a cached object kept parsed (which holds those under
/// [`RESERVED_PREFIX`] and a few more, see `sync::cache`).
pub trait Marked {
    /// The value of label `key`.
    fn label(&self, key: &str) -> Option<&str>;
    /// The value of annotation `key`.
    fn annotation(&self, key: &str) -> Option<&str>;
}

impl Marked for ObjectMeta {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels.as_ref()?.get(key).map(String::as_str)
    }

    fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }
}

/// Copies a tenant's labels or annotations, dropping keys under the reserved prefix.
pub fn copy_unreserved(from: Option<&BTreeMap<String, String>>) -> BTreeMap<String, String> {
    from.into_iter()
        .flatten()
        .filter(|(k, _)| !k.starts_with(RESERVED_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

impl std::fmt::Display for VirtualKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> ObjectMeta {
        let map = |kv: &[(&str, &str)]| {
            Some(
                kv.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            )
        };
        ObjectMeta {
            labels: map(labels),
            annotations: map(annotations),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn markers_round_trip_to_the_virtual_key() {
        let vc = VclusterName::new("vc1").unwrap();
        let own = Ownership::new(&vc);
        let key = VirtualKey {
            namespace: "team-a".into(),
            name: "web".into(),
        };
        let m = ObjectMeta {
            labels: Some(own.labels(&key)),
            annotations: Some(own.annotations(&key, "uid-1")),
            ..ObjectMeta::default()
        };
        assert!(own.owns(&m));
        assert_eq!(own.virtual_key(&m), Some(key));
        assert_eq!(
            own.selector(),
            "vcluster.dev/owner=vc1,vcluster.dev/namespace"
        );
    }

    #[test]
    fn foreign_and_unmarked_objects_have_no_key() {
        let vc = VclusterName::new("vc1").unwrap();
        let own = Ownership::new(&vc);
        let ann = [
            ("vcluster.dev/name", "web"),
            ("vcluster.dev/namespace", "a"),
        ];
        // Owned by another vcluster.
        assert_eq!(own.virtual_key(&meta(&[(OWNER_LABEL, "vc2")], &ann)), None);
        // No owner label at all (a foreign object with the same name).
        assert_eq!(own.virtual_key(&meta(&[], &ann)), None);
        // Owned but missing the source annotations.
        assert_eq!(own.virtual_key(&meta(&[(OWNER_LABEL, "vc1")], &[])), None);
    }

    #[test]
    fn reserved_keys_are_not_copied() {
        let from = BTreeMap::from([
            ("app".to_owned(), "web".to_owned()),
            (OWNER_LABEL.to_owned(), "spoofed".to_owned()),
        ]);
        let out = copy_unreserved(Some(&from));
        assert_eq!(out.len(), 1);
        assert_eq!(out["app"], "web");
        assert!(copy_unreserved(None).is_empty());
    }
}
