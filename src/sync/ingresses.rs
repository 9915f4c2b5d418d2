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
use crate::sleep::Sleep;
use crate::translate::ingress::{IngressPolicy, host_ingress, sleeping, status_up};

/// The Ingress rule.
#[derive(Debug)]
pub struct IngressRule {
    policy: IngressPolicy,
    hosts: Arc<HostIngresses>,
    /// While asleep, backends are the waking page (its Service and port).
    sleep: Arc<Sleep>,
    waking_page: Option<(String, i32)>,
}

impl IngressRule {
    /// A rule enforcing `policy`, and host ownership against `hosts`.
    pub fn new(policy: IngressPolicy, hosts: Arc<HostIngresses>) -> Self {
        Self {
            policy,
            hosts,
            sleep: Arc::default(),
            waking_page: None,
        }
    }

    /// Points every backend at `waking_page` while `sleep` says the vcluster
    /// sleeps (ingresses of namespaces that stay awake excepted).
    pub fn sleeping_at(mut self, sleep: Arc<Sleep>, waking_page: Option<(String, i32)>) -> Self {
        self.sleep = sleep;
        self.waking_page = waking_page;
        self
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
        match &self.waking_page {
            Some((service, port))
                if self.sleep.asleep()
                    && !v
                        .metadata
                        .namespace
                        .as_deref()
                        .is_some_and(|ns| self.sleep.namespace_exempt(ns)) =>
            {
                Decision::Sync(sleeping(host, service, *port))
            }
            _ => Decision::Sync(host),
        }
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
    let sleep = a.shared::<Sleep>();
    let rule = IngressRule::new(a.settings().ingress_policy.clone(), Arc::clone(&hosts))
        .sleeping_at(Arc::clone(&sleep), a.settings().waking_page.clone());
    let (virt, host) = a.feeds::<IngressRule>();
    let engine = Engine::new(rule, a.ctx(), virt, host);
    // Deciding before the host's ingresses are listed (or known unreadable)
    // would let a taken host through: the engine starts after that. A change
    // of the hosts others serve looks at every ingress again.
    let (ctx, opts, on) = (a.ctx(), a.opts(), a.settings().ingress_host_ownership);
    let run = Arc::clone(&engine);
    a.spawn("Ingress", async move {
        // Backends follow the sleep state: known first, every ingress
        // looked at again when it changes.
        sleep.known().await;
        let (again, mut changes) = (Arc::clone(&run), sleep.subscribe());
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                again.enqueue_all_virtual();
            }
        });
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
