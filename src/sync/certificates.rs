//! Tenant-written cert-manager Certificates (`--sync certificates`, when the
//! host runs cert-manager): checked and translated by
//! [`crate::translate::certificate`], issued by the host's cert-manager, their
//! status brought up here and their Secrets by the certificate mirror
//! ([`super::certs`]). A Certificate naming the tenant's own issuer stays
//! inside the vcluster; a refused one gets a Warning event and nothing on the
//! host. With cluster-wide reads of host ingresses, a name another's ingress
//! already serves is refused as for ingresses.
//!
//! The virtual API gets the kind from the host: before the engine starts,
//! the host's CustomResourceDefinition `certificates.cert-manager.io` is
//! copied into the virtual cluster (marked as a mirror; a definition the
//! tenant installed itself is left alone). Until the host has it, the kind
//! waits, `/readyz` names it and the log says why.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceConversion, CustomResourceDefinition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;

use super::certs::{MIRROR_LABEL, MIRROR_OF_ANNOTATION, is_mirror};
use super::ingress_hosts::HostIngresses;
use super::{Assembly, Context, Decision, KindSpec, Names, Rule};
use crate::translate::certificate::{
    self, Certificate, CertificatePolicy, host_certificate, status_up,
};

/// The definition the virtual API needs.
pub const CRD_NAME: &str = "certificates.cert-manager.io";
/// How often a missing or unreadable host definition is looked for again.
const CRD_RETRY: Duration = Duration::from_secs(15);

/// The Certificate rule.
#[derive(Debug)]
pub struct CertificateRule {
    policy: CertificatePolicy,
    hosts: Arc<HostIngresses>,
}

impl CertificateRule {
    /// A rule enforcing `policy`, and host ownership against `hosts`.
    pub fn new(policy: CertificatePolicy, hosts: Arc<HostIngresses>) -> Self {
        Self { policy, hosts }
    }
}

impl Rule for CertificateRule {
    type V = Certificate;
    type H = Certificate;
    const KIND: &'static str = "Certificate";

    fn decide(
        &self,
        names: &Names,
        v: &Certificate,
        h: Option<&Certificate>,
    ) -> Decision<Certificate> {
        if v.metadata.deletion_timestamp.is_some() {
            return Decision::REMOVE;
        }
        let host = match host_certificate(&names.vc, v, &self.policy) {
            Ok(Some(c)) => c,
            // The tenant's own issuer: its cert-manager inside handles it.
            Ok(None) => return Decision::REMOVE,
            Err(r) => return Decision::Reject(r.reason, r.message),
        };
        if let Some(r) = self.hosts.check("certificate", v, h, certificate::names) {
            return Decision::Reject(r.reason, r.message);
        }
        Decision::Sync(host)
    }

    fn status_up(&self, v: &Certificate, h: &Certificate) -> Option<serde_json::Value> {
        status_up(v, h)
    }
}

/// Tenant Certificates issued by the host's cert-manager (opt-in).
pub const KIND: KindSpec = KindSpec {
    name: "certificates",
    needs: &[],
    because: "",
    needs_waived_by_all_configs: false,
    register,
};

fn register(a: &mut Assembly) {
    let hosts = a.shared::<HostIngresses>();
    let policy = CertificatePolicy {
        cluster_issuers: a.settings().certificate_cluster_issuers.clone(),
        hosts: a.settings().ingress_policy.clone(),
    };
    // The ingress kind starts the host-ingress view; decide once it has.
    let owned_hosts = a.selected("ingresses") && a.settings().ingress_host_ownership;
    let (ctx, view) = (a.ctx(), Arc::clone(&hosts));
    a.engine_after(CertificateRule::new(policy, hosts), async move {
        copy_definition(&ctx).await;
        if owned_hosts {
            view.settled().await;
        }
    });
    super::certs::register(a);
}

/// The virtual form of the host's definition: the same schema and versions,
/// without the host's conversion webhook (its Service is not in the
/// vcluster), marked as a mirror.
fn virtual_definition(host: &CustomResourceDefinition) -> CustomResourceDefinition {
    let mut spec = host.spec.clone();
    spec.conversion = Some(CustomResourceConversion {
        strategy: "None".to_owned(),
        webhook: None,
    });
    CustomResourceDefinition {
        metadata: ObjectMeta {
            name: Some(CRD_NAME.to_owned()),
            labels: Some([(MIRROR_LABEL.to_owned(), "true".to_owned())].into()),
            annotations: Some([(MIRROR_OF_ANNOTATION.to_owned(), CRD_NAME.to_owned())].into()),
            ..ObjectMeta::default()
        },
        spec,
        status: None,
    }
}

/// Copies the host's Certificate definition into the virtual API (again on
/// each start, so a host upgrade reaches it), unless the tenant installed
/// its own; returns once the virtual API serves the kind.
async fn copy_definition(ctx: &Context) {
    let host: Api<CustomResourceDefinition> = Api::all(ctx.host.clone());
    let virt: Api<CustomResourceDefinition> = Api::all(ctx.virt.clone());
    loop {
        match copy_once(&host, &virt).await {
            Ok(()) => return,
            Err(why) => tracing::error!(crd = CRD_NAME, "Certificates are not synced yet: {why}"),
        }
        tokio::time::sleep(CRD_RETRY).await;
    }
}

async fn copy_once(
    host: &Api<CustomResourceDefinition>,
    virt: &Api<CustomResourceDefinition>,
) -> Result<(), String> {
    let theirs = match host.get_opt(CRD_NAME).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return Err(
                "the host has no cert-manager (its CustomResourceDefinition is not there)"
                    .to_owned(),
            );
        }
        Err(kube::Error::Api(s)) if s.code == 403 => {
            return Err(format!(
                "the syncer may not read the host's CustomResourceDefinition (the chart's sync.certificates RBAC): {}",
                s.message
            ));
        }
        Err(e) => {
            return Err(format!(
                "cannot read the host's CustomResourceDefinition: {e}"
            ));
        }
    };
    match virt.get_opt(CRD_NAME).await {
        Ok(Some(own)) if !is_mirror(kube::Resource::meta(&own)) => {
            tracing::info!(
                crd = CRD_NAME,
                "the virtual cluster has its own Certificate definition; it is left alone"
            );
        }
        Ok(_) => {
            crate::api::apply(virt, CRD_NAME, &virtual_definition(&theirs))
                .await
                .map_err(|e| format!("cannot write the virtual CustomResourceDefinition: {e}"))?;
        }
        Err(e) => {
            return Err(format!(
                "cannot read the virtual CustomResourceDefinition: {e}"
            ));
        }
    }
    // Served once Established; the engine's watch would retry meanwhile,
    // but its first list should find the kind.
    for _ in 0..60 {
        let established = virt
            .get_opt(CRD_NAME)
            .await
            .ok()
            .flatten()
            .is_some_and(|c| {
                c.status
                    .and_then(|s| s.conditions)
                    .into_iter()
                    .flatten()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
        if established {
            tracing::info!(crd = CRD_NAME, "the virtual API serves Certificates");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err("the virtual CustomResourceDefinition did not become Established in 30 s".to_owned())
}

#[cfg(test)]
#[path = "tests/certificates.rs"]
mod tests;
