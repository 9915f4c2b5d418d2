//! The listeners: UDP (answers cut to the client's EDNS payload size, else
//! 512 bytes, with TC set so it asks again over TCP) and TCP (length-framed
//! messages, several per connection, closed after 10 s idle).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Name};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, mpsc, watch};
use tracing::Instrument as _;

use super::forward::Forwarder;
use super::records::{Outcome, Records, Zone};
use crate::sync::metrics;

/// The payload size this server announces and the most it sends over UDP.
const MAX_UDP_PAYLOAD: u16 = 1232;
/// Queries answered at once over UDP; more are dropped (the client retries).
const MAX_UDP_INFLIGHT: usize = 1024;
/// TCP connections at once.
const MAX_TCP_CONNECTIONS: usize = 256;
/// A TCP connection with no query for this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// The zone, its records, the forwarder, and the loop probe.
#[derive(Debug)]
pub struct Server {
    zone: Zone,
    records: Arc<RwLock<Records>>,
    forwarder: Forwarder,
    /// A name this server asks its upstreams at start: seeing it come back
    /// means an upstream forwards to this server.
    probe: Name,
    probe_seen: AtomicBool,
}

fn rcode_name(rcode: ResponseCode) -> &'static str {
    match rcode {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        _ => "OTHER",
    }
}

impl Server {
    /// A server of `zone` over `records`, forwarding through `forwarder`.
    pub fn new(zone: Zone, records: Arc<RwLock<Records>>, forwarder: Forwarder) -> Self {
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let probe = Name::from_ascii(format!("{nonce:x}.loop-check.vcluster.invalid."))
            .unwrap_or_else(|_| Name::root());
        Self {
            zone,
            records,
            forwarder,
            probe,
            probe_seen: AtomicBool::new(false),
        }
    }

    /// The forwarder.
    pub fn forwarder(&self) -> &Forwarder {
        &self.forwarder
    }

    /// The name of the loop probe and whether it has come back.
    pub fn probe(&self) -> (&Name, bool) {
        (&self.probe, self.probe_seen.load(Ordering::SeqCst))
    }

    /// The answer to one message (`None`: not worth one), at most
    /// `limit` bytes (UDP) or whole (TCP).
    pub async fn respond(&self, bytes: &[u8], udp: bool) -> Option<Vec<u8>> {
        let started = Instant::now();
        let req = match Message::from_vec(bytes) {
            Ok(m) => m,
            Err(_) if bytes.len() >= 12 => {
                let id = u16::from_be_bytes([bytes[0], bytes[1]]);
                let m = Message::error_msg(id, OpCode::Query, ResponseCode::FormErr);
                return m.to_vec().ok();
            }
            Err(_) => return None,
        };
        if req.metadata.message_type != MessageType::Query {
            return None;
        }
        let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
        resp.metadata = Metadata::response_from_request(&req.metadata);
        resp.metadata.recursion_available = true;
        resp.queries.clone_from(&req.queries);
        if req.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(MAX_UDP_PAYLOAD);
            resp.set_edns(edns);
        }
        let (qtype, source) = self.answer(&req, &mut resp).await;
        metrics::global().dns_query(
            &qtype,
            rcode_name(resp.metadata.response_code),
            source,
            started.elapsed(),
        );
        let limit = if udp {
            usize::from(req.max_payload().min(MAX_UDP_PAYLOAD))
        } else {
            usize::from(u16::MAX)
        };
        let out = resp.to_vec().ok()?;
        if out.len() <= limit {
            return Some(out);
        }
        resp.truncate().to_vec().ok()
    }

    /// Fills `resp`; returns the question type and where the answer came from.
    async fn answer(&self, req: &Message, resp: &mut Message) -> (String, &'static str) {
        let fail = |resp: &mut Message, code| {
            resp.metadata.response_code = code;
            ("-".to_owned(), "zone")
        };
        if req.metadata.op_code != OpCode::Query {
            return fail(resp, ResponseCode::NotImp);
        }
        let [q] = req.queries.as_slice() else {
            return fail(resp, ResponseCode::FormErr);
        };
        let (name, qtype, class) = (q.name(), q.query_type(), q.query_class());
        let type_name = qtype.to_string();
        if name.eq_ignore_root_case(&self.probe) {
            self.probe_seen.store(true, Ordering::SeqCst);
            resp.metadata.response_code = ResponseCode::NXDomain;
            return (type_name, "zone");
        }
        let outcome = if class == DNSClass::IN {
            let records = self
                .records
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            self.zone.lookup(&records, name, qtype)
        } else {
            Outcome::Forward
        };
        match outcome {
            Outcome::Answer(a) => {
                resp.metadata.authoritative = true;
                resp.metadata.response_code = a.rcode;
                resp.answers = a.answers;
                resp.additionals = a.additionals;
                if let Some(target) = a.chase {
                    match self.forwarder.resolve(&target, qtype, class).await {
                        Ok(up) => resp.answers.extend(up.answers),
                        Err(e) => {
                            tracing::debug!(error = %e, name = %target, "cannot follow a CNAME upstream")
                        }
                    }
                }
                if resp.answers.is_empty() {
                    resp.authorities = vec![self.zone.soa()];
                }
                (type_name, "zone")
            }
            Outcome::Forward => match self.forwarder.resolve(name, qtype, class).await {
                Ok(up) => {
                    resp.metadata.response_code = up.rcode;
                    resp.answers = up.answers;
                    resp.authorities = up.authorities;
                    (type_name, if up.cached { "cache" } else { "forward" })
                }
                Err(e) => {
                    tracing::debug!(error = %e, %name, "upstream resolution failed");
                    resp.metadata.response_code = ResponseCode::ServFail;
                    (type_name, "forward")
                }
            },
        }
    }

    /// Answers datagrams on `socket` until the process ends.
    pub async fn serve_udp(self: Arc<Self>, socket: UdpSocket) {
        let socket = Arc::new(socket);
        let inflight = Arc::new(Semaphore::new(MAX_UDP_INFLIGHT));
        let mut buf = vec![0u8; 65_535];
        loop {
            let (n, peer) = match socket.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "UDP receive failed");
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&inflight).try_acquire_owned() else {
                continue;
            };
            let (server, socket, req) = (Arc::clone(&self), Arc::clone(&socket), buf[..n].to_vec());
            tokio::spawn(async move {
                if let Some(out) = server.respond(&req, true).await {
                    let _ = socket.send_to(&out, peer).await;
                }
                drop(permit);
            });
        }
    }

    /// Answers connections on `listener` until the process ends.
    pub async fn serve_tcp(self: Arc<Self>, listener: TcpListener) {
        let conns = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "TCP accept failed");
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&conns).try_acquire_owned() else {
                continue;
            };
            let server = Arc::clone(&self);
            tokio::spawn(async move {
                if let Err(e) = server.connection(stream).await {
                    tracing::debug!(error = %e, %peer, "DNS TCP connection ended");
                }
                drop(permit);
            });
        }
    }

    async fn connection(&self, mut stream: TcpStream) -> std::io::Result<()> {
        loop {
            let Ok(len) = tokio::time::timeout(TCP_IDLE, stream.read_u16()).await else {
                return Ok(());
            };
            let mut req = vec![0u8; usize::from(len?)];
            tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut req))
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
            let Some(out) = self.respond(&req, false).await else {
                return Ok(());
            };
            let n = u16::try_from(out.len()).unwrap_or(u16::MAX);
            stream.write_all(&n.to_be_bytes()).await?;
            stream.write_all(&out).await?;
        }
    }
}

/// Both listeners of `addr`, non-blocking, for [`Threads`] to serve.
pub fn bind(addr: SocketAddr) -> std::io::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    let udp = std::net::UdpSocket::bind(addr)?;
    udp.set_nonblocking(true)?;
    let tcp = std::net::TcpListener::bind(addr)?;
    tcp.set_nonblocking(true)?;
    Ok((udp, tcp))
}

/// The threads that answer on the listeners, each on a current-thread
/// runtime of its own (every one reads the UDP socket; the first also takes
/// TCP connections); they stop when this is dropped.
#[derive(Debug)]
pub struct Threads {
    count: usize,
    _stop: watch::Sender<()>,
    ended: mpsc::UnboundedReceiver<std::io::Result<()>>,
}

impl Threads {
    /// Starts `count` threads (at least one) answering with `server`.
    pub fn start(
        server: &Arc<Server>,
        udp: &std::net::UdpSocket,
        tcp: &std::net::TcpListener,
        count: usize,
    ) -> std::io::Result<Self> {
        let (stop, _) = watch::channel(());
        let (end, ended) = mpsc::unbounded_channel();
        let count = count.max(1);
        for i in 0..count {
            let udp = udp.try_clone()?;
            let tcp = if i == 0 { Some(tcp.try_clone()?) } else { None };
            let (server, stop, end) = (Arc::clone(server), stop.subscribe(), end.clone());
            let span = tracing::Span::current();
            std::thread::Builder::new()
                .name(format!("vcluster-dns-{i}"))
                .spawn(move || {
                    let _ = end.send(serve_here(server, udp, tcp, stop, span));
                })?;
        }
        Ok(Self {
            count,
            _stop: stop,
            ended,
        })
    }

    /// How many threads answer.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Serves until a thread fails (none stops while this is held).
    pub async fn ended(mut self) -> std::io::Result<()> {
        let why = self.ended.recv().await;
        Err(match why {
            Some(Err(e)) => e,
            _ => std::io::Error::other("a thread answering DNS stopped"),
        })
    }
}

/// One answering thread: its runtime, serving until `stop` is dropped.
fn serve_here(
    server: Arc<Server>,
    udp: std::net::UdpSocket,
    tcp: Option<std::net::TcpListener>,
    mut stop: watch::Receiver<()>,
    span: tracing::Span,
) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let serve = async move {
        let udp = UdpSocket::from_std(udp)?;
        let tcp = tcp.map(TcpListener::from_std).transpose()?;
        let serving = async move {
            match tcp {
                Some(tcp) => {
                    let udp = Arc::clone(&server).serve_udp(udp);
                    futures::future::join(udp, server.serve_tcp(tcp)).await;
                }
                None => server.serve_udp(udp).await,
            }
        };
        tokio::select! {
            () = serving => {}
            _ = stop.changed() => {}
        }
        Ok(())
    };
    rt.block_on(serve.instrument(span))
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
