//! Sending a tenant's request on to an API server (the virtual one, or the
//! host for redirected pod subresources) with the syncer's own credential:
//! the response body streams (watches are not buffered) and a `101 Switching
//! Protocols` answer splices the two upgraded connections (SPDY, WebSocket).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tracing::Instrument as _;

use super::authn::Identity;
use super::pool::Http2Client;

/// A body that keeps `guard` until it is done or dropped (a count of the
/// requests or streams in progress, say).
pub struct Guarded<B, G> {
    body: B,
    _guard: G,
}

impl<B, G> std::fmt::Debug for Guarded<B, G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded").finish_non_exhaustive()
    }
}

impl<B, G> Guarded<B, G> {
    /// `body`, holding `guard` as long as it lives.
    pub fn new(body: B, guard: G) -> Self {
        Self {
            body,
            _guard: guard,
        }
    }
}

impl<B: hyper::body::Body + Unpin, G: Unpin> hyper::body::Body for Guarded<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// The body of every front-door response.
pub type ProxyBody =
    http_body_util::combinators::UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// The largest request body accepted (kube-apiserver itself stops at 3 MiB
/// for most objects).
const MAX_REQUEST_BODY: usize = 32 << 20;
/// How long a client may take to send a request body.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Headers that describe one hop and are never passed on (an upgrade's
/// `Connection`/`Upgrade` pair is re-added when the request asks for one).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

/// True for headers a client must not be able to pass through: credentials
/// and identity assertions.
fn is_identity_header(name: &str) -> bool {
    name == "authorization"
        || name.starts_with("impersonate-")
        || name.starts_with("x-remote-")
        || name == "cookie"
}

/// A response with a body.
pub fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut resp = Response::new(
        Full::new(body.into())
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

/// A `metav1.Status` failure as kube-apiserver writes it.
pub fn status(code: StatusCode, reason: &str, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    full(code, "application/json", body.to_string())
}

/// The 401 kube-apiserver answers to a request it cannot authenticate.
pub fn unauthorized() -> Response<ProxyBody> {
    status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized")
}

fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Percent-encodes an extra key for an `Impersonate-Extra-` header name, as
/// kube-apiserver decodes it.
fn encode_extra_key(key: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.');
    percent_encoding::utf8_percent_encode(key, KEEP).to_string()
}

/// The impersonation headers for `id`.
pub fn impersonation_headers(id: &Identity) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    let mut push = |name: String, value: &str| {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            out.push((n, v));
        }
    };
    push("impersonate-user".into(), &id.user);
    if let Some(uid) = &id.uid {
        push("impersonate-uid".into(), uid);
    }
    for g in &id.groups {
        push("impersonate-group".into(), g);
    }
    for (k, values) in &id.extra {
        let name = format!("impersonate-extra-{}", encode_extra_key(k));
        for v in values {
            push(name.clone(), v);
        }
    }
    out
}

/// Where and how a request goes on.
pub struct Upstream<'a> {
    /// The client holding the syncer's credential for that API.
    pub client: &'a kube::Client,
    /// Path and query on that API.
    pub path_and_query: String,
    /// Headers to add (impersonation); empty for the host.
    pub extra_headers: Vec<(HeaderName, HeaderValue)>,
    /// Which API, for logs and errors.
    pub which: &'static str,
    /// The same API over HTTP/2, for every request but protocol upgrades.
    pub http2: Option<&'a Http2Client>,
}

impl std::fmt::Debug for Upstream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("path_and_query", &self.path_and_query)
            .field("which", &self.which)
            .finish_non_exhaustive()
    }
}

/// Sends `req` upstream and returns the answer to give the tenant.
pub async fn forward(mut req: Request<Incoming>, up: Upstream<'_>) -> Response<ProxyBody> {
    let upgrade = wants_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let too_large = || {
        status(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            &format!("the request body is larger than {MAX_REQUEST_BODY} bytes"),
        )
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_REQUEST_BODY as u64) {
        return too_large();
    }
    let read = Limited::new(body, MAX_REQUEST_BODY).collect();
    let body = match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
        Ok(Err(e)) => {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("cannot read the request body: {e}"),
            );
        }
        Err(_) => {
            return status(
                StatusCode::REQUEST_TIMEOUT,
                "Timeout",
                &format!(
                    "the request body did not arrive within {} s",
                    BODY_TIMEOUT.as_secs()
                ),
            );
        }
    };
    let which = up.which;
    let mut resp = match send(&parts, body, &up, upgrade).await {
        Ok(r) => r,
        Err(SendError::Request(message)) => {
            return status(StatusCode::BAD_REQUEST, "BadRequest", &message);
        }
        Err(SendError::Upstream(e)) => {
            tracing::warn!(api = which, error = %e, "upstream request failed");
            return status(
                StatusCode::BAD_GATEWAY,
                "ServiceUnavailable",
                &format!("error trying to reach the {which} API: {e}"),
            );
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return status(
                StatusCode::BAD_GATEWAY,
                "InternalError",
                "upstream switched protocols without being asked to",
            );
        };
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        splice(client_upgrade, upstream_upgrade, which);
        let (rparts, _) = resp.into_parts();
        let mut back = Response::new(
            http_body_util::Empty::new()
                .map_err(|n| match n {})
                .boxed_unsync(),
        );
        *back.status_mut() = rparts.status;
        // The 101's Connection/Upgrade headers are what the client needs.
        *back.headers_mut() = rparts.headers;
        return back;
    }
    relay(resp)
}

enum SendError {
    /// The request cannot be sent as it is.
    Request(String),
    /// The API did not answer.
    Upstream(kube::Error),
}

/// Sends the request upstream: over HTTP/2 when `up` has it and this is no
/// protocol upgrade, else (or when the API turns out to offer HTTP/1.1 only)
/// over HTTP/1.1.
async fn send(
    parts: &http::request::Parts,
    body: Bytes,
    up: &Upstream<'_>,
    upgrade: bool,
) -> Result<Response<kube::client::Body>, SendError> {
    let request = || upstream_request(parts, body.clone(), up, upgrade).map_err(SendError::Request);
    if !upgrade && let Some(h2) = up.http2.and_then(Http2Client::client) {
        match h2.send(request()?).await {
            // The API has just answered ALPN with HTTP/1.1: this request too.
            Err(_) if up.http2.and_then(Http2Client::client).is_none() => {}
            r => return r.map_err(SendError::Upstream),
        }
    }
    up.client
        .send(request()?)
        .await
        .map_err(SendError::Upstream)
}

/// The request to send upstream: the tenant's method, headers (less hop-by-hop
/// and identity ones, plus `up`'s) and body, on `up`'s path; or why it is a
/// bad request.
fn upstream_request(
    parts: &http::request::Parts,
    body: Bytes,
    up: &Upstream<'_>,
    upgrade: bool,
) -> Result<Request<kube::client::Body>, String> {
    let mut out = Request::builder()
        .method(parts.method.clone())
        .uri(up.path_and_query.as_str());
    let Some(headers) = out.headers_mut() else {
        return Err(format!("invalid request path {:?}", up.path_and_query));
    };
    for (name, value) in &parts.headers {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n) || is_identity_header(n) {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        if let Some(u) = parts.headers.get(header::UPGRADE) {
            headers.insert(header::UPGRADE, u.clone());
        }
    }
    for (n, v) in &up.extra_headers {
        headers.append(n.clone(), v.clone());
    }
    out.body(kube::client::Body::from(body.to_vec()))
        .map_err(|e| format!("invalid request: {e}"))
}

/// Copies bytes both ways between the two upgraded connections, in the
/// background, until either side ends.
fn splice(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    which: &'static str,
) {
    let copy = async move {
        match tokio::try_join!(client, upstream) {
            Ok((c, u)) => {
                let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                    tracing::debug!(api = which, error = %e, "upgraded stream ended");
                }
            }
            Err(e) => tracing::warn!(api = which, error = %e, "protocol upgrade failed"),
        }
    };
    tokio::spawn(copy.instrument(tracing::info_span!("upgraded stream", api = which)));
}

/// The upstream answer as the tenant gets it: status, end-to-end headers and
/// the streaming body.
fn relay(resp: Response<kube::client::Body>) -> Response<ProxyBody> {
    let (rparts, rbody) = resp.into_parts();
    let mut back = Response::new(rbody.map_err(Into::into).boxed_unsync());
    *back.status_mut() = rparts.status;
    for (name, value) in &rparts.headers {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n) && n != "content-length" {
            continue;
        }
        back.headers_mut().append(name.clone(), value.clone());
    }
    back
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impersonation_carries_user_uid_groups_and_encoded_extras() {
        let id = Identity {
            user: "system:serviceaccount:a:b".into(),
            uid: Some("u-1".into()),
            groups: vec!["system:serviceaccounts".into(), "team".into()],
            extra: BTreeMap::from([(
                "authentication.kubernetes.io/pod-name".into(),
                vec!["web-1".into()],
            )]),
        };
        let h: Vec<(String, String)> = impersonation_headers(&id)
            .into_iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        assert_eq!(
            h,
            [
                ("impersonate-user", "system:serviceaccount:a:b"),
                ("impersonate-uid", "u-1"),
                ("impersonate-group", "system:serviceaccounts"),
                ("impersonate-group", "team"),
                (
                    "impersonate-extra-authentication.kubernetes.io%2fpod-name",
                    "web-1"
                ),
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
    }

    #[test]
    fn client_identity_headers_are_never_passed_on() {
        for h in [
            "authorization",
            "impersonate-user",
            "impersonate-group",
            "impersonate-extra-scopes",
            "x-remote-user",
        ] {
            assert!(is_identity_header(h), "{h}");
        }
        assert!(!is_identity_header("accept"));
    }

    #[test]
    fn upgrade_requests_are_recognised() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
        assert!(wants_upgrade(&h));
        h.remove(header::UPGRADE);
        assert!(!wants_upgrade(&h));
    }

    use std::collections::BTreeMap;
}
