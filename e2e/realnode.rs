//! The real-node lane: `vcluster dev up --real-nodes 1` runs a kubelet on
//! containerd + runc + the CNI bridge, with kube-proxy, in a network namespace
//! of the stack's own. Tenant workloads created in the virtual cluster really
//! run there: processes, files, cgroups, packets. Needs root, `make
//! node-deps` and `make image` (the Makefile's `e2e-realnode` does both).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod common;

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::shared::*;
use common::*;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use libtest_mimic::Arguments;
use serde_json::json;

const T: Duration = Duration::from_secs(120);
const HOST_NS: &str = "vcluster-dev";
const VC: &str = "dev";
const BUSYBOX: &str = "vcluster.dev/busybox:1.35.0";
/// busybox + kubectl (image/build.sh toolbox).
const TOOLBOX: &str = "vcluster.dev/toolbox:1";

struct Env {
    stack: DevStack,
    /// The machine's state before the stack started.
    before: Machine,
}

impl Env {
    /// The tenant's kubeconfig: the syncer's front door.
    fn tenant(&self) -> PathBuf {
        self.stack
            .state
            .front_door
            .as_ref()
            .unwrap()
            .kubeconfig
            .clone()
    }

    fn host_name(&self, ns: &str, name: &str) -> String {
        vcluster::translate::host_name(
            &vcluster::translate::VclusterName::new(VC).unwrap(),
            ns,
            name,
        )
    }
}

/// What of the machine a real node must leave as it found it.
#[derive(Debug, PartialEq)]
struct Machine {
    sysctls: Vec<(String, String)>,
    links: String,
    routes: String,
    iptables: String,
    paths: Vec<(String, bool)>,
}

fn out_of(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn machine() -> Machine {
    let sysctls = [
        "vm/overcommit_memory",
        "vm/panic_on_oom",
        "kernel/panic",
        "kernel/panic_on_oops",
        "net/ipv4/ip_forward",
        "net/bridge/bridge-nf-call-iptables",
        "net/netfilter/nf_conntrack_max",
        "net/ipv4/conf/all/route_localnet",
    ]
    .iter()
    .map(|k| {
        let v = std::fs::read_to_string(format!("/proc/sys/{k}")).unwrap_or_default();
        ((*k).to_owned(), v.trim().to_owned())
    })
    .collect();
    let paths = [
        "/var/lib/kubelet",
        "/run/containerd",
        "/var/lib/cni",
        "/var/log/pods",
        "/var/log/containers",
        "/etc/cni/net.d",
    ]
    .iter()
    .map(|p| ((*p).to_owned(), std::path::Path::new(p).exists()))
    .collect();
    Machine {
        sysctls,
        links: out_of("ip", &["-o", "link", "show"]),
        routes: out_of("ip", &["route", "show", "table", "all"]),
        iptables: out_of("iptables-save", &[])
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(" [").next().unwrap_or(l).to_owned())
            .collect::<Vec<_>>()
            .join("\n"),
        paths,
    }
}

fn tenant_ok(env: &Env, args: &[&str]) -> String {
    kubectl_ok(&env.tenant(), args, None)
}

fn apply(env: &Env, yaml: &str) {
    kubectl_ok(&env.tenant(), &["apply", "-f", "-"], Some(yaml));
}

/// Waits until pod `name` in `ns` is Running and Ready in the virtual cluster.
fn wait_ready(env: &Env, ns: &str, name: &str) {
    kubectl_ok(
        &env.tenant(),
        &[
            "wait",
            "-n",
            ns,
            "--for=condition=Ready",
            &format!("pod/{name}"),
            "--timeout=120s",
        ],
        None,
    );
}

fn namespace(env: &Env, ns: &str) {
    let _ = kubectl(&env.tenant(), &["create", "namespace", ns], None);
}

/// A busybox pod in `ns` running `script`.
fn busybox_pod(env: &Env, ns: &str, name: &str, script: &str) {
    apply(
        env,
        &json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                "name": "main", "image": BUSYBOX, "imagePullPolicy": "Never",
                "command": ["sh", "-c", script]}]}})
        .to_string(),
    );
}

fn node_is_real_and_ready(env: &Env) {
    block_on(async {
        let h = client(&env.stack.host_kubeconfig()).await;
        let nodes: Api<Node> = Api::all(h);
        let n = nodes.get(vcluster::local::node::NODE_NAME).await.unwrap();
        let info = n.status.unwrap().node_info.unwrap();
        let pins = vcluster::local::pinned_versions();
        assert_eq!(info.kubelet_version, pins["KUBERNETES_VERSION"]);
        assert!(
            info.container_runtime_version.starts_with("containerd://"),
            "{}",
            info.container_runtime_version
        );
        assert_eq!(info.operating_system, "linux");
    });
    // The virtual Node of a pod on it shows the host kubelet's version, OS
    // and architecture (not the machine's kernel or image).
    let ns = "nodeinfo";
    namespace(env, ns);
    busybox_pod(env, ns, "placed", "exec sleep 3600");
    wait_ready(env, ns, "placed");
    block_on(async {
        let v = client(&env.tenant()).await;
        let nodes: Api<Node> = Api::all(v);
        let info = eventually("the virtual real-node-0", T, || async {
            nodes
                .get_opt(vcluster::local::node::NODE_NAME)
                .await
                .map_err(|e| e.to_string())?
                .and_then(|n| n.status?.node_info)
                .ok_or_else(|| "no virtual node yet".to_owned())
        })
        .await;
        let pins = vcluster::local::pinned_versions();
        assert_eq!(info.kubelet_version, pins["KUBERNETES_VERSION"]);
        assert_eq!(info.operating_system, "linux");
        assert_eq!(info.architecture, "amd64");
        assert_eq!(info.kernel_version, "");
    });
}

/// A busybox HTTP Deployment behind a Service; a client pod fetches it by
/// cluster IP (kube-proxy's rules in the node's namespace), through `kubectl
/// exec` via the front door, and resolves its name through the cluster DNS.
fn http_service_answers_by_cluster_ip(env: &Env) {
    let ns = "web";
    namespace(env, ns);
    apply(
        env,
        &json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                        "name": "httpd", "image": BUSYBOX, "imagePullPolicy": "Never",
                        "command": ["sh", "-c", "mkdir -p /www && echo \"served by $(hostname)\" > /www/index.html && exec httpd -f -p 8080 -h /www"],
                        "ports": [{"containerPort": 8080}],
                        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}]}}}})
        .to_string(),
    );
    apply(
        env,
        &json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}})
        .to_string(),
    );
    busybox_pod(env, ns, "client", "exec sleep 3600");
    kubectl_ok(
        &env.tenant(),
        &[
            "rollout",
            "status",
            "-n",
            ns,
            "deployment/web",
            "--timeout=120s",
        ],
        None,
    );
    wait_ready(env, ns, "client");
    let ip = tenant_ok(
        env,
        &[
            "get",
            "-n",
            ns,
            "svc",
            "web",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
    );
    let pods = tenant_ok(
        env,
        &[
            "get",
            "-n",
            ns,
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ],
    );
    let url = format!("http://{ip}/");
    let body = eventually_sync("the Service to answer by cluster IP", T, || {
        let out = kubectl(
            &env.tenant(),
            &[
                "exec", "-n", ns, "client", "--", "timeout", "5", "wget", "-qO-", &url,
            ],
            None,
        );
        let (stdout, stderr) = text(&out);
        if out.status.success() && stdout.starts_with("served by ") {
            Ok(stdout)
        } else {
            Err(format!("{stdout}{stderr}"))
        }
    });
    // The body names a pod of the Deployment: the real process answered.
    let server = body.trim().trim_start_matches("served by ");
    assert!(
        pods.split_whitespace().any(|p| p == server),
        "{server} not in {pods}"
    );
    // The pod's resolver (its nameserver is the vcluster's DNS Service)
    // answers the Service's name with its cluster IP: the query crosses
    // kube-proxy to the syncer's DNS and the answer comes back to the pod.
    let name = format!("web.{ns}.svc.cluster.local");
    let answer = eventually_sync("the Service's name to resolve in the pod", T, || {
        let out = kubectl(
            &env.tenant(),
            &[
                "exec", "-n", ns, "client", "--", "timeout", "10", "nslookup", &name,
            ],
            None,
        );
        let (stdout, stderr) = text(&out);
        if out.status.success() && stdout.contains(&format!("Address: {ip}")) {
            Ok(stdout)
        } else {
            Err(format!("{stdout}{stderr}"))
        }
    });
    assert!(answer.contains(&name), "{answer}");
}

/// `kubectl logs`, `exec` (with and without stdin), `attach` and
/// `port-forward` through the front door reach the real kubelet.
fn logs_exec_attach_port_forward(env: &Env) {
    let ns = "streams";
    namespace(env, ns);
    busybox_pod(
        env,
        ns,
        "talker",
        "echo first line; echo to stderr >&2; mkdir -p /www; echo forwarded > /www/index.html; exec httpd -f -p 8080 -h /www",
    );
    wait_ready(env, ns, "talker");
    let tk = env.tenant();
    let logs = eventually_sync("the container's log", T, || {
        let out = tenant_ok(env, &["logs", "-n", ns, "talker"]);
        if out.contains("first line") && out.contains("to stderr") {
            Ok(out)
        } else {
            Err(out)
        }
    });
    assert!(logs.contains("first line"), "{logs}");
    let out = tenant_ok(
        env,
        &["exec", "-n", ns, "talker", "--", "cat", "/www/index.html"],
    );
    assert_eq!(out.trim(), "forwarded");
    let out = kubectl_ok(
        &tk,
        &["exec", "-i", "-n", ns, "talker", "--", "sh"],
        Some("echo $((6*7)) from $(hostname)\nexit 0\n"),
    );
    assert_eq!(out.trim(), "42 from talker");
    let failed = kubectl(
        &tk,
        &["exec", "-n", ns, "talker", "--", "sh", "-c", "exit 7"],
        None,
    );
    assert_eq!(failed.status.code(), Some(7), "{:?}", text(&failed));

    // attach: a container reading its stdin.
    apply(
        env,
        &json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "listener", "namespace": ns},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1, "containers": [{
                "name": "main", "image": BUSYBOX, "imagePullPolicy": "Never",
                "stdin": true, "stdinOnce": true,
                "command": ["sh", "-c", "while read l; do echo got:$l; done"]}]}})
        .to_string(),
    );
    wait_ready(env, ns, "listener");
    let out = kubectl(
        &tk,
        &["attach", "-i", "-n", ns, "listener", "-c", "main"],
        Some("ping\n"),
    );
    let (stdout, stderr) = text(&out);
    assert!(stdout.contains("got:ping"), "attach: {stdout} {stderr}");

    // port-forward to the pod's 8080.
    let mut pf = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&tk)
        .args(["port-forward", "-n", ns, "pod/talker", ":8080"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut reader = BufReader::new(pf.stdout.take().unwrap());
    reader.read_line(&mut line).unwrap();
    // Keep reading: kubectl dies of a closed pipe on its next line otherwise.
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    let port: u16 = line
        .rsplit(':')
        .next()
        .and_then(|p| p.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("port-forward said {line:?}"));
    let body = http_get_body(port, "/index.html");
    let _ = pf.kill();
    let _ = pf.wait();
    assert_eq!(body.trim(), "forwarded");
}

fn http_get_body(port: u16, path: &str) -> String {
    use std::io::Write as _;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|x| x.1.to_owned())
        .unwrap_or(out)
}

/// A container that keeps crashing shows its restarts and last exit code in
/// the virtual cluster.
fn crash_restarts_are_visible(env: &Env) {
    let ns = "crash";
    namespace(env, ns);
    busybox_pod(env, ns, "crasher", "echo boom; exit 3");
    block_on(async {
        let v = client(&env.tenant()).await;
        let pods: Api<Pod> = Api::namespaced(v, ns);
        eventually("restarts and exit code 3 on the virtual pod", T, || async {
            let p = pods.get("crasher").await.map_err(|e| e.to_string())?;
            let cs = p
                .status
                .and_then(|s| s.container_statuses)
                .and_then(|c| c.into_iter().next())
                .ok_or("no container status")?;
            let code = cs
                .last_state
                .as_ref()
                .and_then(|l| l.terminated.as_ref())
                .map(|t| t.exit_code);
            if cs.restart_count >= 1 && code == Some(3) {
                Ok(())
            } else {
                Err(format!("restarts {}, last exit {code:?}", cs.restart_count))
            }
        })
        .await;
    });
}

/// A ConfigMap volume and the projected *virtual* service-account token are
/// really mounted; the token lists pods in the virtual API from inside the
/// pod with the RBAC the tenant granted, and is refused without it.
fn configmap_and_virtual_token_work_inside_the_pod(env: &Env) {
    let ns = "inside";
    namespace(env, ns);
    apply(
        env,
        &format!(
            r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: settings, namespace: {ns}}}
data: {{greeting: hello from a configmap}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: reader, namespace: {ns}}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: nobody, namespace: {ns}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: pod-reader, namespace: {ns}}}
rules: [{{apiGroups: [""], resources: [pods], verbs: [list]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: reader, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}}
subjects: [{{kind: ServiceAccount, name: reader, namespace: {ns}}}]
"#
        ),
    );
    for sa in ["reader", "nobody"] {
        apply(
            env,
            &json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": sa, "namespace": ns},
                "spec": {"serviceAccountName": sa, "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "main", "image": TOOLBOX, "imagePullPolicy": "Never",
                        "command": ["sleep", "3600"],
                        "volumeMounts": [{"name": "settings", "mountPath": "/settings"}]}],
                    "volumes": [{"name": "settings", "configMap": {"name": "settings"}}]}})
            .to_string(),
        );
    }
    wait_ready(env, ns, "reader");
    wait_ready(env, ns, "nobody");
    let greeting = tenant_ok(
        env,
        &[
            "exec",
            "-n",
            ns,
            "reader",
            "--",
            "cat",
            "/settings/greeting",
        ],
    );
    assert_eq!(greeting, "hello from a configmap");
    // kubectl inside the pod, with the pod's own token, the Service address
    // the syncer injected, the pod's namespace file and its projected
    // ca.crt, which verifies the front door it reaches (no TLS shortcuts).
    let list = "kubectl --server=https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT \
        --token=$(cat /var/run/secrets/kubernetes.io/serviceaccount/token) \
        --certificate-authority=/var/run/secrets/kubernetes.io/serviceaccount/ca.crt \
        -n $(cat /var/run/secrets/kubernetes.io/serviceaccount/namespace) get pods -o name 2>&1";
    let out = tenant_ok(env, &["exec", "-n", ns, "reader", "--", "sh", "-c", list]);
    // Virtual names: the virtual API answered, not the host's.
    let names: Vec<&str> = out.lines().map(str::trim).collect();
    assert!(
        names.contains(&"pod/reader") && names.contains(&"pod/nobody"),
        "{out}"
    );
    let refused = kubectl(
        &env.tenant(),
        &["exec", "-n", ns, "nobody", "--", "sh", "-c", list],
        None,
    );
    let (stdout, stderr) = text(&refused);
    assert!(!refused.status.success(), "without RBAC: {stdout}");
    assert!(
        stdout.contains("forbidden") && stdout.contains("system:serviceaccount:inside:nobody"),
        "without RBAC: {stdout} {stderr}"
    );
}

/// Resource limits land in the container's cgroup.
fn limits_reach_the_cgroup(env: &Env) {
    let ns = "limits";
    namespace(env, ns);
    apply(
        env,
        &json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "bounded", "namespace": ns},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                "name": "main", "image": BUSYBOX, "imagePullPolicy": "Never",
                "command": ["sleep", "3600"],
                "resources": {"limits": {"memory": "64Mi", "cpu": "250m"},
                              "requests": {"memory": "32Mi", "cpu": "100m"}}}]}})
        .to_string(),
    );
    wait_ready(env, ns, "bounded");
    let mem = tenant_ok(
        env,
        &[
            "exec",
            "-n",
            ns,
            "bounded",
            "--",
            "cat",
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
        ],
    );
    assert_eq!(mem.trim(), (64 * 1024 * 1024).to_string());
    let quota = tenant_ok(
        env,
        &[
            "exec",
            "-n",
            ns,
            "bounded",
            "--",
            "cat",
            "/sys/fs/cgroup/cpu/cpu.cfs_quota_us",
        ],
    );
    let period = tenant_ok(
        env,
        &[
            "exec",
            "-n",
            ns,
            "bounded",
            "--",
            "cat",
            "/sys/fs/cgroup/cpu/cpu.cfs_period_us",
        ],
    );
    let (q, p): (u64, u64) = (
        quota.trim().parse().unwrap(),
        period.trim().parse().unwrap(),
    );
    assert_eq!(q * 1000 / p, 250, "quota {q} / period {p}");
}

/// The Pod Security refusal still stops a privileged pod before the host.
fn privileged_pod_never_reaches_the_node(env: &Env) {
    let ns = "pss";
    namespace(env, ns);
    apply(
        env,
        &json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "root-of-all", "namespace": ns},
            "spec": {"containers": [{"name": "main", "image": BUSYBOX, "imagePullPolicy": "Never",
                "command": ["sleep", "3600"], "securityContext": {"privileged": true}}]}})
        .to_string(),
    );
    block_on(async {
        let v = client(&env.tenant()).await;
        let events: Api<Event> = Api::namespaced(v, ns);
        eventually("a PodSecurityViolation warning", T, || async {
            let l = events
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            l.items
                .iter()
                .find(|e| e.reason.as_deref() == Some("PodSecurityViolation"))
                .map(|_| ())
                .ok_or_else(|| format!("{} events", l.items.len()))
        })
        .await;
        let h = client(&env.stack.host_kubeconfig()).await;
        let hpods: Api<Pod> = Api::namespaced(h, HOST_NS);
        assert!(
            hpods
                .get_opt(&env.host_name(ns, "root-of-all"))
                .await
                .unwrap()
                .is_none()
        );
    });
}

/// A pod writes a file to its claim and is deleted; a new pod on the same
/// claim reads it back (the dev host's hostPath volume, bound through the
/// synced claim).
fn data_on_a_claim_outlives_its_pod(env: &Env) {
    let ns = "storage";
    namespace(env, ns);
    apply(
        env,
        &json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "notes", "namespace": ns},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "16Mi"}}}})
        .to_string(),
    );
    let on_claim = |name: &str, script: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                "name": "main", "image": BUSYBOX, "imagePullPolicy": "Never",
                "command": ["sh", "-c", script],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "notes"}}]}})
        .to_string()
    };
    apply(
        env,
        &on_claim(
            "writer",
            "echo written-by-the-first-pod > /data/note && sleep 3600",
        ),
    );
    wait_ready(env, ns, "writer");
    tenant_ok(env, &["delete", "pod", "writer", "-n", ns, "--wait=true"]);
    apply(env, &on_claim("reader", "cat /data/note; sleep 3600"));
    wait_ready(env, ns, "reader");
    eventually_sync("the reader's log shows the note", T, || {
        let out = tenant_ok(env, &["logs", "reader", "-n", ns]);
        if out.contains("written-by-the-first-pod") {
            Ok(())
        } else {
            Err(out)
        }
    });
    let pvc = tenant_ok(env, &["get", "pvc,pv", "-A"]);
    println!("--- real node, inside: kubectl get pvc,pv -A\n{pvc}");
    tenant_ok(env, &["delete", "pod", "reader", "-n", ns, "--wait=true"]);
    tenant_ok(env, &["delete", "pvc", "notes", "-n", ns, "--wait=true"]);
}

/// A tenant web server behind a Service and a cert-manager ingress for
/// `host` in virtual namespace `ns`, applied with `kubeconfig`; its body
/// starts with `who`.
fn shop(kubeconfig: &std::path::Path, ns: &str, host: &str, who: &str) {
    let _ = kubectl(kubeconfig, &["create", "namespace", ns], None);
    let objects = [
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                        "name": "httpd", "image": BUSYBOX, "imagePullPolicy": "Never",
                        "command": ["sh", "-c", format!("mkdir -p /www && echo \"{who} $(hostname)\" > /www/index.html && exec httpd -f -p 8080 -h /www")],
                        "ports": [{"containerPort": 8080}],
                        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}]}}}}),
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "shop", "namespace": ns,
                "annotations": {"cert-manager.io/cluster-issuer": "shared-ca"}},
            "spec": {"tls": [{"hosts": [host], "secretName": "shop-tls"}],
                "rules": [{"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}}),
    ];
    for o in objects {
        kubectl_ok(kubeconfig, &["apply", "-f", "-"], Some(&o.to_string()));
    }
}

/// GETs `https://<host>/` from the node's namespace, resolved to traefik,
/// verifying the certificate against `ca` (a file).
fn https_get(env: &Env, host: &str, ca: &std::path::Path) -> Result<String, String> {
    curl_in_node(
        &env.stack,
        &[
            "--cacert",
            ca.to_str().unwrap(),
            "--resolve",
            &to_traefik(host),
            &format!("https://{host}/"),
        ],
    )
}

/// The host's shared ingress controller (traefik, in the node's namespace)
/// and cert-manager serve two vclusters: each tenant's host is answered over
/// HTTPS with its cert-manager certificate by its own pod only; a host
/// another vcluster serves, or an ingress with a denied annotation, never
/// reaches traefik's routing table.
fn shared_ingress_controller_serves_each_vcluster(env: &Env) {
    let hk = env.stack.host_kubeconfig();
    let cert_manager = start_cert_manager(&env.stack);
    let ca = {
        let mut ca = String::new();
        block_on(async {
            let h = client(&hk).await;
            ca = ca_cluster_issuer(&h, "shared-ca").await;
        });
        ca
    };
    let ca_file = env.stack.dir.path().join("shared-ca.crt");
    std::fs::write(&ca_file, &ca).unwrap();
    let traefik = start_traefik(&env.stack);

    // A second vcluster on the same host and node: another stack's virtual
    // plane, synced into host namespace team-b by a syncer of its own.
    let other = DevStack::up(&["--no-syncer", "--nodes", "1"]);
    let _ = kubectl(&hk, &["create", "namespace", "team-b"], None);
    api_service(&hk, "team-b", "team-b");
    let _syncer_b = SyncerProcess::spawn_between(
        &env.stack,
        &other.vcluster_kubeconfig(),
        "team-b",
        "team-b",
        &hk,
        &[],
    )
    .wait_ready(T);

    let (a_host, b_host) = ("shop.team-a.example.com", "shop.team-b.example.com");
    let tenants = [
        (env.tenant(), a_host, "team-a"),
        (other.vcluster_kubeconfig(), b_host, "team-b"),
    ];
    for (kc, host, who) in &tenants {
        shop(kc, "shop", host, who);
    }
    for (kc, host, who) in &tenants {
        let body = eventually_sync(
            &format!("https://{host}/ through traefik"),
            Duration::from_secs(180),
            || https_get(env, host, &ca_file),
        );
        let (tenant, pod) = body.trim().split_once(' ').unwrap();
        assert_eq!(
            tenant, *who,
            "{host} answered by the wrong vcluster: {body}"
        );
        let pods = kubectl_ok(
            kc,
            &[
                "get",
                "-n",
                "shop",
                "pods",
                "-l",
                "app=web",
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ],
            None,
        );
        assert!(
            pods.split_whitespace().any(|p| p == pod),
            "{pod} is not {who}'s pod"
        );
    }
    // Each tenant's certificate came from the shared CA and is mirrored up.
    for (kc, _, _) in &tenants {
        let crt = kubectl_ok(
            kc,
            &[
                "get",
                "secret",
                "-n",
                "shop",
                "shop-tls",
                "-o",
                "jsonpath={.data.tls\\.crt}",
            ],
            None,
        );
        assert!(!crt.is_empty(), "no mirrored certificate");
    }

    // team-a tries team-b's host, and an ingress with a snippet annotation.
    let grab = json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "grab", "namespace": "shop"},
        "spec": {"rules": [{"host": b_host, "http": {"paths": [{"path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}});
    let snippet = json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "snippet", "namespace": "shop",
            "annotations": {"nginx.ingress.kubernetes.io/server-snippet": "return 200;"}},
        "spec": {"rules": [{"host": "evil.team-a.example.com", "http": {"paths": [{"path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}});
    apply(env, &grab.to_string());
    apply(env, &snippet.to_string());
    block_on(async {
        let v = client(&env.tenant()).await;
        event_with_reason(&v, "shop", "IngressHostConflict").await;
        event_with_reason(&v, "shop", "IngressAnnotationDenied").await;
    });
    // What traefik routes: b_host only to team-b's Service, no evil host.
    let routers = curl_in_node(
        &env.stack,
        &[&format!("http://{TRAEFIK_API}/api/http/routers")],
    )
    .unwrap();
    let routers: Vec<serde_json::Value> = serde_json::from_str(&routers).unwrap();
    let mut b_routes = 0;
    for r in &routers {
        let rule = r["rule"].as_str().unwrap_or_default();
        let service = r["service"].as_str().unwrap_or_default();
        assert!(
            !rule.contains("evil."),
            "a denied ingress reached traefik: {r}"
        );
        if rule.contains(b_host) {
            b_routes += 1;
            assert!(
                service.starts_with("team-b-"),
                "{b_host} routed to {service}"
            );
        }
    }
    assert!(b_routes > 0, "no route for {b_host}: {routers:?}");
    assert_eq!(
        https_get(env, b_host, &ca_file)
            .unwrap()
            .split_whitespace()
            .next(),
        Some("team-b")
    );

    println!(
        "cert-manager controller: RSS {}; traefik: RSS {}",
        cert_manager.rss(),
        traefik.rss()
    );
    for (kc, _, _) in &tenants {
        let _ = kubectl(kc, &["delete", "namespace", "shop", "--wait=false"], None);
    }
}

/// Pids of the machine's processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .contains(marker)
            })
        })
        .collect()
}

/// GETs `https://<host>/` through traefik (its default certificate): the
/// status line, headers and body, whatever the status.
fn through_traefik(env: &Env, host: &str) -> Result<String, String> {
    curl_in_node_any_status(
        &env.stack,
        &[
            "-i",
            "-k",
            "--resolve",
            &to_traefik(host),
            &format!("https://{host}/"),
        ],
    )
}

/// Sleep on a real node. `vcluster sleep` stops the tenant's real process
/// (its host pod leaves and the process is gone from the machine) while the
/// virtual pod stays, marked sleeping; no host pod of the tenant's is left.
/// A visit to the tenant's ingress through the host's traefik gets the
/// syncer's waking page (503 with Retry-After) and wakes the cluster: a new
/// process serves the same ingress again, and the virtual pod is Ready.
fn a_sleeping_vcluster_stops_real_pods_and_an_ingress_visit_wakes_them(env: &Env) {
    const NS: &str = "sleepy";
    const HOST: &str = "sleepy.team-a.example.com";
    // A command line no other process has: the web server of this test.
    const MARKER: &str = "-h /www-sleepy";
    let hk = env.stack.host_kubeconfig();
    let admin = env.stack.vcluster_kubeconfig();
    let _traefik = start_traefik(&env.stack);
    namespace(env, NS);
    for o in [
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": NS},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                        "name": "httpd", "image": BUSYBOX, "imagePullPolicy": "Never",
                        "command": ["sh", "-c", format!("mkdir -p /www-sleepy && echo \"awake $(hostname)\" > /www-sleepy/index.html && exec httpd -f -p 8080 {MARKER}")],
                        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}]}}}}),
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": NS},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "web", "namespace": NS},
            "spec": {"rules": [{"host": HOST, "http": {"paths": [{"path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}}),
    ] {
        apply(env, &o.to_string());
    }
    let served = |env: &Env| {
        through_traefik(env, HOST).and_then(|r| {
            let body = r
                .rsplit("\r\n\r\n")
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned();
            if r.starts_with("HTTP/")
                && r.lines().next().is_some_and(|l| l.contains(" 200"))
                && body.starts_with("awake ")
            {
                Ok(body)
            } else {
                Err(r)
            }
        })
    };
    let body = eventually_sync("the tenant's page through traefik", T, || served(env));
    let first = processes_with(MARKER);
    assert_eq!(first.len(), 1, "one web server runs: {first:?} ({body})");

    // Asleep: observed through the direct admin credential and the host
    // only (a tenant request through the front door would wake it).
    let out = vcluster(&[
        "sleep",
        VC,
        "-n",
        HOST_NS,
        "--kubeconfig",
        hk.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "vcluster sleep: {:?}", text(&out));
    let owned = format!("vcluster.dev/owner={VC}");
    eventually_sync("no host pod of the tenant's", T, || {
        let left = kubectl_ok(
            &hk,
            &["get", "pods", "-n", HOST_NS, "-l", &owned, "-o", "name"],
            None,
        );
        if left.trim().is_empty() {
            Ok(())
        } else {
            Err(left)
        }
    });
    eventually_sync("the web server's process to end", T, || {
        let left = processes_with(MARKER);
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    });
    let sleeping = kubectl_ok(
        &admin,
        &[
            "get",
            "pods",
            "-n",
            NS,
            "-l",
            "app=web",
            "-o",
            &format!(
                "jsonpath={{.items[*].status.conditions[?(@.type==\"{}\")].status}}",
                vcluster::sleep::SLEEPING_CONDITION
            ),
        ],
        None,
    );
    assert_eq!(
        sleeping.trim(),
        "True",
        "the virtual pod is marked sleeping"
    );
    println!("asleep: 0 host pods of the tenant's, its web server's process gone");

    // The visit: the waking page, from the syncer, through traefik.
    let woke = std::time::Instant::now();
    let page = eventually_sync("the waking page through traefik", T, || {
        through_traefik(env, HOST).and_then(|r| {
            if r.lines().next().is_some_and(|l| l.contains(" 503"))
                && r.to_ascii_lowercase().contains("retry-after: ")
                && r.contains("Waking up")
            {
                Ok(r)
            } else {
                Err(r)
            }
        })
    });
    assert!(
        page.to_ascii_lowercase()
            .contains("cache-control: no-store"),
        "{page}"
    );
    let body = eventually_sync("the tenant's page again after the visit", T, || served(env));
    let again = processes_with(MARKER);
    assert_eq!(again.len(), 1, "one web server runs again: {again:?}");
    assert_ne!(again, first, "a new process serves after the wake ({body})");
    println!(
        "ingress visit while asleep -> waking page -> the tenant's page again: {:.1}s",
        woke.elapsed().as_secs_f64()
    );
    kubectl_ok(
        &admin,
        &[
            "wait",
            "-n",
            NS,
            "--for=condition=Ready",
            "pod",
            "-l",
            "app=web",
            "--timeout=120s",
        ],
        None,
    );
    let _ = kubectl(&admin, &["delete", "namespace", NS, "--wait=false"], None);
}

const TESTS: &[Test<Env>] = &[
    (
        "data_on_a_claim_outlives_its_pod",
        data_on_a_claim_outlives_its_pod,
    ),
    ("node_is_real_and_ready", node_is_real_and_ready),
    (
        "shared_ingress_controller_serves_each_vcluster",
        shared_ingress_controller_serves_each_vcluster,
    ),
    (
        "http_service_answers_by_cluster_ip",
        http_service_answers_by_cluster_ip,
    ),
    (
        "logs_exec_attach_port_forward",
        logs_exec_attach_port_forward,
    ),
    (
        "names_resolve_through_the_cluster_dns",
        names_resolve_through_the_cluster_dns,
    ),
    ("crash_restarts_are_visible", crash_restarts_are_visible),
    (
        "configmap_and_virtual_token_work_inside_the_pod",
        configmap_and_virtual_token_work_inside_the_pod,
    ),
    ("limits_reach_the_cgroup", limits_reach_the_cgroup),
    (
        "privileged_pod_never_reaches_the_node",
        privileged_pod_never_reaches_the_node,
    ),
];

/// Run after the others, alone: a sleep stops every tenant pod of the
/// suite's vcluster.
const LAST: &[Test<Env>] = &[(
    "a_sleeping_vcluster_stops_real_pods_and_an_ingress_visit_wakes_them",
    a_sleeping_vcluster_stops_real_pods_and_an_ingress_visit_wakes_them,
)];

/// Inside a real pod, names resolve through the vcluster's DNS: the host
/// copy's `/etc/resolv.conf` names the DNS Service (the virtual kube-dns's
/// IP) with the tenant's search path; a headless Service answers with its
/// pod, a StatefulSet pod by `db-0.db`, and a short name of another
/// namespace is expanded by the pod's own resolver (search path, ndots:5).
fn names_resolve_through_the_cluster_dns(env: &Env) {
    let (ns, client_ns) = ("dnsdb", "dnsclient");
    namespace(env, ns);
    namespace(env, client_ns);
    apply(
        env,
        &json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "db", "namespace": ns},
            "spec": {"clusterIP": "None", "selector": {"app": "db"},
                "ports": [{"name": "http", "port": 8080}]}})
        .to_string(),
    );
    apply(
        env,
        &json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "db", "namespace": ns},
            "spec": {"replicas": 1, "serviceName": "db",
                "selector": {"matchLabels": {"app": "db"}},
                "template": {"metadata": {"labels": {"app": "db"}},
                    "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                        "name": "httpd", "image": BUSYBOX, "imagePullPolicy": "Never",
                        "command": ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"],
                        "ports": [{"containerPort": 8080}],
                        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}]}}}})
        .to_string(),
    );
    busybox_pod(env, client_ns, "resolver", "exec sleep 3600");
    eventually_sync("pod db-0 to exist", T, || {
        let out = kubectl(&env.tenant(), &["get", "-n", ns, "pod", "db-0"], None);
        if out.status.success() {
            Ok(())
        } else {
            Err(text(&out).1)
        }
    });
    wait_ready(env, ns, "db-0");
    wait_ready(env, client_ns, "resolver");
    let dns_ip = tenant_ok(
        env,
        &[
            "get",
            "-n",
            "kube-system",
            "svc",
            "kube-dns",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
    );
    let db_ip = tenant_ok(
        env,
        &[
            "get",
            "-n",
            ns,
            "pod",
            "db-0",
            "-o",
            "jsonpath={.status.podIP}",
        ],
    );
    let exec = |args: &[&str]| {
        let mut all = vec!["exec", "-n", client_ns, "resolver", "--", "timeout", "10"];
        all.extend_from_slice(args);
        let out = kubectl(&env.tenant(), &all, None);
        let (stdout, stderr) = text(&out);
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!("{stdout}{stderr}"))
        }
    };
    let resolv = exec(&["cat", "/etc/resolv.conf"]).unwrap();
    assert!(resolv.contains(&format!("nameserver {dns_ip}")), "{resolv}");
    assert!(
        resolv.contains(&format!(
            "search {client_ns}.svc.cluster.local svc.cluster.local cluster.local"
        )),
        "{resolv}"
    );
    assert!(resolv.contains("ndots:5"), "{resolv}");
    for name in [
        format!("db.{ns}.svc.cluster.local"),
        format!("db-0.db.{ns}.svc.cluster.local"),
    ] {
        eventually_sync(&format!("{name} -> {db_ip} in the pod"), T, || {
            let out = exec(&["nslookup", &name])?;
            if out.contains(&format!("Address: {db_ip}")) {
                Ok(())
            } else {
                Err(out)
            }
        });
    }
    // The libc resolver of the pod expands `db-0.db.dnsdb` through the
    // search path and fetches from the StatefulSet pod by name.
    let url = format!("http://db-0.db.{ns}:8080/");
    let body = eventually_sync("wget by a short name across namespaces", T, || {
        let out = exec(&["wget", "-qO-", &url])?;
        if out.trim() == "db-0" {
            Ok(out)
        } else {
            Err(out)
        }
    });
    assert_eq!(body.trim(), "db-0");
}

fn image_dir() -> String {
    std::env::var("VCLUSTER_IMAGE_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target/images").to_owned())
}

fn main() {
    let args = Arguments::from_args();
    list_or_check(&args, &[TESTS, LAST]);
    let before = machine();
    let images = image_dir();
    let stack = DevStack::up(&["--nodes", "1", "--real-nodes", "1", "--image-dir", &images]);
    println!(
        "dev up --real-nodes 1: ready in {:.1}s",
        stack.up_time.as_secs_f64()
    );
    for name in ["node-kubelet", "node-containerd", "node-kube-proxy"] {
        if let Some(p) = stack.state.processes.iter().find(|p| p.name == name) {
            let rss = std::fs::read_to_string(format!("/proc/{}/status", p.pid))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .map(|l| l.trim_start_matches("VmRSS:").trim().to_owned())
                })
                .unwrap_or_default();
            println!("{name}: RSS {rss} at ready");
        }
    }
    let env = Arc::new(Env { stack, before });
    let mut failed = run_groups(&args, &env, &[(TESTS, None), (LAST, Some(1))]);
    if failed > 0 {
        eprintln!("{}", logs(env.stack.dir.path()));
    }
    let mut env = Arc::try_unwrap(env).ok().unwrap();
    // Teardown leaves nothing: processes, ports, namespaces, mounts, cgroups,
    // and the machine's network, firewall and sysctls as they were.
    let state = env.stack.state.clone();
    let dir = env.stack.dir.path().to_owned();
    let holder = state
        .processes
        .iter()
        .find(|p| p.name == "node-namespaces")
        .unwrap()
        .pid;
    let netns = std::fs::metadata(format!("/proc/{holder}/ns/net")).map(|m| {
        use std::os::unix::fs::MetadataExt as _;
        m.ino()
    });
    let out = env.stack.down();
    assert!(out.status.success(), "dev down: {:?}", text(&out));
    let teardown = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert_gone(&state, Duration::from_secs(30));
        let left = vcluster::local::node::leftovers(&dir, None);
        assert!(left.is_empty(), "left behind: {left:#?}");
        let netns = netns.as_ref().unwrap();
        let in_netns: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| {
                use std::os::unix::fs::MetadataExt as _;
                std::fs::metadata(e.path().join("ns/net")).is_ok_and(|m| m.ino() == *netns)
            })
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            in_netns.is_empty(),
            "processes still in the node's network namespace: {in_netns:?}"
        );
        assert_eq!(machine(), env.before, "the machine changed");
    }));
    match teardown {
        Ok(()) => println!("teardown: nothing left"),
        Err(_) => failed += 1,
    }
    if failed > 0 {
        std::process::exit(101);
    }
}
