//! Translation between virtual objects and their host form. Every function
//! here is pure: no I/O, table- and property-tested.
//!
//! - [`names`]: host object names (`<name>-x-<namespace>-x-<vcluster>`,
//!   hashed when that is not a valid, unambiguous DNS label);
//! - [`markers`]: the labels and annotations that mark a host object as owned
//!   by a vcluster and name its virtual source.

//! - [`pod`], [`service`], [`ingress`], [`event`]: the host form of each kind.

pub mod event;
pub mod ingress;
pub mod markers;
pub mod names;
pub mod pod;
pub mod service;

pub use markers::{Ownership, VirtualKey};
pub use names::{VclusterName, host_name};

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
