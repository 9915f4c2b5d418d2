//! The generic sync engine. One [`Engine`] per kind; each kind is a small
//! [`Rule`] file that says what its host form is and what comes back up.
//!
//! For a kind, the engine
//! - watches the virtual API (all namespaces) and the host namespace (only
//!   objects this vcluster wrote for a virtual object), into compact caches
//!   ([`cache`]: metadata parsed, the rest compressed JSON, `managedFields`
//!   stripped, host copies slimmed by the rule); kube-runtime's watcher
//!   relists on expiry (410 Gone) and retries with backoff across API server
//!   restarts;
//! - queues virtual keys in a [`queue::FairQueue`], fair across virtual
//!   namespaces, and reconciles them with bounded concurrency;
//! - reconciles level-triggered: desired = rule(virtual); written with
//!   server-side apply under one field manager only when its content hash
//!   differs (and unconditionally on each periodic resync, which reverts drift);
//!   status translated back onto the virtual status subresource;
//! - deletes owned host objects whose source is gone, and at start lists both
//!   sides and reconciles every key before reporting ready;
//! - never changes or deletes a host object without this vcluster's owner
//!   label: a name collision becomes a Warning Event on the virtual object.

pub mod addresses;
pub mod apiservice;
pub mod cache;
pub mod certs;
pub mod cidr;
pub mod config;
pub mod endpoints;
pub mod events;
pub mod ingress_hosts;
pub mod ingresses;
pub mod metrics;
pub mod nodes;
pub mod pods;
pub mod queue;
pub mod services;

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;

use tokio::sync::{Mutex, Notify};

use crate::FIELD_MANAGER;
use crate::translate::{Ownership, VclusterName, VirtualKey, host_name, markers};
use cache::{Cache, CacheError};
use queue::{FairQueue, Later};

/// Annotation on host objects: hash of the desired content last applied.
pub const HASH_ANNOTATION: &str = "vcluster.dev/content-hash";

/// Errors of one reconcile (retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// An API call failed.
    #[error("{action} {kind} {key}: {source}")]
    Api {
        /// What was attempted.
        action: &'static str,
        /// The kind.
        kind: &'static str,
        /// The object.
        key: String,
        /// The cause.
        source: Box<kube::Error>,
    },
    /// A cached object did not parse.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The desired object could not be serialized.
    #[error("serialize {kind}: {source}")]
    Serialize {
        /// The kind.
        kind: &'static str,
        /// The cause.
        source: serde_json::Error,
    },
}

/// What is shared by every kind's engine.
#[derive(Clone)]
pub struct Context {
    /// This vcluster.
    pub vc: VclusterName,
    /// The host namespace the vcluster lives in.
    pub host_namespace: String,
    /// Client for the host API (namespaced permissions suffice).
    pub host: kube::Client,
    /// Client for the virtual API.
    pub virt: kube::Client,
    /// Publishes events on virtual objects.
    pub recorder: Recorder,
}

impl Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("vc", &self.vc)
            .field("host_namespace", &self.host_namespace)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context; events are reported as `vcluster-syncer`.
    pub fn new(
        vc: VclusterName,
        host_namespace: String,
        host: kube::Client,
        virt: kube::Client,
    ) -> Self {
        let recorder = Recorder::new(
            virt.clone(),
            Reporter {
                controller: "vcluster-syncer".into(),
                instance: None,
            },
        );
        Self {
            vc,
            host_namespace,
            host,
            virt,
            recorder,
        }
    }

    /// Ownership markers of this vcluster.
    pub fn ownership(&self) -> Ownership<'_> {
        Ownership::new(&self.vc)
    }

    /// The host name of a virtual object.
    pub fn host_name(&self, key: &VirtualKey) -> String {
        host_name(&self.vc, &key.namespace, &key.name)
    }

    /// Publishes an event on a virtual object (best effort: a failure is logged).
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let ev = KubeEvent {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: "Sync".to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::warn!(reason, error = %e, "cannot publish event");
        }
    }
}

/// What a rule decides for one virtual object.
#[derive(Debug)]
pub enum Decision<H> {
    /// This is the desired host object (name, namespace and markers are set
    /// by the engine).
    Sync(H),
    /// The object does not belong on the host: an owned host copy is
    /// deleted, with this grace period if given.
    Remove {
        /// Grace period for the host deletion.
        grace_seconds: Option<i64>,
    },
    /// The virtual object is finished (its host copy is gone for good):
    /// delete it with no grace, as a kubelet does for a pod it has stopped.
    DeleteVirtual,
    /// The object is refused: a Warning event with this reason and message,
    /// and nothing on the host.
    Reject(&'static str, String),
    /// Not yet: something it needs is missing; try again shortly.
    Wait(String),
}

/// What became of the host copy in one reconcile.
enum Written<H> {
    /// Written; the API's answer.
    Applied(H),
    /// Already as desired.
    Unchanged,
    /// A foreign object holds the name.
    Collision,
}

/// Bounds of a kind's object types.
pub trait Object:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
}
impl<T> Object for T where
    T: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// The rules of one kind.
pub trait Rule: Send + Sync + 'static {
    /// The virtual type.
    type V: Object;
    /// The host type.
    type H: Object;
    /// Kind name for logs and metrics.
    const KIND: &'static str;

    /// The host form of a virtual object, given its current host copy.
    fn decide(&self, ctx: &Context, v: &Self::V, h: Option<&Self::H>) -> Decision<Self::H>;

    /// Called after the host copy was applied or found up to date, with it;
    /// `Ok(Some(d))` asks for another reconcile after `d`.
    fn after_sync(
        &self,
        _ctx: &Context,
        _v: &Self::V,
        _h: &Self::H,
    ) -> impl Future<Output = Result<Option<Duration>, SyncError>> + Send {
        async { Ok(None) }
    }

    /// Runs at the same time as the write of the host copy (`writing`: one
    /// is under way; `h`: the cached host copy), for work [`Rule::after_sync`]
    /// needs that does not depend on the write's result.
    fn alongside_write(
        &self,
        _ctx: &Context,
        _v: &Self::V,
        _h: Option<&Self::H>,
        _writing: bool,
    ) -> impl Future<Output = Result<(), SyncError>> + Send {
        async { Ok(()) }
    }

    /// A merge patch for the virtual status subresource, when the host object
    /// reports something the virtual one does not show yet.
    fn status_up(&self, _v: &Self::V, _h: &Self::H) -> Option<serde_json::Value> {
        None
    }

    /// The host refused `desired` with `message` (400/403/404/422): another
    /// form to apply instead, if the rule has one (for example without an
    /// address the host has already given to someone else).
    fn on_rejected(
        &self,
        _desired: &Self::H,
        _h: Option<&Self::H>,
        _message: &str,
    ) -> Option<Self::H> {
        None
    }

    /// Drops what the rule and its readers never use from a cached host
    /// object (memory: one cached copy per synced object).
    fn slim_host(_h: &mut Self::H) {}
}

type Hook<V> = Box<dyn Fn(&V) + Send + Sync>;

/// One kind's engine.
pub struct Engine<R: Rule> {
    rule: Arc<R>,
    ctx: Arc<Context>,
    virt_store: Cache<R::V>,
    virt_writer: Mutex<Option<cache::Writer<R::V>>>,
    host_store: Cache<R::H>,
    host_writer: Mutex<Option<cache::Writer<R::H>>>,
    queue: std::sync::Mutex<FairQueue<VirtualKey>>,
    later: std::sync::Mutex<Later<VirtualKey>>,
    later_changed: Notify,
    hooks: std::sync::Mutex<Vec<Hook<R::V>>>,
    wake: Notify,
    ready: AtomicBool,
    force: Mutex<std::collections::HashSet<VirtualKey>>,
    failures: Mutex<std::collections::HashMap<VirtualKey, backon::ExponentialBackoff>>,
}

impl<R: Rule> Debug for Engine<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("kind", &R::KIND)
            .finish_non_exhaustive()
    }
}

/// Engine settings.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Concurrent reconciles.
    pub concurrency: usize,
    /// Period of the full resync (which also reverts drift).
    pub resync: Duration,
    /// Server-side timeout of each watch call (a new watch follows each).
    pub watch_timeout_seconds: u32,
    /// Ask for watch bookmarks (they keep resource versions fresh, so a
    /// re-watch rarely finds its version compacted).
    pub watch_bookmarks: bool,
    /// The host API server streams initial lists in watches (see [`streams_lists`]).
    pub host_streams_lists: bool,
    /// The virtual API server streams initial lists in watches.
    pub virtual_streams_lists: bool,
}

/// Which API a watch is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The host cluster's API.
    Host,
    /// The virtual cluster's API.
    Virtual,
}

impl EngineOptions {
    /// The watcher configuration these options ask for on `side`: the
    /// initial list streamed as watch events where the server can (no pages
    /// of hundreds of objects held at once), else listed in pages.
    pub fn watcher_config(&self, side: Side) -> watcher::Config {
        let c = watcher::Config::default().timeout(self.watch_timeout_seconds);
        let streams = match side {
            Side::Host => self.host_streams_lists,
            Side::Virtual => self.virtual_streams_lists,
        };
        if streams {
            // Streaming lists end their initial events with a bookmark.
            c.streaming_lists()
        } else if self.watch_bookmarks {
            c
        } else {
            c.disable_bookmarks()
        }
    }
}

/// Whether `client`'s API server streams initial lists in watches
/// (`sendInitialEvents`, the WatchList feature: on by default since
/// Kubernetes 1.34, off in 1.33). Probed with a watch on an empty selection
/// of ConfigMaps in `namespace`: a server that streams opens with the
/// bookmark that ends the initial events; one that does not refuses the
/// parameter or sends nothing.
pub async fn streams_lists(client: &kube::Client, namespace: &str, side: Side) -> bool {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{WatchEvent, WatchParams};
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let wp = WatchParams::streaming_lists()
        .labels("vcluster.dev/probe=none")
        .timeout(2);
    let streams = match api.watch(&wp, "0").await {
        Ok(stream) => {
            futures::pin_mut!(stream);
            let first = tokio::time::timeout(Duration::from_secs(3), stream.next()).await;
            matches!(
                first,
                Ok(Some(Ok(WatchEvent::Bookmark(b))))
                    if b.metadata.annotations.contains_key("k8s.io/initial-events-end")
            )
        }
        Err(e) => {
            tracing::debug!(?side, error = %e, "streamed-list probe refused");
            false
        }
    };
    if streams {
        tracing::info!(?side, "the API server streams initial lists");
    } else {
        tracing::info!(
            ?side,
            "the API server does not stream lists; listing in pages"
        );
    }
    streams
}

fn strip<K: Resource>(mut o: K) -> K {
    o.managed_fields_mut().clear();
    o
}

fn hash_of(value: &serde_json::Value) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, value.to_string().as_bytes());
    d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

impl<R: Rule> Engine<R> {
    /// A new engine for `rule`.
    pub fn new(rule: R, ctx: Arc<Context>) -> Arc<Self> {
        Self::with_virtual_store(rule, ctx, cache::cache())
    }

    /// A new engine whose virtual cache was made beforehand (so another
    /// kind's rule can hold a reader of it before this engine exists).
    pub fn with_virtual_store(
        rule: R,
        ctx: Arc<Context>,
        (virt_store, virt_writer): (Cache<R::V>, cache::Writer<R::V>),
    ) -> Arc<Self> {
        let (host_store, host_writer) = cache::cache();
        Arc::new(Self {
            rule: Arc::new(rule),
            ctx,
            virt_store,
            virt_writer: Mutex::new(Some(virt_writer)),
            host_store,
            host_writer: Mutex::new(Some(host_writer)),
            queue: std::sync::Mutex::new(FairQueue::default()),
            later: std::sync::Mutex::default(),
            later_changed: Notify::new(),
            hooks: std::sync::Mutex::new(Vec::new()),
            wake: Notify::new(),
            ready: AtomicBool::new(false),
            force: Mutex::new(Default::default()),
            failures: Mutex::new(Default::default()),
        })
    }

    /// The virtual cache (for other kinds' rules to read).
    pub fn virtual_store(&self) -> Cache<R::V> {
        self.virt_store.clone()
    }

    /// The host cache.
    pub fn host_store(&self) -> Cache<R::H> {
        self.host_store.clone()
    }

    /// True once the initial sync has finished.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Queues a virtual key.
    pub fn enqueue(&self, key: VirtualKey) {
        self.queue_mut().add(key);
        self.wake.notify_one();
    }

    /// Queues a virtual key ahead of the keys waiting in its namespace: host
    /// changes (status to bring up, drift to revert) do not wait behind a
    /// burst of creations.
    fn enqueue_first(&self, key: VirtualKey) {
        self.queue_mut().add_first(key);
        self.wake.notify_one();
    }

    /// Wakes every idle worker; the stored permit covers a worker that has
    /// just found the queue empty and is about to wait.
    fn wake_all(&self) {
        self.wake.notify_waiters();
        self.wake.notify_one();
    }

    fn queue_mut(&self) -> std::sync::MutexGuard<'_, FairQueue<VirtualKey>> {
        lock(&self.queue)
    }

    /// Calls `hook` for every virtual object the watch reports (added,
    /// changed or deleted): other kinds use it to queue what an object refers to.
    pub fn on_virtual_change(&self, hook: impl Fn(&R::V) + Send + Sync + 'static) {
        lock(&self.hooks).push(Box::new(hook));
    }

    /// Keys waiting.
    pub fn queue_depth(&self) -> usize {
        self.queue_mut().len()
    }

    async fn enqueue_all(&self, force: bool) {
        let mut keys: Vec<VirtualKey> = self
            .virt_store
            .entries()
            .iter()
            .map(|v| VirtualKey {
                namespace: v.namespace().unwrap_or_default(),
                name: v.name_any(),
            })
            .collect();
        let own = self.ctx.ownership();
        keys.extend(
            self.host_store
                .entries()
                .iter()
                .filter_map(|h| own.virtual_key(h.meta())),
        );
        if force {
            self.force.lock().await.extend(keys.iter().cloned());
        }
        self.enqueue_many(keys);
    }

    /// Queues `keys` and wakes the idle workers.
    fn enqueue_many(&self, keys: Vec<VirtualKey>) {
        let mut q = self.queue_mut();
        for k in keys {
            q.add(k);
        }
        drop(q);
        self.wake_all();
    }

    /// Runs the engine until the process ends.
    pub async fn run(self: Arc<Self>, opts: EngineOptions) {
        let (Some(vw), Some(hw)) = (
            self.virt_writer.lock().await.take(),
            self.host_writer.lock().await.take(),
        ) else {
            tracing::error!(kind = R::KIND, "engine started twice");
            return;
        };
        let virt_api: Api<R::V> = Api::all(self.ctx.virt.clone());
        let host_api: Api<R::H> = Api::namespaced(self.ctx.host.clone(), &self.ctx.host_namespace);
        let selector = self.ctx.ownership().selector();

        let me = Arc::clone(&self);
        let virt_watch = async move {
            let stream = cache::watch(
                virt_api,
                opts.watcher_config(Side::Virtual),
                vw,
                |_| {},
                || metrics::global().watch_restarted(R::KIND, "virtual"),
            );
            futures::pin_mut!(stream);
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(obj) => {
                        for hook in lock(&me.hooks).iter() {
                            hook(&obj);
                        }
                        me.enqueue(VirtualKey {
                            namespace: obj.namespace().unwrap_or_default(),
                            name: obj.name_any(),
                        })
                    }
                    Err(e) => {
                        metrics::global().watch_error(R::KIND, "virtual");
                        tracing::warn!(kind = R::KIND, side = "virtual", error = %e, "watch error")
                    }
                }
            }
        };
        let me = Arc::clone(&self);
        let host_watch = async move {
            let config = opts.watcher_config(Side::Host).labels(&selector);
            let stream = cache::watch(host_api, config, hw, R::slim_host, || {
                metrics::global().watch_restarted(R::KIND, "host")
            });
            futures::pin_mut!(stream);
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(obj) => {
                        if let Some(key) = me.ctx.ownership().virtual_key(obj.meta()) {
                            me.enqueue_first(key);
                        }
                    }
                    Err(e) => {
                        metrics::global().watch_error(R::KIND, "host");
                        tracing::warn!(kind = R::KIND, side = "host", error = %e, "watch error")
                    }
                }
            }
        };
        tokio::spawn(virt_watch);
        tokio::spawn(host_watch);

        // Initial sync: both caches complete, then every key on either side.
        let (a, b) = (self.virt_store.clone(), self.host_store.clone());
        futures::join!(a.wait_until_ready(), b.wait_until_ready());
        self.enqueue_all(false).await;
        let me = Arc::clone(&self);
        tokio::spawn(async move {
            loop {
                if me.queue_mut().is_idle() {
                    me.ready.store(true, Ordering::Release);
                    tracing::info!(
                        kind = R::KIND,
                        objects = me.virt_store.len(),
                        "initial sync done"
                    );
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let me = Arc::clone(&self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(opts.resync);
            tick.tick().await;
            loop {
                tick.tick().await;
                me.enqueue_all(true).await;
            }
        });

        let me = Arc::clone(&self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tick.tick().await;
                // Owned = written for a virtual source (host controllers copy
                // the owner label onto what they derive from our Services).
                let own = me.ctx.ownership();
                let owned = me
                    .host_store
                    .entries()
                    .iter()
                    .filter(|h| own.virtual_key(h.meta()).is_some())
                    .count();
                metrics::global().levels(R::KIND, me.queue_depth(), owned);
            }
        });

        tokio::spawn(Arc::clone(&self).serve_later());
        let workers: Vec<_> = (0..opts.concurrency.max(1))
            .map(|_| tokio::spawn(Arc::clone(&self).worker()))
            .collect();
        futures::future::join_all(workers).await;
    }

    async fn worker(self: Arc<Self>) {
        loop {
            let next = self.queue_mut().pop();
            let Some(key) = next else {
                self.wake.notified().await;
                continue;
            };
            let force = self.force.lock().await.remove(&key);
            let started = std::time::Instant::now();
            let result = self.reconcile(&key, force).await;
            metrics::global().reconciled(R::KIND, started.elapsed(), result.is_ok());
            self.queue_mut().done(&key);
            match result {
                Ok(again) => {
                    self.failures.lock().await.remove(&key);
                    if let Some(after) = again {
                        self.requeue_after(key, after);
                    }
                }
                Err(e) => {
                    tracing::warn!(kind = R::KIND, namespace = %key.namespace, name = %key.name, error = %e, "reconcile failed");
                    // Exponential with jitter per key, reset by the next success.
                    let delay = self
                        .failures
                        .lock()
                        .await
                        .entry(key.clone())
                        .or_insert_with(|| {
                            ExponentialBuilder::default()
                                .with_min_delay(Duration::from_millis(200))
                                .with_max_delay(Duration::from_secs(30))
                                .with_jitter()
                                .without_max_times()
                                .build()
                        })
                        .next()
                        .unwrap_or(Duration::from_secs(30));
                    self.requeue_after(key, delay);
                }
            }
            self.wake.notify_one();
        }
    }

    fn requeue_after(&self, key: VirtualKey, after: Duration) {
        let at = tokio::time::Instant::now() + after;
        if lock(&self.later).add(key, at) {
            self.later_changed.notify_one();
        }
    }

    /// Queues the keys asked for later as they fall due.
    async fn serve_later(self: Arc<Self>) {
        loop {
            let next = lock(&self.later).next();
            let due = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = due => {}
                () = self.later_changed.notified() => {}
            }
            let keys = lock(&self.later).pop_due(tokio::time::Instant::now());
            if !keys.is_empty() {
                self.enqueue_many(keys);
            }
        }
    }

    /// Reconciles one key; `Ok(Some(d))` asks to be called again after `d`.
    async fn reconcile(
        &self,
        key: &VirtualKey,
        force: bool,
    ) -> Result<Option<Duration>, SyncError> {
        let ctx = &self.ctx;
        let own = ctx.ownership();
        let host_name = ctx.host_name(key);
        let v = self.virt_store.try_get(&key.name, Some(&key.namespace))?;
        let h = self
            .host_store
            .try_get(&host_name, Some(&ctx.host_namespace))?;
        let host_api: Api<R::H> = Api::namespaced(ctx.host.clone(), &ctx.host_namespace);
        let label = format!("{}/{}", key.namespace, key.name);
        // Ours means written for this very source: host controllers copy a
        // Service's labels (the owner label among them) onto what they derive.
        let ours = |h: &R::H| own.virtual_key(h.meta()).as_ref() == Some(key);

        let Some(v) = v else {
            if let Some(h) = h.filter(|h| ours(h)) {
                // The cache may lag a re-creation (a rule may replace a
                // virtual object): delete only what the API confirms gone.
                let virt_api: Api<R::V> = Api::namespaced(ctx.virt.clone(), &key.namespace);
                if virt_api
                    .get_metadata_opt(&key.name)
                    .await
                    .map_err(|e| api_err("get", R::KIND, &label, e))?
                    .is_some()
                {
                    return Ok(Some(Duration::from_millis(200)));
                }
                self.delete_host(&host_api, &h, &label, None).await?;
            }
            return Ok(None);
        };
        let desired = match self.rule.decide(ctx, &v, h.as_ref().filter(|h| ours(h))) {
            Decision::Sync(d) => d,
            Decision::Remove { grace_seconds } => {
                if let Some(h) = h.filter(|h| ours(h)) {
                    self.delete_host(&host_api, &h, &label, grace_seconds)
                        .await?;
                }
                return Ok(None);
            }
            Decision::DeleteVirtual => {
                // The cache may lag a fresh host write: confirm the host copy is gone.
                if host_api
                    .get_opt(&host_name)
                    .await
                    .map_err(|e| api_err("get", R::KIND, &label, e))?
                    .is_some()
                {
                    return Ok(Some(Duration::from_millis(500)));
                }
                let virt_api: Api<R::V> = Api::namespaced(ctx.virt.clone(), &key.namespace);
                delete_exact(&virt_api, &key.name, v.uid(), Some(0))
                    .await
                    .map_err(|e| api_err("delete", R::KIND, &label, e))?;
                return Ok(None);
            }
            Decision::Reject(reason, note) => {
                // Refused: nothing of it stays on the host.
                if let Some(h) = h.filter(|h| ours(h)) {
                    self.delete_host(&host_api, &h, &label, None).await?;
                }
                ctx.event(&v, EventType::Warning, reason, note).await;
                return Ok(None);
            }
            Decision::Wait(why) => {
                tracing::debug!(kind = R::KIND, key = %label, why, "waiting");
                return Ok(Some(Duration::from_secs(1)));
            }
        };
        if let Some(h) = &h
            && !ours(h)
        {
            // Owned by us but for another source: should not happen with the
            // name scheme; treat it as a collision all the same.
            return self.collision(&v, &host_name).await;
        }
        let mut desired = desired;
        let uid = v.uid().unwrap_or_default();
        {
            let meta = desired.meta_mut();
            meta.name = Some(host_name.clone());
            meta.namespace = Some(ctx.host_namespace.clone());
            meta.labels.get_or_insert_default().extend(own.labels(key));
            meta.annotations
                .get_or_insert_default()
                .extend(own.annotations(key, &uid));
            meta.managed_fields = None;
            meta.resource_version = None;
            meta.uid = None;
        }
        let mut value = serde_json::to_value(&desired).map_err(|source| SyncError::Serialize {
            kind: R::KIND,
            source,
        })?;
        let hash = hash_of(&value);
        if let Some(ann) = value
            .pointer_mut("/metadata/annotations")
            .and_then(|a| a.as_object_mut())
        {
            ann.insert(
                HASH_ANNOTATION.to_owned(),
                serde_json::Value::String(hash.clone()),
            );
        }
        let current_hash = h
            .as_ref()
            .and_then(|h| h.annotations().get(HASH_ANNOTATION).cloned());
        let writing = force || current_hash.as_deref() != Some(hash.as_str());
        let write = async {
            if !writing {
                return Ok(Written::Unchanged);
            }
            // Not in the cache: created only if absent (a foreign object may
            // hold the name, and the cache sees only ours).
            let create = h.is_none();
            let mut result = self
                .apply_host(&host_api, &host_name, &mut value, create)
                .await;
            if let Err(kube::Error::Api(status)) = &result
                && rejected(status.code)
                && let Some(alt) = self.rule.on_rejected(&desired, h.as_ref(), &status.message)
            {
                tracing::info!(kind = R::KIND, key = %label, reason = %status.message, "host refused the copy; applying the rule's alternative");
                let mut alt_value =
                    serde_json::to_value(&alt).map_err(|source| SyncError::Serialize {
                        kind: R::KIND,
                        source,
                    })?;
                if let Some(ann) = alt_value
                    .pointer_mut("/metadata/annotations")
                    .and_then(|a| a.as_object_mut())
                {
                    ann.insert(
                        HASH_ANNOTATION.to_owned(),
                        serde_json::Value::String(hash.clone()),
                    );
                }
                result = self
                    .apply_host(&host_api, &host_name, &mut alt_value, create)
                    .await;
            }
            let out = match result {
                Ok(Some(out)) => out,
                Ok(None) => return Ok(Written::Collision),
                Err(kube::Error::Api(status)) if rejected(status.code) => {
                    // The host refuses this object as it is: tell the tenant,
                    // then keep retrying with backoff (it may be fixed either side).
                    let note = format!(
                        "the host API rejected the {} copy: {}",
                        R::KIND,
                        status.message
                    );
                    ctx.event(&v, EventType::Warning, "SyncRejected", note)
                        .await;
                    return Err(api_err("apply", R::KIND, &label, kube::Error::Api(status)));
                }
                Err(e) => return Err(api_err("apply", R::KIND, &label, e)),
            };
            tracing::debug!(kind = R::KIND, key = %label, host = %host_name, "applied");
            Ok(Written::Applied(strip(out)))
        };
        // The rule's work that does not need the write's result goes at the
        // same time (one round trip less per new object).
        let (written, alongside) = futures::join!(
            write,
            self.rule.alongside_write(ctx, &v, h.as_ref(), writing)
        );
        let applied = match written? {
            Written::Collision => return self.collision(&v, &host_name).await,
            Written::Applied(out) => Some(out),
            Written::Unchanged => None,
        };
        alongside?;
        let host_now = applied.as_ref().or(h.as_ref());
        let mut again = None;
        if let Some(hn) = host_now {
            again = self.rule.after_sync(ctx, &v, hn).await?;
            if let Some(patch) = self.rule.status_up(&v, hn) {
                let virt_api: Api<R::V> = Api::namespaced(ctx.virt.clone(), &key.namespace);
                virt_api
                    .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(|e| api_err("update status of", R::KIND, &label, e))?;
            }
        }
        Ok(again)
    }

    /// Server-side applies `value` as the host object `name`. With `create`,
    /// only if nothing holds the name: if something does, it is looked at and
    /// written over only if this vcluster owns it (`Ok(None)`: a foreign
    /// object holds the name; it is left as it is).
    ///
    /// The create-only apply carries resourceVersion "1" as a precondition:
    /// an apply that creates ignores it, one that would change an existing
    /// object fails with 409 Conflict, because no object has that version
    /// (etcd's first write is revision 2). One round trip per new copy
    /// instead of a GET before the apply, and no window between them.
    async fn apply_host(
        &self,
        api: &Api<R::H>,
        name: &str,
        value: &mut serde_json::Value,
        create: bool,
    ) -> Result<Option<R::H>, kube::Error> {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        if create && let Some(meta) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            meta.insert("resourceVersion".into(), "1".into());
            let result = api.patch(name, &params, &Patch::Apply(&*value)).await;
            if let Some(meta) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
                meta.remove("resourceVersion");
            }
            match result {
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    // Something holds the name: ours, not cached yet, or foreign.
                    if let Some(existing) = api.get_opt(name).await?
                        && !self.ctx.ownership().owns(existing.meta())
                    {
                        return Ok(None);
                    }
                }
                other => return other.map(Some),
            }
        }
        api.patch(name, &params, &Patch::Apply(&*value))
            .await
            .map(Some)
    }

    async fn collision(&self, v: &R::V, host_name: &str) -> Result<Option<Duration>, SyncError> {
        let note = format!(
            "cannot sync to host: {} {host_name} already exists in host namespace {} and is not managed by vcluster {}",
            R::KIND,
            self.ctx.host_namespace,
            self.ctx.vc
        );
        tracing::warn!(
            kind = R::KIND,
            host = host_name,
            "name collision with a foreign host object"
        );
        self.ctx
            .event(v, EventType::Warning, "SyncNameCollision", note)
            .await;
        // Look again later: the foreign object may go away.
        Ok(Some(Duration::from_secs(30)))
    }

    async fn delete_host(
        &self,
        api: &Api<R::H>,
        h: &R::H,
        label: &str,
        grace_seconds: Option<i64>,
    ) -> Result<(), SyncError> {
        if h.meta().deletion_timestamp.is_some() && grace_seconds.is_none() {
            return Ok(());
        }
        let grace = grace_seconds.and_then(|g| u32::try_from(g).ok());
        delete_exact(api, &h.name_any(), h.uid(), grace)
            .await
            .map(drop)
            .map_err(|e| api_err("delete host copy of", R::KIND, label, e))
    }
}

/// Deletes exactly the object `name` with `uid` (a uid precondition), with
/// `grace` seconds if given. `Ok(false)` when it is already gone (404) or the
/// name now holds another object (409): nothing of ours is left to delete.
pub async fn delete_exact<K>(
    api: &Api<K>,
    name: &str,
    uid: Option<String>,
    grace: Option<u32>,
) -> Result<bool, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let dp = DeleteParams {
        grace_period_seconds: grace,
        preconditions: Some(Preconditions {
            uid,
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Locks a mutex over plain data. A poisoned lock means a task panicked
/// mid-update; the maps and queues behind these locks stay consistent
/// enough to go on.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Host answers that mean "this object is not acceptable", as opposed to
/// transient failures.
fn rejected(code: u16) -> bool {
    matches!(code, 400 | 403 | 404 | 422)
}

/// A mapper of API errors about virtual object `v` (for rule files).
pub fn err_for<K: Resource>(
    action: &'static str,
    kind: &'static str,
    v: &K,
) -> impl FnOnce(kube::Error) -> SyncError + use<K> {
    let key = VirtualKey {
        namespace: v.namespace().unwrap_or_default(),
        name: v.name_any(),
    }
    .to_string();
    move |e| api_err(action, kind, &key, e)
}

fn api_err(action: &'static str, kind: &'static str, key: &str, e: kube::Error) -> SyncError {
    SyncError::Api {
        action,
        kind,
        key: key.to_owned(),
        source: Box::new(e),
    }
}

/// Re-exported for rule files.
pub use markers::copy_unreserved;
