//! The generic sync engine. One [`Engine`] per kind; each kind is a small
//! [`Rule`] file that says what its host form is and what comes back up,
//! and declares in its `register` function what it watches, which other
//! caches it reads and which changes of other kinds re-queue its keys
//! ([`assembly`]).
//!
//! For a kind, the engine
//! - watches the virtual API (all namespaces) and the host namespace (only
//!   objects this vcluster wrote for a virtual object), into compact caches
//!   ([`cache`]: metadata parsed, the rest compressed JSON, `managedFields`
//!   stripped, host copies slimmed by the rule); kube-runtime's watcher
//!   relists on expiry (410 Gone) and retries with a short backoff across
//!   API server restarts ([`outage`]: keys that failed during an outage are
//!   retried as soon as both API servers answer again);
//! - queues virtual keys in a [`queue::FairQueue`], fair across virtual
//!   namespaces, and reconciles them with bounded concurrency ([`Engine`]);
//! - reconciles level-triggered (`reconcile.rs`): desired = rule(virtual);
//!   written with server-side apply under one field manager only when its
//!   content hash differs (and unconditionally on each periodic resync,
//!   which reverts drift); status translated back onto the virtual status
//!   subresource;
//! - deletes owned host objects whose source is gone, and at start lists both
//!   sides and reconciles every key before reporting ready;
//! - never changes or deletes a host object without this vcluster's owner
//!   label: a name collision becomes a Warning Event on the virtual object.

pub mod addresses;
pub mod apiservice;
pub mod assembly;
pub mod cache;
pub mod certificates;
pub mod certs;
pub mod cidr;
pub mod claims;
pub mod config;
mod context;
pub mod endpoints;
mod engine;
mod error;
pub mod events;
pub mod feed;
pub mod ingress_hosts;
pub mod ingresses;
pub mod lean;
pub mod metrics;
pub mod nodes;
mod options;
pub mod outage;
pub mod pods;
pub mod queue;
mod reconcile;
pub mod services;
pub mod storage_classes;
#[cfg(test)]
pub(crate) mod tests;
pub mod volumes;

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use k8s_openapi::NamespaceResourceScope;
use kube::Resource;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use assembly::{Assembly, KindSpec, Settings};
pub use context::{Context, EVENT_NOTE_MAX, Names, truncate_note};
pub use engine::Engine;
pub use error::{SyncError, delete_exact, err_for};
pub(crate) use error::{api_err, lock, rejected};
pub use markers::copy_unreserved;
pub use options::{EngineOptions, Side, streams_lists};

use crate::translate::markers;

/// Annotation on host objects: hash of the desired content last applied.
pub const HASH_ANNOTATION: &str = "vcluster.dev/content-hash";

/// What a rule decides for one virtual object.
#[derive(Debug)]
pub enum Decision<H> {
    /// This is the desired host object (name, namespace and markers are set
    /// by the engine).
    Sync(H),
    /// The object does not belong on the host: an owned host copy is
    /// deleted, with this grace period if given.
    Remove {
        /// Grace period for the host deletion.
        grace_seconds: Option<i64>,
    },
    /// The virtual object is finished (its host copy is gone for good):
    /// delete it with no grace, as a kubelet does for a pod it has stopped.
    DeleteVirtual,
    /// The object is refused: a Warning event with this reason and message,
    /// and nothing on the host.
    Reject(&'static str, String),
    /// Not yet: something it needs is missing; try again shortly.
    Wait(String),
    /// The object stays virtual for now (the vcluster sleeps): the virtual
    /// status gets this merge patch first, if any, then an owned host copy
    /// is deleted. Nothing else of the virtual object changes.
    Hold(Option<serde_json::Value>),
}

impl<H> Decision<H> {
    /// [`Decision::Remove`] with the default grace period.
    pub const REMOVE: Self = Decision::Remove {
        grace_seconds: None,
    };
}

/// Bounds of a kind's object types: the namespaced API types the syncer
/// caches and writes.
pub trait Object:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

/// Every type an engine or a cache of the syncer holds.
macro_rules! objects {
    ($($t:ty),* $(,)?) => { $(impl Object for $t {})* };
}
objects!(
    k8s_openapi::api::core::v1::Pod,
    k8s_openapi::api::core::v1::ConfigMap,
    k8s_openapi::api::core::v1::Secret,
    k8s_openapi::api::core::v1::Service,
    k8s_openapi::api::core::v1::Endpoints,
    k8s_openapi::api::discovery::v1::EndpointSlice,
    k8s_openapi::api::networking::v1::Ingress,
    k8s_openapi::api::core::v1::PersistentVolumeClaim,
    crate::translate::certificate::Certificate,
);

/// The rules of one kind.
pub trait Rule: Send + Sync + 'static {
    /// The virtual type.
    type V: Object;
    /// The host type.
    type H: Object;
    /// Kind name for logs and metrics.
    const KIND: &'static str;

    /// The host form of a virtual object, given its current host copy. Pure:
    /// it reads only `names`, the object, and the caches the rule holds.
    fn decide(&self, names: &Names, v: &Self::V, h: Option<&Self::H>) -> Decision<Self::H>;

    /// Called after the host copy was applied or found up to date, with it;
    /// `Ok(Some(d))` asks for another reconcile after `d`.
    fn after_sync(
        &self,
        _ctx: &Context,
        _v: &Self::V,
        _h: &Self::H,
    ) -> impl Future<Output = Result<Option<Duration>, SyncError>> + Send {
        async { Ok(None) }
    }

    /// Runs at the same time as the write of the host copy (`writing`: one
    /// is under way; `h`: the cached host copy), for work [`Rule::after_sync`]
    /// needs that does not depend on the write's result.
    fn alongside_write(
        &self,
        _ctx: &Context,
        _v: &Self::V,
        _h: Option<&Self::H>,
        _writing: bool,
    ) -> impl Future<Output = Result<(), SyncError>> + Send {
        async { Ok(()) }
    }

    /// A merge patch for the virtual status subresource, when the host object
    /// reports something the virtual one does not show yet.
    fn status_up(&self, _v: &Self::V, _h: &Self::H) -> Option<serde_json::Value> {
        None
    }

    /// The host refused `desired` with `message` (400/403/404/422): another
    /// form to apply instead, if the rule has one (for example without an
    /// address the host has already given to someone else).
    fn on_rejected(
        &self,
        _desired: &Self::H,
        _h: Option<&Self::H>,
        _message: &str,
    ) -> Option<Self::H> {
        None
    }

    /// Drops what the rule and its readers never use from a cached host
    /// object (memory: one cached copy per synced object).
    fn slim_host(_h: &mut Self::H) {}
}
