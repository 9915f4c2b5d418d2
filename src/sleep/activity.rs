//! Which front-door requests count as activity: those of a person. Pure
//! (the classification) plus one atomic clock (the last counted request),
//! so the front door pays a few string comparisons and an atomic store per
//! request.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use http::HeaderMap;

use crate::proxy::authn::Identity;

/// A request carrying this header (any value) never counts as activity.
pub const OPT_OUT_HEADER: &str = "x-vcluster-no-activity";

/// Groups whose requests never count, whatever the configuration: the
/// virtual cluster's own components.
const SYSTEM_GROUPS: &[&str] = &["system:nodes"];

/// Users whose requests never count: the control plane's components and the
/// syncer's own identities.
const SYSTEM_USERS: &[&str] = &[
    "system:apiserver",
    "system:kube-controller-manager",
    "system:kube-scheduler",
    "system:kube-proxy",
    "system:vcluster-syncer",
    "vcluster-syncer",
];

/// What counts as activity (`--sleep-*` flags).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActivityPolicy {
    /// Count requests of the virtual cluster's service accounts too (off by
    /// default: in-cluster controllers would keep it awake forever).
    pub count_service_accounts: bool,
    /// User agents that never count: a pattern ending in `*` matches by
    /// prefix, others exactly (case-insensitively).
    pub ignored_user_agents: Vec<String>,
    /// Groups whose members' requests never count.
    pub ignored_groups: Vec<String>,
}

/// Why a request does not count, or that it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A person's request: it counts.
    Counts,
    /// A service account of the virtual cluster.
    ServiceAccount,
    /// A control-plane component or the syncer.
    System,
    /// An ignored user agent.
    UserAgent,
    /// A member of an ignored group.
    Group,
    /// A watch (kept open by controllers and dashboards).
    Watch,
    /// The opt-out header.
    OptOut,
}

fn agent_matches(pattern: &str, agent: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => agent
            .get(..prefix.len())
            .is_some_and(|a| a.eq_ignore_ascii_case(prefix)),
        None => agent.eq_ignore_ascii_case(pattern),
    }
}

/// True for a watch request: `watch=true|1` in the query, or a legacy
/// `/watch/` path.
fn is_watch(path: &str, query: Option<&str>) -> bool {
    let watch_param = query.is_some_and(|q| {
        q.split('&')
            .any(|kv| matches!(kv, "watch=true" | "watch=1" | "watch=True"))
    });
    watch_param || path.contains("/watch/")
}

impl ActivityPolicy {
    /// Classifies one authenticated request.
    pub fn classify(
        &self,
        id: &Identity,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Verdict {
        if headers.contains_key(OPT_OUT_HEADER) {
            return Verdict::OptOut;
        }
        if SYSTEM_USERS.contains(&id.user.as_str())
            || id
                .groups
                .iter()
                .any(|g| SYSTEM_GROUPS.contains(&g.as_str()))
        {
            return Verdict::System;
        }
        if !self.count_service_accounts
            && (id.user.starts_with("system:serviceaccount:")
                || id.groups.iter().any(|g| g == "system:serviceaccounts"))
        {
            return Verdict::ServiceAccount;
        }
        if id
            .groups
            .iter()
            .any(|g| self.ignored_groups.iter().any(|i| i == g))
        {
            return Verdict::Group;
        }
        if let Some(agent) = headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            && self
                .ignored_user_agents
                .iter()
                .any(|p| agent_matches(p, agent))
        {
            return Verdict::UserAgent;
        }
        if is_watch(path, query) {
            return Verdict::Watch;
        }
        Verdict::Counts
    }
}

/// The last counted request (Unix seconds), and whether the state loop must
/// look now (a request came while asleep, or the last activity written is a
/// minute old).
#[derive(Debug, Default)]
pub struct Activity {
    last: AtomicI64,
    /// The last activity time written to the host (Unix seconds).
    written: AtomicI64,
    /// Asleep, as the state loop last saw it (the front door asks for a wake
    /// only then).
    pub(super) asleep: AtomicBool,
    pub(super) kick: tokio::sync::Notify,
}

/// How often at most the last activity is written to the host.
pub const WRITE_EVERY_SECONDS: i64 = 60;

impl Activity {
    /// Records a counted request at `now` (Unix seconds); asks the state
    /// loop to wake the cluster, or to write the time down, when due. Never
    /// waits.
    pub fn touch(&self, now: i64) {
        if self.last.fetch_max(now, Ordering::Relaxed) < now {
            crate::sync::metrics::global().active_at(now);
        }
        if self.asleep.load(Ordering::Relaxed)
            || now - self.written.load(Ordering::Relaxed) >= WRITE_EVERY_SECONDS
        {
            self.kick.notify_one();
        }
    }

    /// The last counted request (Unix seconds; 0: none yet).
    pub fn last(&self) -> i64 {
        self.last.load(Ordering::Relaxed)
    }

    /// Takes `at` (read back from the host) as known activity.
    pub(super) fn restore(&self, at: i64) {
        if self.last.fetch_max(at, Ordering::Relaxed) < at {
            crate::sync::metrics::global().active_at(at);
        }
        self.written.fetch_max(at, Ordering::Relaxed);
    }

    /// Takes `now` as activity not written down yet (a cluster with no
    /// recorded activity: its life starts now).
    pub(super) fn restore_unwritten(&self, now: i64) {
        self.last.fetch_max(now, Ordering::Relaxed);
    }

    pub(super) fn written_at(&self, at: i64) {
        self.written.fetch_max(at, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn person() -> Identity {
        Identity {
            user: "alice".into(),
            groups: vec!["team-a".into(), "system:authenticated".into()],
            ..Identity::default()
        }
    }

    fn headers(agent: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::USER_AGENT,
            HeaderValue::from_str(agent).unwrap(),
        );
        h
    }

    #[test]
    fn only_a_persons_request_counts() {
        let policy = ActivityPolicy {
            ignored_user_agents: vec!["argocd/*".into(), "Prometheus".into()],
            ignored_groups: vec!["bots".into()],
            ..ActivityPolicy::default()
        };
        let kubectl = headers("kubectl/v1.36.3 (linux/amd64) kubernetes/abc");
        let path = "/api/v1/namespaces/default/pods";
        assert_eq!(
            policy.classify(&person(), path, None, &kubectl),
            Verdict::Counts
        );
        let sa = Identity {
            user: "system:serviceaccount:default:ci".into(),
            groups: vec!["system:serviceaccounts".into()],
            ..Identity::default()
        };
        assert_eq!(
            policy.classify(&sa, path, None, &kubectl),
            Verdict::ServiceAccount
        );
        let counted_sa = ActivityPolicy {
            count_service_accounts: true,
            ..policy.clone()
        };
        assert_eq!(
            counted_sa.classify(&sa, path, None, &kubectl),
            Verdict::Counts
        );
        let node = Identity {
            user: "system:node:n1".into(),
            groups: vec!["system:nodes".into()],
            ..Identity::default()
        };
        assert_eq!(
            counted_sa.classify(&node, path, None, &kubectl),
            Verdict::System
        );
        for agent in ["argocd/v2.9", "ArgoCD/x", "prometheus"] {
            assert_eq!(
                policy.classify(&person(), path, None, &headers(agent)),
                Verdict::UserAgent,
                "{agent}"
            );
        }
        assert_eq!(
            policy.classify(&person(), path, None, &headers("Prometheus/2")),
            Verdict::Counts
        );
        let bot = Identity {
            groups: vec!["bots".into()],
            ..person()
        };
        assert_eq!(policy.classify(&bot, path, None, &kubectl), Verdict::Group);
        for (p, q) in [
            (path, Some("watch=true&resourceVersion=1")),
            (path, Some("labelSelector=a&watch=1")),
            ("/api/v1/watch/namespaces/default/pods", None),
        ] {
            assert_eq!(
                policy.classify(&person(), p, q, &kubectl),
                Verdict::Watch,
                "{p}?{q:?}"
            );
        }
        assert_eq!(
            policy.classify(&person(), path, Some("watch=false"), &kubectl),
            Verdict::Counts
        );
        let mut opt_out = kubectl.clone();
        opt_out.insert(OPT_OUT_HEADER, HeaderValue::from_static("1"));
        assert_eq!(
            policy.classify(&person(), path, None, &opt_out),
            Verdict::OptOut
        );
    }

    /// Whether the state loop was asked to look (a stored permit).
    fn kicked(a: &Activity) -> bool {
        use futures::FutureExt as _;
        a.kick.notified().now_or_never().is_some()
    }

    #[test]
    fn activity_asks_the_loop_only_when_asleep_or_a_write_is_due() {
        let a = Activity::default();
        a.restore(1_000);
        a.touch(1_010);
        assert_eq!(a.last(), 1_010);
        assert!(!kicked(&a));
        a.touch(1_005);
        assert_eq!(a.last(), 1_010, "time never goes back");
        a.touch(1_061);
        assert!(kicked(&a), "a minute since the last write");
        a.written_at(1_061);
        a.touch(1_062);
        assert!(!kicked(&a));
        a.asleep.store(true, Ordering::Relaxed);
        a.touch(1_063);
        assert!(kicked(&a), "asleep: wake it");
    }
}
