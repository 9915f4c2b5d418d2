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
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
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
    setup_owned(rule, virt, host, None)
}

/// [`setup`] with host copies owned by `owner`.
fn setup_owned<R: Rule>(
    rule: R,
    virt: Vec<R::V>,
    host: Vec<R::H>,
    owner: Option<OwnerReference>,
) -> Setup<R> {
    let (host_service, host_handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (virt_service, virt_handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = Context::new(
        names(),
        kube::Client::new(host_service, "default"),
        kube::Client::new(virt_service, "default"),
    )
    .with_owner(owner);
    // Slimmed as the host watch keeps them.
    let host = host
        .into_iter()
        .map(|mut h| {
            R::slim_host(&mut h);
            h
        })
        .collect();
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
    let uid = &c.body["metadata"]["uid"];
    if create {
        assert_eq!(rv, "1", "created only if nothing holds the name");
        assert_eq!(uid, &Value::Null);
    } else {
        assert_eq!(rv, &Value::Null, "written over what is ours");
        assert!(
            uid.as_str().is_some_and(|u| !u.is_empty()),
            "only while it is there: {c:?}"
        );
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

mod deletes;
mod writes;
