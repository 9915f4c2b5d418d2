//! vcluster: virtual Kubernetes clusters inside one host namespace.
//!
//! `docs/ARCHITECTURE.md` has the module map and how a kind is declared.
//! - [`api`]: building blocks for API calls (one error type, create-if-absent);
//! - [`translate`]: pure translation between virtual and host objects;
//! - [`policy`]: the Pod Security Standards evaluator;
//! - [`sync`]: the generic sync engine, one rule file per kind, and the
//!   loops beside them (virtual nodes, events, certificate mirrors);
//! - [`syncer`]: the syncer process (the registry of kinds, clients, health);
//! - [`pki`]: certificate authorities and certificates (rcgen);
//! - [`kubeconfig`]: building kubeconfig files;
//! - [`local`]: the embedded default, real local control planes for
//!   development and tests;
//! - [`control_plane`]: the upstream control plane in the vcluster pod (the
//!   chart's `k8s` distro);
//! - [`proxy`]: the front door (TLS, authentication, impersonation, host
//!   redirects);
//! - [`dns`]: the virtual cluster's DNS, served from the syncer's caches;
//! - [`sleep`]: sleep mode (activity from the front door, the state on the
//!   host Service, the pods held while asleep);
//! - [`discovery`]: the labels and names that find a vcluster's host objects;
//! - [`instances`]: vclusters seen from the host (list, connect, delete);
//! - [`cli`]: the `vcluster` command line.

pub mod api;
pub mod cli;
pub mod control_plane;
pub mod create;
pub mod discovery;
pub mod dns;
pub mod init;
pub mod instances;
pub mod kubeconfig;
pub mod local;
pub mod pki;
pub mod policy;
pub mod proxy;
pub mod sleep;
pub mod sync;
pub mod syncer;
pub mod translate;

/// The field manager of every write the project makes.
pub const FIELD_MANAGER: &str = "vcluster";
