//! Tests of the pod translation: references, the host form, status back.

use super::*;

fn vc() -> VclusterName {
    VclusterName::new("vc").unwrap()
}

fn api() -> ApiEndpoint {
    ApiEndpoint {
        host: "vc.team-a.svc".into(),
        port: 443,
        tokens: TokenMode::PerPod,
    }
}

fn pod(spec: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "web-0", "namespace": "team", "uid": "u1",
            "labels": {"app": "web", "vcluster.dev/owner": "spoof"}},
        "spec": spec
    }))
    .unwrap()
}

fn full_spec() -> Value {
    json!({
        "nodeName": "somewhere",
        "serviceAccountName": "builder",
        "priorityClassName": "system-cluster-critical",
        "priority": 2000000000,
        "runtimeClassName": "gvisor",
        "imagePullSecrets": [{"name": "regcred"}],
        "volumes": [
            {"name": "cfg", "configMap": {"name": "settings"}},
            {"name": "sec", "secret": {"secretName": "creds", "optional": true}},
            {"name": "kube-api-access", "projected": {"sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}
            ]}},
            {"name": "info", "downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}}
        ],
        "initContainers": [{"name": "init", "image": "busybox",
            "envFrom": [{"secretRef": {"name": "init-env"}}]}],
        "containers": [{"name": "app", "image": "nginx",
            "env": [
                {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "a"}}},
                {"name": "B", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "b", "optional": true}}},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
            ],
            "envFrom": [{"configMapRef": {"name": "more"}}]}]
    })
}

#[test]
fn references_cover_every_place_a_pod_names_configs() {
    let r = references(&pod(full_spec()));
    let set = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
    assert_eq!(r.configmaps, set(&["kube-root-ca.crt", "more", "settings"]));
    assert_eq!(r.secrets, set(&["init-env"]));
    assert_eq!(r.optional_secrets, set(&["creds", "regcred"]));
    assert!(r.uses_secret("creds") && !r.uses_configmap("creds"));
}

#[test]
fn host_pod_is_rewritten_for_the_host() {
    let v = vc();
    let h = host_pod(&v, &pod(full_spec()), &api(), &[], None);
    let j = serde_json::to_value(&h).unwrap();
    let spec = &j["spec"];
    let n = |name: &str| host_name(&v, "team", name);
    assert_eq!(spec.get("nodeName"), None);
    assert_eq!(spec.get("serviceAccountName"), None);
    assert_eq!(spec["automountServiceAccountToken"], false);
    assert_eq!(spec["enableServiceLinks"], false);
    assert_eq!(spec.get("priorityClassName"), None);
    assert_eq!(spec.get("priority"), None);
    assert_eq!(spec["runtimeClassName"], "gvisor");
    assert_eq!(spec["hostname"], "web-0");
    assert_eq!(spec["imagePullSecrets"][0]["name"], n("regcred"));
    assert_eq!(spec["volumes"][0]["configMap"]["name"], n("settings"));
    assert_eq!(spec["volumes"][1]["secret"]["secretName"], n("creds"));
    let projected = spec["volumes"][2]["projected"]["sources"]
        .as_array()
        .unwrap();
    assert_eq!(projected.len(), 3);
    assert_eq!(projected[0].get("serviceAccountToken"), None);
    assert_eq!(
        projected[0]["secret"]["name"],
        format!("{}.sa-token", n("web-0"))
    );
    assert_eq!(projected[0]["secret"]["items"][0]["key"], "token");
    assert_eq!(projected[0]["secret"]["items"][0]["path"], "token");
    assert_eq!(projected[1]["configMap"]["name"], n("kube-root-ca.crt"));
    assert_eq!(
        projected[2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
        "metadata.annotations['vcluster.dev/namespace']"
    );
    assert_eq!(
        spec["volumes"][3]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
        "metadata.annotations['vcluster.dev/name']"
    );
    let env = &spec["containers"][0]["env"];
    assert_eq!(
        env[0]["valueFrom"]["configMapKeyRef"]["name"],
        n("settings")
    );
    assert_eq!(env[1]["valueFrom"]["secretKeyRef"]["name"], n("creds"));
    assert_eq!(
        env[2]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.annotations['vcluster.dev/name']"
    );
    assert_eq!(
        env[3]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.annotations['vcluster.dev/uid']"
    );
    assert_eq!(
        env[4]["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName",
        "host facts stay host facts"
    );
    assert_eq!(
        spec["containers"][0]["envFrom"][0]["configMapRef"]["name"],
        n("more")
    );
    assert_eq!(
        spec["initContainers"][0]["envFrom"][0]["secretRef"]["name"],
        n("init-env")
    );
    // Tenant labels are copied, reserved ones are not.
    assert_eq!(j["metadata"]["labels"]["app"], "web");
    assert_eq!(j["metadata"]["labels"].get("vcluster.dev/owner"), None);
}

#[test]
fn api_endpoint_is_injected_unless_set_and_token_source_is_read() {
    let v = vc();
    let mut p = pod(full_spec());
    let h = serde_json::to_value(host_pod(&v, &p, &api(), &[], None)).unwrap();
    for c in ["containers", "initContainers"] {
        let env = h["spec"][c][0]["env"].as_array().unwrap();
        let get = |k: &str| {
            env.iter()
                .find(|e| e["name"] == k)
                .map(|e| e["value"].clone())
        };
        assert_eq!(
            get("KUBERNETES_SERVICE_HOST"),
            Some(json!("vc.team-a.svc")),
            "{c}"
        );
        assert_eq!(get("KUBERNETES_SERVICE_PORT"), Some(json!("443")), "{c}");
    }
    // A container that sets its own value keeps it.
    p.spec.as_mut().unwrap().containers[0]
        .env
        .as_mut()
        .unwrap()
        .push(EnvVar {
            name: "KUBERNETES_SERVICE_HOST".into(),
            value: Some("mine".into()),
            value_from: None,
        });
    let h = serde_json::to_value(host_pod(&v, &p, &api(), &[], None)).unwrap();
    let env = h["spec"]["containers"][0]["env"].as_array().unwrap();
    let hosts: Vec<_> = env
        .iter()
        .filter(|e| e["name"] == "KUBERNETES_SERVICE_HOST")
        .collect();
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0]["value"], "mine");

    assert_eq!(
        token_source(&p),
        Some(TokenSource {
            service_account: "builder".into(),
            expiration_seconds: 3607,
            audience: None
        })
    );
    let none = pod(json!({"containers": [{"name": "a", "image": "b"}]}));
    assert_eq!(token_source(&none), None);
}

#[test]
fn service_links_match_what_a_kubelet_injects() {
    let svcs: Vec<Service> = serde_json::from_value(json!([
        {"metadata": {"name": "redis-primary"}, "spec": {"clusterIP": "10.97.0.11",
            "ports": [{"name": "redis", "port": 6379, "protocol": "TCP"}, {"port": 9121}]}},
        {"metadata": {"name": "headless"}, "spec": {"clusterIP": "None", "ports": [{"port": 80}]}},
        {"metadata": {"name": "kubernetes"}, "spec": {"clusterIP": "10.97.0.1", "ports": [{"name": "https", "port": 443}]}}
    ]))
    .unwrap();
    let env = service_link_env("default", &svcs);
    let get = |k: &str| {
        env.iter()
            .find(|e| e.name == k)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(
        get("REDIS_PRIMARY_SERVICE_HOST").as_deref(),
        Some("10.97.0.11")
    );
    assert_eq!(get("REDIS_PRIMARY_SERVICE_PORT").as_deref(), Some("6379"));
    assert_eq!(
        get("REDIS_PRIMARY_SERVICE_PORT_REDIS").as_deref(),
        Some("6379")
    );
    assert_eq!(
        get("REDIS_PRIMARY_PORT").as_deref(),
        Some("tcp://10.97.0.11:6379")
    );
    assert_eq!(
        get("REDIS_PRIMARY_PORT_9121_TCP_ADDR").as_deref(),
        Some("10.97.0.11")
    );
    assert_eq!(
        get("REDIS_PRIMARY_PORT_6379_TCP_PROTO").as_deref(),
        Some("tcp")
    );
    assert!(
        get("HEADLESS_SERVICE_HOST").is_none(),
        "headless services have no links"
    );
    assert!(
        get("KUBERNETES_SERVICE_HOST").is_none(),
        "the API endpoint stands for it"
    );

    // Injected before the container's own variables, which win on a clash.
    let mut p = pod(json!({"containers": [{"name": "a", "image": "b",
        "env": [{"name": "REDIS_PRIMARY_SERVICE_PORT", "value": "1"}]}]}));
    p.metadata.namespace = Some("default".into());
    let h = host_pod(&vc(), &p, &api(), &svcs, None);
    let env = h.spec.unwrap().containers[0].env.clone().unwrap();
    assert_eq!(env[0].name, "REDIS_PRIMARY_SERVICE_HOST");
    let ports: Vec<_> = env
        .iter()
        .filter(|e| e.name == "REDIS_PRIMARY_SERVICE_PORT")
        .collect();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].value.as_deref(), Some("1"));
    // A pod that turns service links off gets none.
    p.spec.as_mut().unwrap().enable_service_links = Some(false);
    let h = host_pod(&vc(), &p, &api(), &svcs, None);
    let env = h.spec.unwrap().containers[0].env.clone().unwrap();
    assert!(!env.iter().any(|e| e.name == "REDIS_PRIMARY_SERVICE_HOST"));
    assert_eq!(
        env.iter().filter(|e| e.name.starts_with("REDIS")).count(),
        1,
        "only its own"
    );
}

#[test]
fn status_comes_up_only_when_it_differs() {
    let v = pod(json!({"containers": [{"name": "app", "image": "nginx"}]}));
    let mut h = v.clone();
    assert_eq!(status_up(&v, &h), None, "no host status yet");
    h.status = Some(
        serde_json::from_value(json!({
            "phase": "Running", "podIP": "10.244.0.7", "podIPs": [{"ip": "10.244.0.7"}],
            "hostIP": "127.0.0.1", "startTime": "2026-01-01T00:00:00Z",
            "conditions": [{"type": "Ready", "status": "True"}],
            "nominatedNodeName": "host-detail"
        }))
        .unwrap(),
    );
    let patch = status_up(&v, &h).unwrap();
    assert_eq!(patch["status"]["phase"], "Running");
    assert_eq!(patch["status"]["podIP"], "10.244.0.7");
    assert_eq!(patch["status"].get("nominatedNodeName"), None);
    let mut v2 = v.clone();
    v2.status = h.status.clone();
    assert_eq!(status_up(&v2, &h), None);
}

#[test]
fn each_reported_status_field_alone_brings_the_status_up() {
    let v = pod(json!({"containers": [{"name": "app", "image": "nginx"}]}));
    let status = |extra: Value| {
        let mut p = v.clone();
        p.status = Some(serde_json::from_value(extra).unwrap());
        p
    };
    let c = |name: &str| json!([{"name": name, "image": "x", "imageID": "", "ready": true, "restartCount": 0}]);
    for (field, value) in [
        ("phase", json!("Running")),
        ("conditions", json!([{"type": "Ready", "status": "True"}])),
        ("containerStatuses", c("app")),
        ("initContainerStatuses", c("init")),
        ("ephemeralContainerStatuses", c("debug")),
        ("podIP", json!("10.244.0.7")),
        ("podIPs", json!([{"ip": "10.244.0.7"}])),
        ("hostIP", json!("127.0.0.1")),
        ("hostIPs", json!([{"ip": "127.0.0.1"}])),
        ("startTime", json!("2026-01-01T00:00:00Z")),
        ("message", json!("m")),
        ("reason", json!("r")),
    ] {
        let h = status(json!({ field: value }));
        let patch = status_up(&status(json!({})), &h);
        assert_eq!(
            patch.as_ref().and_then(|p| p["status"].get(field)),
            Some(&value),
            "{field}"
        );
    }
    let host_only = status(json!({"nominatedNodeName": "n", "qosClass": "BestEffort"}));
    assert_eq!(status_up(&status(json!({})), &host_only), None);
}

fn cluster_dns() -> ClusterDns {
    ClusterDns {
        nameserver: "10.96.0.53".into(),
        domain: "cluster.local".into(),
    }
}

fn dns_of(spec: Value) -> Value {
    let h = host_pod(&vc(), &pod(spec), &api(), &[], Some(&cluster_dns()));
    let s = serde_json::to_value(h.spec.unwrap()).unwrap();
    json!({"dnsPolicy": s["dnsPolicy"], "dnsConfig": s["dnsConfig"]})
}

#[test]
fn cluster_first_pods_ask_the_vcluster_dns() {
    let base = json!({"containers": [{"name": "c", "image": "busybox"}]});
    let ours = json!({
        "dnsPolicy": "None",
        "dnsConfig": {
            "nameservers": ["10.96.0.53"],
            "searches": ["team.svc.cluster.local", "svc.cluster.local", "cluster.local"],
            "options": [{"name": "ndots", "value": "5"}],
        },
    });
    // No policy is ClusterFirst; ClusterFirstWithHostNet too.
    assert_eq!(dns_of(base.clone()), ours);
    let with = |extra: Value| dns_of(crate::sync::tests::merged(base.clone(), extra));
    assert_eq!(with(json!({"dnsPolicy": "ClusterFirst"})), ours);
    assert_eq!(
        with(json!({"dnsPolicy": "ClusterFirstWithHostNet", "hostNetwork": true})),
        ours
    );
    // The tenant's own dnsConfig is merged in: its nameservers and searches
    // after ours, its options over ours.
    assert_eq!(
        with(json!({"dnsConfig": {
            "nameservers": ["1.1.1.1", "10.96.0.53", "8.8.8.8", "9.9.9.9"],
            "searches": ["corp.example", "svc.cluster.local"],
            "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}],
        }})),
        json!({
            "dnsPolicy": "None",
            "dnsConfig": {
                "nameservers": ["10.96.0.53", "1.1.1.1", "8.8.8.8"],
                "searches": ["team.svc.cluster.local", "svc.cluster.local", "cluster.local", "corp.example"],
                "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}],
            },
        })
    );
    // Default, None, and ClusterFirst on the host network keep theirs.
    let own = json!({"nameservers": ["1.1.1.1"]});
    for (policy, host_network) in [("Default", false), ("None", false), ("ClusterFirst", true)] {
        let spec = json!({"dnsPolicy": policy, "hostNetwork": host_network, "dnsConfig": own});
        assert_eq!(
            with(spec),
            json!({"dnsPolicy": policy, "dnsConfig": own}),
            "{policy}"
        );
    }
    // Without the syncer's DNS, pods are left as they are.
    let h = host_pod(&vc(), &pod(base), &api(), &[], None);
    assert_eq!(h.spec.unwrap().dns_policy, None);
}

/// A pod reading a service-account token of `sa`, with `audience`.
fn token_pod(name: &str, sa: &str, audience: Option<&str>) -> Pod {
    let mut p = pod(json!({
        "serviceAccountName": sa,
        "containers": [{"name": "c", "image": "i"}],
        "volumes": [{"name": "kube-api-access", "projected": {"sources": [
            {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607, "audience": audience}},
        ]}}],
    }));
    p.metadata.name = Some(name.into());
    p
}

fn token_secret_read(p: &Pod) -> String {
    let spec = serde_json::to_value(p.spec.as_ref().unwrap()).unwrap();
    spec["volumes"][0]["projected"]["sources"][0]["secret"]["name"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn shared_tokens_are_one_secret_per_service_account_audience_and_lifetime() {
    let n = |name: &str| host_name(&vc(), "team", name);
    let shared = ApiEndpoint {
        tokens: TokenMode::Shared,
        ..api()
    };
    let host = |p: &Pod| host_pod(&vc(), p, &shared, &[], None);
    let a = host(&token_pod("web-0", "builder", None));
    let b = host(&token_pod("web-1", "builder", None));
    let name = token_secret_read(&a);
    // Both pods of the service account read one Secret, named for it.
    assert_eq!(name, token_secret_read(&b));
    assert!(
        name.starts_with(&format!(
            "{}.sa-token-",
            host_name(&vc(), "team", "builder")
        )),
        "{name}"
    );
    // The host pod says which Secret it reads (its volumes cannot change later).
    assert_eq!(
        a.metadata.annotations.as_ref().unwrap()[TOKEN_SECRET_ANNOTATION],
        name
    );
    assert_eq!(read_token_secret(&a), name);
    // Another service account, or another audience: another Secret.
    assert_ne!(
        name,
        token_secret_read(&host(&token_pod("web-2", "default", None)))
    );
    assert_ne!(
        name,
        token_secret_read(&host(&token_pod("web-3", "builder", Some("vault"))))
    );
    // Per pod, each reads its own.
    let per_pod = host_pod(
        &vc(),
        &token_pod("web-0", "builder", None),
        &api(),
        &[],
        None,
    );
    assert_eq!(
        token_secret_read(&per_pod),
        format!("{}.sa-token", n("web-0"))
    );
    // An existing host pod keeps the Secret it was created with.
    let kept = host_pod_reading(
        &vc(),
        &token_pod("web-0", "builder", None),
        &shared,
        &[],
        None,
        format!("{}.sa-token", n("web-0")),
    );
    assert_eq!(token_secret_read(&kept), format!("{}.sa-token", n("web-0")));
    // A host pod from before the annotation read its per-pod Secret.
    let mut legacy = per_pod;
    legacy.metadata.name = Some(n("web-0"));
    legacy.metadata.annotations = None;
    assert_eq!(
        read_token_secret(&legacy),
        format!("{}.sa-token", n("web-0"))
    );
    assert_eq!("per-pod".parse::<TokenMode>(), Ok(TokenMode::PerPod));
    assert!("pods".parse::<TokenMode>().unwrap_err().contains("per-pod"));
}
