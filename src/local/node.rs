//! The real node of the dev stack (`vcluster dev up --real-nodes 1`): a
//! kubelet, containerd (+ runc, the CNI bridge) and kube-proxy, inside a
//! network and mount namespace of the stack's own.
//!
//! - **Namespaces.** A holder process (`unshare --net --mount`, then `sleep`)
//!   owns them; containerd, the kubelet, kube-proxy and `ctr` join both with
//!   `nsenter`. In the mount namespace (private propagation) tmpfs covers
//!   `/run`, `/var/lib` and `/var/log`, so the paths the components hard-code
//!   (`/var/lib/kubelet/device-plugins`, `/run/containerd`, `/var/lib/cni`,
//!   `/var/run/netns`, `/var/log/containers`) never touch the machine, and
//!   every mount the node makes (volumes, rootfs, pod namespaces) vanishes
//!   with the namespace's last process. The kernel tunables the kubelet would
//!   set globally (`vm.overcommit_memory`, `kernel.panic`, ...) are shown to
//!   it, in that mount namespace only, with the values it wants, so it
//!   changes none.
//! - **Network.** In the namespace: a veth pair (`vcn0` carries the node
//!   address [`NODE_IP`], `vcn1` the host API relay [`API_IP`]), an
//!   `unreachable` default route (no packet can go anywhere else), the CNI
//!   bridge for pods ([`POD_CIDR`]), kube-proxy's rules, and KWOK's pod range
//!   routed as local so that Services backed by KWOK pods (the vcluster's
//!   own, whose stand-in pod is on a KWOK node) answer at a relay.
//! - **Reaching each other.** The supervisor opens listeners inside the
//!   namespace (see [`super::netns`]): `API_IP:6443` → the host API server,
//!   `*:8443` → the front door, `*:8081` → the syncer's waking page, and
//!   `:1053` (UDP on the stand-in pod's address, TCP on all) → the syncer's
//!   DNS, the nameserver of the node's pods. The API servers reach the
//!   kubelet through their egress proxy.
//! - **Teardown** ([`teardown`]) kills every process in the node's
//!   namespaces and cgroups (shims and containers are not children of the
//!   stack) and removes the cgroups; nothing else exists outside the state
//!   directory.

use crate::api::ApiError;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use futures::FutureExt as _;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::netns::{self, NetNs};
use super::node_files::{
    cni_config, containerd_config, holder_script, kube_proxy_config, kubelet_config, write_pki,
};
pub use super::node_teardown::{leftovers, teardown};
use super::plane::Plane;
use super::ports::StackPorts;
use super::{LocalError, Stack, io_err, write_public};

/// The node's name.
pub const NODE_NAME: &str = "real-node-0";
/// The node's address, inside the namespace.
pub const NODE_IP: &str = "10.246.0.2";
/// Where the host API server answers inside the namespace (a relay).
pub const API_IP: &str = "10.246.0.1";
/// The port of that relay.
pub const API_PORT: u16 = 6443;
/// The real node's pod range (the CNI bridge).
pub const POD_CIDR: &str = "10.245.0.0/24";
/// The label value of `type` on the real node (KWOK's nodes have `kwok`).
pub const NODE_TYPE: &str = "real";
/// The taint put on KWOK's nodes while a real node runs: workloads land on the
/// real node unless they tolerate it.
pub const FAKE_TAINT: &str = "vcluster.dev/fake-node";

/// The Debian packages' programs a real node needs.
const PROGRAMS: &[&str] = &[
    "/usr/bin/containerd",
    "/usr/bin/ctr",
    "/usr/bin/containerd-shim-runc-v2",
    "/usr/sbin/runc",
    "/usr/lib/cni/bridge",
    "/usr/lib/cni/host-local",
    "/usr/lib/cni/loopback",
    "/usr/lib/cni/portmap",
    "/usr/sbin/iptables",
    "/usr/bin/nsenter",
    "/usr/bin/unshare",
    "/usr/sbin/ip",
];

/// The images a real node imports; the first two are required.
const IMAGES: &[&str] = &["pause.tar", "busybox.tar"];

/// The sandbox image (image/build.sh).
pub const PAUSE_IMAGE: &str = "vcluster.dev/pause:1";

/// Kernel tunables the kubelet sets unless they already hold these values.
pub(super) const KUBELET_TUNABLES: &[(&str, &str)] = &[
    ("vm/overcommit_memory", "1"),
    ("vm/panic_on_oom", "0"),
    ("kernel/panic", "10"),
    ("kernel/panic_on_oops", "1"),
    ("kernel/keys/root_maxkeys", "1000000"),
    ("kernel/keys/root_maxbytes", "25000000"),
];

/// What teardown needs to find the node's leftovers, in `node/node.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct NodeRecord {
    /// Inode of the node's network namespace.
    pub(super) netns: u64,
    /// Inode of the node's mount namespace.
    pub(super) mntns: u64,
    /// The kubelet's cgroup root (one directory per v1 hierarchy).
    pub(super) cgroup_root: String,
}

/// The supervisor's part of a running real node: its relays and proxy.
#[derive(Debug)]
pub struct RealNode {
    holder: u32,
    ns: NetNs,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for RealNode {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

pub(super) fn node_err(msg: impl Into<String>) -> LocalError {
    LocalError::RealNode(msg.into())
}

/// Checks root, the Debian packages and the node's binaries.
pub fn check_prerequisites(bin_dir: &Path, image_dir: &Path) -> Result<(), LocalError> {
    if !rustix::process::geteuid().is_root() {
        return Err(node_err(
            "a real node needs root (it creates namespaces and cgroups)",
        ));
    }
    let missing: Vec<&str> = PROGRAMS
        .iter()
        .copied()
        .filter(|p| !Path::new(p).is_file())
        .collect();
    if !missing.is_empty() {
        return Err(node_err(format!(
            "{} not found: run `make node-deps` (as root) to install the real node's Debian packages",
            missing.join(", ")
        )));
    }
    for name in ["kubelet", "kube-proxy"] {
        if !bin_dir.join(name).is_file() {
            return Err(LocalError::MissingBinary {
                name: name.to_owned(),
                dir: bin_dir.to_owned(),
            });
        }
    }
    for image in IMAGES {
        if !image_dir.join(image).is_file() {
            return Err(node_err(format!(
                "{} not found: run `make image` to build the node's images (or pass --image-dir)",
                image_dir.join(image).display()
            )));
        }
    }
    Ok(())
}

/// The default image directory: `target/images` beside the `target/<profile>`
/// directory of the running executable.
pub fn default_image_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("images")))
        .unwrap_or_else(|| PathBuf::from("target/images"))
}

/// A short, stable identifier of a state directory (cgroup names).
pub(super) fn id_of(state_dir: &Path) -> String {
    // FNV-1a over the path: stable across runs and builds.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in state_dir.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:08x}", h & 0xffff_ffff)
}

pub(super) fn ns_inode(pid: u32, kind: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(format!("/proc/{pid}/ns/{kind}"))
        .ok()
        .map(|m| m.ino())
}

/// Every cgroup hierarchy mounted: the v1 ones and, on hybrid machines like
/// these, the unified (v2) one, where runc creates the containers' cgroups too.
pub(super) fn cgroup_hierarchies() -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mount = pre.split_whitespace().nth(4)?;
            let fstype = post.split_whitespace().next()?;
            matches!(fstype, "cgroup" | "cgroup2").then(|| PathBuf::from(mount))
        })
        .collect()
}

pub(super) fn node_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("node")
}

/// Runs a short command to completion; its failure is an error naming it.
pub(super) fn run(what: &str, program: &str, args: &[&str]) -> Result<String, LocalError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(io_err(format!("run {program} ({what})")))?;
    if !out.status.success() {
        return Err(node_err(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Creates the kubelet's cgroup root in every hierarchy.
fn create_cgroups(root: &str) -> Result<(), LocalError> {
    for h in cgroup_hierarchies() {
        let dir = h.join(root);
        std::fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        // cpuset children start empty on v1: copy the parent's sets.
        for f in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(v) = std::fs::read_to_string(h.join(f)) {
                std::fs::write(dir.join(f), v.trim())
                    .map_err(io_err(format!("write {}", dir.join(f).display())))?;
            }
        }
    }
    Ok(())
}

impl Stack {
    fn nsenter_args(holder: u32, program: &str, args: Vec<String>) -> Vec<String> {
        let mut all = vec![
            format!("--target={holder}"),
            "--net".to_owned(),
            "--mount".to_owned(),
            "--".to_owned(),
            program.to_owned(),
        ];
        all.extend(args);
        all
    }

    /// Before the API servers start: the node's namespaces (holder process),
    /// cgroups, and the egress proxy. Returns the API servers' extra
    /// arguments.
    pub(super) async fn prepare_real_node(
        &mut self,
        deadline: Instant,
    ) -> Result<Vec<String>, LocalError> {
        let dir = node_dir(&self.opts.state_dir);
        for sub in ["cni/net.d", "cni/ipam", "containerd", "pod-logs", "kubelet"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).map_err(io_err(format!("create {}", d.display())))?;
        }
        let script = holder_script(super::kwok::POD_CIDR);
        let args = vec![
            "--net".to_owned(),
            "--mount".to_owned(),
            "--propagation=private".to_owned(),
            "--".to_owned(),
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            script,
            // $0 of the script: names the state directory in the command line.
            dir.display().to_string(),
        ];
        self.spawn_program("node-namespaces", Path::new("/usr/bin/unshare"), args, &[])?;
        let holder = self.processes.last().map(|p| p.pid()).unwrap_or_default();
        self.wait_for("the node's namespaces", deadline, || async move {
            // The holder has exec'd `sleep` once its script finished.
            std::fs::read_to_string(format!("/proc/{holder}/comm"))
                .is_ok_and(|c| c.trim() == "sleep")
        })
        .await?;
        let cgroup_root = format!("vcluster-node-{}", id_of(&self.opts.state_dir));
        let record = NodeRecord {
            netns: ns_inode(holder, "net").unwrap_or_default(),
            mntns: ns_inode(holder, "mnt").unwrap_or_default(),
            cgroup_root: cgroup_root.clone(),
        };
        let json = serde_json::to_string_pretty(&record).map_err(|source| LocalError::State {
            path: dir.join("node.json"),
            source,
        })?;
        write_public(&dir.join("node.json"), &json)?;
        create_cgroups(&cgroup_root)?;
        let ns = NetNs::of_pid(holder)?;
        let socket = dir.join("egress.sock");
        let proxy = netns::egress_proxy(&socket, ns.clone())?;
        let egress = dir.join("egress-selector.json");
        write_public(&egress, &netns::egress_config(&socket))?;
        self.node = Some(RealNode {
            holder,
            ns,
            tasks: vec![proxy],
        });
        Ok(vec![format!(
            "--egress-selector-config-file={}",
            egress.display()
        )])
    }

    /// Once the host plane is ready: containerd, the images, the kubelet and
    /// kube-proxy; waits for the Node to be Ready.
    pub(super) async fn start_real_node(
        &mut self,
        host: &Plane,
        host_client: &kube::Client,
        syncer: Option<&StackPorts>,
        deadline: Instant,
    ) -> Result<(), LocalError> {
        let started = Instant::now();
        let dir = node_dir(&self.opts.state_dir);
        let Some(holder) = self.open_node_relays(host, syncer)? else {
            return Ok(());
        };
        self.write_node_files(&dir, host)?;
        self.start_containerd(holder, &dir, deadline).await?;
        self.start_node_agents(holder, &dir)?;
        // The host `kubernetes` Service (its endpoints are not reconciled:
        // the API server's address is loopback) points at the relay.
        apply_api_endpoints(host_client).await?;
        let nodes: Api<Node> = Api::all(host_client.clone());
        self.wait_for("the real node to become Ready", deadline, || {
            let nodes = nodes.clone();
            async move { node_ready(&nodes, NODE_NAME).await }
        })
        .await?;
        taint_fake_nodes(host_client, self.opts.nodes).await?;
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "real node ready"
        );
        Ok(())
    }

    /// The relays inside the node's namespace to the host API and, with a
    /// syncer (its loopback ports), to its front door and waking page; the
    /// holder's pid (`None`: no node was prepared).
    fn open_node_relays(
        &mut self,
        host: &Plane,
        syncer: Option<&StackPorts>,
    ) -> Result<Option<u32>, LocalError> {
        let Some(node) = self.node.as_mut() else {
            return Ok(None);
        };
        let ns = node.ns.clone();
        let api = ns.listen(format!("{API_IP}:{API_PORT}").parse().map_err(|_| {
            node_err("invalid relay address") // constants: cannot happen
        })?)?;
        node.tasks
            .push(netns::relay_to_loopback(api, host.ports.apiserver));
        for &port in &self.opts.node_relays {
            let api_ip: std::net::IpAddr = API_IP
                .parse()
                .map_err(|_| node_err("invalid relay address"))?; // a constant: cannot fail
            let listener = ns.listen(std::net::SocketAddr::new(api_ip, port))?;
            node.tasks.push(netns::relay_to_loopback(listener, port));
        }
        if let Some(ports) = syncer {
            use crate::discovery::{FRONT_DOOR_PORT, WAKE_PORT};
            for (inside, port) in [(FRONT_DOOR_PORT, ports.front_door), (WAKE_PORT, ports.wake)] {
                let listener = ns.listen(std::net::SocketAddr::from(([0, 0, 0, 0], inside)))?;
                node.tasks.push(netns::relay_to_loopback(listener, port));
            }
        }
        Ok(Some(node.holder))
    }

    /// The cluster DNS for the node's pods. Their nameserver, the
    /// `<name>-dns` Service, leads (through kube-proxy) to the stand-in
    /// pod's address on [`crate::discovery::DNS_PORT`]; relays inside the
    /// namespace forward to the syncer's DNS on loopback (`dns_port`). The
    /// UDP relay is bound to that address itself, so an answer leaves from
    /// the address its query was translated to and conntrack maps it back to
    /// the Service's IP (from a wildcard socket it would leave from the
    /// bridge's address, and resolvers drop it).
    pub(super) async fn open_dns_relays(
        &mut self,
        host_client: &kube::Client,
        host_namespace: &str,
        name: &str,
        dns_port: u16,
        deadline: Instant,
    ) -> Result<(), LocalError> {
        if self.node.is_none() {
            return Ok(());
        }
        let pods: Api<Pod> = Api::namespaced(host_client.clone(), host_namespace);
        let stand_in = format!("{name}-0");
        let ip_of = |pods: Api<Pod>, stand_in: String| async move {
            pods.get_opt(&stand_in)
                .await
                .ok()
                .flatten()
                .and_then(|p| p.status?.pod_ip)
                .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
        };
        self.wait_for(&format!("an address for pod {stand_in}"), deadline, || {
            ip_of(pods.clone(), stand_in.clone()).map(|ip| ip.is_some())
        })
        .await?;
        let ip = ip_of(pods, stand_in)
            .await
            .ok_or_else(|| node_err("the stand-in pod lost its address"))?;
        let Some(node) = self.node.as_mut() else {
            return Ok(());
        };
        let port = crate::discovery::DNS_PORT;
        let udp = node.ns.bind_udp(std::net::SocketAddr::new(ip, port))?;
        let tcp = node
            .ns
            .listen(std::net::SocketAddr::new([0, 0, 0, 0].into(), port))?;
        node.tasks.push(netns::relay_udp_to_loopback(udp, dns_port));
        node.tasks.push(netns::relay_to_loopback(tcp, dns_port));
        tracing::info!(%ip, port, "DNS relays in the node namespace");
        Ok(())
    }

    /// The node's certificates and its components' configuration files.
    fn write_node_files(&self, dir: &Path, host: &Plane) -> Result<(), LocalError> {
        write_pki(dir, host)?;
        let cgroup_root = format!("vcluster-node-{}", id_of(&self.opts.state_dir));
        write_public(&dir.join("containerd/config.toml"), &containerd_config(dir))?;
        write_public(
            &dir.join("cni/net.d/10-vcluster-node.conflist"),
            &cni_config(dir),
        )?;
        write_public(
            &dir.join("kubelet-config.json"),
            &kubelet_config(dir, &host.dir.join("pki/ca.crt"), &cgroup_root),
        )?;
        write_public(&dir.join("kube-proxy-config.json"), &kube_proxy_config(dir))
    }

    /// containerd in the node's namespaces, with the images imported.
    async fn start_containerd(
        &mut self,
        holder: u32,
        dir: &Path,
        deadline: Instant,
    ) -> Result<(), LocalError> {
        let started = Instant::now();
        let config = dir.join("containerd/config.toml").display().to_string();
        self.spawn_program(
            "node-containerd",
            Path::new("/usr/bin/nsenter"),
            Self::nsenter_args(
                holder,
                "/usr/bin/containerd",
                vec![format!("--config={config}")],
            ),
            &[],
        )?;
        let sock = dir.join("containerd/containerd.sock");
        let ctr = |args: &[&str]| -> Result<String, LocalError> {
            let mut all = Self::nsenter_args(
                holder,
                "/usr/bin/ctr",
                vec![
                    format!("--address={}", sock.display()),
                    "--namespace=k8s.io".to_owned(),
                ],
            );
            all.extend(args.iter().map(|a| (*a).to_owned()));
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            run("ctr", "/usr/bin/nsenter", &refs)
        };
        self.wait_for("containerd", deadline, || {
            let ok = ctr(&["version"]).is_ok();
            async move { ok }
        })
        .await?;
        let image_dir = self
            .opts
            .image_dir
            .clone()
            .unwrap_or_else(default_image_dir);
        let mut tars: Vec<PathBuf> = std::fs::read_dir(&image_dir)
            .map_err(io_err(format!("read {}", image_dir.display())))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "tar"))
            .collect();
        tars.sort();
        for tar in &tars {
            let path = tar.display().to_string();
            ctr(&["images", "import", &path])?;
        }
        tracing::info!(
            images = tars.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "node images imported"
        );
        Ok(())
    }

    /// The kubelet and kube-proxy in the node's namespaces.
    fn start_node_agents(&mut self, holder: u32, dir: &Path) -> Result<(), LocalError> {
        let nsenter = Path::new("/usr/bin/nsenter");
        let kubelet = self.opts.bin_dir.join("kubelet").display().to_string();
        let d = |rel: &str| dir.join(rel).display().to_string();
        self.spawn_program(
            "node-kubelet",
            nsenter,
            Self::nsenter_args(
                holder,
                &kubelet,
                vec![
                    format!("--config={}", d("kubelet-config.json")),
                    format!("--kubeconfig={}", d("kubelet.kubeconfig")),
                    format!("--root-dir={}", d("kubelet")),
                    format!("--cert-dir={}", d("pki")),
                    format!("--hostname-override={NODE_NAME}"),
                    format!("--node-ip={NODE_IP}"),
                    format!("--node-labels=type={NODE_TYPE}"),
                ],
            ),
            &[],
        )?;
        let proxy = self.opts.bin_dir.join("kube-proxy").display().to_string();
        self.spawn_program(
            "node-kube-proxy",
            nsenter,
            Self::nsenter_args(
                holder,
                &proxy,
                vec![format!("--config={}", d("kube-proxy-config.json"))],
            ),
            &[],
        )
    }
}

async fn node_ready(nodes: &Api<Node>, name: &str) -> bool {
    nodes.get_opt(name).await.ok().flatten().is_some_and(|n| {
        n.status
            .and_then(|s| s.conditions)
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    })
}

fn apply_params() -> PatchParams {
    PatchParams::apply(crate::FIELD_MANAGER).force()
}

async fn apply_api_endpoints(host: &kube::Client) -> Result<(), LocalError> {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let slices: Api<EndpointSlice> = Api::namespaced(host.clone(), "default");
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes-real-node", "labels": {
            "kubernetes.io/service-name": "kubernetes",
            "endpointslice.kubernetes.io/managed-by": "vcluster-dev-stack"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [API_IP], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": API_PORT, "protocol": "TCP"}],
    });
    slices
        .patch(
            "kubernetes-real-node",
            &apply_params(),
            &Patch::Apply(&slice),
        )
        .await
        .map_err(ApiError::of(
            "point the host kubernetes Service at the node's relay",
        ))?;
    Ok(())
}

async fn taint_fake_nodes(host: &kube::Client, count: u32) -> Result<(), LocalError> {
    let nodes: Api<Node> = Api::all(host.clone());
    for i in 0..count {
        let name = super::kwok::node_name(i);
        let patch = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "spec": {"taints": [{"key": FAKE_TAINT, "value": "true", "effect": "NoSchedule"}]}});
        nodes
            .patch(
                &name,
                &PatchParams::apply("vcluster-dev-taints").force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(ApiError::of(format!("taint KWOK node {name}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_script_sets_up_only_the_namespace() {
        let s = holder_script("10.244.0.0/16");
        assert!(s.contains("ip route add unreachable default"), "{s}");
        assert!(s.contains("ip route add local 10.244.0.0/16 dev lo"), "{s}");
        // Global tunables are masked in the mount namespace, never written.
        assert!(!s.contains("> /proc/sys/vm"), "{s}");
        assert!(s.contains("mount --bind /run/vcluster-node/vm_overcommit_memory /proc/sys/vm/overcommit_memory"), "{s}");
        assert!(s.ends_with("exec sleep infinity\n"));
    }

    #[test]
    fn kubelet_config_keeps_to_the_stack() {
        let v: serde_json::Value = serde_json::from_str(&kubelet_config(
            Path::new("/s/node"),
            Path::new("/s/host/pki/ca.crt"),
            "vcluster-node-1",
        ))
        .unwrap();
        assert_eq!(v["failCgroupV1"], false);
        assert_eq!(v["cgroupRoot"], "/vcluster-node-1");
        assert_eq!(
            v["containerRuntimeEndpoint"],
            "unix:///s/node/containerd/containerd.sock"
        );
        assert_eq!(v["podLogsDir"], "/s/node/pod-logs");
        assert_eq!(v["imageGCHighThresholdPercent"], 100);
        let c = containerd_config(Path::new("/s/node"));
        assert!(c.contains("restrict_oom_score_adj = true"), "{c}");
        assert!(
            c.contains(&format!("sandbox_image = \"{PAUSE_IMAGE}\"")),
            "{c}"
        );
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        assert_eq!(id_of(Path::new("/a")), id_of(Path::new("/a")));
        assert_ne!(id_of(Path::new("/a")), id_of(Path::new("/b")));
        assert_eq!(id_of(Path::new("/a")).len(), 8);
    }
}
