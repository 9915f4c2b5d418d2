//! Which host StorageClass a tenant's claim gets (`--storage-class-map`,
//! `--allowed-storage-classes`). A class is cluster-wide host policy (its
//! disks, its cost): the platform team can rename a tenant's class to a host
//! one (`fast=ssd-retain`) and restrict the host classes claims may use. A
//! claim in a class that is not allowed is not created on the host and gets
//! a Warning event.
//!
//! A claim without a class (`storageClassName` unset) gets the host's
//! default, as it would on the host; an empty class (`""`) asks for a
//! pre-provisioned volume without a class and passes unchanged.

use std::collections::{BTreeMap, BTreeSet};

use crate::translate::Refusal;

/// The storage class policy of a vcluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageClassPolicy {
    /// Virtual class name → host class name.
    map: BTreeMap<String, String>,
    /// The host classes claims may use; `None`: any.
    allowed: Option<BTreeSet<String>>,
}

impl StorageClassPolicy {
    /// A policy from `virt=host` pairs and the allowed host classes (empty:
    /// any); `Err` names a malformed pair.
    pub fn new<S: AsRef<str>>(map: &[S], allowed: &[S]) -> Result<Self, String> {
        let mut pairs = BTreeMap::new();
        for item in map.iter().map(AsRef::as_ref).map(str::trim) {
            if item.is_empty() {
                continue;
            }
            let (virt, host) = item
                .split_once('=')
                .map(|(v, h)| (v.trim(), h.trim()))
                .filter(|(v, h)| !v.is_empty() && !h.is_empty())
                .ok_or_else(|| {
                    format!("--storage-class-map: {item:?} is not of the form virtual=host")
                })?;
            pairs.insert(virt.to_owned(), host.to_owned());
        }
        let allowed: BTreeSet<String> = allowed
            .iter()
            .map(|s| s.as_ref().trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        Ok(Self {
            map: pairs,
            allowed: (!allowed.is_empty()).then_some(allowed),
        })
    }

    /// True when a mapping names virtual class `name` (a tenant's own class
    /// of that name stands for a host class).
    pub fn maps(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// The host class for a claim in virtual class `class` (`None`: the
    /// host's default), or the refusal the tenant sees.
    pub fn host_class(&self, class: Option<&str>) -> Result<Option<String>, Refusal> {
        let Some(class) = class else { return Ok(None) };
        if class.is_empty() {
            return Ok(Some(String::new()));
        }
        let host = self.map.get(class).map_or(class, String::as_str);
        match &self.allowed {
            Some(allowed) if !allowed.contains(host) => Err(Refusal::new(
                "StorageClassNotAllowed",
                format!(
                    "storage class {host:?} is not allowed in this virtual cluster (allowed: {}); the claim is not created on the host",
                    allowed.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            )),
            _ => Ok(Some(host.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_mapped_then_checked() {
        let p =
            StorageClassPolicy::new(&["fast=ssd", " slow = hdd "], &["ssd", "standard"]).unwrap();
        assert_eq!(p.host_class(Some("fast")), Ok(Some("ssd".into())));
        assert_eq!(p.host_class(Some("standard")), Ok(Some("standard".into())));
        assert_eq!(p.host_class(None), Ok(None));
        assert_eq!(p.host_class(Some("")), Ok(Some(String::new())));
        // Mapped to a class that is not allowed, or not allowed itself.
        for refused in ["slow", "gold"] {
            let r = p.host_class(Some(refused)).unwrap_err();
            assert_eq!(r.reason, "StorageClassNotAllowed");
            assert!(
                r.message.contains("allowed: ssd, standard"),
                "{}",
                r.message
            );
        }
        assert!(p.maps("fast") && !p.maps("ssd"));
    }

    #[test]
    fn without_a_list_every_class_passes_and_bad_pairs_are_named() {
        let p = StorageClassPolicy::new::<&str>(&[], &[]).unwrap();
        assert_eq!(p.host_class(Some("gold")), Ok(Some("gold".into())));
        let err = StorageClassPolicy::new(&["fast"], &[]).unwrap_err();
        assert!(
            err.contains("\"fast\" is not of the form virtual=host"),
            "{err}"
        );
        assert!(StorageClassPolicy::new(&["=ssd"], &[]).is_err());
    }
}
