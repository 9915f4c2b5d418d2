//! HTTP/2 through the front door (part of `e2e_frontdoor`): a client that
//! offers only `h2` gets it and is served as over HTTP/1.1 (certificates,
//! tokens, impersonation dropped, the node-proxy refusal, logs from the
//! host); 500 watches on one client connection all see a change, while the
//! syncer holds a few connections to the virtual API for them (kube-apiserver
//! allows 100 streams on one; not 500 connections) and its resident memory
//! stays bounded.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::abuse::{admin_material, pem_certs, pem_key, tls_offering};
use crate::common::*;
use crate::{Env, running_pod};

const T: Duration = Duration::from_secs(60);
const WATCHES: usize = 500;
/// How much the syncer's resident memory may grow while it serves the
/// watches (measured: a few MiB).
const RSS_GROWTH_BOUND_KIB: u64 = 64 << 10;

/// One HTTP/2 connection to the front door that offered only `h2`, with the
/// admin's certificate or none, and its task (which ends when the connection
/// closes); panics unless `h2` was chosen.
pub async fn connect_h2<B>(
    env: &Env,
    admin: bool,
) -> (SendRequest<B>, tokio::task::JoinHandle<hyper::Result<()>>)
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (_, cert, key) = admin_material(env);
    let material = admin.then(|| (pem_certs(&cert), pem_key(&key)));
    let tls = tls_offering(env, material, &[b"h2"]).await.unwrap();
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "the front door did not choose h2"
    );
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    (send, tokio::spawn(conn))
}

fn request(method: &str, path: &str, token: Option<&str>, body: &str) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("https://127.0.0.1{path}"))
        .header("content-type", "application/json");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
}

/// Status and body text of one request on `send`; the answer must be HTTP/2.
async fn call(
    send: &mut SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> (StatusCode, String) {
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.version(), Version::HTTP_2);
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

const WHOAMI: &str = r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#;

pub fn http2_is_chosen_and_serves_as_http1_does(env: &Env) {
    let ns = "h2";
    let node = running_pod(env, ns, "web");
    kubectl_ok(
        &env.kc(),
        &["-n", ns, "create", "serviceaccount", "reader"],
        None,
    );
    let token = kubectl_ok(&env.kc(), &["-n", ns, "create", "token", "reader"], None);
    let token = token.trim();
    block_on(async {
        // The admin by client certificate.
        let (mut admin, _) = connect_h2(env, true).await;
        let (code, body) = call(
            &mut admin,
            request("GET", "/api/v1/namespaces/default", None, ""),
        )
        .await;
        assert_eq!(code, 200, "{body}");
        let got: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(got["metadata"]["name"], "default", "{body}");
        let (_, who) = call(
            &mut admin,
            request(
                "POST",
                "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                None,
                WHOAMI,
            ),
        )
        .await;
        assert!(
            who.contains("vcluster-admin") && who.contains("system:masters"),
            "{who}"
        );
        // Logs from the host pod (a redirected route) and the node-proxy refusal.
        let (code, logs) = call(
            &mut admin,
            request(
                "GET",
                &format!("/api/v1/namespaces/{ns}/pods/web/log"),
                None,
                "",
            ),
        )
        .await;
        assert_eq!(code, 200, "{logs}");
        assert!(logs.contains("hello from the host node agent"), "{logs}");
        let (code, body) = call(
            &mut admin,
            request(
                "GET",
                &format!("/api/v1/nodes/{node}/proxy/stats/summary"),
                None,
                "",
            ),
        )
        .await;
        assert_eq!(code, 403, "{body}");
        assert!(
            body.contains("the node proxy is not served in a virtual cluster"),
            "{body}"
        );

        // Without a certificate: nothing, a bad token, then a service
        // account's token, whose Impersonate-* headers are dropped.
        let (mut anon, _) = connect_h2(env, false).await;
        for t in [None, Some("not-a-valid-token")] {
            let (code, body) = call(&mut anon, request("GET", "/api/v1/namespaces", t, "")).await;
            assert_eq!(code, 401, "{t:?}: {body}");
        }
        let mut req = request(
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            Some(token),
            WHOAMI,
        );
        for (h, v) in [
            ("impersonate-user", "vcluster-admin"),
            ("impersonate-group", "system:masters"),
        ] {
            req.headers_mut().insert(h, v.parse().unwrap());
        }
        let (code, who) = call(&mut anon, req).await;
        assert_eq!(code, 201, "{who}");
        assert!(
            who.contains(&format!("system:serviceaccount:{ns}:reader")),
            "{who}"
        );
        assert!(!who.contains("system:masters"), "{who}");
        let (code, body) = call(
            &mut anon,
            request(
                "GET",
                &format!("/api/v1/namespaces/{ns}/pods"),
                Some(token),
                "",
            ),
        )
        .await;
        assert_eq!(code, 403, "{body}");
    });
}

/// Established TCP connections of process `pid` to 127.0.0.1:`port`.
fn connections_to(pid: u32, port: u16) -> usize {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let remote = format!(":{port:04X}");
    ["tcp", "tcp6"]
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(format!("/proc/{pid}/net/{f}"))
                .unwrap_or_default()
                .lines()
                .skip(1)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() > 9
                && cols[2].ends_with(&remote)
                && cols[3] == "01"
                && inodes.contains(cols[9])
        })
        .count()
}

/// Reads a watch until an event names `name`.
async fn event_for(body: &mut Incoming, name: &str) -> Result<(), String> {
    let needle = format!("\"name\":\"{name}\"");
    let mut seen = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Some(data) = frame.data_ref() {
            seen.extend_from_slice(data);
            if String::from_utf8_lossy(&seen).contains(&needle) {
                return Ok(());
            }
        }
    }
    Err(format!(
        "the watch ended first: {}",
        String::from_utf8_lossy(&seen)
    ))
}

pub fn five_hundred_watches_on_one_connection(env: &Env) {
    let ns = "h2-watch";
    kubectl_ok(&env.kc(), &["create", "namespace", ns], None);
    let syncer = env
        .stack
        .state
        .processes
        .iter()
        .find(|p| p.name == "syncer")
        .map(|p| p.pid)
        .unwrap();
    let api_port = env.stack.state.vcluster.ports.as_ref().unwrap().apiserver;
    block_on(async {
        let (mut send, _) = connect_h2(env, true).await;
        // Warm: the front door's first HTTP/2 connection upstream.
        let (code, _) = call(
            &mut send,
            request("GET", "/api/v1/namespaces/default", None, ""),
        )
        .await;
        assert_eq!(code, 200);
        let (rss0, conns0) = (rss_kib(syncer), connections_to(syncer, api_port));
        let path = format!("/api/v1/namespaces/{ns}/configmaps?watch=1&timeoutSeconds=600");
        let started = Instant::now();
        let opened = futures::stream::iter(0..WATCHES)
            .map(|_| {
                let mut send = send.clone();
                let req = request("GET", &path, None, "");
                async move { send.send_request(req).await }
            })
            .buffer_unordered(WATCHES)
            .collect::<Vec<_>>();
        let mut watches = Vec::new();
        for r in tokio::time::timeout(T, opened)
            .await
            .expect("500 watches to open")
        {
            let resp = r.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.version(), Version::HTTP_2);
            watches.push(resp.into_body());
        }
        let open_took = started.elapsed();
        kubectl_ok(&env.kc(), &["-n", ns, "create", "configmap", "ping"], None);
        let created = Instant::now();
        let delivered = futures::future::join_all(watches.iter_mut().map(|b| event_for(b, "ping")));
        let results = tokio::time::timeout(T, delivered)
            .await
            .expect("every watch to see the change");
        let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        assert!(
            failed.is_empty(),
            "{} watches failed, first: {:?}",
            failed.len(),
            failed.first()
        );
        let delivery = created.elapsed();
        let (rss1, conns1) = (rss_kib(syncer), connections_to(syncer, api_port));
        println!(
            "{WATCHES} watches on one HTTP/2 connection: opened in {open_took:?}, the change seen by all {delivery:?} after kubectl created it; \
             syncer connections to the virtual API {conns0} -> {conns1}; syncer RSS {:.1} -> {:.1} MiB",
            rss0 as f64 / 1024.0,
            rss1 as f64 / 1024.0
        );
        // Multiplexed upstream too: kube-apiserver allows 100 streams per
        // connection (its default), so a few more connections, not one per
        // watch (up to twice as many as the streams need: a burst that meets
        // a new connection before the server's limit has arrived on it opens
        // another).
        assert!(
            conns1 <= conns0 + 2 * WATCHES / 100 + 1,
            "{conns0} -> {conns1} connections to the virtual API"
        );
        assert!(
            rss1.saturating_sub(rss0) < RSS_GROWTH_BOUND_KIB,
            "the syncer grew from {rss0} KiB to {rss1} KiB"
        );
        // Their streams end with them; the connection serves on.
        drop(watches);
        let (code, _) = call(
            &mut send,
            request("GET", "/api/v1/namespaces/default", None, ""),
        )
        .await;
        assert_eq!(code, 200);
    });
}
