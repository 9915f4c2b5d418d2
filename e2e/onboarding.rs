//! End-to-end tests of onboarding a team the way a user does it: `vcluster
//! create` (the bundled chart installed into a real host plane by the real
//! `helm` found on PATH, the wait for the control-plane pod, which KWOK marks
//! Ready, and for the syncer's kubeconfig Secret, the syncer running as the
//! chart's ServiceAccount as in the chart's pod; refusals of a second create
//! and of another chart's release; `--upgrade`), `vcluster disconnect`, and
//! init manifests applied into a new virtual cluster once.
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
        chart::start_syncer(&env.stack, NAME, NS, &kc, &[]).await.0
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

const INIT_NAME: &str = "init-vc";
const INIT_NS: &str = "team-init";

/// A team baseline: a namespace, a quota and a RoleBinding in it, a CRD and
/// an object of it (applied once the CRD is established), a ConfigMap, and
/// an object the API refuses.
fn baseline(mode: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: team-a}}
---
apiVersion: v1
kind: ResourceQuota
metadata: {{name: baseline, namespace: team-a}}
spec: {{hard: {{pods: "20"}}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: devs-edit, namespace: team-a}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: edit}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: Group, name: devs}}]
---
apiVersion: example.com/v1
kind: Gadget
metadata: {{name: first, namespace: team-a}}
spec: {{size: 3}}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {{name: gadgets.example.com}}
spec:
  group: example.com
  names: {{kind: Gadget, plural: gadgets, singular: gadget}}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: settings, namespace: team-a}}
data: {{mode: {mode}}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: Not_A_Name, namespace: team-a}}
"#
    )
}

fn virt_get(env: &Env, args: &[&str]) -> String {
    kubectl_ok(&env.stack.vcluster_kubeconfig(), args, None)
}

fn settings_mode(env: &Env) -> String {
    virt_get(
        env,
        &[
            "get",
            "cm",
            "settings",
            "-n",
            "team-a",
            "-o",
            "jsonpath={.data.mode}",
        ],
    )
}

fn start_init_syncer(env: &Env, file: &std::path::Path, extra: &[&str]) -> SyncerProcess {
    let mut args = vec!["--init-manifests", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    SyncerProcess::start_with(&env.stack, INIT_NAME, INIT_NS, &args)
}

fn log_count(s: &SyncerProcess, what: &str) -> usize {
    std::fs::read_to_string(&s.log)
        .unwrap_or_default()
        .matches(what)
        .count()
}

/// Starts the init syncer on `file`, waits until it has logged its `nth`
/// skip (the log file is shared by its runs), sees the tenant's change kept,
/// and stops it.
fn restart_and_see_it_skipped(env: &Env, file: &std::path::Path, nth: usize) {
    let restarted = start_init_syncer(env, file, &[]);
    eventually_sync(&format!("skip {nth} logged"), T, || {
        if log_count(&restarted, "init manifests not applied") >= nth {
            Ok(())
        } else {
            Err("not yet".to_owned())
        }
    });
    assert_eq!(settings_mode(env), "tenant");
}

fn init_manifests_are_applied_once(env: &Env) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("baseline.yaml");
    std::fs::write(&file, baseline("initial")).unwrap();
    // A file that is not manifests: the syncer refuses to start, in one line.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\nkind: Secret\n",
    )
    .unwrap();
    let out = vcluster(&[
        "syncer",
        "--name",
        INIT_NAME,
        "--host-namespace",
        INIT_NS,
        "--virtual-kubeconfig",
        env.stack.vcluster_kubeconfig().to_str().unwrap(),
        "--init-manifests",
        bad.to_str().unwrap(),
    ]);
    assert_one_line_refusal(&out, "bad.yaml, document 2: no apiVersion");

    let syncer = start_init_syncer(env, &file, &[]);
    // Every object, the Gadget after its CRD (written later in the file).
    let record = eventually_sync("the init record", T, || {
        let out = kubectl(
            &env.stack.vcluster_kubeconfig(),
            &[
                "get",
                "cm",
                "vcluster-init",
                "-n",
                "kube-system",
                "-o",
                "json",
            ],
            None,
        );
        if out.status.success() {
            Ok(text(&out).0)
        } else {
            Err(text(&out).1)
        }
    });
    let record: serde_json::Value = serde_json::from_str(&record).unwrap();
    let applied = record["data"]["applied"].as_str().unwrap();
    for o in [
        "Namespace team-a",
        "ResourceQuota team-a/baseline",
        "RoleBinding team-a/devs-edit",
        "CustomResourceDefinition gadgets.example.com",
        "Gadget team-a/first",
        "ConfigMap team-a/settings",
    ] {
        assert!(applied.lines().any(|l| l == o), "{o} in {applied}");
    }
    let failed = record["data"]["failed"].as_str().unwrap();
    assert!(
        failed.starts_with("ConfigMap team-a/Not_A_Name: "),
        "{failed}"
    );
    assert_eq!(
        virt_get(
            env,
            &[
                "get",
                "gadget",
                "first",
                "-n",
                "team-a",
                "-o",
                "jsonpath={.spec.size}"
            ]
        ),
        "3"
    );
    assert_eq!(settings_mode(env), "initial");
    // The group's RoleBinding works: a member may edit in team-a.
    assert_eq!(
        virt_get(
            env,
            &[
                "auth",
                "can-i",
                "create",
                "deployments",
                "-n",
                "team-a",
                "--as",
                "jane",
                "--as-group",
                "devs"
            ]
        )
        .trim(),
        "yes"
    );
    // Events on the record say what happened.
    let events = eventually_sync("the init events", T, || {
        let ev = virt_get(
            env,
            &[
                "get",
                "events",
                "-n",
                "kube-system",
                "--field-selector",
                "involvedObject.name=vcluster-init",
                "-o",
                "jsonpath={range .items[*]}{.type} {.reason} {.message}{\"\\n\"}{end}",
            ],
        );
        if ev.contains("InitManifestsApplied") && ev.contains("InitManifestFailed") {
            Ok(ev)
        } else {
            Err(ev)
        }
    });
    assert!(
        events.contains("Normal InitManifestsApplied applied 6 of 7 objects"),
        "{events}"
    );
    assert!(
        events.contains("Warning InitManifestFailed ConfigMap team-a/Not_A_Name"),
        "{events}"
    );

    // The tenant changes the baseline; a restarted syncer leaves it alone.
    virt_get(
        env,
        &[
            "patch",
            "cm",
            "settings",
            "-n",
            "team-a",
            "-p",
            r#"{"data":{"mode":"tenant"}}"#,
        ],
    );
    drop(syncer);
    restart_and_see_it_skipped(env, &file, 1);
    // A changed file is applied again only with --init-reapply.
    std::fs::write(&file, baseline("second")).unwrap();
    restart_and_see_it_skipped(env, &file, 2);
    let _reapplied = start_init_syncer(env, &file, &["--init-reapply"]);
    eventually_sync("the changed file applied", T, || {
        let m = settings_mode(env);
        if m == "second" { Ok(()) } else { Err(m) }
    });
}

/// The team baseline example, rendered by the real helm as the chart's pod
/// would get it, applied by the syncer: everything it names is inside.
fn the_team_baseline_example_lands_inside(env: &Env) {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/team-baseline.yaml");
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/chart");
    let yaml = helm(
        env,
        &[
            "template",
            "base",
            chart,
            "-n",
            INIT_NS,
            "--kube-version",
            "1.36.3",
            "-f",
            example,
        ],
    );
    let docs: Vec<serde_json::Value> = yaml
        .split("\n---")
        .filter_map(|d| serde_yaml::from_str(d).ok())
        .collect();
    let find = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{kind}/{name} rendered"))
    };
    let manifests = find("ConfigMap", "vc-base-init")["data"]["manifests.yaml"]
        .as_str()
        .unwrap()
        .to_owned();
    let syncer = &find("StatefulSet", "base")["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "syncer")
        .unwrap()
        .clone();
    let args: Vec<&str> = syncer["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(
        args.contains(&"--init-manifests=/etc/vcluster/init/manifests.yaml"),
        "{args:?}"
    );
    assert!(!args.contains(&"--init-reapply"), "{args:?}");
    assert!(
        syncer["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "init-manifests" && m["mountPath"] == "/etc/vcluster/init"),
        "{syncer}"
    );
    // A virtual cluster whose record is gone gets its baseline again (the
    // other init test recorded one on this stack's virtual plane).
    let _ = kubectl(
        &env.stack.vcluster_kubeconfig(),
        &[
            "delete",
            "cm",
            "vcluster-init",
            "-n",
            "kube-system",
            "--ignore-not-found",
        ],
        None,
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("manifests.yaml");
    std::fs::write(&file, manifests).unwrap();
    let _syncer = start_init_syncer(env, &file, &[]);
    eventually_sync("the baseline's record", T, || {
        let applied = virt_get(
            env,
            &[
                "get",
                "cm",
                "vcluster-init",
                "-n",
                "kube-system",
                "-o",
                "jsonpath={.data.applied}",
                "--ignore-not-found",
            ],
        );
        if applied.lines().count() == 8 {
            Ok(())
        } else {
            Err(applied)
        }
    });
    // `kubectl auth can-i` prints yes/no and exits 1 on no.
    let can = |verb: &str, what: &str, ns: &str| {
        let out = kubectl(
            &env.stack.vcluster_kubeconfig(),
            &[
                "auth",
                "can-i",
                verb,
                what,
                "-n",
                ns,
                "--as",
                "jane",
                "--as-group",
                "oidc:team-a-developers",
            ],
            None,
        );
        text(&out).0.trim().to_owned()
    };
    assert_eq!(can("create", "deployments", "dev"), "yes");
    assert_eq!(can("list", "pods", "staging"), "yes");
    assert_eq!(can("create", "deployments", "staging"), "no");
    assert_eq!(can("create", "deployments", "default"), "no");
    for (ns, kinds, want) in [
        (
            "dev",
            "networkpolicies,resourcequotas,limitranges",
            "networkpolicy.networking.k8s.io/default-deny limitrange/team-limits resourcequota/team-quota",
        ),
        (
            "staging",
            "networkpolicies",
            "networkpolicy.networking.k8s.io/default-deny",
        ),
    ] {
        let got = virt_get(env, &["get", kinds, "-n", ns, "-o", "name"]);
        let mut got: Vec<&str> = got.lines().collect();
        got.sort_unstable();
        let mut want: Vec<&str> = want.split(' ').collect();
        want.sort_unstable();
        assert_eq!(got, want, "{ns}");
    }
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
    (
        "init_manifests_are_applied_once",
        init_manifests_are_applied_once,
    ),
    (
        "the_team_baseline_example_lands_inside",
        the_team_baseline_example_lands_inside,
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
