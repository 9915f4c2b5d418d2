//! The engines' caches hold objects compactly: the metadata parsed (every
//! reader needs names, owner markers and hashes), the rest kept as the API's
//! JSON compressed with LZ4 and parsed again when a reconcile needs it.
//!
//! Why: k8s-openapi types are large in memory. A plain virtual Pod takes
//! about 17 KB on the heap once parsed (every `Container` is 2,144 bytes
//! before any of its fields is set), its JSON without metadata about 2.2 KB,
//! and that JSON LZ4-compressed about 1.2 KB. At 10,000 pods the parsed
//! caches were most of the syncer's 300 MB; parsing a cached pod again costs
//! tens of microseconds, which a reconcile that then talks to an API server
//! does not notice.

use std::fmt::Debug;
use std::marker::PhantomData;
use std::sync::Arc;

use futures::{Stream, StreamExt as _, TryStreamExt as _};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Resource, ResourceExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// One cached object: parsed metadata and the compressed JSON of the rest.
pub struct Cached<K> {
    meta: ObjectMeta,
    body: Box<[u8]>,
    kind: PhantomData<fn() -> K>,
}

impl<K> Clone for Cached<K> {
    fn clone(&self) -> Self {
        Self {
            meta: self.meta.clone(),
            body: self.body.clone(),
            kind: PhantomData,
        }
    }
}

impl<K> Debug for Cached<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cached")
            .field("name", &self.meta.name)
            .field("namespace", &self.meta.namespace)
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

impl<K: Resource<DynamicType = ()>> Resource for Cached<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> std::borrow::Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &()) -> std::borrow::Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &()) -> std::borrow::Cow<'_, str> {
        K::version(dt)
    }
    fn api_version(dt: &()) -> std::borrow::Cow<'_, str> {
        K::api_version(dt)
    }
    fn plural(dt: &()) -> std::borrow::Cow<'_, str> {
        K::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.meta
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.meta
    }
}

/// A cached object that no longer parses (it was written by this process
/// from the same type, so this means a bug, reported rather than hidden).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The compressed body is damaged.
    #[error("cached {kind} {name}: cannot decompress: {source}")]
    Decompress {
        /// The kind.
        kind: String,
        /// The object.
        name: String,
        /// The cause.
        source: lz4_flex::block::DecompressError,
    },
    /// The body is not the kind's JSON.
    #[error("cached {kind} {name}: cannot parse: {source}")]
    Parse {
        /// The kind.
        kind: String,
        /// The object.
        name: String,
        /// The cause.
        source: serde_json::Error,
    },
}

impl<K> Cached<K>
where
    K: Resource<DynamicType = ()> + Serialize + DeserializeOwned,
{
    /// The compact form of `obj`.
    pub fn new(obj: &K) -> Self {
        #[allow(
            clippy::expect_used,
            reason = "k8s-openapi types serialize infallibly: their maps have string keys"
        )]
        let mut value = serde_json::to_value(obj).expect("a Kubernetes object serializes");
        if let Some(fields) = value.as_object_mut() {
            fields.remove("metadata");
        }
        let json = value.to_string();
        Self {
            meta: obj.meta().clone(),
            body: lz4_flex::compress_prepend_size(json.as_bytes()).into_boxed_slice(),
            kind: PhantomData,
        }
    }

    fn name(&self) -> String {
        format!(
            "{}/{}",
            self.meta.namespace.as_deref().unwrap_or_default(),
            self.meta.name.as_deref().unwrap_or_default()
        )
    }

    /// The JSON of everything but the metadata.
    fn json(&self) -> Result<Vec<u8>, CacheError> {
        lz4_flex::decompress_size_prepended(&self.body).map_err(|source| CacheError::Decompress {
            kind: K::kind(&()).into_owned(),
            name: self.name(),
            source,
        })
    }

    fn parse<T: DeserializeOwned>(&self, json: &[u8]) -> Result<T, CacheError> {
        serde_json::from_slice(json).map_err(|source| CacheError::Parse {
            kind: K::kind(&()).into_owned(),
            name: self.name(),
            source,
        })
    }

    fn whole(&self, json: &[u8]) -> Result<K, CacheError> {
        let mut obj: K = self.parse(json)?;
        *obj.meta_mut() = self.meta.clone();
        Ok(obj)
    }

    /// The whole object again.
    pub fn object(&self) -> Result<K, CacheError> {
        self.whole(&self.json()?)
    }

    /// The whole object, if its JSON (without metadata) passes `keep`: a
    /// cheap "does it mention X" check before parsing, with one decompression.
    pub fn object_if(&self, keep: impl Fn(&[u8]) -> bool) -> Result<Option<K>, CacheError> {
        let json = self.json()?;
        if !keep(&json) {
            return Ok(None);
        }
        self.whole(&json).map(Some)
    }

    /// Part of the object: `T` names the fields it wants (serde skips the
    /// rest without building them), for scans over many objects.
    pub fn view<T: DeserializeOwned>(&self) -> Result<T, CacheError> {
        self.parse(&self.json()?)
    }
}

/// A reader of a cache of compact objects, for rules and loops that read
/// another kind's objects.
pub struct Cache<K: Resource<DynamicType = ()> + 'static> {
    store: Store<Cached<K>>,
}

impl<K: Resource<DynamicType = ()> + 'static> Clone for Cache<K> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
        }
    }
}

impl<K: Resource<DynamicType = ()> + 'static> Debug for Cache<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("kind", &K::kind(&()))
            .field("objects", &self.store.len())
            .finish()
    }
}

/// The writer half of a [`Cache`], for [`watch`].
pub type Writer<K> = reflector::store::Writer<Cached<K>>;

/// A new empty cache and its writer.
pub fn cache<K>() -> (Cache<K>, Writer<K>)
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let (store, writer) = reflector::store();
    (Cache { store }, writer)
}

impl<K> Cache<K>
where
    K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone + 'static,
{
    fn key(name: &str, namespace: Option<&str>) -> ObjectRef<Cached<K>> {
        let r = ObjectRef::new(name);
        match namespace {
            Some(ns) => r.within(ns),
            None => r,
        }
    }

    /// The cached entry (metadata at hand, the rest parsed on demand).
    pub fn entry(&self, name: &str, namespace: Option<&str>) -> Option<Arc<Cached<K>>> {
        self.store.get(&Self::key(name, namespace))
    }

    /// The object, parsed (`Ok(None)` if absent).
    pub fn try_get(&self, name: &str, namespace: Option<&str>) -> Result<Option<K>, CacheError> {
        self.entry(name, namespace).map(|c| c.object()).transpose()
    }

    /// The object, parsed (`None` if absent; a damaged entry is logged).
    pub fn get(&self, name: &str, namespace: Option<&str>) -> Option<K> {
        self.entry(name, namespace).and_then(|c| parsed(&c))
    }

    /// Whether an object of that name is cached.
    pub fn contains(&self, name: &str, namespace: Option<&str>) -> bool {
        self.entry(name, namespace).is_some()
    }

    /// Every entry.
    pub fn entries(&self) -> Vec<Arc<Cached<K>>> {
        self.store.state()
    }

    /// Every object of `namespace` (all when `None`), parsed.
    pub fn objects_in(&self, namespace: Option<&str>) -> Vec<K> {
        self.store
            .state()
            .iter()
            .filter(|c| namespace.is_none() || c.meta.namespace.as_deref() == namespace)
            .filter_map(|c| parsed(c))
            .collect()
    }

    /// Whether some entry matches `pred` (checked under the cache's read
    /// lock, without copying the list of entries).
    pub fn any_entry(&self, pred: impl Fn(&Cached<K>) -> bool) -> bool {
        self.store.find(|c| pred(c)).is_some()
    }

    /// The first object matching `pred`, parsing each in turn.
    pub fn find(&self, pred: impl Fn(&K) -> bool) -> Option<K> {
        self.store
            .state()
            .iter()
            .filter_map(|c| parsed(c))
            .find(|k| pred(k))
    }

    /// Objects cached.
    pub fn len(&self) -> usize {
        self.store.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }

    /// Waits for the first complete list. Only one task may wait on a given
    /// cache (kube-runtime's readiness future wakes only its latest waiter).
    pub async fn wait_until_ready(&self) {
        let _ = self.store.wait_until_ready().await;
    }
}

fn parsed<K>(c: &Cached<K>) -> Option<K>
where
    K: Resource<DynamicType = ()> + Serialize + DeserializeOwned,
{
    c.object()
        .map_err(|e| tracing::error!(error = %e, "damaged cache entry"))
        .ok()
}

/// A watch that keeps `writer`'s cache of compact objects (after clearing
/// `managedFields` and passing each object through `slim`), relists after
/// expiry, retries with backoff, calls `on_relist` for each list after the
/// first, and yields each object it sees change (parsed, slimmed).
pub fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    mut writer: Writer<K>,
    slim: fn(&mut K),
    on_relist: impl Fn() + Send + 'static,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send
where
    K: Resource<DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    let mut lists = 0u64;
    watcher(api, config)
        .default_backoff()
        .map_ok(move |ev| {
            let ev = ev.modify(|o| {
                o.managed_fields_mut().clear();
                slim(o);
            });
            writer.apply_watcher_event(&compact(&ev));
            if matches!(ev, watcher::Event::Init) {
                lists += 1;
                if lists > 1 {
                    on_relist();
                }
            }
            ev
        })
        .touched_objects()
        .boxed()
}

fn compact<K>(ev: &watcher::Event<K>) -> watcher::Event<Cached<K>>
where
    K: Resource<DynamicType = ()> + Serialize + DeserializeOwned,
{
    match ev {
        watcher::Event::Apply(o) => watcher::Event::Apply(Cached::new(o)),
        watcher::Event::Delete(o) => watcher::Event::Delete(Cached::new(o)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(o) => watcher::Event::InitApply(Cached::new(o)),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-0", "namespace": "shop", "uid": "u1",
                "labels": {"app": "web"}, "annotations": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "nginx",
                "env": [{"name": "X", "value": "1"}],
                "volumeMounts": [{"name": "v", "mountPath": "/v"}]}],
                "volumes": [{"name": "v", "configMap": {"name": "cfg"}}],
                "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.0.0.1",
                "conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .unwrap()
    }

    #[test]
    fn a_cached_object_comes_back_whole() {
        let p = pod();
        let c = Cached::new(&p);
        assert_eq!(c.meta(), &p.metadata);
        assert_eq!(c.object().unwrap(), p);
    }

    #[test]
    fn a_view_reads_some_fields() {
        #[derive(serde::Deserialize)]
        struct Node {
            spec: NodeName,
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct NodeName {
            node_name: Option<String>,
        }
        let c = Cached::new(&pod());
        let v: Node = c.view().unwrap();
        assert_eq!(v.spec.node_name.as_deref(), Some("n1"));
        let mentions =
            |name: &'static str| move |json: &[u8]| String::from_utf8_lossy(json).contains(name);
        assert_eq!(c.object_if(mentions("\"cfg\"")).unwrap(), Some(pod()));
        assert_eq!(c.object_if(mentions("\"other\"")).unwrap(), None);
    }
}
