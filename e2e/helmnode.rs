//! `helm install` whose pod really runs: on the dev stack's real node, the
//! chart with `distro: k8s` and the images `make image` built (imported by
//! `dev up`); every container of the control-plane pod Ready through its real
//! probes; `vcluster connect` through a real port-forward; kubectl and helm
//! through it; a tenant pod synced by the in-pod syncer really running.
//! Needs root, `make node-deps` and `make image` (`make e2e-helm-node`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const NS: &str = "team-a";
const VC: &str = "vc1";
const T: Duration = Duration::from_secs(240);

fn helm(kubeconfig: &Path, args: &[&str]) -> String {
    let bin = vcluster::local::default_bin_dir().join("helm");
    let out = Command::new(bin)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "helm {args:?}: {stdout}{stderr}");
    stdout
}

/// The memory a container uses (`total_rss` of its memory cgroup), in MiB.
fn container_rss_mib(container_id: &str) -> Option<f64> {
    let id = container_id.rsplit("://").next()?;
    let root = std::fs::read_dir("/sys/fs/cgroup/memory").ok()?;
    fn find(dir: &Path, id: &str) -> Option<PathBuf> {
        for e in std::fs::read_dir(dir).ok()?.flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name()
                    .is_some_and(|n| n.to_string_lossy().ends_with(id))
                {
                    return Some(p);
                }
                if let Some(found) = find(&p, id) {
                    return Some(found);
                }
            }
        }
        None
    }
    let dir = root
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("vcluster-node-")
        })
        .find_map(|e| find(&e.path(), id))?;
    let stat = std::fs::read_to_string(dir.join("memory.stat")).ok()?;
    let rss: f64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("total_rss "))?
        .trim()
        .parse()
        .ok()?;
    Some(rss / 1024.0 / 1024.0)
}

fn main() {
    let images = chart_image_dir();
    let (mut passed, mut failed) = (0, 0);
    let stack = DevStack::up(&["--nodes", "1", "--real-nodes", "1", "--image-dir", &images]);
    println!(
        "dev up --real-nodes 1 (with {} images): ready in {:.1}s",
        CHART_IMAGES.len(),
        stack.up_time.as_secs_f64()
    );
    let host = stack.host_kubeconfig();
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/chart");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let started = Instant::now();
        helm(
            &host,
            &[
                "install",
                VC,
                chart,
                "-n",
                NS,
                "--create-namespace",
                "--set",
                "distro=k8s",
                "--set",
                "persistence.enabled=false",
            ],
        );
        // Every container Ready through its own probe (the controller-manager
        // may restart while the API's RBAC bootstraps, as on any cluster).
        let pod = format!("{VC}-0");
        let statuses = eventually_sync("every container of the vcluster pod Ready", T, || {
            let out = kubectl(&host, &["get", "pod", &pod, "-n", NS, "-o", "json"], None);
            let v: serde_json::Value =
                serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
            let cs = v["status"]["containerStatuses"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if cs.len() == 4 && cs.iter().all(|c| c["ready"] == true) {
                Ok(cs)
            } else {
                Err(format!("{cs:?}"))
            }
        });
        let ready = started.elapsed();
        println!(
            "helm install -> vcluster pod Ready: {:.1}s",
            ready.as_secs_f64()
        );
        for c in &statuses {
            let rss = c["containerID"].as_str().and_then(container_rss_mib);
            println!(
                "  {}: restarts {}, RSS {}",
                c["name"].as_str().unwrap_or(""),
                c["restartCount"],
                rss.map(|r| format!("{r:.1} MiB"))
                    .unwrap_or_else(|| "?".into())
            );
        }
        let names: Vec<&str> = statuses.iter().filter_map(|c| c["name"].as_str()).collect();
        assert_eq!(
            names,
            [
                "etcd",
                "kube-apiserver",
                "kube-controller-manager",
                "syncer"
            ]
        );

        // vcluster connect: a real port-forward through the host API to the pod.
        let kc = stack.dir.path().join("connect.kubeconfig");
        let mut connect = Streaming::spawn(Command::new(vcluster_bin()).args([
            "connect",
            VC,
            "-n",
            NS,
            "--kubeconfig",
            host.to_str().unwrap(),
            "--update-kubeconfig",
            kc.to_str().unwrap(),
            "--switch-context",
        ]));
        connect.wait_for_line_within(T, "connect to forward", |l| {
            l.starts_with("forwarding https://127.0.0.1:")
        });
        let ns = kubectl_ok(&kc, &["get", "namespaces", "-o", "name"], None);
        assert!(ns.contains("namespace/kube-system"), "{ns}");
        println!(
            "helm install -> vcluster connect -> first kubectl get ns: {:.1}s",
            started.elapsed().as_secs_f64()
        );
        // A tenant pod, synced by the in-pod syncer, really runs and logs
        // (once the virtual controller-manager made the default ServiceAccount).
        eventually_sync("the virtual default ServiceAccount", T, || {
            let out = kubectl(&kc, &["get", "serviceaccount", "default"], None);
            if out.status.success() {
                Ok(())
            } else {
                Err(text(&out).1)
            }
        });
        kubectl_ok(
            &kc,
            &[
                "run",
                "inner",
                "--image=vcluster.dev/busybox:1.35.0",
                "--image-pull-policy=Never",
                "--",
                "sh",
                "-c",
                "echo inner pod runs; exec sleep 3600",
            ],
            None,
        );
        kubectl_ok(
            &kc,
            &[
                "wait",
                "--for=condition=Ready",
                "pod/inner",
                "--timeout=120s",
            ],
            None,
        );
        let logs = eventually_sync("the inner pod's log", T, || {
            let out = kubectl_ok(&kc, &["logs", "inner"], None);
            if out.contains("inner pod runs") {
                Ok(out)
            } else {
                Err(out)
            }
        });
        assert!(logs.contains("inner pod runs"));
        // helm works through it too.
        let bin = vcluster::local::default_bin_dir().join("helm");
        let out = Command::new(bin)
            .arg("--kubeconfig")
            .arg(&kc)
            .args(["list", "-A"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "helm list through connect: {:?}",
            text(&out)
        );
        drop(connect);

        // helm uninstall alone removes everything: the syncer's host copies
        // are owned by the chart's StatefulSet (--owner-statefulset), so the
        // host's garbage collector deletes them once the release is gone.
        let uninstalled = Instant::now();
        helm(&host, &["uninstall", VC, "-n", NS, "--wait"]);
        let owner = format!("vcluster.dev/owner={VC}");
        eventually_sync("no host copy left after helm uninstall", T, || {
            let left = kubectl_ok(
                &host,
                &[
                    "get",
                    "pods,secrets,configmaps,services",
                    "-n",
                    NS,
                    "-l",
                    &owner,
                    "-o",
                    "name",
                ],
                None,
            );
            if left.trim().is_empty() {
                Ok(())
            } else {
                Err(left)
            }
        });
        println!(
            "helm uninstall -> no host copy left: {:.1}s",
            uninstalled.elapsed().as_secs_f64()
        );
    }));
    match result {
        Ok(()) => passed += 1,
        Err(_) => {
            failed += 1;
            eprintln!("{}", logs(stack.dir.path()));
        }
    }
    stack.down_leaving_nothing();
    println!("e2e: {passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(101);
    }
}
