//! The index of what DNS needs of the virtual Services, EndpointSlices and
//! Pods, kept current object by object from the caches' hooks (see
//! [`super::register`]); [`super::records`] answers questions over it.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Namespace and name.
pub(super) type Key = (Box<str>, Box<str>);
/// Namespace, subdomain and hostname.
type HostKey = (Box<str>, Box<str>, Box<str>);

pub(super) fn key(ns: &str, name: &str) -> Key {
    (
        ns.to_ascii_lowercase().into(),
        name.to_ascii_lowercase().into(),
    )
}

/// What DNS needs of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Svc {
    pub(super) ips: Vec<IpAddr>,
    pub(super) headless: bool,
    pub(super) external: Option<Box<str>>,
    /// Named ports: name, protocol (lower case), port.
    pub(super) ports: Vec<(Box<str>, Box<str>, u16)>,
    pub(super) publish_not_ready: bool,
}

/// One endpoint address of a slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Ep {
    pub(super) ip: IpAddr,
    pub(super) hostname: Option<Box<str>>,
    pub(super) ready: bool,
}

impl Ep {
    /// The endpoint's name under its Service: its hostname, else its dashed IP.
    pub(super) fn label(&self) -> String {
        self.hostname
            .as_deref()
            .map_or_else(|| dashed(self.ip), str::to_owned)
    }
}

/// What DNS needs of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PodRec {
    pub(super) ips: Vec<IpAddr>,
    pub(super) ready: bool,
    /// `spec.hostname` and `spec.subdomain`, both set.
    pub(super) host: Option<(Box<str>, Box<str>)>,
}

/// The records of the virtual cluster, kept current by the caches' hooks.
#[derive(Debug, Default)]
pub struct Records {
    pub(super) services: HashMap<Key, Svc>,
    /// Slices by (namespace, slice name): their Service and endpoints.
    pub(super) slices: HashMap<Key, (Box<str>, Vec<Ep>)>,
    /// Slice names by (namespace, Service).
    pub(super) slices_of: HashMap<Key, BTreeSet<Box<str>>>,
    pub(super) pods: HashMap<Key, PodRec>,
    /// Pod names by (namespace, subdomain, hostname).
    pub(super) pods_by_host: HashMap<HostKey, BTreeSet<Box<str>>>,
    /// Services and pods by address.
    pub(super) by_ip: HashMap<IpAddr, BTreeSet<Owner>>,
    /// Slices by endpoint address (for the PTR of an endpoint).
    pub(super) slices_by_ip: HashMap<IpAddr, BTreeSet<Key>>,
    /// Objects per namespace: a namespace with any is a name that exists.
    pub(super) namespaces: HashMap<Box<str>, usize>,
}

/// What holds an address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Owner {
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
        if let Some((svc, eps)) = self.slices.remove(&k) {
            let of = (k.0.clone(), svc);
            if let Some(set) = self.slices_of.get_mut(&of) {
                set.remove(&k.1);
                if set.is_empty() {
                    self.slices_of.remove(&of);
                }
            }
            for e in &eps {
                if let Some(set) = self.slices_by_ip.get_mut(&e.ip) {
                    set.remove(&k);
                    if set.is_empty() {
                        self.slices_by_ip.remove(&e.ip);
                    }
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
        let eps = eps_of(s);
        for e in &eps {
            self.slices_by_ip.entry(e.ip).or_default().insert(k.clone());
        }
        self.slices.insert(k, (svc, eps));
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
    pub(super) fn endpoints(&self, ns: &str, name: &str, svc: &Svc) -> Vec<&Ep> {
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

impl Records {
    /// The published endpoints of headless Services at `ip`: (namespace,
    /// Service, the endpoint's name under it).
    pub(super) fn endpoints_at(&self, ip: IpAddr) -> BTreeSet<(Box<str>, Box<str>, String)> {
        let mut out = BTreeSet::new();
        for (ns, slice) in self.slices_by_ip.get(&ip).into_iter().flatten() {
            let Some((name, eps)) = self.slices.get(&(ns.clone(), slice.clone())) else {
                continue;
            };
            let Some(svc) = self
                .services
                .get(&(ns.clone(), name.clone()))
                .filter(|s| s.headless)
            else {
                continue;
            };
            out.extend(
                eps.iter()
                    .filter(|e| e.ip == ip && (e.ready || svc.publish_not_ready))
                    .map(|e| (ns.clone(), name.clone(), e.label())),
            );
        }
        out
    }
}

/// `10.0.0.1` as `10-0-0-1` (IPv6: colons as dashes).
pub fn dashed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}
