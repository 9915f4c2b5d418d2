//! vcluster: virtual Kubernetes clusters inside one host namespace.
//!
//! See `ARCHITECTURE.md` in the design notes for the module map. Modules that
//! exist today:
//! - [`api`]: building blocks for API calls (one error type, create-if-absent);
//! - [`translate`]: pure translation between virtual and host objects;
//! - [`sync`]: the generic sync engine and one rule file per kind;
//! - [`syncer`]: the syncer process (engines, virtual nodes, health);
//! - [`pki`]: certificate authorities and certificates (rcgen);
//! - [`kubeconfig`]: building kubeconfig files;
//! - [`local`]: the embedded default, real local control planes for
//!   development and tests;
//! - [`control_plane`]: the upstream control plane in the vcluster pod (the
//!   chart's `k8s` distro);
//! - [`proxy`]: the front door (TLS, authentication, impersonation, host
//!   redirects);
//! - [`discovery`]: the labels and names that find a vcluster's host objects;
//! - [`instances`]: vclusters seen from the host (list, connect, delete);
//! - [`cli`]: the `vcluster` command line.

pub mod api;
pub mod cli;
pub mod control_plane;
pub mod discovery;
pub mod instances;
pub mod kubeconfig;
pub mod local;
pub mod pki;
pub mod policy;
pub mod proxy;
pub mod sync;
pub mod syncer;
pub mod translate;

/// The field manager of every write the project makes.
pub const FIELD_MANAGER: &str = "vcluster";
