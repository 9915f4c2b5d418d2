//! The syncer assembled from declarations. Each kind's rule file has a
//! [`KindSpec`] whose `register` function says, against an [`Assembly`],
//! which caches it reads ([`Assembly::cache`]), which engines it runs
//! ([`Assembly::engine`]), which changes of other kinds re-queue its keys
//! ([`Assembly::on_change`]), what it waits for ([`Assembly::ready_of`]) and
//! which loops it runs beside ([`Assembly::spawn`]).
//!
//! Caches are shared by type and side: the engine of a kind owns (fills) its
//! two; a rule of another kind reading one gets a reader of the same cache.
//! A virtual cache that some rule reads but no engine owns (virtual Services
//! when Services are not synced, read by pods for their service links) is
//! filled by a plain watch. Nothing runs until [`Assembly::finish`], so every
//! hook is in place before the first event.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use futures::future::BoxFuture;
use kube::api::Api;
use tracing::Instrument as _;

use super::cache::{self, Cache};
use super::feed::{Feed, Readiness};
use super::lean::Lean;
use super::{Context, Engine, EngineOptions, Object, Rule, Side};
use crate::policy::pss::Level;
use crate::translate::ingress::IngressPolicy;

/// What the rules need of the syncer's options.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Sync every ConfigMap and Secret, not only referenced ones.
    pub sync_all_configs: bool,
    /// Host name or IP synced pods use for the virtual API; `None`: the
    /// cluster IP of host Service `api_service` (its DNS name until it exists).
    pub api_host: Option<String>,
    /// Port synced pods use for the virtual API.
    pub api_port: u16,
    /// One service-account token Secret per pod or per service account.
    pub pod_tokens: crate::translate::pod::TokenMode,
    /// The vcluster's API Service in the host namespace.
    pub api_service: String,
    /// What ingresses may do.
    pub ingress_policy: IngressPolicy,
    /// The host ClusterIssuers tenants' Certificates may name
    /// (`--sync certificates`).
    pub certificate_cluster_issuers: Vec<String>,
    /// Refuse ingress hosts that ingresses outside this vcluster already
    /// serve (needs cluster-wide ingress reads; off without them).
    pub ingress_host_ownership: bool,
    /// The Service types synced to the host.
    pub service_types: crate::policy::service_types::ServiceTypes,
    /// Where tenant-written endpoints may point besides the vcluster's pods.
    pub endpoint_policy: crate::policy::endpoints::EndpointPolicy,
    /// Which host storage class a claim gets.
    pub storage_classes: crate::policy::storage_classes::StorageClassPolicy,
    /// The Pod Security Standards level pods must meet to reach the host.
    pub pod_security: Level,
    /// How often the periodic loops look again.
    pub resync: Duration,
    /// The front door's serving CA (PEM), added to the `ca.crt` of every
    /// `kube-root-ca.crt` ConfigMap's host copy, so that in-pod clients,
    /// which reach the virtual API through the front door, can verify it;
    /// `None` without a front door.
    pub front_door_ca: Option<String>,
    /// The cluster domain when the syncer serves DNS: synced pods then ask
    /// it (at the address [`crate::dns::DnsAddress`] publishes).
    pub cluster_domain: Option<String>,
    /// The host Service and port of the syncer's waking page: while the
    /// vcluster sleeps, tenant ingresses point there. `None`: they stay.
    pub waking_page: Option<(String, i32)>,
}

/// One kind the syncer can sync (`--sync` names it).
#[derive(Debug, Clone, Copy)]
pub struct KindSpec {
    /// The name in `--sync`.
    pub name: &'static str,
    /// Kinds it cannot work without.
    pub needs: &'static [&'static str],
    /// Why, for the error message.
    pub because: &'static str,
    /// `needs` are not needed with `--sync-all-configs`.
    pub needs_waived_by_all_configs: bool,
    /// Declares the kind's engines, caches, triggers and loops.
    pub register: fn(&mut Assembly),
}

/// A cache by type and side, until an owner takes its feed.
struct Slot<K> {
    side: Side,
    feed: Option<Feed<K>>,
    cache: Cache<K>,
    hooks: Arc<super::feed::Hooks<K>>,
    ready: Arc<Readiness>,
}

trait AnySlot: Send {
    fn as_any(&mut self) -> &mut dyn Any;
    /// A plain watch that fills the cache when no engine owns it.
    fn unowned(
        &mut self,
        ctx: &Arc<Context>,
        opts: EngineOptions,
    ) -> Option<BoxFuture<'static, ()>>;
}

impl<K: Object> AnySlot for Slot<K> {
    fn as_any(&mut self) -> &mut dyn Any {
        self
    }

    fn unowned(
        &mut self,
        ctx: &Arc<Context>,
        opts: EngineOptions,
    ) -> Option<BoxFuture<'static, ()>> {
        let feed = self.feed.take()?;
        if self.side == Side::Host {
            tracing::error!(kind = %K::kind(&()), "a host cache is read but no engine fills it");
            return None;
        }
        let api: Api<Lean<K>> = Api::all(ctx.virt.clone());
        let stream = cache::watch(
            api,
            opts.watcher_config(Side::Virtual),
            feed.writer,
            |_| {},
            || {},
        );
        let (hooks, ready, listed) = (feed.hooks, feed.ready, feed.cache);
        Some(Box::pin(async move {
            let mark = async {
                listed.wait_until_ready().await;
                ready.set();
            };
            let follow = stream.for_each(|ev| {
                if let Ok(obj) = ev {
                    hooks.call(&obj);
                }
                std::future::ready(())
            });
            futures::join!(mark, follow);
        }))
    }
}

/// A named task to spawn at [`Assembly::finish`].
type Task = (&'static str, BoxFuture<'static, ()>);

/// The kinds being put together (see the module docs).
pub struct Assembly {
    ctx: Arc<Context>,
    opts: EngineOptions,
    settings: Settings,
    selected: Vec<&'static str>,
    slots: HashMap<(Side, TypeId), Box<dyn AnySlot>>,
    tasks: Vec<Task>,
    ready: Vec<(&'static str, Arc<Readiness>)>,
    shared: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for Assembly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assembly")
            .field("selected", &self.selected)
            .finish_non_exhaustive()
    }
}

/// What [`Assembly::finish`] started: the readiness of every engine.
#[derive(Debug, Clone, Default)]
pub struct Running {
    ready: Vec<(&'static str, Arc<Readiness>)>,
}

impl Running {
    /// The kinds whose engines have not finished their initial sync.
    pub fn not_ready(&self) -> Vec<&'static str> {
        self.ready
            .iter()
            .filter(|(_, r)| !r.is_set())
            .map(|(k, _)| *k)
            .collect()
    }
}

impl Assembly {
    /// An assembly of the kinds named `selected`.
    pub fn new(
        ctx: Arc<Context>,
        opts: EngineOptions,
        settings: Settings,
        selected: Vec<&'static str>,
    ) -> Self {
        Self {
            ctx,
            opts,
            settings,
            selected,
            slots: HashMap::new(),
            tasks: Vec::new(),
            ready: Vec::new(),
            shared: HashMap::new(),
        }
    }

    /// The one `T` of this assembly: a value one part publishes and others
    /// wait for (the DNS Service's address, which pods need).
    pub fn shared<T: Default + Send + Sync + 'static>(&mut self) -> Arc<T> {
        let any = Arc::clone(
            self.shared
                .entry(TypeId::of::<T>())
                .or_insert_with(|| Arc::new(T::default())),
        );
        match any.downcast::<T>() {
            Ok(t) => t,
            // The key is T's TypeId, so the value is a T.
            Err(_) => unreachable!("shared value type matches its key"),
        }
    }

    /// A readiness that `/readyz` waits for under `name`, for a part that is
    /// not an engine.
    pub fn readiness(&mut self, name: &'static str) -> Arc<Readiness> {
        let r = Arc::new(Readiness::default());
        self.ready.push((name, Arc::clone(&r)));
        r
    }

    /// The shared context.
    pub fn ctx(&self) -> Arc<Context> {
        Arc::clone(&self.ctx)
    }

    /// The engines' settings.
    pub fn opts(&self) -> EngineOptions {
        self.opts
    }

    /// The rules' settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// True when `--sync` selects kind `name`.
    pub fn selected(&self, name: &str) -> bool {
        self.selected.contains(&name)
    }

    fn slot<K: Object>(&mut self, side: Side) -> &mut Slot<K> {
        let entry = self
            .slots
            .entry((side, TypeId::of::<K>()))
            .or_insert_with(|| {
                let feed = Feed::<K>::new();
                Box::new(Slot {
                    side,
                    cache: feed.cache.clone(),
                    hooks: Arc::clone(&feed.hooks),
                    ready: Arc::clone(&feed.ready),
                    feed: Some(feed),
                })
            });
        match entry.as_any().downcast_mut::<Slot<K>>() {
            Some(slot) => slot,
            // The key holds K's TypeId, so the slot is a Slot<K>.
            None => unreachable!("slot type matches its key"),
        }
    }

    /// A reader of the `side` cache of `K`.
    pub fn cache<K: Object>(&mut self, side: Side) -> Cache<K> {
        self.slot::<K>(side).cache.clone()
    }

    /// The readiness of whatever fills the `side` cache of `K`: its engine's
    /// initial sync, or the plain watch's first list.
    pub fn ready_of<K: Object>(&mut self, side: Side) -> Arc<Readiness> {
        Arc::clone(&self.slot::<K>(side).ready)
    }

    /// Calls `hook` for every `K` the `side` watch reports (added, changed
    /// or deleted): the shape of kube-runtime's `watches(api, mapper)`.
    pub fn on_change<K: Object>(&mut self, side: Side, hook: impl Fn(&K) + Send + Sync + 'static) {
        self.slot::<K>(side).hooks.add(hook);
    }

    /// Takes the feeds of rule `R`'s two caches (for a kind that builds its
    /// engine later) and reports the engine's readiness under `R::KIND`.
    pub fn feeds<R: Rule>(&mut self) -> (Feed<R::V>, Feed<R::H>) {
        let virt = self.take_feed::<R::V>(Side::Virtual, R::KIND);
        let host = self.take_feed::<R::H>(Side::Host, R::KIND);
        self.ready.push((R::KIND, Arc::clone(&virt.ready)));
        (virt, host)
    }

    fn take_feed<K: Object>(&mut self, side: Side, kind: &'static str) -> Feed<K> {
        self.slot::<K>(side).feed.take().unwrap_or_else(|| {
            tracing::error!(kind, ?side, "two engines claim the same cache");
            Feed::new()
        })
    }

    /// Runs an engine for `rule` (started at [`Assembly::finish`]).
    pub fn engine<R: Rule>(&mut self, rule: R) -> Arc<Engine<R>> {
        let (virt, host) = self.feeds::<R>();
        let engine = Engine::new(rule, self.ctx(), virt, host);
        self.spawn(R::KIND, Arc::clone(&engine).run(self.opts));
        engine
    }

    /// An engine for `rule` that starts once `first` is done (what its
    /// decisions need, such as an index of the host, is complete); other
    /// kinds may queue its keys before.
    pub fn engine_after<R: Rule>(
        &mut self,
        rule: R,
        first: impl Future<Output = ()> + Send + 'static,
    ) -> Arc<Engine<R>> {
        let (virt, host) = self.feeds::<R>();
        let engine = Engine::new(rule, self.ctx(), virt, host);
        let (run, opts) = (Arc::clone(&engine), self.opts);
        self.spawn(R::KIND, async move {
            first.await;
            run.run(opts).await
        });
        engine
    }

    /// Runs `task` beside the engines, in a span named `name`.
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.push((name, Box::pin(task)));
    }

    /// Starts everything declared, and a plain watch for each virtual cache
    /// read that no engine owns.
    pub fn finish(mut self) -> Running {
        let (ctx, opts) = (self.ctx(), self.opts);
        for slot in self.slots.values_mut() {
            if let Some(watch) = slot.unowned(&ctx, opts) {
                self.tasks.push(("cache", watch));
            }
        }
        let outage = Arc::clone(&ctx.outage).run(ctx.host.clone(), ctx.virt.clone());
        self.tasks.push(("outage", Box::pin(outage)));
        for (name, task) in self.tasks {
            tokio::spawn(task.instrument(tracing::info_span!("task", name)));
        }
        Running { ready: self.ready }
    }
}
