//! End-to-end tests of the Helm chart and of Helm inside a virtual cluster,
//! with the real `helm` binary: lint and template checks (k3s/config.yaml is
//! the source of truth; the `k8s` distro runs the dev plane's flags), a
//! server-side dry run and a real install into the host, the syncer running
//! with nothing but the chart's ServiceAccount, and CRD-heavy charts and CRD
//! bundles installed inside the virtual cluster.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams};
use libtest_mimic::Arguments;
use serde_json::{Value, json};
use vcluster::translate::{VclusterName, host_name};

const T: Duration = Duration::from_secs(90);
const RELEASE: &str = "my-vc";
const HOST_NS: &str = "team-chart";

struct Env {
    stack: DevStack,
    /// The syncer running as the chart's ServiceAccount (started by a test),
    /// and the kubeconfig of its front door.
    syncer: Mutex<Option<(SyncerProcess, PathBuf)>>,
}

/// Starts the syncer of `RELEASE` as the chart's pod would run it.
async fn start_syncer(env: &Env, host_kc: &Path) -> (SyncerProcess, PathBuf) {
    // The owner the chart names, as the chart names it.
    let docs = render(&[]);
    let owner = args_of(container(find(&docs, "StatefulSet", RELEASE), "syncer"))
        .into_iter()
        .find(|a| a.starts_with("--owner-statefulset="))
        .expect("the chart names the syncer's owner");
    chart::start_syncer(&env.stack, RELEASE, HOST_NS, host_kc, &[owner]).await
}

fn helm_bin() -> PathBuf {
    vcluster::local::default_bin_dir().join("helm")
}

fn helm(kubeconfig: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(helm_bin());
    cmd.args(args).stdin(Stdio::null());
    if let Some(kc) = kubeconfig {
        cmd.arg("--kubeconfig").arg(kc);
    }
    // Helm keeps caches and a registry config under HOME: keep them out of the user's.
    let home = std::env::temp_dir().join("vcluster-e2e-helm-home");
    cmd.env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    cmd.output().expect("run helm")
}

fn helm_ok(kubeconfig: Option<&Path>, args: &[&str]) -> String {
    let out = helm(kubeconfig, args);
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "helm {args:?} failed: {stderr}\n{stdout}"
    );
    stdout
}

/// The documents of a rendered chart.
fn render(extra: &[&str]) -> Vec<Value> {
    let mut args = vec![
        "template",
        RELEASE,
        "chart",
        "--namespace",
        HOST_NS,
        "--kube-version",
        "1.36.3",
    ];
    args.extend_from_slice(extra);
    let yaml = helm_ok(None, &args);
    yaml.split("\n---")
        .filter_map(|doc| serde_yaml::from_str::<Value>(doc).ok())
        .filter(|v| v.is_object())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind} {name} not rendered"))
}

fn container<'a>(sts: &'a Value, name: &str) -> &'a Value {
    sts["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("container {name} not rendered"))
}

fn args_of(c: &Value) -> Vec<String> {
    c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

fn helm_lint_passes(_: &Env) {
    for set in ["distro=k3s", "distro=k8s", "persistence.enabled=false"] {
        helm_ok(None, &["lint", "chart", "--set", set]);
    }
    helm_ok(
        None,
        &["lint", "chart", "-f", "examples/values-isolated.yaml"],
    );
    helm_ok(None, &["lint", "examples/widgets"]);
    // The isolated example: no node ports or load balancers on the host.
    let docs = render(&["-f", "examples/values-isolated.yaml"]);
    let syncer = args_of(container(find(&docs, "StatefulSet", RELEASE), "syncer"));
    assert!(
        syncer.contains(&"--allowed-service-types=ClusterIP,ExternalName".to_owned()),
        "{syncer:?}"
    );
    // The cluster DNS: on by default, its Service sends 53 to the syncer's 1053.
    let docs = render(&[]);
    let dns = find(&docs, "Service", &format!("{RELEASE}-dns"));
    let ports: Vec<(String, i64, String)> = dns["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let s = |k: &str| p[k].as_str().unwrap().to_owned();
            (s("protocol"), p["port"].as_i64().unwrap(), s("targetPort"))
        })
        .collect();
    assert_eq!(
        ports,
        [
            ("UDP".to_owned(), 53, "dns".to_owned()),
            ("TCP".to_owned(), 53, "dns-tcp".to_owned())
        ]
    );
    let syncer = container(find(&docs, "StatefulSet", RELEASE), "syncer");
    let args = args_of(syncer);
    for want in [
        "--dns=true",
        "--dns-port=1053",
        "--cluster-domain=cluster.local",
    ] {
        assert!(args.contains(&want.to_owned()), "{want}: {args:?}");
    }
    assert!(syncer["ports"].to_string().contains("1053"), "{syncer}");
    let off = render(&["--set", "dns.enabled=false"]);
    assert!(
        !off.iter()
            .any(|d| d["metadata"]["name"] == format!("{RELEASE}-dns"))
    );
    let args = args_of(container(find(&off, "StatefulSet", RELEASE), "syncer"));
    assert!(args.contains(&"--dns=false".to_owned()), "{args:?}");
}

fn sleep_values_become_syncer_flags(_: &Env) {
    let sleep_args = |extra: &[&str]| -> Vec<String> {
        let docs = render(extra);
        args_of(container(find(&docs, "StatefulSet", RELEASE), "syncer"))
            .into_iter()
            .filter(|a| a.starts_with("--sleep"))
            .collect()
    };
    let page = "--sleep-wake-listen=0.0.0.0:8081";
    assert_eq!(
        sleep_args(&[]),
        [page],
        "off by default; the waking page is always served (vcluster sleep works without a threshold)"
    );
    assert_eq!(
        sleep_args(&[
            "--set",
            "sleep.afterInactivity=30m",
            "--set",
            "sleep.countServiceAccounts=true",
            "--set",
            "sleep.ignoreUserAgents={argocd/*,flux}",
            "--set",
            "sleep.ignoreGroups={bots}",
            "--set",
            "sleep.wakeOnCronJobs=true",
        ]),
        [
            page,
            "--sleep-after=30m",
            "--sleep-count-service-accounts",
            "--sleep-ignore-user-agents=argocd/*,flux",
            "--sleep-ignore-groups=bots",
            "--sleep-wake-on-cronjobs",
        ]
    );
}

/// Tenant Certificates: off by default; on, the syncer syncs them for the
/// named ClusterIssuers, its Role writes host Certificates and its
/// ClusterRole reads only the Certificate definition.
fn certificate_values_become_syncer_flags_and_rules(_: &Env) {
    let rendered = |extra: &[&str]| {
        let docs = render(extra);
        let args: Vec<String> = args_of(container(find(&docs, "StatefulSet", RELEASE), "syncer"))
            .into_iter()
            .filter(|a| a.starts_with("--sync=") || a.starts_with("--certificate"))
            .collect();
        let rules = |kind: &str, name: &str| find(&docs, kind, name)["rules"].to_string();
        let cluster = format!("vc-{RELEASE}-{HOST_NS}");
        (
            args,
            rules("Role", &format!("vc-{RELEASE}")),
            rules("ClusterRole", &cluster),
        )
    };
    let (args, role, cluster) = rendered(&[]);
    assert!(
        !args[0].contains("certificates"),
        "off by default: {args:?}"
    );
    assert_eq!(args.len(), 1, "{args:?}");
    assert!(!role.contains("cert-manager.io") && !cluster.contains("customresourcedefinitions"));
    let (args, role, cluster) = rendered(&[
        "--set",
        "certManager.certificates.enabled=true",
        "--set",
        "certManager.certificates.clusterIssuers={shared-ca,team-ca}",
    ]);
    assert!(
        args[0].ends_with(",persistentvolumeclaims,certificates"),
        "{args:?}"
    );
    assert_eq!(args[1], "--certificate-cluster-issuers=shared-ca,team-ca");
    assert!(
        role.contains("cert-manager.io") && role.contains("certificates"),
        "{role}"
    );
    assert!(
        cluster.contains("certificates.cert-manager.io")
            && cluster.contains("customresourcedefinitions"),
        "{cluster}"
    );
}

fn k3s_configuration_matches_its_source_of_truth(_: &Env) {
    let docs = render(&[]);
    let cm = find(&docs, "ConfigMap", &format!("vc-{RELEASE}-k3s"));
    let rendered: Value =
        serde_yaml::from_str(cm["data"]["config.yaml"].as_str().unwrap()).unwrap();
    let truth: Value =
        serde_yaml::from_str(&std::fs::read_to_string("k3s/config.yaml").unwrap()).unwrap();
    assert_eq!(
        rendered, truth,
        "chart/templates/k3s-config.yaml and k3s/config.yaml disagree"
    );
    // The dev stack's virtual plane disables the same controllers.
    let kcm = truth["kube-controller-manager-arg"][0].as_str().unwrap();
    assert_eq!(
        kcm,
        format!(
            "controllers={}",
            vcluster::local::Role::Virtual.controllers()
        )
    );
    let sts = find(&docs, "StatefulSet", RELEASE);
    let k3s = container(sts, "k3s");
    let line = args_of(k3s).join(" ");
    assert!(
        line.contains("--config=/etc/vcluster/k3s/config.yaml"),
        "{line}"
    );
    assert!(
        line.contains("--service-cidr=\"$(cat /data/vcluster/service-cidr)\""),
        "{line}"
    );
    assert!(
        line.contains(&format!("--tls-san={RELEASE}.{HOST_NS}.svc")),
        "{line}"
    );
    // The service CIDR is discovered before k3s starts, unless given.
    let init = &sts["spec"]["template"]["spec"]["initContainers"][0];
    assert_eq!(init["args"][0], "service-cidr");
    let given = render(&["--set", "serviceCIDR=10.100.0.0/16"]);
    let line = args_of(container(find(&given, "StatefulSet", RELEASE), "k3s")).join(" ");
    assert!(line.contains("--service-cidr=\"10.100.0.0/16\""), "{line}");
}

fn k8s_distro_runs_the_dev_planes_flags(_: &Env) {
    let docs = render(&["--set", "distro=k8s", "--set", "serviceCIDR=10.96.0.0/16"]);
    let sts = find(&docs, "StatefulSet", RELEASE);
    let want = vcluster::control_plane::pod_control_plane(Path::new("/data"), false).unwrap();
    assert_eq!(args_of(container(sts, "etcd")), want.etcd);
    assert_eq!(args_of(container(sts, "kube-apiserver")), want.apiserver);
    assert_eq!(
        args_of(container(sts, "kube-controller-manager")),
        want.controller_manager
    );
    let syncer = args_of(container(sts, "syncer"));
    assert!(
        syncer.contains(
            &"--allowed-service-types=ClusterIP,NodePort,LoadBalancer,ExternalName".to_owned()
        ),
        "{syncer:?}"
    );
    assert!(syncer.contains(&format!(
        "--virtual-kubeconfig={}",
        want.admin_kubeconfig.display()
    )));
    assert!(syncer.contains(&format!("--client-ca-cert={}", want.client_ca.0.display())));
    // `control-plane-pki --print-args` prints what the manifests carry.
    let out = vcluster(&["control-plane-pki", "--dir", "/data", "--print-args"]);
    let (stdout, _) = text(&out);
    assert!(stdout.contains(&format!("kube-apiserver: {}", want.apiserver.join(" "))));
}

/// Single sign-on values: the ConfigMap of the virtual API server's
/// authentication configuration, and the flag (k8s) or k3s config line and
/// the mount that hand it to the control plane, for both distros; e2e_sso
/// runs the rendered file in a real API server against a real provider.
fn sso_values_render_for_both_distros(_: &Env) {
    let sso = [
        "--set",
        "sso.oidc.issuerUrl=https://login.example.com/dex",
        "--set",
        "sso.oidc.audiences={vcluster,kubectl}",
        "--set",
        "sso.oidc.usernameClaim=email",
        "--set",
        "sso.oidc.groupsPrefix=corp:",
        "--set",
        "sso.oidc.caPem=-----BEGIN CERTIFICATE-----",
    ];
    let config_arg = "--authentication-config=/etc/vcluster/sso/authentication-config.yaml";
    for distro in ["k8s", "k3s"] {
        let mut args = vec![
            "--set",
            if distro == "k8s" {
                "distro=k8s"
            } else {
                "distro=k3s"
            },
        ];
        args.extend_from_slice(&["--set", "serviceCIDR=10.96.0.0/16"]);
        args.extend_from_slice(&sso);
        let mut lint = vec!["lint", "chart"];
        lint.extend_from_slice(&args);
        helm_ok(None, &lint);
        let docs = render(&args);
        let cm = find(&docs, "ConfigMap", &format!("vc-{RELEASE}-sso"));
        let auth: Value =
            serde_yaml::from_str(cm["data"]["authentication-config.yaml"].as_str().unwrap())
                .unwrap();
        assert_eq!(
            auth,
            json!({
                "apiVersion": "apiserver.config.k8s.io/v1",
                "kind": "AuthenticationConfiguration",
                "jwt": [{
                    "issuer": {
                        "url": "https://login.example.com/dex",
                        "audiences": ["vcluster", "kubectl"],
                        "audienceMatchPolicy": "MatchAny",
                        "certificateAuthority": "-----BEGIN CERTIFICATE-----",
                    },
                    "claimMappings": {
                        "username": {"claim": "email", "prefix": "oidc:"},
                        "groups": {"claim": "groups", "prefix": "corp:"},
                    },
                }],
            }),
            "{distro}"
        );
        let sts = find(&docs, "StatefulSet", RELEASE);
        let pod = &sts["spec"]["template"]["spec"];
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "sso")
            .unwrap_or_else(|| panic!("{distro}: no sso volume"));
        assert_eq!(volume["configMap"]["name"], format!("vc-{RELEASE}-sso"));
        let api = container(
            sts,
            if distro == "k8s" {
                "kube-apiserver"
            } else {
                "k3s"
            },
        );
        assert!(
            api["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["name"] == "sso" && m["mountPath"] == "/etc/vcluster/sso"),
            "{distro}: {api}"
        );
        if distro == "k8s" {
            let mut want = vcluster::control_plane::pod_control_plane(Path::new("/data"), false)
                .unwrap()
                .apiserver;
            want.push(config_arg.to_owned());
            assert_eq!(args_of(api), want);
        } else {
            let k3s = find(&docs, "ConfigMap", &format!("vc-{RELEASE}-k3s"));
            let config: Value =
                serde_yaml::from_str(k3s["data"]["config.yaml"].as_str().unwrap()).unwrap();
            assert_eq!(
                config["kube-apiserver-arg"],
                json!([config_arg.trim_start_matches("--")])
            );
        }
    }
    // Off by default: nothing rendered, nothing mounted.
    let docs = render(&[]);
    assert!(
        !docs
            .iter()
            .any(|d| d["metadata"]["name"] == format!("vc-{RELEASE}-sso"))
    );
}

fn bad_values_are_refused_with_a_reason(_: &Env) {
    for (set, why) in [
        ("distro=vanilla", "distro \"vanilla\" is not supported"),
        (
            "isolation.podSecurityStandard=strict",
            "is not a Pod Security Standards level",
        ),
        (
            "isolation.serviceTypes={ClusterIP,Ingress}",
            "\"Ingress\" is not a Service type",
        ),
        (
            "certManager.certificates.enabled=true",
            "certManager.certificates.clusterIssuers: name the host ClusterIssuers",
        ),
        (
            "sso.oidc.issuerUrl=http://login.example.com",
            "the API server accepts only https issuers",
        ),
        (
            "sso.oidc.issuerUrl=https://login.example.com",
            "sso.oidc.audiences: name at least one client id",
        ),
        (
            "sso.oidc.issuerUrl=https://login.example.com,sso.oidc.audiences=vcluster",
            "sso.oidc.audiences: a list of client ids, not \"vcluster\"",
        ),
    ] {
        let out = helm(
            None,
            &[
                "template",
                RELEASE,
                "chart",
                "--kube-version",
                "1.36.3",
                "--set",
                set,
            ],
        );
        let (_, stderr) = text(&out);
        assert!(!out.status.success(), "{set}");
        assert!(stderr.contains(why), "{set}: {stderr}");
    }
    let long = "a-release-name-that-is-far-too-long-for-vc";
    let out = helm(
        None,
        &["template", long, "chart", "--kube-version", "1.36.3"],
    );
    assert!(!out.status.success());
    assert!(text(&out).1.contains("longer than 40 characters"));
}

/// Names of the objects a manifest holds, as `Kind/name`.
fn objects(manifest: &str) -> Vec<String> {
    manifest
        .split("\n---")
        .filter_map(|d| serde_yaml::from_str::<Value>(d).ok())
        .filter(|v| v.is_object())
        .map(|v| {
            format!(
                "{}/{}",
                v["kind"].as_str().unwrap(),
                v["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect()
}

fn install_creates_every_object(env: &Env) {
    let hk = env.stack.host_kubeconfig();
    let install = |mode: &str| {
        let args = [
            "install",
            RELEASE,
            "chart",
            "-n",
            HOST_NS,
            "--create-namespace",
            mode,
        ];
        helm_ok(Some(&hk), &args)
    };
    install("--dry-run=server");
    // The dry run made nothing.
    let out = kubectl(&hk, &["get", "statefulset", RELEASE, "-n", HOST_NS], None);
    assert!(!out.status.success());
    let notes = install("--wait=false");
    assert!(
        notes.contains(&format!("vcluster connect {RELEASE} -n {HOST_NS}")),
        "{notes}"
    );
    let manifest = helm_ok(Some(&hk), &["get", "manifest", RELEASE, "-n", HOST_NS]);
    let want = objects(&manifest);
    assert!(want.len() >= 12, "{want:?}");
    for kind in [
        "StatefulSet",
        "Service",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "ResourceQuota",
        "LimitRange",
        "NetworkPolicy",
    ] {
        assert!(
            want.iter().any(|o| o.starts_with(&format!("{kind}/"))),
            "{kind} missing: {want:?}"
        );
    }
    let got = kubectl_ok(
        &hk,
        &["get", "-f", "-", "-n", HOST_NS, "-o", "name"],
        Some(&manifest),
    );
    assert_eq!(got.lines().count(), want.len(), "{got}");
    // The StatefulSet's pod is created and carries the discovery labels.
    let sel = "vcluster.dev/instance=my-vc,vcluster.dev/component=control-plane";
    eventually_sync("the control-plane pod", T, || {
        let out = kubectl_ok(
            &hk,
            &["get", "pods", "-n", HOST_NS, "-l", sel, "-o", "name"],
            None,
        );
        if out.trim() == format!("pod/{RELEASE}-0") {
            Ok(())
        } else {
            Err(out)
        }
    });
}

async fn token_kubeconfig(env: &Env) -> PathBuf {
    chart::service_account_kubeconfig(&env.stack, RELEASE, HOST_NS).await
}

fn the_role_suffices_for_the_syncer(env: &Env) {
    block_on(async {
        let kc = token_kubeconfig(env).await;
        // The token really is the ServiceAccount, and may not do more.
        let out = kubectl(&kc, &["get", "pods", "-n", "default"], None);
        assert!(
            !out.status.success(),
            "the chart's ServiceAccount reads another namespace"
        );
        let (syncer, front_door) = start_syncer(env, &kc).await;
        let log = syncer.log.clone();
        *env.syncer.lock().unwrap() = Some((syncer, front_door));

        // The syncer-core smoke, plus Services, Endpoints and Ingresses.
        let v = client(&env.stack.vcluster_kubeconfig()).await;
        let h = client(&env.stack.host_kubeconfig()).await;
        let ns = "smoke";
        namespace(&v, ns).await;
        create(
            &Api::<ConfigMap>::namespaced(v.clone(), ns),
            json!({"metadata": {"name": "settings"}, "data": {"colour": "blue"}}),
        )
        .await;
        create(
            &Api::<Secret>::namespaced(v.clone(), ns),
            json!({"metadata": {"name": "web-tls"}, "type": "kubernetes.io/tls",
                "data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5"}}),
        )
        .await;
        create(
            &Api::<Deployment>::namespaced(v.clone(), ns),
            json!({"metadata": {"name": "web"},
                "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                  "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "nginx",
                    "envFrom": [{"configMapRef": {"name": "settings"}}]}]}}}}),
        )
        .await;
        create(
            &Api::<Service>::namespaced(v.clone(), ns),
            json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}),
        )
        .await;
        create(
            &Api::<Ingress>::namespaced(v.clone(), ns),
            json!({"metadata": {"name": "web"},
                "spec": {"tls": [{"hosts": ["web.example.com"], "secretName": "web-tls"}],
                  "rules": [{"host": "web.example.com", "http": {"paths": [{"path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}}),
        )
        .await;
        let vpods: Api<Pod> = Api::namespaced(v.clone(), ns);
        running(&vpods, "web", 2, T).await;
        let vc = VclusterName::new(RELEASE).unwrap();
        let hing: Api<Ingress> = Api::namespaced(h.clone(), HOST_NS);
        eventually("the ingress and its TLS secret on the host", T, || async {
            let i = hing
                .get_opt(&host_name(&vc, ns, "web"))
                .await
                .map_err(|e| e.to_string())?;
            let s = Api::<Secret>::namespaced(h.clone(), HOST_NS)
                .get_opt(&host_name(&vc, ns, "web-tls"))
                .await
                .map_err(|e| e.to_string())?;
            if i.is_some() && s.is_some() {
                Ok(())
            } else {
                Err(format!("{:?} {:?}", i.is_some(), s.is_some()))
            }
        })
        .await;
        let vsvc = Api::<Service>::namespaced(v.clone(), ns)
            .get("web")
            .await
            .unwrap();
        let hsvc = Api::<Service>::namespaced(h.clone(), HOST_NS)
            .get(&host_name(&vc, ns, "web"))
            .await
            .unwrap();
        assert_eq!(
            vsvc.spec.unwrap().cluster_ip,
            hsvc.spec.unwrap().cluster_ip,
            "ClusterIP parity with the chart's Role"
        );
        // Every host copy, and the Secrets the front door writes, are owned
        // by the release's StatefulSet (so `helm uninstall` collects them).
        let sts_uid = kubectl_ok(
            &env.stack.host_kubeconfig(),
            &[
                "get",
                "statefulset",
                RELEASE,
                "-n",
                HOST_NS,
                "-o",
                "jsonpath={.metadata.uid}",
            ],
            None,
        );
        let hsecrets = Api::<Secret>::namespaced(h.clone(), HOST_NS);
        for (what, meta) in [
            ("the Service copy", hsvc.metadata.clone()),
            (
                "the Ingress copy",
                hing.get(&host_name(&vc, ns, "web")).await.unwrap().metadata,
            ),
            (
                "the Secret copy",
                hsecrets
                    .get(&host_name(&vc, ns, "web-tls"))
                    .await
                    .unwrap()
                    .metadata,
            ),
            (
                "the kubeconfig Secret",
                hsecrets
                    .get(&format!("vc-{RELEASE}"))
                    .await
                    .unwrap()
                    .metadata,
            ),
        ] {
            let refs = meta.owner_references.unwrap_or_default();
            assert!(
                matches!(refs.as_slice(), [r] if r.kind == "StatefulSet" && r.name == RELEASE
                    && r.uid == sts_uid && r.controller != Some(true) && r.block_owner_deletion != Some(true)),
                "{what} is not owned by the StatefulSet {sts_uid}: {refs:?}"
            );
        }
        // Deleting goes through too.
        Api::<Deployment>::namespaced(v.clone(), ns)
            .delete("web", &Default::default())
            .await
            .unwrap();
        let hpods: Api<Pod> = Api::namespaced(h.clone(), HOST_NS);
        none_left(
            "host pods of the smoke",
            &hpods,
            &format!("vcluster.dev/owner={RELEASE},app=web"),
        )
        .await;
        let text = std::fs::read_to_string(&log).unwrap();
        let forbidden: Vec<&str> = text
            .lines()
            // Not a bare "403": timestamps contain it (".913403Z").
            .filter(|l| l.contains("code: 403") || l.to_ascii_lowercase().contains("forbidden"))
            .collect();
        assert!(
            forbidden.is_empty(),
            "the syncer was refused with the chart's Role:\n{}",
            forbidden.join("\n")
        );
    });
}

fn crd_heavy_charts_install_inside(env: &Env) {
    block_on(async {
        // Through the front door (run on its own, it starts a syncer of its own).
        let front_door = env
            .syncer
            .lock()
            .unwrap()
            .as_ref()
            .map(|(_, kc)| kc.clone());
        let vk = match front_door {
            Some(kc) => kc,
            None => {
                let started = start_syncer(env, &env.stack.host_kubeconfig()).await;
                let kc = started.1.clone();
                *env.syncer.lock().unwrap() = Some(started);
                kc
            }
        };
        let whoami = kubectl_ok(
            &vk,
            &[
                "config",
                "view",
                "--minify",
                "-o",
                "jsonpath={.clusters[0].cluster.server}",
            ],
            None,
        );
        assert!(whoami.starts_with("https://127.0.0.1:"), "{whoami}");
        helm_ok(
            Some(&vk),
            &[
                "install",
                "widgets",
                "examples/widgets",
                "-n",
                "demo",
                "--create-namespace",
                "--wait=false",
            ],
        );
        let out = kubectl_ok(&vk, &["get", "widgets", "-n", "demo", "-o", "name"], None);
        assert_eq!(
            out.lines().collect::<Vec<_>>(),
            [
                "widget.example.vcluster.dev/blue",
                "widget.example.vcluster.dev/red"
            ]
        );
        let out = kubectl_ok(&vk, &["get", "gadgets", "-o", "name"], None);
        assert_eq!(out.trim(), "gadget.example.vcluster.dev/widgets-gadget");
        // Its controller runs (on the host).
        let v = client(&vk).await;
        let pods: Api<Pod> = Api::namespaced(v.clone(), "demo");
        running(&pods, "widgets-controller", 1, T).await;

        // Real-world CRD bundles (some over 1 MB: server-side apply).
        for bundle in ["cert-manager", "argo-cd"] {
            let dir = format!("../shared/testdata/crds/{bundle}");
            kubectl_ok(&vk, &["apply", "--server-side", "-f", &dir], None);
        }
        let crds: Api<CustomResourceDefinition> = Api::all(v.clone());
        let names: Vec<String> = eventually("every CRD Established", T, || async {
            let l = crds
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            let pending: Vec<String> = l
                .items
                .iter()
                .filter(|c| {
                    !c.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| {
                            cs.iter()
                                .any(|c| c.type_ == "Established" && c.status == "True")
                        })
                })
                .map(|c| c.metadata.name.clone().unwrap_or_default())
                .collect();
            if pending.is_empty() {
                Ok(l.items
                    .iter()
                    .map(|c| c.metadata.name.clone().unwrap_or_default())
                    .collect())
            } else {
                Err(format!("{pending:?}"))
            }
        })
        .await;
        for want in [
            "certificates.cert-manager.io",
            "clusterissuers.cert-manager.io",
            "applications.argoproj.io",
            "applicationsets.argoproj.io",
            "appprojects.argoproj.io",
            "widgets.example.vcluster.dev",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
        // None of it is on the host.
        let host_crds: Api<CustomResourceDefinition> =
            Api::all(client(&env.stack.host_kubeconfig()).await);
        let on_host = host_crds.list(&ListParams::default()).await.unwrap();
        assert!(
            on_host.items.is_empty(),
            "{:?}",
            on_host
                .items
                .iter()
                .map(|c| c.metadata.name.clone())
                .collect::<Vec<_>>()
        );

        // Custom resources of both, created and listed.
        let resources = r#"
apiVersion: cert-manager.io/v1
kind: ClusterIssuer
metadata: {name: selfsigned}
spec: {selfSigned: {}}
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {name: web, namespace: demo}
spec:
  secretName: web-tls
  dnsNames: [web.example.com]
  issuerRef: {name: selfsigned, kind: ClusterIssuer}
---
apiVersion: argoproj.io/v1alpha1
kind: AppProject
metadata: {name: team, namespace: demo}
spec:
  destinations: [{namespace: '*', server: '*'}]
  sourceRepos: ['*']
---
apiVersion: argoproj.io/v1alpha1
kind: Application
metadata: {name: guestbook, namespace: demo}
spec:
  project: team
  source: {repoURL: 'https://example.com/repo.git', path: guestbook, targetRevision: HEAD}
  destination: {server: 'https://kubernetes.default.svc', namespace: guestbook}
"#;
        kubectl_ok(&vk, &["apply", "-f", "-"], Some(resources));
        let listed = kubectl_ok(
            &vk,
            &[
                "get",
                "certificates.cert-manager.io,applications.argoproj.io,appprojects.argoproj.io",
                "-n",
                "demo",
                "-o",
                "name",
            ],
            None,
        );
        let mut got: Vec<&str> = listed.lines().collect();
        got.sort_unstable();
        assert_eq!(
            got,
            [
                "application.argoproj.io/guestbook",
                "appproject.argoproj.io/team",
                "certificate.cert-manager.io/web",
            ]
        );
    });
}

fn helm_uninstall_alone_leaves_nothing(env: &Env) {
    let hk = env.stack.host_kubeconfig();
    // The release's pod goes with `helm uninstall`: so does the syncer.
    if let Some((mut s, _)) = env.syncer.lock().unwrap().take() {
        s.kill();
    }
    helm_ok(Some(&hk), &["uninstall", RELEASE, "-n", HOST_NS, "--wait"]);
    // What the syncer wrote (the tenant's copies, the kubeconfig and serving
    // CA Secrets) goes with the StatefulSet: the host's garbage collector.
    let kinds = "all,configmaps,secrets,serviceaccounts,roles,rolebindings,endpoints,endpointslices,ingresses,persistentvolumeclaims,networkpolicies,resourcequotas,limitranges";
    for label in [
        format!("vcluster.dev/instance={RELEASE}"),
        format!("vcluster.dev/owner={RELEASE}"),
    ] {
        eventually_sync(&format!("nothing labelled {label}"), T, || {
            let out = kubectl_ok(
                &hk,
                &["get", kinds, "-n", HOST_NS, "-l", &label, "-o", "name"],
                None,
            );
            if out.trim().is_empty() {
                Ok(())
            } else {
                Err(out)
            }
        });
    }
    let out = kubectl_ok(
        &hk,
        &["get", "clusterroles,clusterrolebindings", "-o", "name"],
        None,
    );
    assert!(!out.contains(&format!("vc-{RELEASE}-")), "{out}");
    let out = kubectl_ok(
        &hk,
        &[
            "get",
            "secrets",
            "-n",
            HOST_NS,
            "-l",
            "owner=helm",
            "-o",
            "name",
        ],
        None,
    );
    assert!(out.trim().is_empty(), "{out}");
    // Nothing is left for `vcluster delete`: it says so, in one line.
    let out = vcluster(&[
        "delete",
        RELEASE,
        "-n",
        HOST_NS,
        "--kubeconfig",
        hk.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert_eq!(text(&out).1.trim().lines().count(), 1, "{:?}", text(&out));
}

const TESTS: &[Test<Env>] = &[
    ("helm_lint_passes", helm_lint_passes),
    (
        "sso_values_render_for_both_distros",
        sso_values_render_for_both_distros,
    ),
    (
        "sleep_values_become_syncer_flags",
        sleep_values_become_syncer_flags,
    ),
    (
        "certificate_values_become_syncer_flags_and_rules",
        certificate_values_become_syncer_flags_and_rules,
    ),
    (
        "k3s_configuration_matches_its_source_of_truth",
        k3s_configuration_matches_its_source_of_truth,
    ),
    (
        "k8s_distro_runs_the_dev_planes_flags",
        k8s_distro_runs_the_dev_planes_flags,
    ),
    (
        "bad_values_are_refused_with_a_reason",
        bad_values_are_refused_with_a_reason,
    ),
    (
        "crd_heavy_charts_install_inside",
        crd_heavy_charts_install_inside,
    ),
];

/// Run one after the other: the install comes before the syncer that uses it.
const ORDERED: &[Test<Env>] = &[
    ("install_creates_every_object", install_creates_every_object),
    (
        "the_role_suffices_for_the_syncer",
        the_role_suffices_for_the_syncer,
    ),
];

/// Last: removes what the others use.
const LAST: &[Test<Env>] = &[(
    "helm_uninstall_alone_leaves_nothing",
    helm_uninstall_alone_leaves_nothing,
)];

fn main() {
    let args = Arguments::from_args();
    list_or_check(&args, &[TESTS, ORDERED, LAST]);
    let env = Arc::new(Env {
        stack: DevStack::up(&["--no-syncer", "--nodes", "2"]),
        syncer: Mutex::new(None),
    });
    // The install comes before the syncer that uses it; the uninstall last.
    let failed = run_groups(
        &args,
        &env,
        &[(ORDERED, Some(1)), (TESTS, None), (LAST, Some(1))],
    );
    let log = env
        .syncer
        .lock()
        .unwrap()
        .as_ref()
        .map(|(s, _)| s.log.clone());
    finish(env, failed, log);
}
