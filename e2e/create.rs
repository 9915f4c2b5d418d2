//! End-to-end tests of `vcluster create` and `vcluster disconnect` the way a
//! user runs them: the bundled chart installed into a real host plane by the
//! real `helm` found on PATH, the wait for the control-plane pod (KWOK marks
//! it Ready) and for the syncer's kubeconfig Secret (the syncer runs as the
//! chart's ServiceAccount, as in the chart's pod), refusals of a second create
//! and of another chart's release, `--upgrade`, and a context removed again.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use libtest_mimic::Arguments;

const T: Duration = Duration::from_secs(120);
const NAME: &str = "team-vc";
const NS: &str = "team-create";

struct Env {
    stack: DevStack,
    syncer: Mutex<Option<SyncerProcess>>,
}

fn helm_dir() -> PathBuf {
    vcluster::local::default_bin_dir()
}

/// PATH with helm's directory first.
fn path_with_helm() -> String {
    format!(
        "{}:{}",
        helm_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

fn create_cmd(env: &Env, args: &[&str]) -> Command {
    let mut c = Command::new(vcluster_bin());
    c.arg("create")
        .args(args)
        .arg("--kubeconfig")
        .arg(env.stack.host_kubeconfig())
        .env("PATH", path_with_helm())
        .stdin(Stdio::null());
    c
}

fn create(env: &Env, args: &[&str]) -> Output {
    create_cmd(env, args).output().unwrap()
}

fn helm(env: &Env, args: &[&str]) -> String {
    let out = Command::new(helm_dir().join("helm"))
        .args(args)
        .arg("--kubeconfig")
        .arg(env.stack.host_kubeconfig())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "helm {args:?}: {stderr}");
    stdout
}

fn revision(env: &Env, release: &str) -> u64 {
    let json = helm(env, &["status", release, "-n", NS, "-o", "json"]);
    serde_json::from_str::<serde_json::Value>(&json).unwrap()["version"]
        .as_u64()
        .unwrap()
}

/// A mistake is one line on stderr and a non-zero exit.
fn assert_one_line_refusal(out: &Output, says: &str) {
    let (stdout, stderr) = text(out);
    assert!(!out.status.success(), "{stdout}{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(says), "{says:?} in {stderr}");
}

fn mistakes_are_one_line(env: &Env) {
    // No helm on PATH.
    let out = Command::new(vcluster_bin())
        .args(["create", "x", "-n", NS, "--kubeconfig"])
        .arg(env.stack.host_kubeconfig())
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_one_line_refusal(&out, "helm not found on PATH");
    // A name that cannot be a vcluster's.
    assert_one_line_refusal(&create(env, &["Bad_Name", "-n", NS]), "Bad_Name");
    // Nothing was installed by either.
    let list = helm(env, &["list", "-A", "-q"]);
    assert!(list.trim().is_empty(), "{list}");
}

fn create_installs_and_waits_until_ready(env: &Env) {
    let mut create = Streaming::spawn(&mut create_cmd(
        env,
        &[NAME, "-n", NS, "--set", "persistence.enabled=false"],
    ));
    create.wait_for_line_within(T, "the install", |l| {
        l.contains(&format!("installed vcluster {NAME} in namespace {NS}"))
    });
    // The chart's pod is Ready (KWOK) before the syncer has written its
    // kubeconfig: create says it waits for that, and does not return.
    create.wait_for_line_within(T, "the wait for the Secret", |l| {
        l.contains("waiting for the syncer's kubeconfig Secret vc-team-vc")
    });
    assert!(
        create.child.try_wait().unwrap().is_none(),
        "{:?}",
        create.lines()
    );
    // The syncer as the chart's pod runs it, with the chart's ServiceAccount.
    let syncer = block_on_value(async {
        let kc = chart::service_account_kubeconfig(&env.stack, NAME, NS).await;
        chart::start_syncer(&env.stack, NAME, NS, &kc).await.0
    });
    *env.syncer.lock().unwrap() = Some(syncer);
    let st = create.wait_exit_within(T, "create to finish");
    let lines = create.lines();
    assert!(st.success(), "{lines:?}");
    assert!(
        lines.iter().any(
            |l| l.contains(&format!("vcluster {NAME} is ready in namespace {NS}"))
                && l.contains(&format!("vcluster connect {NAME} -n {NS}"))
        ),
        "{lines:?}"
    );
    // A helm release of the vcluster chart, and `vcluster list` sees it.
    let json = helm(env, &["list", "-n", NS, "-o", "json"]);
    assert!(json.contains("\"chart\":\"vcluster-0.1.0\""), "{json}");
    let out = vcluster(&[
        "list",
        "-n",
        NS,
        "--kubeconfig",
        env.stack.host_kubeconfig().to_str().unwrap(),
    ]);
    let (stdout, _) = text(&out);
    let row = stdout
        .lines()
        .find(|l| l.starts_with(NAME))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(row.contains("Running") && row.ends_with("yes"), "{row}");
}

fn a_second_create_needs_upgrade(env: &Env) {
    assert_one_line_refusal(
        &create(env, &[NAME, "-n", NS]),
        &format!("vcluster {NAME} already exists in namespace {NS}; pass --upgrade"),
    );
    assert_eq!(revision(env, NAME), 1);
    let out = create(
        env,
        &[
            NAME,
            "-n",
            NS,
            "--upgrade",
            "--set",
            "isolation.resourceQuota.hard.pods=42",
        ],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!("upgraded vcluster {NAME}")),
        "{stderr}"
    );
    assert_eq!(revision(env, NAME), 2);
    // The value of the first create stays; the new one is applied.
    let values = helm(env, &["get", "values", NAME, "-n", NS, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&values).unwrap();
    assert_eq!(v["persistence"]["enabled"], false, "{values}");
    assert_eq!(
        v["isolation"]["resourceQuota"]["hard"]["pods"], 42,
        "{values}"
    );
    let hard = kubectl_ok(
        &env.stack.host_kubeconfig(),
        &[
            "get",
            "resourcequota",
            "-n",
            NS,
            "-o",
            "jsonpath={.items[0].spec.hard.pods}",
        ],
        None,
    );
    assert_eq!(hard, "42");
}

fn another_charts_release_is_not_touched(env: &Env) {
    let dir = tempfile::tempdir().unwrap();
    let chart = dir.path().join("other");
    std::fs::create_dir_all(chart.join("templates")).unwrap();
    std::fs::write(
        chart.join("Chart.yaml"),
        "apiVersion: v2\nname: other\nversion: 0.1.0\n",
    )
    .unwrap();
    std::fs::write(
        chart.join("templates/cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: other-data\ndata:\n  a: b\n",
    )
    .unwrap();
    helm(
        env,
        &["install", "not-vc", chart.to_str().unwrap(), "-n", NS],
    );
    for extra in [&[][..], &["--upgrade"][..]] {
        let mut args = vec!["not-vc", "-n", NS];
        args.extend_from_slice(extra);
        assert_one_line_refusal(
            &create(env, &args),
            &format!("release not-vc in namespace {NS} is of the chart other, not a vcluster"),
        );
    }
    assert_eq!(revision(env, "not-vc"), 1);
    let data = kubectl_ok(
        &env.stack.host_kubeconfig(),
        &[
            "get",
            "cm",
            "other-data",
            "-n",
            NS,
            "-o",
            "jsonpath={.data.a}",
        ],
        None,
    );
    assert_eq!(data, "b");
    helm(env, &["uninstall", "not-vc", "-n", NS]);
}

fn disconnect_removes_the_context_and_goes_back(env: &Env) {
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("config");
    std::fs::copy(env.stack.host_kubeconfig(), &kc).unwrap();
    let host_context = kubectl_ok(&kc, &["config", "current-context"], None);
    let kc_s = kc.to_str().unwrap();
    let out = vcluster(&[
        "connect",
        NAME,
        "-n",
        NS,
        "--kubeconfig",
        kc_s,
        "--server",
        "https://127.0.0.1:9",
        "--switch-context",
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
    let context = format!("vcluster_{NAME}_{NS}");
    assert_eq!(
        kubectl_ok(&kc, &["config", "current-context"], None).trim(),
        context
    );
    let out = vcluster(&["disconnect", "--kubeconfig", kc_s]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("context {context} removed"))
            && stderr.contains(&format!("current context is {} again", host_context.trim())),
        "{stderr}"
    );
    assert_eq!(
        kubectl_ok(&kc, &["config", "current-context"], None),
        host_context
    );
    let all = kubectl_ok(
        &kc,
        &[
            "config",
            "view",
            "-o",
            "jsonpath={.contexts[*].name} {.clusters[*].name} {.users[*].name}",
        ],
        None,
    );
    assert!(!all.contains(&context), "{all}");
    // The host is reachable through the context it went back to.
    kubectl_ok(&kc, &["get", "ns", NS], None);
    // Again: nothing to remove, one line.
    assert_one_line_refusal(
        &vcluster(&["disconnect", "--kubeconfig", kc_s]),
        "is not a vcluster's",
    );
    assert_one_line_refusal(
        &vcluster(&["disconnect", NAME, "-n", NS, "--kubeconfig", kc_s]),
        &format!("no context {context}"),
    );
}

fn delete_removes_a_created_vcluster(env: &Env) {
    if let Some(mut s) = env.syncer.lock().unwrap().take() {
        s.kill();
    }
    let hk = env.stack.host_kubeconfig();
    let out = vcluster(&[
        "delete",
        NAME,
        "-n",
        NS,
        "--kubeconfig",
        hk.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
    eventually_sync("the release gone", T, || {
        let list = helm(env, &["list", "-n", NS, "-q"]);
        if list.trim().is_empty() {
            Ok(())
        } else {
            Err(list)
        }
    });
    let left = kubectl_ok(
        &hk,
        &[
            "get",
            "statefulsets,secrets,serviceaccounts",
            "-n",
            NS,
            "-l",
            &format!("vcluster.dev/instance={NAME}"),
            "-o",
            "name",
        ],
        None,
    );
    assert!(left.trim().is_empty(), "{left}");
}

fn block_on_value<T, F: Future<Output = T>>(f: F) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// In order: each test uses what the one before made.
const ORDERED: &[Test<Env>] = &[
    ("mistakes_are_one_line", mistakes_are_one_line),
    (
        "create_installs_and_waits_until_ready",
        create_installs_and_waits_until_ready,
    ),
    (
        "a_second_create_needs_upgrade",
        a_second_create_needs_upgrade,
    ),
    (
        "another_charts_release_is_not_touched",
        another_charts_release_is_not_touched,
    ),
    (
        "disconnect_removes_the_context_and_goes_back",
        disconnect_removes_the_context_and_goes_back,
    ),
    (
        "delete_removes_a_created_vcluster",
        delete_removes_a_created_vcluster,
    ),
];

fn main() {
    let args = Arguments::from_args();
    list_or_check(&args, &[ORDERED]);
    let env = Arc::new(Env {
        stack: DevStack::up(&["--no-syncer", "--nodes", "1"]),
        syncer: Mutex::new(None),
    });
    let failed = run_groups(&args, &env, &[(ORDERED, Some(1))]);
    drop(env);
    if failed > 0 {
        std::process::exit(101);
    }
}
