//! The host's service CIDR, which the virtual API must share (ClusterIP
//! parity). Discovery reads the host's `ServiceCIDR` objects when the
//! syncer may (a cluster-wide read), and otherwise probes: a dry-run create
//! of a Service at an address no cluster uses makes the host API answer with
//! its valid range. The syncer re-checks periodically; when the virtual API
//! does not cover the host's range (k3s started with another one), it adds
//! the host's range to the virtual API as a `ServiceCIDR`, so cluster IPs the
//! host hands out can still be shown in the virtual cluster.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use super::Context;
use crate::FIELD_MANAGER;
use crate::api::ApiError;

/// The virtual `ServiceCIDR` the syncer adds when the ranges disagree.
pub const HOST_RANGE_OBJECT: &str = "vcluster-host-range";
const PROBE_NAME: &str = "vcluster-service-cidr-probe";
/// An address in no cluster's service range (0.0.0.0/8 is "this network").
const PROBE_IP: &str = "0.0.0.1";

/// Why the range could not be found.
#[derive(Debug, thiserror::Error)]
pub enum CidrError {
    /// An API call failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The probe's answer did not name a range.
    #[error("the host API's answer to the service CIDR probe names no range: {0}")]
    Unparsable(String),
}

/// The ranges named in a host API's refusal of an out-of-range cluster IP
/// ("... The range of valid IPs is 10.96.0.0/12" or several, comma-separated).
pub fn parse_valid_range(message: &str) -> Option<Vec<String>> {
    const MARK: &str = "The range of valid IPs is ";
    let (_, tail) = message.split_once(MARK)?;
    let cidrs: Vec<String> = tail
        .split([',', ' '])
        .map(|s| s.trim().trim_end_matches(['.', ';']))
        .filter(|s| s.contains('/'))
        .map(str::to_owned)
        .collect();
    (!cidrs.is_empty()).then_some(cidrs)
}

fn cidrs_of(list: &[ServiceCIDR]) -> Vec<String> {
    list.iter()
        .filter_map(|s| s.spec.as_ref())
        .flat_map(|s| s.cidrs.iter().flatten().cloned())
        .collect()
}

/// The host's service CIDRs, seen from host namespace `namespace`: from the
/// `ServiceCIDR` objects when `read_objects` and they can be read, else by
/// the probe.
pub async fn host_service_cidrs(
    host: &kube::Client,
    namespace: &str,
    read_objects: bool,
) -> Result<Vec<String>, CidrError> {
    if read_objects {
        match Api::<ServiceCIDR>::all(host.clone())
            .list(&ListParams::default())
            .await
        {
            Ok(list) if !cidrs_of(&list.items).is_empty() => return Ok(cidrs_of(&list.items)),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "cannot read host ServiceCIDRs; probing"),
        }
    }
    let probe: Service = serde_json::from_value(json!({
        "metadata": {"name": PROBE_NAME},
        "spec": {"clusterIP": PROBE_IP, "ports": [{"port": 80}]}
    }))
    .map_err(|e| CidrError::Unparsable(e.to_string()))?;
    let pp = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    match Api::<Service>::namespaced(host.clone(), namespace)
        .create(&pp, &probe)
        .await
    {
        Err(kube::Error::Api(s)) => {
            parse_valid_range(&s.message).ok_or(CidrError::Unparsable(s.message))
        }
        Err(e) => Err(CidrError::Api(ApiError::new(
            "probe the host's service CIDR",
            e,
        ))),
        Ok(_) => Err(CidrError::Unparsable(format!(
            "the host accepted cluster IP {PROBE_IP}"
        ))),
    }
}

/// The virtual API's service CIDRs.
pub async fn virtual_service_cidrs(virt: &kube::Client) -> Result<Vec<String>, CidrError> {
    let list = Api::<ServiceCIDR>::all(virt.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| CidrError::Api(ApiError::new("list the virtual ServiceCIDRs", e)))?;
    Ok(cidrs_of(&list.items))
}

/// Compares both sides once; adds the host's range to the virtual API when
/// it is missing there. Returns the host's ranges.
pub async fn check(ctx: &Context) -> Result<Vec<String>, CidrError> {
    let host = host_service_cidrs(&ctx.host, &ctx.names.host_namespace, true).await?;
    let virt = virtual_service_cidrs(&ctx.virt).await?;
    let missing: Vec<&String> = host.iter().filter(|c| !virt.contains(c)).collect();
    if missing.is_empty() {
        return Ok(host);
    }
    tracing::warn!(host = ?host, virtual_ = ?virt, "the virtual API does not use the host's service CIDR; adding it (start the virtual API with the host's range to avoid re-created Services)");
    let obj = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
        "metadata": {"name": HOST_RANGE_OBJECT},
        "spec": {"cidrs": host},
    });
    Api::<ServiceCIDR>::all(ctx.virt.clone())
        .patch(
            HOST_RANGE_OBJECT,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&obj),
        )
        .await
        .map_err(|e| CidrError::Api(ApiError::new("add the host's range to the virtual API", e)))?;
    Ok(host)
}

/// Re-checks every `every` until the process ends.
pub async fn run(ctx: Arc<Context>, every: Duration) {
    let mut last: Option<Vec<String>> = None;
    loop {
        match check(&ctx).await {
            Ok(cidrs) if last.as_ref() != Some(&cidrs) => {
                tracing::info!(cidrs = ?cidrs, "host service CIDR");
                last = Some(cidrs);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot check the service CIDR"),
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_answer_names_the_range() {
        let m = "Service \"p\" is invalid: spec.clusterIPs: Invalid value: [\"0.0.0.1\"]: failed to allocate IP 0.0.0.1: the provided IP (0.0.0.1) is not in the valid range. The range of valid IPs is 10.96.0.0/16";
        assert_eq!(parse_valid_range(m), Some(vec!["10.96.0.0/16".to_owned()]));
        let two = "... The range of valid IPs is 10.96.0.0/12, fd00:10:96::/112.";
        assert_eq!(
            parse_valid_range(two),
            Some(vec![
                "10.96.0.0/12".to_owned(),
                "fd00:10:96::/112".to_owned()
            ])
        );
        assert_eq!(parse_valid_range("provided IP is already allocated"), None);
    }
}
