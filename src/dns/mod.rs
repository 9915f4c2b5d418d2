//! The virtual cluster's DNS, served by the syncer from the caches it
//! already holds: no DNS pod, no watch of its own.
//!
//! - [`index`]: what DNS needs of the virtual Services, EndpointSlices and
//!   Pods, kept from the caches' hooks;
//! - [`records`]: the answer to one question over the index (the
//!   Kubernetes DNS specification's records);
//! - [`forward`]: names outside the zone, asked of the upstream resolvers,
//!   with a bounded cache;
//! - [`server`]: the UDP and TCP listeners.
//!
//! [`register`] hangs the index on the assembly's virtual caches (the same
//! ones the engines fill: [`Assembly::cache`], [`Assembly::on_change`]),
//! rebuilds it from them at every resync (a relist reports no deletions),
//! keeps the virtual `kube-system/kube-dns` Service at the cluster IP of the
//! host Service `<vcluster>-dns` (which sends port 53 to this listener) and
//! publishes that address ([`DnsAddress`]) for the pod rule, which creates no
//! host pod before it is known. `/readyz` waits for `dns`: the listeners are
//! bound and the three caches listed.

pub mod forward;
pub mod index;
pub mod records;
pub mod server;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt as _;
use serde_json::json;

use crate::sync::apiservice::{self, Pinned};
use crate::sync::cache::Cache;
use crate::sync::{Assembly, Object, Side};
use forward::Forwarder;
use records::{Records, Zone};
use server::Server;

/// The label on the virtual `kube-system/kube-dns` Service the syncer keeps
/// (the Service rule leaves it on the virtual side).
pub const DNS_SERVICE_LABEL: &str = "vcluster.dev/dns-service";

/// How the DNS server runs.
#[derive(Debug, Clone)]
pub struct DnsOptions {
    /// Where it listens (UDP and TCP).
    pub listen: SocketAddr,
    /// The cluster domain (`cluster.local`).
    pub domain: String,
    /// The upstream resolvers.
    pub upstreams: Vec<SocketAddr>,
    /// Upstream answers kept at most.
    pub cache_size: usize,
    /// The host Service that sends port 53 here (`<vcluster>-dns`).
    pub host_service: String,
}

/// Why the DNS server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The cluster domain is not a domain name.
    #[error("--cluster-domain {domain:?} is not a domain name: {reason}")]
    Domain {
        /// What was given.
        domain: String,
        /// Why not.
        reason: String,
    },
    /// An upstream is this server.
    #[error(
        "DNS upstream {upstream} is this server itself ({why}): every forwarded name would loop; set --dns-upstream to the resolvers the syncer should ask"
    )]
    Loop {
        /// The upstream.
        upstream: SocketAddr,
        /// How it showed.
        why: &'static str,
    },
    /// The threads that answer could not start, or one ended.
    #[error("DNS threads: {0}")]
    Threads(std::io::Error),
    /// A listener could not be bound.
    #[error("DNS cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// The cluster IP of the DNS Service, once known: the nameserver of every
/// synced pod.
#[derive(Debug)]
pub struct DnsAddress(tokio::sync::watch::Sender<Option<String>>);

impl Default for DnsAddress {
    fn default() -> Self {
        Self(tokio::sync::watch::channel(None).0)
    }
}

impl DnsAddress {
    /// Publishes the address.
    pub fn set(&self, ip: &str) {
        self.0.send_if_modified(|cur| {
            let changed = cur.as_deref() != Some(ip);
            if changed {
                *cur = Some(ip.to_owned());
            }
            changed
        });
    }

    /// The address, once published.
    pub async fn wait(&self) -> String {
        let mut rx = self.0.subscribe();
        // The sender lives in `self`, so the channel cannot close.
        match rx.wait_for(Option::is_some).await {
            Ok(ip) => ip.clone().unwrap_or_default(),
            Err(_) => String::new(),
        }
    }
}

/// The upstreams of `/etc/resolv.conf`.
pub fn system_upstreams() -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .map(|t| forward::resolv_conf_upstreams(&t))
        .unwrap_or_default()
}

/// Refuses an upstream that is the listener itself.
pub fn check_upstreams(listen: SocketAddr, upstreams: &[SocketAddr]) -> Result<(), DnsError> {
    let at = listen.ip();
    // An address on another interface of this machine shows in the probe.
    let reaches_us = |ip: IpAddr| {
        ip == at
            || (at.is_unspecified() && (ip.is_loopback() || ip.is_unspecified()))
            || (at.is_loopback() && ip.is_unspecified())
    };
    match upstreams
        .iter()
        .find(|u| u.port() == listen.port() && reaches_us(u.ip()))
    {
        Some(u) => Err(DnsError::Loop {
            upstream: *u,
            why: "the address this server listens on",
        }),
        None => Ok(()),
    }
}

/// Which cache a changed key is of.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Service,
    Slice,
    Pod,
}

/// The virtual caches the records come from.
#[derive(Debug, Clone)]
struct Caches {
    services: Cache<Service>,
    slices: Cache<EndpointSlice>,
    pods: Cache<Pod>,
}

impl Caches {
    /// Sets `ns/name` of `kind` in `r` as its cache holds it now.
    fn replay(&self, r: &mut Records, kind: Kind, ns: &str, name: &str) {
        match kind {
            Kind::Service => r.set_service(ns, name, self.services.get(name, Some(ns)).as_ref()),
            Kind::Slice => r.set_slice(ns, name, self.slices.get(name, Some(ns)).as_ref()),
            Kind::Pod => r.set_pod(ns, name, self.pods.get(name, Some(ns)).as_ref()),
        }
    }
}

/// The records the server reads and the caches' hooks keep, and the keys
/// changed while a rebuild reads the caches (`Some` only then).
#[derive(Debug, Default)]
struct Index {
    records: Arc<RwLock<Records>>,
    touched: Mutex<Option<Vec<(Kind, String, String)>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Index {
    /// What a hook does: `set` on the records, and the key noted while a
    /// rebuild runs (under the records' lock, so a rebuild either read the
    /// change from the cache or replays it).
    fn touch(&self, kind: Kind, ns: &str, name: &str, set: impl FnOnce(&mut Records)) {
        let mut records = write(&self.records);
        set(&mut records);
        if let Some(t) = lock(&self.touched).as_mut() {
            t.push((kind, ns.to_owned(), name.to_owned()));
        }
    }

    /// Starts noting the keys that change.
    fn begin_rebuild(&self) {
        *lock(&self.touched) = Some(Vec::new());
    }

    /// Puts `fresh` (read from `caches` since [`Self::begin_rebuild`]) in
    /// place, with the keys that changed meanwhile as the caches hold them
    /// now. Readers wait only for the swap; the old records are dropped
    /// after it.
    fn finish_rebuild(&self, mut fresh: Records, caches: &Caches) {
        let mut records = write(&self.records);
        for (kind, ns, name) in lock(&self.touched).take().unwrap_or_default() {
            caches.replay(&mut fresh, kind, &ns, &name);
        }
        let old = std::mem::replace(&mut *records, fresh);
        drop(records);
        drop(old);
    }

    /// Rebuilds the records from `caches` (every object parsed: seconds at
    /// 10,000 pods, so on a blocking thread, never under the lock).
    fn rebuild(&self, caches: &Caches) {
        self.begin_rebuild();
        let fresh = rebuild(&caches.services, &caches.slices, &caches.pods);
        self.finish_rebuild(fresh, caches);
    }
}

/// Keeps `index` following the virtual cache of `K` through `set`.
fn follow<K: Object>(
    a: &mut Assembly,
    index: &Arc<Index>,
    kind: Kind,
    set: fn(&mut Records, &str, &str, Option<&K>),
) -> Cache<K> {
    let cache: Cache<K> = a.cache(Side::Virtual);
    let (index, live) = (Arc::clone(index), cache.clone());
    a.on_change::<K>(Side::Virtual, move |o| {
        let (ns, name) = (o.namespace().unwrap_or_default(), o.name_any());
        // The hook runs after the cache took the event: absent means deleted.
        let present = live.contains(&name, Some(&ns));
        index.touch(kind, &ns, &name, |r| {
            set(r, &ns, &name, present.then_some(o))
        });
    });
    cache
}

fn write(records: &RwLock<Records>) -> std::sync::RwLockWriteGuard<'_, Records> {
    records
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The index rebuilt from the caches.
fn rebuild(services: &Cache<Service>, slices: &Cache<EndpointSlice>, pods: &Cache<Pod>) -> Records {
    fn key<K: kube::Resource>(o: &K) -> (String, String) {
        (o.namespace().unwrap_or_default(), o.name_any())
    }
    let mut r = Records::default();
    for s in services.objects_in(None) {
        let (ns, name) = key(&s);
        r.set_service(&ns, &name, Some(&s));
    }
    for s in slices.objects_in(None) {
        let (ns, name) = key(&s);
        r.set_slice(&ns, &name, Some(&s));
    }
    for p in pods.objects_in(None) {
        let (ns, name) = key(&p);
        r.set_pod(&ns, &name, Some(&p));
    }
    r
}

/// The virtual `kube-system/kube-dns` Service.
const KUBE_DNS: Pinned = Pinned {
    namespace: "kube-system",
    name: "kube-dns",
    build: kube_dns_service,
    replaceable: |s| s.labels().contains_key(DNS_SERVICE_LABEL),
};

fn kube_dns_service(ip: &str, _current: Option<&Service>) -> serde_json::Value {
    json!({
        "metadata": {"name": "kube-dns", "namespace": "kube-system",
                     "labels": {DNS_SERVICE_LABEL: "true", "k8s-app": "kube-dns",
                                "kubernetes.io/name": "vcluster-dns"}},
        "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                 "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                           {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]}
    })
}

/// Declares the DNS server on `a`; the returned future binds the listeners,
/// checks the upstreams for a loop and serves until the process ends (or
/// fails at start with a [`DnsError`]).
pub fn register(
    a: &mut Assembly,
    opts: DnsOptions,
) -> Result<impl Future<Output = Result<(), DnsError>> + Send + 'static, DnsError> {
    let zone = Zone::new(&opts.domain).map_err(|e| DnsError::Domain {
        domain: opts.domain.clone(),
        reason: e.to_string(),
    })?;
    check_upstreams(opts.listen, &opts.upstreams)?;
    if opts.upstreams.is_empty() {
        tracing::warn!(
            "no DNS upstream (none in /etc/resolv.conf, no --dns-upstream): names outside the cluster get SERVFAIL"
        );
    }
    let index = Arc::new(Index::default());
    let caches = Caches {
        services: follow(a, &index, Kind::Service, Records::set_service),
        slices: follow(a, &index, Kind::Slice, Records::set_slice),
        pods: follow(a, &index, Kind::Pod, Records::set_pod),
    };
    let caches_ready = [
        a.ready_of::<Service>(Side::Virtual),
        a.ready_of::<EndpointSlice>(Side::Virtual),
        a.ready_of::<Pod>(Side::Virtual),
    ];
    let every = a.settings().resync;
    let records = Arc::clone(&index.records);
    a.spawn("dns-rebuild", async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let (index, caches) = (Arc::clone(&index), caches.clone());
            if let Err(e) = tokio::task::spawn_blocking(move || index.rebuild(&caches)).await {
                tracing::warn!(error = %e, "DNS index rebuild failed");
            }
        }
    });
    let address = a.shared::<DnsAddress>();
    a.spawn(
        "kube-dns",
        apiservice::run_pinned(a.ctx(), opts.host_service.clone(), KUBE_DNS, move |ip| {
            address.set(ip)
        }),
    );
    let ready = a.readiness("dns");
    let forwarder = Forwarder::new(opts.upstreams.clone(), opts.cache_size);
    let server = Arc::new(Server::new(zone, records, forwarder));
    Ok(async move {
        let addr = opts.listen;
        let (udp, tcp) = server::bind(addr).map_err(|source| DnsError::Listen { addr, source })?;
        let threads =
            server::Threads::start(&server, &udp, &tcp, threads()).map_err(DnsError::Threads)?;
        tracing::info!(%addr, domain = %opts.domain, upstreams = ?opts.upstreams, threads = threads.count(), "DNS listening");
        probe_loop(&server).await?;
        for r in &caches_ready {
            r.wait().await;
        }
        ready.set();
        threads.ended().await.map_err(DnsError::Threads)
    })
}

/// Threads that answer questions: at most two, each on a runtime of its
/// own, so that a question never waits behind the sync engines' work
/// (reconciles, watch decoding, cache decompression) on the main runtime.
fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(2))
}

/// Asks each upstream for the server's probe name: an upstream that sends
/// it back here forwards to this server.
async fn probe_loop(server: &Server) -> Result<(), DnsError> {
    let (name, _) = server.probe();
    let name = name.clone();
    for upstream in server.forwarder().upstreams().to_vec() {
        let one = Forwarder::new(vec![upstream], 0);
        let _ = tokio::time::timeout(
            Duration::from_secs(3),
            one.resolve(
                &name,
                hickory_proto::rr::RecordType::HINFO,
                hickory_proto::rr::DNSClass::IN,
            ),
        )
        .await;
        if server.probe().1 {
            return Err(DnsError::Loop {
                upstream,
                why: "it sent this server's own probe query back",
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redis(ip: &str) -> Service {
        crate::sync::tests::obj(json!({
            "metadata": {"name": "redis", "namespace": "shop"},
            "spec": {"clusterIP": ip, "clusterIPs": [ip]},
        }))
    }

    fn caches(services: Vec<Service>) -> Caches {
        use crate::sync::cache::filled;
        Caches {
            services: filled(services),
            slices: filled([]),
            pods: filled([]),
        }
    }

    fn addresses(index: &Index) -> Vec<IpAddr> {
        let r = index.records.read().unwrap();
        r.services.values().flat_map(|s| s.ips.clone()).collect()
    }

    #[test]
    fn a_change_seen_while_the_index_is_rebuilt_is_kept() {
        let index = Index::default();
        let before = caches(vec![redis("10.96.0.10")]);
        index.rebuild(&before);
        assert_eq!(addresses(&index), ["10.96.0.10".parse::<IpAddr>().unwrap()]);
        // The rebuild reads the caches; meanwhile the Service changes (the
        // cache takes it, then its hook runs), then the rebuild swaps.
        index.begin_rebuild();
        let fresh = rebuild(&before.services, &before.slices, &before.pods);
        let moved = redis("10.96.0.77");
        let after = caches(vec![moved.clone()]);
        index.touch(Kind::Service, "shop", "redis", |r| {
            r.set_service("shop", "redis", Some(&moved));
        });
        index.finish_rebuild(fresh, &after);
        assert_eq!(addresses(&index), ["10.96.0.77".parse::<IpAddr>().unwrap()]);
        // A deletion meanwhile, likewise; and no key is noted between rebuilds.
        index.begin_rebuild();
        let fresh = rebuild(&after.services, &after.slices, &after.pods);
        index.touch(Kind::Service, "shop", "redis", |r| {
            r.set_service("shop", "redis", None);
        });
        index.finish_rebuild(fresh, &caches(vec![]));
        assert!(addresses(&index).is_empty());
        index.touch(Kind::Service, "shop", "redis", |_| {});
        assert!(lock(&index.touched).is_none());
    }

    #[test]
    fn an_upstream_that_is_this_server_is_refused() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        for (listen, upstream) in [
            ("127.0.0.1:1053", "127.0.0.1:1053"),
            ("0.0.0.0:1053", "127.0.0.1:1053"),
            ("0.0.0.0:53", "0.0.0.0:53"),
            ("10.1.2.3:1053", "10.1.2.3:1053"),
        ] {
            let err = check_upstreams(at(listen), &[at("10.0.0.10:53"), at(upstream)]).unwrap_err();
            assert!(err.to_string().contains(upstream), "{listen}: {err}");
        }
        for (listen, upstream) in [
            ("0.0.0.0:1053", "127.0.0.53:53"),
            ("127.0.0.1:1053", "10.0.0.10:1053"),
            ("10.1.2.3:1053", "127.0.0.1:1053"),
        ] {
            assert!(
                check_upstreams(at(listen), &[at(upstream)]).is_ok(),
                "{listen} {upstream}"
            );
        }
    }

    #[test]
    fn upstreams_come_from_resolv_conf_or_the_flag() {
        let conf = "# generated\nsearch svc.cluster.local\nnameserver 10.96.0.10\nnameserver fe80::1%eth0\nnameserver bogus\noptions ndots:5\n";
        let got = forward::resolv_conf_upstreams(conf);
        assert_eq!(
            got,
            [
                "10.96.0.10:53".parse::<SocketAddr>().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
        assert_eq!(
            forward::parse_upstream("1.1.1.1"),
            Ok("1.1.1.1:53".parse().unwrap())
        );
        assert_eq!(
            forward::parse_upstream("127.0.0.1:5353"),
            Ok("127.0.0.1:5353".parse().unwrap())
        );
        assert!(
            forward::parse_upstream("dns.example")
                .unwrap_err()
                .contains("dns.example")
        );
    }
}
