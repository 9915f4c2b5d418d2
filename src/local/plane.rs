//! One control plane of the local stack: its PKI, files and process arguments.
//!
//! The host plane runs what a real cluster runs (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler; KWOK is added by the stack). The
//! virtual plane runs what the k3s server in the vcluster pod runs: an API
//! server and a controller-manager with the node-bound controllers off, and no
//! scheduler (the host schedules the synced pods).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::kubeconfig;
use crate::pki::{Ca, CertSpec, ServiceAccountKeys};

use super::{LocalError, write_private, write_public};

/// Certificates live a year: a dev stack is recreated long before then.
const CERT_VALIDITY: Duration = Duration::from_secs(365 * 86_400);

/// The host's service CIDR, which the virtual plane shares.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";

/// What a plane's kube-apiserver keeps its objects in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Datastore {
    /// etcd (what kubeadm-style clusters run).
    #[default]
    Etcd,
    /// kine on SQLite (what k3s clusters run): the etcd API over SQL.
    Kine,
}

impl Datastore {
    /// The binary that serves it.
    pub fn binary(self) -> &'static str {
        match self {
            Self::Etcd => "etcd",
            Self::Kine => "kine",
        }
    }

    /// Its arguments for `plane`.
    pub fn args(self) -> fn(&Plane) -> Vec<String> {
        match self {
            Self::Etcd => Plane::etcd_args,
            Self::Kine => Plane::kine_args,
        }
    }
}

impl std::str::FromStr for Datastore {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "etcd" => Ok(Self::Etcd),
            "kine" => Ok(Self::Kine),
            _ => Err(format!("unknown datastore {s:?}: use etcd or kine")),
        }
    }
}

/// The controller-manager controllers disabled on the virtual plane: those that
/// act on real nodes, cloud resources or volume attachment. The same set is
/// disabled in the k3s configuration.
pub const VIRTUAL_DISABLED_CONTROLLERS: &[&str] = &[
    "nodeipam",
    "nodelifecycle",
    "taint-eviction-controller",
    "cloud-node-lifecycle",
    "route",
    "service",
    "attachdetach",
    "persistentvolume-binder",
    "persistentvolume-expander",
    "ttl",
];

/// Which plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The host cluster (runs the pods, through KWOK).
    Host,
    /// The virtual cluster's own API.
    Virtual,
}

impl Role {
    /// Short name used for files and processes.
    pub fn name(self) -> &'static str {
        match self {
            Role::Host => "host",
            Role::Virtual => "vcluster",
        }
    }

    /// The service CIDR of this plane: the host's for both, since the
    /// virtual API hands out the host's cluster IPs (ClusterIP parity).
    pub fn service_cidr(self) -> &'static str {
        SERVICE_CIDR
    }

    /// The first address of the service CIDR (the `kubernetes` Service).
    fn api_service_ip(self) -> &'static str {
        "10.96.0.1"
    }

    /// The `--controllers` value for kube-controller-manager.
    pub fn controllers(self) -> String {
        match self {
            Role::Host => "*,-nodeipam".to_owned(),
            Role::Virtual => std::iter::once("*".to_owned())
                .chain(VIRTUAL_DISABLED_CONTROLLERS.iter().map(|c| format!("-{c}")))
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

/// Loopback ports of one plane.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Ports {
    /// etcd client port.
    pub etcd_client: u16,
    /// etcd peer port.
    pub etcd_peer: u16,
    /// kube-apiserver secure port.
    pub apiserver: u16,
    /// kube-controller-manager secure (health) port.
    pub controller_manager: u16,
    /// kube-scheduler secure (health) port, host plane only.
    pub scheduler: Option<u16>,
}

/// The files of a plane, written under `<state>/<plane>/`.
#[derive(Debug)]
pub struct Plane {
    /// Host or virtual.
    pub role: Role,
    /// Its ports.
    pub ports: Ports,
    /// `<state>/<plane>`.
    pub dir: PathBuf,
    /// The admin kubeconfig for users of this plane.
    pub admin_kubeconfig: String,
}

fn sans(role: Role) -> Vec<String> {
    [
        "127.0.0.1",
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        role.api_service_ip(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// Writes the plane's CAs (cluster and front-proxy), the API server's
/// serving certificate, the service-account keys and, on the host, the
/// kubelet-API certificates into `pki`; returns the cluster CA.
fn write_pki(role: Role, pki: &Path) -> Result<Ca, LocalError> {
    let ca = Ca::generate(&format!("vcluster-dev-{}-ca", role.name()), CERT_VALIDITY)?;
    let serving = ca.issue(&CertSpec::server(
        "kube-apiserver",
        &sans(role),
        CERT_VALIDITY,
    ))?;
    let sa = ServiceAccountKeys::generate()?;
    write_public(&pki.join("ca.crt"), ca.cert_pem())?;
    write_private(&pki.join("ca.key"), ca.key_pem())?;
    write_public(&pki.join("apiserver.crt"), &serving.cert_pem)?;
    write_private(&pki.join("apiserver.key"), &serving.key_pem)?;
    write_private(&pki.join("sa.key"), &sa.private_pem)?;
    write_public(&pki.join("sa.pub"), &sa.public_pem)?;
    // The front-proxy CA: the API server accepts identities asserted in
    // X-Remote-* headers by holders of its client certificate (aggregated
    // APIs), and components read it to authenticate delegated requests.
    let front_ca = Ca::generate(
        &format!("vcluster-dev-{}-front-proxy-ca", role.name()),
        CERT_VALIDITY,
    )?;
    let front_client =
        front_ca.issue(&CertSpec::client("front-proxy-client", None, CERT_VALIDITY))?;
    write_public(&pki.join("front-proxy-ca.crt"), front_ca.cert_pem())?;
    write_public(&pki.join("front-proxy-client.crt"), &front_client.cert_pem)?;
    write_private(&pki.join("front-proxy-client.key"), &front_client.key_pem)?;
    if role == Role::Host {
        write_kubelet_pki(&ca, pki)?;
    }
    Ok(ca)
}

/// The kubelet API that KWOK serves for the fake nodes, and the API
/// server's client certificate for it (logs, exec, port-forward).
fn write_kubelet_pki(ca: &Ca, pki: &Path) -> Result<(), LocalError> {
    let kwok = ca.issue(&CertSpec::server(
        "kwok",
        &["127.0.0.1".to_owned()],
        CERT_VALIDITY,
    ))?;
    write_public(&pki.join("kwok.crt"), &kwok.cert_pem)?;
    write_private(&pki.join("kwok.key"), &kwok.key_pem)?;
    let kubelet_client = ca.issue(&CertSpec::client(
        "kube-apiserver-kubelet-client",
        None,
        CERT_VALIDITY,
    ))?;
    write_public(
        &pki.join("apiserver-kubelet-client.crt"),
        &kubelet_client.cert_pem,
    )?;
    write_private(
        &pki.join("apiserver-kubelet-client.key"),
        &kubelet_client.key_pem,
    )?;
    Ok(())
}

impl Plane {
    /// Generates the plane's PKI and kubeconfigs and writes them under `state_dir`.
    pub fn prepare(role: Role, ports: Ports, state_dir: &Path) -> Result<Self, LocalError> {
        let pki = state_dir.join(role.name()).join("pki");
        std::fs::create_dir_all(&pki).map_err(|source| LocalError::Io {
            what: format!("create {}", pki.display()),
            source,
        })?;
        let ca = write_pki(role, &pki)?;
        let server = format!("https://127.0.0.1:{}", ports.apiserver);
        let context = format!("vcluster-dev-{}", role.name());
        let mut plane = Self::layout(role, ports, state_dir);
        plane.admin_kubeconfig = plane.client_kubeconfig(
            &ca,
            &context,
            &server,
            "vcluster-dev-admin",
            Some("system:masters"),
        )?;
        for (file, user, group) in [
            (
                "controller-manager.kubeconfig",
                "system:kube-controller-manager",
                None,
            ),
            ("scheduler.kubeconfig", "system:kube-scheduler", None),
            ("kwok.kubeconfig", "kwok-controller", Some("system:masters")),
        ] {
            let yaml = plane.client_kubeconfig(&ca, &context, &server, user, group)?;
            write_private(&plane.dir.join(file), &yaml)?;
        }
        Ok(plane)
    }

    /// The plane's paths and ports, without generating anything (for a plane
    /// whose files already exist).
    pub fn layout(role: Role, ports: Ports, state_dir: &Path) -> Self {
        Self {
            role,
            ports,
            dir: state_dir.join(role.name()),
            admin_kubeconfig: String::new(),
        }
    }

    fn client_kubeconfig(
        &self,
        ca: &Ca,
        context: &str,
        server: &str,
        user: &str,
        group: Option<&str>,
    ) -> Result<String, LocalError> {
        let cert = ca.issue(&CertSpec::client(user, group, CERT_VALIDITY))?;
        let cfg = kubeconfig::client_cert(
            context,
            server,
            ca.cert_pem(),
            &cert.cert_pem,
            &cert.key_pem,
        );
        Ok(kubeconfig::to_yaml(&cfg)?)
    }

    fn path(&self, rel: &str) -> String {
        self.dir.join(rel).display().to_string()
    }

    /// kine arguments: the etcd API on the plane's etcd client port (plain
    /// HTTP on loopback), SQLite under the plane's directory, no metrics
    /// listener (kine's default is every address's :8080).
    pub fn kine_args(&self) -> Vec<String> {
        vec![
            format!("--listen-address=127.0.0.1:{}", self.ports.etcd_client),
            format!(
                "--endpoint=sqlite://{}?_journal=WAL&cache=shared&_busy_timeout=30000",
                self.path("kine/state.db")
            ),
            "--metrics-bind-address=0".to_owned(),
        ]
    }

    /// etcd arguments: plain HTTP on loopback, one member, data under the plane's directory.
    pub fn etcd_args(&self) -> Vec<String> {
        let client = format!("http://127.0.0.1:{}", self.ports.etcd_client);
        let peer = format!("http://127.0.0.1:{}", self.ports.etcd_peer);
        let name = self.role.name();
        vec![
            format!("--name={name}"),
            format!("--data-dir={}", self.path("etcd")),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster={name}={peer}"),
            // A development store that is thrown away on `dev down`: skip fsync.
            "--unsafe-no-fsync=true".to_owned(),
            "--log-level=warn".to_owned(),
        ]
    }

    /// kube-apiserver arguments.
    pub fn apiserver_args(&self) -> Vec<String> {
        let authz = match self.role {
            Role::Host => "Node,RBAC",
            Role::Virtual => "RBAC",
        };
        let mut args = vec![
            format!("--etcd-servers=http://127.0.0.1:{}", self.ports.etcd_client),
            "--bind-address=127.0.0.1".to_owned(),
            "--advertise-address=127.0.0.1".to_owned(),
            format!("--secure-port={}", self.ports.apiserver),
            format!("--tls-cert-file={}", self.path("pki/apiserver.crt")),
            format!("--tls-private-key-file={}", self.path("pki/apiserver.key")),
            format!("--client-ca-file={}", self.path("pki/ca.crt")),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_owned(),
            format!("--service-account-key-file={}", self.path("pki/sa.pub")),
            format!(
                "--service-account-signing-key-file={}",
                self.path("pki/sa.key")
            ),
            format!("--service-cluster-ip-range={}", self.role.service_cidr()),
            format!("--authorization-mode={authz}"),
            "--allow-privileged=true".to_owned(),
            // The advertised address is loopback, which Endpoints may not hold:
            // leave the `kubernetes` Service's endpoints unmanaged.
            "--endpoint-reconciler-type=none".to_owned(),
            "--profiling=false".to_owned(),
            format!(
                "--requestheader-client-ca-file={}",
                self.path("pki/front-proxy-ca.crt")
            ),
            "--requestheader-allowed-names=front-proxy-client".to_owned(),
            "--requestheader-username-headers=X-Remote-User".to_owned(),
            "--requestheader-group-headers=X-Remote-Group".to_owned(),
            "--requestheader-extra-headers-prefix=X-Remote-Extra-".to_owned(),
            format!(
                "--proxy-client-cert-file={}",
                self.path("pki/front-proxy-client.crt")
            ),
            format!(
                "--proxy-client-key-file={}",
                self.path("pki/front-proxy-client.key")
            ),
        ];
        if self.role == Role::Host {
            args.extend([
                format!(
                    "--kubelet-certificate-authority={}",
                    self.path("pki/ca.crt")
                ),
                format!(
                    "--kubelet-client-certificate={}",
                    self.path("pki/apiserver-kubelet-client.crt")
                ),
                format!(
                    "--kubelet-client-key={}",
                    self.path("pki/apiserver-kubelet-client.key")
                ),
                "--kubelet-preferred-address-types=InternalIP".to_owned(),
            ]);
        }
        args
    }

    /// kube-controller-manager arguments.
    pub fn controller_manager_args(&self) -> Vec<String> {
        let kubeconfig = self.path("controller-manager.kubeconfig");
        vec![
            format!("--kubeconfig={kubeconfig}"),
            format!("--authentication-kubeconfig={kubeconfig}"),
            format!("--authorization-kubeconfig={kubeconfig}"),
            "--bind-address=127.0.0.1".to_owned(),
            format!("--secure-port={}", self.ports.controller_manager),
            format!("--cert-dir={}", self.path("controller-manager-certs")),
            "--leader-elect=false".to_owned(),
            format!("--controllers={}", self.role.controllers()),
            "--use-service-account-credentials=true".to_owned(),
            format!(
                "--service-account-private-key-file={}",
                self.path("pki/sa.key")
            ),
            format!("--root-ca-file={}", self.path("pki/ca.crt")),
            format!("--cluster-signing-cert-file={}", self.path("pki/ca.crt")),
            format!("--cluster-signing-key-file={}", self.path("pki/ca.key")),
            "--profiling=false".to_owned(),
        ]
    }

    /// kube-scheduler arguments (host plane).
    pub fn scheduler_args(&self, port: u16) -> Vec<String> {
        let kubeconfig = self.path("scheduler.kubeconfig");
        vec![
            format!("--kubeconfig={kubeconfig}"),
            format!("--authentication-kubeconfig={kubeconfig}"),
            format!("--authorization-kubeconfig={kubeconfig}"),
            "--bind-address=127.0.0.1".to_owned(),
            format!("--secure-port={port}"),
            "--leader-elect=false".to_owned(),
            "--profiling=false".to_owned(),
        ]
    }

    /// Path of the kwok client kubeconfig.
    pub fn kwok_kubeconfig(&self) -> String {
        self.path("kwok.kubeconfig")
    }

    /// KWOK's serving certificate and key (host plane).
    pub fn kwok_tls(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("pki/kwok.crt"), self.dir.join("pki/kwok.key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_controllers_disable_node_bound_ones() {
        let c = Role::Virtual.controllers();
        assert!(c.starts_with("*,"), "{c}");
        for disabled in ["-nodeipam", "-nodelifecycle", "-attachdetach", "-ttl"] {
            assert!(
                c.split(',').any(|x| x == disabled),
                "{disabled} missing from {c}"
            );
        }
        assert_eq!(Role::Host.controllers(), "*,-nodeipam");
    }

    #[test]
    fn planes_share_the_host_service_range() {
        // ClusterIP parity: the virtual API hands out the host's addresses.
        assert_eq!(Role::Host.service_cidr(), Role::Virtual.service_cidr());
    }
}
