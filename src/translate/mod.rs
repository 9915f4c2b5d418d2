//! Translation between virtual objects and their host form. Every function
//! here is pure: no I/O, table- and property-tested.
//!
//! - [`names`]: host object names (`<name>-x-<namespace>-x-<vcluster>`,
//!   hashed when that is not a valid, unambiguous DNS label);
//! - [`markers`]: the labels and annotations that mark a host object as owned
//!   by a vcluster and name its virtual source;
//! - [`pod`], [`service`], [`ingress`], [`claim`], [`event`], [`certificate`]: the host form of each kind
//!   and the status that comes back up (the ingress policy lives in [`ingress`]).

pub mod certificate;
pub mod claim;
pub mod event;
pub mod ingress;
pub mod markers;
pub mod names;
pub mod pod;
pub mod service;

pub use markers::{Ownership, VirtualKey};
pub use names::{VclusterName, host_name, sha256_hex};

/// Why a virtual object is not synced: the reason and message of the Warning
/// event the tenant sees on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Event reason (CamelCase).
    pub reason: &'static str,
    /// Event message, naming the problem.
    pub message: String,
}

impl Refusal {
    /// A refusal.
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// A merge patch copying the host's load-balancer status (`host`) up over
/// the virtual one (`virt`), each given with whether it is empty; `None` when
/// they agree.
pub(crate) fn load_balancer_patch<T: PartialEq + serde::Serialize + Default>(
    virt: Option<(T, bool)>,
    host: Option<(T, bool)>,
) -> Option<serde_json::Value> {
    let empty = |x: &Option<(T, bool)>| x.as_ref().is_none_or(|(_, e)| *e);
    if empty(&virt) && empty(&host) {
        return None;
    }
    let (want, have) = (host.map(|x| x.0), virt.map(|x| x.0));
    if want == have {
        return None;
    }
    Some(serde_json::json!({"status": {"loadBalancer": want.unwrap_or_default()}}))
}
