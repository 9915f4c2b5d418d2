//! A real OpenID provider for the single sign-on suites: Dex, built from its
//! pinned module by `e2e/kube/build.sh --shared dex`, on 127.0.0.1 over HTTPS
//! with a CA of its own, memory storage, static users (password grant through
//! the staticUsers connector) and static clients whose secret is
//! `<id>-secret`. Its issuer may name another address than the one it
//! listens on (the real node's relay, `vcluster dev up --node-relay`), so an
//! API server inside the node's namespace reaches the same provider.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use vcluster::local::process::{Tie, spawn};
use vcluster::pki::{Ca, CertSpec};

use super::shared::{HostService, shared_bin};
use super::{block_on, eventually};

use super::free_port;

/// Every static user's password.
pub const PASSWORD: &str = "correct horse battery staple";

/// What the provider is started with.
pub struct DexSpec<'a> {
    /// The address its issuer URL names (and its certificate covers, beside
    /// 127.0.0.1, where it listens).
    pub address: &'a str,
    /// Static users ([`user`]).
    pub users: Vec<Value>,
    /// Static client ids.
    pub clients: &'a [&'a str],
    /// How long ID tokens live.
    pub token_life: Duration,
}

/// A running provider.
pub struct Dex {
    _process: HostService,
    /// Where it listens, on 127.0.0.1.
    pub port: u16,
    /// Its CA (PEM).
    pub ca_pem: String,
    /// Its issuer URL, the tokens' `iss`.
    pub issuer: String,
}

/// A static user with [`PASSWORD`] in `groups`.
pub fn user(name: &str, groups: &[&str]) -> Value {
    json!({
        "username": name,
        "password": PASSWORD,
        "email": format!("{name}@example.test"),
        "userID": format!("{name}-id"),
        "groups": groups,
    })
}

/// Starts Dex with `spec` (files and log in `dir`) and waits for its
/// discovery document.
pub fn start(dir: &Path, spec: &DexSpec) -> Dex {
    let ca = Ca::generate("e2e-sso-provider-ca", Duration::from_secs(3600)).unwrap();
    let mut sans = vec!["127.0.0.1".to_owned()];
    if spec.address != "127.0.0.1" {
        sans.push(spec.address.to_owned());
    }
    let serving = ca
        .issue(&CertSpec::server("dex", &sans, Duration::from_secs(3600)))
        .unwrap();
    std::fs::write(dir.join("dex.crt"), &serving.cert_pem).unwrap();
    std::fs::write(dir.join("dex.key"), &serving.key_pem).unwrap();
    let port = free_port();
    let issuer = format!("https://{}:{port}/dex", spec.address);
    let clients: Vec<Value> = spec
        .clients
        .iter()
        .enumerate()
        .map(|(i, id)| {
            json!({"id": id, "secret": format!("{id}-secret"), "name": id,
                   "redirectURIs": [format!("http://127.0.0.1:{}/callback", 8000 + i)]})
        })
        .collect();
    let config = json!({
        "issuer": issuer,
        "storage": {"type": "memory"},
        "web": {
            "https": format!("127.0.0.1:{port}"),
            "tlsCert": dir.join("dex.crt"),
            "tlsKey": dir.join("dex.key"),
        },
        "logger": {"level": "info"},
        "expiry": {"idTokens": format!("{}s", spec.token_life.as_secs())},
        "oauth2": {"passwordConnector": "static", "skipApprovalScreen": true},
        "staticClients": clients,
        "connectors": [{
            "type": "staticUsers", "id": "static", "name": "static",
            "config": {"users": spec.users},
        }],
    });
    let path = dir.join("dex.yaml");
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    let process = spawn(
        "dex",
        &shared_bin("dex"),
        &["serve".to_owned(), path.display().to_string()],
        &[],
        &dir.join("dex.log"),
        Tie::ToParent,
    )
    .unwrap();
    let dex = Dex {
        _process: HostService(process),
        port,
        ca_pem: ca.cert_pem().to_owned(),
        issuer,
    };
    block_on(async {
        let d = &dex;
        eventually(
            "Dex's discovery document",
            Duration::from_secs(60),
            || async move {
                let (status, body) = d
                    .request("GET", "/dex/.well-known/openid-configuration", None)
                    .await?;
                let doc: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
                (status == 200 && doc["issuer"] == d.issuer.as_str())
                    .then_some(())
                    .ok_or(format!("{status}: {body}"))
            },
        )
        .await;
    });
    dex
}

impl Dex {
    /// One HTTPS request to the provider on 127.0.0.1, verified against its CA.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        form: Option<String>,
    ) -> Result<(u16, String), String> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .map_err(|e| e.to_string())?;
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", format!("127.0.0.1:{}", self.port))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form.unwrap_or_default())))
            .unwrap();
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// An ID token of `username` for `client`, by the password grant.
    pub fn id_token(&self, username: &str, client: &str) -> String {
        let secret = format!("{client}-secret");
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "password")
            .append_pair("username", username)
            .append_pair("password", PASSWORD)
            .append_pair("scope", "openid email profile groups")
            .append_pair("client_id", client)
            .append_pair("client_secret", &secret)
            .finish();
        let mut token = String::new();
        block_on(async {
            let (status, body) = self
                .request("POST", "/dex/token", Some(form))
                .await
                .unwrap();
            assert_eq!(status, 200, "password grant for {username}: {body}");
            let v: Value = serde_json::from_str(&body).unwrap();
            token = v["id_token"].as_str().unwrap().to_owned();
        });
        token
    }
}
