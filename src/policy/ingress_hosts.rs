//! Ingress host ownership on a shared ingress controller. A tenant ingress
//! for a host name that an ingress this vcluster does not own already
//! serves (another team, another vcluster) would be merged into, or take
//! over, that host; so it is refused, with a Warning naming the host and the
//! overlapping name (not whose it is: that belongs to another tenant).
//!
//! - **Names an ingress claims**: every rule host, a rule without host or a
//!   default backend (the controller's catch-all, written `""` here), every
//!   TLS host and cert-manager's `cert-manager.io/common-name` annotation (the
//!   names of the certificate cert-manager would request for it).
//! - **Overlap**: exact names equal (case-insensitively, a trailing dot
//!   ignored); a wildcard `*.example.com` covers every name below
//!   `example.com` at any depth, as nginx matches it (broader than the
//!   Ingress API's one label, so nothing a shared controller merges slips
//!   through); two wildcards overlap when one suffix is below or equal to the
//!   other. The catch-all overlaps only the catch-all.
//! - **First come, first served, stable across restarts**: a host this
//!   vcluster's host copy already serves stays when a foreign ingress created
//!   no earlier than that copy claims it too (reported as `kept`, for the
//!   syncer's log: the host admin's problem); a host the copy does not serve
//!   yet, or that a foreign ingress created earlier claims, is refused. Only
//!   API state is compared (creation times), so a restarted syncer decides
//!   the same.

use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::translate::Refusal;

/// cert-manager's ingress annotation naming the certificate's common name.
pub const COMMON_NAME_ANNOTATION: &str = "cert-manager.io/common-name";

/// The Warning reason of a refused ingress.
pub const REASON: &str = "IngressHostConflict";

/// Names an ingress from elsewhere serves on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// Whose (`namespace/name`, for the syncer's log only).
    pub who: String,
    /// The names it claims ([`claimed_hosts`]).
    pub hosts: Vec<String>,
    /// When it was created.
    pub created: Option<Time>,
}

/// One overlap between a wanted host and a foreign claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap {
    /// The tenant's host.
    pub host: String,
    /// The foreign name it overlaps.
    pub theirs: String,
    /// The foreign ingress (`namespace/name`).
    pub who: String,
}

/// The outcome for one ingress.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Overlaps that refuse the ingress.
    pub refused: Vec<Overlap>,
    /// Overlaps with later foreign ingresses over hosts this vcluster keeps.
    pub kept: Vec<Overlap>,
}

fn normal(h: &str) -> String {
    h.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// Every name `i` claims, lower-cased, without repeats; `""` for the
/// catch-all (a rule without host, a default backend).
pub fn claimed_hosts(i: &Ingress) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(spec) = i.spec.as_ref() {
        if spec.default_backend.is_some() {
            out.push(String::new());
        }
        for r in spec.rules.iter().flatten() {
            out.push(normal(r.host.as_deref().unwrap_or_default()));
        }
        for t in spec.tls.iter().flatten() {
            out.extend(t.hosts.iter().flatten().map(|h| normal(h)));
        }
    }
    if let Some(cn) = i
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(COMMON_NAME_ANNOTATION))
        .filter(|cn| !cn.trim().is_empty())
    {
        out.push(normal(cn));
    }
    out.sort();
    out.dedup();
    out
}

/// True when a request for some name could be served by both `a` and `b`.
pub fn overlaps(a: &str, b: &str) -> bool {
    let (a, b) = (normal(a), normal(b));
    if a.is_empty() || b.is_empty() {
        return a == b;
    }
    let below = |name: &str, suffix: &str| {
        name.strip_suffix(suffix)
            .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.'))
    };
    match (a.strip_prefix("*."), b.strip_prefix("*.")) {
        (None, None) => a == b,
        (Some(s), None) => below(&b, s),
        (None, Some(t)) => below(&a, t),
        (Some(s), Some(t)) => s == t || below(s, t) || below(t, s),
    }
}

/// Decides the `wanted` names of a tenant ingress against the `foreign`
/// claims, given this vcluster's current host copy (`ours`: the names it
/// serves and when it was created).
pub fn decide(
    wanted: &[String],
    ours: Option<(&[String], Option<&Time>)>,
    foreign: &[Claim],
) -> Verdict {
    let mut v = Verdict::default();
    for host in wanted {
        for f in foreign {
            let Some(theirs) = f.hosts.iter().find(|t| overlaps(host, t)) else {
                continue;
            };
            let o = Overlap {
                host: host.clone(),
                theirs: theirs.clone(),
                who: f.who.clone(),
            };
            // Ours first: our copy serves this very name and is no younger.
            let first = ours.is_some_and(|(served, created)| {
                served.contains(host)
                    && match (created, f.created.as_ref()) {
                        (Some(mine), Some(theirs)) => mine <= theirs,
                        (Some(_), None) => true,
                        (None, _) => false,
                    }
            });
            if first {
                v.kept.push(o);
            } else {
                v.refused.push(o);
            }
        }
    }
    v
}

fn shown(h: &str) -> &str {
    if h.is_empty() { "(any host)" } else { h }
}

/// The Warning for refused overlaps of a tenant's `what` (`ingress`,
/// `certificate`; `None` when there are none).
pub fn refusal(refused: &[Overlap], what: &str) -> Option<Refusal> {
    if refused.is_empty() {
        return None;
    }
    let each: Vec<String> = refused
        .iter()
        .map(|o| {
            if o.host == o.theirs {
                format!("{} is already served", shown(&o.host))
            } else {
                format!(
                    "{} overlaps {}, already served",
                    shown(&o.host),
                    shown(&o.theirs)
                )
            }
        })
        .collect();
    Some(Refusal::new(
        REASON,
        format!(
            "{} on the host by an ingress outside this virtual cluster (first come, first served); the {what} is not synced",
            each.join("; ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(s: &str) -> Time {
        serde_json::from_value(json!(s)).unwrap()
    }

    #[test]
    fn overlap_of_exact_and_wildcard_names() {
        for (a, b, want) in [
            ("a.example.com", "a.example.com", true),
            ("A.Example.com.", "a.example.com", true),
            ("a.example.com", "b.example.com", false),
            ("*.example.com", "a.example.com", true),
            ("*.example.com", "x.a.example.com", true),
            ("*.example.com", "example.com", false),
            ("*.example.com", "badexample.com", false),
            ("*.example.com", "*.example.com", true),
            ("*.example.com", "*.a.example.com", true),
            ("*.a.example.com", "*.example.com", true),
            ("*.a.example.com", "*.b.example.com", false),
            ("*.example.com", "*.example.org", false),
            ("", "", true),
            ("", "a.example.com", false),
            ("", "*.example.com", false),
        ] {
            assert_eq!(overlaps(a, b), want, "{a} vs {b}");
            assert_eq!(overlaps(b, a), want, "{b} vs {a}");
        }
    }

    #[test]
    fn every_claimed_name_is_collected() {
        let i: Ingress = serde_json::from_value(json!({
            "metadata": {"name": "x", "namespace": "a", "annotations": {COMMON_NAME_ANNOTATION: "CN.example.com"}},
            "spec": {
                "defaultBackend": {"service": {"name": "s", "port": {"number": 80}}},
                "tls": [{"hosts": ["t.example.com", "A.example.com"]}],
                "rules": [{"host": "a.example.com"}, {"http": {"paths": []}}]
            }
        }))
        .unwrap();
        assert_eq!(
            claimed_hosts(&i),
            ["", "a.example.com", "cn.example.com", "t.example.com"]
        );
    }

    #[test]
    fn first_come_first_served_by_creation_time() {
        let foreign = |created: &str| Claim {
            who: "team-b/shop".into(),
            hosts: vec!["*.shop.example.com".into()],
            created: Some(t(created)),
        };
        let wanted = vec![
            "www.shop.example.com".to_owned(),
            "mine.example.com".to_owned(),
        ];
        // No copy on the host yet: refused, naming the overlap.
        let v = decide(&wanted, None, &[foreign("2026-01-01T00:00:00Z")]);
        assert_eq!(v.refused.len(), 1);
        assert_eq!(v.refused[0].theirs, "*.shop.example.com");
        let r = refusal(&v.refused, "ingress").unwrap();
        assert_eq!(r.reason, REASON);
        assert!(
            r.message
                .contains("www.shop.example.com overlaps *.shop.example.com"),
            "{}",
            r.message
        );
        assert!(
            !r.message.contains("team-b"),
            "another tenant's name stays in the log: {}",
            r.message
        );
        // Our copy serves it and came first: kept, the later one reported.
        let served = vec!["www.shop.example.com".to_owned()];
        let mine = t("2026-01-01T00:00:00Z");
        let v = decide(
            &wanted,
            Some((&served, Some(&mine))),
            &[foreign("2026-02-01T00:00:00Z")],
        );
        assert!(v.refused.is_empty(), "{v:?}");
        assert_eq!(v.kept.len(), 1);
        // Same creation second: still ours (stable).
        let v = decide(
            &wanted,
            Some((&served, Some(&mine))),
            &[foreign("2026-01-01T00:00:00Z")],
        );
        assert!(v.refused.is_empty());
        // Theirs is older than our copy: refused.
        let v = decide(
            &wanted,
            Some((&served, Some(&mine))),
            &[foreign("2025-12-01T00:00:00Z")],
        );
        assert_eq!(v.refused.len(), 1);
        // A host our copy does not serve yet: refused even if the copy is old.
        let v = decide(
            &["new.shop.example.com".to_owned()],
            Some((&served, Some(&mine))),
            &[foreign("2026-02-01T00:00:00Z")],
        );
        assert_eq!(v.refused.len(), 1);
        assert_eq!(refusal(&[], "ingress"), None);
    }

    use proptest::prelude::*;

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z]{1,3}(\\.[a-z]{1,3}){0,3}",
            "\\*(\\.[a-z]{1,3}){1,3}",
            Just(String::new()),
            ".{0,12}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5_000))]
        #[test]
        fn overlap_is_symmetric_reflexive_and_total(a in name(), b in name()) {
            prop_assert_eq!(overlaps(&a, &b), overlaps(&b, &a));
            prop_assert!(overlaps(&a, &a), "{}", a);
        }

        #[test]
        fn a_wildcard_covers_every_name_below_it(
            suffix in "[a-z]{1,3}(\\.[a-z]{1,3}){0,2}",
            labels in "[a-z]{1,3}(\\.[a-z]{1,3}){0,2}",
        ) {
            let wild = format!("*.{suffix}");
            let below = format!("{labels}.{suffix}");
            prop_assert!(overlaps(&wild, &below));
            prop_assert!(!overlaps(&wild, &suffix), "the suffix itself is not below it");
            // Refused unless ours, whatever the times.
            let claim = Claim { who: "x/y".into(), hosts: vec![wild.clone()], created: None };
            prop_assert_eq!(decide(std::slice::from_ref(&below), None, &[claim]).refused.len(), 1);
        }
    }
}
