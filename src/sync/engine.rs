//! One kind's [`Engine`]: its two caches and the watches that fill them, the
//! fair work queue and its workers, the timer for keys asked for later, the
//! periodic resync and the initial sync that makes it ready. What one
//! reconcile does is in [`super::reconcile`].

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use kube::api::Api;
use kube::{Resource, ResourceExt};
use tokio::sync::Notify;
use tracing::Instrument as _;

use super::cache::{self, Cache, Writer};
use super::feed::{Feed, Hooks, Readiness};
use super::lean::Lean;
use super::queue::{FairQueue, Later};
use super::{Context, EngineOptions, Rule, Side, lock, metrics};
use crate::translate::VirtualKey;

/// The longest a failed key waits before its next try (its backoff's cap,
/// and the cap of a server's `retryAfterSeconds`).
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The writer halves of an engine's caches, until it runs.
type Writers<R> = (Writer<<R as Rule>::V>, Writer<<R as Rule>::H>);

/// One kind's engine.
pub struct Engine<R: Rule> {
    pub(super) rule: Arc<R>,
    pub(super) ctx: Arc<Context>,
    pub(super) virt: Cache<R::V>,
    pub(super) host: Cache<R::H>,
    writers: std::sync::Mutex<Option<Writers<R>>>,
    hooks: Arc<Hooks<R::V>>,
    ready: Arc<Readiness>,
    host_ready: Arc<Readiness>,
    queue: std::sync::Mutex<FairQueue<VirtualKey>>,
    later: std::sync::Mutex<Later<VirtualKey>>,
    later_changed: Notify,
    wake: Notify,
    force: std::sync::Mutex<HashSet<VirtualKey>>,
    failures: std::sync::Mutex<HashMap<VirtualKey, backon::ExponentialBackoff>>,
}

impl<R: Rule> Debug for Engine<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("kind", &R::KIND)
            .finish_non_exhaustive()
    }
}

impl<R: Rule> Engine<R> {
    /// An engine for `rule` that fills `virt` (the virtual objects, all
    /// namespaces) and `host` (this vcluster's host copies).
    pub fn new(rule: R, ctx: Arc<Context>, virt: Feed<R::V>, host: Feed<R::H>) -> Arc<Self> {
        Arc::new(Self {
            rule: Arc::new(rule),
            ctx,
            virt: virt.cache,
            host: host.cache,
            writers: std::sync::Mutex::new(Some((virt.writer, host.writer))),
            hooks: virt.hooks,
            ready: virt.ready,
            host_ready: host.ready,
            queue: std::sync::Mutex::new(FairQueue::default()),
            later: std::sync::Mutex::default(),
            later_changed: Notify::new(),
            wake: Notify::new(),
            force: std::sync::Mutex::default(),
            failures: std::sync::Mutex::default(),
        })
    }

    /// The virtual cache.
    pub fn virtual_store(&self) -> Cache<R::V> {
        self.virt.clone()
    }

    /// The host cache.
    pub fn host_store(&self) -> Cache<R::H> {
        self.host.clone()
    }

    /// True once the initial sync has finished.
    pub fn is_ready(&self) -> bool {
        self.ready.is_set()
    }

    /// Returns once the initial sync has finished.
    pub async fn ready(&self) {
        self.ready.wait().await;
    }

    /// Queues a virtual key.
    pub fn enqueue(&self, key: VirtualKey) {
        lock(&self.queue).add(key);
        self.wake.notify_one();
    }

    /// Queues a virtual key ahead of the keys waiting in its namespace: host
    /// changes (status to bring up, drift to revert) do not wait behind a
    /// burst of creations.
    fn enqueue_first(&self, key: VirtualKey) {
        lock(&self.queue).add_first(key);
        self.wake.notify_one();
    }

    /// Queues `keys` and wakes the idle workers.
    pub fn enqueue_many(&self, keys: impl IntoIterator<Item = VirtualKey>) {
        let mut q = lock(&self.queue);
        for k in keys {
            q.add(k);
        }
        drop(q);
        self.wake_workers();
    }

    fn wake_workers(&self) {
        // The stored permit covers a worker that has just found the queue
        // empty and is about to wait.
        self.wake.notify_waiters();
        self.wake.notify_one();
    }

    /// Keys waiting.
    pub fn queue_depth(&self) -> usize {
        lock(&self.queue).len()
    }

    /// The keys of every cached virtual object.
    fn virtual_keys(&self) -> Vec<VirtualKey> {
        self.virt
            .entries()
            .iter()
            .map(|v| VirtualKey {
                namespace: v.namespace().unwrap_or_default(),
                name: v.name_any(),
            })
            .collect()
    }

    /// Queues every virtual object's key (a policy they all depend on changed).
    pub fn enqueue_all_virtual(&self) {
        self.enqueue_many(self.virtual_keys());
    }

    /// Every key of either side; with `force`, each is written even if its
    /// content hash is unchanged (the resync that reverts drift).
    fn enqueue_all(&self, force: bool) {
        let own = self.ctx.ownership();
        let mut keys = self.virtual_keys();
        keys.extend(
            self.host
                .entries()
                .iter()
                .filter_map(|h| own.virtual_key(h.as_ref())),
        );
        if !force {
            return self.enqueue_many(keys);
        }
        // The resync: its own lane, after every other key (queue.rs).
        lock(&self.force).extend(keys.iter().cloned());
        let mut q = lock(&self.queue);
        for k in keys {
            q.add_background(k);
        }
        drop(q);
        self.wake_workers();
    }

    /// Runs the engine until the process ends.
    pub async fn run(self: Arc<Self>, opts: EngineOptions) {
        let Some((virt_writer, host_writer)) = lock(&self.writers).take() else {
            tracing::error!(kind = R::KIND, "engine started twice");
            return;
        };
        let span = |side: &'static str| tracing::info_span!("watch", kind = R::KIND, side);
        tokio::spawn(
            Arc::clone(&self)
                .watch_virtual(virt_writer, opts)
                .instrument(span("virtual")),
        );
        tokio::spawn(
            Arc::clone(&self)
                .watch_host(host_writer, opts)
                .instrument(span("host")),
        );
        // Initial sync: both caches complete, then every key on either side.
        futures::join!(self.virt.wait_until_ready(), self.host.wait_until_ready());
        self.enqueue_all(false);
        self.ready_if_idle();
        let span = |task: &'static str| tracing::info_span!("engine", kind = R::KIND, task);
        tokio::spawn(
            Arc::clone(&self)
                .resync(opts.resync)
                .instrument(span("resync")),
        );
        tokio::spawn(Arc::clone(&self).report_levels().instrument(span("levels")));
        tokio::spawn(Arc::clone(&self).serve_later().instrument(span("later")));
        tokio::spawn(
            Arc::clone(&self)
                .retry_after_outages()
                .instrument(span("outage")),
        );
        let workers: Vec<_> = (0..opts.concurrency.max(1))
            .map(|_| tokio::spawn(Arc::clone(&self).worker().instrument(span("worker"))))
            .collect();
        futures::future::join_all(workers).await;
    }

    /// Marks the engine ready once the initial keys are all reconciled.
    fn ready_if_idle(&self) {
        if !self.ready.is_set() && lock(&self.queue).is_idle() && self.ready.set() {
            self.host_ready.set();
            tracing::info!(
                kind = R::KIND,
                objects = self.virt.len(),
                "initial sync done"
            );
        }
    }

    async fn watch_virtual(self: Arc<Self>, writer: Writer<R::V>, opts: EngineOptions) {
        let api: Api<Lean<R::V>> = Api::all(self.ctx.virt.clone());
        let stream = cache::watch(
            api,
            opts.watcher_config(Side::Virtual),
            writer,
            |_| {},
            || metrics::global().watch_restarted(R::KIND, "virtual"),
        );
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(obj) => {
                    self.hooks.call(&obj);
                    self.enqueue(VirtualKey {
                        namespace: obj.namespace().unwrap_or_default(),
                        name: obj.name_any(),
                    })
                }
                Err(e) => {
                    metrics::global().watch_error(R::KIND, "virtual");
                    tracing::warn!(error = %e, "watch error")
                }
            }
        }
    }

    async fn watch_host(self: Arc<Self>, writer: Writer<R::H>, opts: EngineOptions) {
        let api: Api<Lean<R::H>> =
            Api::namespaced(self.ctx.host.clone(), &self.ctx.names.host_namespace);
        let config = opts
            .watcher_config(Side::Host)
            .labels(&self.ctx.ownership().selector());
        let stream = cache::watch(api, config, writer, R::slim_host, || {
            metrics::global().watch_restarted(R::KIND, "host")
        });
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(obj) => {
                    if let Some(key) = self.ctx.ownership().virtual_key(obj.meta()) {
                        self.enqueue_first(key);
                    }
                }
                Err(e) => {
                    metrics::global().watch_error(R::KIND, "host");
                    tracing::warn!(error = %e, "watch error")
                }
            }
        }
    }

    async fn resync(self: Arc<Self>, every: Duration) {
        let first = tokio::time::Instant::now() + resync_phase(R::KIND, every);
        let mut tick = tokio::time::interval_at(first, every);
        loop {
            tick.tick().await;
            self.enqueue_all(true);
        }
    }

    async fn report_levels(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tick.tick().await;
            // Owned = written for a virtual source (host controllers copy
            // the owner label onto what they derive from our Services).
            let own = self.ctx.ownership();
            let owned = self
                .host
                .entries()
                .iter()
                .filter(|h| own.virtual_key(h.as_ref()).is_some())
                .count();
            metrics::global().levels(R::KIND, self.queue_depth(), owned);
        }
    }

    async fn worker(self: Arc<Self>) {
        loop {
            // Admitted before taking a key: while an API server is coming
            // back, keys wait in the queue, where changes merge into them.
            let admitted = self.ctx.outage.admit().await;
            let next = lock(&self.queue).pop();
            let Some(key) = next else {
                drop(admitted);
                self.wake.notified().await;
                continue;
            };
            let force = lock(&self.force).remove(&key);
            let started = std::time::Instant::now();
            // Boxed: a reconcile's state is 8 to 19 KB (the objects and
            // requests it holds across awaits), and inline it made every
            // worker of every kind that large while idle.
            let result = Box::pin(self.reconcile(&key, force)).await;
            drop(admitted);
            let category = result.as_ref().err().map(super::SyncError::category);
            metrics::global().reconciled(R::KIND, started.elapsed(), category);
            lock(&self.queue).done(&key);
            match result {
                Ok(again) => {
                    lock(&self.failures).remove(&key);
                    if let Some(after) = again {
                        self.requeue_after(key, after);
                    }
                }
                Err(e) => {
                    tracing::warn!(namespace = %key.namespace, name = %key.name, error = %e, "reconcile failed");
                    if let Some(category) = category {
                        self.ctx.outage.failed(category);
                    }
                    let delay = self.backoff(&key).max(e.retry_after());
                    self.requeue_after(key, delay);
                }
            }
            self.ready_if_idle();
            self.wake.notify_one();
        }
    }

    /// The next delay of `key`'s backoff: exponential with jitter per key,
    /// reset by the next success.
    fn backoff(&self, key: &VirtualKey) -> Duration {
        lock(&self.failures)
            .entry(key.clone())
            .or_insert_with(|| {
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(200))
                    .with_max_delay(BACKOFF_MAX)
                    .with_jitter()
                    .without_max_times()
                    .build()
            })
            .next()
            .unwrap_or(BACKOFF_MAX)
    }

    /// Retries every failed key at once, with a fresh backoff, each time
    /// the API servers answer again after an outage.
    async fn retry_after_outages(self: Arc<Self>) {
        let mut recovered = self.ctx.outage.recovered();
        while recovered.changed().await.is_ok() {
            let keys: Vec<VirtualKey> = lock(&self.failures).drain().map(|(k, _)| k).collect();
            if !keys.is_empty() {
                tracing::info!(
                    kind = R::KIND,
                    keys = keys.len(),
                    "retrying after an outage"
                );
                self.enqueue_many(keys);
            }
        }
    }

    pub(super) fn requeue_after(&self, key: VirtualKey, after: Duration) {
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
}

/// When `kind`'s first resync falls: between half a period and a whole one
/// after the start, at a point its name fixes, so the kinds' forced writes
/// of every object do not all land on the host API at the same moment.
fn resync_phase(kind: &str, every: Duration) -> Duration {
    let hex = crate::translate::sha256_hex(kind.as_bytes(), 2);
    let spread = u16::from_str_radix(&hex, 16).unwrap_or(0);
    every / 2 + (every / 2).mul_f64(f64::from(spread) / 65_536.0)
}

#[cfg(test)]
impl<R: Rule> Engine<R> {
    /// Starts the timer for keys asked for later and `workers` workers, on
    /// the caches as given and without the watches (for the engine's tests).
    pub(super) fn start_without_watches(self: &Arc<Self>, workers: usize) {
        tokio::spawn(Arc::clone(self).serve_later());
        for _ in 0..workers {
            tokio::spawn(Arc::clone(self).worker());
        }
    }
}

#[cfg(test)]
mod phase_tests {
    use super::*;

    #[test]
    fn resyncs_of_the_kinds_are_spread_over_the_period() {
        let every = Duration::from_secs(300);
        let kinds = [
            "Pod",
            "ConfigMap",
            "Secret",
            "Service",
            "Endpoints",
            "EndpointSlice",
            "Ingress",
        ];
        let phases: Vec<Duration> = kinds.iter().map(|k| resync_phase(k, every)).collect();
        assert!(
            phases.iter().all(|p| *p >= every / 2 && *p < every),
            "{phases:?}"
        );
        let distinct: HashSet<u128> = phases.iter().map(|p| p.as_millis() / 1000).collect();
        assert!(distinct.len() >= kinds.len() - 1, "{phases:?}");
        assert_eq!(resync_phase("Pod", every), phases[0], "fixed by the name");
    }
}
