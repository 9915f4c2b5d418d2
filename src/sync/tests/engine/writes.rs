//! Writing host copies: create-only apply, collisions, unchanged and forced
//! writes, refusals and the rule's alternative.

use super::*;

#[tokio::test]
async fn a_new_host_copy_is_created_with_a_create_only_apply() {
    let Setup {
        engine,
        mut host,
        mut virt,
    } = setup(all_configmaps(), vec![cm("v")], vec![]);
    let (got, apply) = scenario(
        reconciling(&engine, &cm_key(), false),
        host.answer(200, echo(json!({"metadata": {"uid": "h1"}}))),
    )
    .await;
    assert!(matches!(got, Ok(None)), "{got:?}");
    assert_apply(&apply, HOST_CM, true);
    let m = &apply.body["metadata"];
    assert_eq!(m["name"], "cfg-x-shop-x-vc");
    assert_eq!(m["namespace"], "host-ns");
    assert_eq!(m["labels"]["vcluster.dev/owner"], "vc");
    assert_eq!(m["labels"]["vcluster.dev/namespace"], "shop");
    assert_eq!(m["labels"]["app"], "web");
    assert_eq!(m["annotations"]["vcluster.dev/name"], "cfg");
    assert_eq!(m["annotations"]["vcluster.dev/namespace"], "shop");
    assert_eq!(m["annotations"]["vcluster.dev/uid"], "u1");
    assert_eq!(hash(&apply).len(), 16);
    assert_eq!(m.get("uid"), None);
    assert_eq!(apply.body["data"]["k"], "v");
    host.assert_quiet();
    virt.assert_quiet();
}

#[tokio::test]
async fn a_foreign_object_holding_the_name_is_left_alone_and_told_to_the_tenant() {
    let Setup {
        engine,
        mut host,
        mut virt,
    } = setup(all_configmaps(), vec![cm("v")], vec![]);
    let (got, (apply, get, event)) = scenario(reconciling(&engine, &cm_key(), false), async {
        let apply = host.answer(409, conflict()).await;
        let get = host.answer(200, foreign_cm).await;
        let event = virt.answer(201, echo(json!({}))).await;
        (apply, get, event)
    })
    .await;
    assert_eq!(got.unwrap(), Some(Duration::from_secs(30)));
    assert_apply(&apply, HOST_CM, true);
    assert_eq!((get.method, get.path.as_str()), (Method::GET, HOST_CM));
    assert_event(&event, "SyncNameCollision", "not managed by vcluster vc");
    assert_eq!(event.body["regarding"]["name"], "cfg");
    assert_eq!(event.body["regarding"]["kind"], "ConfigMap");
    host.assert_quiet();
}

#[tokio::test]
async fn an_uncached_copy_of_ours_is_written_over() {
    let Setup {
        engine,
        mut host,
        mut virt,
    } = setup(all_configmaps(), vec![cm("v")], vec![]);
    let (got, (first, get, second)) = scenario(reconciling(&engine, &cm_key(), false), async {
        let first = host.answer(409, conflict()).await;
        let get = host
            .answer(200, |c| {
                serde_json::to_value(owned(obj::<ConfigMap>(foreign_cm(c)), &cm_key())).unwrap()
            })
            .await;
        let second = host.answer(200, echo(json!({}))).await;
        (first, get, second)
    })
    .await;
    assert!(matches!(got, Ok(None)), "{got:?}");
    assert_apply(&first, HOST_CM, true);
    assert_eq!(get.method, Method::GET);
    assert_apply(&second, HOST_CM, false);
    assert_eq!(hash(&first), hash(&second));
    host.assert_quiet();
    virt.assert_quiet();
}

/// What a first reconcile of `cm("v")` applies, as the host cache then holds it.
async fn applied_copy() -> ConfigMap {
    let Setup {
        engine, mut host, ..
    } = setup(all_configmaps(), vec![cm("v")], vec![]);
    let (_, apply) = scenario(
        reconciling(&engine, &cm_key(), false),
        host.answer(200, echo(json!({}))),
    )
    .await;
    let mut body = apply.body;
    body["metadata"]["uid"] = "h1".into();
    body["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    obj(body)
}

#[tokio::test]
async fn an_unchanged_copy_is_written_only_when_it_drifted() {
    let copy = applied_copy().await;
    let Setup {
        engine,
        mut host,
        mut virt,
    } = setup(all_configmaps(), vec![cm("v")], vec![copy.clone()]);
    let (got, ()) = scenario(reconciling(&engine, &cm_key(), false), async {}).await;
    assert!(matches!(got, Ok(None)), "{got:?}");
    host.assert_quiet();
    virt.assert_quiet();
    // The periodic resync finds nothing to revert: no write either.
    let (got, ()) = scenario(reconciling(&engine, &cm_key(), true), async {}).await;
    assert!(matches!(got, Ok(None)), "{got:?}");
    host.assert_quiet();
    // Drift on the host (a field of ours changed, the hash left as it was;
    // a field of someone else's added): the resync writes ours back.
    let mut drifted = copy.clone();
    drifted
        .data
        .as_mut()
        .unwrap()
        .insert("k".into(), "edited".into());
    drifted
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert("host.example/added".into(), "x".into());
    let Setup {
        engine, mut host, ..
    } = setup(all_configmaps(), vec![cm("v")], vec![drifted]);
    let (got, forced) = scenario(
        reconciling(&engine, &cm_key(), true),
        host.answer(200, echo(json!({}))),
    )
    .await;
    assert!(matches!(got, Ok(None)), "{got:?}");
    assert_apply(&forced, HOST_CM, false);
    assert_eq!(forced.body["data"]["k"], "v");
    assert_eq!(
        Some(&hash(&forced)),
        copy.metadata
            .annotations
            .as_ref()
            .unwrap()
            .get(HASH_ANNOTATION)
    );
    // Fields others added are not drift.
    let mut added = copy.clone();
    added
        .metadata
        .labels
        .get_or_insert_default()
        .insert("host.example/team".into(), "a".into());
    let Setup {
        engine, mut host, ..
    } = setup(all_configmaps(), vec![cm("v")], vec![added]);
    let (got, ()) = scenario(reconciling(&engine, &cm_key(), true), async {}).await;
    assert!(matches!(got, Ok(None)), "{got:?}");
    host.assert_quiet();
    // Changed content is written, under a new hash.
    let Setup {
        engine, mut host, ..
    } = setup(all_configmaps(), vec![cm("changed")], vec![copy.clone()]);
    let (_, changed) = scenario(
        reconciling(&engine, &cm_key(), false),
        host.answer(200, echo(json!({}))),
    )
    .await;
    assert_apply(&changed, HOST_CM, false);
    assert_eq!(changed.body["data"]["k"], "changed");
    assert_ne!(hash(&changed), hash(&forced));
}

#[tokio::test]
async fn a_copy_gone_since_the_decision_is_not_brought_back() {
    // A host controller deleted the copy (or another took its name) after
    // the cache was read: the write names the uid it was decided on, the API
    // refuses it, and the key is decided again, with nothing told the tenant.
    let copy = applied_copy().await;
    for (code, reply) in [
        (
            409,
            status(
                409,
                "Conflict",
                "uid mismatch: the provided object specified uid h1, and no existing object was found",
            ),
        ),
        (
            422,
            status(
                422,
                "Invalid",
                "ConfigMap \"cfg-x-shop-x-vc\" is invalid: metadata.uid: Invalid value: \"h1\": field is immutable",
            ),
        ),
    ] {
        let Setup {
            engine,
            mut host,
            mut virt,
        } = setup(all_configmaps(), vec![cm("changed")], vec![copy.clone()]);
        let (got, apply) = scenario(
            reconciling(&engine, &cm_key(), false),
            host.answer(code, reply),
        )
        .await;
        assert_eq!(got.unwrap(), Some(Duration::from_millis(100)), "{code}");
        assert_apply(&apply, HOST_CM, false);
        assert_eq!(apply.body["metadata"]["uid"], "h1");
        host.assert_quiet();
        virt.assert_quiet();
    }
}

/// ConfigMaps whose host may refuse the first form: the alternative carries
/// other data.
struct WithFallback;

impl Rule for WithFallback {
    type V = ConfigMap;
    type H = ConfigMap;
    const KIND: &'static str = "ConfigMap";

    fn decide(&self, _: &Names, v: &ConfigMap, _: Option<&ConfigMap>) -> Decision<ConfigMap> {
        Decision::Sync(ConfigMap {
            data: v.data.clone(),
            ..ConfigMap::default()
        })
    }

    fn on_rejected(
        &self,
        desired: &ConfigMap,
        _: Option<&ConfigMap>,
        message: &str,
    ) -> Option<ConfigMap> {
        message.contains("taken").then(|| {
            let mut alt = desired.clone();
            alt.data = Some([("k".to_owned(), "fallback".to_owned())].into());
            alt
        })
    }
}

#[tokio::test]
async fn a_refused_copy_is_replaced_by_the_rules_alternative() {
    let Setup {
        engine,
        mut host,
        mut virt,
    } = setup(WithFallback, vec![cm("v")], vec![]);
    let (got, (first, second)) = scenario(reconciling(&engine, &cm_key(), false), async {
        let first = host
            .answer(422, status(422, "Invalid", "address 10.96.0.5 is taken"))
            .await;
        let second = host.answer(200, echo(json!({}))).await;
        (first, second)
    })
    .await;
    assert!(matches!(got, Ok(None)), "{got:?}");
    assert_apply(&first, HOST_CM, true);
    assert_eq!(first.body["data"]["k"], "v");
    assert_apply(&second, HOST_CM, true);
    assert_eq!(second.body["data"]["k"], "fallback");
    assert_eq!(
        second.body["metadata"]["labels"]["vcluster.dev/owner"],
        "vc"
    );
    assert_eq!(hash(&first), hash(&second), "stamped as the desired form");
    host.assert_quiet();
    virt.assert_quiet();
}

/// A reconcile of `cm("v")` under `rule` whose create the host refuses
/// with `message`, the tenant then told: the result, the apply, the event.
async fn refused<R>(rule: R, message: &str) -> (Result<Option<Duration>, SyncError>, Call, Call)
where
    R: Rule<V = ConfigMap, H = ConfigMap>,
{
    let Setup {
        engine,
        mut host,
        mut virt,
    } = setup(rule, vec![cm("v")], vec![]);
    let (got, (apply, event)) = scenario(reconciling(&engine, &cm_key(), false), async {
        let apply = host.answer(422, status(422, "Invalid", message)).await;
        (apply, virt.answer(201, echo(json!({}))).await)
    })
    .await;
    host.assert_quiet();
    (got, apply, event)
}

#[tokio::test]
async fn a_refusal_without_an_alternative_is_told_to_the_tenant_and_retried() {
    for (case, (got, apply, event), message) in [
        (
            "the rule has no alternative",
            refused(all_configmaps(), "address 10.96.0.5 is taken").await,
            "address 10.96.0.5 is taken",
        ),
        (
            "its alternative does not fit this refusal",
            refused(WithFallback, "data: Invalid value: too long").await,
            "data: Invalid value: too long",
        ),
    ] {
        assert_apply(&apply, HOST_CM, true);
        assert_event(
            &event,
            "SyncRejected",
            &format!("the host API rejected the ConfigMap copy: {message}"),
        );
        let err = got.unwrap_err();
        assert_eq!(err.category(), "rejected", "{case}: {err}");
    }
}

#[tokio::test]
async fn a_copy_written_without_an_owner_gains_it_on_the_next_write() {
    // Written by a syncer that had no owner.
    let Setup {
        engine, mut host, ..
    } = setup(all_configmaps(), vec![cm("v")], vec![]);
    let (_, first) = scenario(
        reconciling(&engine, &cm_key(), false),
        host.answer(200, echo(json!({"metadata": {"uid": "h1"}}))),
    )
    .await;
    assert_eq!(first.body["metadata"].get("ownerReferences"), None);
    let written: ConfigMap = obj(merged(
        first.body.clone(),
        json!({"metadata": {"uid": "h1"}}),
    ));
    // The chart's syncer: owned by the StatefulSet. Not forced, content unchanged.
    let owner: OwnerReference = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet", "name": "vc", "uid": "s1",
        "blockOwnerDeletion": false,
    }))
    .unwrap();
    let Setup {
        engine,
        mut host,
        mut virt,
    } = setup_owned(all_configmaps(), vec![cm("v")], vec![written], Some(owner));
    let (got, apply) = scenario(
        reconciling(&engine, &cm_key(), false),
        host.answer(200, echo(json!({}))),
    )
    .await;
    assert!(matches!(got, Ok(None)), "{got:?}");
    assert_apply(&apply, HOST_CM, false);
    assert_ne!(
        hash(&apply),
        hash(&first),
        "the owner is part of the content"
    );
    assert_eq!(
        apply.body["metadata"]["ownerReferences"],
        json!([{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "vc", "uid": "s1",
            "blockOwnerDeletion": false}])
    );
    host.assert_quiet();
    virt.assert_quiet();
}
