//! Ingresses: checked against the vcluster's ingress policy, copied to the
//! host with backend Services and TLS Secrets renamed (see
//! [`crate::translate::ingress`]); the host controller's status comes up.
//! An ingress the policy refuses is not on the host and gets a Warning event.

use k8s_openapi::api::networking::v1::Ingress;

use k8s_openapi::api::core::v1::Secret;

use super::{Assembly, Decision, KindSpec, Names, Rule, Side};
use crate::translate::ingress::{IngressPolicy, host_ingress, status_up};

/// The Ingress rule.
#[derive(Debug)]
pub struct IngressRule {
    policy: IngressPolicy,
}

impl IngressRule {
    /// A rule enforcing `policy`.
    pub fn new(policy: IngressPolicy) -> Self {
        Self { policy }
    }
}

impl Rule for IngressRule {
    type V = Ingress;
    type H = Ingress;
    const KIND: &'static str = "Ingress";

    fn decide(&self, names: &Names, v: &Ingress, _h: Option<&Ingress>) -> Decision<Ingress> {
        if v.metadata.deletion_timestamp.is_some() {
            return Decision::REMOVE;
        }
        match host_ingress(&names.vc, v, &self.policy) {
            Ok(i) => Decision::Sync(i),
            Err(r) => Decision::Reject(r.reason, r.message),
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
    let engine = a.engine(IngressRule::new(a.settings().ingress_policy.clone()));
    let sources = super::certs::Sources {
        ingresses: engine.virtual_store(),
        host_ingresses: engine.host_store(),
        secrets: a.cache::<Secret>(Side::Virtual),
        ready: vec![
            a.ready_of::<Ingress>(Side::Virtual),
            a.ready_of::<Secret>(Side::Virtual),
        ],
    };
    let (ctx, opts) = (a.ctx(), a.opts());
    a.spawn("cert-mirrors", super::certs::run(ctx, sources, opts));
}

#[cfg(test)]
#[path = "tests/ingresses.rs"]
mod tests;
