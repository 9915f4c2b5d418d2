//! The pod rule's decisions over in-memory caches.

use serde_json::{Value, json};

use super::*;
use crate::sync::cache::filled;
use crate::sync::tests::{idle_client, merged, names, obj, removed, synced};
use crate::translate::markers::UID_ANNOTATION;

const NS: &str = "shop";

fn rule(
    configmaps: Vec<ConfigMap>,
    secrets: Vec<Secret>,
    services: Vec<Service>,
    level: Level,
) -> PodRule {
    let client = idle_client();
    PodRule::new(
        PodSources {
            host_configmaps: filled(configmaps),
            host_secrets: filled(secrets),
            services: filled(services),
            nodes: Arc::new(VirtualNodes::new(client.clone(), client)),
            tokens: Arc::default(),
            sleep: Arc::default(),
            host_claims: Some(filled(vec![on_host::<PersistentVolumeClaim>("ready")])),
        },
        ApiEndpoint {
            host: "10.0.0.1".into(),
            port: 443,
            tokens: TokenMode::PerPod,
        },
        None,
        level,
    )
}

fn plain() -> PodRule {
    rule(vec![], vec![], vec![], Level::Baseline)
}

/// Virtual pod `web` of namespace `shop`, with `extra` merged in.
fn pod(extra: Value) -> Pod {
    obj(merged(
        json!({
            "metadata": {"name": "web", "namespace": NS, "uid": "u1"},
            "spec": {"containers": [{"name": "app", "image": "nginx",
                "env": [{"name": "MODE", "value": "new"}]}]}
        }),
        extra,
    ))
}

/// A host copy of `web` (as slimmed in the cache) running on `n1`, created
/// with `env` in its one container.
fn host_copy(env: Value) -> Pod {
    obj(json!({
        "metadata": {"name": "web-x-shop-x-vc", "namespace": "host-ns", "uid": "h1"},
        "spec": {"nodeName": "n1", "containers": [{"name": "app", "env": env}]}
    }))
}

/// A ConfigMap (or Secret) `name` of namespace `shop` as copied to the host.
fn on_host<K: serde::de::DeserializeOwned>(name: &str) -> K {
    obj(json!({"metadata": {"name": host_name(&names().vc, NS, name), "namespace": "host-ns"}}))
}

fn env_of(p: &Pod) -> Vec<(String, Option<String>)> {
    p.spec.as_ref().unwrap().containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone()))
        .collect()
}

/// Whether `env` sets `name` to `value`.
fn sets(env: &[(String, Option<String>)], name: &str, value: &str) -> bool {
    env.iter()
        .any(|(n, v)| n == name && v.as_deref() == Some(value))
}

fn deleting() -> Value {
    json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z", "deletionGracePeriodSeconds": 30}})
}

#[tokio::test]
async fn a_deleted_pod_goes_from_the_host_with_its_grace_period_then_from_the_virtual_api() {
    let r = plain();
    let got = r.decide(&names(), &pod(deleting()), Some(&host_copy(json!([]))));
    assert!(
        matches!(
            got,
            Decision::Remove {
                grace_seconds: Some(30)
            }
        ),
        "{got:?}"
    );
    let got = r.decide(&names(), &pod(deleting()), None);
    assert!(matches!(got, Decision::DeleteVirtual), "{got:?}");
}

#[tokio::test]
async fn a_finished_pod_without_a_host_copy_keeps_its_status_and_is_not_recreated() {
    let r = plain();
    for phase in ["Succeeded", "Failed"] {
        let finished = pod(json!({"status": {"phase": phase}}));
        let got = r.decide(&names(), &finished, None);
        assert!(removed(&got), "{phase}: {got:?}");
        // With its host copy still there it stays synced (status comes up).
        let h = host_copy(json!([]));
        synced(r.decide(&names(), &finished, Some(&h)));
    }
    // A running pod without a host copy is created.
    let running = pod(json!({"status": {"phase": "Pending"}}));
    synced(r.decide(&names(), &running, None));
}

#[tokio::test]
async fn a_bound_pod_whose_host_copy_is_gone_is_ended() {
    let r = plain();
    let bound = pod(json!({"spec": {"nodeName": "n1"}}));
    let got = r.decide(&names(), &bound, None);
    assert!(matches!(got, Decision::DeleteVirtual), "{got:?}");
    synced(r.decide(&names(), &bound, Some(&host_copy(json!([])))));
}

fn asleep_rule() -> PodRule {
    let r = plain();
    r.sleep.set_asleep(true);
    r
}

/// `p` as it is once marked asleep.
fn marked(p: &Pod) -> Pod {
    let patch = sleeping_status(p).unwrap();
    obj(merged(serde_json::to_value(p).unwrap(), patch))
}

#[tokio::test]
async fn while_asleep_pods_are_held_unless_labelled_to_stay_awake() {
    let r = asleep_rule();
    let bound = pod(json!({"spec": {"nodeName": "n1"}, "status": {"phase": "Running"}}));
    match r.decide(&names(), &bound, Some(&host_copy(json!([])))) {
        Decision::Hold(Some(patch)) => assert!(patch.to_string().contains("VClusterSleeping")),
        other => panic!("{other:?}"),
    }
    // Already marked: the host copy goes, nothing more is written up.
    let slept = marked(&bound);
    assert!(matches!(
        r.decide(&names(), &slept, None),
        Decision::Hold(None)
    ));
    // A new pod (a Deployment's replacement) is not created either.
    let fresh = pod(json!({}));
    assert!(matches!(
        r.decide(&names(), &fresh, None),
        Decision::Hold(Some(_))
    ));
    // A finished pod keeps its final status.
    let done = pod(json!({"status": {"phase": "Succeeded"}}));
    assert!(matches!(
        r.decide(&names(), &done, Some(&host_copy(json!([])))),
        Decision::Hold(None)
    ));
    // A deleted one is still deleted.
    assert!(matches!(
        r.decide(&names(), &pod(deleting()), None),
        Decision::DeleteVirtual
    ));
    let awake = pod(json!({"metadata": {"labels": {crate::sleep::STAY_AWAKE_LABEL: "true"}}}));
    synced(r.decide(&names(), &awake, None));
}

#[tokio::test]
async fn on_wake_a_slept_pod_is_created_again_not_ended() {
    let r = plain();
    let bound = pod(json!({"spec": {"nodeName": "n1"}, "status": {"phase": "Running"}}));
    let slept = marked(&bound);
    synced(r.decide(&names(), &slept, None));
    // Its host copy is still going: created anew once it is gone.
    let going: Pod = obj(merged(
        serde_json::to_value(host_copy(json!([]))).unwrap(),
        deleting(),
    ));
    assert!(matches!(
        r.decide(&names(), &slept, Some(&going)),
        Decision::Wait(_)
    ));
    // Unmarked, the same pod without a host copy ended on the host.
    assert!(matches!(
        r.decide(&names(), &bound, None),
        Decision::DeleteVirtual
    ));
    // It was admitted before it slept: not checked again.
    let privileged = marked(&pod(
        json!({"spec": {"nodeName": "n1", "containers": [{"name": "app",
        "image": "nginx", "securityContext": {"privileged": true}}]}}),
    ));
    synced(r.decide(&names(), &privileged, None));
}

#[tokio::test]
async fn pod_security_is_checked_only_at_creation() {
    let privileged = pod(
        json!({"spec": {"containers": [{"name": "app", "image": "nginx",
        "securityContext": {"privileged": true}}]}}),
    );
    let r = plain();
    match r.decide(&names(), &privileged, None) {
        Decision::Reject(reason, message) => {
            assert_eq!(reason, "PodSecurityViolation");
            assert!(message.contains("baseline"), "{message}");
            assert!(message.contains("privileged"), "{message}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    // Already running on the host: a later change of level does not end it.
    synced(r.decide(&names(), &privileged, Some(&host_copy(json!([])))));
    // The privileged level admits it.
    let lax = rule(vec![], vec![], vec![], Level::Privileged);
    synced(lax.decide(&names(), &privileged, None));
    // A plain pod meets baseline.
    synced(r.decide(&names(), &pod(json!({})), None));
}

#[tokio::test]
async fn a_new_pod_waits_for_its_configmaps_and_secrets_on_the_host() {
    let needs = pod(json!({"spec": {"volumes": [
        {"name": "cfg", "configMap": {"name": "settings"}},
        {"name": "sec", "secret": {"secretName": "creds"}},
        {"name": "opt", "secret": {"secretName": "maybe", "optional": true}}
    ]}}));
    type Case = (
        &'static str,
        Vec<ConfigMap>,
        Vec<Secret>,
        Option<&'static str>,
    );
    let cases: [Case; 4] = [
        (
            "nothing on the host",
            vec![],
            vec![],
            Some("configmap settings"),
        ),
        (
            "only the ConfigMap",
            vec![on_host("settings")],
            vec![],
            Some("secret creds"),
        ),
        (
            "a Secret of another name",
            vec![on_host("settings")],
            vec![on_host("other")],
            Some("secret creds"),
        ),
        (
            "both (the optional one may be missing)",
            vec![on_host("settings")],
            vec![on_host("creds")],
            None,
        ),
    ];
    for (case, cms, secrets, waits_for) in cases {
        let r = rule(cms, secrets, vec![], Level::Baseline);
        match (r.decide(&names(), &needs, None), waits_for) {
            (Decision::Wait(why), Some(what)) => {
                assert!(why.contains(what), "{case}: {why}");
            }
            (Decision::Sync(_), None) => {}
            (other, _) => panic!("{case}: {other:?}"),
        }
    }
    // A pod already on the host does not wait (it has what it mounted).
    let r = plain();
    synced(r.decide(&names(), &needs, Some(&host_copy(json!([])))));
}

#[tokio::test]
async fn the_environment_of_an_existing_host_pod_is_kept() {
    let r = plain();
    let created = json!([{"name": "MODE", "value": "old"}, {"name": "DB_SERVICE_HOST", "value": "10.96.0.9"}]);
    let h = host_copy(created);
    let desired = synced(r.decide(&names(), &pod(json!({})), Some(&h)));
    assert_eq!(
        env_of(&desired),
        [
            ("MODE".to_owned(), Some("old".to_owned())),
            ("DB_SERVICE_HOST".to_owned(), Some("10.96.0.9".to_owned()))
        ]
    );
    // New: the pod's own environment and the API endpoint.
    let desired = synced(r.decide(&names(), &pod(json!({})), None));
    let env = env_of(&desired);
    assert!(sets(&env, "MODE", "new"), "{env:?}");
    assert!(sets(&env, "KUBERNETES_SERVICE_HOST", "10.0.0.1"), "{env:?}");
}

#[tokio::test]
async fn the_dns_settings_of_an_existing_host_pod_are_kept() {
    let dns_rule = || {
        let mut r = plain();
        r.dns = Some(ClusterDns {
            nameserver: "10.96.0.10".into(),
            domain: "cluster.local".into(),
        });
        r
    };
    let policy = |p: &Pod| p.spec.as_ref().and_then(|s| s.dns_policy.clone());
    // A new pod asks the vcluster's DNS.
    let fresh = synced(dns_rule().decide(&names(), &pod(json!({})), None));
    assert_eq!(policy(&fresh).as_deref(), Some("None"));
    // One created before the DNS was on keeps the host's resolver (the
    // field cannot change on a pod: writing it would be refused with 422).
    let mut before = host_copy(json!([]));
    before.spec.as_mut().unwrap().dns_policy = Some("ClusterFirst".into());
    let kept = synced(dns_rule().decide(&names(), &pod(json!({})), Some(&before)));
    assert_eq!(policy(&kept).as_deref(), Some("ClusterFirst"));
    assert_eq!(kept.spec.as_ref().unwrap().dns_config, None);
    // And with the DNS off, one created while it was on keeps its nameserver
    // (read from the host cache, which keeps only some of a pod's spec).
    let mut cached = fresh.clone();
    PodRule::slim_host(&mut cached);
    let kept = synced(plain().decide(&names(), &pod(json!({})), Some(&cached)));
    assert_eq!(policy(&kept).as_deref(), Some("None"));
    assert_eq!(
        kept.spec.as_ref().unwrap().dns_config,
        fresh.spec.as_ref().unwrap().dns_config
    );
}

#[tokio::test]
async fn service_links_come_from_the_virtual_services_of_the_pods_namespace() {
    let svc = |ns: &str, name: &str, ip: &str| -> Service {
        obj(json!({"metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "ports": [{"port": 5432}]}}))
    };
    let r = rule(
        vec![],
        vec![],
        vec![
            svc(NS, "db", "10.96.0.5"),
            svc("other", "cache", "10.96.0.6"),
        ],
        Level::Baseline,
    );
    let desired = synced(r.decide(&names(), &pod(json!({})), None));
    let env = env_of(&desired);
    assert!(sets(&env, "DB_SERVICE_HOST", "10.96.0.5"), "{env:?}");
    assert!(
        !env.iter().any(|(n, _)| n.starts_with("CACHE_")),
        "another namespace's Service: {env:?}"
    );
}

#[tokio::test]
async fn status_comes_up_once_the_pod_is_bound() {
    let r = plain();
    let v = pod(json!({}));
    let mut h = host_copy(json!([]));
    h.status = Some(obj(json!({"phase": "Running", "podIP": "10.244.0.7"})));
    let patch = r.status_up(&v, &h).unwrap();
    assert_eq!(patch["status"]["phase"], "Running");
    // Not scheduled on the host yet: the virtual pod stays Pending.
    h.spec.as_mut().unwrap().node_name = None;
    assert_eq!(r.status_up(&v, &h), None);
}

#[tokio::test]
async fn claims_are_renamed_and_waited_for() {
    let p = pod(json!({"spec": {"volumes": [
        {"name": "data", "persistentVolumeClaim": {"claimName": "ready"}},
        {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {
            "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}}}
    ]}}));
    // The ephemeral volume's claim (`web-scratch`) is not on the host yet.
    match plain().decide(&names(), &p, None) {
        Decision::Wait(why) => assert!(why.contains("claim web-scratch"), "{why}"),
        other => panic!("expected to wait, got {other:?}"),
    }
    let mut r = plain();
    r.host_claims = Some(filled(vec![
        on_host::<PersistentVolumeClaim>("ready"),
        on_host::<PersistentVolumeClaim>("web-scratch"),
    ]));
    let out = synced(r.decide(&names(), &p, None));
    let vols = out.spec.unwrap().volumes.unwrap();
    let claim = |i: usize| {
        vols[i]
            .persistent_volume_claim
            .as_ref()
            .unwrap()
            .claim_name
            .clone()
    };
    assert_eq!(claim(0), "ready-x-shop-x-vc");
    assert_eq!(claim(1), "web-scratch-x-shop-x-vc");
    assert!(
        vols[1].ephemeral.is_none(),
        "the host makes no claim of its own"
    );
    // Without claims synced, nothing is waited for (the names still translate).
    r.host_claims = None;
    synced(r.decide(&names(), &p, None));
}

#[tokio::test]
async fn a_token_secret_left_by_an_earlier_host_pod_of_the_name_is_not_current() {
    let index = TokenIndex::default();
    let mut w = ListWriter::new(Arc::clone(&index.renew_at));
    let key = |_: &Secret| -> Box<str> { "".into() };
    let value = |_: &Secret| (0, String::new());
    w.apply(&watcher::Event::Init, key, value);
    w.apply(&watcher::Event::InitDone, key, value);
    index.record("web-x-shop-x-vc.sa-token", 2_000, "h1");
    let due = |owner| index.due("web-x-shop-x-vc.sa-token", owner);
    assert_eq!(due(Some("h1")).await, Some(2_000));
    // The host pod was deleted (the vcluster slept) and created again.
    assert_eq!(due(Some("h2")).await, None);
    assert_eq!(due(None).await, Some(2_000));
}

/// The Secret the host form of `p` reads its service-account token from.
fn token_read(p: &Pod) -> String {
    let spec = serde_json::to_value(p.spec.as_ref().unwrap()).unwrap();
    spec["volumes"][0]["projected"]["sources"][0]["secret"]["name"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_host_pod_keeps_the_token_secret_it_was_created_with() {
    let with_token = || {
        pod(
            json!({"spec": {"volumes": [{"name": "kube-api-access", "projected": {"sources": [
            {"serviceAccountToken": {"path": "token"}}]}}]}}),
        )
    };
    let mut shared = plain();
    shared.api.tokens = TokenMode::Shared;
    // New: the service account's shared Secret, named on the host copy.
    let fresh = synced(shared.decide(&names(), &with_token(), None));
    let name = token_read(&fresh);
    assert!(name.starts_with("default-x-shop-x-vc.sa-token-"), "{name}");
    // Existing, from the cache (slimmed): still that one.
    let mut cached = fresh.clone();
    cached.metadata.name = Some("web-x-shop-x-vc".into());
    PodRule::slim_host(&mut cached);
    let kept = synced(shared.decide(&names(), &with_token(), Some(&cached)));
    assert_eq!(token_read(&kept), name);
    // One written per pod before the switch keeps its own Secret (volumes
    // cannot change: writing the shared one would be refused with 422).
    let before = host_copy(json!([]));
    let kept = synced(shared.decide(&names(), &with_token(), Some(&before)));
    assert_eq!(token_read(&kept), "web-x-shop-x-vc.sa-token");
}

#[tokio::test]
async fn the_sweep_finds_shared_token_secrets_no_host_pod_reads() {
    let index = TokenIndex::default();
    index.record("web-x-shop-x-vc.sa-token", 2_000, "h1");
    index.record("default-x-shop-x-vc.sa-token-aaaa", 2_000, "");
    index.record("builder-x-shop-x-vc.sa-token-bbbb", 2_000, "");
    let reader = obj::<Pod>(
        json!({"metadata": {"name": "web-x-shop-x-vc", "namespace": "host-ns",
        "annotations": {TOKEN_SECRET_ANNOTATION: "default-x-shop-x-vc.sa-token-aaaa"}}}),
    );
    let unread = index.unread_shared(&filled(vec![reader]));
    // Per-pod Secrets go with their pod's garbage collection, not the sweep.
    assert_eq!(
        unread,
        HashSet::from(["builder-x-shop-x-vc.sa-token-bbbb".to_owned()])
    );
}

#[tokio::test]
async fn the_host_copy_of_an_earlier_pod_of_the_name_goes_first() {
    let r = plain();
    let of = |uid: &str, deleting: bool| {
        let mut h = host_copy(json!([]));
        h.metadata.annotations = Some([(UID_ANNOTATION.to_owned(), uid.to_owned())].into());
        if deleting {
            h.metadata.deletion_timestamp = obj(json!("2026-12-07T00:00:00Z"));
        }
        h
    };
    // The pod was deleted and made again under its name (uid u1 now): the
    // copy written for u0 is removed, not taken over (its node and status
    // would come up, and its deletion end the new pod).
    assert!(matches!(
        r.decide(&names(), &pod(json!({})), Some(&of("u0", false))),
        Decision::Remove {
            grace_seconds: Some(0)
        }
    ));
    assert!(matches!(
        r.decide(&names(), &pod(json!({})), Some(&of("u0", true))),
        Decision::Wait(_)
    ));
    // Its own copy is synced.
    synced(r.decide(&names(), &pod(json!({})), Some(&of("u1", false))));
}
