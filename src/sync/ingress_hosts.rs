//! The cluster-wide view of host ingresses the ingress host ownership
//! policy ([`crate::policy::ingress_hosts`]) compares against: a watch of
//! every host ingress, keeping only who it is, the names it claims and its
//! creation time, and whether it is this vcluster's own copy.
//!
//! It needs `list`/`watch` on ingresses cluster-wide (the chart's optional
//! ClusterRole). Without it the policy is off, a warning says so, and only
//! `--ingress-allowed-hosts` keeps tenants to their names.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::networking::v1::Ingress;
use kube::ResourceExt as _;
use kube::api::{Api, ListParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher;

use super::cache::{ListWriter, Listed};
use crate::policy::ingress_hosts::{Claim, claimed_hosts, decide, refusal};
use crate::translate::{Ownership, Refusal, VclusterName};

#[derive(Debug, Clone)]
struct Entry {
    ours: bool,
    claim: Claim,
}

/// Every host ingress's claim.
#[derive(Debug, Default)]
pub struct HostIngresses {
    on: AtomicBool,
    map: Arc<Listed<Entry>>,
    settled: super::feed::Readiness,
}

impl HostIngresses {
    /// The claims of ingresses that are not this vcluster's; `None` when the
    /// policy is off (no cluster-wide read).
    pub fn foreign(&self) -> Option<Vec<Claim>> {
        if !self.on.load(Ordering::Acquire) {
            return None;
        }
        Some(
            self.map
                .read()
                .values()
                .filter(|e| !e.ours)
                .map(|e| e.claim.clone())
                .collect(),
        )
    }

    /// The refusal of tenant object `v` (a `what`: `ingress`, `certificate`)
    /// for the names `claimed` gives it, given its host copy `h` (the names
    /// that serves and when it was created decide who came first); `None`
    /// when it may have them or the policy is off. Logs what it finds.
    pub fn check<K: kube::Resource>(
        &self,
        what: &str,
        v: &K,
        h: Option<&K>,
        claimed: impl Fn(&K) -> Vec<String>,
    ) -> Option<Refusal> {
        let foreign = self.foreign()?;
        let served = h.map(&claimed);
        let ours = h
            .zip(served.as_deref())
            .map(|(h, served)| (served, h.meta().creation_timestamp.as_ref()));
        let verdict = decide(&claimed(v), ours, &foreign);
        let key = format!("{}/{}", v.namespace().unwrap_or_default(), v.name_any());
        for o in &verdict.kept {
            tracing::warn!(what, object = %key, host = %o.host, other = %o.who, other_host = %o.theirs, "a later ingress outside this vcluster claims a host this vcluster serves; it keeps it (the host admin should resolve the other)");
        }
        for o in &verdict.refused {
            tracing::info!(what, object = %key, host = %o.host, other = %o.who, other_host = %o.theirs, "refused: the host is already served by an ingress outside this vcluster");
        }
        refusal(&verdict.refused, what)
    }

    /// A view with the policy on and these foreign claims (tests).
    #[cfg(test)]
    pub(crate) fn serving(claims: Vec<Claim>) -> Self {
        let hosts = Self::default();
        hosts.on.store(true, Ordering::Release);
        let mut map = hosts.map.write();
        for claim in claims {
            let entry = Entry { ours: false, claim };
            map.insert(entry.claim.who.clone().into(), entry);
        }
        drop(map);
        hosts
    }

    /// Waits until [`HostIngresses::start`] has returned: the policy is on
    /// with the first list in, or known to be off.
    pub async fn settled(&self) {
        self.settled.wait().await;
    }

    /// Finds out whether host ingresses can be read cluster-wide; if so,
    /// watches them and returns once the first list is in (`on_change` runs
    /// after each later change of a foreign ingress). Returns at once when
    /// they cannot be read (the policy stays off).
    pub async fn start(
        self: &Arc<Self>,
        host: kube::Client,
        vc: VclusterName,
        host_namespace: String,
        config: watcher::Config,
        on_change: impl Fn() + Send + Sync + 'static,
    ) {
        // Settled on every way out.
        let _settled = SetOnDrop(&self.settled);
        let api: Api<Ingress> = Api::all(host);
        let mut tries = 0;
        loop {
            match api.list(&ListParams::default().limit(1)).await {
                Ok(_) => break,
                Err(kube::Error::Api(s)) if s.code == 403 || s.code == 401 => {
                    tracing::warn!(reason = %s.message, "ingress host ownership is off: the syncer may not read ingresses cluster-wide (enable the chart's rbac.clusterRole.ingresses); only --ingress-allowed-hosts keeps tenants from other teams' hosts");
                    return;
                }
                Err(e) if tries < 15 => {
                    tries += 1;
                    tracing::debug!(error = %e, "cannot list host ingresses yet");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "ingress host ownership is off: host ingresses cannot be listed");
                    return;
                }
            }
        }
        let me = Arc::clone(self);
        let mut lister = ListWriter::new(Arc::clone(&self.map));
        tokio::spawn(async move {
            let own = Ownership::new(&vc);
            let stream = watcher(api, config).backoff(super::outage::WatchBackoff::default());
            futures::pin_mut!(stream);
            while let Some(ev) = stream.next().await {
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(e) => {
                        tracing::warn!(error = %e, "host ingress watch error");
                        continue;
                    }
                };
                let foreign_changed = match &ev {
                    watcher::Event::Apply(i) | watcher::Event::Delete(i) => {
                        !is_ours(&own, &host_namespace, i)
                    }
                    watcher::Event::InitDone => true,
                    _ => false,
                };
                lister.apply(
                    &ev,
                    |i| format!("{}/{}", i.namespace().unwrap_or_default(), i.name_any()).into(),
                    |i| Entry {
                        ours: is_ours(&own, &host_namespace, i),
                        claim: Claim {
                            who: format!("{}/{}", i.namespace().unwrap_or_default(), i.name_any()),
                            hosts: claimed_hosts(i),
                            created: i.metadata.creation_timestamp.clone(),
                        },
                    },
                );
                if matches!(ev, watcher::Event::InitDone) {
                    me.on.store(true, Ordering::Release);
                }
                if foreign_changed {
                    on_change();
                }
            }
        });
        self.map.wait_until_ready().await;
        tracing::info!("ingress host ownership is on (host ingresses are read cluster-wide)");
    }
}

/// Sets a readiness when dropped.
struct SetOnDrop<'a>(&'a super::feed::Readiness);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.set();
    }
}

fn is_ours(own: &Ownership<'_>, host_namespace: &str, i: &Ingress) -> bool {
    i.namespace().as_deref() == Some(host_namespace) && own.virtual_key(&i.metadata).is_some()
}
