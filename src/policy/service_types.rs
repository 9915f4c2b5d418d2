//! Which Service types a tenant may create on the host
//! (`--allowed-service-types`). A `LoadBalancer` provisions a cloud load
//! balancer and a `NodePort` opens a port on every node, both paid for or
//! shared by the whole host; the platform team decides which a vcluster
//! gets. A refused Service is not on the host and gets a Warning event.
//!
//! The types are checked as the tenant wrote them: a `LoadBalancer` needs
//! `LoadBalancer` allowed (not `NodePort` too, although the host allocates
//! node ports for it unless `allocateLoadBalancerNodePorts` is false).

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use k8s_openapi::api::core::v1::Service;

use crate::translate::Refusal;

/// A Service type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServiceType {
    /// A cluster IP (also headless Services); the default when unset.
    ClusterIP,
    /// A port on every node.
    NodePort,
    /// An external load balancer.
    LoadBalancer,
    /// A DNS alias.
    ExternalName,
}

impl ServiceType {
    /// Every type, in the API's order.
    pub const ALL: [ServiceType; 4] = [
        ServiceType::ClusterIP,
        ServiceType::NodePort,
        ServiceType::LoadBalancer,
        ServiceType::ExternalName,
    ];

    /// The type of `svc` (unset means ClusterIP, as the API defaults it);
    /// `Err` with the value for a type the API does not know.
    pub fn of(svc: &Service) -> Result<Self, String> {
        match svc.spec.as_ref().and_then(|s| s.type_.as_deref()) {
            None | Some("") => Ok(ServiceType::ClusterIP),
            Some(t) => t.parse(),
        }
    }
}

impl fmt::Display for ServiceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
            ServiceType::ExternalName => "ExternalName",
        })
    }
}

impl FromStr for ServiceType {
    type Err = String;
    /// The API's spelling, case-insensitively (`clusterip` is `ClusterIP`).
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        Self::ALL
            .into_iter()
            .find(|t| t.to_string().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!(
                    "unknown Service type {s:?} (ClusterIP, NodePort, LoadBalancer or ExternalName)"
                )
            })
    }
}

/// The Service types a vcluster may create on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceTypes(BTreeSet<ServiceType>);

impl Default for ServiceTypes {
    /// Every type (the syncer's default).
    fn default() -> Self {
        Self(ServiceType::ALL.into_iter().collect())
    }
}

impl FromStr for ServiceTypes {
    type Err = String;
    /// A comma-separated list; empty items are ignored, an empty list is refused.
    fn from_str(list: &str) -> Result<Self, String> {
        let set = list
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(str::parse)
            .collect::<Result<BTreeSet<_>, _>>()?;
        if set.is_empty() {
            return Err("--allowed-service-types: name at least one Service type".into());
        }
        Ok(Self(set))
    }
}

impl fmt::Display for ServiceTypes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&names.join(","))
    }
}

impl ServiceTypes {
    /// True when `t` is allowed.
    pub fn allows(&self, t: ServiceType) -> bool {
        self.0.contains(&t)
    }

    /// Checks `svc`: `Err` with the Warning the tenant sees when its type is
    /// not allowed here.
    pub fn check(&self, svc: &Service) -> Result<(), Refusal> {
        match ServiceType::of(svc) {
            Ok(t) if self.allows(t) => Ok(()),
            Ok(t) => Err(Refusal::new(
                "ServiceTypeNotAllowed",
                format!(
                    "Service type {t} is not allowed in this virtual cluster (allowed: {}); it is not created on the host",
                    self.0
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
            Err(e) => Err(Refusal::new("ServiceTypeNotAllowed", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(type_: Option<&str>) -> Service {
        let mut spec = json!({"ports": [{"port": 80}]});
        if let Some(t) = type_ {
            spec["type"] = json!(t);
        }
        serde_json::from_value(json!({"metadata": {"name": "s", "namespace": "a"}, "spec": spec}))
            .unwrap()
    }

    #[test]
    fn lists_parse_case_insensitively_and_refuse_unknown_types() {
        let t: ServiceTypes = "ClusterIP, externalname,".parse().unwrap();
        assert_eq!(t.to_string(), "ClusterIP,ExternalName");
        assert_eq!(
            ServiceTypes::default().to_string(),
            "ClusterIP,NodePort,LoadBalancer,ExternalName"
        );
        let e = "ClusterIP,Ingress".parse::<ServiceTypes>().unwrap_err();
        assert!(
            e.contains("\"Ingress\"") && e.contains("LoadBalancer"),
            "{e}"
        );
        assert!("".parse::<ServiceTypes>().is_err());
        assert!(" , ".parse::<ServiceTypes>().is_err());
    }

    #[test]
    fn each_type_is_checked_as_written() {
        let isolated: ServiceTypes = "ClusterIP,ExternalName".parse().unwrap();
        for (t, ok) in [
            (None, true),
            (Some(""), true),
            (Some("ClusterIP"), true),
            (Some("ExternalName"), true),
            (Some("NodePort"), false),
            (Some("LoadBalancer"), false),
            (Some("Bogus"), false),
        ] {
            let r = isolated.check(&svc(t));
            assert_eq!(r.is_ok(), ok, "{t:?}: {r:?}");
            if let Err(r) = r {
                assert_eq!(r.reason, "ServiceTypeNotAllowed");
                assert!(r.message.contains(t.unwrap()), "{}", r.message);
            }
        }
        let r = isolated.check(&svc(Some("LoadBalancer"))).unwrap_err();
        assert!(
            r.message.contains("allowed: ClusterIP, ExternalName"),
            "{}",
            r.message
        );
        for t in ServiceType::ALL {
            assert!(
                ServiceTypes::default()
                    .check(&svc(Some(&t.to_string())))
                    .is_ok()
            );
        }
    }
}
