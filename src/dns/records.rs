//! The cluster zone's records: an index of what DNS needs of the virtual
//! Services, EndpointSlices and Pods (kept from the syncer's own caches, see
//! [`super::register`]), and the answer to one question per the Kubernetes
//! DNS specification (schema 1.1.0):
//!
//! | name | answer |
//! |---|---|
//! | `<svc>.<ns>.svc.<zone>` | A/AAAA: the cluster IPs; headless: every ready endpoint; ExternalName: a CNAME (followed when it points into the zone) |
//! | `<host>.<svc>.<ns>.svc.<zone>` | A/AAAA of a headless Service's endpoint with that hostname (or dashed IP), or of a pod with `hostname: <host>`, `subdomain: <svc>` |
//! | `_<port>._<proto>.<svc>.<ns>.svc.<zone>` | SRV of a named port: the Service, or each ready endpoint of a headless one |
//! | `<a-b-c-d>.<ns>.pod.<zone>` | A of a pod of that namespace with that IP |
//! | `<reversed ip>.in-addr.arpa`, `ip6.arpa` | PTR of a cluster IP or a pod IP; unknown addresses go upstream |
//! | `dns-version.<zone>` | TXT `1.1.0` |
//!
//! A name that exists with no record of the type asked is NODATA (NOERROR,
//! no answer), one that does not is NXDOMAIN; both carry the zone's SOA.
//! TTLs are 5 seconds, as CoreDNS's kubernetes plugin gives them. All
//! comparisons are case-insensitive.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// TTL of every record in the zone (CoreDNS's kubernetes plugin default).
pub const TTL: u32 = 5;
/// The schema version `dns-version.<zone>` answers.
pub const SCHEMA_VERSION: &str = "1.1.0";
/// How many CNAMEs inside the zone are followed.
const MAX_CHAIN: usize = 8;
/// The label on an EndpointSlice naming its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Namespace and name.
type Key = (Box<str>, Box<str>);
/// Namespace, subdomain and hostname.
type HostKey = (Box<str>, Box<str>, Box<str>);

fn key(ns: &str, name: &str) -> Key {
    (
        ns.to_ascii_lowercase().into(),
        name.to_ascii_lowercase().into(),
    )
}

/// What DNS needs of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Svc {
    ips: Vec<IpAddr>,
    headless: bool,
    external: Option<Box<str>>,
    /// Named ports: name, protocol (lower case), port.
    ports: Vec<(Box<str>, Box<str>, u16)>,
    publish_not_ready: bool,
}

/// One endpoint address of a slice.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ep {
    ip: IpAddr,
    hostname: Option<Box<str>>,
    ready: bool,
}

impl Ep {
    /// The endpoint's name under its Service: its hostname, else its dashed IP.
    fn label(&self) -> String {
        self.hostname
            .as_deref()
            .map_or_else(|| dashed(self.ip), str::to_owned)
    }
}

/// What DNS needs of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PodRec {
    ips: Vec<IpAddr>,
    ready: bool,
    /// `spec.hostname` and `spec.subdomain`, both set.
    host: Option<(Box<str>, Box<str>)>,
}

/// The records of the virtual cluster, kept current by the caches' hooks.
#[derive(Debug, Default)]
pub struct Records {
    services: HashMap<Key, Svc>,
    /// Slices by (namespace, slice name): their Service and endpoints.
    slices: HashMap<Key, (Box<str>, Vec<Ep>)>,
    /// Slice names by (namespace, Service).
    slices_of: HashMap<Key, BTreeSet<Box<str>>>,
    pods: HashMap<Key, PodRec>,
    /// Pod names by (namespace, subdomain, hostname).
    pods_by_host: HashMap<HostKey, BTreeSet<Box<str>>>,
    /// Services and pods by address.
    by_ip: HashMap<IpAddr, BTreeSet<Owner>>,
    /// Objects per namespace: a namespace with any is a name that exists.
    namespaces: HashMap<Box<str>, usize>,
}

/// What holds an address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Owner {
    Service(Key),
    Pod(Key),
}

fn ips(list: impl IntoIterator<Item = impl AsRef<str>>) -> Vec<IpAddr> {
    list.into_iter()
        .filter_map(|s| s.as_ref().parse().ok())
        .collect()
}

fn svc_of(s: &Service) -> Option<Svc> {
    let spec = s.spec.as_ref()?;
    let external = (spec.type_.as_deref() == Some("ExternalName"))
        .then_some(spec.external_name.as_deref())
        .flatten()
        .map(|n| {
            n.trim_end_matches('.')
                .to_ascii_lowercase()
                .into_boxed_str()
        });
    let mut listed: Vec<&String> = spec.cluster_ips.iter().flatten().collect();
    if listed.is_empty() {
        listed.extend(spec.cluster_ip.as_ref());
    }
    let headless = external.is_none() && listed.iter().any(|ip| ip.as_str() == "None");
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            let name = p.name.as_deref().filter(|n| !n.is_empty())?;
            let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
            Some((
                name.to_ascii_lowercase().into(),
                proto.into(),
                u16::try_from(p.port).ok()?,
            ))
        })
        .collect();
    Some(Svc {
        ips: if external.is_some() {
            Vec::new()
        } else {
            ips(listed)
        },
        headless,
        external,
        ports,
        publish_not_ready: spec.publish_not_ready_addresses == Some(true),
    })
}

fn pod_of(p: &Pod) -> PodRec {
    let status = p.status.as_ref();
    let mut list: Vec<&str> = status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .map(|i| i.ip.as_str())
        .collect();
    if list.is_empty() {
        list.extend(status.and_then(|s| s.pod_ip.as_deref()));
    }
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let spec = p.spec.as_ref();
    let host = spec
        .and_then(|s| s.hostname.as_deref().zip(s.subdomain.as_deref()))
        .filter(|(h, s)| !h.is_empty() && !s.is_empty())
        .map(|(h, s)| (h.to_ascii_lowercase().into(), s.to_ascii_lowercase().into()));
    PodRec {
        ips: ips(list),
        ready,
        host,
    }
}

fn eps_of(s: &EndpointSlice) -> Vec<Ep> {
    s.endpoints
        .iter()
        .flatten()
        .flat_map(|e| {
            let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            let hostname = e
                .hostname
                .as_deref()
                .filter(|h| !h.is_empty())
                .map(|h| h.to_ascii_lowercase().into_boxed_str());
            ips(&e.addresses).into_iter().map(move |ip| Ep {
                ip,
                hostname: hostname.clone(),
                ready,
            })
        })
        .collect()
}

impl Records {
    fn count_ns(&mut self, ns: &str, delta: isize) {
        let n = self.namespaces.entry(ns.into()).or_default();
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            self.namespaces.remove(ns);
        }
    }

    fn unindex_ips(&mut self, owner: &Owner, list: &[IpAddr]) {
        for ip in list {
            if let Some(set) = self.by_ip.get_mut(ip) {
                set.remove(owner);
                if set.is_empty() {
                    self.by_ip.remove(ip);
                }
            }
        }
    }

    fn index_ips(&mut self, owner: &Owner, list: &[IpAddr]) {
        for ip in list {
            self.by_ip.entry(*ip).or_default().insert(owner.clone());
        }
    }

    /// Sets (or, when `None`, removes) Service `name` of `ns`.
    pub fn set_service(&mut self, ns: &str, name: &str, s: Option<&Service>) {
        let k = key(ns, name);
        let owner = Owner::Service(k.clone());
        if let Some(old) = self.services.remove(&k) {
            self.unindex_ips(&owner, &old.ips);
            self.count_ns(&k.0, -1);
        }
        if let Some(new) = s.and_then(svc_of) {
            self.index_ips(&owner, &new.ips);
            self.count_ns(&k.0, 1);
            self.services.insert(k, new);
        }
    }

    /// Sets (or removes) EndpointSlice `name` of `ns`.
    pub fn set_slice(&mut self, ns: &str, name: &str, s: Option<&EndpointSlice>) {
        let k = key(ns, name);
        if let Some((svc, _)) = self.slices.remove(&k) {
            let of = (k.0.clone(), svc);
            if let Some(set) = self.slices_of.get_mut(&of) {
                set.remove(&k.1);
                if set.is_empty() {
                    self.slices_of.remove(&of);
                }
            }
        }
        let Some(s) = s else { return };
        let Some(svc) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            return;
        };
        let svc: Box<str> = svc.to_ascii_lowercase().into();
        self.slices_of
            .entry((k.0.clone(), svc.clone()))
            .or_default()
            .insert(k.1.clone());
        self.slices.insert(k, (svc, eps_of(s)));
    }

    /// Sets (or removes) pod `name` of `ns`.
    pub fn set_pod(&mut self, ns: &str, name: &str, p: Option<&Pod>) {
        let k = key(ns, name);
        let owner = Owner::Pod(k.clone());
        if let Some(old) = self.pods.remove(&k) {
            self.unindex_ips(&owner, &old.ips);
            if let Some((h, s)) = old.host {
                let hk = (k.0.clone(), s, h);
                if let Some(set) = self.pods_by_host.get_mut(&hk) {
                    set.remove(&k.1);
                    if set.is_empty() {
                        self.pods_by_host.remove(&hk);
                    }
                }
            }
            self.count_ns(&k.0, -1);
        }
        let Some(p) = p else { return };
        let new = pod_of(p);
        self.index_ips(&owner, &new.ips);
        if let Some((h, s)) = &new.host {
            self.pods_by_host
                .entry((k.0.clone(), s.clone(), h.clone()))
                .or_default()
                .insert(k.1.clone());
        }
        self.count_ns(&k.0, 1);
        self.pods.insert(k, new);
    }

    /// Objects indexed: Services, slices, pods.
    pub fn len(&self) -> (usize, usize, usize) {
        (self.services.len(), self.slices.len(), self.pods.len())
    }

    /// The endpoints of Service `svc` that DNS publishes.
    fn endpoints(&self, ns: &str, name: &str, svc: &Svc) -> Vec<&Ep> {
        let mut seen = BTreeSet::new();
        self.slices_of
            .get(&key(ns, name))
            .into_iter()
            .flatten()
            .filter_map(|slice| self.slices.get(&(ns.into(), slice.clone())))
            .flat_map(|(_, eps)| eps)
            .filter(|e| e.ready || svc.publish_not_ready)
            .filter(|e| seen.insert(e.ip))
            .collect()
    }
}

/// What the server does with a question.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Outside the zone (or an address the zone does not know): upstream.
    Forward,
    /// Answered from the zone.
    Answer(Answer),
}

/// An answer from the zone.
#[derive(Debug, Default, PartialEq)]
pub struct Answer {
    /// NOERROR or NXDOMAIN.
    pub rcode: ResponseCode,
    /// The answer section.
    pub answers: Vec<Record>,
    /// The additional section (addresses of SRV targets).
    pub additionals: Vec<Record>,
    /// A CNAME target outside the zone, for the server to resolve upstream.
    pub chase: Option<Name>,
}

/// The zone: its name and the questions it answers.
#[derive(Debug, Clone)]
pub struct Zone {
    /// The cluster domain, lower case, fully qualified.
    pub origin: Name,
    labels: usize,
}

/// `10.0.0.1` as `10-0-0-1` (IPv6: colons as dashes).
pub fn dashed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

fn undashed(label: &str) -> Option<IpAddr> {
    let v4 = label.replace('-', ".");
    v4.parse()
        .ok()
        .or_else(|| label.replace('-', ":").parse().ok())
}

fn record(name: &Name, data: RData) -> Record {
    Record::from_rdata(name.clone(), TTL, data)
}

fn address(name: &Name, ip: IpAddr) -> Record {
    match ip {
        IpAddr::V4(v4) => record(name, RData::A(A(v4))),
        IpAddr::V6(v6) => record(name, RData::AAAA(AAAA(v6))),
    }
}

fn family(qtype: RecordType, ip: &IpAddr) -> bool {
    match qtype {
        RecordType::A => ip.is_ipv4(),
        RecordType::AAAA => ip.is_ipv6(),
        RecordType::ANY => true,
        _ => false,
    }
}

impl Answer {
    fn nxdomain() -> Self {
        Self {
            rcode: ResponseCode::NXDomain,
            ..Self::default()
        }
    }

    fn nodata() -> Self {
        Self::default()
    }

    fn of(answers: Vec<Record>) -> Self {
        Self {
            answers,
            ..Self::default()
        }
    }

    /// The addresses of `addrs` of the family `qtype` asks for, named `qname`.
    fn addresses(qname: &Name, qtype: RecordType, addrs: impl IntoIterator<Item = IpAddr>) -> Self {
        Self::of(
            addrs
                .into_iter()
                .filter(|ip| family(qtype, ip))
                .map(|ip| address(qname, ip))
                .collect(),
        )
    }
}

impl Zone {
    /// The zone of cluster domain `domain` (`cluster.local`).
    pub fn new(domain: &str) -> Result<Self, hickory_proto::ProtoError> {
        let mut origin = Name::from_ascii(domain.trim_end_matches('.'))?.to_lowercase();
        origin.set_fqdn(true);
        let labels = usize::from(origin.num_labels());
        Ok(Self { origin, labels })
    }

    fn name(&self, rel: &[&str]) -> Name {
        let mut n = Name::from_labels(rel.iter().map(|l| l.as_bytes())).unwrap_or_default();
        n.set_fqdn(false);
        n.append_domain(&self.origin)
            .unwrap_or_else(|_| self.origin.clone())
    }

    /// The SOA of negative answers.
    pub fn soa(&self) -> Record {
        let ns = self.name(&["ns", "dns"]);
        let mail = self.name(&["hostmaster"]);
        // CoreDNS's numbers: refresh 2 h, retry 30 min, expire 1 day, minimum = TTL.
        let data = SOA::new(ns, mail, 1, 7200, 1800, 86_400, TTL);
        record(&self.origin, RData::SOA(data))
    }

    /// The answer to `qname`/`qtype` over `r`.
    pub fn lookup(&self, r: &Records, qname: &Name, qtype: RecordType) -> Outcome {
        if !self.origin.zone_of(qname) {
            return self.reverse(r, &qname.to_lowercase(), qtype);
        }
        let mut answer = self.lookup_in(r, qname, qtype, 0);
        if answer.answers.is_empty() && answer.chase.is_none() {
            answer.additionals.clear();
        }
        Outcome::Answer(answer)
    }

    fn lookup_in(&self, r: &Records, qname: &Name, qtype: RecordType, depth: usize) -> Answer {
        let all: Vec<String> = qname
            .iter()
            .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
            .collect();
        let rel: Vec<&str> = all[..all.len().saturating_sub(self.labels)]
            .iter()
            .map(String::as_str)
            .collect();
        match rel.as_slice() {
            [] => match qtype {
                RecordType::SOA => Answer::of(vec![self.soa()]),
                _ => Answer::nodata(),
            },
            ["dns-version"] => match qtype {
                RecordType::TXT | RecordType::ANY => Answer::of(vec![record(
                    qname,
                    RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_owned()])),
                )]),
                _ => Answer::nodata(),
            },
            ["svc"] | ["pod"] => Answer::nodata(),
            [ns, "svc" | "pod"] => self.namespace(r, ns),
            [name, ns, "svc"] => self.service(r, qname, ns, name, qtype, depth),
            [port, proto, name, ns, "svc"] if port.starts_with('_') && proto.starts_with('_') => {
                self.srv(r, qname, ns, name, &port[1..], &proto[1..], qtype)
            }
            [proto, name, ns, "svc"] if proto.starts_with('_') => {
                let exists = r
                    .services
                    .get(&key(ns, name))
                    .is_some_and(|s| s.ports.iter().any(|p| *p.1 == proto[1..]));
                if exists {
                    Answer::nodata()
                } else {
                    Answer::nxdomain()
                }
            }
            [host, name, ns, "svc"] => self.endpoint(r, qname, ns, name, host, qtype),
            [dashed_ip, ns, "pod"] => self.pod(r, qname, ns, dashed_ip, qtype),
            _ => Answer::nxdomain(),
        }
    }

    fn namespace(&self, r: &Records, ns: &str) -> Answer {
        if r.namespaces.contains_key(ns) {
            Answer::nodata()
        } else {
            Answer::nxdomain()
        }
    }

    fn service(
        &self,
        r: &Records,
        qname: &Name,
        ns: &str,
        name: &str,
        qtype: RecordType,
        depth: usize,
    ) -> Answer {
        let Some(svc) = r.services.get(&key(ns, name)) else {
            return Answer::nxdomain();
        };
        if let Some(target) = &svc.external {
            return self.cname(r, qname, target, qtype, depth);
        }
        let addrs: Vec<IpAddr> = if svc.headless {
            r.endpoints(ns, name, svc).iter().map(|e| e.ip).collect()
        } else {
            svc.ips.clone()
        };
        Answer::addresses(qname, qtype, addrs)
    }

    fn cname(
        &self,
        r: &Records,
        qname: &Name,
        target: &str,
        qtype: RecordType,
        depth: usize,
    ) -> Answer {
        let Ok(mut to) = Name::from_ascii(target) else {
            return Answer::nodata();
        };
        to.set_fqdn(true);
        let mut answer = Answer::of(vec![record(qname, RData::CNAME(CNAME(to.clone())))]);
        if qtype == RecordType::CNAME {
            return answer;
        }
        if !self.origin.zone_of(&to) {
            answer.chase = Some(to);
            return answer;
        }
        if depth >= MAX_CHAIN {
            return answer;
        }
        let next = self.lookup_in(r, &to, qtype, depth + 1);
        answer.answers.extend(next.answers);
        answer.additionals.extend(next.additionals);
        answer.chase = next.chase;
        answer
    }

    #[allow(clippy::too_many_arguments, reason = "the parts of one SRV name")]
    fn srv(
        &self,
        r: &Records,
        qname: &Name,
        ns: &str,
        name: &str,
        port: &str,
        proto: &str,
        qtype: RecordType,
    ) -> Answer {
        let Some(svc) = r.services.get(&key(ns, name)) else {
            return Answer::nxdomain();
        };
        let Some(&(_, _, number)) = svc.ports.iter().find(|p| *p.0 == *port && *p.1 == *proto)
        else {
            return Answer::nxdomain();
        };
        if !matches!(qtype, RecordType::SRV | RecordType::ANY) {
            return Answer::nodata();
        }
        let service_name = self.name(&[name, ns, "svc"]);
        let targets: Vec<(Name, Vec<IpAddr>)> = if svc.headless {
            r.endpoints(ns, name, svc)
                .into_iter()
                .map(|e| (self.name(&[&e.label(), name, ns, "svc"]), vec![e.ip]))
                .collect()
        } else {
            vec![(service_name, svc.ips.clone())]
        };
        let weight = u16::try_from(100 / targets.len().max(1)).unwrap_or(100);
        let mut answer = Answer::nodata();
        for (target, addrs) in targets {
            let srv = SRV::new(0, weight, number, target.clone());
            answer.answers.push(record(qname, RData::SRV(srv)));
            answer
                .additionals
                .extend(addrs.into_iter().map(|ip| address(&target, ip)));
        }
        answer
    }

    fn endpoint(
        &self,
        r: &Records,
        qname: &Name,
        ns: &str,
        name: &str,
        host: &str,
        qtype: RecordType,
    ) -> Answer {
        let Some(svc) = r.services.get(&key(ns, name)).filter(|s| s.headless) else {
            return Answer::nxdomain();
        };
        let mut addrs: Vec<IpAddr> = r
            .endpoints(ns, name, svc)
            .into_iter()
            .filter(|e| e.label() == host)
            .map(|e| e.ip)
            .collect();
        let by_host = (ns.into(), name.into(), host.into());
        for pod in r.pods_by_host.get(&by_host).into_iter().flatten() {
            if let Some(p) = r.pods.get(&(ns.into(), pod.clone()))
                && (p.ready || svc.publish_not_ready)
            {
                for ip in &p.ips {
                    if !addrs.contains(ip) {
                        addrs.push(*ip);
                    }
                }
            }
        }
        if addrs.is_empty() {
            return Answer::nxdomain();
        }
        Answer::addresses(qname, qtype, addrs)
    }

    fn pod(&self, r: &Records, qname: &Name, ns: &str, label: &str, qtype: RecordType) -> Answer {
        let Some(ip) = undashed(label) else {
            return Answer::nxdomain();
        };
        let known = r.by_ip.get(&ip).is_some_and(|owners| {
            owners
                .iter()
                .any(|o| matches!(o, Owner::Pod((pod_ns, _)) if **pod_ns == *ns))
        });
        if !known {
            return Answer::nxdomain();
        }
        Answer::addresses(qname, qtype, [ip])
    }

    /// PTR of an address the zone knows; everything else goes upstream.
    fn reverse(&self, r: &Records, qname: &Name, qtype: RecordType) -> Outcome {
        let Ok(net) = qname.parse_arpa_name() else {
            return Outcome::Forward;
        };
        let ip = net.addr();
        if net.prefix_len() != net.max_prefix_len() {
            return Outcome::Forward;
        }
        let Some(owners) = r.by_ip.get(&ip) else {
            return Outcome::Forward;
        };
        if !matches!(qtype, RecordType::PTR | RecordType::ANY) {
            return Outcome::Answer(Answer::nodata());
        }
        let names: BTreeSet<Name> = owners
            .iter()
            .map(|o| match o {
                Owner::Service((ns, name)) => self.name(&[name, ns, "svc"]),
                Owner::Pod((ns, pod)) => {
                    let host = r.pods.get(&(ns.clone(), pod.clone())).and_then(|p| {
                        p.host.as_ref().filter(|(_, sub)| {
                            r.services
                                .get(&(ns.clone(), sub.clone()))
                                .is_some_and(|s| s.headless)
                        })
                    });
                    match host {
                        Some((h, sub)) => self.name(&[h, sub, ns, "svc"]),
                        None => self.name(&[&dashed(ip), ns, "pod"]),
                    }
                }
            })
            .collect();
        Outcome::Answer(Answer::of(
            names
                .into_iter()
                .map(|n| record(qname, RData::PTR(PTR(n))))
                .collect(),
        ))
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
