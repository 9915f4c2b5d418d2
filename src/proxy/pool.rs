//! The front door's HTTP/2 connections to the virtual API: each request is a
//! stream on one of a few shared TLS connections (ALPN `h2`), each carrying
//! as many as the server allows (its `SETTINGS_MAX_CONCURRENT_STREAMS`);
//! another connection opens only when every one is full, and all but one idle
//! connection close. Protocol upgrades (exec, attach, port-forward) never come
//! here: they need HTTP/1.1 and go through the syncer's `kube::Client`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use kube::client::{Body, ConfigExt as _};
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;
use tracing::Instrument as _;

/// How long a TCP connect, and then the TLS and HTTP/2 handshakes, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a connection is pinged, and how long the answer may take before
/// the connection counts as dead (its streams fail, new ones go elsewhere).
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// After a failed attempt to connect, requests fail at once for this long
/// rather than each waiting for an attempt of its own.
const FAILURE_HOLD: Duration = Duration::from_secs(1);
/// What the API server may send on one stream before the front door has
/// passed it on. A tenant that stops reading stalls only its own stream: the
/// connection's window is large enough never to be the limit, so the bytes
/// held for stalled streams are at most this much each.
const STREAM_WINDOW: u32 = 256 << 10;
const CONNECTION_WINDOW: u32 = 1 << 30;

/// Failures of the HTTP/2 client.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The virtual API's client configuration could not be used.
    #[error("the virtual API's client configuration: {0}")]
    Config(#[from] kube::Error),
    /// The API server URL names no host.
    #[error("the API server URL {0} names no host")]
    NoHost(String),
    /// The TLS server name is not a valid DNS name or IP address.
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    /// Connecting (TCP, TLS or the HTTP/2 handshake) failed.
    #[error("cannot connect to {addr}: {why}")]
    Connect {
        /// host:port.
        addr: String,
        /// The cause.
        why: String,
    },
    /// The API server does not offer HTTP/2 (ALPN chose HTTP/1.1).
    #[error("{0} does not offer HTTP/2")]
    NoHttp2(String),
    /// A recent attempt to connect failed (its error).
    #[error("{0} (a connection failed less than a second ago)")]
    Held(String),
    /// Two connections in a row closed before taking the request.
    #[error("the connection to the virtual API closed before taking the request")]
    NotTaken,
    /// The request failed on its stream.
    #[error(transparent)]
    Request(#[from] hyper::Error),
}

/// A `kube::Client` whose requests go over HTTP/2, as long as the server
/// offers it.
#[derive(Clone)]
pub struct Http2Client {
    client: kube::Client,
    pool: Arc<Pool>,
}

impl std::fmt::Debug for Http2Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http2Client")
            .field("addr", &self.pool.addr())
            .finish_non_exhaustive()
    }
}

impl Http2Client {
    /// A client for `config`'s server, user and TLS settings. None when the
    /// server is not reached over HTTPS directly (plain HTTP, or through a
    /// proxy): HTTP/1.1 serves then.
    pub fn new(config: &kube::Config) -> Result<Option<Self>, PoolError> {
        let url = &config.cluster_url;
        if config.proxy_url.is_some() || url.scheme() != Some(&http::uri::Scheme::HTTPS) {
            return Ok(None);
        }
        let host = url
            .host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned())
            .ok_or_else(|| PoolError::NoHost(url.to_string()))?;
        let port = url.port_u16().unwrap_or(443);
        let name = config
            .tls_server_name
            .clone()
            .unwrap_or_else(|| host.clone());
        let server_name =
            ServerName::try_from(name.clone()).map_err(|_| PoolError::ServerName(name))?;
        let mut tls = config.rustls_client_config()?;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let pool = Arc::new(Pool {
            host,
            port,
            server_name,
            tls: TlsConnector::from(Arc::new(tls)),
            state: tokio::sync::Mutex::default(),
            http1_only: AtomicBool::new(false),
        });
        let service = tower::ServiceBuilder::new()
            .layer(config.base_uri_layer())
            .option_layer(config.auth_layer()?)
            .layer(config.extra_headers_layer()?)
            .service(Streams(Arc::clone(&pool)));
        Ok(Some(Self {
            client: kube::Client::new(service, config.default_namespace.clone()),
            pool,
        }))
    }

    /// The client, unless the server turned out not to offer HTTP/2.
    pub fn client(&self) -> Option<&kube::Client> {
        (!self.pool.http1_only.load(Ordering::Relaxed)).then_some(&self.client)
    }

    /// Connections open now.
    pub async fn connections(&self) -> usize {
        let mut state = self.pool.state.lock().await;
        state.conns.retain(|c| !c.send.is_closed());
        state.conns.len()
    }
}

struct Pool {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    tls: TlsConnector,
    state: tokio::sync::Mutex<State>,
    /// Set once the server answered ALPN with HTTP/1.1.
    http1_only: AtomicBool,
}

#[derive(Default)]
struct State {
    conns: Vec<Conn>,
    /// The last failed attempt to connect: when, and why.
    failed: Option<(Instant, String)>,
}

struct Conn {
    send: http2::SendRequest<Body>,
    /// Streams open on it (requests sent whose response has not been dropped).
    open: Arc<AtomicUsize>,
    /// The connection's own state, driven by its task.
    driver: Arc<std::sync::Mutex<Driver>>,
}

type Driver = http2::Connection<
    TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    Body,
    TokioExecutor,
>;

fn lock(driver: &std::sync::Mutex<Driver>) -> std::sync::MutexGuard<'_, Driver> {
    driver
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Conn {
    fn has_room(&self) -> bool {
        !self.send.is_closed() && self.open.load(Ordering::Acquire) < self.limit()
    }

    /// The server's current limit of streams on this connection.
    fn limit(&self) -> usize {
        lock(&self.driver).current_max_send_streams()
    }

    fn take(&self) -> (http2::SendRequest<Body>, Slot) {
        self.open.fetch_add(1, Ordering::AcqRel);
        (self.send.clone(), Slot(Arc::clone(&self.open)))
    }
}

/// One open stream, counted until dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Pool {
    fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// A connection with room for one more stream, opening one if none has.
    async fn stream(&self) -> Result<(http2::SendRequest<Body>, Slot), PoolError> {
        let mut state = self.state.lock().await;
        state.conns.retain(|c| !c.send.is_closed());
        // All but one idle connection close (their last handle goes).
        let mut idle_kept = false;
        state.conns.retain(|c| {
            let idle = c.open.load(Ordering::Acquire) == 0;
            let keep = !idle || !idle_kept;
            idle_kept |= idle;
            keep
        });
        if let Some(c) = state.conns.iter().find(|c| c.has_room()) {
            return Ok(c.take());
        }
        if let Some(c) = state.conns.first() {
            tracing::debug!(
                connections = state.conns.len(),
                streams = c.limit(),
                "every HTTP/2 connection to the virtual API is full: opening another"
            );
        }
        if let Some((at, why)) = &state.failed
            && at.elapsed() < FAILURE_HOLD
        {
            return Err(PoolError::Held(why.clone()));
        }
        match self.connect().await {
            Ok(c) => {
                state.failed = None;
                let taken = c.take();
                state.conns.push(c);
                Ok(taken)
            }
            Err(e) => {
                if matches!(e, PoolError::NoHttp2(_)) {
                    tracing::info!(addr = %self.addr(), "the virtual API does not offer HTTP/2; the front door uses HTTP/1.1");
                    self.http1_only.store(true, Ordering::Relaxed);
                }
                state.failed = Some((Instant::now(), e.to_string()));
                Err(e)
            }
        }
    }

    async fn connect(&self) -> Result<Conn, PoolError> {
        let addr = self.addr();
        let fail = |why: String| PoolError::Connect {
            addr: addr.clone(),
            why,
        };
        let handshakes = async {
            let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| fail(e.to_string()))?;
            let _ = tcp.set_nodelay(true);
            let tls = self
                .tls
                .connect(self.server_name.clone(), tcp)
                .await
                .map_err(|e| fail(e.to_string()))?;
            if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(PoolError::NoHttp2(addr.clone()));
            }
            http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(KEEP_ALIVE_INTERVAL)
                .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
                .keep_alive_while_idle(true)
                .initial_stream_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                // One stream until the server's SETTINGS say how many (any
                // server takes one): a burst on a new connection never
                // queues behind a limit it has not learnt yet, it opens
                // another connection (closed again once idle).
                .initial_max_send_streams(1)
                .handshake(TokioIo::new(tls))
                .await
                .map_err(|e| fail(e.to_string()))
        };
        let (send, conn) = tokio::time::timeout(CONNECT_TIMEOUT, handshakes)
            .await
            .map_err(|_| fail(format!("no HTTP/2 connection within {CONNECT_TIMEOUT:?}")))??;
        let driver = Arc::new(std::sync::Mutex::new(conn));
        let driving = Arc::clone(&driver);
        // The connection runs in the background; `has_room` reads the
        // server's current stream limit from it.
        let run = std::future::poll_fn(move |cx| Pin::new(&mut *lock(&driving)).poll(cx));
        tokio::spawn(
            async move {
                if let Err(e) = run.await {
                    tracing::debug!(error = %e, "HTTP/2 connection to the virtual API ended");
                }
            }
            // Its own span: it outlives the request that opened it.
            .instrument(tracing::info_span!(parent: None, "virtual API connection", %addr)),
        );
        tracing::debug!(%addr, "HTTP/2 connection to the virtual API opened");
        Ok(Conn {
            send,
            open: Arc::new(AtomicUsize::new(0)),
            driver,
        })
    }

    /// Sends `req` on a stream; a request the connection did not take (it
    /// closed meanwhile) is sent once more, on another.
    async fn send(self: Arc<Self>, req: Request<Body>) -> Result<Response<Counted>, PoolError> {
        match self.send_once(req).await? {
            Ok(resp) => Ok(resp),
            Err(back) => self.send_once(back).await?.map_err(|_| PoolError::NotTaken),
        }
    }

    /// The response, or the request back when its connection did not take it.
    async fn send_once(
        &self,
        req: Request<Body>,
    ) -> Result<Result<Response<Counted>, Request<Body>>, PoolError> {
        let (mut send, slot) = self.stream().await?;
        match send.try_send_request(req).await {
            Ok(resp) => Ok(Ok(resp.map(|body| Counted::new(body, slot)))),
            Err(mut e) => match e.take_message() {
                Some(back) => Ok(Err(back)),
                None => Err(e.into_error().into()),
            },
        }
    }
}

/// A response body that holds its stream's place in the count until dropped.
type Counted = super::forward::Guarded<Incoming, Slot>;

/// The pool as the innermost service of a `kube::Client`.
#[derive(Clone)]
struct Streams(Arc<Pool>);

impl tower::Service<Request<Body>> for Streams {
    type Response = Response<Counted>;
    type Error = tower::BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Counted>, tower::BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), tower::BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let pool = Arc::clone(&self.0);
        Box::pin(async move { pool.send(req).await.map_err(Into::into) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Ca, CertSpec};
    use futures::future::join_all;
    use http_body_util::{BodyExt as _, Full, StreamBody};
    use hyper::body::Bytes;
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    type Reply = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

    /// An HTTPS server on loopback offering `alpn`, allowing `streams` per
    /// HTTP/2 connection: `/hold` answers with a body that never ends, any
    /// other path with "ok". Returns its URL and CA certificate.
    async fn serve(alpn: &[&[u8]], streams: u32) -> (String, Vec<u8>) {
        let ca = Ca::generate("test-ca", Duration::from_secs(3600)).unwrap();
        let leaf = ca
            .issue(&CertSpec::server(
                "srv",
                &["127.0.0.1".to_owned()],
                Duration::from_secs(3600),
            ))
            .unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        let body: Reply = if req.uri().path() == "/hold" {
                            StreamBody::new(futures::stream::pending()).boxed()
                        } else {
                            Full::new(Bytes::from_static(b"ok")).boxed()
                        };
                        Ok::<_, std::convert::Infallible>(Response::new(body))
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .max_concurrent_streams(streams)
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        let ca_der = CertificateDer::from_pem_slice(ca.cert_pem().as_bytes())
            .unwrap()
            .to_vec();
        (url, ca_der)
    }

    fn client_for(url: &str, ca_der: Vec<u8>) -> Http2Client {
        let mut config = kube::Config::new(url.parse().unwrap());
        config.root_cert = Some(vec![ca_der]);
        Http2Client::new(&config).unwrap().unwrap()
    }

    async fn get(c: &kube::Client, path: &str) -> Result<Response<Body>, kube::Error> {
        c.send(Request::get(path).body(Body::empty()).unwrap())
            .await
    }

    #[tokio::test]
    async fn streams_spread_over_connections_at_the_servers_limit_and_idle_ones_close() {
        let (url, ca) = serve(&[b"h2"], 2).await;
        let h2 = client_for(&url, ca);
        let c = h2.client().unwrap().clone();
        // The first request also brings the server's limit.
        let ok = get(&c, "/").await.unwrap();
        assert_eq!(ok.version(), http::Version::HTTP_2);
        assert_eq!(
            &ok.into_body().collect().await.unwrap().to_bytes()[..],
            b"ok"
        );
        let held = tokio::time::timeout(
            Duration::from_secs(10),
            join_all((0..5).map(|_| get(&c, "/hold"))),
        )
        .await
        .expect("five open streams at two per connection");
        assert!(held.iter().all(Result::is_ok));
        // Three at two each; a fourth when a burst met a new connection
        // before its server's limit arrived.
        let n = h2.connections().await;
        assert!((3..=4).contains(&n), "{n} connections");
        drop(held);
        get(&c, "/").await.unwrap();
        assert_eq!(h2.connections().await, 1);
    }

    #[tokio::test]
    async fn a_server_without_http2_is_left_to_http1() {
        let (url, ca) = serve(&[b"http/1.1"], 100).await;
        let h2 = client_for(&url, ca);
        let c = h2.client().unwrap().clone();
        let err = get(&c, "/").await.unwrap_err();
        assert!(err.to_string().contains("does not offer HTTP/2"), "{err}");
        assert!(h2.client().is_none());
    }
}
