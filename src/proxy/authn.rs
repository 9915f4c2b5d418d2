//! Authentication of front-door requests: a client certificate signed by the
//! virtual cluster's client CA (verified during the TLS handshake, read here),
//! or a bearer token checked with a TokenReview against the virtual API.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

use crate::api::ApiError;

/// How long a TokenReview answer is reused.
const TOKEN_CACHE_TTL: Duration = Duration::from_secs(10);
/// How long a rejected token stays rejected without asking again.
const TOKEN_NEGATIVE_TTL: Duration = Duration::from_secs(2);
/// Entries kept before the cache is swept.
const TOKEN_CACHE_MAX: usize = 4096;

/// The authenticated caller, as the virtual API will see it (impersonated).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    /// User name.
    pub user: String,
    /// User uid, when the authenticator gives one.
    pub uid: Option<String>,
    /// Groups.
    pub groups: Vec<String>,
    /// Extra attributes.
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The identity in a verified client certificate: the CN is the user, each O
/// a group (as kube-apiserver reads it). `None` when the certificate cannot be
/// parsed or has no CN.
pub fn from_client_cert(der: &[u8]) -> Option<Identity> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let subject = cert.subject();
    let user = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
    if user.is_empty() {
        return None;
    }
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_owned))
        .collect();
    Some(Identity {
        user,
        uid: None,
        groups,
        extra: BTreeMap::new(),
    })
}

/// The bearer token of an `Authorization` header value, if it is one.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// How long until `token` expires, when it is a JWT with an `exp` claim
/// (read, not verified: the TokenReview verified it; this only bounds how long
/// its answer is reused); zero once expired; `None` for other tokens.
fn jwt_expires_in(token: &str, now: std::time::SystemTime) -> Option<Duration> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let exp = serde_json::from_slice::<serde_json::Value>(&json)
        .ok()?
        .get("exp")?
        .as_f64()?;
    let now = now
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs_f64();
    Some(Duration::from_secs_f64(
        (exp - now).clamp(0.0, u32::MAX.into()),
    ))
}

/// How long a TokenReview answer about `token` is reused: a rejection
/// briefly; an acceptance for [`TOKEN_CACHE_TTL`], but never past the token's
/// own expiry.
fn answer_ttl(accepted: bool, token: &str, now: std::time::SystemTime) -> Duration {
    if !accepted {
        return TOKEN_NEGATIVE_TTL;
    }
    jwt_expires_in(token, now).map_or(TOKEN_CACHE_TTL, |left| left.min(TOKEN_CACHE_TTL))
}

/// A cached answer: when it expires, and the identity (`None`: rejected).
type CacheEntry = (Instant, Option<Identity>);

/// Checks bearer tokens with TokenReviews against the virtual API and keeps
/// the answers briefly.
#[derive(Debug)]
pub struct TokenAuthenticator {
    api: Api<TokenReview>,
    cache: Mutex<HashMap<[u8; 32], CacheEntry>>,
}

impl TokenAuthenticator {
    /// An authenticator asking the virtual API through `client`.
    pub fn new(client: kube::Client) -> Self {
        Self {
            api: Api::all(client),
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn key(token: &str) -> [u8; 32] {
        let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut k = [0u8; 32];
        k.copy_from_slice(d.as_ref());
        k
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Option<Identity>> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let (expires, id) = cache.get(key)?;
        (Instant::now() < *expires).then(|| id.clone())
    }

    fn remember(&self, key: [u8; 32], id: Option<Identity>, token: &str) {
        let ttl = answer_ttl(id.is_some(), token, std::time::SystemTime::now());
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= TOKEN_CACHE_MAX {
            cache.retain(|_, (expires, _)| *expires > now);
            if cache.len() >= TOKEN_CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(key, (now + ttl, id));
    }

    /// The identity of `token`, or `None` when the virtual API rejects it;
    /// an error when the TokenReview could not be made (the virtual API is
    /// unreachable).
    pub async fn authenticate(&self, token: &str) -> Result<Option<Identity>, ApiError> {
        let key = Self::key(token);
        if let Some(hit) = self.cached(&key) {
            return Ok(hit);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: None,
            },
            ..TokenReview::default()
        };
        let answer = self
            .api
            .create(&PostParams::default(), &review)
            .await
            .map_err(ApiError::of("token review failed"))?;
        let id = answer
            .status
            .filter(|s| s.authenticated == Some(true))
            .and_then(|s| s.user)
            .and_then(|u| {
                Some(Identity {
                    user: u.username.filter(|n| !n.is_empty())?,
                    uid: u.uid.filter(|n| !n.is_empty()),
                    groups: u.groups.unwrap_or_default(),
                    extra: u.extra.unwrap_or_default(),
                })
            });
        self.remember(key, id.clone(), token);
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Ca, CertSpec};

    #[test]
    fn client_certificate_names_user_and_group() {
        let ca = Ca::generate("ca", Duration::from_secs(3600)).unwrap();
        let leaf = ca
            .issue(&CertSpec::client(
                "alice",
                Some("team-a"),
                Duration::from_secs(3600),
            ))
            .unwrap();
        use rustls_pki_types::pem::PemObject as _;
        let der =
            rustls_pki_types::CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap();
        let id = from_client_cert(&der).unwrap();
        assert_eq!(id.user, "alice");
        assert_eq!(id.groups, ["team-a"]);
        assert!(from_client_cert(b"garbage").is_none());
    }

    #[test]
    fn a_jwt_answer_is_not_reused_past_its_exp() {
        use base64::Engine as _;
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let jwt = |exp: u64| {
            format!(
                "{}.{}.sig",
                b64(serde_json::json!({"alg": "RS256"})),
                b64(serde_json::json!({"iss": "https://idp", "exp": exp}))
            )
        };
        assert_eq!(
            jwt_expires_in(&jwt(1_000_004), now),
            Some(Duration::from_secs(4))
        );
        assert_eq!(jwt_expires_in(&jwt(999_000), now), Some(Duration::ZERO));
        assert_eq!(jwt_expires_in("opaque-token", now), None);
        assert_eq!(jwt_expires_in("a.bm90LWpzb24.c", now), None);

        // An accepted token expiring in 4 s is reused for 4 s, one expiring
        // in an hour for the usual 10 s, an expired one not at all.
        assert_eq!(
            answer_ttl(true, &jwt(1_000_004), now),
            Duration::from_secs(4)
        );
        assert_eq!(answer_ttl(true, &jwt(1_003_600), now), TOKEN_CACHE_TTL);
        assert_eq!(answer_ttl(true, &jwt(999_999), now), Duration::ZERO);
        assert_eq!(answer_ttl(true, "opaque-token", now), TOKEN_CACHE_TTL);
        assert_eq!(answer_ttl(false, &jwt(1_003_600), now), TOKEN_NEGATIVE_TTL);
    }

    #[test]
    fn only_bearer_authorization_is_a_token() {
        assert_eq!(bearer("Bearer abc.def"), Some("abc.def"));
        assert_eq!(bearer("bearer  tok "), Some("tok"));
        assert_eq!(bearer("Basic dXNlcjpwdw=="), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearer"), None);
    }
}
