//! Translation between virtual objects and their host form. Every function
//! here is pure: no I/O, table- and property-tested.
//!
//! - [`names`]: host object names (`<name>-x-<namespace>-x-<vcluster>`,
//!   hashed when that is not a valid, unambiguous DNS label);
//! - [`markers`]: the labels and annotations that mark a host object as owned
//!   by a vcluster and name its virtual source.

pub mod event;
pub mod markers;
pub mod names;
pub mod pod;

pub use markers::{Ownership, VirtualKey};
pub use names::{VclusterName, host_name};
