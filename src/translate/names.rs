//! Host names for virtual objects.
//!
//! A virtual object `name` in virtual namespace `namespace` of vcluster `vc`
//! becomes `<name>-x-<namespace>-x-<vc>` in the host namespace when that is a
//! valid DNS-1123 label that can be read back unambiguously. Otherwise the
//! host name is `<readable prefix>-<16 hex digits of SHA-256>-x-<vc>`.
//!
//! Why the two forms never collide, for one vcluster (both end in `-x-<vc>`,
//! so compare what precedes it):
//! - the plain form is used only when neither part contains `-x-`, the name
//!   does not end in `-x` and the namespace does not start with `x-`; then the
//!   text before the suffix contains `-x-` exactly once, so it splits back
//!   into one (namespace, name) pair: the plain form is injective;
//! - the hashed form contains no `-x-` before the suffix (the prefix has no
//!   `x` segment and hex digits have no `x`), so it never equals a plain one;
//! - two hashed forms are equal only if 64 bits of SHA-256 over the whole
//!   input collide.
//!
//! The host object's virtual source is never recovered by parsing its name:
//! annotations carry it (see [`super::markers`]).

use std::fmt;

/// The longest vcluster name: the hashed form needs 43 - len characters for
/// its prefix and hash, and a prefix of at least 3 keeps it readable.
pub const MAX_VCLUSTER_NAME: usize = 40;

/// The longest Kubernetes name that is a DNS-1123 label.
pub const MAX_LABEL: usize = 63;

/// Hex digits of the hash in hashed names (64 bits).
const HASH_HEX: usize = 16;

/// A validated vcluster name: a DNS-1123 label of at most
/// [`MAX_VCLUSTER_NAME`] characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VclusterName(String);

/// A vcluster name that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid vcluster name {name:?}: {why}")]
pub struct InvalidVclusterName {
    name: String,
    why: &'static str,
}

impl VclusterName {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<Self, InvalidVclusterName> {
        let err = |why| InvalidVclusterName {
            name: name.to_owned(),
            why,
        };
        if name.is_empty() {
            return Err(err("it is empty"));
        }
        if name.len() > MAX_VCLUSTER_NAME {
            return Err(err("it is longer than 40 characters"));
        }
        if !is_dns_label(name) {
            return Err(err(
                "it must be lowercase letters, digits and '-', starting and ending with a letter or digit",
            ));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VclusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// True for a DNS-1123 label: 1-63 of `[a-z0-9-]`, alphanumeric at both ends.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_LABEL
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// The plain form can be read back only under these conditions (see the
/// module documentation).
fn unambiguous(namespace: &str, name: &str) -> bool {
    !name.contains("-x-")
        && !namespace.contains("-x-")
        && !name.ends_with("-x")
        && !namespace.starts_with("x-")
}

/// The host name of virtual object `name` in virtual namespace `namespace`.
pub fn host_name(vc: &VclusterName, namespace: &str, name: &str) -> String {
    let plain = format!("{name}-x-{namespace}-x-{vc}");
    if plain.len() <= MAX_LABEL && is_dns_label(&plain) && unambiguous(namespace, name) {
        return plain;
    }
    hashed(vc, namespace, name)
}

/// The first `bytes` bytes of the SHA-256 of `data`, in lower-case hex.
pub fn sha256_hex(data: &[u8], bytes: usize) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    digest
        .as_ref()
        .iter()
        .take(bytes)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn hashed(vc: &VclusterName, namespace: &str, name: &str) -> String {
    let hex = sha256_hex(
        format!("{vc}\0{namespace}\0{name}").as_bytes(),
        HASH_HEX / 2,
    );
    // Room left for the prefix: total - "-" - hash - "-x-" - vc.
    let budget = MAX_LABEL - 1 - HASH_HEX - 3 - vc.as_str().len();
    let prefix = readable_prefix(&format!("{name}-{namespace}"), budget);
    format!("{prefix}-{hex}-x-{vc}")
}

/// Lowercase alphanumerics of `source` in runs joined by single dashes, cut
/// to `budget` characters, with no segment that is exactly `x` (so no `-x-`
/// and no trailing `-x`). Never empty.
fn readable_prefix(source: &str, budget: usize) -> String {
    let mapped: String = source
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    let truncated: String = mapped.chars().take(budget).collect();
    let joined = truncated
        .split('-')
        .filter(|seg| !seg.is_empty() && *seg != "x")
        .collect::<Vec<_>>()
        .join("-");
    if joined.is_empty() {
        "h".to_owned()
    } else {
        joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    use std::collections::HashMap;

    fn vc(s: &str) -> VclusterName {
        VclusterName::new(s).unwrap()
    }

    #[test]
    fn short_names_read_plainly() {
        let v = vc("my-vc");
        assert_eq!(host_name(&v, "default", "web-0"), "web-0-x-default-x-my-vc");
        assert_eq!(host_name(&v, "team-a", "cm"), "cm-x-team-a-x-my-vc");
    }

    #[test]
    fn table_of_hashed_cases() {
        let v = vc("my-vc");
        for (ns, name, why) in [
            ("default", "a.b", "dots are not allowed in a label"),
            ("default", &"n".repeat(60), "too long"),
            ("c", "a-x-b", "name contains -x-"),
            ("b-x-c", "a", "namespace contains -x-"),
            ("b", "a-x", "name ends with -x"),
            ("x-b", "a", "namespace starts with x-"),
        ] {
            let h = host_name(&v, ns, name);
            assert!(is_dns_label(&h), "{why}: {h}");
            assert!(h.ends_with("-x-my-vc"), "{why}: {h}");
            let body = h.trim_end_matches("-x-my-vc");
            assert!(!body.contains("-x-"), "{why}: {h}");
            assert_eq!(h, host_name(&v, ns, name), "deterministic");
        }
        // The classic ambiguity of the plain scheme is resolved.
        assert_ne!(host_name(&v, "c", "a-x-b"), host_name(&v, "b-x-c", "a"));
        assert_ne!(host_name(&v, "b", "a-x"), host_name(&v, "x-b", "a"));
        // Readable prefixes survive hashing.
        assert!(host_name(&v, "default", "frontend.v2").starts_with("frontend-v2-default-"));
    }

    #[test]
    fn vcluster_names_are_validated() {
        assert!(VclusterName::new("a").is_ok());
        assert!(VclusterName::new(&"a".repeat(40)).is_ok());
        for bad in ["", "A", "-a", "a-", "a.b", "a_b", &"a".repeat(41)] {
            let err = VclusterName::new(bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid vcluster name"), "{err}");
        }
    }

    /// Kubernetes object names: DNS-1123 subdomains up to 253 characters,
    /// biased toward the shapes that stress the scheme (`-x-`, `x-`, `-x`,
    /// dots, lengths around the limits).
    fn name_strategy() -> impl Strategy<Value = String> {
        let seg = prop_oneof![
            3 => "[a-z0-9]{1,12}",
            1 => Just("x".to_owned()),
            1 => "[a-z0-9]{40,63}",
        ];
        (
            prop::collection::vec(seg, 1..8),
            prop::collection::vec(prop_oneof!["-", "\\."], 8),
        )
            .prop_map(|(segs, seps)| {
                let mut out = String::new();
                for (i, s) in segs.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&seps[i % seps.len()]);
                    }
                    out.push_str(s);
                }
                out.chars().take(253).collect::<String>()
            })
            .prop_filter("subdomain ends alphanumeric", |s| {
                s.ends_with(|c: char| c.is_ascii_alphanumeric())
            })
    }

    /// Namespace names: DNS-1123 labels up to 63 characters.
    fn namespace_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => "[a-z0-9]{1,10}",
            1 => "[a-z0-9]{1,5}(-x-[a-z0-9]{1,5}){0,2}",
            1 => "x-[a-z0-9]{1,10}",
            1 => "[a-z0-9]{63}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5_000))]
        #[test]
        fn host_names_are_valid_labels_with_the_vcluster_suffix(
            ns in namespace_strategy(),
            name in name_strategy(),
            vc_name in "[a-z]([a-z0-9-]{0,38}[a-z0-9])?",
        ) {
            let v = vc(&vc_name);
            let h = host_name(&v, &ns, &name);
            prop_assert!(is_dns_label(&h), "{h}");
            let suffix = format!("-x-{vc_name}");
            prop_assert!(h.ends_with(&suffix), "{h}");
            let plain = format!("{name}-x-{ns}-x-{vc_name}");
            if h != plain {
                let body = &h[..h.len() - suffix.len()];
                prop_assert!(!body.contains("-x-"), "{h}");
            }
        }
    }

    /// 200,000 random (namespace, name) pairs, maximum lengths included:
    /// distinct inputs get distinct host names.
    #[test]
    fn distinct_inputs_never_collide() {
        let v = vc("vcluster-with-a-fairly-long-name-0123456");
        assert_eq!(v.as_str().len(), MAX_VCLUSTER_NAME);
        let strategy = (namespace_strategy(), name_strategy());
        let mut runner = TestRunner::deterministic();
        let mut seen: HashMap<String, (String, String)> = HashMap::new();
        let mut hashed = 0usize;
        let mut total = 0usize;
        while total < 200_000 {
            let (ns, name) = strategy.new_tree(&mut runner).unwrap().current();
            let h = host_name(&v, &ns, &name);
            assert!(h.len() <= MAX_LABEL, "{h}");
            if !h.starts_with(&format!("{name}-x-")) {
                hashed += 1;
            }
            match seen.get(&h) {
                Some(prev) if *prev != (ns.clone(), name.clone()) => {
                    panic!("{h} for both {prev:?} and {:?}", (ns, name))
                }
                Some(_) => {}
                None => {
                    seen.insert(h, (ns, name));
                }
            }
            total += 1;
        }
        // Both forms are exercised in bulk.
        assert!(
            hashed > 50_000 && seen.len() - hashed > 10_000,
            "hashed {hashed} of {}",
            seen.len()
        );
    }
}
