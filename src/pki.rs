//! Certificate authorities and certificates, generated with rcgen.
//!
//! Every key is ECDSA P-256. Certificates carry a validity window that starts a
//! few minutes in the past (to tolerate clock skew between processes) and the
//! extended key usages Kubernetes checks: `serverAuth` for serving
//! certificates, `clientAuth` for client certificates.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use time::OffsetDateTime;

/// How far into the past a certificate's validity starts.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// Failure to generate keys or certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused the parameters (for example an invalid DNS name in the SANs).
    #[error("certificate generation failed for {what}: {source}")]
    Generate {
        /// What was being generated (a common name or "service-account key").
        what: String,
        /// The underlying rcgen error.
        source: rcgen::Error,
    },
}

fn gen_err(what: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |source| PkiError::Generate {
        what: what.to_owned(),
        source,
    }
}

/// DER length octets.
fn der_len(n: usize) -> Vec<u8> {
    match n {
        0..0x80 => vec![n as u8],
        0x80..0x100 => vec![0x81, n as u8],
        _ => vec![0x82, (n >> 8) as u8, n as u8],
    }
}

/// A P-256 `EC PRIVATE KEY` (SEC1) PEM as PKCS#8 PEM; `None` for anything else.
fn sec1_to_pkcs8_pem(pem: &str) -> Option<String> {
    use base64::Engine as _;
    const BEGIN: &str = "-----BEGIN EC PRIVATE KEY-----";
    const END: &str = "-----END EC PRIVATE KEY-----";
    let body = pem.split_once(BEGIN)?.1.split_once(END)?.0;
    let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    let sec1 = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    // PrivateKeyInfo { version 0, { id-ecPublicKey, prime256v1 }, OCTET STRING sec1 }
    const P256_ALG: &[u8] = &[
        0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86,
        0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
    ];
    // The curve OID must be P-256's (the only EC curve this project uses).
    if !sec1.windows(10).any(|w| w == &P256_ALG[11..]) {
        return None;
    }
    let mut inner = vec![0x02, 0x01, 0x00];
    inner.extend_from_slice(P256_ALG);
    inner.push(0x04);
    inner.extend(der_len(sec1.len()));
    inner.extend_from_slice(&sec1);
    let mut der = vec![0x30];
    der.extend(der_len(inner.len()));
    der.extend(inner);
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .filter_map(|c| std::str::from_utf8(c).ok())
        .collect();
    Some(format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    ))
}

/// A PEM-encoded certificate and its private key.
#[derive(Clone, Debug)]
pub struct CertKey {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The PKCS#8 private key, PEM.
    pub key_pem: String,
}

/// What a leaf certificate may be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// TLS server (serving certificates).
    Server,
    /// TLS client (client certificates: the CN is the user, each O a group).
    Client,
    /// Both (peers that serve and call, such as etcd members).
    ServerAndClient,
}

/// The request for one leaf certificate.
#[derive(Clone, Debug)]
pub struct CertSpec {
    /// Subject common name: the user name for client certificates.
    pub common_name: String,
    /// Subject organization: the group of a client certificate. At most one:
    /// rcgen keys a subject's attributes by type, so a second organization
    /// would replace the first rather than add a group.
    pub organization: Option<String>,
    /// Subject alternative names; strings that parse as IP addresses become IP SANs.
    pub sans: Vec<String>,
    /// Server, client or both.
    pub usage: Usage,
    /// How long the certificate is valid.
    pub validity: Duration,
}

impl CertSpec {
    /// A client certificate for `user`, in `group` if given.
    pub fn client(user: &str, group: Option<&str>, validity: Duration) -> Self {
        Self {
            common_name: user.to_owned(),
            organization: group.map(str::to_owned),
            sans: Vec::new(),
            usage: Usage::Client,
            validity,
        }
    }

    /// A serving certificate for `common_name` valid for `sans`.
    pub fn server(common_name: &str, sans: &[String], validity: Duration) -> Self {
        Self {
            common_name: common_name.to_owned(),
            organization: None,
            sans: sans.to_vec(),
            usage: Usage::Server,
            validity,
        }
    }
}

/// A certificate authority that can issue leaf certificates.
#[derive(Debug)]
pub struct Ca {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn validity_window(params: &mut CertificateParams, validity: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + validity;
}

fn new_key(what: &str) -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err(what))
}

impl Ca {
    /// Generates a new self-signed CA named `common_name`.
    pub fn generate(common_name: &str, validity: Duration) -> Result<Self, PkiError> {
        let key = new_key(common_name)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity_window(&mut params, validity);
        let cert = params.self_signed(&key).map_err(gen_err(common_name))?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads an existing CA from its PEM certificate and PKCS#8 PEM key (for
    /// example the virtual cluster's client CA, or a CA kept in a Secret).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let what = "an existing CA";
        // k3s (like most Go tooling) writes EC keys in SEC1 form.
        let key_pem = sec1_to_pkcs8_pem(key_pem).unwrap_or_else(|| key_pem.to_owned());
        let key = KeyPair::from_pem(&key_pem).map_err(gen_err(what))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(gen_err(what))?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            key_pem,
            issuer,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PEM (for components that sign, such as the
    /// controller-manager's CSR signer).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issues a leaf certificate with a fresh key.
    pub fn issue(&self, spec: &CertSpec) -> Result<CertKey, PkiError> {
        let what = spec.common_name.as_str();
        let key = new_key(what)?;
        let mut params = CertificateParams::new(spec.sans.clone()).map_err(gen_err(what))?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, what);
        if let Some(org) = &spec.organization {
            params
                .distinguished_name
                .push(DnType::OrganizationName, org.as_str());
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = match spec.usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::ServerAndClient => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        params.use_authority_key_identifier_extension = true;
        validity_window(&mut params, spec.validity);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(gen_err(what))?;
        Ok(CertKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The key pair the API server signs and verifies service-account tokens with.
#[derive(Clone, Debug)]
pub struct ServiceAccountKeys {
    /// PKCS#8 private key, PEM (`--service-account-signing-key-file`,
    /// `--service-account-private-key-file`).
    pub private_pem: String,
    /// SubjectPublicKeyInfo, PEM (`--service-account-key-file`).
    pub public_pem: String,
}

impl ServiceAccountKeys {
    /// Generates a new ECDSA P-256 key pair.
    pub fn generate() -> Result<Self, PkiError> {
        let key = new_key("service-account key")?;
        Ok(Self {
            private_pem: key.serialize_pem(),
            public_pem: key.public_key_pem(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn parse(pem: &str) -> Vec<u8> {
        let (_, p) = parse_x509_pem(pem.as_bytes()).unwrap();
        p.contents
    }

    /// The leaf names the CA as its issuer and the CA's key signed it.
    fn assert_chains_to(leaf_pem: &str, ca_pem: &str) {
        let ca_der = parse(ca_pem);
        let (_, ca_cert) = X509Certificate::from_der(&ca_der).unwrap();
        let der = parse(leaf_pem);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
        assert_eq!(cert.issuer(), ca_cert.subject());
    }

    #[test]
    fn ca_is_self_signed_ca_with_requested_name() {
        let ca = Ca::generate("test-ca", DAY).unwrap();
        let der = parse(ca.cert_pem());
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert!(cert.is_ca());
        assert_eq!(cert.subject().to_string(), "CN=test-ca");
        assert_eq!(cert.issuer(), cert.subject());
        cert.verify_signature(None).unwrap();
    }

    #[test]
    fn server_cert_chains_to_ca_and_carries_sans() {
        let ca = Ca::generate("ca", DAY).unwrap();
        let leaf = ca
            .issue(&CertSpec::server(
                "kube-apiserver",
                &[
                    "127.0.0.1".into(),
                    "localhost".into(),
                    "kubernetes.default.svc".into(),
                ],
                DAY,
            ))
            .unwrap();
        assert_chains_to(&leaf.cert_pem, ca.cert_pem());
        let der = parse(&leaf.cert_pem);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert!(!cert.is_ca());
        let san = cert.subject_alternative_name().unwrap().unwrap().value;
        let mut ips = Vec::new();
        let mut dns = Vec::new();
        for n in &san.general_names {
            match n {
                GeneralName::IPAddress(b) => ips.push(b.to_vec()),
                GeneralName::DNSName(d) => dns.push(d.to_string()),
                other => panic!("unexpected SAN {other:?}"),
            }
        }
        assert_eq!(ips, [vec![127u8, 0, 0, 1]]);
        assert_eq!(dns, ["localhost", "kubernetes.default.svc"]);
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
    }

    #[test]
    fn client_cert_encodes_user_and_groups() {
        let ca = Ca::generate("ca", DAY).unwrap();
        let leaf = ca
            .issue(&CertSpec::client("admin", Some("system:masters"), DAY))
            .unwrap();
        let der = parse(&leaf.cert_pem);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let cn: Vec<_> = cert
            .subject()
            .iter_common_name()
            .map(|c| c.as_str().unwrap())
            .collect();
        let orgs: Vec<_> = cert
            .subject()
            .iter_organization()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert_eq!(cn, ["admin"]);
        assert_eq!(orgs, ["system:masters"]);
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
    }

    #[test]
    fn validity_is_backdated_and_bounded() {
        let ca = Ca::generate("ca", DAY).unwrap();
        let leaf = ca.issue(&CertSpec::client("u", None, DAY)).unwrap();
        let der = parse(&leaf.cert_pem);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let nb = cert.validity().not_before.timestamp();
        let na = cert.validity().not_after.timestamp();
        assert!(
            nb <= now - 60,
            "not_before {nb} should be in the past of {now}"
        );
        assert!(
            (na - now - 86_400).abs() < 60,
            "not_after {na} should be a day after {now}"
        );
    }

    #[test]
    fn distinct_leaves_get_distinct_serials_and_keys() {
        let ca = Ca::generate("ca", DAY).unwrap();
        let a = ca.issue(&CertSpec::client("u", None, DAY)).unwrap();
        let b = ca.issue(&CertSpec::client("u", None, DAY)).unwrap();
        assert_ne!(a.key_pem, b.key_pem);
        let (da, db) = (parse(&a.cert_pem), parse(&b.cert_pem));
        let (_, ca_) = X509Certificate::from_der(&da).unwrap();
        let (_, cb) = X509Certificate::from_der(&db).unwrap();
        assert_ne!(ca_.serial, cb.serial);
    }

    #[test]
    fn invalid_san_is_an_error_not_a_panic() {
        let ca = Ca::generate("ca", DAY).unwrap();
        let err = ca
            .issue(&CertSpec::server("x", &["b\u{fc}cher.example".into()], DAY))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("certificate generation failed for x"),
            "{err}"
        );
    }

    #[test]
    fn a_loaded_ca_issues_certificates_that_chain_to_it() {
        let ca = Ca::generate("persisted-ca", DAY).unwrap();
        let loaded = Ca::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        let leaf = loaded
            .issue(&CertSpec::server("front-door", &["127.0.0.1".into()], DAY))
            .unwrap();
        assert_chains_to(&leaf.cert_pem, ca.cert_pem());
        assert!(Ca::from_pem("not pem", ca.key_pem()).is_err());
    }

    #[test]
    fn service_account_keys_are_pem() {
        let k = ServiceAccountKeys::generate().unwrap();
        assert!(k.private_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(k.public_pem.starts_with("-----BEGIN PUBLIC KEY-----"));
    }

    #[test]
    fn a_k3s_style_sec1_ca_key_is_loaded() {
        // An EC P-256 CA whose key is in SEC1 form ("EC PRIVATE KEY"), as k3s
        // writes its client CA (generated for this test).
        let ca = Ca::from_pem(
            include_str!("pki_testdata/k3s-style-ca.crt"),
            include_str!("pki_testdata/k3s-style-ca.key"),
        )
        .unwrap();
        assert!(ca.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let leaf = ca
            .issue(&CertSpec::client(
                "admin",
                Some("system:masters"),
                Duration::from_secs(3600),
            ))
            .unwrap();
        let (_, cert) = parse_x509_pem(leaf.cert_pem.as_bytes()).unwrap();
        let cert = cert.parse_x509().unwrap();
        assert!(cert.issuer().to_string().contains("k3s-client-ca"));
        assert!(
            sec1_to_pkcs8_pem("-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----")
                .is_none()
        );
    }
}
