//! The host's shared services, real: cert-manager's controllers (and its CRDs)
//! and traefik, as `make shared-bins` builds them into the upstream binaries'
//! cache (e2e/kube/build.sh --shared). A host admin runs them once for every
//! vcluster; here a suite starts them against its dev stack's host plane.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::json;
use vcluster::local::process::{Process, Tie, spawn};

use super::{DevStack, eventually, kubectl_ok};

/// Where cert-manager's ClusterIssuers keep their Secrets on the host.
pub const CERT_MANAGER_NS: &str = "cert-manager";

/// A shared-service binary of the cache, or a panic naming the make target.
pub fn shared_bin(name: &str) -> PathBuf {
    let p = vcluster::local::default_bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} missing: run `make shared-bins` (e2e/kube/build.sh --shared)",
        p.display()
    );
    p
}

/// cert-manager's CRDs of the pinned release on the host, Established.
pub fn install_cert_manager_crds(host_kubeconfig: &Path) {
    let crds = vcluster::local::default_bin_dir().join("cert-manager-crds");
    assert!(
        crds.is_dir(),
        "{} missing: run `make shared-bins`",
        crds.display()
    );
    let dir = crds.to_str().unwrap();
    kubectl_ok(
        host_kubeconfig,
        &["apply", "--server-side", "-f", dir],
        None,
    );
    kubectl_ok(
        host_kubeconfig,
        &[
            "wait",
            "--for=condition=Established",
            "crd/certificates.cert-manager.io",
            "crd/clusterissuers.cert-manager.io",
            "--timeout=60s",
        ],
        None,
    );
}

/// A shared service's process on the host, stopped when dropped.
pub struct HostService(pub Process);

impl HostService {
    /// Resident memory now (`VmRSS` of /proc), e.g. "61234 kB".
    pub fn rss(&self) -> String {
        rss_of(self.0.pid())
    }
}

impl Drop for HostService {
    fn drop(&mut self) {
        self.0.kill_now();
    }
}

/// `VmRSS` of process `pid`.
pub fn rss_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(|l| l.trim_start_matches("VmRSS:").trim().to_owned())
        })
        .unwrap_or_default()
}

/// cert-manager's controllers (ingress-shim, the certificate lifecycle, the
/// CA issuer) against `stack`'s host plane, with CRDs installed first.
pub fn start_cert_manager(stack: &DevStack) -> HostService {
    let hk = stack.host_kubeconfig();
    install_cert_manager_crds(&hk);
    let _ = super::kubectl(&hk, &["create", "namespace", CERT_MANAGER_NS], None);
    let log = stack.dir.path().join("logs").join("cert-manager.log");
    let args = vec![
        "--kubeconfig".to_owned(),
        hk.to_str().unwrap().to_owned(),
        "--cluster-resource-namespace".to_owned(),
        CERT_MANAGER_NS.to_owned(),
        "-v=2".to_owned(),
    ];
    let p = spawn(
        "cert-manager",
        &shared_bin("cert-manager-controller"),
        &args,
        &[],
        &log,
        Tie::ToParent,
    )
    .unwrap();
    HostService(p)
}

/// cluster-scoped cert-manager objects of `kind` (`plural`).
pub fn cert_manager_api(
    c: &kube::Client,
    ns: Option<&str>,
    kind: &str,
    plural: &str,
) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("cert-manager.io", "v1", kind);
    let ar = ApiResource::from_gvk_with_plural(&gvk, plural);
    match ns {
        Some(ns) => Api::namespaced_with(c.clone(), ns, &ar),
        None => Api::all_with(c.clone(), &ar),
    }
}

/// A CA the test makes, held by a host ClusterIssuer of type CA named
/// `name`; waits until cert-manager reports it Ready. Returns the CA's PEM.
pub async fn ca_cluster_issuer(h: &kube::Client, name: &str) -> String {
    let ca = vcluster::pki::Ca::generate(&format!("{name} test CA"), Duration::from_secs(86_400))
        .unwrap();
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": format!("{name}-ca")},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": ca.cert_pem(), "tls.key": ca.key_pem()}
    }))
    .unwrap();
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(h.clone(), CERT_MANAGER_NS)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let issuers = cert_manager_api(h, None, "ClusterIssuer", "clusterissuers");
    let issuer: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "cert-manager.io/v1", "kind": "ClusterIssuer",
        "metadata": {"name": name},
        "spec": {"ca": {"secretName": format!("{name}-ca")}}
    }))
    .unwrap();
    issuers
        .create(&PostParams::default(), &issuer)
        .await
        .unwrap();
    eventually(
        "the ClusterIssuer to be Ready",
        Duration::from_secs(60),
        || async {
            let i = issuers.get(name).await.map_err(|e| e.to_string())?;
            let ready = i.data["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            if ready {
                Ok(())
            } else {
                Err(i.data["status"].to_string())
            }
        },
    )
    .await;
    ca.cert_pem().to_owned()
}

/// The SANs of a PEM certificate (DNS names), sorted.
pub fn dns_sans(cert_pem: &[u8]) -> Vec<String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem).unwrap();
    let cert = pem.parse_x509().unwrap();
    let mut names: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// True when the first certificate of `cert_pem` is signed by `ca_pem`'s key.
pub fn signed_by(cert_pem: &[u8], ca_pem: &[u8]) -> bool {
    let (_, leaf) = x509_parser::pem::parse_x509_pem(cert_pem).unwrap();
    let (_, ca) = x509_parser::pem::parse_x509_pem(ca_pem).unwrap();
    let (leaf, ca) = (leaf.parse_x509().unwrap(), ca.parse_x509().unwrap());
    leaf.issuer() == ca.subject() && leaf.verify_signature(Some(ca.public_key())).is_ok()
}

/// The serial number of a PEM certificate, hex.
pub fn serial(cert_pem: &[u8]) -> String {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem).unwrap();
    pem.parse_x509().unwrap().raw_serial_as_string()
}

/// The real node's network namespace: `/proc/<holder>/ns/net` of `stack`.
pub fn node_netns(stack: &DevStack) -> String {
    let holder = stack
        .state
        .processes
        .iter()
        .find(|p| p.name == "node-namespaces")
        .expect("a real node (--real-nodes 1)")
        .pid;
    format!("/proc/{holder}/ns/net")
}

/// Where traefik serves HTTPS, inside the node's namespace (the node's address).
pub const TRAEFIK_HTTPS: &str = "10.246.0.2:443";
/// Its API (the routing table), inside the node's namespace.
pub const TRAEFIK_API: &str = "10.246.0.2:9000";

/// curl's `--resolve` value sending `https://<host>/` to traefik.
pub fn to_traefik(host: &str) -> String {
    format!(
        "{host}:443:{}",
        TRAEFIK_HTTPS.split(':').next().unwrap_or_default()
    )
}

/// traefik with its Kubernetes Ingress provider watching `stack`'s host
/// plane, in the real node's network namespace (so it reaches pod IPs): it
/// reaches the host API through the node's relay, as the kubelet does.
pub fn start_traefik(stack: &DevStack) -> HostService {
    use vcluster::local::node::{API_IP, API_PORT};
    let mut kc = kube::config::Kubeconfig::read_from(stack.host_kubeconfig()).unwrap();
    for c in &mut kc.clusters {
        let cluster = c.cluster.as_mut().unwrap();
        cluster.server = Some(format!("https://{API_IP}:{API_PORT}"));
        // The API server's certificate names `kubernetes`, not the relay.
        cluster.tls_server_name = Some("kubernetes".to_owned());
    }
    let kc_path = stack.dir.path().join("traefik.kubeconfig");
    std::fs::write(&kc_path, serde_yaml::to_string(&kc).unwrap()).unwrap();
    let log = stack.dir.path().join("logs").join("traefik.log");
    let traefik = shared_bin("traefik");
    let args: Vec<String> = [
        &format!("--net={}", node_netns(stack)),
        "--",
        traefik.to_str().unwrap(),
        "--global.checknewversion=false",
        "--global.sendanonymoususage=false",
        "--log.level=INFO",
        "--log.nocolor=true",
        &format!("--entrypoints.websecure.address={TRAEFIK_HTTPS}"),
        "--entrypoints.websecure.http.tls=true",
        &format!("--entrypoints.traefik.address={TRAEFIK_API}"),
        "--api.insecure=true",
        "--api.dashboard=false",
        "--providers.kubernetesingress=true",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let env = [("KUBECONFIG", kc_path.to_str().unwrap().to_owned())];
    let p = spawn(
        "traefik",
        Path::new("nsenter"),
        &args,
        &env,
        &log,
        Tie::ToParent,
    )
    .unwrap();
    HostService(p)
}

/// `curl` run in the node's network namespace with `args`; its output, or
/// stderr (and the body, for an HTTP error status) as the error.
pub fn curl_in_node(stack: &DevStack, args: &[&str]) -> Result<String, String> {
    curl_in_node_with(stack, &["--fail-with-body"], args)
}

/// [`curl_in_node`] taking any HTTP status as an answer (`-i` shows it).
pub fn curl_in_node_any_status(stack: &DevStack, args: &[&str]) -> Result<String, String> {
    curl_in_node_with(stack, &[], args)
}

fn curl_in_node_with(stack: &DevStack, flags: &[&str], args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", node_netns(stack)))
        .args(["--", "curl", "-sS", "--max-time", "5"])
        .args(flags)
        .args(args)
        .output()
        .unwrap();
    let (stdout, stderr) = super::text(&out);
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{stdout}{stderr}"))
    }
}
