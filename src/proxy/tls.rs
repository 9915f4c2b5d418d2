//! The front door's TLS: a serving CA kept in a host Secret (so a restart
//! keeps the identity clients trust), a serving certificate issued from it at
//! start and renewed before it expires, and client certificates verified
//! against the virtual cluster's client CA (optional at the TLS layer, so
//! bearer tokens work too).

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::Api;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::api::{ApiError, Created, adopt, create_if_absent};
use crate::discovery;
use crate::pki::{Ca, CertSpec};

/// The serving CA lives ten years: clients pin it in their kubeconfigs.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);

/// TLS set-up failures.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Certificate generation or loading failed.
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    /// The serving-CA Secret could not be read or written (`what` names it).
    #[error(transparent)]
    Secret(#[from] ApiError),
    /// The serving-CA Secret exists but lacks its certificate or key.
    #[error("serving CA Secret {0} is missing tls.crt or tls.key")]
    Incomplete(String),
    /// A PEM file could not be used.
    #[error("{what}: {why}")]
    Pem {
        /// Which file or object.
        what: String,
        /// What is wrong.
        why: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("client CA: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

fn secret_err(name: &str) -> impl FnOnce(kube::Error) -> TlsError + '_ {
    move |e| TlsError::Secret(ApiError::new(format!("serving CA Secret {name}"), e))
}

/// Reads the serving CA of vcluster `vc` from its host Secret, creating the
/// Secret with a new CA when it does not exist yet; the Secret is owned by
/// `owner` (given to an existing one that lacks it).
pub async fn serving_ca(
    host: &kube::Client,
    namespace: &str,
    vc: &str,
    owner: Option<&OwnerReference>,
) -> Result<Ca, TlsError> {
    let name = discovery::serving_ca_secret(vc);
    let api: Api<Secret> = Api::namespaced(host.clone(), namespace);
    for _ in 0..2 {
        if let Some(s) = api.get_opt(&name).await.map_err(secret_err(&name))? {
            adopt(&api, &name, s.metadata.owner_references.as_deref(), owner)
                .await
                .map_err(secret_err(&name))?;
            let data = s.data.unwrap_or_default();
            let get = |k: &str| {
                data.get(k)
                    .and_then(|b| String::from_utf8(b.0.clone()).ok())
                    .ok_or_else(|| TlsError::Incomplete(name.clone()))
            };
            return Ok(Ca::from_pem(&get("tls.crt")?, &get("tls.key")?)?);
        }
        let ca = Ca::generate(&format!("vcluster-{vc}-serving-ca"), CA_VALIDITY)?;
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                labels: Some(discovery::labels(vc, discovery::COMPONENT_SERVING_CA)),
                owner_references: owner.map(|o| vec![o.clone()]),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(
                [("tls.crt", ca.cert_pem()), ("tls.key", ca.key_pem())]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        };
        match create_if_absent(&api, &secret)
            .await
            .map_err(secret_err(&name))?
        {
            Created::Yes => return Ok(ca),
            // Another syncer instance created it first: use theirs.
            Created::AlreadyExisted => continue,
        }
    }
    Err(TlsError::Incomplete(name))
}

/// True when a certificate valid from `not_before` to `not_after` should be
/// replaced at `now`: once two thirds of its life have passed.
pub fn needs_renewal(not_before: SystemTime, not_after: SystemTime, now: SystemTime) -> bool {
    let life = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    let renew_at = not_before + life * 2 / 3;
    now >= renew_at
}

/// The serving certificate: issued from the serving CA for the SANs, handed to
/// every handshake, replaced by [`ServingCert::renew_if_due`].
#[derive(Debug)]
pub struct ServingCert {
    ca: Ca,
    sans: Vec<String>,
    validity: Duration,
    current: RwLock<(Arc<CertifiedKey>, SystemTime, SystemTime)>,
}

fn certified_key(pem_cert: &str, pem_key: &str) -> Result<Arc<CertifiedKey>, TlsError> {
    let pem_err = |why: String| TlsError::Pem {
        what: "serving certificate".into(),
        why,
    };
    let cert =
        CertificateDer::from_pem_slice(pem_cert.as_bytes()).map_err(|e| pem_err(e.to_string()))?;
    let key =
        PrivateKeyDer::from_pem_slice(pem_key.as_bytes()).map_err(|e| pem_err(e.to_string()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)?;
    Ok(Arc::new(CertifiedKey::new(vec![cert], signer)))
}

impl ServingCert {
    /// Issues the first certificate.
    pub fn new(ca: Ca, sans: Vec<String>, validity: Duration) -> Result<Self, TlsError> {
        let first = Self::issue(&ca, &sans, validity)?;
        Ok(Self {
            ca,
            sans,
            validity,
            current: RwLock::new(first),
        })
    }

    fn issue(
        ca: &Ca,
        sans: &[String],
        validity: Duration,
    ) -> Result<(Arc<CertifiedKey>, SystemTime, SystemTime), TlsError> {
        let now = SystemTime::now();
        let leaf = ca.issue(&CertSpec::server("vcluster-front-door", sans, validity))?;
        Ok((
            certified_key(&leaf.cert_pem, &leaf.key_pem)?,
            now,
            now + validity,
        ))
    }

    /// The serving CA certificate (what kubeconfigs trust).
    pub fn ca_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    /// Replaces the certificate when two thirds of its life have passed.
    /// Returns true when it did.
    pub fn renew_if_due(&self, now: SystemTime) -> Result<bool, TlsError> {
        let (nb, na) = {
            let cur = self.current.read().unwrap_or_else(|e| e.into_inner());
            (cur.1, cur.2)
        };
        if !needs_renewal(nb, na, now) {
            return Ok(false);
        }
        let next = Self::issue(&self.ca, &self.sans, self.validity)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(true)
    }

    /// The current certificate's expiry.
    pub fn not_after(&self) -> SystemTime {
        self.current.read().unwrap_or_else(|e| e.into_inner()).2
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(|e| e.into_inner()).0,
        ))
    }
}

/// The rustls server configuration: HTTP/2 or HTTP/1.1 by ALPN (clients that
/// upgrade, for SPDY or WebSocket, ask for HTTP/1.1), the serving
/// certificate, and optional client certificates verified against
/// `client_ca_pem`.
pub fn server_config(
    serving: Arc<ServingCert>,
    client_ca_pem: &str,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(client_ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| TlsError::Pem {
            what: "client CA".into(),
            why: e.to_string(),
        })?;
        roots.add(cert)?;
    }
    if roots.is_empty() {
        return Err(TlsError::Pem {
            what: "client CA".into(),
            why: "no certificate found".into(),
        });
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(serving);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The serving certificate's names: the vcluster Service's DNS names and
/// ClusterIP, loopback, and the operator's extra SANs.
pub fn sans(
    service: &str,
    namespace: &str,
    cluster_ip: Option<&str>,
    extra: &[String],
) -> Vec<String> {
    let mut out = vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
    ];
    out.extend(cluster_ip.map(str::to_owned));
    for s in extra {
        if !out.contains(s) {
            out.push(s.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_after_two_thirds_of_the_life() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let end = t0 + Duration::from_secs(300);
        assert!(!needs_renewal(t0, end, t0));
        assert!(!needs_renewal(t0, end, t0 + Duration::from_secs(199)));
        assert!(needs_renewal(t0, end, t0 + Duration::from_secs(200)));
        assert!(needs_renewal(t0, end, end + Duration::from_secs(1)));
    }

    #[test]
    fn serving_certificate_is_replaced_when_due() {
        let ca = Ca::generate("ca", Duration::from_secs(3600)).unwrap();
        let s = ServingCert::new(ca, vec!["127.0.0.1".into()], Duration::from_secs(600)).unwrap();
        let first = s.not_after();
        assert!(!s.renew_if_due(SystemTime::now()).unwrap());
        let later = SystemTime::now() + Duration::from_secs(500);
        assert!(s.renew_if_due(later).unwrap());
        assert!(s.not_after() >= first);
    }

    #[test]
    fn sans_cover_service_loopback_and_extras() {
        let s = sans(
            "vc",
            "team",
            Some("10.96.0.7"),
            &["vc.example.com".into(), "localhost".into()],
        );
        for want in [
            "vc",
            "vc.team",
            "vc.team.svc",
            "vc.team.svc.cluster.local",
            "localhost",
            "127.0.0.1",
            "10.96.0.7",
            "vc.example.com",
        ] {
            assert!(s.iter().any(|x| x == want), "{want} missing from {s:?}");
        }
        assert_eq!(s.iter().filter(|x| *x == "localhost").count(), 1);
    }
}
