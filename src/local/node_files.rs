//! The real node's files: the namespace holder's script, containerd's,
//! the CNI bridge's, the kubelet's and kube-proxy's configuration, and the
//! node's certificates (signed by the host plane's CA).

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use super::node::{API_IP, API_PORT, KUBELET_TUNABLES, NODE_IP, NODE_NAME, PAUSE_IMAGE, POD_CIDR};
use super::plane::Plane;
use super::{LocalError, io_err, write_private, write_public};
use crate::pki::{Ca, CertSpec};

/// The holder's script: mounts, masked tunables, the namespace's network.
pub(super) fn holder_script(kwok_pod_cidr: &str) -> String {
    let mut s = String::from(
        "set -e\n\
         for d in /run /var/lib /var/log; do mount -t tmpfs -o mode=755 vcluster-node $d; done\n\
         mkdir -p /run/vcluster-node\n",
    );
    for (key, want) in KUBELET_TUNABLES {
        let file = format!("/run/vcluster-node/{}", key.replace('/', "_"));
        s.push_str(&format!(
            "if [ \"$(cat /proc/sys/{key})\" != {want} ]; then echo {want} > {file}; mount --bind {file} /proc/sys/{key}; fi\n"
        ));
    }
    s.push_str(&format!(
        "ip link set lo up\n\
         ip link add vcn0 type veth peer name vcn1\n\
         ip addr add {NODE_IP}/24 dev vcn0\n\
         ip addr add {API_IP}/24 dev vcn1\n\
         ip link set vcn0 up\n\
         ip link set vcn1 up\n\
         ip route add unreachable default\n\
         ip route add local {kwok_pod_cidr} dev lo\n\
         echo 1 > /proc/sys/net/ipv4/ip_forward\n\
         if [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables; fi\n\
         touch /run/vcluster-node/ready\n\
         exec sleep infinity\n"
    ));
    s
}

pub(super) fn containerd_config(dir: &Path) -> String {
    let d = |rel: &str| dir.join(rel).display().to_string();
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # These VMs lack CAP_SYS_RESOURCE: without this, runc fails to lower the
  # sandbox's oom_score_adj and every sandbox fails to start.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "/usr/sbin/runc"
        Root = "{runc}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
"#,
        root = d("containerd/root"),
        state = d("containerd/state"),
        sock = d("containerd/containerd.sock"),
        runc = d("containerd/runc"),
        cni = d("cni/net.d"),
    )
}

pub(super) fn cni_config(dir: &Path) -> String {
    json!({
        "cniVersion": "1.0.0",
        "name": "vcluster-node",
        "plugins": [
            {"type": "bridge", "bridge": "vcbr0", "isGateway": true, "hairpinMode": true,
             "ipMasq": false,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR}]],
                      "routes": [{"dst": "0.0.0.0/0"}],
                      "dataDir": dir.join("cni/ipam").display().to_string()}},
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    })
    .to_string()
}

pub(super) fn kubelet_config(dir: &Path, host_ca: &Path, cgroup_root: &str) -> String {
    let d = |rel: &str| dir.join(rel).display().to_string();
    json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        // The machine is cgroup v1 and has no systemd.
        "failCgroupV1": false,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": format!("/{cgroup_root}"),
        "containerRuntimeEndpoint": format!("unix://{}", d("containerd/containerd.sock")),
        "address": NODE_IP,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "tlsCertFile": d("pki/kubelet.crt"),
        "tlsPrivateKeyFile": d("pki/kubelet.key"),
        "authentication": {
            "anonymous": {"enabled": false},
            "webhook": {"enabled": false},
            "x509": {"clientCAFile": host_ca.display().to_string()},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "clusterDomain": "cluster.local",
        "resolvConf": "",
        "podLogsDir": d("pod-logs"),
        "podCIDR": POD_CIDR,
        "failSwapOn": false,
        // Imported images cannot be pulled again: never collect them.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                         "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
        "serializeImagePulls": false,
        "syncFrequency": "10s",
        "shutdownGracePeriod": "0s",
        "protectKernelDefaults": false,
        "enforceNodeAllocatable": ["pods"],
        "maxPods": 110,
    })
    .to_string()
}

pub(super) fn kube_proxy_config(dir: &Path) -> String {
    json!({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": dir.join("kube-proxy.kubeconfig").display().to_string()},
        "hostnameOverride": NODE_NAME,
        "mode": "iptables",
        "clusterCIDR": POD_CIDR,
        // Zero: leave the machine-wide conntrack sysctls alone.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                      "tcpCloseWaitTimeout": "0s"},
        "metricsBindAddress": "127.0.0.1:10249",
        "healthzBindAddress": "127.0.0.1:10256",
    })
    .to_string()
}

/// Writes the node's PKI (issued by the host CA) and kubeconfigs under `dir`.
pub(super) fn write_pki(dir: &Path, host: &Plane) -> Result<(), LocalError> {
    let pki = host.dir.join("pki");
    let read = |f: &str| {
        std::fs::read_to_string(pki.join(f))
            .map_err(io_err(format!("read {}", pki.join(f).display())))
    };
    let ca = Ca::from_pem(&read("ca.crt")?, &read("ca.key")?)?;
    let validity = Duration::from_secs(365 * 86_400);
    let serving = ca.issue(&CertSpec::server(
        NODE_NAME,
        &[NODE_IP.to_owned(), NODE_NAME.to_owned()],
        validity,
    ))?;
    let own = dir.join("pki");
    std::fs::create_dir_all(&own).map_err(io_err(format!("create {}", own.display())))?;
    write_public(&own.join("kubelet.crt"), &serving.cert_pem)?;
    write_private(&own.join("kubelet.key"), &serving.key_pem)?;
    // Through the relay; the API server's certificate names `kubernetes`.
    let server = format!("https://{API_IP}:{API_PORT}");
    for (file, user, group) in [
        (
            "kubelet.kubeconfig",
            format!("system:node:{NODE_NAME}"),
            Some("system:nodes"),
        ),
        (
            "kube-proxy.kubeconfig",
            "system:kube-proxy".to_owned(),
            None,
        ),
    ] {
        let cert = ca.issue(&CertSpec::client(&user, group, validity))?;
        let mut cfg = crate::kubeconfig::client_cert(
            "vcluster-dev-node",
            &server,
            ca.cert_pem(),
            &cert.cert_pem,
            &cert.key_pem,
        );
        for c in &mut cfg.clusters {
            if let Some(cluster) = c.cluster.as_mut() {
                cluster.tls_server_name = Some("kubernetes".to_owned());
            }
        }
        write_private(&dir.join(file), &crate::kubeconfig::to_yaml(&cfg)?)?;
    }
    Ok(())
}
