//! Single sign-on end to end: a real OpenID provider (Dex, built from its
//! pinned module by `e2e/kube/build.sh --shared dex`) on 127.0.0.1 over HTTPS
//! with a CA this suite makes, two static users (alice in group `team-a`, bob
//! in none) and two static clients; the virtual API server of a dev stack runs
//! with the authentication configuration the chart renders for those values
//! (`sso.oidc.*`); ID tokens come from the provider by the password grant and
//! go through the front door with the real `kubectl --token`: a group
//! RoleBinding allows alice, bob is forbidden, an expired token and one for
//! another audience are refused with 401. Then `vcluster connect --token-file`
//! and `--oidc` (its exec plugin run by kubectl).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use common::dex::{self, Dex};
use common::*;
use libtest_mimic::Arguments;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);
/// The client id the vcluster accepts tokens for (`sso.oidc.audiences`).
const CLIENT: &str = "vcluster";
/// Another application of the same provider: its tokens are not for the vcluster.
const OTHER_CLIENT: &str = "wiki";
/// The virtual namespace alice's group may edit.
const TEAM_NS: &str = "team-a";
/// How long the provider's ID tokens live (Dex's `expiry.idTokens`), short
/// so that one expires while the suite runs.
const TOKEN_LIFE: Duration = Duration::from_secs(30);
/// The chart's default prefixes, which the suite keeps.
const PREFIX: &str = "oidc:";

struct Env {
    stack: DevStack,
    dex: Dex,
    /// The front door with no user: each kubectl call brings `--token`.
    anonymous_kc: PathBuf,
    /// alice's token taken at start; used only once it has expired.
    early_token: String,
    /// A token of alice's the front door served (kept by the first test).
    served_token: std::sync::Mutex<Option<String>>,
}

/// The claims of a JWT (not verified: the API server does that).
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&raw).unwrap()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The chart's single sign-on ConfigMap for the provider, rendered by the
/// real helm: the file the virtual API server runs with.
fn chart_authentication_config(dex: &Dex, dir: &Path) -> PathBuf {
    let ca = dir.join("provider-ca.crt");
    std::fs::write(&ca, &dex.ca_pem).unwrap();
    let helm = vcluster::local::default_bin_dir().join("helm");
    let home = std::env::temp_dir().join("vcluster-e2e-helm-home");
    let out = Command::new(helm)
        .args(["template", "sso", "chart", "--kube-version", "1.36.3"])
        .args(["--show-only", "templates/sso.yaml"])
        .args(["--set", &format!("sso.oidc.issuerUrl={}", dex.issuer)])
        .args(["--set", &format!("sso.oidc.audiences={{{CLIENT}}}")])
        .args(["--set", "sso.oidc.usernameClaim=email"])
        .args(["--set-file", &format!("sso.oidc.caPem={}", ca.display())])
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "helm template: {stderr}");
    let cm: Value = serde_yaml::from_str(&stdout).unwrap();
    let file = dir.join("authentication-config.yaml");
    std::fs::write(
        &file,
        cm["data"]["authentication-config.yaml"].as_str().unwrap(),
    )
    .unwrap();
    file
}

/// The front door's kubeconfig (`vcluster.kubeconfig`, from the syncer's
/// `vc-dev` Secret) with its user's credential removed.
fn anonymous_kubeconfig(stack: &DevStack) -> PathBuf {
    let front_door = stack.state.front_door.as_ref().expect("a front door");
    let mut kc: Value =
        serde_yaml::from_str(&std::fs::read_to_string(&front_door.kubeconfig).unwrap()).unwrap();
    let server = kc["clusters"][0]["cluster"]["server"].clone();
    assert_eq!(server, front_door.server.as_str());
    for u in kc["users"].as_array_mut().unwrap() {
        u["user"] = json!({});
    }
    let path = stack.dir.path().join("anonymous.kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&kc).unwrap()).unwrap();
    path
}

/// `kubectl --token` through the front door; (success, stdout, stderr).
fn as_token(env: &Env, token: &str, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["--token", token];
    all.extend_from_slice(args);
    let out = kubectl(&env.anonymous_kc, &all, None);
    let (stdout, stderr) = text(&out);
    (out.status.success(), stdout, stderr)
}

/// alice, in `team-a`, edits the namespace her group is bound in.
fn group_binding_allows_a_member(env: &Env) {
    let (_, stdout, _) = eventually_sync("alice allowed by her group's RoleBinding", T, || {
        // A fresh token each time: the API server fetches the provider's
        // discovery and keys in the background after it starts.
        let token = env.dex.id_token("alice", CLIENT);
        let r = as_token(
            env,
            &token,
            &[
                "-n",
                TEAM_NS,
                "create",
                "configmap",
                "from-alice",
                "--from-literal=k=v",
            ],
        );
        if r.0 { Ok(r) } else { Err(r.2) }
    });
    assert!(stdout.contains("configmap/from-alice created"), "{stdout}");
    let token = env.dex.id_token("alice", CLIENT);
    let (ok, stdout, stderr) = as_token(
        env,
        &token,
        &[
            "-n",
            TEAM_NS,
            "get",
            "configmap",
            "from-alice",
            "-o",
            "json",
        ],
    );
    assert!(ok, "{stderr}");
    let cm: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(cm["data"]["k"], "v");
    *env.served_token.lock().unwrap() = Some(token.clone());
    // Who the virtual cluster says she is: the mapped claims, prefixed.
    let (ok, stdout, stderr) = as_token(env, &token, &["auth", "whoami", "-o", "json"]);
    assert!(ok, "{stderr}");
    let who: Value = serde_json::from_str(&stdout).unwrap();
    let info = &who["status"]["userInfo"];
    assert_eq!(info["username"], format!("{PREFIX}alice@example.test"));
    let groups: Vec<&str> = info["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(groups.contains(&"oidc:team-a"), "{groups:?}");
    // The binding is to the namespace only.
    let (ok, _, stderr) = as_token(env, &token, &["-n", "default", "get", "configmaps"]);
    assert!(!ok && stderr.contains("Forbidden"), "{stderr}");
}

/// bob signs in (authenticated) but no binding names him or a group of his: 403.
fn a_user_outside_the_group_is_forbidden(env: &Env) {
    let token = env.dex.id_token("bob", CLIENT);
    let (ok, _, stderr) = as_token(env, &token, &["-n", TEAM_NS, "get", "configmaps"]);
    assert!(!ok);
    assert!(stderr.contains("(Forbidden)"), "{stderr}");
    assert!(
        stderr.contains(&format!("User \"{PREFIX}bob@example.test\" cannot list")),
        "{stderr}"
    );
}

/// A token the provider signed for another client is not for this cluster: 401.
fn a_token_for_another_audience_is_refused(env: &Env) {
    let token = env.dex.id_token("alice", OTHER_CLIENT);
    assert_eq!(claims(&token)["aud"], OTHER_CLIENT);
    let (ok, _, stderr) = as_token(env, &token, &["-n", TEAM_NS, "get", "configmaps"]);
    assert!(!ok);
    assert!(stderr.contains("Unauthorized"), "{stderr}");
    // The same user's token for this cluster is served.
    let token = env.dex.id_token("alice", CLIENT);
    let (ok, _, stderr) = as_token(env, &token, &["-n", TEAM_NS, "get", "configmaps"]);
    assert!(ok, "{stderr}");
}

/// alice's token from the suite's start, first presented after it expired: 401.
fn an_expired_token_is_refused(env: &Env) {
    let c = claims(&env.early_token);
    assert_eq!(c["aud"], CLIENT);
    assert_eq!(c["email"], "alice@example.test");
    let exp = c["exp"].as_u64().unwrap();
    eventually_sync("alice's first token to expire", TOKEN_LIFE * 3, || {
        (now_secs() > exp).then_some(()).ok_or(format!("exp {exp}"))
    });
    let (ok, _, stderr) = as_token(env, &env.early_token, &["-n", TEAM_NS, "get", "configmaps"]);
    assert!(!ok);
    assert!(stderr.contains("Unauthorized"), "{stderr}");
}

/// How long after its `exp` a served token may still pass: the front door
/// reuses a TokenReview answer for 10 s, and the API server its token
/// cache's for 10 s (neither looks at `exp`; the front door asks again only
/// when its answer is older than the API server's, so the two do not add up).
const CACHES: Duration = Duration::from_secs(10);

/// The token alice was served with stops working once expired, within the
/// caches' 10 s, though it was served again 5 s before its `exp`.
fn a_served_token_is_refused_once_expired(env: &Env) {
    let token = env
        .served_token
        .lock()
        .unwrap()
        .clone()
        .expect("group_binding_allows_a_member served a token");
    let exp = claims(&token)["exp"].as_u64().unwrap();
    // Served once more shortly before its exp, so that both caches hold it as it expires.
    eventually_sync(
        "5 s before alice's served token expires",
        TOKEN_LIFE,
        || {
            (now_secs() + 5 >= exp)
                .then_some(())
                .ok_or(format!("exp {exp}"))
        },
    );
    assert!(
        now_secs() < exp,
        "the suite came too late to use it before its exp"
    );
    let (ok, _, stderr) = as_token(env, &token, &["-n", TEAM_NS, "get", "configmaps"]);
    assert!(ok, "not served before its exp: {stderr}");
    eventually_sync("alice's served token to expire", TOKEN_LIFE * 3, || {
        (now_secs() > exp).then_some(()).ok_or(format!("exp {exp}"))
    });
    let refused_at = eventually_sync("alice's served token refused", CACHES + T, || {
        let (ok, _, stderr) = as_token(env, &token, &["-n", TEAM_NS, "get", "configmaps"]);
        let now = now_secs();
        if ok {
            Err(format!("still served at {now}, exp {exp}"))
        } else if stderr.contains("Unauthorized") {
            Ok(now)
        } else {
            Err(format!("refused otherwise: {stderr}"))
        }
    });
    // A few seconds more for the kubectl calls themselves on a busy machine.
    assert!(
        refused_at <= exp + CACHES.as_secs() + 5,
        "still served {} s after its exp",
        refused_at - exp
    );
    println!(
        "alice's served token refused {} s after its exp",
        refused_at - exp
    );
}

fn connect(env: &Env, extra: &[&str]) -> std::process::Output {
    let host = env.stack.host_kubeconfig();
    let server = &env.stack.state.front_door.as_ref().unwrap().server;
    let mut args = vec![
        "connect",
        "dev",
        "-n",
        "vcluster-dev",
        "--kubeconfig",
        host.to_str().unwrap(),
        "--server",
        server,
        "--print",
    ];
    args.extend_from_slice(extra);
    vcluster(&args)
}

/// `connect --token-file`: a kubeconfig with no credential but the file, which
/// kubectl reads; `connect --oidc`: kubectl runs the exec plugin it names.
fn connect_writes_a_single_sign_on_user(env: &Env) {
    let dir = env.stack.dir.path();
    let token_file = dir.join("id-token");
    std::fs::write(&token_file, env.dex.id_token("alice", CLIENT)).unwrap();
    let out = connect(env, &["--token-file", token_file.to_str().unwrap()]);
    let (kc, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(!kc.contains("client-key-data"), "{kc}");
    assert!(
        kc.contains(&format!("tokenFile: {}", token_file.display())),
        "{kc}"
    );
    let path = dir.join("token-file.kubeconfig");
    std::fs::write(&path, &kc).unwrap();
    kubectl_ok(
        &path,
        &["-n", TEAM_NS, "get", "configmap", "from-alice"],
        None,
    );

    // A stand-in for `kubectl oidc-login`: records its arguments and answers
    // with a fresh token as the plugin would.
    let plugin = dir.join("oidc-plugin");
    let seen = dir.join("plugin-args");
    std::fs::write(&token_file, env.dex.id_token("alice", CLIENT)).unwrap();
    std::fs::write(
        &plugin,
        format!(
            "#!/bin/sh\necho \"$@\" > {}\nprintf '{{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\",\"status\":{{\"token\":\"%s\"}}}}' \"$(cat {})\"\n",
            seen.display(),
            token_file.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let issuer = format!("--oidc-issuer-url={}", env.dex.issuer);
    let out = connect(
        env,
        &[
            "--oidc",
            &issuer,
            "--oidc-client-id",
            CLIENT,
            "--oidc-extra-scope",
            "groups",
            "--oidc-exec-command",
            plugin.to_str().unwrap(),
        ],
    );
    let (kc, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(!kc.contains("client-key-data"), "{kc}");
    let path = dir.join("oidc.kubeconfig");
    std::fs::write(&path, &kc).unwrap();
    kubectl_ok(
        &path,
        &["-n", TEAM_NS, "get", "configmap", "from-alice"],
        None,
    );
    let args = std::fs::read_to_string(&seen).unwrap();
    assert_eq!(
        args.trim(),
        format!(
            "get-token --oidc-issuer-url={} --oidc-client-id={CLIENT} --oidc-extra-scope=groups",
            env.dex.issuer
        )
    );
    let kc: Value = serde_yaml::from_str(&kc).unwrap();
    assert_eq!(
        kc["users"][0]["user"]["exec"]["apiVersion"],
        "client.authentication.k8s.io/v1"
    );

    // Mistakes: one line, non-zero.
    for (extra, why) in [
        (
            vec!["--oidc", "--token-file", token_file.to_str().unwrap()],
            "--oidc and --token-file are two ways to sign in",
        ),
        (vec!["--oidc"], "--oidc needs --oidc-issuer-url"),
        (vec!["--oidc", &issuer], "--oidc needs --oidc-client-id"),
        (vec!["--oidc-client-id", CLIENT], "apply only with --oidc"),
        (
            vec![
                "--oidc",
                "--oidc-issuer-url=http://127.0.0.1/dex",
                "--oidc-client-id=x",
            ],
            "must be an https URL",
        ),
        (
            vec!["--token-file", "/nonexistent/token"],
            "cannot read --token-file",
        ),
    ] {
        let out = connect(env, &extra);
        let (_, stderr) = text(&out);
        assert!(!out.status.success(), "{extra:?}");
        assert_eq!(stderr.trim().lines().count(), 1, "{extra:?}: {stderr}");
        assert!(stderr.contains(why), "{extra:?}: {stderr}");
    }
}

/// `dev up --authentication-config` with a file that cannot be read: one line, nothing started.
fn dev_up_refuses_an_unreadable_authentication_config(env: &Env) {
    let dir = env.stack.dir.path().join("not-started");
    let out = vcluster(&[
        "dev",
        "up",
        "--detach",
        "--state-dir",
        dir.to_str().unwrap(),
        "--authentication-config",
        "/nonexistent/auth.yaml",
    ]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cannot read the authentication configuration /nonexistent/auth.yaml"),
        "{stderr}"
    );
    assert!(!dir.join("stack.json").exists());
}

const TESTS: &[Test<Env>] = &[
    (
        "group_binding_allows_a_member",
        group_binding_allows_a_member,
    ),
    (
        "a_user_outside_the_group_is_forbidden",
        a_user_outside_the_group_is_forbidden,
    ),
    (
        "a_token_for_another_audience_is_refused",
        a_token_for_another_audience_is_refused,
    ),
    (
        "connect_writes_a_single_sign_on_user",
        connect_writes_a_single_sign_on_user,
    ),
    (
        "dev_up_refuses_an_unreadable_authentication_config",
        dev_up_refuses_an_unreadable_authentication_config,
    ),
    ("an_expired_token_is_refused", an_expired_token_is_refused),
    (
        "a_served_token_is_refused_once_expired",
        a_served_token_is_refused_once_expired,
    ),
];

fn main() {
    let args = Arguments::from_args();
    list_or_check(&args, &[TESTS]);
    let started = std::time::Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("vcluster-e2e-sso-")
        .tempdir()
        .unwrap();
    let dex = dex::start(
        dir.path(),
        &dex::DexSpec {
            address: "127.0.0.1",
            users: vec![dex::user("alice", &["team-a"]), dex::user("bob", &[])],
            clients: &[CLIENT, OTHER_CLIENT],
            token_life: TOKEN_LIFE,
        },
    );
    let early_token = dex.id_token("alice", CLIENT);
    let auth = chart_authentication_config(&dex, dir.path());
    let auth_arg = format!("--authentication-config={}", auth.display());
    let stack = DevStack::up(&["--nodes", "1", &auth_arg]);
    let admin = stack.vcluster_kubeconfig();
    kubectl_ok(&admin, &["create", "namespace", TEAM_NS], None);
    kubectl_ok(
        &admin,
        &[
            "-n",
            TEAM_NS,
            "create",
            "rolebinding",
            "team-a-edit",
            "--clusterrole=edit",
            "--group=oidc:team-a",
        ],
        None,
    );
    let anonymous_kc = anonymous_kubeconfig(&stack);
    let env = Arc::new(Env {
        stack,
        dex,
        anonymous_kc,
        early_token,
        served_token: std::sync::Mutex::new(None),
    });
    // In order: the first waits for the API server to fetch the provider's keys.
    let failed = run_groups(&args, &env, &[(TESTS, Some(1))]);
    println!(
        "e2e_sso: {:.1} s including Dex and the stack's start",
        started.elapsed().as_secs_f64()
    );
    if failed > 0 {
        let logs = env.stack.dir.path().join("logs");
        for (what, log) in [
            ("dex", dir.path().join("dex.log")),
            (
                "the virtual API server",
                logs.join("vcluster-kube-apiserver.log"),
            ),
        ] {
            eprintln!(
                "--- {what}: log tail\n{}",
                vcluster::local::process::log_tail(&log, 30)
            );
        }
        // `finish` exits without dropping `dir`: Dex's files stay for a look.
        eprintln!(
            "--- Dex's configuration and log kept in {}",
            dir.path().display()
        );
    }
    finish(env, failed, None);
}
