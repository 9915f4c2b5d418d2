//! The upstream control plane of the chart's `k8s` distro, inside the
//! vcluster pod (`vcluster control-plane-pki`): the same virtual plane as the
//! dev stack (the same flags, from [`crate::local`]'s plane definition), on
//! fixed loopback ports, with etcd syncing to disk.

use std::path::{Path, PathBuf};

use crate::local::{LocalError, Plane, Ports, Role, write_private};

/// The processes and files of the pod's control plane.
#[derive(Debug, Clone)]
pub struct PodControlPlane {
    /// etcd arguments.
    pub etcd: Vec<String>,
    /// kube-apiserver arguments.
    pub apiserver: Vec<String>,
    /// kube-controller-manager arguments.
    pub controller_manager: Vec<String>,
    /// The admin kubeconfig the syncer uses.
    pub admin_kubeconfig: PathBuf,
    /// The client CA certificate and key (PEM).
    pub client_ca: (PathBuf, PathBuf),
}

/// Ports of [`PodControlPlane`].
pub const POD_PORTS: (u16, u16, u16, u16) = (2379, 2380, 6443, 10257);

/// The files and arguments of the pod's control plane under `dir`;
/// generates the PKI and kubeconfigs when `generate` and they are missing
/// (existing ones are kept: a restart keeps the cluster's identity).
pub fn pod_control_plane(dir: &Path, generate: bool) -> Result<PodControlPlane, LocalError> {
    let (etcd_client, etcd_peer, apiserver, controller_manager) = POD_PORTS;
    let ports = Ports {
        etcd_client,
        etcd_peer,
        apiserver,
        controller_manager,
        scheduler: None,
    };
    let layout = Plane::layout(Role::Virtual, ports, dir);
    let admin_kubeconfig = layout.dir.join("admin.kubeconfig");
    let pki = layout.dir.join("pki");
    let plane = if generate && !pki.join("ca.crt").exists() {
        let p = Plane::prepare(Role::Virtual, ports, dir)?;
        write_private(&admin_kubeconfig, &p.admin_kubeconfig)?;
        p
    } else {
        layout
    };
    Ok(PodControlPlane {
        etcd: plane
            .etcd_args()
            .into_iter()
            .filter(|a| a != "--unsafe-no-fsync=true")
            .collect(),
        apiserver: plane.apiserver_args(),
        controller_manager: plane.controller_manager_args(),
        admin_kubeconfig,
        client_ca: (pki.join("ca.crt"), pki.join("ca.key")),
    })
}
