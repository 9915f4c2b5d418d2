//! Unit tests of the sync engine against mock API services, and the helpers
//! the rules' table tests share (each rule file includes its own table from
//! this directory).

mod engine;

use k8s_openapi::api::core::v1::Pod;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::Names;
use crate::translate::{VclusterName, VirtualKey};

/// The vcluster of every test: `vc` in host namespace `host-ns`.
pub(crate) fn names() -> Names {
    Names::new(VclusterName::new("vc").unwrap(), "host-ns")
}

/// The key of virtual object `name` in namespace `namespace`.
pub(crate) fn key(namespace: &str, name: &str) -> VirtualKey {
    VirtualKey {
        namespace: namespace.into(),
        name: name.into(),
    }
}

/// An object from its JSON.
pub(crate) fn obj<K: DeserializeOwned>(json: Value) -> K {
    serde_json::from_value(json).unwrap()
}

/// `base` with `extra` merged over it (objects key by key, the rest replaced).
pub(crate) fn merged(mut base: Value, extra: Value) -> Value {
    merge(&mut base, extra);
    base
}

/// Merges `b` over `a`: objects key by key, anything else replaced.
pub(crate) fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

/// A virtual pod `name` in `namespace` with `spec`.
pub(crate) fn pod_using(namespace: &str, name: &str, spec: Value) -> Pod {
    obj(serde_json::json!({
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}")},
        "spec": spec,
    }))
}

/// A client whose API is never answered: for rules that hold a client but
/// decide without one.
pub(crate) fn idle_client() -> kube::Client {
    let (service, handle) = tower_test::mock::pair::<
        http::Request<kube::client::Body>,
        http::Response<kube::client::Body>,
    >();
    // Never answered: a request would fail once the handle is gone.
    drop(handle);
    kube::Client::new(service, "default")
}

/// `got` as `Decision::Sync`'s object, or a failure naming what it was.
pub(crate) fn synced<H: std::fmt::Debug>(got: super::Decision<H>) -> H {
    match got {
        super::Decision::Sync(h) => h,
        other => panic!("expected Sync, got {other:?}"),
    }
}

/// True for `Decision::Remove` with no grace period.
pub(crate) fn removed<H>(got: &super::Decision<H>) -> bool {
    matches!(
        got,
        super::Decision::Remove {
            grace_seconds: None
        }
    )
}
