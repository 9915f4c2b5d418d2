//! Where tenant-written Endpoints and EndpointSlices may send host clients
//! (the CVE-2021-25740 class: a selector-less Service whose hand-written
//! endpoints name the host API server, another team's pod or a node would
//! send the host's ingress controller, or any host client of that Service,
//! there).
//!
//! An address goes down only if it is
//! 1. an IP of one of this vcluster's own synced pods (running on the host,
//!    not host-network), or
//! 2. inside one of the configured allowed CIDRs (`--endpoints-allowed-cidrs`,
//!    default none) and not inside a host range: the host's service range,
//!    a host node's address or a host node's pod range are never allowed
//!    unless the address is this vcluster's pod (1).
//!
//! Loopback, link-local (the cloud metadata address among them), unspecified
//! and multicast addresses are never allowed. A refused address is dropped
//! from the host copy (the others still serve) and named, with the reason, in
//! a Warning event. `FQDN` EndpointSlices are refused whole: a name can
//! resolve to any address, so nothing can check it here (an `ExternalName`
//! Service, under the Service type policy, is the way to alias a name).

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use k8s_openapi::api::core::v1::{EndpointAddress, Endpoints};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::translate::Refusal;

/// The Warning reason for dropped addresses and refused slices.
pub const REASON: &str = "EndpointAddressRefused";

/// An IP network (`10.0.0.0/8`, `fd00::/64`; a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad = |why: &str| format!("{s:?} is not a CIDR ({why})");
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let addr = normal(ip.parse::<IpAddr>().map_err(|_| bad("no IP address"))?);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| bad(&format!("prefix must be 0 to {max}")))?,
        };
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn bits(ip: IpAddr) -> (u128, u32) {
    match ip {
        IpAddr::V4(v) => (u128::from(u32::from(v)), 32),
        IpAddr::V6(v) => (u128::from(v), 128),
    }
}

impl Cidr {
    /// True when `ip` is inside (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = normal(ip);
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        let ((a, width), (b, _)) = (bits(self.addr), bits(ip));
        let host_bits = width - u32::from(self.prefix);
        // A /0 keeps no bits (a shift by the full width would overflow).
        a.checked_shr(host_bits).unwrap_or(0) == b.checked_shr(host_bits).unwrap_or(0)
    }
}

/// IPv4-mapped IPv6 (`::ffff:10.0.0.1`) as the IPv4 address it is.
fn normal(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v) => v.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A host range no tenant address may fall in (unless it is the vcluster's
/// own pod), with what it is for the Warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRange {
    /// The range.
    pub cidr: Cidr,
    /// What it is ("the host's service range 10.96.0.0/16").
    pub what: String,
}

/// What the syncer knows of the host's addresses at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Known {
    /// IPs of this vcluster's synced pods on the host.
    pub own_pods: HashSet<IpAddr>,
    /// Host ranges (service range, node addresses, node pod ranges).
    pub host: Vec<HostRange>,
}

/// The configured policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointPolicy {
    allowed: Vec<Cidr>,
}

/// One address kept off the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The address as the tenant wrote it.
    pub address: String,
    /// Why.
    pub why: String,
}

impl EndpointPolicy {
    /// A policy allowing `allowed` besides the vcluster's own pods.
    pub fn new(allowed: Vec<Cidr>) -> Self {
        Self { allowed }
    }

    /// Parses a comma-separated CIDR list (empty: only the vcluster's pods).
    pub fn parse(list: &str) -> Result<Self, String> {
        list.split(',')
            .filter(|s| !s.trim().is_empty())
            .map(str::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(Self::new)
            .map_err(|e| format!("--endpoints-allowed-cidrs: {e}"))
    }

    /// `Err(why)` when `address` may not go to the host.
    pub fn check(&self, address: &str, known: &Known) -> Result<(), String> {
        let Ok(ip) = address.trim().parse::<IpAddr>().map(normal) else {
            return Err("not an IP address".into());
        };
        if known.own_pods.contains(&ip) {
            return Ok(());
        }
        if let Some(what) = special(ip) {
            return Err(format!("{what} address, never a tenant's"));
        }
        if let Some(r) = known.host.iter().find(|r| r.cidr.contains(ip)) {
            return Err(format!(
                "inside {} and not a pod of this virtual cluster",
                r.what
            ));
        }
        if self.allowed.iter().any(|c| c.contains(ip)) {
            return Ok(());
        }
        Err(if self.allowed.is_empty() {
            "not a pod of this virtual cluster (no other addresses are allowed)".into()
        } else {
            format!(
                "not a pod of this virtual cluster and not inside the allowed ranges {}",
                self.allowed
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }

    /// The host form's addresses of tenant Endpoints `e`: refused ones
    /// dropped (subsets left without any address go too).
    pub fn filter_endpoints(&self, mut e: Endpoints, known: &Known) -> (Endpoints, Vec<Refused>) {
        let mut refused = Vec::new();
        let mut keep = |list: Option<Vec<EndpointAddress>>| {
            list.map(|l| {
                l.into_iter()
                    .filter(|a| match self.check(&a.ip, known) {
                        Ok(()) => true,
                        Err(why) => {
                            refused.push(Refused {
                                address: a.ip.clone(),
                                why,
                            });
                            false
                        }
                    })
                    .collect::<Vec<_>>()
            })
        };
        if let Some(subsets) = e.subsets.take() {
            let kept: Vec<_> = subsets
                .into_iter()
                .map(|mut s| {
                    s.addresses = keep(s.addresses.take());
                    s.not_ready_addresses = keep(s.not_ready_addresses.take());
                    s
                })
                .filter(|s| {
                    s.addresses.as_ref().is_some_and(|a| !a.is_empty())
                        || s.not_ready_addresses
                            .as_ref()
                            .is_some_and(|a| !a.is_empty())
                })
                .collect();
            e.subsets = Some(kept);
        }
        (e, refused)
    }

    /// The host form's addresses of tenant EndpointSlice `s`: refused ones
    /// dropped (endpoints left without an address go too); an `FQDN` slice
    /// is refused whole.
    pub fn filter_slice(
        &self,
        mut s: EndpointSlice,
        known: &Known,
    ) -> Result<(EndpointSlice, Vec<Refused>), Refusal> {
        if !matches!(s.address_type.as_str(), "IPv4" | "IPv6") {
            return Err(Refusal::new(
                REASON,
                format!(
                    "addressType {} is not synced to the host: a name can resolve to any address there (use an ExternalName Service to alias a name)",
                    s.address_type
                ),
            ));
        }
        let mut refused = Vec::new();
        if let Some(list) = s.endpoints.take() {
            let kept = list
                .into_iter()
                .filter_map(|mut ep| {
                    ep.addresses.retain(|a| match self.check(a, known) {
                        Ok(()) => true,
                        Err(why) => {
                            refused.push(Refused {
                                address: a.clone(),
                                why,
                            });
                            false
                        }
                    });
                    (!ep.addresses.is_empty()).then_some(ep)
                })
                .collect();
            s.endpoints = Some(kept);
        }
        Ok((s, refused))
    }
}

/// Addresses that are never a tenant's, whatever the configuration.
fn special(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v) if v.is_loopback() => Some("a loopback"),
        IpAddr::V4(v) if v.is_link_local() => Some("a link-local"),
        IpAddr::V4(v) if v.is_unspecified() || v.is_broadcast() => Some("an unspecified"),
        IpAddr::V4(v) if v.is_multicast() => Some("a multicast"),
        IpAddr::V6(v) if v.is_loopback() => Some("a loopback"),
        IpAddr::V6(v) if v.is_unicast_link_local() => Some("a link-local"),
        IpAddr::V6(v) if v.is_unspecified() => Some("an unspecified"),
        IpAddr::V6(v) if v.is_multicast() => Some("a multicast"),
        _ => None,
    }
}

/// The Warning for addresses kept off the host: each named with its reason.
pub fn warning(refused: &[Refused]) -> Option<Refusal> {
    if refused.is_empty() {
        return None;
    }
    let each: Vec<String> = refused
        .iter()
        .map(|r| format!("{} ({})", r.address, r.why))
        .collect();
    Some(Refusal::new(
        REASON,
        format!(
            "addresses not synced to the host: {}; the others are",
            each.join("; ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn known() -> Known {
        Known {
            own_pods: ["10.244.1.5", "fd00::5"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect(),
            host: vec![
                HostRange {
                    cidr: "10.96.0.0/16".parse().unwrap(),
                    what: "the host's service range 10.96.0.0/16".into(),
                },
                HostRange {
                    cidr: "10.244.0.0/16".parse().unwrap(),
                    what: "host node n1's pod range 10.244.0.0/16".into(),
                },
                HostRange {
                    cidr: "172.18.0.2".parse().unwrap(),
                    what: "host node n1's address".into(),
                },
            ],
        }
    }

    #[test]
    fn cidrs_parse_and_contain() {
        for (cidr, ip, inside) in [
            ("10.0.0.0/8", "10.255.1.2", true),
            ("10.0.0.0/8", "11.0.0.0", false),
            ("192.0.2.7", "192.0.2.7", true),
            ("192.0.2.7", "192.0.2.8", false),
            ("0.0.0.0/0", "203.0.113.9", true),
            ("0.0.0.0/0", "fd00::1", false),
            ("::/0", "fd00::1", true),
            ("fd00::/64", "fd00::ffff", true),
            ("fd00::/64", "fd00:0:0:1::1", false),
            ("10.0.0.0/8", "::ffff:10.1.2.3", true),
            ("10.1.2.3/32", "10.1.2.3", true),
        ] {
            let c: Cidr = cidr.parse().unwrap();
            assert_eq!(c.contains(ip.parse().unwrap()), inside, "{cidr} {ip}");
        }
        for bad in [
            "",
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0/8",
            "x/8",
            "10.0.0.0/-1",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert_eq!(
            "10.0.0.0/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        let e = EndpointPolicy::parse("192.0.2.0/24,nonsense").unwrap_err();
        assert!(
            e.contains("--endpoints-allowed-cidrs") && e.contains("nonsense"),
            "{e}"
        );
        assert_eq!(
            EndpointPolicy::parse(" , ").unwrap(),
            EndpointPolicy::default()
        );
    }

    #[test]
    fn own_pods_and_allowed_ranges_pass_host_ranges_never() {
        let none = EndpointPolicy::default();
        let wide = EndpointPolicy::parse("10.0.0.0/8,192.0.2.0/24,172.16.0.0/12").unwrap();
        let k = known();
        for (addr, with_none, with_wide, why) in [
            ("10.244.1.5", true, true, ""),
            ("fd00::5", true, true, ""),
            ("10.96.0.1", false, false, "the host's service range"),
            ("10.244.2.9", false, false, "pod range"),
            ("172.18.0.2", false, false, "host node n1's address"),
            (
                "192.0.2.10",
                false,
                true,
                "not a pod of this virtual cluster",
            ),
            ("10.1.2.3", false, true, "not a pod"),
            ("198.51.100.1", false, false, "not a pod"),
            ("127.0.0.1", false, false, "loopback"),
            ("169.254.169.254", false, false, "link-local"),
            ("::1", false, false, "loopback"),
            ("fe80::1", false, false, "link-local"),
            ("0.0.0.0", false, false, "unspecified"),
            ("224.0.0.1", false, false, "multicast"),
            ("::ffff:10.96.0.1", false, false, "service range"),
            ("db.example.com", false, false, "not an IP address"),
        ] {
            for (policy, ok) in [(&none, with_none), (&wide, with_wide)] {
                let r = policy.check(addr, &k);
                assert_eq!(r.is_ok(), ok, "{addr} under {policy:?}: {r:?}");
                if let Err(e) = r {
                    assert!(e.contains(why), "{addr}: {e}");
                }
            }
        }
        let e = wide.check("198.51.100.1", &k).unwrap_err();
        assert!(e.contains("10.0.0.0/8, 192.0.2.0/24"), "{e}");
    }

    #[test]
    fn endpoints_keep_what_passes_and_name_what_does_not() {
        let v: Endpoints = serde_json::from_value(json!({
            "metadata": {"name": "db", "namespace": "a"},
            "subsets": [
                {"addresses": [{"ip": "10.244.1.5"}, {"ip": "10.96.0.1"}],
                 "notReadyAddresses": [{"ip": "198.51.100.1"}], "ports": [{"port": 5432}]},
                {"addresses": [{"ip": "169.254.169.254"}], "ports": [{"port": 80}]}
            ]
        }))
        .unwrap();
        let (h, refused) = EndpointPolicy::default().filter_endpoints(v, &known());
        let subsets = h.subsets.unwrap();
        assert_eq!(subsets.len(), 1, "a subset left empty goes");
        let ips: Vec<_> = subsets[0]
            .addresses
            .iter()
            .flatten()
            .map(|a| a.ip.as_str())
            .collect();
        assert_eq!(ips, ["10.244.1.5"]);
        assert_eq!(subsets[0].not_ready_addresses, Some(vec![]));
        let names: Vec<_> = refused.iter().map(|r| r.address.as_str()).collect();
        assert_eq!(names, ["10.96.0.1", "198.51.100.1", "169.254.169.254"]);
        let w = warning(&refused).unwrap();
        assert_eq!(w.reason, REASON);
        for r in &refused {
            assert!(
                w.message.contains(&r.address) && w.message.contains(&r.why),
                "{}",
                w.message
            );
        }
        assert_eq!(warning(&[]), None);
    }

    #[test]
    fn slices_drop_refused_addresses_and_fqdn_slices_are_refused() {
        let slice = |t: &str, addrs: serde_json::Value| -> EndpointSlice {
            serde_json::from_value(json!({
                "metadata": {"name": "s", "namespace": "a"},
                "addressType": t,
                "endpoints": addrs,
            }))
            .unwrap()
        };
        let s = slice(
            "IPv4",
            json!([{"addresses": ["10.244.1.5"]}, {"addresses": ["10.96.0.1"]}]),
        );
        let (h, refused) = EndpointPolicy::default().filter_slice(s, &known()).unwrap();
        let eps = h.endpoints.unwrap();
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].addresses, ["10.244.1.5"]);
        assert_eq!(refused.len(), 1);
        let r = EndpointPolicy::default()
            .filter_slice(
                slice("FQDN", json!([{"addresses": ["kubernetes.default.svc"]}])),
                &known(),
            )
            .unwrap_err();
        assert_eq!(r.reason, REASON);
        assert!(r.message.contains("FQDN"), "{}", r.message);
    }

    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5_000))]
        #[test]
        fn parsing_never_panics(s in ".{0,40}") {
            let _ = s.parse::<Cidr>();
            let _ = EndpointPolicy::default().check(&s, &known());
        }

        #[test]
        fn a_v4_cidr_contains_exactly_its_prefix(ip in any::<u32>(), net in any::<u32>(), prefix in 0u8..=32) {
            let c: Cidr = format!("{}/{prefix}", Ipv4Addr::from(net)).parse().unwrap();
            let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
            prop_assert_eq!(c.contains(IpAddr::V4(Ipv4Addr::from(ip))), ip & mask == net & mask);
        }

        #[test]
        fn host_ranges_stay_refused_under_any_allowed_cidrs(last in 0u8..=255, prefix in 0u8..=16) {
            let wide = EndpointPolicy::new(vec![format!("10.0.0.0/{}", prefix.min(8)).parse().unwrap()]);
            let ip = format!("10.96.0.{last}");
            prop_assert!(wide.check(&ip, &known()).is_err(), "{}", ip);
        }
    }
}
