//! Deleting, refusing, waiting and status: exact deletes, rejected objects,
//! status up, pods that wait or finish, and the timer and backoff.

use super::*;

#[tokio::test]
async fn a_copy_whose_source_is_gone_is_deleted_exactly_once_the_api_confirms() {
    let copy = || {
        owned(
            obj::<ConfigMap>(
                json!({"metadata": {"name": "cfg-x-shop-x-vc", "namespace": "host-ns", "uid": "h1"}}),
            ),
            &cm_key(),
        )
    };
    let Setup {
        engine,
        mut host,
        mut virt,
    } = setup(all_configmaps(), vec![], vec![copy()]);
    let (got, (get, delete)) = scenario(reconciling(&engine, &cm_key(), false), async {
        let get = virt
            .answer(404, status(404, "NotFound", "configmaps \"cfg\" not found"))
            .await;
        let delete = host
            .answer(200, |_| serde_json::to_value(copy()).unwrap())
            .await;
        (get, delete)
    })
    .await;
    assert!(matches!(got, Ok(None)), "{got:?}");
    assert_eq!((get.method, get.path.as_str()), (Method::GET, VIRT_CM));
    assert_eq!(
        (delete.method, delete.path.as_str()),
        (Method::DELETE, HOST_CM)
    );
    assert_eq!(delete.body["preconditions"]["uid"], "h1");
    host.assert_quiet();

    // The cache lags a re-creation: the API still has it, nothing is deleted.
    let Setup {
        engine,
        mut host,
        mut virt,
    } = setup(all_configmaps(), vec![], vec![copy()]);
    let (got, _) = scenario(
        reconciling(&engine, &cm_key(), false),
        virt.answer(200, |_| {
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                "metadata": {"name": "cfg", "namespace": "shop", "uid": "u2"}})
        }),
    )
    .await;
    assert_eq!(got.unwrap(), Some(Duration::from_millis(200)));
    host.assert_quiet();
}

fn ingress(annotations: Value) -> Ingress {
    obj(json!({
        "metadata": {"name": "web", "namespace": "shop", "uid": "u1", "annotations": annotations},
        "spec": {"rules": [{"host": "a.example.com", "http": {"paths": [{"path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}
    }))
}

const HOST_ING: &str = "/apis/networking.k8s.io/v1/namespaces/host-ns/ingresses/web-x-shop-x-vc";

fn ingress_rule() -> IngressRule {
    IngressRule::new(IngressPolicy::default_for(&names().vc), Arc::default())
}

#[tokio::test]
async fn a_rejected_object_loses_its_host_copy_and_gets_a_warning() {
    let k = key("shop", "web");
    let denied = ingress(json!({"nginx.ingress.kubernetes.io/server-snippet": "x"}));
    let mut copy = owned(ingress(json!({})), &k);
    copy.metadata.name = Some("web-x-shop-x-vc".into());
    copy.metadata.namespace = Some("host-ns".into());
    copy.metadata.uid = Some("h1".into());
    let Setup {
        engine,
        mut host,
        mut virt,
    } = setup(ingress_rule(), vec![denied.clone()], vec![copy.clone()]);
    let (got, (delete, event)) = scenario(reconciling(&engine, &k, false), async {
        let delete = host
            .answer(200, |_| serde_json::to_value(&copy).unwrap())
            .await;
        (delete, virt.answer(201, echo(json!({}))).await)
    })
    .await;
    assert!(matches!(got, Ok(None)), "{got:?}");
    assert_eq!(
        (delete.method, delete.path.as_str()),
        (Method::DELETE, HOST_ING)
    );
    assert_eq!(delete.body["preconditions"]["uid"], "h1");
    assert_event(&event, "IngressAnnotationDenied", "server-snippet");
    assert_eq!(event.body["regarding"]["kind"], "Ingress");
    host.assert_quiet();
    // Nothing on the host: only the warning.
    let Setup {
        engine,
        mut host,
        mut virt,
    } = setup(ingress_rule(), vec![denied], vec![]);
    let (got, event) = scenario(
        reconciling(&engine, &k, false),
        virt.answer(201, echo(json!({}))),
    )
    .await;
    assert!(matches!(got, Ok(None)), "{got:?}");
    assert_event(&event, "IngressAnnotationDenied", "server-snippet");
    host.assert_quiet();
}

#[tokio::test]
async fn the_host_status_comes_up_onto_the_virtual_status() {
    let k = key("shop", "web");
    let v = ingress(json!({}));
    let Setup {
        engine,
        mut host,
        mut virt,
    } = setup(ingress_rule(), vec![v.clone()], vec![]);
    let lb = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.7"}]}});
    let (got, (apply, patch)) = scenario(reconciling(&engine, &k, false), async {
        let apply = host
            .answer(200, echo(json!({"metadata": {"uid": "h1"}, "status": lb})))
            .await;
        let v = serde_json::to_value(&v).unwrap();
        let patch = virt.answer(200, move |c| merged(v, c.body.clone())).await;
        (apply, patch)
    })
    .await;
    assert!(matches!(got, Ok(None)), "{got:?}");
    assert_apply(&apply, HOST_ING, true);
    assert_eq!(patch.method, Method::PATCH);
    assert_eq!(
        patch.path,
        "/apis/networking.k8s.io/v1/namespaces/shop/ingresses/web/status"
    );
    assert_eq!(patch.content_type, "application/merge-patch+json");
    assert_eq!(
        patch.body["status"]["loadBalancer"]["ingress"][0]["ip"],
        "192.0.2.7"
    );
    host.assert_quiet();
    virt.assert_quiet();
}

fn pod_rule() -> PodRule {
    pod_rule_with(Arc::default())
}

fn pod_rule_with(sleep: Arc<crate::sleep::Sleep>) -> PodRule {
    let client = idle_client();
    PodRule::new(
        PodSources {
            host_configmaps: filled(vec![]),
            host_secrets: filled(vec![]),
            services: filled(vec![]),
            nodes: Arc::new(VirtualNodes::new(client.clone(), client)),
            tokens: Arc::default(),
            sleep,
            host_claims: None,
        },
        ApiEndpoint {
            host: "10.0.0.1".into(),
            port: 443,
            tokens: crate::translate::pod::TokenMode::PerPod,
        },
        None,
        Level::Baseline,
    )
}

fn pod(spec: Value) -> Pod {
    obj(
        json!({"metadata": {"name": "web", "namespace": "shop", "uid": "u1"},
        "spec": merged(json!({"containers": [{"name": "app", "image": "nginx"}]}), spec)}),
    )
}

#[tokio::test]
async fn a_pod_that_waits_for_its_configmap_asks_again_shortly_without_writing() {
    let needs = pod(json!({"volumes": [{"name": "v", "configMap": {"name": "settings"}}]}));
    let Setup {
        engine,
        mut host,
        mut virt,
    } = setup(pod_rule(), vec![needs], vec![]);
    let (got, ()) = scenario(reconciling(&engine, &key("shop", "web"), false), async {}).await;
    assert_eq!(got.unwrap(), Some(Duration::from_secs(1)));
    host.assert_quiet();
    virt.assert_quiet();
}

#[tokio::test]
async fn a_finished_virtual_pod_is_deleted_once_the_host_confirms_its_copy_gone() {
    let bound = pod(json!({"nodeName": "n1"}));
    let Setup {
        engine,
        mut host,
        mut virt,
    } = setup(pod_rule(), vec![bound.clone()], vec![]);
    let (got, (get, delete)) = scenario(reconciling(&engine, &key("shop", "web"), false), async {
        let get = host
            .answer(404, status(404, "NotFound", "pods not found"))
            .await;
        let delete = virt
            .answer(200, |_| serde_json::to_value(&bound).unwrap())
            .await;
        (get, delete)
    })
    .await;
    assert!(matches!(got, Ok(None)), "{got:?}");
    assert_eq!(
        (get.method, get.path.as_str()),
        (
            Method::GET,
            "/api/v1/namespaces/host-ns/pods/web-x-shop-x-vc"
        )
    );
    assert_eq!(
        (delete.method, delete.path.as_str()),
        (Method::DELETE, "/api/v1/namespaces/shop/pods/web")
    );
    assert_eq!(delete.body["preconditions"]["uid"], "u1");
    assert_eq!(delete.body["gracePeriodSeconds"], 0);
}

/// Lets every task run that can.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn keys_asked_for_later_are_queued_at_their_deadlines() {
    let Setup { engine, .. } = setup(all_configmaps(), vec![], vec![]);
    engine.start_without_watches(0);
    engine.requeue_after(key("shop", "late"), Duration::from_secs(30));
    engine.requeue_after(key("shop", "soon"), Duration::from_secs(5));
    settle().await;
    assert_eq!(engine.queue_depth(), 0);
    tokio::time::advance(Duration::from_secs(5)).await;
    settle().await;
    assert_eq!(engine.queue_depth(), 1, "the earlier one");
    tokio::time::advance(Duration::from_millis(24_900)).await;
    settle().await;
    assert_eq!(engine.queue_depth(), 1, "not before its deadline");
    tokio::time::advance(Duration::from_millis(100)).await;
    settle().await;
    assert_eq!(engine.queue_depth(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_collision_is_looked_at_again_after_thirty_seconds() {
    let Setup {
        engine,
        mut host,
        mut virt,
    } = setup(all_configmaps(), vec![cm("v")], vec![]);
    engine.start_without_watches(1);
    engine.enqueue(cm_key());
    let script = async {
        host.answer(409, conflict()).await;
        host.answer(200, foreign_cm).await;
        virt.answer(201, echo(json!({}))).await;
        let told = tokio::time::Instant::now();
        let again = host.answer(200, echo(json!({}))).await;
        (told.elapsed(), again)
    };
    let (after, again) = tokio::time::timeout(Duration::from_secs(600), script)
        .await
        .unwrap();
    assert!(
        after >= Duration::from_secs(30) && after < Duration::from_millis(30_010),
        "{after:?}"
    );
    assert_apply(&again, HOST_CM, true);
}

#[tokio::test(start_paused = true)]
async fn a_failing_key_is_retried_with_growing_delays_reset_by_success() {
    let Setup {
        engine, mut host, ..
    } = setup(all_configmaps(), vec![cm("v")], vec![]);
    engine.start_without_watches(1);
    engine.enqueue(cm_key());
    let script = async {
        let mut at = Vec::new();
        for _ in 0..6 {
            host.answer(500, status(500, "InternalError", "etcd is slow"))
                .await;
            at.push(tokio::time::Instant::now());
        }
        host.answer(200, echo(json!({}))).await;
        // Failing again after a success starts from the shortest delay.
        engine.enqueue(cm_key());
        host.answer(500, status(500, "InternalError", "etcd is slow"))
            .await;
        let t = tokio::time::Instant::now();
        host.answer(500, status(500, "InternalError", "etcd is slow"))
            .await;
        (at, t.elapsed())
    };
    let (at, after_reset) = tokio::time::timeout(Duration::from_secs(600), script)
        .await
        .unwrap();
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    // Exponential from 200 ms, doubling, with up to as much again as jitter
    // (plus the timer's millisecond).
    for (n, gap) in gaps.iter().enumerate() {
        let base = Duration::from_millis(200 << n);
        assert!(
            *gap >= base && *gap <= base * 2 + Duration::from_millis(1),
            "attempt {n}: {gaps:?}"
        );
    }
    assert!(gaps.windows(2).all(|w| w[1] >= w[0]), "{gaps:?}");
    assert!(
        after_reset >= Duration::from_millis(200) && after_reset <= Duration::from_millis(401),
        "{after_reset:?}"
    );
}

#[tokio::test]
async fn a_deleted_pod_goes_from_the_host_with_its_grace_period() {
    let k = key("shop", "web");
    let deleting: Pod = obj(merged(
        serde_json::to_value(pod(json!({"nodeName": "n1"}))).unwrap(),
        json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z", "deletionGracePeriodSeconds": 30}}),
    ));
    let copy: Pod = owned(
        obj(
            json!({"metadata": {"name": "web-x-shop-x-vc", "namespace": "host-ns", "uid": "h1"},
            "spec": {"nodeName": "n1", "containers": [{"name": "app"}]}}),
        ),
        &k,
    );
    let Setup {
        engine,
        mut host,
        mut virt,
    } = setup(pod_rule(), vec![deleting], vec![copy.clone()]);
    let (got, delete) = scenario(
        reconciling(&engine, &k, false),
        host.answer(200, |_| serde_json::to_value(&copy).unwrap()),
    )
    .await;
    assert!(matches!(got, Ok(None)), "{got:?}");
    assert_eq!(
        (delete.method, delete.path.as_str()),
        (
            Method::DELETE,
            "/api/v1/namespaces/host-ns/pods/web-x-shop-x-vc"
        )
    );
    assert_eq!(delete.body["gracePeriodSeconds"], 30);
    assert_eq!(delete.body["preconditions"]["uid"], "h1");
    host.assert_quiet();
    virt.assert_quiet();
}

#[tokio::test]
async fn a_host_pod_already_terminating_is_not_deleted_again() {
    let k = key("shop", "web");
    let deleting = |grace: i64| -> Pod {
        obj(merged(
            serde_json::to_value(pod(json!({"nodeName": "n1"}))).unwrap(),
            json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z", "deletionGracePeriodSeconds": grace}}),
        ))
    };
    let terminating: Pod = owned(
        obj(
            json!({"metadata": {"name": "web-x-shop-x-vc", "namespace": "host-ns", "uid": "h1",
                                "deletionTimestamp": "2026-01-01T00:00:00Z", "deletionGracePeriodSeconds": 30},
                   "spec": {"nodeName": "n1", "containers": [{"name": "app"}]}}),
        ),
        &k,
    );
    // The same grace (or a longer one): nothing to ask of the host.
    for grace in [30, 60] {
        let Setup {
            engine,
            mut host,
            mut virt,
        } = setup(pod_rule(), vec![deleting(grace)], vec![terminating.clone()]);
        let got = tokio::time::timeout(Duration::from_secs(5), reconciling(&engine, &k, false))
            .await
            .unwrap_or_else(|_| {
                panic!("grace {grace}: the reconcile asked the host for something")
            });
        assert!(matches!(got, Ok(None)), "{got:?}");
        host.assert_quiet();
        virt.assert_quiet();
    }
    // A shorter grace still goes through.
    let Setup {
        engine,
        mut host,
        mut virt,
    } = setup(pod_rule(), vec![deleting(0)], vec![terminating.clone()]);
    let (got, delete) = scenario(
        reconciling(&engine, &k, false),
        host.answer(200, |_| serde_json::to_value(&terminating).unwrap()),
    )
    .await;
    assert!(matches!(got, Ok(None)), "{got:?}");
    assert_eq!(delete.method, Method::DELETE);
    assert_eq!(delete.body["gracePeriodSeconds"], 0);
    host.assert_quiet();
    virt.assert_quiet();
}

#[tokio::test]
async fn a_cached_copy_written_for_another_source_is_a_collision() {
    // Ours, but its markers name another virtual object.
    let other = owned(
        obj::<ConfigMap>(
            json!({"metadata": {"name": "cfg-x-shop-x-vc", "namespace": "host-ns", "uid": "h1"}}),
        ),
        &key("elsewhere", "cfg"),
    );
    let Setup {
        engine,
        mut host,
        mut virt,
    } = setup(all_configmaps(), vec![cm("v")], vec![other]);
    let (got, event) = scenario(
        reconciling(&engine, &cm_key(), false),
        virt.answer(201, echo(json!({}))),
    )
    .await;
    assert_eq!(got.unwrap(), Some(Duration::from_secs(30)));
    assert_event(&event, "SyncNameCollision", "cfg-x-shop-x-vc");
    host.assert_quiet();
}

#[tokio::test]
async fn a_cached_copy_a_host_controller_derived_from_ours_is_taken_over() {
    // Our owner label (copied by a host controller from one of our objects)
    // but no source markers: written over in place, no collision.
    let mut derived = obj::<ConfigMap>(
        json!({"metadata": {"name": "cfg-x-shop-x-vc", "namespace": "host-ns", "uid": "h1"}}),
    );
    derived.metadata.labels = Some(
        [
            ("vcluster.dev/owner", "vc"),
            ("vcluster.dev/namespace", "shop"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .into(),
    );
    let Setup {
        engine,
        mut host,
        mut virt,
    } = setup(all_configmaps(), vec![cm("v")], vec![derived]);
    let (got, apply) = scenario(
        reconciling(&engine, &cm_key(), false),
        host.answer(200, echo(json!({}))),
    )
    .await;
    assert!(matches!(got, Ok(None)), "{got:?}");
    assert_apply(&apply, HOST_CM, false);
    assert_eq!(
        apply.body["metadata"]["annotations"]["vcluster.dev/uid"],
        "u1"
    );
    host.assert_quiet();
    virt.assert_quiet();
}

#[tokio::test]
async fn a_pod_held_while_asleep_is_marked_first_then_its_host_copy_deleted() {
    let k = key("shop", "web");
    let running: Pod = obj(merged(
        serde_json::to_value(pod(json!({"nodeName": "n1"}))).unwrap(),
        json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}),
    ));
    let copy: Pod = owned(
        obj(
            json!({"metadata": {"name": "web-x-shop-x-vc", "namespace": "host-ns", "uid": "h1"},
            "spec": {"nodeName": "n1", "containers": [{"name": "app"}]}}),
        ),
        &k,
    );
    let sleep = Arc::new(crate::sleep::Sleep::default());
    sleep.set_asleep(true);
    let Setup {
        engine,
        mut host,
        mut virt,
    } = setup(
        pod_rule_with(sleep),
        vec![running.clone()],
        vec![copy.clone()],
    );
    let (got, (mark, delete)) = scenario(reconciling(&engine, &k, false), async {
        let mark = virt
            .answer(200, |_| serde_json::to_value(&running).unwrap())
            .await;
        let delete = host
            .answer(200, |_| serde_json::to_value(&copy).unwrap())
            .await;
        (mark, delete)
    })
    .await;
    assert!(matches!(got, Ok(None)), "{got:?}");
    assert_eq!(
        (mark.method, mark.path.as_str(), mark.content_type.as_str()),
        (
            Method::PATCH,
            "/api/v1/namespaces/shop/pods/web/status",
            "application/merge-patch+json"
        )
    );
    let conditions = mark.body["status"]["conditions"].as_array().unwrap();
    assert!(
        conditions
            .iter()
            .any(|c| c["type"] == crate::sleep::SLEEPING_CONDITION)
    );
    assert!(
        conditions
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "False")
    );
    assert_eq!(
        (delete.method, delete.path.as_str()),
        (
            Method::DELETE,
            "/api/v1/namespaces/host-ns/pods/web-x-shop-x-vc"
        )
    );
    assert_eq!(delete.body["preconditions"]["uid"], "h1");
    host.assert_quiet();
    virt.assert_quiet();
}

#[tokio::test(start_paused = true)]
async fn no_reconcile_runs_while_an_api_server_is_down() {
    let Setup {
        engine, mut host, ..
    } = setup(all_configmaps(), vec![cm("v")], vec![]);
    // What the outage probe does when /readyz fails.
    engine.ctx.outage.admission().close();
    engine.start_without_watches(2);
    engine.enqueue(cm_key());
    tokio::time::advance(Duration::from_secs(60)).await;
    settle().await;
    host.assert_quiet();
    assert_eq!(engine.queue_depth(), 1, "the key waits in the queue");
    // Both servers answer again: the key goes at once.
    engine.ctx.outage.admission().reopen();
    let call = tokio::time::timeout(Duration::from_secs(1), host.answer(200, echo(json!({}))))
        .await
        .expect("no write after the admission reopened");
    assert_apply(&call, HOST_CM, true);
}
