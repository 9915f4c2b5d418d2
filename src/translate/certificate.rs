//! cert-manager Certificates a tenant writes (`--sync certificates`): their
//! host form and the status that comes back up.
//!
//! A Certificate naming one of the host ClusterIssuers the vcluster may use
//! goes down with its name and `secretName` translated; the host's
//! cert-manager issues it into that host Secret, which the certificate mirror
//! ([`crate::sync::certs`]) brings up under the tenant's `secretName`. Its
//! names must be hosts the vcluster's ingress policy allows; what a shared
//! issuer must never sign for a tenant is refused: CA certificates (a tenant
//! could then sign for any name), and IP addresses, URIs, e-mail addresses,
//! other names and literal subjects (no host policy covers them). A
//! Certificate naming an `Issuer`, or an issuer of another API group, is the
//! tenant's own (its cert-manager inside the vcluster) and stays inside.

use std::borrow::Cow;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::ingress::IngressPolicy;
use super::markers::copy_unreserved;
use super::{Refusal, VclusterName, host_name};

/// cert-manager's API group.
pub const GROUP: &str = "cert-manager.io";
/// Status fields that name host objects: not shown to the tenant.
const HOST_ONLY_STATUS: &[&str] = &["nextPrivateKeySecretName"];
/// Spec fields a shared issuer is never asked to sign for a tenant: no host
/// policy says which of these a vcluster may claim.
const DENIED_FIELDS: &[&str] = &[
    "ipAddresses",
    "uris",
    "emailAddresses",
    "otherNames",
    "literalSubject",
];

/// A `cert-manager.io/v1` Certificate: metadata typed, spec and status as
/// cert-manager writes them (the syncer reads only a few fields). It
/// serializes with its `apiVersion` and `kind`, as the API types do.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Certificate {
    /// Standard metadata.
    pub metadata: ObjectMeta,
    /// The spec.
    #[serde(default)]
    pub spec: Value,
    /// The status cert-manager reports.
    #[serde(default)]
    pub status: Option<Value>,
}

impl Serialize for Certificate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut st = s.serialize_struct("Certificate", 5)?;
        st.serialize_field("apiVersion", "cert-manager.io/v1")?;
        st.serialize_field("kind", "Certificate")?;
        st.serialize_field("metadata", &self.metadata)?;
        st.serialize_field("spec", &self.spec)?;
        if let Some(status) = &self.status {
            st.serialize_field("status", status)?;
        }
        st.end()
    }
}

impl kube::Resource for Certificate {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Certificate".into()
    }
    fn api_version(_: &()) -> Cow<'_, str> {
        "cert-manager.io/v1".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "certificates".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Which Certificates may go down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificatePolicy {
    /// The host ClusterIssuers tenants' Certificates may name.
    pub cluster_issuers: Vec<String>,
    /// The hosts they may be for (the ingress policy's allowed hosts).
    pub hosts: IngressPolicy,
}

/// True when a spec field is set to something (not null, empty or `false`).
fn present(f: &Value) -> bool {
    match f {
        Value::Null | Value::Bool(false) => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    }
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// The names certificate `c` asks for (`dnsNames` and `commonName`),
/// lower-cased, without repeats.
pub fn names(c: &Certificate) -> Vec<String> {
    let mut out: Vec<String> = c
        .spec
        .get("dnsNames")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .chain(str_at(&c.spec, "commonName"))
        .map(|n| n.trim().trim_end_matches('.').to_ascii_lowercase())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The tenant `secretName` of certificate `c`.
pub fn secret_name(c: &Certificate) -> Option<&str> {
    str_at(&c.spec, "secretName")
}

/// The host ClusterIssuer `c` names, or `None` when its issuer is the
/// tenant's own (kind `Issuer`, the default, or another API group).
pub fn cluster_issuer(c: &Certificate) -> Option<&str> {
    let issuer = c.spec.get("issuerRef")?;
    let group = str_at(issuer, "group").unwrap_or(GROUP);
    let kind = str_at(issuer, "kind").unwrap_or("Issuer");
    (group == GROUP && kind == "ClusterIssuer")
        .then(|| str_at(issuer, "name"))
        .flatten()
}

/// The host form of tenant certificate `v`: `Ok(None)` when it stays inside
/// the vcluster (its issuer is the tenant's own).
pub fn host_certificate(
    vc: &VclusterName,
    v: &Certificate,
    policy: &CertificatePolicy,
) -> Result<Option<Certificate>, Refusal> {
    let Some(issuer) = cluster_issuer(v) else {
        return Ok(None);
    };
    if !policy.cluster_issuers.iter().any(|i| i == issuer) {
        return Err(Refusal::new(
            "CertificateIssuerDenied",
            format!(
                "ClusterIssuer {issuer} is not one this vcluster may use on the host (allowed: {})",
                policy.cluster_issuers.join(", ")
            ),
        ));
    }
    let denied = |what: String| Refusal::new("CertificateFieldDenied", what);
    if v.spec.get("isCA").and_then(Value::as_bool) == Some(true) {
        return Err(denied(format!(
            "isCA: a CA certificate from the host's ClusterIssuer {issuer} could sign for any name; only leaf certificates are issued"
        )));
    }
    for field in DENIED_FIELDS {
        if v.spec.get(*field).is_some_and(present) {
            return Err(denied(format!(
                "spec.{field} is not allowed in certificates from host issuers: only dnsNames and commonName, checked against the vcluster's allowed hosts"
            )));
        }
    }
    if v.spec.get("keystores").is_some_and(present) {
        return Err(denied(
            "spec.keystores is not supported: their password Secret would have to be on the host"
                .to_owned(),
        ));
    }
    let wanted = names(v);
    if wanted.is_empty() {
        return Err(Refusal::new(
            "CertificateHostDenied",
            "the certificate names no host: set dnsNames or commonName",
        ));
    }
    if let Some(h) = wanted.iter().find(|h| !policy.hosts.host_allowed(h)) {
        return Err(Refusal::new(
            "CertificateHostDenied",
            format!(
                "host {h} is outside the hosts allowed for this vcluster: {}",
                policy.hosts.allowed_hosts()
            ),
        ));
    }
    let Some(secret) = secret_name(v) else {
        return Err(Refusal::new(
            "CertificateSecretMissing",
            "spec.secretName is required",
        ));
    };
    let namespace = v.metadata.namespace.as_deref().unwrap_or("default");
    let mut spec = v.spec.clone();
    spec["secretName"] = host_name(vc, namespace, secret).into();
    // Labels and annotations cert-manager puts on the issued Secret: never
    // this project's markers (they would make it look like a synced copy).
    if let Some(template) = spec
        .get_mut("secretTemplate")
        .and_then(Value::as_object_mut)
    {
        for maps in ["labels", "annotations"] {
            if let Some(m) = template.get(maps) {
                let parsed = serde_json::from_value(m.clone()).ok();
                template.insert(maps.to_owned(), json!(copy_unreserved(parsed.as_ref())));
            }
        }
    }
    Ok(Some(Certificate {
        metadata: ObjectMeta {
            labels: Some(copy_unreserved(v.metadata.labels.as_ref())),
            annotations: Some(copy_unreserved(v.metadata.annotations.as_ref())),
            ..ObjectMeta::default()
        },
        spec,
        status: None,
    }))
}

/// A merge patch making the virtual status the host's (without the fields
/// that name host objects), when they differ.
pub fn status_up(v: &Certificate, h: &Certificate) -> Option<Value> {
    let mut want = h
        .status
        .as_ref()
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for field in HOST_ONLY_STATUS {
        want.remove(*field);
    }
    let have = v
        .status
        .as_ref()
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if want == have {
        return None;
    }
    let mut patch: Map<String, Value> = have
        .keys()
        .filter(|k| !want.contains_key(*k))
        .map(|k| (k.clone(), Value::Null))
        .collect();
    patch.extend(want);
    Some(json!({ "status": patch }))
}

#[cfg(test)]
#[path = "certificate_tests.rs"]
mod tests;
