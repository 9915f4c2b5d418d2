//! Policies the syncer enforces before anything reaches the host (pure).
//!
//! - [`pss`]: Pod Security Standards levels;
//! - [`service_types`]: the Service types a vcluster may create on the host;
//! - [`endpoints`]: the addresses tenant-written Endpoints and EndpointSlices
//!   may send host clients to;
//! - [`ingress_hosts`]: host names an ingress may claim on a shared
//!   controller (overlap with ingresses of others, first come first served);
//! - [`storage_classes`]: the host storage classes a tenant's claims get.

pub mod endpoints;
pub mod ingress_hosts;
pub mod pss;
pub mod service_types;
pub mod storage_classes;
