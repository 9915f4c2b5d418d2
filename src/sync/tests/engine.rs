//! The engine's reconcile paths against mock API services. Each scenario
//! answers the requests one reconcile makes, in order, and checks the
//! method, the path and the body fields that matter; a request the scenario
//! does not expect leaves the reconcile waiting and fails it at its deadline.
//! The timing tests run on paused time.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use http::{Method, Request, Response};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::networking::v1::Ingress;
use kube::Resource;
use kube::client::Body;
use serde_json::{Value, json};

use super::{idle_client, key, merged, names, obj};
use crate::policy::pss::Level;
use crate::sync::cache::filled;
use crate::sync::config::{ConfigRule, Scope};
use crate::sync::feed::Feed;
use crate::sync::ingresses::IngressRule;
use crate::sync::nodes::VirtualNodes;
use crate::sync::pods::{PodRule, PodSources};
use crate::sync::{Context, Decision, Engine, HASH_ANNOTATION, Names, Object, Rule, SyncError};
use crate::translate::VirtualKey;
use crate::translate::ingress::IngressPolicy;
use crate::translate::pod::ApiEndpoint;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// One request the engine made.
#[derive(Debug)]
struct Call {
    method: Method,
    path: String,
    query: String,
    content_type: String,
    body: Value,
}

/// One side's API, answered by the test.
struct MockApi(Handle);

impl MockApi {
    /// Waits for the next request and answers it with `status` and what
    /// `reply` makes of it.
    async fn answer(&mut self, status: u16, reply: impl FnOnce(&Call) -> Value) -> Call {
        let (req, send) = self
            .0
            .next_request()
            .await
            .expect("the engine made no further request");
        let (parts, body) = req.into_parts();
        let bytes = body.collect_bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let call = Call {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().unwrap_or_default().to_owned(),
            content_type,
            body,
        };
        let out = serde_json::to_vec(&reply(&call)).unwrap();
        send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(out))
                .unwrap(),
        );
        call
    }

    /// Nothing more was asked of this API.
    fn assert_quiet(&mut self) {
        let next = self.0.next_request().now_or_never();
        assert!(
            !matches!(next, Some(Some(_))),
            "an unexpected request: {:?}",
            next.flatten()
                .map(|(r, _)| (r.method().clone(), r.uri().clone()))
        );
    }
}

/// The request's body with `extra` merged over it, as an API's answer.
fn echo(extra: Value) -> impl FnOnce(&Call) -> Value {
    move |c| merged(c.body.clone(), extra)
}

/// An API error.
fn status(code: u16, reason: &str, message: &str) -> impl FnOnce(&Call) -> Value {
    let s = json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
        "reason": reason, "message": message, "code": code});
    move |_| s
}

/// The answer to a create-only apply when something holds the name.
fn conflict() -> impl FnOnce(&Call) -> Value {
    status(409, "Conflict", "the object has been modified")
}

/// An engine for `rule` on caches holding `virt` and `host`, with both APIs
/// mocked.
struct Setup<R: Rule> {
    engine: Arc<Engine<R>>,
    host: MockApi,
    virt: MockApi,
}

fn feed<K: Object>(objects: Vec<K>) -> Feed<K> {
    Feed {
        cache: filled(objects),
        ..Feed::new()
    }
}

fn setup<R: Rule>(rule: R, virt: Vec<R::V>, host: Vec<R::H>) -> Setup<R> {
    let (host_service, host_handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (virt_service, virt_handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = Context::new(
        names(),
        kube::Client::new(host_service, "default"),
        kube::Client::new(virt_service, "default"),
    );
    Setup {
        engine: Engine::new(rule, Arc::new(ctx), feed(virt), feed(host)),
        host: MockApi(host_handle),
        virt: MockApi(virt_handle),
    }
}

/// Runs `reconcile` beside `script` (which answers the APIs) within a deadline.
async fn scenario<T, S>(
    reconcile: impl Future<Output = T>,
    script: impl Future<Output = S>,
) -> (T, S) {
    tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(reconcile, script)
    })
    .await
    .expect("the scenario did not finish: a request went unanswered")
}

/// One reconcile of `key` (boxed: the engine's future is large).
fn reconciling<'a, R: Rule>(
    engine: &'a Engine<R>,
    key: &'a VirtualKey,
    force: bool,
) -> std::pin::Pin<Box<dyn Future<Output = Result<Option<Duration>, SyncError>> + Send + 'a>> {
    Box::pin(engine.reconcile(key, force))
}

/// `h` marked as this vcluster's copy of `k` (virtual uid `u1`).
fn owned<K: Resource>(mut h: K, k: &VirtualKey) -> K {
    let n = names();
    let own = n.ownership();
    let meta = h.meta_mut();
    meta.labels.get_or_insert_default().extend(own.labels(k));
    meta.annotations
        .get_or_insert_default()
        .extend(own.annotations(k, "u1"));
    h
}

const HOST_CM: &str = "/api/v1/namespaces/host-ns/configmaps/cfg-x-shop-x-vc";
const VIRT_CM: &str = "/api/v1/namespaces/shop/configmaps/cfg";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/shop/events";

fn cm(data: &str) -> ConfigMap {
    obj(json!({
        "metadata": {"name": "cfg", "namespace": "shop", "uid": "u1", "labels": {"app": "web"}},
        "data": {"k": data}
    }))
}

fn cm_key() -> VirtualKey {
    key("shop", "cfg")
}

fn all_configmaps() -> ConfigRule<ConfigMap> {
    ConfigRule::new(Scope::All, None, None)
}

/// A host object that is not this vcluster's.
fn foreign_cm(_: &Call) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "cfg-x-shop-x-vc", "namespace": "host-ns", "uid": "f1"}})
}

fn assert_apply(c: &Call, path: &str, create: bool) {
    assert_eq!(c.method, Method::PATCH, "{c:?}");
    assert_eq!(c.path, path);
    assert_eq!(c.content_type, "application/apply-patch+yaml");
    assert!(
        c.query.contains("fieldManager=vcluster") && c.query.contains("force=true"),
        "{}",
        c.query
    );
    let rv = &c.body["metadata"]["resourceVersion"];
    if create {
        assert_eq!(rv, "1", "created only if nothing holds the name");
    } else {
        assert_eq!(rv, &Value::Null, "written over what is ours");
    }
}

fn hash(c: &Call) -> String {
    c.body["metadata"]["annotations"][HASH_ANNOTATION]
        .as_str()
        .unwrap()
        .to_owned()
}

fn assert_event(c: &Call, reason: &str, says: &str) {
    assert_eq!(c.method, Method::POST, "{c:?}");
    assert_eq!(c.path, EVENTS);
    assert_eq!(c.body["reason"], reason);
    assert_eq!(c.body["type"], "Warning");
    let note = c.body["note"].as_str().unwrap();
    assert!(note.contains(says), "{note}");
}

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
async fn an_unchanged_copy_is_written_only_when_forced() {
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
    // The periodic resync writes it all the same (reverting drift).
    let (got, forced) = scenario(
        reconciling(&engine, &cm_key(), true),
        host.answer(200, echo(json!({}))),
    )
    .await;
    assert!(matches!(got, Ok(None)), "{got:?}");
    assert_apply(&forced, HOST_CM, false);
    assert_eq!(
        Some(&hash(&forced)),
        copy.metadata
            .annotations
            .as_ref()
            .unwrap()
            .get(HASH_ANNOTATION)
    );
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
    IngressRule::new(IngressPolicy::default_for(&names().vc))
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
    let client = idle_client();
    PodRule::new(
        PodSources {
            host_configmaps: filled(vec![]),
            host_secrets: filled(vec![]),
            services: filled(vec![]),
            nodes: Arc::new(VirtualNodes::new(client.clone(), client)),
            tokens: Arc::default(),
        },
        ApiEndpoint {
            host: "10.0.0.1".into(),
            port: 443,
        },
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
