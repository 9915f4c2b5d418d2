//! End-to-end tests of onboarding a team the way a user does it: `vcluster
//! create` (the bundled chart installed into a real host plane by the real
//! `helm` found on PATH, the wait for the control-plane pod, which KWOK marks
//! Ready, and for the syncer's kubeconfig Secret, the syncer running as the
//! chart's ServiceAccount as in the chart's pod; refusals of a second create
//! and of another chart's release; `--upgrade`), `vcluster disconnect`, and
//! init manifests and init helm charts applied into a new virtual cluster
//! once.
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
    helm_with(&env.stack.host_kubeconfig(), args)
}

/// helm with `kubeconfig`; its stdout, once it succeeded.
fn helm_with(kubeconfig: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(helm_dir().join("helm"))
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
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

/// The syncer given `file` with `flag` does not start, and says `says` in one line.
fn refused_init_file(env: &Env, flag: &str, file: &std::path::Path, says: &str) {
    let out = vcluster(&[
        "syncer",
        "--name",
        INIT_NAME,
        "--host-namespace",
        INIT_NS,
        "--virtual-kubeconfig",
        env.stack.vcluster_kubeconfig().to_str().unwrap(),
        flag,
        file.to_str().unwrap(),
    ]);
    assert_one_line_refusal(&out, says);
}

/// ConfigMap kube-system/vcluster-init inside, or kubectl's complaint.
fn init_record(env: &Env) -> Result<serde_json::Value, String> {
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
        serde_json::from_str(&text(&out).0).map_err(|e| e.to_string())
    } else {
        Err(text(&out).1)
    }
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
    refused_init_file(
        env,
        "--init-manifests",
        &bad,
        "bad.yaml, document 2: no apiVersion",
    );

    let syncer = start_init_syncer(env, &file, &[]);
    // Every object, the Gadget after its CRD (written later in the file).
    let record = eventually_sync("the init record", T, || init_record(env));
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
        let ev = init_events(env);
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

/// The chart rendered by the real helm as release `base` in INIT_NS, with
/// `extra` arguments (values), one object per document.
fn render_base(env: &Env, extra: &[&str]) -> Vec<serde_json::Value> {
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/chart");
    let mut args = vec![
        "template",
        "base",
        chart,
        "-n",
        INIT_NS,
        "--kube-version",
        "1.36.3",
    ];
    args.extend_from_slice(extra);
    helm(env, &args)
        .split("\n---")
        .filter_map(|d| serde_yaml::from_str(d).ok())
        .collect()
}

/// The rendered object `kind`/`name`.
fn rendered<'a>(docs: &'a [serde_json::Value], kind: &str, name: &str) -> &'a serde_json::Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind}/{name} rendered"))
}

/// The rendered syncer container.
fn rendered_syncer(docs: &[serde_json::Value]) -> &serde_json::Value {
    rendered(docs, "StatefulSet", "base")["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "syncer")
        .unwrap()
}

/// The team baseline example, rendered by the real helm as the chart's pod
/// would get it, applied by the syncer: everything it names is inside.
fn the_team_baseline_example_lands_inside(env: &Env) {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/team-baseline.yaml");
    let docs = render_base(env, &["-f", example]);
    let manifests = rendered(&docs, "ConfigMap", "vc-base-init")["data"]["manifests.yaml"]
        .as_str()
        .unwrap()
        .to_owned();
    let syncer = rendered_syncer(&docs);
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
        let record = init_record(env)?;
        let applied = record["data"]["applied"].as_str().unwrap_or_default();
        if applied.lines().count() == 8 {
            Ok(())
        } else {
            Err(applied.to_owned())
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

/// helm through the virtual cluster's kubeconfig.
fn helm_virt(env: &Env, args: &[&str]) -> String {
    helm_with(&env.stack.vcluster_kubeconfig(), args)
}

/// The revisions `helm history` lists for a release inside.
fn history(env: &Env, release: &str, ns: &str) -> Vec<u64> {
    let json = helm_virt(env, &["history", release, "-n", ns, "-o", "json"]);
    serde_json::from_str::<Vec<serde_json::Value>>(&json)
        .unwrap()
        .iter()
        .map(|r| r["revision"].as_u64().unwrap())
        .collect()
}

/// The init record's entry for a release (key `helm.<ns>.<release>`).
fn chart_record(env: &Env, key: &str) -> Option<serde_json::Value> {
    let cm = init_record(env).ok()?;
    serde_json::from_str(cm["data"][key].as_str()?).ok()
}

/// Waits until the record says `status` for `key`.
fn wait_chart_record(env: &Env, key: &str, status: &str) -> serde_json::Value {
    eventually_sync(&format!("{key} {status} in the record"), T, || {
        std::thread::sleep(Duration::from_millis(400));
        match chart_record(env, key) {
            Some(r) if r["status"] == status => Ok(r),
            other => Err(format!("{other:?}")),
        }
    })
}

/// The init record's events, one `type reason message` line each.
fn init_events(env: &Env) -> String {
    virt_get(
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
    )
}

fn wait_event(env: &Env, what: &str, has: impl Fn(&str) -> bool) -> String {
    eventually_sync(what, T, || {
        std::thread::sleep(Duration::from_millis(400));
        let ev = init_events(env);
        if ev.lines().any(&has) {
            Ok(ev)
        } else {
            Err(ev)
        }
    })
}

fn widget_size(env: &Env, ns: &str, name: &str) -> String {
    virt_get(
        env,
        &[
            "get",
            "widget",
            name,
            "-n",
            ns,
            "-o",
            "jsonpath={.spec.size}",
        ],
    )
}

/// The syncer answers /readyz and has not exited.
fn still_serves(s: &mut SyncerProcess) {
    assert!(s.child.try_wait().unwrap().is_none(), "the syncer exited");
    assert!(http_ok_blocking(s.port, "/readyz"), "the syncer's /readyz");
}

const WIDGETS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/widgets");

/// Release `shop` of examples/widgets with one widget of `size`, and a
/// release whose chart is nowhere.
fn shop_charts(size: u32) -> String {
    format!(
        "- name: shop\n  namespace: shop\n  chart: {WIDGETS}\n  values:\n    widgets: [{{name: green, colour: green, size: {size}}}]\n\
         - name: ghost\n  namespace: shop\n  chart: /nonexistent/charts/ghost\n"
    )
}

fn start_helm_syncer(env: &Env, file: &std::path::Path, extra: &[&str]) -> SyncerProcess {
    let helm = helm_dir().join("helm");
    let mut args = vec![
        "--init-helm-charts",
        file.to_str().unwrap(),
        "--helm-binary",
        helm.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    SyncerProcess::start_with(&env.stack, INIT_NAME, INIT_NS, &args)
}

fn init_helm_charts_are_installed_once(env: &Env) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("charts.yaml");
    std::fs::write(&file, shop_charts(7)).unwrap();
    // A file that is not charts: the syncer refuses to start, in one line.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "- name: shop\n  namespace: shop\n").unwrap();
    refused_init_file(
        env,
        "--init-helm-charts",
        &bad,
        "bad.yaml, entry 1 (release shop): no chart",
    );

    // No helm: one Warning naming what is not installed; the syncer serves.
    let mut without = SyncerProcess::start_with(
        &env.stack,
        INIT_NAME,
        INIT_NS,
        &[
            "--init-helm-charts",
            file.to_str().unwrap(),
            "--helm-binary",
            "/nonexistent/helm",
        ],
    );
    let events = wait_event(env, "the missing helm's Warning", |l| {
        l.starts_with("Warning InitHelmChartFailed helm binary /nonexistent/helm cannot be run")
    });
    assert!(
        events.contains("init charts not installed: shop/shop, shop/ghost"),
        "{events}"
    );
    still_serves(&mut without);
    assert!(chart_record(env, "helm.shop.shop").is_none());
    drop(without);

    // With helm: installed once, the chart that is nowhere a Warning.
    let mut syncer = start_helm_syncer(env, &file, &[]);
    let record = wait_chart_record(env, "helm.shop.shop", "installed");
    assert_eq!(record["revision"], 1, "{record}");
    assert_eq!(record["chart"], "widgets-0.1.0", "{record}");
    let ghost = wait_chart_record(env, "helm.shop.ghost", "failed");
    assert!(
        ghost["error"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/charts/ghost"),
        "{ghost}"
    );
    let events = wait_event(env, "the failed chart's Warning", |l| {
        l.starts_with("Warning InitHelmChartFailed release shop/ghost: Error:")
    });
    assert!(
        events.contains(
            "Normal InitHelmChartInstalled installed release shop/shop: chart widgets-0.1.0, revision 1"
        ),
        "{events}"
    );
    still_serves(&mut syncer);
    assert_eq!(history(env, "shop", "shop"), [1]);
    let list = helm_virt(env, &["list", "-n", "shop", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list[0]["name"], "shop", "{list}");
    assert_eq!(list[0]["status"], "deployed", "{list}");
    // The entry's values, not the chart's defaults.
    assert_eq!(widget_size(env, "shop", "green"), "7");
    let others = virt_get(env, &["get", "widgets", "-n", "shop", "-o", "name"]);
    assert_eq!(others.trim(), "widget.example.vcluster.dev/green");

    // The tenant changes a widget; a restarted syncer runs no helm for shop.
    virt_get(
        env,
        &[
            "patch",
            "widget",
            "green",
            "-n",
            "shop",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"size":9}}"#,
        ],
    );
    drop(syncer);
    let skips = |s: &SyncerProcess| {
        std::fs::read_to_string(&s.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                l.contains("init helm chart not installed again") && l.contains("shop/shop")
            })
            .count()
    };
    for (nth, size) in [(1, 7), (2, 8)] {
        // The same entry, then a changed one without --init-reapply.
        std::fs::write(&file, shop_charts(size)).unwrap();
        let restarted = start_helm_syncer(env, &file, &[]);
        eventually_sync(&format!("skip {nth} logged"), T, || {
            if skips(&restarted) >= nth {
                Ok(())
            } else {
                Err("not yet".to_owned())
            }
        });
        assert_eq!(history(env, "shop", "shop"), [1]);
        assert_eq!(widget_size(env, "shop", "green"), "9");
    }
    // With --init-reapply the changed entry is upgraded: revision 2.
    let _reapplied = start_helm_syncer(env, &file, &["--init-reapply"]);
    eventually_sync("revision 2", T, || {
        std::thread::sleep(Duration::from_millis(400));
        let h = history(env, "shop", "shop");
        if h == [1, 2] {
            Ok(())
        } else {
            Err(format!("{h:?}"))
        }
    });
    assert_eq!(widget_size(env, "shop", "green"), "8");
    let record = wait_chart_record(env, "helm.shop.shop", "installed");
    assert_eq!(record["revision"], 2, "{record}");
    wait_event(env, "the upgrade's event", |l| {
        l == "Normal InitHelmChartInstalled upgraded release shop/shop: chart widgets-0.1.0, revision 2"
    });
}

/// Serves the files of `dir` over HTTP on 127.0.0.1 (a chart repository);
/// returns its URL and the paths asked for.
fn serve_files(dir: PathBuf) -> (String, Arc<Mutex<Vec<String>>>) {
    use std::io::{BufRead as _, BufReader, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let asked = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&asked);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut first = String::new();
            let _ = reader.read_line(&mut first);
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
                    break;
                }
            }
            let path = first.split(' ').nth(1).unwrap_or("/").to_owned();
            seen.lock().unwrap().push(path.clone());
            let file = dir.join(path.trim_start_matches('/'));
            let (status, body) = match std::fs::read(&file) {
                Ok(b) if !path.contains("..") => ("200 OK", b),
                _ => ("404 Not Found", b"not found".to_vec()),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(&body);
        }
    });
    (url, asked)
}

/// The chart rendered by the real helm with one chart from a repository the
/// host reaches and one carried as a bundle (`--set-file`): the syncer on the
/// rendered file installs both.
fn init_helm_charts_from_a_repository_and_a_bundle(env: &Env) {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    helm(env, &["package", WIDGETS, "-d", repo.to_str().unwrap()]);
    helm(env, &["repo", "index", repo.to_str().unwrap()]);
    let tgz = std::fs::read(repo.join("widgets-0.1.0.tgz")).unwrap();
    let b64 = dir.path().join("widgets.tgz.b64");
    {
        use base64::Engine as _;
        std::fs::write(&b64, base64::engine::general_purpose::STANDARD.encode(tgz)).unwrap();
    }
    let (url, asked) = serve_files(repo);
    let values = dir.path().join("values.yaml");
    std::fs::write(
        &values,
        format!(
            "init:\n  helmCharts:\n\
             \x20   - {{name: from-repo, namespace: repo-ns, chart: widgets, repo: '{url}', version: 0.1.0, values: {{replicas: 2}}}}\n\
             \x20   - {{name: bundled, namespace: bundle-ns}}\n"
        ),
    )
    .unwrap();
    let set_file = format!("init.helmCharts[1].bundle={}", b64.display());
    let mut charts = None;
    for distro in ["k3s", "k8s"] {
        let docs = render_base(
            env,
            &[
                "--set",
                &format!("distro={distro}"),
                "-f",
                values.to_str().unwrap(),
                "--set-file",
                &set_file,
            ],
        );
        let data = &rendered(&docs, "ConfigMap", "vc-base-init")["data"];
        assert!(data.get("manifests.yaml").is_none(), "{data}");
        charts = Some(data["helm-charts.yaml"].as_str().unwrap().to_owned());
        let pod = &rendered(&docs, "StatefulSet", "base")["spec"]["template"]["spec"];
        let syncer = rendered_syncer(&docs);
        let args = syncer["args"].to_string();
        assert!(
            args.contains("\"--init-helm-charts=/etc/vcluster/init/helm-charts.yaml\"")
                && !args.contains("--init-manifests"),
            "{distro}: {args}"
        );
        let mounts = syncer["volumeMounts"].to_string();
        assert!(
            mounts.contains(
                r#"{"mountPath":"/etc/vcluster/init","name":"init-manifests","readOnly":true}"#
            ) && mounts.contains(r#"{"mountPath":"/tmp","name":"init-helm-tmp"}"#),
            "{distro}: {mounts}"
        );
        let volumes = pod["volumes"].to_string();
        assert!(
            volumes.contains(r#"{"emptyDir":{},"name":"init-helm-tmp"}"#),
            "{distro}: {volumes}"
        );
    }
    let file = dir.path().join("helm-charts.yaml");
    std::fs::write(&file, charts.unwrap()).unwrap();
    let _syncer = start_helm_syncer(env, &file, &[]);
    for key in ["helm.repo-ns.from-repo", "helm.bundle-ns.bundled"] {
        let r = wait_chart_record(env, key, "installed");
        assert_eq!(
            (&r["revision"], &r["chart"]),
            (&1.into(), &"widgets-0.1.0".into()),
            "{key}: {r}"
        );
    }
    assert_eq!(history(env, "from-repo", "repo-ns"), [1]);
    assert_eq!(history(env, "bundled", "bundle-ns"), [1]);
    let asked = asked.lock().unwrap().clone();
    assert!(
        asked.iter().any(|p| p == "/index.yaml") && asked.iter().any(|p| p == "/widgets-0.1.0.tgz"),
        "{asked:?}"
    );
    // The repository's chart with the entry's values; the bundle's defaults.
    let replicas = virt_get(
        env,
        &[
            "get",
            "deployment",
            "from-repo-controller",
            "-n",
            "repo-ns",
            "-o",
            "jsonpath={.spec.replicas}",
        ],
    );
    assert_eq!(replicas, "2");
    assert_eq!(widget_size(env, "bundle-ns", "red"), "5");
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
    (
        "init_helm_charts_are_installed_once",
        init_helm_charts_are_installed_once,
    ),
    (
        "init_helm_charts_from_a_repository_and_a_bundle",
        init_helm_charts_from_a_repository_and_a_bundle,
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
