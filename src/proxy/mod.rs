//! The front door: the vcluster's API endpoint for tenants.
//!
//! HTTPS (rustls) on `--front-door-listen` (default `:8443`). Every request is
//! authenticated ([`authn`]: a client certificate of the virtual cluster's
//! client CA, or a bearer token checked by TokenReview); an unauthenticated one
//! gets kube-apiserver's 401. Authenticated requests go to the virtual API
//! with the syncer's own credential, impersonating the caller ([`forward`]),
//! except the pod subresources served by the host's node agent, which
//! [`route`] recognises strictly and [`host`] sends to the synced host pod
//! after a SubjectAccessReview. No tenant state is kept beyond caches.

pub mod authn;
pub mod forward;
pub mod host;
pub mod route;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{Request, Response, StatusCode};
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
/// kept-alive connection may sit idle between requests.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once by default (`--front-door-max-connections`);
/// more are closed as they arrive (each is bounded in time by the timeouts
/// above until it sends a request).
pub const MAX_CONNECTIONS: u32 = 4096;

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
/// identity, if any), then HTTP/1.1 with upgrades until it closes.
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
    let cert_identity = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| authn::from_client_cert(c));
    let svc = hyper::service::service_fn(move |req| {
        let (shared, cert_identity) = (Arc::clone(&shared), cert_identity.clone());
        async move { Ok::<_, std::convert::Infallible>(handle(&shared, cert_identity, req).await) }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(tls), svc)
        .with_upgrades()
        .await
    {
        tracing::debug!(%peer, error = %e, "connection ended");
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
