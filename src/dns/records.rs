//! The cluster zone's records: the answer to one question over the
//! [`Records`] index ([`super::index`], kept from the syncer's own caches,
//! see [`super::register`]) per the Kubernetes
//! DNS specification (schema 1.1.0):
//!
//! | name | answer |
//! |---|---|
//! | `<svc>.<ns>.svc.<zone>` | A/AAAA: the cluster IPs; headless: every ready endpoint; ExternalName: a CNAME (followed when it points into the zone) |
//! | `<host>.<svc>.<ns>.svc.<zone>` | A/AAAA of a headless Service's endpoint with that hostname (or dashed IP), or of a pod with `hostname: <host>`, `subdomain: <svc>` |
//! | `_<port>._<proto>.<svc>.<ns>.svc.<zone>` | SRV of a named port: the Service, or each ready endpoint of a headless one |
//! | `<a-b-c-d>.<ns>.pod.<zone>` | A of a pod of that namespace with that IP |
//! | `<reversed ip>.in-addr.arpa`, `ip6.arpa` | PTR of a cluster IP, of a headless Service's published endpoint (hand-written slices too), or of a pod IP; unknown addresses go upstream |
//! | `dns-version.<zone>` | TXT `1.1.0` |
//!
//! A name that exists with no record of the type asked is NODATA (NOERROR,
//! no answer), one that does not is NXDOMAIN; both carry the zone's SOA.
//! TTLs are 5 seconds, as CoreDNS's kubernetes plugin gives them. All
//! comparisons are case-insensitive.

use std::collections::BTreeSet;
use std::net::IpAddr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::index::{Owner, key};
pub use super::index::{Records, dashed};

/// TTL of every record in the zone (CoreDNS's kubernetes plugin default).
pub const TTL: u32 = 5;
/// The schema version `dns-version.<zone>` answers.
pub const SCHEMA_VERSION: &str = "1.1.0";
/// How many CNAMEs inside the zone are followed.
const MAX_CHAIN: usize = 8;

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
    /// Names, as CoreDNS's kubernetes plugin gives them: a Service's cluster
    /// IP names the Service; else each published endpoint of a headless
    /// Service names `<hostname or dashed IP>.<svc>.<ns>.svc` (what the
    /// specification asks, hand-written slices included); else a pod's IP
    /// names the pod (`<host>.<subdomain>.<ns>.svc` for StatefulSet pods).
    fn reverse(&self, r: &Records, qname: &Name, qtype: RecordType) -> Outcome {
        let Ok(net) = qname.parse_arpa_name() else {
            return Outcome::Forward;
        };
        let ip = net.addr();
        if net.prefix_len() != net.max_prefix_len() {
            return Outcome::Forward;
        }
        let owners = r.by_ip.get(&ip).into_iter().flatten();
        let services: BTreeSet<Name> = owners
            .clone()
            .filter_map(|o| match o {
                Owner::Service((ns, name)) => Some(self.name(&[name, ns, "svc"])),
                Owner::Pod(_) => None,
            })
            .collect();
        let endpoints: BTreeSet<Name> = r
            .endpoints_at(ip)
            .iter()
            .map(|(ns, svc, label)| self.name(&[label, svc, ns, "svc"]))
            .collect();
        let names = if !services.is_empty() {
            services
        } else if !endpoints.is_empty() {
            endpoints
        } else {
            owners
                .filter_map(|o| match o {
                    Owner::Pod(k) => Some(self.pod_name(r, k, ip)),
                    Owner::Service(_) => None,
                })
                .collect()
        };
        if names.is_empty() {
            return Outcome::Forward;
        }
        if !matches!(qtype, RecordType::PTR | RecordType::ANY) {
            return Outcome::Answer(Answer::nodata());
        }
        Outcome::Answer(Answer::of(
            names
                .into_iter()
                .map(|n| record(qname, RData::PTR(PTR(n))))
                .collect(),
        ))
    }

    /// A pod's own name: `<host>.<subdomain>.<ns>.svc` when its subdomain
    /// is a headless Service, else its dashed IP under `<ns>.pod`.
    fn pod_name(&self, r: &Records, (ns, pod): &super::index::Key, ip: IpAddr) -> Name {
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
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
