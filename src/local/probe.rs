//! How the stack sees that its components answer: API clients from admin
//! kubeconfigs, the self-signed health endpoints of the controller-manager
//! and scheduler, and plain-HTTP probes of the syncer.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use kube::config::Kubeconfig;

use super::LocalError;
use crate::api::ApiError;

/// A client for the API server behind an admin kubeconfig (`what` names it in errors).
pub(super) async fn client_for(
    kubeconfig_yaml: &str,
    what: &str,
) -> Result<kube::Client, LocalError> {
    let what = format!("client for {what}");
    let kc = Kubeconfig::from_yaml(kubeconfig_yaml)
        .map_err(|e| ApiError::new(what.clone(), e.into()))?;
    Ok(crate::kubeconfig::client(kc)
        .await
        .map_err(ApiError::of(what))?)
}

/// A client for a component's self-signed health endpoint.
pub(super) fn health_client(port: u16) -> Result<kube::Client, LocalError> {
    let url = format!("https://127.0.0.1:{port}")
        .parse()
        .map_err(|_| LocalError::Io {
            what: format!("parse health URL for port {port}"),
            source: std::io::Error::other("invalid URL"),
        })?;
    let mut config = kube::Config::new(url);
    config.accept_invalid_certs = true;
    Ok(kube::Client::try_from(config)
        .map_err(ApiError::of(format!("health client for port {port}")))?)
}

/// True when `GET path` answers `ok`.
pub(super) async fn get_ok(client: &kube::Client, path: &str) -> bool {
    match http::Request::get(path).body(Vec::new()) {
        Ok(req) => client
            .request_text(req)
            .await
            .is_ok_and(|body| body.trim() == "ok"),
        Err(_) => false,
    }
}

/// True when the API server behind an admin kubeconfig file answers `/readyz`.
pub async fn api_ready(kubeconfig: &Path) -> bool {
    let Ok(yaml) = std::fs::read_to_string(kubeconfig) else {
        return false;
    };
    match client_for(&yaml, "status").await {
        Ok(c) => get_ok(&c, "/readyz").await,
        Err(_) => false,
    }
}

/// True when `GET path` on 127.0.0.1:`port` (plain HTTP) answers 200.
pub async fn http_ok(port: u16, path: &str) -> bool {
    http_get(port, path).await.is_some()
}

/// The body of `GET path` on 127.0.0.1:`port` (plain HTTP) when it answers
/// 200 within 5 seconds.
pub async fn http_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .ok()?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        Some(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    (head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200")).then(|| body.to_owned())
}
