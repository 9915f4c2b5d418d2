//! The engines' caches hold objects compactly: what every reader needs of
//! the metadata parsed (identity, deletion, and this project's markers: the
//! labels and annotations under `vcluster.dev/`, owner and hash among them),
//! the rest kept as the API's JSON compressed with LZ4 and parsed again when
//! a reconcile needs it.
//!
//! Each cache compresses against a dictionary of its own, the JSON of the
//! first object it held ([`Dictionary`]): objects of one kind share most of
//! their JSON (field names, the API server's defaults, a workload's
//! template), and LZ4 refers to those runs in the dictionary instead of
//! repeating them in every body.
//!
//! Why: k8s-openapi types are large in memory. A plain virtual Pod takes
//! about 17 KB on the heap once parsed (every `Container` is 2,144 bytes
//! before any of its fields is set), its JSON without metadata about 2.2 KB,
//! and that JSON LZ4-compressed about 1.2 KB. At 10,000 pods the parsed
//! caches were most of the syncer's 300 MB; parsing a cached pod again costs
//! tens of microseconds, which a reconcile that then talks to an API server
//! does not notice.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::marker::PhantomData;
use std::sync::{Arc, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use futures::{Stream, StreamExt as _, TryStreamExt as _};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Resource;
use kube::api::Api;
use kube::runtime::{WatchStreamExt as _, watcher};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::lean::Lean;
use crate::translate::markers::{Marked, RESERVED_PREFIX};
use crate::translate::service::{MANAGED_BY_LABEL, SERVICE_NAME_LABEL};

/// Labels kept parsed besides those under the reserved prefix: what scans
/// over every EndpointSlice ask (the Service it belongs to, whether a
/// control plane's controller made it), answered without parsing each.
const PARSED_LABELS: &[&str] = &[SERVICE_NAME_LABEL, MANAGED_BY_LABEL];

/// Whether label or annotation `key` is kept parsed.
fn kept_parsed(key: &str) -> bool {
    key.starts_with(RESERVED_PREFIX) || PARSED_LABELS.contains(&key)
}

/// One cached object: the metadata every reader needs, parsed, and the
/// compressed JSON of the rest. [`Cached::identity`] and the [`Marked`]
/// labels and annotations give that part only: readers of other labels or
/// annotations parse the object (or a view).
pub struct Cached<K> {
    meta: Identity,
    markers: Markers,
    body: Box<[u8]>,
    /// What `body` was compressed against.
    dict: Arc<[u8]>,
    kind: PhantomData<fn() -> K>,
}

/// The identity and deletion of a cached object, compactly (an `ObjectMeta`
/// takes 384 bytes before any of its fields is set; four boxed strings
/// four allocations): name, namespace, uid and resourceVersion packed in
/// one allocation, the deletion (rare) boxed.
#[derive(Default, PartialEq)]
pub struct Identity {
    text: Packed,
    deletion: Option<Box<(Option<Time>, Option<i64>)>>,
}

impl Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("name", &self.name())
            .field("namespace", &self.namespace())
            .field("uid", &self.uid())
            .field("resource_version", &self.resource_version())
            .field("deletion_timestamp", &self.deletion_timestamp())
            .field(
                "deletion_grace_period_seconds",
                &self.deletion_grace_period_seconds(),
            )
            .finish()
    }
}

impl Identity {
    /// The identity of these name, namespace, uid and resourceVersion, and
    /// deletion timestamp and grace period.
    fn of(texts: &[Option<String>; 4], deletion: &(Option<Time>, Option<i64>)) -> Self {
        Self {
            text: Packed::of(texts.iter().map(Option::as_deref)),
            deletion: (deletion.0.is_some() || deletion.1.is_some())
                .then(|| Box::new(deletion.clone())),
        }
    }

    /// Sets the identity's fields of `m`.
    fn put(&self, m: &mut ObjectMeta) {
        m.name = self.name().map(str::to_owned);
        m.namespace = self.namespace().map(str::to_owned);
        m.uid = self.uid().map(str::to_owned);
        m.resource_version = self.resource_version().map(str::to_owned);
        m.deletion_timestamp = self.deletion_timestamp().cloned();
        m.deletion_grace_period_seconds = self.deletion_grace_period_seconds();
    }

    /// The name.
    pub fn name(&self) -> Option<&str> {
        self.text.get(0)
    }

    /// The namespace.
    pub fn namespace(&self) -> Option<&str> {
        self.text.get(1)
    }

    /// The uid.
    pub fn uid(&self) -> Option<&str> {
        self.text.get(2)
    }

    /// The resourceVersion.
    pub fn resource_version(&self) -> Option<&str> {
        self.text.get(3)
    }

    /// When deletion was asked for.
    pub fn deletion_timestamp(&self) -> Option<&Time> {
        self.deletion.as_ref().and_then(|d| d.0.as_ref())
    }

    /// The grace period of that deletion.
    pub fn deletion_grace_period_seconds(&self) -> Option<i64> {
        self.deletion.as_ref().and_then(|d| d.1)
    }
}

/// The labels and annotations kept parsed, each sorted by key, each packed
/// in one allocation ([`Pairs`]): a `BTreeMap` took a node of about 540
/// bytes for the two to seven markers of a host copy, boxed strings two
/// allocations a pair.
#[derive(Debug, Default)]
struct Markers {
    labels: Pairs,
    annotations: Pairs,
}

/// Optional strings in one allocation: each as its length (a native `u32`;
/// `u32::MAX` for none: an object is at most a few megabytes) and its bytes.
#[derive(Debug, Default, PartialEq)]
struct Packed(Box<[u8]>);

impl Packed {
    fn of<'a>(texts: impl IntoIterator<Item = Option<&'a str>>) -> Self {
        let mut out = Vec::new();
        for t in texts {
            let len = t.map_or(u32::MAX, |t| u32::try_from(t.len()).unwrap_or(u32::MAX - 1));
            out.extend_from_slice(&len.to_ne_bytes());
            out.extend_from_slice(t.unwrap_or_default().as_bytes());
        }
        Self(out.into_boxed_slice())
    }

    fn iter(&self) -> impl Iterator<Item = Option<&str>> {
        let mut rest: &[u8] = &self.0;
        std::iter::from_fn(move || {
            let (len, tail) = rest.split_first_chunk::<4>()?;
            let len = u32::from_ne_bytes(*len);
            if len == u32::MAX {
                rest = tail;
                return Some(None);
            }
            let (text, tail) = tail.split_at_checked(len as usize)?;
            rest = tail;
            Some(std::str::from_utf8(text).ok())
        })
    }

    fn get(&self, i: usize) -> Option<&str> {
        self.iter().nth(i).flatten()
    }
}

/// Key/value pairs in one allocation ([`Packed`]: key, value, key, ...).
#[derive(Debug, Default)]
struct Pairs(Packed);

impl Pairs {
    fn packed<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self(Packed::of(
            pairs.into_iter().flat_map(|(k, v)| [Some(k), Some(v)]),
        ))
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut texts = self.0.iter();
        std::iter::from_fn(move || Some((texts.next()??, texts.next()??)))
    }

    fn find(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    fn is_empty(&self) -> bool {
        self.0.0.is_empty()
    }
}

impl<K> Marked for Cached<K> {
    fn label(&self, key: &str) -> Option<&str> {
        self.markers.labels.find(key)
    }

    fn annotation(&self, key: &str) -> Option<&str> {
        self.markers.annotations.find(key)
    }
}

impl<K> Cached<K> {
    /// Name, namespace, uid, resourceVersion and deletion (labels and
    /// annotations are read through [`Marked`]).
    pub fn identity(&self) -> &Identity {
        &self.meta
    }

    /// The name.
    pub fn name_any(&self) -> String {
        self.meta.name().unwrap_or_default().to_owned()
    }

    /// The namespace.
    pub fn namespace(&self) -> Option<String> {
        self.meta.namespace().map(str::to_owned)
    }

    /// The uid.
    pub fn uid(&self) -> Option<String> {
        self.meta.uid().map(str::to_owned)
    }

    /// The labels kept parsed, in order.
    #[cfg(test)]
    pub fn labels(&self) -> impl Iterator<Item = (&str, &str)> {
        self.markers.labels.iter()
    }
}

/// The longest dictionary kept: its first bytes serve as well as the whole.
const DICTIONARY_MAX: usize = 16 * 1024;

/// The dictionary of one cache's bodies: set by the first object compressed
/// with it and kept for the cache's life (each entry holds the one it was
/// compressed against, so a new dictionary never misreads an old entry).
#[derive(Debug, Default)]
pub struct Dictionary(OnceLock<Arc<[u8]>>);

impl Dictionary {
    /// No dictionary: each body compressed on its own.
    fn none() -> Self {
        Self(OnceLock::from(Arc::<[u8]>::from([])))
    }

    /// The dictionary a cache of `K` starts with: none for Secrets, whose
    /// data would otherwise outlive them in it (it is kept for the process's
    /// life); for every other kind, the first object's JSON.
    pub fn of<K: Resource<DynamicType = ()>>() -> Self {
        if K::kind(&()) == "Secret" {
            Self::none()
        } else {
            Self::default()
        }
    }

    fn for_body(&self, json: &[u8]) -> Arc<[u8]> {
        Arc::clone(
            self.0
                .get_or_init(|| json[..json.len().min(DICTIONARY_MAX)].into()),
        )
    }
}

/// The labels or annotations kept parsed, moved out of their map while the
/// rest of an object is serialised.
struct Parted {
    kept: Vec<(String, String)>,
    /// The map held only these (it is left out, as an empty map would not be).
    emptied: Option<BTreeMap<String, String>>,
}

impl Parted {
    fn take(map: &mut Option<BTreeMap<String, String>>) -> Self {
        let Some(all) = map.as_mut() else {
            return Self {
                kept: Vec::new(),
                emptied: None,
            };
        };
        let mut kept = Vec::new();
        all.retain(|k, v| {
            let keep = kept_parsed(k);
            if keep {
                kept.push((k.clone(), std::mem::take(v)));
            }
            !keep
        });
        let emptied = if all.is_empty() && !kept.is_empty() {
            map.take()
        } else {
            None
        };
        Self { kept, emptied }
    }

    /// Puts the pairs back into `map`, and gives them as [`Pairs`] (sorted:
    /// they came out of a `BTreeMap` in order).
    fn restore(self, map: &mut Option<BTreeMap<String, String>>) -> Pairs {
        if let Some(m) = self.emptied {
            *map = Some(m);
        }
        let pairs = Pairs::packed(self.kept.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        if let Some(m) = map.as_mut() {
            m.extend(self.kept);
        }
        pairs
    }
}

impl<K> Debug for Cached<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cached")
            .field("name", &self.meta.name())
            .field("namespace", &self.meta.namespace())
            .field("body_bytes", &self.body.len())
            .finish()
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
    /// The compact form of `obj`, compressed on its own.
    pub fn new(obj: &K) -> Self
    where
        K: Clone,
    {
        Self::with(obj, &Dictionary::none())
    }

    /// The compact form of `obj`, compressed against `dict`.
    pub fn with(obj: &K, dict: &Dictionary) -> Self
    where
        K: Clone,
    {
        Self::taking(&mut obj.clone(), dict)
    }

    /// The compact form of `obj`, compressed against `dict`: the metadata
    /// kept parsed is moved out of `obj` while the rest is serialised, and
    /// put back (no copy of the object is made; a watch reads thousands).
    pub fn taking(obj: &mut K, dict: &Dictionary) -> Self {
        let m = obj.meta_mut();
        let texts = [
            m.name.take(),
            m.namespace.take(),
            m.uid.take(),
            m.resource_version.take(),
        ];
        let deletion = (
            m.deletion_timestamp.take(),
            m.deletion_grace_period_seconds.take(),
        );
        let labels = Parted::take(&mut m.labels);
        let annotations = Parted::take(&mut m.annotations);
        #[allow(
            clippy::expect_used,
            reason = "k8s-openapi types serialize infallibly: their maps have string keys"
        )]
        let json = serde_json::to_vec(&*obj).expect("a Kubernetes object serializes");
        let meta = Identity::of(&texts, &deletion);
        let m = obj.meta_mut();
        [m.name, m.namespace, m.uid, m.resource_version] = texts;
        (m.deletion_timestamp, m.deletion_grace_period_seconds) = deletion;
        let markers = Markers {
            labels: labels.restore(&mut m.labels),
            annotations: annotations.restore(&mut m.annotations),
        };
        let dict = dict.for_body(&json);
        Self {
            meta,
            markers,
            body: lz4_flex::block::compress_prepend_size_with_dict(&json, &dict).into_boxed_slice(),
            dict,
            kind: PhantomData,
        }
    }

    fn name(&self) -> String {
        key_of(self.meta.name().unwrap_or_default(), self.meta.namespace())
    }

    /// The JSON of everything but the metadata kept parsed.
    fn json(&self) -> Result<Vec<u8>, CacheError> {
        lz4_flex::block::decompress_size_prepended_with_dict(&self.body, &self.dict).map_err(
            |source| CacheError::Decompress {
                kind: K::kind(&()).into_owned(),
                name: self.name(),
                source,
            },
        )
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
        let m = obj.meta_mut();
        self.meta.put(m);
        for (to, from) in [
            (&mut m.labels, &self.markers.labels),
            (&mut m.annotations, &self.markers.annotations),
        ] {
            if !from.is_empty() {
                to.get_or_insert_default()
                    .extend(from.iter().map(|(k, v)| (k.to_owned(), v.to_owned())));
            }
        }
        Ok(obj)
    }

    /// The whole object again.
    pub fn object(&self) -> Result<K, CacheError> {
        self.whole(&self.json()?)
    }

    /// The whole object, if its JSON (without the parsed metadata) passes `keep`: a
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

/// A map kept by a watch: each object of a list is visible as it arrives
/// (so is a pod that first appears in a relist, to the hooks its arrival
/// triggers as well); what a complete list no longer holds goes when it
/// completes. Kept current by the events between lists, ready once the first
/// list is in. Keys are one small string each.
pub struct Listed<V> {
    map: RwLock<HashMap<Box<str>, V>>,
    ready: tokio::sync::watch::Sender<bool>,
}

impl<V> Default for Listed<V> {
    fn default() -> Self {
        Self {
            map: RwLock::default(),
            ready: tokio::sync::watch::channel(false).0,
        }
    }
}

impl<V> Debug for Listed<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listed")
            .field("entries", &self.read().len())
            .finish()
    }
}

impl<V> Listed<V> {
    /// The map, for reading.
    pub fn read(&self) -> RwLockReadGuard<'_, HashMap<Box<str>, V>> {
        self.map.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The map, for writing (what this process has just written, before
    /// its watch says so).
    pub fn write(&self) -> RwLockWriteGuard<'_, HashMap<Box<str>, V>> {
        self.map.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for the first complete list.
    pub async fn wait_until_ready(&self) {
        let mut ready = self.ready.subscribe();
        let _ = ready.wait_for(|r| *r).await;
    }
}

/// The writing half of a [`Listed`]: follows one watch's events.
#[derive(Debug)]
pub struct ListWriter<V> {
    to: Arc<Listed<V>>,
    /// The list being received.
    fresh: Option<HashMap<Box<str>, V>>,
}

impl<V: Clone> ListWriter<V> {
    /// A writer of `to`.
    pub fn new(to: Arc<Listed<V>>) -> Self {
        Self { to, fresh: None }
    }

    /// How many entries the map holds.
    fn len(&self) -> usize {
        self.to.read().len()
    }

    /// Applies one watch event: each object under `key(o)` with `value(o)`
    /// (not computed for deletions).
    pub fn apply<K>(
        &mut self,
        ev: &watcher::Event<K>,
        key: impl Fn(&K) -> Box<str>,
        value: impl Fn(&K) -> V,
    ) {
        match ev {
            watcher::Event::Init => self.fresh = Some(HashMap::new()),
            watcher::Event::InitApply(o) => {
                let (k, v) = (key(o), value(o));
                if let Some(f) = self.fresh.as_mut() {
                    f.insert(k.clone(), v.clone());
                }
                // Visible now: readers that its arrival triggers (hooks of
                // other kinds) must find it before the list completes.
                self.to.write().insert(k, v);
            }
            watcher::Event::InitDone => {
                if let Some(f) = self.fresh.take() {
                    *self.to.write() = f;
                }
                self.to.ready.send_replace(true);
            }
            watcher::Event::Apply(o) => {
                self.to.write().insert(key(o), value(o));
            }
            watcher::Event::Delete(o) => {
                self.to.write().remove(&key(o));
            }
        }
    }
}

fn key_of(name: &str, namespace: Option<&str>) -> String {
    format!("{}/{name}", namespace.unwrap_or_default())
}

fn key_of_meta(meta: &ObjectMeta) -> Box<str> {
    key_of(
        meta.name.as_deref().unwrap_or_default(),
        meta.namespace.as_deref(),
    )
    .into_boxed_str()
}

/// A reader of a cache of compact objects, for rules and loops that read
/// another kind's objects.
pub struct Cache<K> {
    shared: Arc<Listed<Arc<Cached<K>>>>,
}

impl<K> Clone for Cache<K> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<K: Resource<DynamicType = ()>> Debug for Cache<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("kind", &K::kind(&()))
            .field("objects", &self.shared.read().len())
            .finish()
    }
}

/// The writer half of a [`Cache`], for [`watch`].
pub type Writer<K> = ListWriter<Arc<Cached<K>>>;

/// A new empty cache and its writer.
pub fn cache<K>() -> (Cache<K>, Writer<K>) {
    let shared = Arc::default();
    (
        Cache {
            shared: Arc::clone(&shared),
        },
        ListWriter::new(shared),
    )
}

impl<K> Cache<K>
where
    K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone + 'static,
{
    /// The cached entry (metadata at hand, the rest parsed on demand).
    pub fn entry(&self, name: &str, namespace: Option<&str>) -> Option<Arc<Cached<K>>> {
        self.shared
            .read()
            .get(key_of(name, namespace).as_str())
            .cloned()
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
        self.shared
            .read()
            .contains_key(key_of(name, namespace).as_str())
    }

    /// Every entry.
    pub fn entries(&self) -> Vec<Arc<Cached<K>>> {
        self.shared.read().values().cloned().collect()
    }

    /// Every object of `namespace` (all when `None`), parsed.
    pub fn objects_in(&self, namespace: Option<&str>) -> Vec<K> {
        let in_ns: Vec<_> = self
            .shared
            .read()
            .values()
            .filter(|c| namespace.is_none() || c.meta.namespace() == namespace)
            .cloned()
            .collect();
        in_ns.iter().filter_map(|c| parsed(c)).collect()
    }

    /// Whether some entry matches `pred` (checked under the cache's read
    /// lock, without copying the list of entries).
    pub fn any_entry(&self, pred: impl Fn(&Cached<K>) -> bool) -> bool {
        self.shared.read().values().any(|c| pred(c))
    }

    /// The first object matching `pred`, parsing each in turn.
    pub fn find(&self, pred: impl Fn(&K) -> bool) -> Option<K> {
        self.entries()
            .iter()
            .filter_map(|c| parsed(c))
            .find(|k| pred(k))
    }

    /// Objects cached.
    pub fn len(&self) -> usize {
        self.shared.read().len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.shared.read().is_empty()
    }

    /// Waits for the first complete list.
    pub async fn wait_until_ready(&self) {
        self.shared.wait_until_ready().await;
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
/// expiry, retries with a short backoff ([`super::outage::WatchBackoff`]), calls `on_relist` for each list after the
/// first, and yields each object it sees change (parsed, slimmed).
pub fn watch<K>(
    api: Api<Lean<K>>,
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
    let dict = Dictionary::of::<K>();
    watcher(api, config)
        .backoff(super::outage::WatchBackoff::default())
        .map_ok(move |ev| {
            let mut ev = lean_event(ev).modify(|o| {
                o.meta_mut().managed_fields = None;
                slim(o);
            });
            let cached = match &mut ev {
                watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
                    Some(Arc::new(Cached::taking(o, &dict)))
                }
                _ => None,
            };
            // `apply` asks a value only of the events that carry one.
            writer.apply(
                &ev,
                |o| key_of_meta(o.meta()),
                |o| {
                    cached
                        .clone()
                        .unwrap_or_else(|| Arc::new(Cached::with(o, &dict)))
                },
            );
            if matches!(ev, watcher::Event::InitDone) {
                tracing::debug!(kind = %K::kind(&()), objects = writer.len(), "list complete");
            }
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

/// `ev` with its object taken out of [`Lean`].
fn lean_event<K>(ev: watcher::Event<Lean<K>>) -> watcher::Event<K> {
    use watcher::Event;
    match ev {
        Event::Apply(Lean(o)) => Event::Apply(o),
        Event::Delete(Lean(o)) => Event::Delete(o),
        Event::Init => Event::Init,
        Event::InitApply(Lean(o)) => Event::InitApply(o),
        Event::InitDone => Event::InitDone,
    }
}

/// A cache holding `objects`, listed and ready (for tests of the rules that
/// read caches).
#[cfg(test)]
pub(crate) fn filled<K>(objects: impl IntoIterator<Item = K>) -> Cache<K>
where
    K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone,
{
    let (cache, mut writer) = cache::<K>();
    let key = |o: &K| key_of_meta(o.meta());
    let dict = Dictionary::of::<K>();
    let value = |o: &K| Arc::new(Cached::with(o, &dict));
    writer.apply(&watcher::Event::Init, key, value);
    for o in objects {
        writer.apply(&watcher::Event::InitApply(o), key, value);
    }
    writer.apply(&watcher::Event::InitDone, key, value);
    cache
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
        assert_eq!(c.object().unwrap(), p);
        // Parsed: identity and the project's own markers, nothing else.
        assert_eq!(c.identity().name(), Some("web-0"));
        assert_eq!(c.identity().uid(), Some("u1"));
        assert_eq!(c.labels().count(), 0);
        assert_eq!(c.label("app"), None, "read from the body only");
        let mut marked = pod();
        marked.metadata.labels = Some(
            [("app", "web"), ("vcluster.dev/owner", "vc1")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .into(),
        );
        marked.metadata.annotations = Some(
            [
                ("vcluster.dev/uid", "u0"),
                ("vcluster.dev/hash", "h1"),
                ("a", "b"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into(),
        );
        let c = Cached::new(&marked);
        assert_eq!(c.object().unwrap(), marked);
        assert_eq!(
            c.labels().collect::<Vec<_>>(),
            [("vcluster.dev/owner", "vc1")]
        );
        assert_eq!(c.label("vcluster.dev/owner"), Some("vc1"));
        assert_eq!(c.annotation("vcluster.dev/hash"), Some("h1"));
        assert_eq!(c.annotation("vcluster.dev/uid"), Some("u0"));
        assert_eq!(c.annotation("vcluster.dev/name"), None);
        assert_eq!(c.annotation("a"), None);
    }

    #[test]
    fn caching_leaves_the_watched_object_as_it_was() {
        // The watch hands the object on (hooks, the queue) after caching it.
        let mut p = served_pod(3);
        // Labels of both kinds: the marker goes out of the body and back.
        p.metadata
            .labels
            .get_or_insert_default()
            .insert("vcluster.dev/owner".into(), "vc1".into());
        p.metadata.deletion_timestamp =
            serde_json::from_value(json!("2026-12-07T10:00:05Z")).unwrap();
        p.metadata.deletion_grace_period_seconds = Some(30);
        p.metadata.annotations = Some(
            [("vcluster.dev/name", "web-3"), ("vcluster.dev/uid", "u3")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .into(),
        );
        let before = p.clone();
        let c = Cached::taking(&mut p, &Dictionary::none());
        assert_eq!(p, before);
        assert_eq!(c.object().unwrap(), before);
        // Only markers among the annotations: the body holds none at all.
        let body: serde_json::Value = serde_json::from_slice(&c.json().unwrap()).unwrap();
        assert_eq!(body["metadata"].get("annotations"), None);
        assert_eq!(body["metadata"]["labels"]["app"], "web");
        assert_eq!(body["metadata"]["labels"].get("vcluster.dev/owner"), None);
        assert_eq!(c.label("vcluster.dev/owner"), Some("vc1"));
        assert_eq!(body["metadata"].get("name"), None);
        assert_eq!(body["metadata"].get("deletionTimestamp"), None);
    }

    #[test]
    fn packed_pairs_read_back_any_text() {
        let pairs = [
            ("", ""),
            ("vcluster.dev/a", "x\0y\u{0}z"),
            ("vcluster.dev/é", "ü"),
        ];
        let packed = Pairs::packed(pairs);
        assert_eq!(packed.iter().collect::<Vec<_>>(), pairs);
        assert_eq!(packed.find("vcluster.dev/a"), Some("x\0y\u{0}z"));
        assert_eq!(packed.find("vcluster.dev/é"), Some("ü"));
        assert_eq!(packed.find("vcluster.dev/b"), None);
        assert!(Pairs::packed([]).is_empty());
        let texts = Packed::of([Some("a"), None, Some(""), None]);
        assert_eq!(
            texts.iter().collect::<Vec<_>>(),
            [Some("a"), None, Some(""), None]
        );
        assert_eq!(
            (texts.get(0), texts.get(1), texts.get(2), texts.get(9)),
            (Some("a"), None, Some(""), None)
        );
    }

    /// A pod as an API server returns it, defaults filled in.
    fn served_pod(i: usize) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": format!("web-{i}"), "namespace": "shop",
                "uid": format!("0c6f1f2e-{i:04}-4a8e-9d55-3b1c2a7e5f90"),
                "resourceVersion": format!("{}", 1000 + i),
                "creationTimestamp": "2026-12-07T10:00:00Z",
                "labels": {"app": "web", "pod-template-hash": "5d9c8b7f6"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "web-5d9c8b7f6", "uid": "7d1e2f3a-0000-4b5c-8d9e-0f1a2b3c4d5e",
                    "controller": true, "blockOwnerDeletion": true}]},
            "spec": {"containers": [{"name": "web", "image": "nginx:1.27",
                "ports": [{"containerPort": 80, "protocol": "TCP"}],
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent",
                "volumeMounts": [{"name": format!("kube-api-access-{i:05}"),
                    "readOnly": true,
                    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]}],
                "restartPolicy": "Always", "terminationGracePeriodSeconds": 30,
                "dnsPolicy": "ClusterFirst", "serviceAccountName": "default",
                "serviceAccount": "default", "nodeName": format!("node-{}", i % 7),
                "securityContext": {}, "schedulerName": "default-scheduler",
                "tolerations": [
                    {"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                        "effect": "NoExecute", "tolerationSeconds": 300},
                    {"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                        "effect": "NoExecute", "tolerationSeconds": 300}],
                "volumes": [{"name": format!("kube-api-access-{i:05}"), "projected": {
                    "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {"configMap": {"name": "kube-root-ca.crt",
                            "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                        {"downwardAPI": {"items": [{"path": "namespace",
                            "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}],
                    "defaultMode": 420}}],
                "priority": 0, "enableServiceLinks": true,
                "preemptionPolicy": "PreemptLowerPriority"},
            "status": {"phase": "Running", "hostIP": "10.1.0.7",
                "podIP": format!("10.244.{}.{}", i / 250, i % 250 + 2),
                "startTime": "2026-12-07T10:00:01Z", "qosClass": "Burstable",
                "conditions": [
                    {"type": "PodReadyToStartContainers", "status": "True",
                        "lastTransitionTime": "2026-12-07T10:00:03Z"},
                    {"type": "Initialized", "status": "True",
                        "lastTransitionTime": "2026-12-07T10:00:01Z"},
                    {"type": "Ready", "status": "True",
                        "lastTransitionTime": "2026-12-07T10:00:04Z"},
                    {"type": "ContainersReady", "status": "True",
                        "lastTransitionTime": "2026-12-07T10:00:04Z"},
                    {"type": "PodScheduled", "status": "True",
                        "lastTransitionTime": "2026-12-07T10:00:01Z"}],
                "containerStatuses": [{"name": "web", "ready": true, "restartCount": 0,
                    "image": "docker.io/library/nginx:1.27", "started": true,
                    "imageID": "docker.io/library/nginx@sha256:0f04e4f646a3f14bf31d8bc8d885b6c951fdcf42589d06845f64d18aec6a3c4d",
                    "containerID": format!("containerd://{i:064}"),
                    "state": {"running": {"startedAt": "2026-12-07T10:00:03Z"}}}]},
        }))
        .unwrap()
    }

    #[test]
    fn a_caches_dictionary_shrinks_the_bodies_of_its_kind() {
        let dict = Dictionary::default();
        let first = Cached::with(&served_pod(0), &dict);
        assert_eq!(first.object().unwrap(), served_pod(0));
        for i in [1, 42, 4321] {
            let alone = Cached::new(&served_pod(i));
            let with = Cached::with(&served_pod(i), &dict);
            assert_eq!(with.object().unwrap(), served_pod(i));
            assert!(
                with.body.len() * 3 < alone.body.len(),
                "pod {i}: {} bytes against the dictionary, {} alone",
                with.body.len(),
                alone.body.len()
            );
        }
        // No Secret's data is kept in a dictionary.
        let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
            "metadata": {"name": "s", "namespace": "shop"},
            "data": {"password": "c2VjcmV0LXBhc3N3b3Jk"},
        }))
        .unwrap();
        let secrets = Dictionary::of::<k8s_openapi::api::core::v1::Secret>();
        let c = Cached::with(&secret, &secrets);
        assert_eq!(c.object().unwrap(), secret);
        assert!(c.dict.is_empty(), "compressed on its own");
        assert!(
            !Cached::with(&served_pod(3), &Dictionary::of::<Pod>())
                .dict
                .is_empty()
        );
        // Another kind's cache has its own.
        let other = Dictionary::default();
        let c = Cached::with(&pod(), &other);
        assert_eq!(c.object().unwrap(), pod());
        assert_eq!(
            Cached::with(&served_pod(7), &dict).object().unwrap(),
            served_pod(7)
        );
    }

    #[test]
    fn a_slices_service_and_maker_are_at_hand() {
        use crate::translate::service::{derived_slice, slice_service};
        use k8s_openapi::api::discovery::v1::EndpointSlice;
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "db-abc", "namespace": "shop", "uid": "s1",
                "labels": {"kubernetes.io/service-name": "db",
                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                    "app": "db"}},
            "addressType": "IPv4", "endpoints": [],
        }))
        .unwrap();
        let c = Cached::new(&slice);
        assert_eq!(c.object().unwrap(), slice);
        // Read from the parsed part, as the scans over every slice do.
        assert_eq!(slice_service(&c), Some("db"));
        assert!(derived_slice(&c));
        assert_eq!(c.labels().count(), 2);
    }

    #[test]
    fn a_relist_shows_new_objects_at_once_and_drops_the_gone_at_its_end() {
        let (cache, mut writer) = cache::<Pod>();
        let key = |o: &Pod| key_of_meta(o.meta());
        let value = |o: &Pod| Arc::new(Cached::new(o));
        let named = |n: &str| {
            let mut p = pod();
            p.metadata.name = Some(n.to_owned());
            p
        };
        writer.apply(&watcher::Event::Init, key, value);
        writer.apply(&watcher::Event::InitApply(named("old")), key, value);
        writer.apply(&watcher::Event::InitDone, key, value);
        // A relist (after 410 Gone) in which "old" is gone and "new" appears.
        writer.apply(&watcher::Event::Init, key, value);
        writer.apply(&watcher::Event::InitApply(named("new")), key, value);
        assert!(
            cache.contains("new", Some("shop")),
            "seen before the list completes"
        );
        assert!(
            cache.contains("old", Some("shop")),
            "kept until the list completes"
        );
        writer.apply(&watcher::Event::InitDone, key, value);
        assert!(cache.contains("new", Some("shop")));
        assert!(!cache.contains("old", Some("shop")));
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
