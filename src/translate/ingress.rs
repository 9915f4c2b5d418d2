//! Ingresses in their host form, and the policy a shared ingress controller
//! needs: backend Services and TLS Secrets are renamed to their host copies;
//! `ingressClassName` and annotations pass through unless the policy denies
//! an annotation (by default those that inject configuration into the shared
//! controller); with allowed-host patterns, every host must match one.

use k8s_openapi::api::networking::v1::{
    Ingress, IngressBackend, IngressServiceBackend, IngressSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use super::markers::copy_unreserved;
use super::{Refusal, VclusterName, host_name};

/// Annotations denied by default: configuration snippets run inside the
/// shared controller for every tenant, and the secret references below name
/// host objects across namespaces.
pub const DEFAULT_DENIED_ANNOTATIONS: &[&str] = &[
    "*snippet*",
    "nginx.ingress.kubernetes.io/auth-tls-secret",
    "nginx.ingress.kubernetes.io/auth-secret",
    "nginx.ingress.kubernetes.io/proxy-ssl-secret",
];

/// Annotations that ask the host's cert-manager for a certificate.
pub const CERT_MANAGER_ANNOTATIONS: &[&str] =
    &["cert-manager.io/cluster-issuer", "cert-manager.io/issuer"];

/// What ingresses may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressPolicy {
    denied_annotations: Vec<String>,
    allowed_hosts: Vec<String>,
}

impl IngressPolicy {
    /// A policy for vcluster `vc`: `{name}` in a host pattern stands for the
    /// vcluster's name. Patterns are `*.suffix` (any host below `suffix`) or
    /// exact host names; no patterns means any host.
    pub fn new(
        vc: &VclusterName,
        denied_annotations: Vec<String>,
        allowed_hosts: Vec<String>,
    ) -> Self {
        Self {
            denied_annotations,
            allowed_hosts: allowed_hosts
                .into_iter()
                .map(|p| p.replace("{name}", vc.as_str()).to_ascii_lowercase())
                .collect(),
        }
    }

    /// The default policy: the default denial list, any host.
    pub fn default_for(vc: &VclusterName) -> Self {
        Self::new(
            vc,
            DEFAULT_DENIED_ANNOTATIONS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            Vec::new(),
        )
    }

    fn denied_annotation(&self, key: &str) -> Option<&str> {
        self.denied_annotations
            .iter()
            .find(|p| glob(p, key))
            .map(String::as_str)
    }

    /// True when `host` matches an allowed pattern (or there are none).
    pub fn host_allowed(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.allowed_hosts.is_empty()
            || self
                .allowed_hosts
                .iter()
                .any(|p| match p.strip_prefix("*.") {
                    Some(suffix) => host
                        .strip_suffix(suffix)
                        .and_then(|rest| rest.strip_suffix('.'))
                        .is_some_and(|rest| !rest.is_empty()),
                    None => *p == host,
                })
    }

    /// The allowed patterns, for messages (`any host` without patterns).
    pub fn allowed_hosts(&self) -> String {
        if self.allowed_hosts.is_empty() {
            "any host".to_owned()
        } else {
            self.allowed_hosts.join(", ")
        }
    }

    /// Checks an ingress against the policy.
    pub fn check(&self, v: &Ingress) -> Result<(), Refusal> {
        for key in v.metadata.annotations.iter().flat_map(|a| a.keys()) {
            if let Some(p) = self.denied_annotation(key) {
                return Err(Refusal::new(
                    "IngressAnnotationDenied",
                    format!(
                        "annotation {key} is denied by this vcluster's ingress policy (pattern {p:?})"
                    ),
                ));
            }
        }
        if self.allowed_hosts.is_empty() {
            return Ok(());
        }
        let allowed = self.allowed_hosts.join(", ");
        let spec = v.spec.as_ref();
        for rule in spec.and_then(|s| s.rules.as_ref()).into_iter().flatten() {
            match rule.host.as_deref() {
                None | Some("") => {
                    return Err(Refusal::new(
                        "IngressHostDenied",
                        format!(
                            "a rule without a host would take every host; allowed hosts: {allowed}"
                        ),
                    ));
                }
                Some(h) if !self.host_allowed(h) => {
                    return Err(Refusal::new(
                        "IngressHostDenied",
                        format!(
                            "host {h} is outside the hosts allowed for this vcluster: {allowed}"
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        if spec.and_then(|s| s.default_backend.as_ref()).is_some() {
            return Err(Refusal::new(
                "IngressHostDenied",
                format!("a default backend would take every host; allowed hosts: {allowed}"),
            ));
        }
        // cert-manager requests a certificate for the TLS hosts and the
        // common-name annotation: both are names this vcluster claims.
        let common_name = v
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(crate::policy::ingress_hosts::COMMON_NAME_ANNOTATION));
        for h in spec
            .and_then(|s| s.tls.as_ref())
            .into_iter()
            .flatten()
            .flat_map(|t| t.hosts.iter().flatten())
            .chain(common_name)
        {
            if !self.host_allowed(h) {
                return Err(Refusal::new(
                    "IngressHostDenied",
                    format!(
                        "TLS host {h} is outside the hosts allowed for this vcluster: {allowed}"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn glob(pattern: &str, s: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == s,
        Some((head, rest)) => {
            let Some(tail) = s.strip_prefix(head) else {
                return false;
            };
            (0..=tail.len())
                .filter(|i| tail.is_char_boundary(*i))
                .any(|i| glob(rest, &tail[i..]))
        }
    }
}

/// The TLS Secret names an ingress refers to.
pub fn tls_secrets(v: &Ingress) -> Vec<String> {
    v.spec
        .as_ref()
        .and_then(|s| s.tls.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|t| t.secret_name.clone())
        .collect()
}

/// True when the ingress asks the host's cert-manager for its certificates.
pub fn wants_cert_manager(v: &Ingress) -> bool {
    let ann = v.metadata.annotations.as_ref();
    CERT_MANAGER_ANNOTATIONS
        .iter()
        .any(|k| ann.is_some_and(|a| a.contains_key(*k)))
        || ann
            .and_then(|a| a.get("kubernetes.io/tls-acme"))
            .is_some_and(|v| v == "true")
}

fn host_backend(
    vc: &VclusterName,
    namespace: &str,
    b: &IngressBackend,
) -> Result<IngressBackend, Refusal> {
    if b.resource.is_some() {
        return Err(Refusal::new(
            "IngressBackendUnsupported",
            "resource backends are not supported: the objects they name exist only in the virtual cluster",
        ));
    }
    Ok(IngressBackend {
        resource: None,
        service: b.service.as_ref().map(|s| IngressServiceBackend {
            name: host_name(vc, namespace, &s.name),
            port: s.port.clone(),
        }),
    })
}

/// The host form of virtual ingress `v` under `policy`.
pub fn host_ingress(
    vc: &VclusterName,
    v: &Ingress,
    policy: &IngressPolicy,
) -> Result<Ingress, Refusal> {
    policy.check(v)?;
    let namespace = v.metadata.namespace.as_deref().unwrap_or("default");
    let spec = v.spec.clone().unwrap_or_default();
    let default_backend = spec
        .default_backend
        .as_ref()
        .map(|b| host_backend(vc, namespace, b))
        .transpose()?;
    let mut rules = spec.rules;
    for path in rules
        .iter_mut()
        .flatten()
        .filter_map(|r| r.http.as_mut())
        .flat_map(|h| h.paths.iter_mut())
    {
        path.backend = host_backend(vc, namespace, &path.backend)?;
    }
    let mut tls = spec.tls;
    for t in tls.iter_mut().flatten() {
        t.secret_name = t
            .secret_name
            .as_deref()
            .map(|s| host_name(vc, namespace, s));
    }
    Ok(Ingress {
        metadata: ObjectMeta {
            labels: Some(copy_unreserved(v.metadata.labels.as_ref())),
            annotations: Some(copy_unreserved(v.metadata.annotations.as_ref())),
            ..ObjectMeta::default()
        },
        spec: Some(IngressSpec {
            ingress_class_name: spec.ingress_class_name,
            default_backend,
            rules,
            tls,
        }),
        status: None,
    })
}

/// The form of host ingress `h` while the vcluster sleeps: every backend is
/// the syncer's waking page (`service` port `port`), so the first visitor
/// wakes the cluster; hosts, paths and TLS stay as they are.
pub fn sleeping(mut h: Ingress, service: &str, port: i32) -> Ingress {
    let wake = || IngressBackend {
        resource: None,
        service: Some(IngressServiceBackend {
            name: service.to_owned(),
            port: Some(k8s_openapi::api::networking::v1::ServiceBackendPort {
                number: Some(port),
                name: None,
            }),
        }),
    };
    if let Some(spec) = h.spec.as_mut() {
        if spec.default_backend.is_some() {
            spec.default_backend = Some(wake());
        }
        for path in spec
            .rules
            .iter_mut()
            .flatten()
            .filter_map(|r| r.http.as_mut())
            .flat_map(|h| h.paths.iter_mut())
        {
            path.backend = wake();
        }
    }
    h
}

/// A merge patch copying the host's load-balancer status up, when it differs.
pub fn status_up(v: &Ingress, h: &Ingress) -> Option<Value> {
    let lb = |i: &Ingress| {
        i.status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .map(|lb| (lb.clone(), lb.ingress.as_ref().is_none_or(Vec::is_empty)))
    };
    super::load_balancer_patch(lb(v), lb(h))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vc() -> VclusterName {
        VclusterName::new("my").unwrap()
    }

    fn ing(j: Value) -> Ingress {
        serde_json::from_value(j).unwrap()
    }

    fn sample(host: &str, annotations: Value) -> Ingress {
        ing(json!({
            "metadata": {"name": "web", "namespace": "shop", "annotations": annotations},
            "spec": {
                "ingressClassName": "nginx",
                "tls": [{"hosts": [host], "secretName": "web-tls"}],
                "rules": [{"host": host, "http": {"paths": [
                    {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}
                ]}}]
            }
        }))
    }

    #[test]
    fn backends_and_tls_secrets_are_renamed() {
        let v = sample(
            "a.example.com",
            json!({"cert-manager.io/cluster-issuer": "le"}),
        );
        let h = host_ingress(&vc(), &v, &IngressPolicy::default_for(&vc())).unwrap();
        let spec = h.spec.unwrap();
        assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
        let rules = spec.rules.unwrap();
        let backend = &rules[0].http.as_ref().unwrap().paths[0].backend;
        assert_eq!(backend.service.as_ref().unwrap().name, "web-x-shop-x-my");
        assert_eq!(
            spec.tls.unwrap()[0].secret_name.as_deref(),
            Some("web-tls-x-shop-x-my")
        );
        assert_eq!(
            h.metadata.annotations.unwrap()["cert-manager.io/cluster-issuer"],
            "le",
            "a host ClusterIssuer is named through the usual annotation"
        );
        assert!(wants_cert_manager(&v));
        assert_eq!(tls_secrets(&v), vec!["web-tls".to_owned()]);
    }

    #[test]
    fn snippet_annotations_are_denied_by_default() {
        let p = IngressPolicy::default_for(&vc());
        for key in [
            "nginx.ingress.kubernetes.io/configuration-snippet",
            "nginx.ingress.kubernetes.io/server-snippet",
            "haproxy.org/backend-config-snippet",
            "nginx.ingress.kubernetes.io/auth-tls-secret",
        ] {
            let v = sample("a.example.com", json!({key: "x"}));
            let r = host_ingress(&vc(), &v, &p).unwrap_err();
            assert_eq!(r.reason, "IngressAnnotationDenied");
            assert!(r.message.contains(key), "{}", r.message);
        }
        let v = sample(
            "a.example.com",
            json!({"nginx.ingress.kubernetes.io/rewrite-target": "/"}),
        );
        assert!(host_ingress(&vc(), &v, &p).is_ok());
    }

    #[test]
    fn hosts_must_match_the_allowed_patterns() {
        let p = IngressPolicy::new(
            &vc(),
            vec![],
            vec![
                "*.{name}.apps.example.com".into(),
                "exact.example.com".into(),
            ],
        );
        for ok in [
            "shop.my.apps.example.com",
            "a.b.my.apps.example.com",
            "EXACT.example.com",
        ] {
            assert!(p.check(&sample(ok, json!({}))).is_ok(), "{ok}");
        }
        for bad in [
            "my.apps.example.com",
            "shop.other.apps.example.com",
            "evilmy.apps.example.com",
            "x.exact.example.com",
        ] {
            let r = p.check(&sample(bad, json!({}))).unwrap_err();
            assert_eq!(r.reason, "IngressHostDenied", "{bad}");
            assert!(
                r.message.contains(bad) && r.message.contains("*.my.apps.example.com"),
                "{}",
                r.message
            );
        }
        let cn = sample(
            "shop.my.apps.example.com",
            json!({"cert-manager.io/common-name": "www.bank.example.com"}),
        );
        let r = p.check(&cn).unwrap_err();
        assert!(r.message.contains("www.bank.example.com"), "{}", r.message);
        let no_host = ing(json!({"metadata": {"name": "x", "namespace": "a"},
            "spec": {"rules": [{"http": {"paths": []}}]}}));
        assert_eq!(p.check(&no_host).unwrap_err().reason, "IngressHostDenied");
        // No patterns: any host.
        assert!(IngressPolicy::default_for(&vc()).check(&no_host).is_ok());
    }

    #[test]
    fn asleep_every_backend_is_the_waking_page() {
        let h = host_ingress(
            &vc(),
            &sample("shop.example.com", json!({})),
            &IngressPolicy::default_for(&vc()),
        )
        .unwrap();
        let asleep = sleeping(h.clone(), "my", 8081);
        let spec = asleep.spec.as_ref().unwrap();
        let backend = &spec.rules.as_ref().unwrap()[0].http.as_ref().unwrap().paths[0].backend;
        let svc = backend.service.as_ref().unwrap();
        assert_eq!(svc.name, "my");
        assert_eq!(svc.port.as_ref().unwrap().number, Some(8081));
        assert_eq!(spec.tls, h.spec.as_ref().unwrap().tls, "TLS unchanged");
        assert_eq!(
            spec.rules.as_ref().unwrap()[0].host.as_deref(),
            Some("shop.example.com")
        );
    }

    #[test]
    fn glob_matches_runs_of_characters() {
        assert!(glob(
            "*snippet*",
            "nginx.ingress.kubernetes.io/server-snippet"
        ));
        assert!(glob("a*c", "abbbc"));
        assert!(!glob("a*c", "abbb"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exact2"));
    }

    #[test]
    fn resource_backends_are_refused_and_status_goes_up() {
        let v = ing(json!({"metadata": {"name": "x", "namespace": "a"},
            "spec": {"defaultBackend": {"resource": {"kind": "Bucket", "name": "b", "apiGroup": "x.io"}}}}));
        let r = host_ingress(&vc(), &v, &IngressPolicy::default_for(&vc())).unwrap_err();
        assert_eq!(r.reason, "IngressBackendUnsupported");
        let h = ing(
            json!({"metadata": {"name": "x"}, "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.7"}]}}}),
        );
        assert_eq!(
            status_up(&v, &h).unwrap()["status"]["loadBalancer"]["ingress"][0]["ip"],
            "192.0.2.7"
        );
        assert_eq!(status_up(&h, &h), None);
    }
}
