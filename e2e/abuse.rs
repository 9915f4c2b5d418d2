//! Abuse of the front door (part of `e2e_frontdoor`): slow and idle
//! clients, oversized bodies, bad client certificates, another cluster's
//! token, impersonation from a non-admin. Each gets a clear answer (a status
//! code, or a failed handshake where kube-apiserver fails it too), nothing
//! reaches the virtual or host API on its behalf, and the front door keeps
//! serving others meanwhile. Path tricks on the redirected subresources are
//! `crafted_paths_reach_no_other_host_object` in `frontdoor.rs`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use http_body_util::{BodyExt as _, Empty, StreamBody};
use hyper::body::{Bytes, Frame};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use vcluster::proxy::{HANDSHAKE_TIMEOUT, HEADER_TIMEOUT, forward::BODY_TIMEOUT};

use crate::common::*;
use crate::{Env, bare_client, status_of};

/// How much later than its timeout the front door may close a connection.
const SLACK: Duration = Duration::from_secs(10);

pub fn port(env: &Env) -> u16 {
    env.server()
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap()
}

/// DER certificates of a PEM bundle.
pub fn pem_certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject as _;
    CertificateDer::pem_slice_iter(pem)
        .map(|c| c.unwrap())
        .collect()
}

pub fn pem_key(pem: &[u8]) -> PrivateKeyDer<'static> {
    use rustls::pki_types::pem::PemObject as _;
    PrivateKeyDer::from_pem_slice(pem).unwrap()
}

/// The front door's CA and the admin's certificate and key, from the tenant kubeconfig.
pub fn admin_material(env: &Env) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let kc = kube::config::Kubeconfig::read_from(env.kc()).unwrap();
    let ca = kc.clusters[0]
        .cluster
        .as_ref()
        .unwrap()
        .certificate_authority_data
        .clone()
        .unwrap();
    let user = kc.auth_infos[0].auth_info.as_ref().unwrap();
    let b64 = |s: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.decode(s).unwrap()
    };
    let cert = b64(user.client_certificate_data.as_ref().unwrap());
    let key = {
        use secrecy::ExposeSecret as _;
        b64(user.client_key_data.as_ref().unwrap().expose_secret())
    };
    (b64(&ca), cert, key)
}

/// A TLS connection to the front door, with `client` (certificate chain,
/// key) if given.
async fn tls(
    env: &Env,
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> std::io::Result<TlsStream<TcpStream>> {
    tls_offering(env, client, &[]).await
}

/// [`tls`] offering the application protocols `alpn`.
pub async fn tls_offering(
    env: &Env,
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let (ca, _, _) = admin_material(env);
    let mut roots = rustls::RootCertStore::empty();
    for c in pem_certs(&ca) {
        roots.add(c).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match client {
        // Sent as given: no check on this side (a malformed one included).
        Some((chain, key)) => {
            let signer = rustls::crypto::ring::sign::any_supported_type(&key).unwrap();
            let ck = rustls::sign::CertifiedKey::new(chain, signer);
            builder.with_client_cert_resolver(Arc::new(Fixed(Arc::new(ck))))
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = config;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(("127.0.0.1", port(env))).await?;
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
}

/// Always presents one certificate.
#[derive(Debug)]
struct Fixed(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for Fixed {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
    fn has_certs(&self) -> bool {
        true
    }
}

async fn admin_tls(env: &Env) -> TlsStream<TcpStream> {
    let (_, cert, key) = admin_material(env);
    tls(env, Some((pem_certs(&cert), pem_key(&key))))
        .await
        .unwrap()
}

/// Reads until the peer closes (or `limit` passes: then panics naming `what`);
/// returns what was read.
async fn until_closed<S: tokio::io::AsyncRead + Unpin>(
    what: &str,
    s: &mut S,
    limit: Duration,
) -> String {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return String::from_utf8_lossy(&got).into_owned(),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "{what}: still open after {limit:?}; read {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
}

/// kubectl through the front door works (others are served meanwhile).
fn others_are_served(env: &Env) {
    let out = kubectl_ok(&env.kc(), &["get", "namespaces", "-o", "name"], None);
    assert!(out.contains("namespace/default"), "{out}");
}

pub fn slow_and_idle_clients_are_cut_off(env: &Env) {
    block_on(async {
        // Many connections that never start TLS, some that finish the
        // handshake and say nothing, one stuck in its headers, one in its body.
        let mut raw = Vec::new();
        for _ in 0..200 {
            raw.push(TcpStream::connect(("127.0.0.1", port(env))).await.unwrap());
        }
        let mut idle = Vec::new();
        for _ in 0..20 {
            idle.push(admin_tls(env).await);
        }
        let mut headers = admin_tls(env).await;
        headers
            .write_all(b"GET /api/v1/namespaces HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            .await
            .unwrap();
        headers.flush().await.unwrap();
        let mut body = admin_tls(env).await;
        body.write_all(
            b"POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"metadata\":",
        )
        .await
        .unwrap();
        body.flush().await.unwrap();
        // Over HTTP/2: a connection that never sends its preface, and one
        // idle after a request.
        let (_, cert, key) = admin_material(env);
        let mut h2_silent = tls_offering(env, Some((pem_certs(&cert), pem_key(&key))), &[b"h2"])
            .await
            .unwrap();
        let (mut h2_send, h2_conn) = crate::http2::connect_h2::<Empty<Bytes>>(env, true).await;
        let req = http::Request::get("https://127.0.0.1/api/v1/namespaces")
            .body(Empty::new())
            .unwrap();
        assert_eq!(h2_send.send_request(req).await.unwrap().status(), 200);
        let started = Instant::now();
        std::thread::scope(|s| {
            s.spawn(|| others_are_served(env));
        });

        for (i, mut c) in raw.into_iter().enumerate() {
            let left = (HANDSHAKE_TIMEOUT + SLACK).saturating_sub(started.elapsed());
            until_closed(&format!("connection {i} without TLS"), &mut c, left).await;
        }
        assert!(
            started.elapsed() >= HANDSHAKE_TIMEOUT - Duration::from_secs(1),
            "closed before the handshake timeout"
        );
        others_are_served(env);
        for (i, mut c) in idle.into_iter().enumerate() {
            let left = (HEADER_TIMEOUT + SLACK).saturating_sub(started.elapsed());
            until_closed(&format!("idle TLS connection {i}"), &mut c, left).await;
        }
        let left = (HEADER_TIMEOUT + SLACK).saturating_sub(started.elapsed());
        until_closed("a connection stuck in its headers", &mut headers, left).await;
        let left = (HEADER_TIMEOUT + SLACK).saturating_sub(started.elapsed());
        until_closed(
            "an HTTP/2 connection without its preface",
            &mut h2_silent,
            left,
        )
        .await;
        let left = (HEADER_TIMEOUT + SLACK).saturating_sub(started.elapsed());
        // Closed (by GOAWAY, or less politely): either way it ended.
        let _ended = tokio::time::timeout(left, h2_conn)
            .await
            .expect("an idle HTTP/2 connection still open")
            .unwrap();
        drop(h2_send);
        others_are_served(env);
        let left = (BODY_TIMEOUT + SLACK).saturating_sub(started.elapsed());
        let answer = until_closed("a connection stuck in its body", &mut body, left).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("did not arrive within"), "{answer}");
    });
}

pub fn oversized_bodies_get_413(env: &Env) {
    block_on(async {
        let admin = client(&env.kc()).await;
        // A declared length over the limit: refused before the body is read
        // (the client has sent only the headers and a first piece).
        let mut c = admin_tls(env).await;
        c.write_all(format!("POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{{\"apiVersion\":\"v1\",", 33 << 20).as_bytes())
            .await
            .unwrap();
        c.flush().await.unwrap();
        let answer = until_closed(
            "an oversized declared body",
            &mut c,
            Duration::from_secs(10),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("larger than"), "{answer}");
        // Chunked, without a length: refused once the limit is passed.
        let mut c = admin_tls(env).await;
        c.write_all(b"POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        let chunk = vec![b'a'; 1 << 20];
        for _ in 0..40 {
            let head = format!("{:x}\r\n", chunk.len());
            if c.write_all(head.as_bytes()).await.is_err()
                || c.write_all(&chunk).await.is_err()
                || c.write_all(b"\r\n").await.is_err()
            {
                break;
            }
        }
        let answer =
            until_closed("a chunked oversized body", &mut c, Duration::from_secs(30)).await;
        assert!(
            answer.starts_with("HTTP/1.1 413"),
            "{}",
            &answer[..answer.len().min(300)]
        );
        // Over HTTP/2: a declared length over the limit (the body never
        // comes), then a body streamed without a length.
        let first = || Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"{\"apiVersion\":")));
        let (mut h2, _) = crate::http2::connect_h2(env, true).await;
        let req = http::Request::post("https://127.0.0.1/api/v1/namespaces/default/configmaps")
            .header("content-type", "application/json")
            .header("content-length", (33u64 << 20).to_string())
            .body(StreamBody::new(
                futures::stream::iter([first()])
                    .chain(futures::stream::pending())
                    .boxed(),
            ))
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(10), h2.send_request(req))
            .await
            .expect("an answer to an oversized declared body over HTTP/2")
            .unwrap();
        assert_eq!(answer.status(), 413);
        let text = answer.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&text).contains("larger than"));
        let chunks = (0..40).map(|_| Ok(Frame::data(Bytes::from(vec![b'a'; 1 << 20]))));
        let req = http::Request::post("https://127.0.0.1/api/v1/namespaces/default/configmaps")
            .header("content-type", "application/json")
            .body(StreamBody::new(
                futures::stream::iter(std::iter::once(first()).chain(chunks)).boxed(),
            ))
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(30), h2.send_request(req))
            .await
            .expect("an answer to an oversized streamed body over HTTP/2")
            .unwrap();
        assert_eq!(answer.status(), 413);
        let cms: Api<ConfigMap> = Api::namespaced(admin, "default");
        assert!(cms.get_opt("huge").await.unwrap().is_none());
        others_are_served(env);
    });
}

/// A client certificate for `cn` signed by the virtual client CA, valid
/// from `from` to `to` (Unix seconds).
fn client_cert(
    env: &Env,
    cn: &str,
    from: i64,
    to: i64,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let pki = env.stack.dir.path().join("vcluster/pki");
    let ca_pem = std::fs::read_to_string(pki.join("ca.crt")).unwrap();
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(pki.join("ca.key")).unwrap()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:masters");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = time::OffsetDateTime::from_unix_timestamp(from).unwrap();
    params.not_after = time::OffsetDateTime::from_unix_timestamp(to).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (
        vec![cert.der().clone()],
        PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
    )
}

/// Sends a GET on `c` and returns what comes back before it closes.
async fn get_on<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(c: &mut S) -> String {
    let _ = c
        .write_all(
            b"GET /api/v1/namespaces HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        )
        .await;
    until_closed(
        "a request with a bad certificate",
        c,
        Duration::from_secs(20),
    )
    .await
}

pub fn bad_client_certificates_are_refused(env: &Env) {
    block_on(async {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        // Expired, though signed by the right CA and naming system:masters.
        let expired = client_cert(env, "expired-admin", now - 86_400 * 30, now - 86_400);
        // Not yet valid.
        let future = client_cert(env, "future-admin", now + 86_400, now + 86_400 * 30);
        // Valid dates, but from a CA the front door does not know.
        let foreign = {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name
                .push(rcgen::DnType::CommonName, "vcluster-admin");
            p.distinguished_name
                .push(rcgen::DnType::OrganizationName, "system:masters");
            let c = p.self_signed(&key).unwrap();
            (
                vec![c.der().clone()],
                PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
        };
        // Not a certificate at all.
        let garbage = (
            vec![CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00])],
            expired.1.clone_key(),
        );
        for (what, material) in [
            ("expired", expired),
            ("not yet valid", future),
            ("unknown CA", foreign),
            ("malformed", garbage),
        ] {
            // The handshake is refused (as kube-apiserver refuses it): either
            // at once, or at the first read under TLS 1.3.
            match tls(env, Some(material)).await {
                Err(e) => {
                    let e = e.to_string();
                    assert!(!e.is_empty(), "{what}");
                }
                Ok(mut c) => {
                    let answer = get_on(&mut c).await;
                    assert!(
                        !answer.starts_with("HTTP/1.1 200"),
                        "{what} certificate served: {answer}"
                    );
                    assert!(answer.is_empty(), "{what}: {answer}");
                }
            }
            others_are_served(env);
        }
    });
}

pub fn foreign_tokens_and_impersonation_are_refused(env: &Env) {
    // A token of the host cluster (another cluster's API) is not one of this
    // vcluster's: TokenReview against the virtual API says no.
    let host_token = kubectl_ok(
        &env.host_kc(),
        &["-n", "default", "create", "token", "default"],
        None,
    );
    let kc = env.kc();
    let ns = "abuse";
    let _ = kubectl(&kc, &["create", "namespace", ns], None);
    kubectl_ok(&kc, &["-n", ns, "create", "serviceaccount", "nobody"], None);
    let token = kubectl_ok(&kc, &["-n", ns, "create", "token", "nobody"], None);
    block_on(async {
        let c = bare_client(env, Some(host_token.trim())).await;
        let (code, body) = status_of(&c, "GET", "/api/v1/namespaces").await;
        assert_eq!(code, 401, "a host token was accepted: {body}");

        // A non-admin asking to be someone else: the Impersonate-* headers are
        // dropped and the request is the caller's own (then forbidden).
        let c = bare_client(env, Some(token.trim())).await;
        let req = http::Request::builder()
            .method("GET")
            .uri("/api/v1/namespaces/kube-system/secrets")
            .header("Impersonate-User", "vcluster-admin")
            .header("Impersonate-Group", "system:masters")
            .header("Impersonate-Uid", "0")
            .header("X-Remote-User", "vcluster-admin")
            .header("X-Remote-Group", "system:masters")
            .body(Vec::new())
            .unwrap();
        match c.request_text(req).await {
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 403, "{s:?}");
                assert!(
                    s.message
                        .contains(&format!("system:serviceaccount:{ns}:nobody")),
                    "the request ran as someone else: {s:?}"
                );
            }
            other => panic!("impersonation was honoured: {other:?}"),
        }
        let req = http::Request::builder()
            .method("POST")
            .uri("/apis/authentication.k8s.io/v1/selfsubjectreviews")
            .header("Impersonate-User", "vcluster-admin")
            .header("Impersonate-Group", "system:masters")
            .header("content-type", "application/json")
            .body(
                br#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#.to_vec(),
            )
            .unwrap();
        let who = c.request_text(req).await.unwrap();
        assert!(
            who.contains(&format!("system:serviceaccount:{ns}:nobody")),
            "{who}"
        );
        assert!(!who.contains("system:masters"), "{who}");
    });
    others_are_served(env);
}

/// The front door's connection cap in `e2e_frontdoor` (lowered from the
/// default through `VCLUSTER_FRONT_DOOR_MAX_CONNECTIONS`, which the stack's
/// syncer inherits; above what the other abuse cases hold at once).
pub const CONNECTION_CAP: usize = 256;

pub fn connections_over_the_cap_are_closed_at_once(env: &Env) {
    block_on(async {
        // The cap's worth of connections that have not started TLS yet
        // (each holds its slot until the handshake timeout).
        let mut held = Vec::new();
        for _ in 0..CONNECTION_CAP {
            held.push(TcpStream::connect(("127.0.0.1", port(env))).await.unwrap());
        }
        // Accepted after them (the listen queue is first come, first
        // served): closed at once, not after the handshake timeout.
        let mut over = TcpStream::connect(("127.0.0.1", port(env))).await.unwrap();
        let started = Instant::now();
        until_closed(
            "a connection over the cap",
            &mut over,
            HANDSHAKE_TIMEOUT / 2,
        )
        .await;
        let took = started.elapsed();
        // The held ones stay open meanwhile.
        let mut buf = [0u8; 1];
        let first = tokio::time::timeout(Duration::from_millis(200), held[0].read(&mut buf)).await;
        assert!(first.is_err(), "a held connection was closed: {first:?}");
        drop(held);
        // Their slots come back.
        let (_, cert, key) = admin_material(env);
        eventually(
            "the front door to serve again",
            Duration::from_secs(30),
            || async {
                let mut c = tls(env, Some((pem_certs(&cert), pem_key(&key))))
                    .await
                    .map_err(|e| format!("{e:?}"))?;
                let answer = get_on(&mut c).await;
                if answer.starts_with("HTTP/1.1 200") {
                    Ok(())
                } else {
                    Err(answer)
                }
            },
        )
        .await;
        println!("a connection over the cap of {CONNECTION_CAP} was closed after {took:?}");
    });
}
