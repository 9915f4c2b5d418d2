//! Ingresses: checked against the vcluster's ingress policy, copied to the
//! host with backend Services and TLS Secrets renamed (see
//! [`crate::translate::ingress`]); the host controller's status comes up.
//! An ingress the policy refuses is not on the host and gets a Warning event.

use k8s_openapi::api::networking::v1::Ingress;

use super::{Context, Decision, Rule};
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

    fn decide(&self, ctx: &Context, v: &Ingress, _h: Option<&Ingress>) -> Decision<Ingress> {
        if v.metadata.deletion_timestamp.is_some() {
            return Decision::Remove {
                grace_seconds: None,
            };
        }
        match host_ingress(&ctx.vc, v, &self.policy) {
            Ok(i) => Decision::Sync(i),
            Err(r) => Decision::Reject(r.reason, r.message),
        }
    }

    fn status_up(&self, v: &Ingress, h: &Ingress) -> Option<serde_json::Value> {
        status_up(v, h)
    }
}
