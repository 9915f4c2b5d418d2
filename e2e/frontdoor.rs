//! End-to-end tests of the front door: one dev stack (`vcluster dev up`, whose
//! syncer serves the front door) used with the machine's kubectl and
//! `vcluster connect|list|delete`. Each test works in its own virtual
//! namespace.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod abuse;
mod common;
mod http2;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::Api;
use libtest_mimic::Arguments;

const T: Duration = Duration::from_secs(60);
const VC: &str = "dev";
const HOST_NS: &str = "vcluster-dev";

struct Env {
    stack: DevStack,
}

impl Env {
    /// The tenant kubeconfig: the front door.
    fn kc(&self) -> PathBuf {
        self.stack
            .state
            .front_door
            .as_ref()
            .unwrap()
            .kubeconfig
            .clone()
    }
    fn host_kc(&self) -> PathBuf {
        self.stack.host_kubeconfig()
    }
    fn server(&self) -> String {
        self.stack.state.front_door.as_ref().unwrap().server.clone()
    }
}

fn kubectl_err(kc: &Path, args: &[&str]) -> String {
    let out = kubectl(kc, args, None);
    let (stdout, stderr) = text(&out);
    assert!(
        !out.status.success(),
        "kubectl {args:?} should fail: {stdout}"
    );
    stderr
}

/// A pod in virtual namespace `ns`, once Running (synced to the host); the
/// virtual node it is bound to.
fn running_pod(env: &Env, ns: &str, name: &str) -> String {
    let _ = kubectl(&env.kc(), &["create", "namespace", ns], None);
    kubectl_ok(
        &env.kc(),
        &["-n", ns, "run", name, "--image=nginx:1.27", "--port=80"],
        None,
    );
    eventually_sync(&format!("pod {ns}/{name} running"), T, || {
        let out = kubectl(
            &env.kc(),
            &[
                "-n",
                ns,
                "get",
                "pod",
                name,
                "-o",
                "jsonpath={.status.phase} {.spec.nodeName}",
            ],
            None,
        );
        let (o, e) = text(&out);
        match o.split_once(' ') {
            Some(("Running", node)) => Ok(node.to_owned()),
            _ => Err(format!("{o} {e}")),
        }
    })
}

/// A kubeconfig file for the front door authenticating with `token` only.
fn front_door_token_kubeconfig(env: &Env, token: &str, file: &str) -> PathBuf {
    token_kubeconfig(&env.kc(), token, env.stack.dir.path().join(file))
}

/// A kube client for the front door with the given token (or none), trusting
/// its serving CA.
async fn bare_client(env: &Env, token: Option<&str>) -> kube::Client {
    let mut kc = kube::config::Kubeconfig::read_from(env.kc()).unwrap();
    let user = kc.auth_infos[0].auth_info.as_mut().unwrap();
    user.client_certificate_data = None;
    user.client_key_data = None;
    user.token = token.map(|t| t.to_owned().into());
    vcluster::kubeconfig::client(kc).await.unwrap()
}

async fn status_of(client: &kube::Client, method: &str, path: &str) -> (u16, String) {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .body(Vec::new())
        .unwrap();
    match client.request_text(req).await {
        Ok(body) => (200, body),
        Err(kube::Error::Api(s)) => (s.code, format!("{} {}", s.reason, s.message)),
        Err(e) => (0, e.to_string()),
    }
}

fn dev_up_points_vcluster_kubeconfig_at_the_front_door(env: &Env) {
    let fd = env.stack.state.front_door.as_ref().unwrap();
    assert_eq!(
        fd.kubeconfig,
        env.stack.dir.path().join("vcluster.kubeconfig")
    );
    let kc = kube::config::Kubeconfig::read_from(&fd.kubeconfig).unwrap();
    assert_eq!(
        kc.clusters[0].cluster.as_ref().unwrap().server.as_deref(),
        Some(fd.server.as_str())
    );
    let who = kubectl_ok(&env.kc(), &["auth", "whoami", "-o", "json"], None);
    assert!(
        who.contains("vcluster-admin") && who.contains("system:masters"),
        "{who}"
    );
    let out = vcluster(&["dev", "status", "--state-dir", env.stack.state_dir()]);
    let (stdout, _) = text(&out);
    assert!(out.status.success(), "{stdout}");
    let line = stdout.lines().find(|l| l.contains("front door")).unwrap();
    assert!(
        line.contains(&fd.server) && line.contains("ready"),
        "{line}"
    );
}

fn kubectl_get_apply_watch_delete(env: &Env) {
    let kc = env.kc();
    let ns = "crud";
    kubectl_ok(&kc, &["create", "namespace", ns], None);
    kubectl_ok(
        &kc,
        &["-n", ns, "apply", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: first\ndata:\n  k: v1\n"),
    );
    let got = kubectl_ok(
        &kc,
        &[
            "-n",
            ns,
            "get",
            "configmap",
            "first",
            "-o",
            "jsonpath={.data.k}",
        ],
        None,
    );
    assert_eq!(got, "v1");
    // A watch streams through the front door: events arrive while it runs.
    let mut watch = Streaming::spawn(Command::new("kubectl").arg("--kubeconfig").arg(&kc).args([
        "-n",
        ns,
        "get",
        "configmaps",
        "-w",
        "--output-watch-events",
        "-o",
        "name",
    ]));
    watch.wait_for_line_within(T, "the watch's initial list", |l| l == "configmap/first");
    kubectl_ok(
        &kc,
        &["-n", ns, "apply", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: second\n"),
    );
    watch.wait_for_line_within(T, "second to be added", |l| l == "configmap/second");
    kubectl_ok(&kc, &["-n", ns, "delete", "configmap", "first"], None);
    // The deletion is one more event for first.
    eventually_sync("first to be deleted", T, || {
        let n = watch.count(|l| l == "configmap/first");
        if n >= 2 {
            Ok(())
        } else {
            Err(format!("{n} events"))
        }
    });
    let left = kubectl_ok(&kc, &["-n", ns, "get", "configmaps", "-o", "name"], None);
    assert!(
        !left.contains("configmap/first") && left.contains("configmap/second"),
        "{left}"
    );
}

fn unauthenticated_requests_get_401(env: &Env) {
    block_on(async {
        for token in [None, Some("not-a-valid-token")] {
            let c = bare_client(env, token).await;
            let (code, body) = status_of(&c, "GET", "/api/v1/namespaces").await;
            assert_eq!(code, 401, "{token:?}: {body}");
            assert!(body.starts_with("Unauthorized"), "{body}");
            // The redirected subresources are no way around it.
            let (code, _) = status_of(&c, "GET", "/api/v1/namespaces/default/pods/x/log").await;
            assert_eq!(code, 401);
        }
    });
    let bogus = front_door_token_kubeconfig(env, "bogus", "bogus.kubeconfig");
    let err = kubectl_err(&bogus, &["get", "pods"]);
    // kubectl words a 401 in one of two ways, depending on which of its
    // requests (discovery or the list) met it first.
    assert!(err.contains("You must be logged in to the server"), "{err}");
}

fn service_account_tokens_and_virtual_rbac(env: &Env) {
    let kc = env.kc();
    let ns = "rbac";
    running_pod(env, ns, "app");
    kubectl_ok(&kc, &["-n", ns, "create", "serviceaccount", "reader"], None);
    let token = kubectl_ok(&kc, &["-n", ns, "create", "token", "reader"], None);
    let token = token.trim();
    let reader_kc = front_door_token_kubeconfig(env, token, "reader.kubeconfig");
    let as_reader = |args: &[&str]| kubectl(&reader_kc, args, None);
    // Authenticated by TokenReview, denied by the virtual cluster's RBAC.
    let out = as_reader(&[
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username}",
    ]);
    assert_eq!(
        text(&out).0,
        "system:serviceaccount:rbac:reader",
        "{}",
        text(&out).1
    );
    let out = as_reader(&["-n", ns, "get", "pods"]);
    let (_, err) = text(&out);
    assert!(!out.status.success() && err.contains("forbidden"), "{err}");
    let out = as_reader(&["-n", ns, "logs", "app"]);
    let (_, err) = text(&out);
    assert!(!out.status.success() && err.contains("forbidden"), "{err}");
    kubectl_ok(
        &kc,
        &[
            "-n",
            ns,
            "create",
            "rolebinding",
            "reader-view",
            "--clusterrole=view",
            "--serviceaccount=rbac:reader",
        ],
        None,
    );
    eventually_sync("view to apply", T, || {
        let out = as_reader(&["-n", ns, "get", "pods", "-o", "name"]);
        let (o, e) = text(&out);
        if o.contains("pod/app") {
            Ok(())
        } else {
            Err(e)
        }
    });
    let logs = text(&as_reader(&["-n", ns, "logs", "app"])).0;
    assert!(logs.contains("hello from the host node agent"), "{logs}");
    // view may read logs but not exec: the SubjectAccessReview says no.
    let out = as_reader(&["-n", ns, "exec", "app", "--", "echo", "hi"]);
    let (_, err) = text(&out);
    assert!(!out.status.success(), "exec as a viewer succeeded");
    assert!(
        err.contains("cannot create resource \"pods/exec\"") && err.contains("forbidden"),
        "{err}"
    );
}

fn logs_exec_and_port_forward_reach_the_synced_pod(env: &Env) {
    let kc = env.kc();
    let ns = "stream";
    running_pod(env, ns, "web");
    let logs = kubectl_ok(&kc, &["-n", ns, "logs", "web"], None);
    assert!(
        logs.contains("hello from the host node agent (kwok)"),
        "{logs}"
    );
    let logs = kubectl_ok(
        &kc,
        &["-n", ns, "logs", "web", "-c", "web", "--tail=1"],
        None,
    );
    assert!(logs.contains("hello from the host node agent"), "{logs}");
    // kwok runs the command for the host pod: the output comes back up.
    let out = kubectl_ok(
        &kc,
        &[
            "-n", ns, "exec", "web", "--", "echo", "hello", "through", "exec",
        ],
        None,
    );
    assert_eq!(out.trim(), "hello through exec");
    let out = kubectl_ok(
        &kc,
        &["-n", ns, "exec", "-i", "web", "--", "head", "-n1"],
        Some("piped stdin\n"),
    );
    assert_eq!(out.trim(), "piped stdin");
    // kwok forwards the pod's port 80 to the syncer's health endpoint.
    let mut pf = Streaming::spawn(Command::new("kubectl").arg("--kubeconfig").arg(&kc).args([
        "-n",
        ns,
        "port-forward",
        "pod/web",
        ":80",
    ]));
    let line = pf.wait_for_line_within(T, "port-forward to listen", |l| {
        l.starts_with("Forwarding from 127.0.0.1:")
    });
    let port: u16 = line
        .trim_start_matches("Forwarding from 127.0.0.1:")
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        http_ok_blocking(port, "/healthz"),
        "GET /healthz through the port-forward"
    );
    // A pod that does not exist is reported as such.
    let err = kubectl_err(&kc, &["-n", ns, "logs", "nope"]);
    assert!(err.contains("not found"), "{err}");
}

fn crafted_paths_reach_no_other_host_object(env: &Env) {
    let ns = "crafted";
    running_pod(env, ns, "web");
    // A foreign host pod under the very name the syncer would use for
    // virtual pod crafted/trap: it is not this vcluster's, so nothing reaches it.
    let trap_host = vcluster::translate::host_name(
        &vcluster::translate::VclusterName::new(VC).unwrap(),
        ns,
        "trap",
    );
    kubectl_ok(
        &env.host_kc(),
        &["-n", HOST_NS, "run", &trap_host, "--image=foreign"],
        None,
    );
    kubectl_ok(&env.kc(), &["-n", ns, "run", "trap", "--image=nginx"], None);
    block_on(async {
        let admin = client(&env.kc()).await;
        let host = client(&env.host_kc()).await;
        // The host pod for web is ours: the canonical path works. The host
        // pod under trap's name is foreign: it must not be reached.
        for (pod, want) in [("web", 200), ("trap", 404)] {
            let path = format!("/api/v1/namespaces/{ns}/pods/{pod}/log");
            let (code, body) = status_of(&admin, "GET", &path).await;
            assert_eq!(code, want, "{path}: {body}");
        }
        for path in [
            format!("/api/v1/namespaces/{ns}/pods/web%2Flog"),
            format!("/api/v1/namespaces/{ns}/pods/..%2F..%2F{HOST_NS}%2Fpods%2F{VC}-0/log"),
            format!("/api/v1/namespaces/{ns}/pods/web/../{VC}-0/log"),
            format!("/api/v1/namespaces/{ns}/pods/%2e%2e/{VC}-0/exec"),
            format!("/api/v1/namespaces/{ns}//pods/web/log"),
            format!("/api/v1/namespaces/{ns}/pods/web/log/"),
            format!("/api/v1/namespaces/{ns}/pods/web/exec/extra"),
            format!("/api/v1/namespaces/{ns}/pods/web/%6cog"),
            format!("/api/v1/namespaces/{ns}/pods/web/log?insecureSkipTLSVerifyBackend=true"),
            format!("/api/v1/namespaces/{ns}/pods/web/portforward?ports=80&namespace={HOST_NS}"),
            format!("/api/v1/namespaces/{HOST_NS}/pods/{VC}-0/log"),
            format!("/api/v1/namespaces/{HOST_NS}/pods/{trap_host}/log"),
        ] {
            let (code, body) = status_of(&admin, "GET", &path).await;
            assert!(code == 400 || code == 404, "{path} answered {code}: {body}");
        }
        // The host pods are untouched.
        let hp: Api<Pod> = Api::namespaced(host, HOST_NS);
        assert!(hp.get_opt(&trap_host).await.unwrap().is_some());
    });
}

fn node_proxy_gets_a_clear_refusal(env: &Env) {
    let kc = env.kc();
    let node = running_pod(env, "nodeproxy", "web");
    assert!(!node.is_empty(), "the pod is bound to a virtual node");
    for path in [
        format!("/api/v1/nodes/{node}/proxy/stats/summary"),
        format!("/api/v1/nodes/{node}:10250/proxy/metrics"),
        format!("/api/v1/nodes/{node}/proxy/"),
    ] {
        let err = kubectl_err(&kc, &["get", "--raw", &path]);
        assert!(
            err.contains("Forbidden")
                && err.contains(&format!(
                    "nodes \"{node}\": the node proxy is not served in a virtual cluster"
                )),
            "{path}: {err}"
        );
        assert!(!err.contains("no such host"), "{path}: {err}");
    }
    // The Node itself still reads.
    kubectl_ok(&kc, &["get", "node", &node], None);
}

fn serving_identity_survives_a_restart(env: &Env) {
    let pki = env.stack.dir.path().join("vcluster/pki");
    let port = free_port();
    let args = [
        format!("--client-ca-cert={}", pki.join("ca.crt").display()),
        format!("--client-ca-key={}", pki.join("ca.key").display()),
        format!("--front-door-listen=127.0.0.1:{port}"),
        format!("--kubeconfig-server=https://127.0.0.1:{port}"),
        // Only ConfigMaps and Secrets: this second syncer shares the virtual
        // cluster with the stack's own and must not compete for its pods.
        "--sync=configmaps,secrets".to_owned(),
        "--sync-all-configs".to_owned(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let kubeconfig_of = || {
        block_on_value(async {
            let host = client(&env.host_kc()).await;
            let s: Secret = Api::namespaced(host, "team-restart")
                .get("vc-restart")
                .await
                .unwrap();
            String::from_utf8(s.data.unwrap()["config"].0.clone()).unwrap()
        })
    };
    let mut first = SyncerProcess::start_with(&env.stack, "restart", "team-restart", &args);
    let kc_path = env.stack.dir.path().join("restart.kubeconfig");
    eventually_sync("the first front door", T, || {
        std::fs::write(&kc_path, kubeconfig_of()).unwrap();
        let out = kubectl(&kc_path, &["get", "--raw", "/version"], None);
        if out.status.success() {
            Ok(())
        } else {
            Err(text(&out).1)
        }
    });
    first.kill();
    let _second = SyncerProcess::start_with(&env.stack, "restart", "team-restart", &args);
    // The kubeconfig written before the restart still verifies the new
    // serving certificate: the CA came back from the host Secret.
    eventually_sync("the second front door with the old kubeconfig", T, || {
        let out = kubectl(&kc_path, &["get", "--raw", "/version"], None);
        if out.status.success() {
            Ok(())
        } else {
            Err(text(&out).1)
        }
    });
    assert_eq!(std::fs::read_to_string(&kc_path).unwrap(), kubeconfig_of());
}

fn connect_list_and_delete(env: &Env) {
    let host_kc = env.host_kc();
    let host = host_kc.to_str().unwrap();
    let out = vcluster(&["list", "--kubeconfig", host]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let row = stdout
        .lines()
        .find(|l| l.starts_with("dev "))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(row.contains(HOST_NS) && row.contains("Running"), "{row}");

    // connect: port-forward through the host API to the vcluster pod (KWOK
    // forwards its port 8443 to the front door), context merged into a file.
    let out_kc = env.stack.dir.path().join("connect.kubeconfig");
    let connect_dev = |extra: &[&str]| {
        let mut a = vec!["connect", VC, "-n", HOST_NS, "--kubeconfig", host];
        a.extend_from_slice(extra);
        a.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let mut connect = Streaming::spawn(Command::new(vcluster_bin()).args(connect_dev(&[
        "--update-kubeconfig",
        out_kc.to_str().unwrap(),
        "--switch-context",
    ])));
    connect.wait_for_line_within(T, "connect to forward", |l| {
        l.starts_with("forwarding https://127.0.0.1:")
    });
    let ctx = format!("vcluster_{VC}_{HOST_NS}");
    let current = kubectl_ok(&out_kc, &["config", "current-context"], None);
    assert_eq!(current.trim(), ctx);
    let ns = kubectl_ok(&out_kc, &["get", "namespaces", "-o", "name"], None);
    assert!(ns.contains("namespace/default"), "{ns}");
    drop(connect);

    // --print with a reachable URL: no forward, the kubeconfig on stdout.
    let args = connect_dev(&["--print", "--server", &env.server()]);
    let out = vcluster(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let (printed, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let printed_path = env.stack.dir.path().join("printed.kubeconfig");
    std::fs::write(&printed_path, &printed).unwrap();
    kubectl_ok(&printed_path, &["get", "--raw", "/version"], None);

    // Clear messages: missing, not ready, no host permission.
    let out = vcluster(&["connect", "nope", "-n", HOST_NS, "--kubeconfig", host]);
    let (_, err) = text(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("vcluster nope not found in namespace vcluster-dev"),
        "{err}"
    );
    kubectl_ok(
        &env.host_kc(),
        &["create", "namespace", "team-pending"],
        None,
    );
    kubectl_ok(
        &env.host_kc(),
        &["-n", "team-pending", "apply", "-f", "-"],
        Some(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: vc-pending\n  labels: {{vcluster.dev/instance: pending, vcluster.dev/component: kubeconfig}}\nstringData:\n  config: |\n{}",
            std::fs::read_to_string(env.kc())
                .unwrap()
                .lines()
                .map(|l| format!("    {l}\n"))
                .collect::<String>()
        )),
    );
    kubectl_ok(
        &env.host_kc(),
        &["-n", "team-pending", "apply", "-f", "-"],
        Some(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: pending-0\n  labels: {vcluster.dev/instance: pending, vcluster.dev/component: control-plane}\nspec:\n  nodeSelector: {no-such: node}\n  containers: [{name: c, image: x}]\n",
        ),
    );
    let out = vcluster(&[
        "connect",
        "pending",
        "-n",
        "team-pending",
        "--kubeconfig",
        host,
    ]);
    let (_, err) = text(&out);
    assert!(
        err.contains(
            "vcluster pending in namespace team-pending is not ready: pod pending-0 is Pending"
        ),
        "{err}"
    );
    let out = vcluster(&["list", "-n", "team-pending", "--kubeconfig", host]);
    assert!(text(&out).0.contains("Pending"), "{}", text(&out).0);
    // A host user without rights.
    kubectl_ok(
        &env.host_kc(),
        &["-n", "team-pending", "create", "serviceaccount", "nobody"],
        None,
    );
    let token = kubectl_ok(
        &env.host_kc(),
        &["-n", "team-pending", "create", "token", "nobody"],
        None,
    );
    let nobody = env.stack.dir.path().join("nobody.kubeconfig");
    let mut kc = kube::config::Kubeconfig::read_from(env.host_kc()).unwrap();
    let user = kc.auth_infos[0].auth_info.as_mut().unwrap();
    user.client_certificate_data = None;
    user.client_key_data = None;
    user.token = Some(token.trim().to_owned().into());
    std::fs::write(&nobody, vcluster::kubeconfig::to_yaml(&kc).unwrap()).unwrap();
    let out = vcluster(&[
        "connect",
        VC,
        "-n",
        HOST_NS,
        "--kubeconfig",
        nobody.to_str().unwrap(),
    ]);
    let (_, err) = text(&out);
    assert!(
        err.contains("the host does not allow you to read Secret vc-dev in namespace vcluster-dev"),
        "{err}"
    );

    // delete: the release, its own objects and what its syncer created.
    let out = vcluster(&[
        "delete",
        "pending",
        "-n",
        "team-pending",
        "--kubeconfig",
        host,
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("vcluster pending in namespace team-pending deleted"),
        "{stdout}"
    );
    kubectl_ok(
        &env.host_kc(),
        &["-n", "team-pending", "apply", "-f", "-"],
        Some(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: synced-x-a-x-gone\n  labels: {vcluster.dev/owner: gone}\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: sh.helm.release.v1.gone.v1\n  labels: {owner: helm, name: gone}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: gone\n  labels: {vcluster.dev/instance: gone, vcluster.dev/component: api}\nspec:\n  ports: [{port: 443}]\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: unrelated\n",
        ),
    );
    let out = vcluster(&["delete", "gone", "-n", "team-pending", "--kubeconfig", host]);
    assert!(out.status.success(), "{}", text(&out).1);
    let left = kubectl_ok(
        &env.host_kc(),
        &[
            "-n",
            "team-pending",
            "get",
            "configmaps,secrets,services,pods",
            "-o",
            "name",
        ],
        None,
    );
    for gone in [
        "synced-x-a-x-gone",
        "sh.helm.release.v1.gone.v1",
        "service/gone",
        "vc-pending",
        "pending-0",
    ] {
        assert!(!left.contains(gone), "{gone} left: {left}");
    }
    assert!(left.contains("configmap/unrelated"), "{left}");
    let out = vcluster(&["delete", "gone", "-n", "team-pending", "--kubeconfig", host]);
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("vcluster gone not found"),
        "{}",
        text(&out).1
    );
}

fn helm_installs_and_uninstalls_through_the_front_door(env: &Env) {
    let chart = env.stack.dir.path().join("demo-chart");
    std::fs::create_dir_all(chart.join("templates")).unwrap();
    std::fs::write(
        chart.join("Chart.yaml"),
        "apiVersion: v2\nname: demo\nversion: 0.1.0\n",
    )
    .unwrap();
    std::fs::write(
        chart.join("templates/cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-settings\ndata:\n  colour: {{ .Values.colour | default \"blue\" }}\n",
    )
    .unwrap();
    let helm = |args: &[&str]| {
        let out = Command::new(vcluster::local::default_bin_dir().join("helm"))
            .arg("--kubeconfig")
            .arg(env.kc())
            .args(args)
            .env("HELM_CACHE_HOME", env.stack.dir.path().join("helm-cache"))
            .env("HELM_CONFIG_HOME", env.stack.dir.path().join("helm-config"))
            .env("HELM_DATA_HOME", env.stack.dir.path().join("helm-data"))
            .output()
            .unwrap();
        let (o, e) = text(&out);
        assert!(out.status.success(), "helm {args:?}: {o}{e}");
        o
    };
    helm(&[
        "install",
        "demo",
        chart.to_str().unwrap(),
        "-n",
        "helm",
        "--create-namespace",
        "--wait",
    ]);
    let colour = kubectl_ok(
        &env.kc(),
        &[
            "-n",
            "helm",
            "get",
            "configmap",
            "demo-settings",
            "-o",
            "jsonpath={.data.colour}",
        ],
        None,
    );
    assert_eq!(colour, "blue");
    let listed = helm(&["list", "-n", "helm", "-q"]);
    assert_eq!(listed.trim(), "demo");
    helm(&["uninstall", "demo", "-n", "helm", "--wait"]);
    let left = kubectl_ok(
        &env.kc(),
        &["-n", "helm", "get", "configmaps", "-o", "name"],
        None,
    );
    assert!(!left.contains("demo-settings"), "{left}");
}

fn block_on_value<T>(f: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

const TESTS: &[Test<Env>] = &[
    (
        "dev_up_points_vcluster_kubeconfig_at_the_front_door",
        dev_up_points_vcluster_kubeconfig_at_the_front_door,
    ),
    (
        "kubectl_get_apply_watch_delete",
        kubectl_get_apply_watch_delete,
    ),
    (
        "unauthenticated_requests_get_401",
        unauthenticated_requests_get_401,
    ),
    (
        "service_account_tokens_and_virtual_rbac",
        service_account_tokens_and_virtual_rbac,
    ),
    (
        "logs_exec_and_port_forward_reach_the_synced_pod",
        logs_exec_and_port_forward_reach_the_synced_pod,
    ),
    (
        "crafted_paths_reach_no_other_host_object",
        crafted_paths_reach_no_other_host_object,
    ),
    (
        "node_proxy_gets_a_clear_refusal",
        node_proxy_gets_a_clear_refusal,
    ),
    (
        "serving_identity_survives_a_restart",
        serving_identity_survives_a_restart,
    ),
    ("connect_list_and_delete", connect_list_and_delete),
    (
        "helm_installs_and_uninstalls_through_the_front_door",
        helm_installs_and_uninstalls_through_the_front_door,
    ),
    (
        "http2_is_chosen_and_serves_as_http1_does",
        http2::http2_is_chosen_and_serves_as_http1_does,
    ),
];

/// Run alone: it measures the syncer's memory and connections.
const WATCHES: &[Test<Env>] = &[(
    "http2_five_hundred_watches_on_one_connection",
    http2::five_hundred_watches_on_one_connection,
)];

const ABUSE: &[Test<Env>] = &[
    (
        "slow_and_idle_clients_are_cut_off",
        abuse::slow_and_idle_clients_are_cut_off,
    ),
    ("oversized_bodies_get_413", abuse::oversized_bodies_get_413),
    (
        "bad_client_certificates_are_refused",
        abuse::bad_client_certificates_are_refused,
    ),
    (
        "foreign_tokens_and_impersonation_are_refused",
        abuse::foreign_tokens_and_impersonation_are_refused,
    ),
];

/// Run alone, after the abuse cases: it fills the front door to its cap.
const CAP: &[Test<Env>] = &[(
    "connections_over_the_cap_are_closed_at_once",
    abuse::connections_over_the_cap_are_closed_at_once,
)];

fn main() {
    let args = Arguments::from_args();
    list_or_check(&args, &[TESTS, WATCHES, ABUSE, CAP]);
    let cap = abuse::CONNECTION_CAP.to_string();
    let env = Arc::new(Env {
        stack: DevStack::up_with_env(&[], &[("VCLUSTER_FRONT_DOOR_MAX_CONNECTIONS", &cap)]),
    });
    // The abuse cases hold connections open for a while: after the others
    // (one of which restarts the front door).
    let failed = run_groups(
        &args,
        &env,
        &[
            (TESTS, None),
            (WATCHES, Some(1)),
            (ABUSE, None),
            (CAP, Some(1)),
        ],
    );
    if failed > 0 {
        eprintln!("{}", logs(env.stack.dir.path()));
    }
    drop(env);
    if failed > 0 {
        std::process::exit(101);
    }
}
