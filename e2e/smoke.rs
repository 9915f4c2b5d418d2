//! End-to-end smoke tests of the local control planes (the embedded default),
//! run against real upstream binaries with the real `vcluster` CLI and the
//! machine's `kubectl`.
//!
//! One stack is shared by the tests of the first group (each isolates itself
//! by namespace); the second group tears stacks down and checks that nothing
//! is left behind.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use libtest_mimic::{Arguments, Trial};
use serde_json::json;

const T: Duration = Duration::from_secs(60);

fn trial(name: &'static str, stack: &Arc<DevStack>, f: fn(&DevStack)) -> Trial {
    let stack = Arc::clone(stack);
    Trial::test(name, move || {
        f(&stack);
        Ok(())
    })
}

async fn create_ns(client: &kube::Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}

fn pinned_kubernetes_version() -> String {
    vcluster::local::pinned_versions()["KUBERNETES_VERSION"].clone()
}

fn apis_answer_with_pinned_version(s: &DevStack) {
    block_on(async {
        for kc in [s.host_kubeconfig(), s.vcluster_kubeconfig()] {
            let c = client(&kc).await;
            let v = c.apiserver_version().await.unwrap();
            assert_eq!(
                v.git_version,
                pinned_kubernetes_version(),
                "{}",
                kc.display()
            );
            let req = http::Request::get("/readyz").body(Vec::new()).unwrap();
            assert_eq!(c.request_text(req).await.unwrap(), "ok");
        }
    });
}

fn kube_rs_creates_namespace_and_configmap(s: &DevStack) {
    block_on(async {
        let host = client(&s.host_kubeconfig()).await;
        let virt = client(&s.vcluster_kubeconfig()).await;
        for (c, ns) in [(&virt, "e2e-kube-rs-virtual"), (&host, "e2e-kube-rs-host")] {
            create_ns(c, ns).await;
            let cm: ConfigMap = serde_json::from_value(json!({
                "metadata": {"name": "settings"},
                "data": {"colour": "blue"}
            }))
            .unwrap();
            let api: Api<ConfigMap> = Api::namespaced(c.clone(), ns);
            api.create(&PostParams::default(), &cm).await.unwrap();
            let back = api.get("settings").await.unwrap();
            assert_eq!(back.data.unwrap()["colour"], "blue");
        }
        // The planes are separate clusters: neither sees the other's namespace.
        let host_ns: Api<Namespace> = Api::all(host.clone());
        let virt_ns: Api<Namespace> = Api::all(virt.clone());
        assert!(
            host_ns
                .get_opt("e2e-kube-rs-virtual")
                .await
                .unwrap()
                .is_none()
        );
        assert!(virt_ns.get_opt("e2e-kube-rs-host").await.unwrap().is_none());
    });
}

fn kubectl_creates_namespace_and_configmap(s: &DevStack) {
    let kc = s.vcluster_kubeconfig();
    kubectl_ok(&kc, &["create", "namespace", "e2e-kubectl"], None);
    let manifest = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: greeting\n  namespace: e2e-kubectl\ndata:\n  hello: world\n";
    let out = kubectl_ok(&kc, &["apply", "-f", "-"], Some(manifest));
    assert!(out.contains("configmap/greeting created"), "{out}");
    let v = kubectl_ok(
        &kc,
        &[
            "-n",
            "e2e-kubectl",
            "get",
            "configmap",
            "greeting",
            "-o",
            "jsonpath={.data.hello}",
        ],
        None,
    );
    assert_eq!(v, "world");
    // And kube-rs reads what kubectl wrote.
    block_on(async {
        let c = client(&kc).await;
        let cm = Api::<ConfigMap>::namespaced(c, "e2e-kubectl")
            .get("greeting")
            .await
            .unwrap();
        assert_eq!(cm.data.unwrap()["hello"], "world");
    });
}

fn pod_phase(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

fn kwok_runs_a_host_pod(s: &DevStack) {
    let kc = s.host_kubeconfig();
    block_on(async {
        let c = client(&kc).await;
        create_ns(&c, "e2e-pods").await;
        let pods: Api<Pod> = Api::namespaced(c.clone(), "e2e-pods");
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {"containers": [{"name": "nginx", "image": "nginx:1.27"}]}
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        let running = eventually("pod web Running", T, || async {
            let p = pods.get("web").await.map_err(|e| e.to_string())?;
            if pod_phase(&p) == "Running" {
                Ok(p)
            } else {
                Err(pod_phase(&p))
            }
        })
        .await;
        let st = running.status.unwrap();
        let ip: std::net::Ipv4Addr = st.pod_ip.unwrap().parse().unwrap();
        assert_eq!(ip.octets()[..2], [10, 244], "pod IP from KWOK's CIDR: {ip}");
        assert_eq!(st.host_ip.as_deref(), Some("127.0.0.1"));
        let node = running.spec.unwrap().node_name.unwrap();
        assert!(node.starts_with("kwok-node-"), "{node}");
        let ready = st
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "True");
        let cs = &st.container_statuses.unwrap()[0];
        assert!(cs.ready && cs.state.as_ref().unwrap().running.is_some());

        // What a user sees with kubectl.
        let wide = kubectl_ok(&kc, &["-n", "e2e-pods", "get", "pods", "-o", "wide"], None);
        assert!(
            wide.contains("Running") && wide.contains(&ip.to_string()) && wide.contains(&node),
            "{wide}"
        );

        // Deleting it ends it as a kubelet would.
        pods.delete("web", &DeleteParams::default()).await.unwrap();
        eventually("pod web to be gone", T, || async {
            match pods.get_opt("web").await.map_err(|e| e.to_string())? {
                None => Ok(()),
                Some(p) => Err(format!("still there, phase {}", pod_phase(&p))),
            }
        })
        .await;
    });
}

fn kwok_completes_a_job(s: &DevStack) {
    block_on(async {
        let c = client(&s.host_kubeconfig()).await;
        create_ns(&c, "e2e-jobs").await;
        let jobs: Api<Job> = Api::namespaced(c.clone(), "e2e-jobs");
        let job: Job = serde_json::from_value(json!({
            "metadata": {"name": "once"},
            "spec": {"backoffLimit": 0, "template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "main", "image": "busybox", "command": ["true"]}]
            }}}
        }))
        .unwrap();
        jobs.create(&PostParams::default(), &job).await.unwrap();
        eventually("job once Complete", T, || async {
            let j = jobs.get("once").await.map_err(|e| e.to_string())?;
            let st = j.status.unwrap_or_default();
            let complete = st
                .conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Complete" && c.status == "True");
            if complete && st.succeeded == Some(1) {
                Ok(())
            } else {
                Err(format!("succeeded={:?}", st.succeeded))
            }
        })
        .await;
    });
}

fn kwok_renews_node_leases(s: &DevStack) {
    block_on(async {
        let c = client(&s.host_kubeconfig()).await;
        let nodes = Api::<Node>::all(c.clone())
            .list(&ListParams::default().labels("type=kwok"))
            .await
            .unwrap();
        assert_eq!(nodes.items.len(), s.state.nodes as usize);
        let leases: Api<Lease> = Api::namespaced(c.clone(), "kube-node-lease");
        for n in &nodes.items {
            let name = n.metadata.name.clone().unwrap();
            let renew = |l: Lease| l.spec.and_then(|s| s.renew_time).map(|t| t.0);
            let first = eventually("node lease to exist", T, || async {
                let l = leases.get_opt(&name).await.map_err(|e| e.to_string())?;
                l.and_then(renew).ok_or_else(|| "no lease yet".to_owned())
            })
            .await;
            eventually("node lease renewal", T, || async {
                let l = leases.get(&name).await.map_err(|e| e.to_string())?;
                match renew(l) {
                    Some(t) if t > first => Ok(()),
                    other => Err(format!("renewTime {other:?}")),
                }
            })
            .await;
        }
    });
}

fn virtual_plane_runs_controllers_without_scheduler(s: &DevStack) {
    block_on(async {
        let c = client(&s.vcluster_kubeconfig()).await;
        create_ns(&c, "e2e-deploy").await;
        let deploys: Api<Deployment> = Api::namespaced(c.clone(), "e2e-deploy");
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "nginx", "image": "nginx"}]}}
            }
        }))
        .unwrap();
        deploys.create(&PostParams::default(), &d).await.unwrap();
        let pods: Api<Pod> = Api::namespaced(c.clone(), "e2e-deploy");
        // The controller-manager's ReplicaSet controller makes the pods ...
        let made = eventually("2 pods from the deployment", T, || async {
            let l = pods
                .list(&ListParams::default().labels("app=web"))
                .await
                .map_err(|e| e.to_string())?;
            if l.items.len() == 2 {
                Ok(l.items)
            } else {
                Err(format!("{} pods", l.items.len()))
            }
        })
        .await;
        // ... and nothing in the virtual plane schedules them: that is the host's job.
        for p in made {
            assert_eq!(pod_phase(&p), "Pending");
            assert!(p.spec.unwrap().node_name.is_none());
        }
        assert!(
            Api::<Node>::all(c)
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .is_empty()
        );
    });
}

fn dev_status_reports_ready(s: &DevStack) {
    let out = vcluster(&["dev", "status", "--state-dir", s.state_dir()]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.lines().next().unwrap().ends_with(": ready"),
        "{stdout}"
    );
    for name in [
        "host-etcd",
        "host-kube-apiserver",
        "host-kube-controller-manager",
        "host-kube-scheduler",
        "host-kwok",
        "vcluster-etcd",
        "vcluster-kube-apiserver",
        "vcluster-kube-controller-manager",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("{name} in {stdout}"));
        assert!(line.ends_with("running"), "{line}");
    }
}

fn assert_one_line_error(out: &std::process::Output, needle: &str) {
    let (stdout, stderr) = text(out);
    assert!(
        !out.status.success(),
        "expected failure, got success: {stdout}"
    );
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line expected:\n{stderr}"
    );
    assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn second_up_on_a_running_stack_is_refused(s: &DevStack) {
    for detach in [true, false] {
        let mut args = vec!["dev", "up", "--state-dir", s.state_dir()];
        if detach {
            args.push("--detach");
        }
        assert_one_line_error(&vcluster(&args), "already running");
    }
    // The running stack is untouched.
    let out = vcluster(&["dev", "status", "--state-dir", s.state_dir()]);
    assert!(out.status.success(), "{:?}", text(&out));
}

fn missing_binaries_name_the_make_target(_: &DevStack) {
    let empty = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    for detach in [true, false] {
        let mut args = vec![
            "dev",
            "up",
            "--bin-dir",
            empty.path().to_str().unwrap(),
            "--state-dir",
            state.path().to_str().unwrap(),
        ];
        if detach {
            args.push("--detach");
        }
        let out = vcluster(&args);
        assert_one_line_error(&out, "etcd not found in");
        assert_one_line_error(&out, "make kube-bins");
    }
    assert!(!state.path().join("stack.json").exists());
}

fn port_in_use_is_named(_: &DevStack) {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let state = tempfile::tempdir().unwrap();
    let out = vcluster(&[
        "dev",
        "up",
        "--detach",
        "--host-api-port",
        &port.to_string(),
        "--state-dir",
        state.path().to_str().unwrap(),
    ]);
    assert_one_line_error(&out, &format!("port {port} on 127.0.0.1 is already in use"));
    assert!(
        !state.path().join("stack.json").exists(),
        "no state left after a failed start"
    );
}

fn stale_state_dir_is_named_and_cleaned(_: &DevStack) {
    let state = tempfile::tempdir().unwrap();
    let dir = state.path();
    let mut st = vcluster::local::StackState::new(dir, 1);
    st.supervisor_pid = 4_000_000; // above pid_max: never a live process
    st.save().unwrap();
    let args = [
        "dev",
        "up",
        "--detach",
        "--state-dir",
        dir.to_str().unwrap(),
    ];
    assert_one_line_error(&vcluster(&args), "stale state directory");
    let status = vcluster(&["dev", "status", "--state-dir", dir.to_str().unwrap()]);
    assert!(!status.status.success());
    assert!(text(&status).0.contains("stale"));
    let down = vcluster(&["dev", "down", "--state-dir", dir.to_str().unwrap()]);
    assert!(down.status.success(), "{:?}", text(&down));
    assert!(!dir.join("stack.json").exists());
}

fn usage_mistakes_are_one_line(_: &DevStack) {
    let out = vcluster(&["dev", "up", "--nodes", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert_one_line_error(&out, "--nodes");
    let out = vcluster(&["dev", "launch"]);
    assert_eq!(out.status.code(), Some(2));
    assert_one_line_error(&out, "launch");
    let syncer = |name: &str, extra: &[&str]| {
        let mut args = vec![
            "syncer",
            "--name",
            name,
            "--host-namespace",
            "a",
            "--virtual-kubeconfig",
            "/nonexistent/vcluster-e2e.kubeconfig",
            "--host-kubeconfig",
            "/nonexistent/vcluster-e2e.kubeconfig",
        ];
        args.extend_from_slice(extra);
        vcluster(&args)
    };
    assert_one_line_error(
        &syncer("x", &["--sync", "pods"]),
        "pods need configmaps and secrets",
    );
    assert_one_line_error(
        &syncer("Bad_Name", &[]),
        "invalid vcluster name \"Bad_Name\"",
    );
    assert_one_line_error(
        &syncer("x", &[]),
        "cannot read kubeconfig /nonexistent/vcluster-e2e.kubeconfig",
    );
    let out = vcluster(&["dev", "status", "--state-dir", "/nonexistent/vcluster-e2e"]);
    assert_one_line_error(&out, "no dev stack in /nonexistent/vcluster-e2e");
}

// ---- teardown group -------------------------------------------------------

fn dev_down_leaves_nothing_behind(mut s: DevStack) {
    let state = s.state.clone();
    let out = s.down();
    assert!(out.status.success(), "{:?}", text(&out));
    assert_gone(&state, Duration::from_secs(30));
    assert!(!Path::new(s.state_dir()).join("stack.json").exists());
    assert!(
        Path::new(s.state_dir())
            .join("logs/host-kube-apiserver.log")
            .exists(),
        "logs are kept"
    );
}

fn ctrl_c_stops_a_foreground_stack() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(vcluster_bin())
        .args(["dev", "up", "--state-dir", dir.path().to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let state = eventually_sync("foreground stack ready", Duration::from_secs(120), || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("dev up exited early ({status}):\n{}", logs(dir.path()));
        }
        match vcluster::local::StackState::load(dir.path()) {
            Ok(Some(st)) if st.ready => Ok(st),
            _ => Err("not ready".into()),
        }
    });
    assert_eq!(state.supervisor_pid, child.id());
    // `dev up` runs the syncer too, and waits for it to be ready.
    assert!(
        state.processes.iter().any(|p| p.name == "syncer"),
        "{:?}",
        state.processes
    );
    let port = state.syncer_port.expect("syncer health port recorded");
    assert!(
        http_ok_blocking(port, "/readyz"),
        "syncer ready once dev up reports ready"
    );
    vcluster::local::process::signal(child.id(), rustix::process::Signal::INT);
    let status = eventually_sync(
        "dev up to exit after Ctrl-C",
        Duration::from_secs(60),
        || {
            child
                .try_wait()
                .unwrap()
                .ok_or_else(|| "running".to_owned())
        },
    );
    assert!(status.success(), "{status}");
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    assert!(stdout.contains("dev stack ready in"), "{stdout}");
    assert_gone(&state, Duration::from_secs(30));
    assert!(!dir.path().join("stack.json").exists());
}

fn killed_supervisor_takes_its_children_down() {
    let mut s = DevStack::up(&["--nodes", "1", "--no-syncer"]);
    let state = s.state.clone();
    vcluster::local::process::signal(state.supervisor_pid, rustix::process::Signal::KILL);
    // Children end through their parent-death signal, with no help from `dev down`.
    assert_gone(&state, Duration::from_secs(30));
    let status = vcluster(&["dev", "status", "--state-dir", s.state_dir()]);
    assert!(!status.status.success());
    let out = s.down();
    assert!(out.status.success(), "{:?}", text(&out));
}

fn pinned_api_ports_serve_the_apis() {
    let (p, q) = (free_port(), free_port());
    let (p_arg, q_arg) = (p.to_string(), q.to_string());
    let mut s = DevStack::up(&[
        "--nodes",
        "1",
        "--no-syncer",
        "--host-api-port",
        &p_arg,
        "--vcluster-api-port",
        &q_arg,
    ]);
    // The host API (it has the KWOK node) answers on P, the virtual one
    // (no nodes without a syncer) on Q, each with its own kubeconfig.
    for (kc, port, want) in [
        (s.host_kubeconfig(), p, "node/kwok-node-0\n"),
        (s.vcluster_kubeconfig(), q, ""),
    ] {
        let server = format!("https://127.0.0.1:{port}");
        let nodes = kubectl_ok(
            &kc,
            &["--server", &server, "get", "nodes", "-o", "name"],
            None,
        );
        assert_eq!(nodes, want, "{server} with {}", kc.display());
        let config = std::fs::read_to_string(&kc).unwrap();
        assert!(
            config.contains(&format!("server: {server}")),
            "{} points at {server}:\n{config}",
            kc.display()
        );
    }
    let out = s.down();
    assert!(out.status.success(), "{:?}", text(&out));
}

type SharedTest = (&'static str, fn(&DevStack));

/// Tests that share one running stack.
const SHARED: &[SharedTest] = &[
    (
        "apis_answer_with_pinned_version",
        apis_answer_with_pinned_version,
    ),
    (
        "kube_rs_creates_namespace_and_configmap",
        kube_rs_creates_namespace_and_configmap,
    ),
    (
        "kubectl_creates_namespace_and_configmap",
        kubectl_creates_namespace_and_configmap,
    ),
    ("kwok_runs_a_host_pod", kwok_runs_a_host_pod),
    ("kwok_completes_a_job", kwok_completes_a_job),
    ("kwok_renews_node_leases", kwok_renews_node_leases),
    (
        "virtual_plane_runs_controllers_without_scheduler",
        virtual_plane_runs_controllers_without_scheduler,
    ),
    ("dev_status_reports_ready", dev_status_reports_ready),
    (
        "second_up_on_a_running_stack_is_refused",
        second_up_on_a_running_stack_is_refused,
    ),
    (
        "missing_binaries_name_the_make_target",
        missing_binaries_name_the_make_target,
    ),
    ("port_in_use_is_named", port_in_use_is_named),
    (
        "stale_state_dir_is_named_and_cleaned",
        stale_state_dir_is_named_and_cleaned,
    ),
    ("usage_mistakes_are_one_line", usage_mistakes_are_one_line),
];

/// Tests that stop stacks, run one at a time after the shared group.
const TEARDOWN: &[&str] = &[
    "dev_down_leaves_nothing_behind",
    "ctrl_c_stops_a_foreground_stack",
    "killed_supervisor_takes_its_children_down",
    "pinned_api_ports_serve_the_apis",
];

fn main() {
    let args = Arguments::from_args();
    if args.list {
        // Listing starts nothing.
        let names = SHARED
            .iter()
            .map(|(n, _)| *n)
            .chain(TEARDOWN.iter().copied());
        libtest_mimic::run(&args, names.map(|n| Trial::test(n, || Ok(()))).collect()).exit();
    }
    if let Err(e) = vcluster::local::check_binaries(&vcluster::local::default_bin_dir()) {
        eprintln!("e2e: {e}");
        std::process::exit(1);
    }
    // The bare control planes: the syncer has its own suite (e2e/syncer.rs).
    let stack = Arc::new(DevStack::up(&["--no-syncer"]));
    eprintln!(
        "e2e: shared dev stack ready in {:.1}s",
        stack.up_time.as_secs_f64()
    );
    let shared = SHARED.iter().map(|(n, f)| trial(n, &stack, *f)).collect();
    let first = libtest_mimic::run(&args, shared);
    let stack = Arc::try_unwrap(stack)
        .ok()
        .expect("trials release the shared stack");

    let mut serial = args.clone();
    serial.test_threads = Some(1);
    let second = libtest_mimic::run(
        &serial,
        vec![
            Trial::test(TEARDOWN[0], move || {
                dev_down_leaves_nothing_behind(stack);
                Ok(())
            }),
            Trial::test(TEARDOWN[1], || {
                ctrl_c_stops_a_foreground_stack();
                Ok(())
            }),
            Trial::test(TEARDOWN[2], || {
                killed_supervisor_takes_its_children_down();
                Ok(())
            }),
            Trial::test(TEARDOWN[3], || {
                pinned_api_ports_serve_the_apis();
                Ok(())
            }),
        ],
    );
    let passed = first.num_passed + second.num_passed;
    let failed = first.num_failed + second.num_failed;
    println!("e2e: {passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(101);
    }
}
