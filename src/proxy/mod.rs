//! The front door: the vcluster's API endpoint for tenants.
//!
//! HTTPS (rustls) on `--front-door-listen` (default `:8443`), HTTP/2 or
//! HTTP/1.1 as the client chooses by ALPN. Every request is
//! authenticated ([`authn`]: a client certificate of the virtual cluster's
//! client CA, or a bearer token checked by TokenReview); an unauthenticated one
//! gets kube-apiserver's 401. Authenticated requests go to the virtual API
//! with the syncer's own credential, impersonating the caller ([`forward`],
//! over the shared HTTP/2 connections of [`pool`]),
//! except the pod subresources served by the host's node agent, which
//! [`route`] recognises strictly and [`host`] sends to the synced host pod
//! after a SubjectAccessReview. No tenant state is kept beyond caches.

pub mod authn;
pub mod forward;
pub mod host;
pub mod pool;
pub mod route;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{Api, Patch, PatchParams};
use tokio_rustls::TlsAcceptor;
use tracing::Instrument as _;

use crate::api::{ApiError, has_owner};
use crate::discovery;
use crate::pki::{Ca, CertSpec};
use authn::{Identity, TokenAuthenticator};
use forward::{ProxyBody, Upstream};
use host::HostTarget;
use route::Route;

/// How long the admin client certificate in `vc-<name>` is valid.
const ADMIN_CERT_VALIDITY: Duration = Duration::from_secs(365 * 86_400);
/// How often the serving certificate's age is checked.
const RENEW_CHECK: Duration = Duration::from_secs(600);
/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's headers; also how long a
/// kept-alive connection may sit idle between requests (an HTTP/2 one: with
/// no request in progress).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once by default (`--front-door-max-connections`);
/// more are closed as they arrive (each is bounded in time by the timeouts
/// above until it sends a request).
pub const MAX_CONNECTIONS: u32 = 4096;
/// Requests served at once on one HTTP/2 connection: a client's watches
/// share its connection (upstream they spread over as many connections as
/// the virtual API's own limit needs, see [`pool`]).
pub const MAX_STREAMS: u32 = 1000;
/// The largest header block of an HTTP/2 request.
pub const MAX_HEADER_LIST: u32 = 64 << 10;
/// What one HTTP/2 response may hold of its body not yet sent: a client that
/// stops reading a watch stalls that stream only, holding at most this much.
const MAX_SEND_BUFFER: usize = 64 << 10;
/// How often an HTTP/2 client is pinged, and how long its answer may take
/// (a peer gone silent loses its connection and its watches).
const PING_INTERVAL: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(20);
/// How long an idle HTTP/2 connection told to close (GOAWAY) may take to.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Front-door failures at start-up.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// TLS set-up failed.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// A client CA file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The client CA could not be loaded for signing.
    #[error("client CA {path}: {source}")]
    ClientCa {
        /// The certificate file.
        path: PathBuf,
        /// The cause.
        source: crate::pki::PkiError,
    },
    /// The listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The kubeconfig Secret could not be read or written (`what` names it).
    #[error(transparent)]
    Secret(#[from] ApiError),
    /// The kubeconfig Secret could not be encoded for server-side apply.
    #[error("cannot encode Secret {name}: {source}")]
    Encode {
        /// Its name.
        name: String,
        /// The cause.
        source: serde_json::Error,
    },
    /// The kubeconfig could not be rendered.
    #[error(transparent)]
    Kubeconfig(#[from] crate::kubeconfig::KubeconfigError),
}

/// How the front door runs.
#[derive(Debug, Clone)]
pub struct FrontDoorOptions {
    /// Listen address.
    pub listen: SocketAddr,
    /// Connections served at once ([`MAX_CONNECTIONS`] by default).
    pub max_connections: usize,
    /// The virtual cluster's client CA certificate (PEM file).
    pub client_ca_cert: PathBuf,
    /// Its key (PEM: PKCS#8, or SEC1 for P-256), to sign the admin kubeconfig's certificate;
    /// without it no `vc-<name>` Secret is written.
    pub client_ca_key: Option<PathBuf>,
    /// Extra serving-certificate SANs.
    pub tls_sans: Vec<String>,
    /// Serving-certificate lifetime (renewed at two thirds).
    pub serving_validity: Duration,
    /// Server URL written in the `vc-<name>` kubeconfig.
    pub kubeconfig_server: String,
}

fn read(path: &PathBuf) -> Result<String, ProxyError> {
    std::fs::read_to_string(path).map_err(|source| ProxyError::Read {
        path: path.clone(),
        source,
    })
}

struct Shared {
    target: HostTarget,
    tokens: TokenAuthenticator,
    activity: Tracking,
}

/// What the front door tells sleep mode: a person's requests
/// ([`crate::sleep::activity`]) are recorded as activity, and wake the
/// cluster when it sleeps (without waiting for it).
#[derive(Debug)]
pub struct Tracking {
    /// The shared sleep state.
    pub sleep: Arc<crate::sleep::Sleep>,
    /// What counts.
    pub policy: crate::sleep::ActivityPolicy,
}

impl Tracking {
    /// Classifies one authenticated request and records it if it counts.
    pub fn record(&self, id: &Identity, req: &Request<Incoming>) {
        let uri = req.uri();
        if self
            .policy
            .classify(id, uri.path(), uri.query(), req.headers())
            == crate::sleep::Verdict::Counts
        {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            self.sleep.activity.touch(now);
        }
    }
}

/// Sets up TLS (serving certificates signed by `serving_ca`, the CA of
/// [`tls::serving_ca`]) and the `vc-<name>` Secret, then serves until the
/// process ends.
pub async fn run(
    target: HostTarget,
    opts: FrontDoorOptions,
    serving_ca: Ca,
    activity: Tracking,
) -> Result<(), ProxyError> {
    let client_ca_pem = read(&opts.client_ca_cert)?;
    let serving = serving_cert(&target, &opts, serving_ca).await?;
    let config = tls::server_config(Arc::clone(&serving), &client_ca_pem)?;
    if let Some(key_path) = &opts.client_ca_key {
        let client_ca = Ca::from_pem(&client_ca_pem, &read(key_path)?).map_err(|source| {
            ProxyError::ClientCa {
                path: opts.client_ca_cert.clone(),
                source,
            }
        })?;
        write_kubeconfig_secret(
            &target,
            &client_ca,
            serving.ca_pem(),
            &opts.kubeconfig_server,
        )
        .await?;
    } else {
        tracing::warn!("no --client-ca-key: the vc-<name> kubeconfig Secret is not written");
    }
    spawn_renewal(Arc::clone(&serving), opts.serving_validity);
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|source| ProxyError::Listen {
            addr: opts.listen,
            source,
        })?;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let shared = Arc::new(Shared {
        tokens: TokenAuthenticator::new(target.virt.clone()),
        target,
        activity,
    });
    tracing::info!(listen = %opts.listen, "front door serving");
    let max = opts.max_connections;
    let slots = Arc::new(tokio::sync::Semaphore::new(max));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(%peer, max, "front door at its connection limit; closing a new connection");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (acceptor, shared) = (acceptor.clone(), Arc::clone(&shared));
        tokio::spawn(
            async move {
                let _slot = slot;
                serve_connection(acceptor, shared, stream, peer).await
            }
            .instrument(tracing::info_span!("front-door connection", %peer)),
        );
    }
}

/// The serving certificate, from the serving CA, for the vcluster's names and
/// its Service's cluster IP.
async fn serving_cert(
    target: &HostTarget,
    opts: &FrontDoorOptions,
    ca: Ca,
) -> Result<Arc<tls::ServingCert>, ProxyError> {
    let vc = target.vcluster.as_str();
    let cluster_ip = Api::<Service>::namespaced(target.host.clone(), &target.namespace)
        .get_opt(vc)
        .await
        .ok()
        .flatten()
        .and_then(|s| s.spec)
        .and_then(|s| s.cluster_ip)
        .filter(|ip| ip != "None" && !ip.is_empty());
    let sans = tls::sans(vc, &target.namespace, cluster_ip.as_deref(), &opts.tls_sans);
    Ok(Arc::new(tls::ServingCert::new(
        ca,
        sans,
        opts.serving_validity,
    )?))
}

/// Checks the serving certificate's age in the background and renews it when due.
fn spawn_renewal(serving: Arc<tls::ServingCert>, validity: Duration) {
    let renew = async move {
        loop {
            tokio::time::sleep(RENEW_CHECK.min(validity / 6)).await;
            match serving.renew_if_due(SystemTime::now()) {
                Ok(true) => tracing::info!("front-door serving certificate renewed"),
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "cannot renew the serving certificate"),
            }
        }
    };
    tokio::spawn(renew.instrument(tracing::info_span!("serving-cert renewal")));
}

/// One tenant connection: the TLS handshake (with the client certificate's
/// identity, if any), then HTTP/2 when the client chose it by ALPN, else
/// HTTP/1.1 with upgrades, until it closes.
async fn serve_connection(
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let session = tls.get_ref().1;
    let cert_identity = session
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| authn::from_client_cert(c));
    let served = if session.alpn_protocol() == Some(b"h2") {
        serve_http2(TokioIo::new(tls), shared, cert_identity).await
    } else {
        let svc = hyper::service::service_fn(move |req| {
            let (shared, cert_identity) = (Arc::clone(&shared), cert_identity.clone());
            async move { Ok::<_, std::convert::Infallible>(handle(&shared, cert_identity, req).await) }
        });
        hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(TokioIo::new(tls), svc)
            .with_upgrades()
            .await
    };
    if let Err(e) = served {
        tracing::debug!(%peer, error = %e, "connection ended");
    }
}

/// An HTTP/2 tenant connection: up to [`MAX_STREAMS`] requests at once; one
/// without any for [`HEADER_TIMEOUT`] is closed (GOAWAY, then dropped if it
/// has not closed within [`CLOSE_GRACE`]), as an idle HTTP/1.1 connection is.
async fn serve_http2<I>(
    io: I,
    shared: Arc<Shared>,
    cert_identity: Option<Identity>,
) -> Result<(), hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let in_progress = InProgress::default();
    let requests = in_progress.clone();
    let svc = hyper::service::service_fn(move |req| {
        let (shared, cert_identity) = (Arc::clone(&shared), cert_identity.clone());
        let started = requests.start();
        async move {
            let resp = handle(&shared, cert_identity, req).await;
            Ok::<_, std::convert::Infallible>(
                resp.map(|body| forward::Guarded::new(body, started).boxed_unsync()),
            )
        }
    });
    let conn = hyper::server::conn::http2::Builder::new(SpanExecutor(tracing::Span::current()))
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buf_size(MAX_SEND_BUFFER)
        .keep_alive_interval(PING_INTERVAL)
        .keep_alive_timeout(PING_TIMEOUT)
        .serve_connection(io, svc);
    tokio::pin!(conn);
    tokio::select! {
        done = conn.as_mut() => return done,
        () = in_progress.idle_for(HEADER_TIMEOUT) => {}
    }
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        done = conn.as_mut() => done,
        () = in_progress.idle_for(CLOSE_GRACE) => Ok(()),
    }
}

/// Runs the tasks of an HTTP/2 connection (one per stream) in its span.
#[derive(Clone)]
struct SpanExecutor(tracing::Span);

impl<F> hyper::rt::Executor<F> for SpanExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(fut.instrument(self.0.clone()));
    }
}

/// The requests in progress on one connection (from their headers until
/// their response body is done or dropped), so that one without any for a
/// while can be closed.
#[derive(Clone, Default)]
struct InProgress(Arc<tokio::sync::watch::Sender<usize>>);

impl InProgress {
    fn start(&self) -> Started {
        self.0.send_modify(|n| *n += 1);
        Started(Arc::clone(&self.0))
    }

    /// Completes once no request has been in progress for `quiet` (a request
    /// that starts or ends meanwhile starts the wait again).
    async fn idle_for(&self, quiet: Duration) {
        let mut changes = self.0.subscribe();
        loop {
            let busy = *changes.borrow_and_update() > 0;
            tokio::select! {
                () = tokio::time::sleep(quiet), if !busy => return,
                _ = changes.changed() => {}
            }
        }
    }
}

/// One request in progress, until dropped.
struct Started(Arc<tokio::sync::watch::Sender<usize>>);

impl Drop for Started {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

async fn authenticate(
    shared: &Shared,
    cert: Option<Identity>,
    req: &Request<Incoming>,
) -> Result<Option<Identity>, Response<ProxyBody>> {
    if let Some(id) = cert {
        return Ok(Some(id));
    }
    let Some(token) = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(authn::bearer)
    else {
        return Ok(None);
    };
    shared.tokens.authenticate(token).await.map_err(|e| {
        tracing::warn!(error = %e, "token review failed");
        forward::status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "cannot authenticate the request: the virtual API is unavailable",
        )
    })
}

async fn handle(
    shared: &Shared,
    cert: Option<Identity>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let id = match authenticate(shared, cert, &req).await {
        Ok(Some(id)) => id,
        Ok(None) => return forward::unauthorized(),
        Err(resp) => return resp,
    };
    shared.activity.record(&id, &req);
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    match route::classify(&path, query.as_deref()) {
        Route::Virtual => {
            let path_and_query = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_else(|| "/".to_owned());
            forward::forward(
                req,
                Upstream {
                    client: &shared.target.virt,
                    path_and_query,
                    extra_headers: forward::impersonation_headers(&id),
                    which: "virtual",
                    http2: shared.target.virt_http2.as_ref(),
                },
            )
            .await
        }
        Route::Host(t) => shared.target.serve(req, &id, t).await,
        Route::Reject(why) => forward::status(StatusCode::BAD_REQUEST, "BadRequest", &why),
        Route::NodeProxy(node) => forward::status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            &route::node_proxy_refusal(&node),
        ),
    }
}

/// Writes Secret `vc-<name>`: an admin kubeconfig (client certificate of the
/// virtual client CA in `system:masters`) for `server`, trusting the serving
/// CA. An existing Secret for the same server and CA is kept.
async fn write_kubeconfig_secret(
    target: &HostTarget,
    client_ca: &Ca,
    serving_ca_pem: &str,
    server: &str,
) -> Result<(), ProxyError> {
    let vc = target.vcluster.as_str();
    let name = discovery::kubeconfig_secret(vc);
    let api: Api<Secret> = Api::namespaced(target.host.clone(), &target.namespace);
    let secret_err =
        |e| ProxyError::Secret(ApiError::new(format!("cannot write Secret {name}"), e));
    if let Some(existing) = api.get_opt(&name).await.map_err(secret_err)?
        && let Some(kc) = existing
            .data
            .as_ref()
            .and_then(|d| d.get(discovery::KUBECONFIG_KEY))
            .and_then(|b| std::str::from_utf8(&b.0).ok())
            .and_then(|y| kube::config::Kubeconfig::from_yaml(y).ok())
        && crate::kubeconfig::points_at(&kc, server, serving_ca_pem)
        && has_owner(
            existing.metadata.owner_references.as_deref(),
            target.owner.as_ref(),
        )
    {
        return Ok(());
    }
    let cert = client_ca
        .issue(&CertSpec::client(
            "vcluster-admin",
            Some("system:masters"),
            ADMIN_CERT_VALIDITY,
        ))
        .map_err(tls::TlsError::from)?;
    let context = format!("vcluster-{vc}");
    let kc = crate::kubeconfig::client_cert(
        &context,
        server,
        serving_ca_pem,
        &cert.cert_pem,
        &cert.key_pem,
    );
    let yaml = crate::kubeconfig::to_yaml(&kc)?;
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.clone()),
            labels: Some(discovery::labels(vc, discovery::COMPONENT_KUBECONFIG)),
            owner_references: target.owner.clone().map(|o| vec![o]),
            ..Default::default()
        },
        data: Some(
            [(
                discovery::KUBECONFIG_KEY.to_owned(),
                ByteString(yaml.into_bytes()),
            )]
            .into(),
        ),
        ..Secret::default()
    };
    let mut value = serde_json::to_value(&secret).map_err(|source| ProxyError::Encode {
        name: name.clone(),
        source,
    })?;
    value["apiVersion"] = "v1".into();
    value["kind"] = "Secret".into();
    api.patch(
        &name,
        &PatchParams::apply(crate::FIELD_MANAGER).force(),
        &Patch::Apply(value),
    )
    .await
    .map_err(secret_err)?;
    tracing::info!(secret = %name, %server, "admin kubeconfig written");
    Ok(())
}
