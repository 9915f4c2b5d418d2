//! Ingresses: checked against the vcluster's ingress policy, copied to the
//! host with backend Services and TLS Secrets renamed (see
//! [`crate::translate::ingress`]); the host controller's status comes up.
//! An ingress the policy refuses is not on the host and gets a Warning event.
//! With cluster-wide reads of host ingresses, so is one that claims a host
//! another's ingress already serves ([`crate::policy::ingress_hosts`]).

use std::sync::Arc;

use k8s_openapi::api::networking::v1::Ingress;

use super::ingress_hosts::HostIngresses;
use super::{Assembly, Decision, Engine, KindSpec, Names, Rule, Side};
use crate::policy::ingress_hosts::claimed_hosts;
use crate::translate::ingress::{IngressPolicy, host_ingress, status_up};

/// The Ingress rule.
#[derive(Debug)]
pub struct IngressRule {
    policy: IngressPolicy,
    hosts: Arc<HostIngresses>,
}

impl IngressRule {
    /// A rule enforcing `policy`, and host ownership against `hosts`.
    pub fn new(policy: IngressPolicy, hosts: Arc<HostIngresses>) -> Self {
        Self { policy, hosts }
    }
}

impl Rule for IngressRule {
    type V = Ingress;
    type H = Ingress;
    const KIND: &'static str = "Ingress";

    fn decide(&self, names: &Names, v: &Ingress, h: Option<&Ingress>) -> Decision<Ingress> {
        if v.metadata.deletion_timestamp.is_some() {
            return Decision::REMOVE;
        }
        let host = match host_ingress(&names.vc, v, &self.policy) {
            Ok(i) => i,
            Err(r) => return Decision::Reject(r.reason, r.message),
        };
        if let Some(r) = self.hosts.check("ingress", v, h, claimed_hosts) {
            return Decision::Reject(r.reason, r.message);
        }
        Decision::Sync(host)
    }

    fn status_up(&self, v: &Ingress, h: &Ingress) -> Option<serde_json::Value> {
        status_up(v, h)
    }
}

/// Ingresses (and mirrors of the certificates cert-manager issues for them).
pub const KIND: KindSpec = KindSpec {
    name: "ingresses",
    needs: &["services", "secrets"],
    because: "their backends and TLS certificates",
    needs_waived_by_all_configs: false,
    register,
};

fn register(a: &mut Assembly) {
    let hosts = a.shared::<HostIngresses>();
    let rule = IngressRule::new(a.settings().ingress_policy.clone(), Arc::clone(&hosts));
    let (virt, host) = a.feeds::<IngressRule>();
    let engine = Engine::new(rule, a.ctx(), virt, host);
    // Deciding before the host's ingresses are listed (or known unreadable)
    // would let a taken host through: the engine starts after that. A change
    // of the hosts others serve looks at every ingress again.
    let (ctx, opts, on) = (a.ctx(), a.opts(), a.settings().ingress_host_ownership);
    let run = Arc::clone(&engine);
    a.spawn("Ingress", async move {
        if on {
            let again = Arc::clone(&run);
            let requeue = move || again.enqueue_all_virtual();
            let config = opts.watcher_config(Side::Host);
            let (host, vc) = (ctx.host.clone(), ctx.names.vc.clone());
            let namespace = ctx.names.host_namespace.clone();
            hosts.start(host, vc, namespace, config, requeue).await;
        }
        run.run(opts).await
    });
    super::certs::register(a);
}

#[cfg(test)]
#[path = "tests/ingresses.rs"]
mod tests;
