//! Fault runs: the syncer killed with SIGKILL during a burst of pods, the
//! host and the virtual API servers restarted mid-burst, watches expired by
//! etcd compaction, owned host objects edited and deleted by hand. After each
//! fault the host must hold exactly the desired state (nothing missing,
//! duplicated or orphaned) within a bound.
//!
//! A last run has the host's API server throttle the syncer (a priority
//! level of its own that rejects with 429 what does not fit): it must run
//! fewer reconciles at once and still land the burst.
//!
//! Each burst brings every synced kind: pods, the ConfigMaps and Secrets
//! they read, Services with and without a selector, tenant-written
//! Endpoints and Ingresses ([`Shape`]). Each fault reports how long after
//! it ended (the API, or the restarted syncer, answering /readyz again) the
//! host held exactly the desired state.
//!
//! `make test` runs the reduced mode (40-pod bursts, two kills); `make faults`
//! sets `VCLUSTER_FAULTS=full` (1,000-pod bursts, twenty kills;
//! `VCLUSTER_FAULTS_KILLS=N` for fewer).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Namespace, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::Store;
use kube::runtime::{reflector, watcher};
use kube::{Client, ResourceExt as _};
use libtest_mimic::{Arguments, Trial};
use serde_json::json;
use vcluster::sync::pods::{TOKEN_FOR_LABEL, TOKEN_SHARED_LABEL};
use vcluster::translate::markers::{NAMESPACE_LABEL, OWNER_LABEL, UID_ANNOTATION};
use vcluster::translate::pod::TOKEN_SECRET_ANNOTATION;
use vcluster::translate::{VclusterName, host_name};

const VC: &str = "faults";
const HOST_NS: &str = "team-faults";

/// Sizes of one mode.
#[derive(Clone, Copy, Debug)]
struct Mode {
    burst: usize,
    kills: usize,
    bound: Duration,
}

impl Mode {
    fn from_env() -> Self {
        // A run may ask for fewer kills (a partial full run) or more (a
        // reduced run looking for a rare failure).
        let kills = std::env::var("VCLUSTER_FAULTS_KILLS")
            .ok()
            .and_then(|k| k.parse().ok());
        if std::env::var("VCLUSTER_FAULTS").as_deref() == Ok("full") {
            Self {
                burst: 1000,
                kills: kills.unwrap_or(20),
                bound: Duration::from_secs(300),
            }
        } else {
            Self {
                burst: 40,
                kills: kills.unwrap_or(2),
                bound: Duration::from_secs(120),
            }
        }
    }
}

struct Env {
    stack: DevStack,
    syncer: Mutex<Option<SyncerProcess>>,
    mode: Mode,
}

/// The syncer's flags here: watches that end every 5 s without bookmarks, so
/// a compaction expires them soon (the stack runs without a watch cache);
/// the bursts' tenant-written endpoints point into [`EXTERNAL_NET`].
const SYNCER_ARGS: &[&str] = &[
    "--watch-timeout-seconds",
    "5",
    "--watch-bookmarks=false",
    "--endpoints-allowed-cidrs=192.0.2.0/24",
];

impl Env {
    fn start_syncer(&self) {
        let s = SyncerProcess::spawn_with(&self.stack, VC, HOST_NS, SYNCER_ARGS);
        *self.syncer.lock().unwrap() = Some(s.wait_ready(self.mode.bound));
    }

    fn kill_syncer(&self) {
        if let Some(mut s) = self.syncer.lock().unwrap().take() {
            s.kill();
        }
    }

    /// The syncer's /metrics text.
    fn metrics(&self) -> String {
        syncer_metrics(self.syncer.lock().unwrap().as_ref().unwrap().port)
    }
}

/// Sum of a metric's series whose labels contain `labels`.
fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{') && l.contains(labels))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

fn hname(ns: &str, name: &str) -> String {
    host_name(&VclusterName::new(VC).unwrap(), ns, name)
}

async fn clients(env: &Env) -> (Client, Client) {
    (
        client(&env.stack.vcluster_kubeconfig()).await,
        client(&env.stack.host_kubeconfig()).await,
    )
}

/// A virtual namespace with the ConfigMap the burst's pods read.
async fn prepare(v: &Client, ns: &str) {
    let nss: Api<Namespace> = Api::all(v.clone());
    let n: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
    nss.create(&PostParams::default(), &n).await.unwrap();
    let cm: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "settings"}, "data": {"mode": "fault"}}),
    )
    .unwrap();
    Api::<ConfigMap>::namespaced(v.clone(), ns)
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    // Pods need the namespace's default ServiceAccount.
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(v.clone(), ns);
    eventually(
        "default ServiceAccount",
        Duration::from_secs(60),
        || async {
            match sas.get_opt("default").await {
                Ok(Some(_)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}

/// How many objects of each kind a burst of `pods` pods brings: a Secret
/// for every ten pods (their `envFrom`), a Service for every ten selecting
/// those ten (not all: a hundred Services each selecting a thousand pods
/// would make the host's endpoint controllers rewrite a hundred 1,000-address
/// Endpoints and their slices on every pod change), and for every twenty a
/// selector-less Service with Endpoints the tenant writes and an Ingress.
#[derive(Clone, Copy, Debug)]
struct Shape {
    pods: usize,
    tenths: usize,
    twentieths: usize,
}

impl Shape {
    fn of(pods: usize) -> Self {
        Self {
            pods,
            tenths: pods.div_ceil(10),
            twentieths: pods.div_ceil(20),
        }
    }
}

/// Where tenant-written endpoints of the burst point (allowed to the syncer
/// by `--endpoints-allowed-cidrs`, see [`SYNCER_ARGS`]).
const EXTERNAL_NET: &str = "192.0.2";

/// One object of a burst.
#[derive(Clone, Copy, Debug)]
enum Item {
    Pod(usize),
    Secret(usize),
    Service(usize),
    /// A selector-less Service and its Endpoints.
    External(usize),
    Ingress(usize),
}

impl Shape {
    /// The burst's objects, kinds interleaved: each pod's Secret comes
    /// just before its first pod.
    fn items(self) -> Vec<Item> {
        let mut items = Vec::new();
        for i in 0..self.pods {
            if i % 10 == 0 {
                items.push(Item::Secret(i / 10));
                items.push(Item::Service(i / 10));
            }
            if i % 20 == 0 {
                items.push(Item::External(i / 20));
                items.push(Item::Ingress(i / 20));
            }
            items.push(Item::Pod(i));
        }
        items
    }
}

/// Creates `obj`, retried until it exists (the virtual API server may be
/// restarting); a 409 means an earlier attempt got through.
async fn create_retrying<K>(api: Api<K>, obj: serde_json::Value)
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(obj).unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        match api.create(&PostParams::default(), &obj).await {
            Ok(_) => return,
            Err(kube::Error::Api(s)) if s.code == 409 => return,
            Err(e) if Instant::now() > deadline => {
                panic!("create {:?}: {e}", obj.meta().name)
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Creates a burst of every synced kind in `ns` (see [`Shape`]), 16 at a time.
async fn burst(v: Client, ns: String, n: usize) {
    use futures::StreamExt as _;
    futures::stream::iter(Shape::of(n).items())
        .for_each_concurrent(16, |item| {
            let (v, ns) = (v.clone(), ns.clone());
            async move {
                match item {
                    Item::Pod(i) => create_retrying(Api::<Pod>::namespaced(v.clone(), &ns), json!({
                        "metadata": {"name": format!("p-{i}"),
                            "labels": {"app": "burst", "group": format!("g-{}", i / 10)}},
                        // No service links: with them each host pod carries seven
                        // variables per Service created before it (up to 150 here;
                        // a host pod with 65 weighed 16.6 KB), so the thousand host
                        // pods weighed tens of MB and each list of them outlasted the
                        // host API's one-minute request timeout on 2 cores.
                        "spec": {"enableServiceLinks": false,
                            "containers": [{"name": "c", "image": "registry.invalid/burst:1",
                            "envFrom": [{"configMapRef": {"name": "settings"}},
                                        {"secretRef": {"name": format!("s-{}", i / 10)}}]}]},
                    })).await,
                    Item::Secret(j) => create_retrying(Api::<Secret>::namespaced(v.clone(), &ns), json!({
                        "metadata": {"name": format!("s-{j}")},
                        "stringData": {"token": format!("t-{j}")},
                    })).await,
                    Item::Service(j) => create_retrying(Api::<Service>::namespaced(v.clone(), &ns), json!({
                        "metadata": {"name": format!("svc-{j}")},
                        "spec": {"selector": {"group": format!("g-{j}")}, "ports": [{"port": 80}]},
                    })).await,
                    Item::External(j) => {
                        create_retrying(Api::<Service>::namespaced(v.clone(), &ns), json!({
                            "metadata": {"name": format!("ext-{j}")},
                            "spec": {"ports": [{"port": 80}]},
                        })).await;
                        create_retrying(Api::<Endpoints>::namespaced(v.clone(), &ns), json!({
                            "metadata": {"name": format!("ext-{j}")},
                            "subsets": [{"addresses": [{"ip": format!("{EXTERNAL_NET}.{}", j % 250 + 1)}],
                                         "ports": [{"port": 80}]}],
                        })).await;
                    }
                    Item::Ingress(j) => create_retrying(Api::<Ingress>::namespaced(v.clone(), &ns), json!({
                        "metadata": {"name": format!("ing-{j}")},
                        "spec": {"rules": [{"host": format!("ing-{j}.{ns}.faults.test"),
                            "http": {"paths": [{"path": "/", "pathType": "Prefix",
                                "backend": {"service": {"name": format!("svc-{j}"), "port": {"number": 80}}}}]}}]},
                    })).await,
                }
            }
        })
        .await;
}

/// Compares the host's names of one kind with the desired ones.
fn compare(diff: &mut Vec<String>, kind: &str, have: BTreeSet<String>, want: BTreeSet<String>) {
    for name in have.difference(&want) {
        diff.push(format!("orphan host {kind} {name}"));
    }
    for name in want.difference(&have) {
        diff.push(format!("missing host {kind} {name}"));
    }
}

/// The host names of `ns`'s objects named `prefix-0` to `prefix-{n-1}`.
fn hnames(ns: &str, prefix: &str, n: usize) -> BTreeSet<String> {
    (0..n)
        .map(|j| hname(ns, &format!("{prefix}-{j}")))
        .collect()
}

/// The objects that decide whether the host holds a burst's desired state:
/// the virtual namespace's pods and Services, the host copies the syncer
/// labels as of that namespace, and every host token Secret.
struct Look {
    vpods: Vec<Arc<Pod>>,
    vsvcs: Vec<Arc<Service>>,
    hpods: Vec<Arc<Pod>>,
    hcms: Vec<Arc<ConfigMap>>,
    tokens: Vec<Arc<Secret>>,
    hsecrets: Vec<Arc<Secret>>,
    hsvcs: Vec<Arc<Service>>,
    heps: Vec<Arc<Endpoints>>,
    hings: Vec<Arc<Ingress>>,
}

/// The label selectors of a [`Look`] at virtual namespace `ns`: the host
/// copies of `ns`, every token Secret, the copies of `ns` that are not one.
fn selectors(ns: &str) -> (String, String, String) {
    let owned = format!("{OWNER_LABEL}={VC},{NAMESPACE_LABEL}={ns}");
    let not_token = format!("{owned},!{TOKEN_FOR_LABEL}");
    (owned, TOKEN_FOR_LABEL.to_owned(), not_token)
}

impl Look {
    /// One look by listing each kind (consistent reads, so a look confirms
    /// what the watches of [`Watched`] showed).
    async fn list(v: &Client, h: &Client, ns: &str) -> Result<Self, kube::Error> {
        async fn list<K>(
            c: &Client,
            ns: &str,
            sel: Option<&str>,
        ) -> Result<Vec<Arc<K>>, kube::Error>
        where
            K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
                + Clone
                + serde::de::DeserializeOwned
                + std::fmt::Debug,
            K::DynamicType: Default,
        {
            let lp = sel.map_or_else(ListParams::default, |s| ListParams::default().labels(s));
            let items = Api::<K>::namespaced(c.clone(), ns).list(&lp).await?.items;
            Ok(items.into_iter().map(Arc::new).collect())
        }
        let (owned, tokens, not_token) = selectors(ns);
        Ok(Self {
            vpods: list(v, ns, None).await?,
            vsvcs: list(v, ns, None).await?,
            hpods: list(h, HOST_NS, Some(&owned)).await?,
            hcms: list(h, HOST_NS, Some(&owned)).await?,
            tokens: list(h, HOST_NS, Some(&tokens)).await?,
            hsecrets: list(h, HOST_NS, Some(&not_token)).await?,
            hsvcs: list(h, HOST_NS, Some(&owned)).await?,
            heps: list(h, HOST_NS, Some(&owned)).await?,
            hings: list(h, HOST_NS, Some(&owned)).await?,
        })
    }
}

/// The same objects as a [`Look`], kept current by watches: looking often
/// costs the API servers nothing, where listing a thousand pods in each
/// plane every half second was a share of the 2-core machine the syncer
/// then did not get.
struct Watched {
    vpods: Store<Pod>,
    vsvcs: Store<Service>,
    hpods: Store<Pod>,
    hcms: Store<ConfigMap>,
    tokens: Store<Secret>,
    hsecrets: Store<Secret>,
    hsvcs: Store<Service>,
    heps: Store<Endpoints>,
    hings: Store<Ingress>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Watched {
    async fn start(v: &Client, h: &Client, ns: &str) -> Self {
        fn watch<K>(
            tasks: &mut Vec<tokio::task::JoinHandle<()>>,
            c: &Client,
            ns: &str,
            sel: Option<&str>,
        ) -> Store<K>
        where
            K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
                + Clone
                + serde::de::DeserializeOwned
                + std::fmt::Debug
                + Send
                + Sync
                + 'static,
            K::DynamicType: Default + Eq + std::hash::Hash + Clone,
        {
            use futures::StreamExt as _;
            use kube::runtime::WatchStreamExt as _;
            let (store, writer) = reflector::store();
            let config = sel.map_or_else(watcher::Config::default, |s| {
                watcher::Config::default().labels(s)
            });
            let stream = watcher(Api::<K>::namespaced(c.clone(), ns), config).default_backoff();
            tasks.push(tokio::spawn(
                reflector(writer, stream).for_each(|_| async {}),
            ));
            store
        }
        let (owned, tokens, not_token) = selectors(ns);
        let mut tasks = Vec::new();
        let w = Self {
            vpods: watch(&mut tasks, v, ns, None),
            vsvcs: watch(&mut tasks, v, ns, None),
            hpods: watch(&mut tasks, h, HOST_NS, Some(&owned)),
            hcms: watch(&mut tasks, h, HOST_NS, Some(&owned)),
            tokens: watch(&mut tasks, h, HOST_NS, Some(&tokens)),
            hsecrets: watch(&mut tasks, h, HOST_NS, Some(&not_token)),
            hsvcs: watch(&mut tasks, h, HOST_NS, Some(&owned)),
            heps: watch(&mut tasks, h, HOST_NS, Some(&owned)),
            hings: watch(&mut tasks, h, HOST_NS, Some(&owned)),
            tasks,
        };
        for ready in [
            w.vpods.wait_until_ready().await,
            w.vsvcs.wait_until_ready().await,
            w.hpods.wait_until_ready().await,
            w.hcms.wait_until_ready().await,
            w.tokens.wait_until_ready().await,
            w.hsecrets.wait_until_ready().await,
            w.hsvcs.wait_until_ready().await,
            w.heps.wait_until_ready().await,
            w.hings.wait_until_ready().await,
        ] {
            ready.expect("a watch of the look ended before its first list");
        }
        w
    }

    fn look(&self) -> Look {
        Look {
            vpods: self.vpods.state(),
            vsvcs: self.vsvcs.state(),
            hpods: self.hpods.state(),
            hcms: self.hcms.state(),
            tokens: self.tokens.state(),
            hsecrets: self.hsecrets.state(),
            hsvcs: self.hsvcs.state(),
            heps: self.heps.state(),
            hings: self.hings.state(),
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// What differs between the desired host state of virtual namespace `ns`
/// (after a burst of `n`) and `look`; empty when they match exactly.
fn differences(look: &Look, ns: &str, n: usize) -> Vec<String> {
    let Look {
        vpods,
        vsvcs,
        hpods,
        hcms,
        tokens,
        hsecrets,
        hsvcs,
        heps,
        hings,
    } = look;
    let mut diff = Vec::new();
    let want: BTreeMap<String, String> = vpods
        .iter()
        .map(|p| (hname(ns, &p.name_any()), p.uid().unwrap_or_default()))
        .collect();
    let mut have: BTreeMap<String, usize> = BTreeMap::new();
    for p in hpods {
        *have.entry(p.name_any()).or_default() += 1;
        match want.get(&p.name_any()) {
            None => diff.push(format!("orphan host pod {}", p.name_any())),
            Some(uid) if p.annotations().get(UID_ANNOTATION) != Some(uid) => {
                diff.push(format!("host pod {} of another virtual uid", p.name_any()))
            }
            Some(_) if p.metadata.deletion_timestamp.is_some() => {
                diff.push(format!("host pod {} terminating", p.name_any()))
            }
            Some(_) => {}
        }
    }
    for (name, n) in &have {
        if *n > 1 {
            diff.push(format!("host pod {name} {n} times"));
        }
    }
    for name in want.keys() {
        if !have.contains_key(name) {
            diff.push(format!("missing host pod {name}"));
        }
    }
    let not_running = vpods
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Running"))
        .count();
    if not_running > 0 {
        diff.push(format!("{not_running} virtual pods not Running"));
    }
    fn names_of<K: kube::Resource>(items: &[Arc<K>]) -> BTreeSet<String> {
        items.iter().map(|o| o.name_any()).collect()
    }
    // What the pods read: their ConfigMap and Secrets, and the CA bundle
    // their service-account token volume projects.
    let shape = Shape::of(n);
    let (want_cms, want_secrets) = if want.is_empty() {
        (BTreeSet::new(), BTreeSet::new())
    } else {
        (
            BTreeSet::from([hname(ns, "settings"), hname(ns, "kube-root-ca.crt")]),
            hnames(ns, "s", shape.tenths),
        )
    };
    compare(&mut diff, "ConfigMap", names_of(hcms), want_cms);
    compare(&mut diff, "Secret", names_of(hsecrets), want_secrets);
    // Services, tenant-written Endpoints (those the host's endpoints
    // controller derives from our Services carry our labels but name no
    // source) and Ingresses mirror the virtual namespace exactly.
    let (want_svcs, want_eps, want_ings) = if vsvcs.is_empty() {
        Default::default()
    } else {
        let mut svcs = hnames(ns, "svc", shape.tenths);
        svcs.extend(hnames(ns, "ext", shape.twentieths));
        (
            svcs,
            hnames(ns, "ext", shape.twentieths),
            hnames(ns, "ing", shape.twentieths),
        )
    };
    compare(&mut diff, "Service", names_of(hsvcs), want_svcs);
    let tenant_eps: Vec<_> = heps
        .iter()
        .filter(|e| e.annotations().contains_key(UID_ANNOTATION))
        .cloned()
        .collect();
    compare(&mut diff, "Endpoints", names_of(&tenant_eps), want_eps);
    compare(&mut diff, "Ingress", names_of(hings), want_ings);
    let of_this_ns = format!("-x-{ns}-x-{VC}");
    for t in tokens {
        // A shared one (per service account) goes at the syncer's second look
        // with no pod reading it, so it is not counted an orphan here.
        let pod = t.labels().get(TOKEN_FOR_LABEL).cloned().unwrap_or_default();
        let shared = t.labels().contains_key(TOKEN_SHARED_LABEL);
        if !shared && pod.ends_with(&of_this_ns) && !want.contains_key(&pod) {
            diff.push(format!("orphan token Secret {}", t.name_any()));
        }
    }
    let token_names = names_of(tokens);
    for p in hpods {
        // The Secret the host pod reads: named on it (shared or its own).
        let reads = p
            .annotations()
            .get(TOKEN_SECRET_ANNOTATION)
            .cloned()
            .unwrap_or_else(|| format!("{}.sa-token", p.name_any()));
        if !token_names.contains(&reads) {
            diff.push(format!("no token Secret {reads} for {}", p.name_any()));
        }
    }
    diff
}

/// When the host first held the desired state of a burst.
#[derive(Clone, Copy)]
struct Exact {
    /// Every host copy the syncer writes exact (the host pods not yet all
    /// scheduled and Running, perhaps).
    copies: Instant,
    /// Exact, and every virtual pod Running: the host's scheduler and
    /// kubelets (KWOK) done too, and their status copied back.
    running: Instant,
}

/// A difference that is the host's scheduling still under way, not a host
/// copy missing or wrong.
fn only_scheduling(diff: &[String]) -> bool {
    diff.iter().all(|d| d.ends_with("virtual pods not Running"))
}

/// Waits until the host holds exactly the desired state of `ns` after a
/// burst of `n`; returns when it first did (see [`Exact`]).
async fn converged(env: &Env, ns: &str, n: usize) -> Exact {
    let (v, h) = clients(env).await;
    let watched = Watched::start(&v, &h, ns).await;
    let copies = Mutex::new(None);
    // `VCLUSTER_FAULTS_TRACE=1`: what still differs, by kind, every second.
    let trace = std::env::var_os("VCLUSTER_FAULTS_TRACE").is_some();
    let traced: Mutex<Option<Instant>> = Mutex::new(None);
    let running = eventually(
        &format!("host to hold exactly the desired state of {ns}"),
        env.mode.bound,
        || async {
            let seen = Instant::now();
            let diff = differences(&watched.look(), ns, n);
            if trace && traced.lock().unwrap().is_none_or(|at| seen - at >= Duration::from_secs(1)) {
                *traced.lock().unwrap() = Some(seen);
                let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
                for d in &diff {
                    let k: Vec<&str> = d.split(' ').take(3).collect();
                    *kinds.entry(k.join(" ")).or_default() += 1;
                }
                log(&format!("{ns}: differences {kinds:?}"));
            }
            if only_scheduling(&diff) {
                copies.lock().unwrap().get_or_insert(seen);
            }
            if !diff.is_empty() {
                return Err(format!(
                    "{} differences, first: {:?}",
                    diff.len(),
                    &diff[..diff.len().min(3)]
                ));
            }
            // What the watches showed, confirmed by reading each kind.
            match Look::list(&v, &h, ns).await {
                Ok(look) => {
                    let diff = differences(&look, ns, n);
                    if diff.is_empty() {
                        Ok(seen)
                    } else {
                        Err(format!(
                            "the watches showed the desired state, a list {} differences, first: {:?}",
                            diff.len(),
                            &diff[..diff.len().min(3)]
                        ))
                    }
                }
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
    let copies = copies.lock().unwrap().unwrap_or(running);
    Exact { copies, running }
}

/// Seconds from `from` to `to` (negative when `to` came first), for the log.
fn secs(from: Instant, to: Instant) -> String {
    if to >= from {
        format!("{:.1}s", (to - from).as_secs_f64())
    } else {
        format!("-{:.1}s", (from - to).as_secs_f64())
    }
}

/// The machine's 1-minute load average: it is shared, and its load says how
/// much a figure is worth.
fn load_average() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.split_whitespace().next().unwrap_or("?").to_owned()
}

/// The figures a fault run reports: how long after the fault ended
/// (`ready`: the API or the syncer answering /readyz again) and after the
/// burst's last create the host copies were exact, and every pod Running.
fn report(what: &str, ready: Instant, burst_done: Instant, exact: Exact) {
    let load = load_average();
    log(&format!(
        "{what}: host copies exact {} after /readyz OK ({} after the burst's last create); \
         every pod Running {} after /readyz OK ({} after the last create); the burst ended \
         {} after /readyz OK; load average {load}",
        secs(ready, exact.copies),
        secs(burst_done, exact.copies),
        secs(ready, exact.running),
        secs(burst_done, exact.running),
        secs(ready, burst_done)
    ));
}

/// Waits until the host namespace holds no `K` matching `sel` (of virtual namespace `ns`).
async fn gone<K>(h: &Client, ns: &str, sel: &str, bound: Duration)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let what = format!("host {}s of namespace {ns} to go", K::kind(&()));
    none_left_within(&what, &Api::<K>::namespaced(h.clone(), HOST_NS), sel, bound).await;
}

/// Deletes virtual namespace `ns` and waits until the host holds nothing of it.
async fn clean(env: &Env, ns: &str) {
    let (v, h) = clients(env).await;
    Api::<Namespace>::all(v)
        .delete(ns, &DeleteParams::default())
        .await
        .unwrap();
    let sel = format!("{OWNER_LABEL}={VC},{NAMESPACE_LABEL}={ns}");
    let bound = env.mode.bound;
    gone::<Pod>(&h, ns, &sel, bound).await;
    gone::<ConfigMap>(&h, ns, &sel, bound).await;
    gone::<Secret>(&h, ns, &sel, bound).await;
    gone::<Service>(&h, ns, &sel, bound).await;
    gone::<Endpoints>(&h, ns, &sel, bound).await;
    gone::<Ingress>(&h, ns, &sel, bound).await;
}

/// Tears a fault's namespace down when the fault fails (panics) before its
/// own [`clean`]: the virtual namespace and every host copy of it are
/// deleted directly, not through the syncer (which may be what failed), and
/// a syncer is started again if the fault left none running. So the faults
/// after a failed one start from a clean host instead of failing in turn.
struct Teardown<'a> {
    env: &'a Env,
    ns: String,
}

impl<'a> Teardown<'a> {
    fn new(env: &'a Env, ns: &str) -> Self {
        Self {
            env,
            ns: ns.to_owned(),
        }
    }
}

impl Drop for Teardown<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        log(&format!("{}: failed; tearing its burst down", self.ns));
        // A thread of its own: this may run inside the failed fault's runtime.
        std::thread::scope(|s| {
            let done = s
                .spawn(|| {
                    if self.env.syncer.lock().unwrap().is_none() {
                        self.env.start_syncer();
                    }
                    runtime().block_on(tear_down(self.env, &self.ns));
                })
                .join();
            if done.is_err() {
                log(&format!("{}: teardown failed", self.ns));
            }
        });
    }
}

/// How many objects of `api` match `sel`, after deleting them (pods at once).
async fn delete_all<K>(api: Api<K>, sel: &str) -> Result<usize, String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let lp = ListParams::default().labels(sel);
    let left = api.list(&lp).await.map_err(|e| e.to_string())?.items.len();
    if left > 0 {
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::background()
        };
        api.delete_collection(&dp, &lp)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(left)
}

/// Deletes virtual namespace `ns` and its host copies directly, until
/// neither is left (see [`Teardown`]).
async fn tear_down(env: &Env, ns: &str) {
    let (v, h) = clients(env).await;
    let sel = format!("{OWNER_LABEL}={VC},{NAMESPACE_LABEL}={ns}");
    eventually(
        &format!("the leftovers of {ns} to go"),
        env.mode.bound,
        || async {
            let nss = Api::<Namespace>::all(v.clone());
            let _ = nss.delete(ns, &DeleteParams::default()).await;
            // No kubelet ends the virtual pods: the syncer does, if it can.
            let mut left = delete_all(Api::<Pod>::namespaced(v.clone(), ns), "").await?;
            left += delete_all(Api::<Pod>::namespaced(h.clone(), HOST_NS), &sel).await?;
            left += delete_all(Api::<ConfigMap>::namespaced(h.clone(), HOST_NS), &sel).await?;
            left += delete_all(Api::<Secret>::namespaced(h.clone(), HOST_NS), &sel).await?;
            left += delete_all(Api::<Service>::namespaced(h.clone(), HOST_NS), &sel).await?;
            left += delete_all(Api::<Endpoints>::namespaced(h.clone(), HOST_NS), &sel).await?;
            left += delete_all(Api::<Ingress>::namespaced(h.clone(), HOST_NS), &sel).await?;
            let ns_left = nss.get_opt(ns).await.map_err(|e| e.to_string())?.is_some();
            if left == 0 && !ns_left {
                Ok(())
            } else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Err(format!("{left} objects left, namespace left: {ns_left}"))
            }
        },
    )
    .await;
    log(&format!("{ns}: torn down"));
}

/// A pseudo-random duration in `0..max` (no seedable source needed: the
/// moment is what should vary between runs).
fn random_delay(max: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let x = u64::from(nanos).wrapping_mul(6_364_136_223_846_793_005) >> 33;
    max.mul_f64((x % 1000) as f64 / 1000.0)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Prints `msg` with the UTC time of day, to read beside the syncer's log.
fn log(msg: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let (s, ms) = (now.as_secs() % 86_400, now.subsec_millis());
    println!(
        "faults: {:02}:{:02}:{:02}.{ms:03} {msg}",
        s / 3600,
        s / 60 % 60,
        s % 60
    );
}

// ---- the faults -------------------------------------------------------------

fn syncer_killed_during_burst(env: &Env) {
    runtime().block_on(async {
        for round in 0..env.mode.kills {
            let ns = format!("kill-{round}");
            let _teardown = Teardown::new(env, &ns);
            let (v, _) = clients(env).await;
            prepare(&v, &ns).await;
            let creating = tokio::spawn(burst(v.clone(), ns.clone(), env.mode.burst));
            let delay = random_delay(Duration::from_secs(4));
            tokio::time::sleep(delay).await;
            env.kill_syncer();
            log(&format!(
                "round {round}: syncer killed (SIGKILL) {delay:?} into the burst"
            ));
            // Some of the burst lands while no syncer runs.
            tokio::time::sleep(random_delay(Duration::from_secs(2))).await;
            tokio::task::block_in_place(|| env.start_syncer());
            let ready = Instant::now();
            creating.await.unwrap();
            let burst_done = Instant::now();
            let exact = converged(env, &ns, env.mode.burst).await;
            report(&format!("kill round {round}"), ready, burst_done, exact);
            clean(env, &ns).await;
        }
    });
}

/// The same burst with no fault: how long the host takes to hold exactly the
/// desired state after the burst's last create when nothing goes wrong, the
/// baseline each fault's figure is read against.
fn a_burst_without_a_fault_converges(env: &Env) {
    let ns = "no-fault";
    let _teardown = Teardown::new(env, ns);
    runtime().block_on(async {
        let took = burst_until_exact(env, ns).await;
        log(&format!("{ns}: {took} (load average {})", load_average()));
        clean(env, ns).await;
    });
}

/// A burst into a fresh virtual namespace `ns`, awaited until the host holds
/// exactly its state; says how long the burst and the wait after it took.
async fn burst_until_exact(env: &Env, ns: &str) -> String {
    let (v, _) = clients(env).await;
    prepare(&v, ns).await;
    let started = Instant::now();
    burst(v.clone(), ns.to_owned(), env.mode.burst).await;
    let burst_done = Instant::now();
    let exact = converged(env, ns, env.mode.burst).await;
    format!(
        "the burst took {}; host copies exact {}, every pod Running {} after its last create",
        secs(started, burst_done),
        secs(burst_done, exact.copies),
        secs(burst_done, exact.running)
    )
}

fn restart_mid_burst(env: &Env, component: &str, ns: &str) {
    let _teardown = Teardown::new(env, ns);
    runtime().block_on(async {
        let (v, _) = clients(env).await;
        prepare(&v, ns).await;
        let creating = tokio::spawn(burst(v.clone(), ns.to_owned(), env.mode.burst));
        tokio::time::sleep(random_delay(Duration::from_secs(2))).await;
        let state_dir = env.stack.state_dir().to_owned();
        let component = component.to_owned();
        let out = tokio::task::spawn_blocking(move || {
            vcluster(&[
                "dev",
                "restart",
                &component,
                "--state-dir",
                &state_dir,
                "--timeout",
                "180",
            ])
        })
        .await
        .unwrap();
        // `dev restart` returns once the API answers /readyz again.
        let ready = Instant::now();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "dev restart failed: {stdout}{stderr}");
        log(stdout.trim());
        creating.await.unwrap();
        let burst_done = Instant::now();
        let exact = converged(env, ns, env.mode.burst).await;
        report(ns, ready, burst_done, exact);
        clean(env, ns).await;
    });
}

fn host_api_server_restarted_mid_burst(env: &Env) {
    restart_mid_burst(env, "host-kube-apiserver", "host-restart");
}

fn virtual_api_server_restarted_mid_burst(env: &Env) {
    restart_mid_burst(env, "vcluster-kube-apiserver", "virtual-restart");
}

fn watches_expired_by_compaction_mid_burst(env: &Env) {
    runtime().block_on(async {
        let before = metric(
            &env.metrics(),
            "vcluster_syncer_watch_restarts_total",
            "kind=\"Pod\"",
        );
        let (v, h) = clients(env).await;
        let ns = "compaction";
        let _teardown = Teardown::new(env, ns);
        prepare(&v, ns).await;
        let creating = tokio::spawn(burst(v.clone(), ns.to_owned(), env.mode.burst));
        // Writes nobody watches, then compaction: every revision the syncer
        // saw is gone, so its next watch gets 410 Gone and relists.
        let mut i = 0;
        eventually(
            "a Pod watch to restart after compaction",
            env.mode.bound,
            || {
                i += 1;
                let (v, h) = (v.clone(), h.clone());
                let metrics = env.metrics();
                let i = i;
                async move {
                    for (c, tag) in [(&v, "v"), (&h, "h")] {
                        let cm: ConfigMap = serde_json::from_value(
                            json!({"metadata": {"name": format!("unwatched-{tag}-{i}")}}),
                        )
                        .unwrap();
                        let _ = Api::<ConfigMap>::namespaced(c.clone(), "default")
                            .create(&PostParams::default(), &cm)
                            .await;
                    }
                    for plane in [&env.stack.state.host, &env.stack.state.vcluster] {
                        etcd_compact(plane.ports.unwrap().etcd_client);
                    }
                    let now = metric(
                        &metrics,
                        "vcluster_syncer_watch_restarts_total",
                        "kind=\"Pod\"",
                    );
                    if now > before {
                        Ok(now)
                    } else {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        Err(format!("{now} restarts"))
                    }
                }
            },
        )
        .await;
        // The API never stopped answering /readyz: the fault ends with the
        // last compaction.
        let ready = Instant::now();
        creating.await.unwrap();
        let burst_done = Instant::now();
        let exact = converged(env, ns, env.mode.burst).await;
        report(ns, ready, burst_done, exact);
        clean(env, ns).await;
    });
}

fn drift_on_owned_host_objects_is_reverted(env: &Env) {
    runtime().block_on(async {
        let (v, h) = clients(env).await;
        let ns = "drift";
        let _teardown = Teardown::new(env, ns);
        prepare(&v, ns).await;
        burst(v.clone(), ns.to_owned(), 3).await;
        converged(env, ns, 3).await;
        let hcms: Api<ConfigMap> = Api::namespaced(h.clone(), HOST_NS);
        let hpods: Api<Pod> = Api::namespaced(h.clone(), HOST_NS);
        let cm = hname(ns, "settings");
        let pod = hname(ns, "p-0");
        // By hand, as another field manager would, on fields the syncer
        // owns. (Fields another manager adds are its own under server-side
        // apply and stay: the syncer does not remove them.)
        let by_hand = PatchParams::default();
        let drift = |kind: &str| {
            metric(
                &env.metrics(),
                "vcluster_syncer_drift_reverted_total",
                &format!("kind=\"{kind}\""),
            )
        };
        let before = (drift("ConfigMap"), drift("Pod"));
        hcms.patch(
            &cm,
            &by_hand,
            &Patch::Merge(json!({"data": {"mode": "tampered"}})),
        )
        .await
        .unwrap();
        hpods
            .patch(
                &pod,
                &by_hand,
                &Patch::Merge(json!({"metadata": {"labels": {"app": "tampered"}}})),
            )
            .await
            .unwrap();
        eventually("the drift to be reverted", env.mode.bound, || async {
            let c = hcms.get(&cm).await.map_err(|e| e.to_string())?;
            let p = hpods.get(&pod).await.map_err(|e| e.to_string())?;
            let data = c.data.unwrap_or_default();
            let label = p.labels().get("app").cloned().unwrap_or_default();
            if data.get("mode").map(String::as_str) == Some("fault") && label == "burst" {
                Ok(())
            } else {
                Err(format!("data {data:?}, label app={label}"))
            }
        })
        .await;
        // Told as drift: the resync finds copies as applied by their content
        // and writes only these.
        let after = (drift("ConfigMap"), drift("Pod"));
        assert!(
            after.0 > before.0 && after.1 > before.1,
            "drift counted {before:?} -> {after:?}"
        );
        converged(env, ns, 3).await;
        clean(env, ns).await;
    });
}

fn deleted_owned_host_objects_follow_the_rules(env: &Env) {
    runtime().block_on(async {
        let (v, h) = clients(env).await;
        let ns = "deleted";
        let _teardown = Teardown::new(env, ns);
        prepare(&v, ns).await;
        burst(v.clone(), ns.to_owned(), 3).await;
        converged(env, ns, 3).await;
        let hcms: Api<ConfigMap> = Api::namespaced(h.clone(), HOST_NS);
        let hpods: Api<Pod> = Api::namespaced(h.clone(), HOST_NS);
        let vpods: Api<Pod> = Api::namespaced(v.clone(), ns);
        // A ConfigMap a pod needs is recreated.
        let cm = hname(ns, "settings");
        let old_uid = hcms.get(&cm).await.unwrap().uid();
        hcms.delete(&cm, &DeleteParams::default()).await.unwrap();
        eventually(
            "the host ConfigMap to be recreated",
            env.mode.bound,
            || async {
                match hcms.get_opt(&cm).await {
                    Ok(Some(c)) if c.uid() != old_uid => Ok(()),
                    other => Err(format!("{:?}", other.map(|c| c.map(|c| c.uid())))),
                }
            },
        )
        .await;
        // A host pod deleted by hand ends its bare virtual pod (as a kubelet
        // would); nothing is left behind on either side.
        hpods
            .delete(&hname(ns, "p-1"), &DeleteParams::default())
            .await
            .unwrap();
        eventually("the virtual pod to end", env.mode.bound, || async {
            match vpods.get_opt("p-1").await {
                Ok(None) => Ok(()),
                other => Err(format!("{:?}", other.map(|p| p.map(|p| p.status)))),
            }
        })
        .await;
        converged(env, ns, 3).await;
        clean(env, ns).await;
    });
}

/// The host's API server throttles the syncer (a priority level of its own
/// that rejects what does not fit its few seats, as a host admin would set
/// one up for a noisy client): the syncer lowers how many reconciles it
/// runs at once instead of hammering at its full `--concurrency`, and the
/// burst still lands exactly.
fn a_host_that_throttles_the_syncer_paces_it(env: &Env) {
    let ns = "throttled";
    let _teardown = Teardown::new(env, ns);
    let host = env.stack.host_kubeconfig();
    let sa = "vcluster-syncer-throttled";
    let apf = format!(
        r#"
apiVersion: flowcontrol.apiserver.k8s.io/v1
kind: PriorityLevelConfiguration
metadata: {{name: {sa}}}
spec:
  type: Limited
  limited:
    nominalConcurrencyShares: 1
    lendablePercent: 0
    borrowingLimitPercent: 0
    limitResponse: {{type: Reject}}
---
apiVersion: flowcontrol.apiserver.k8s.io/v1
kind: FlowSchema
metadata: {{name: {sa}}}
spec:
  priorityLevelConfiguration: {{name: {sa}}}
  matchingPrecedence: 500
  distinguisherMethod: {{type: ByUser}}
  rules:
  - subjects:
    - kind: ServiceAccount
      serviceAccount: {{name: {sa}, namespace: {HOST_NS}}}
    resourceRules:
    - verbs: ["*"]
      apiGroups: ["*"]
      resources: ["*"]
      namespaces: ["*"]
      clusterScope: true
    nonResourceRules:
    - verbs: ["*"]
      nonResourceURLs: ["*"]
"#
    );
    kubectl_ok(
        &host,
        &["-n", HOST_NS, "create", "serviceaccount", sa],
        None,
    );
    kubectl_ok(
        &host,
        &[
            "create",
            "clusterrolebinding",
            sa,
            "--clusterrole=cluster-admin",
            &format!("--serviceaccount={HOST_NS}:{sa}"),
        ],
        None,
    );
    kubectl_ok(&host, &["apply", "-f", "-"], Some(&apf));
    let token = kubectl_ok(
        &host,
        &["-n", HOST_NS, "create", "token", sa, "--duration=1h"],
        None,
    );
    let kc_path = token_kubeconfig(
        &host,
        token.trim(),
        std::path::Path::new(env.stack.state_dir()).join("throttled-syncer.kubeconfig"),
    );

    env.kill_syncer();
    let s = SyncerProcess::spawn_as(&env.stack, VC, HOST_NS, &kc_path, SYNCER_ARGS);
    *env.syncer.lock().unwrap() = Some(s.wait_ready(env.mode.bound));
    let port = env.syncer.lock().unwrap().as_ref().unwrap().port;

    // The lowest admission limit the syncer sets while the burst lands.
    let lowest = Arc::new(Mutex::new(None::<i64>));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampling = {
        let (lowest, stop) = (Arc::clone(&lowest), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let text = syncer_metrics(port);
                let limit = text
                    .lines()
                    .find_map(|l| l.strip_prefix("vcluster_syncer_admission_limit "))
                    .and_then(|v| v.trim().parse::<i64>().ok());
                if let Some(l) = limit.filter(|l| *l >= 0) {
                    let mut low = lowest.lock().unwrap();
                    *low = Some(low.map_or(l, |x| x.min(l)));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let throttled = runtime().block_on(async {
        let took = burst_until_exact(env, ns).await;
        let throttled = metric(
            &env.metrics(),
            "vcluster_syncer_reconcile_errors_total",
            "category=\"throttled\"",
        );
        log(&format!(
            "{ns}: {took}; {throttled} reconciles refused with 429, admission limit down to \
             {:?} (load average {})",
            *lowest.lock().unwrap(),
            load_average()
        ));
        throttled
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sampling.join().unwrap();
    let low = *lowest.lock().unwrap();
    // The host's usual syncer again, and its APF as it was, before judging.
    env.kill_syncer();
    kubectl_ok(&host, &["delete", "-f", "-"], Some(&apf));
    kubectl_ok(&host, &["delete", "clusterrolebinding", sa], None);
    kubectl_ok(
        &host,
        &["-n", HOST_NS, "delete", "serviceaccount", sa],
        None,
    );
    env.start_syncer();
    assert!(throttled > 0.0, "the host never throttled the syncer");
    assert!(
        low.is_some_and(|l| l < 32),
        "throttled {throttled} times, the syncer never admitted fewer reconciles: {low:?}"
    );
    runtime().block_on(clean(env, ns));
}

type Test = (&'static str, fn(&Env));

const TESTS: &[Test] = &[
    (
        "a_burst_without_a_fault_converges",
        a_burst_without_a_fault_converges,
    ),
    (
        "host_api_server_restarted_mid_burst",
        host_api_server_restarted_mid_burst,
    ),
    (
        "virtual_api_server_restarted_mid_burst",
        virtual_api_server_restarted_mid_burst,
    ),
    (
        "watches_expired_by_compaction_mid_burst",
        watches_expired_by_compaction_mid_burst,
    ),
    ("syncer_killed_during_burst", syncer_killed_during_burst),
    (
        "drift_on_owned_host_objects_is_reverted",
        drift_on_owned_host_objects_is_reverted,
    ),
    (
        "deleted_owned_host_objects_follow_the_rules",
        deleted_owned_host_objects_follow_the_rules,
    ),
    (
        "a_host_that_throttles_the_syncer_paces_it",
        a_host_that_throttles_the_syncer_paces_it,
    ),
];

fn main() {
    let mut args = Arguments::from_args();
    if args.list {
        let trials = TESTS.iter().map(|(n, _)| Trial::test(*n, || Ok(())));
        libtest_mimic::run(&args, trials.collect()).exit();
    }
    if let Err(e) = vcluster::local::check_binaries(&vcluster::local::default_bin_dir()) {
        eprintln!("e2e: {e}");
        std::process::exit(1);
    }
    let mode = Mode::from_env();
    log(&format!("mode {mode:?}"));
    let nodes = (2 * mode.burst / 250 + 2).to_string();
    let stack = DevStack::up(&[
        "--no-syncer",
        "--nodes",
        &nodes,
        "--apiserver-arg=--watch-cache=false",
    ]);
    let env = Arc::new(Env {
        stack,
        syncer: Mutex::new(None),
        mode,
    });
    env.start_syncer();
    // One fault at a time: they share the stack and the syncer.
    args.test_threads = Some(1);
    let trials = TESTS
        .iter()
        .map(|(name, f)| {
            let (env, f) = (Arc::clone(&env), *f);
            Trial::test(*name, move || {
                f(&env);
                Ok(())
            })
        })
        .collect();
    let out = libtest_mimic::run(&args, trials);
    println!("e2e: {} passed, {} failed", out.num_passed, out.num_failed);
    let log = env.syncer.lock().unwrap().as_ref().map(|s| s.log.clone());
    finish(env, out.num_failed, log);
}
