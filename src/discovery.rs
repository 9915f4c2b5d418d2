//! The discovery contract: how `vcluster list`, `connect` and `delete` find a
//! vcluster's own host objects. The syncer, the dev stack and the Helm chart
//! all follow it (README, "Discovery contract").
//!
//! - every object that makes up vcluster `<name>` (its pod, Service, Secrets)
//!   carries [`INSTANCE_LABEL`]`=<name>` and a [`COMPONENT_LABEL`];
//! - the pod running the syncer has component [`COMPONENT_CONTROL_PLANE`] and
//!   serves the front door on [`FRONT_DOOR_PORT`];
//! - Secret `vc-<name>` (component [`COMPONENT_KUBECONFIG`]) holds an admin
//!   kubeconfig under key [`KUBECONFIG_KEY`];
//! - Secret `vc-<name>-serving-ca` (component [`COMPONENT_SERVING_CA`]) holds
//!   the front door's serving CA;
//! - objects synced from the virtual cluster carry
//!   [`crate::translate::markers::OWNER_LABEL`]`=<name>` instead.

use std::collections::BTreeMap;

/// Label: the vcluster an infrastructure object belongs to.
pub const INSTANCE_LABEL: &str = "vcluster.dev/instance";
/// Label: what the object is for.
pub const COMPONENT_LABEL: &str = "vcluster.dev/component";
/// Component of the pod that runs the control plane and the syncer.
pub const COMPONENT_CONTROL_PLANE: &str = "control-plane";
/// Component of the `vc-<name>` kubeconfig Secret.
pub const COMPONENT_KUBECONFIG: &str = "kubeconfig";
/// Component of the serving-CA Secret.
pub const COMPONENT_SERVING_CA: &str = "serving-ca";
/// Key of the kubeconfig in the `vc-<name>` Secret.
pub const KUBECONFIG_KEY: &str = "config";
/// The port the control-plane pod serves the front door on.
pub const FRONT_DOOR_PORT: u16 = 8443;
/// The port the control-plane pod serves the sleep mode's waking page on
/// (the chart's `wake` port).
pub const WAKE_PORT: u16 = 8081;

/// Port of the syncer's DNS server in the vcluster pod.
pub const DNS_PORT: u16 = 1053;

/// Name of the host Service sending port 53 to the DNS server of vcluster `name`.
pub fn dns_service(name: &str) -> String {
    format!("{name}-dns")
}

/// Name of the admin kubeconfig Secret of vcluster `name`.
pub fn kubeconfig_secret(name: &str) -> String {
    format!("vc-{name}")
}

/// Name of the serving-CA Secret of vcluster `name`.
pub fn serving_ca_secret(name: &str) -> String {
    format!("vc-{name}-serving-ca")
}

/// The labels of a vcluster's own object.
pub fn labels(name: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (INSTANCE_LABEL.to_owned(), name.to_owned()),
        (COMPONENT_LABEL.to_owned(), component.to_owned()),
    ])
}

/// Label selector for every own object of vcluster `name`.
pub fn instance_selector(name: &str) -> String {
    format!("{INSTANCE_LABEL}={name}")
}

/// Label selector for the control-plane pod(s) of vcluster `name`.
pub fn control_plane_selector(name: &str) -> String {
    format!("{INSTANCE_LABEL}={name},{COMPONENT_LABEL}={COMPONENT_CONTROL_PLANE}")
}
