//! Names outside the zone: asked of the upstream resolvers (those of
//! `/etc/resolv.conf` unless configured) over UDP, again over TCP when the
//! answer is truncated, each upstream in turn; answers are kept in a bounded
//! cache for their TTL (at most an hour, negative ones at most 30 minutes,
//! failures not at all).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};

/// How long one upstream gets to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a positive answer is cached.
const MAX_TTL: u32 = 3600;
/// Longest a negative answer is cached.
const MAX_NEGATIVE_TTL: u32 = 1800;

/// Why upstream resolution failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No upstream is configured.
    #[error("no upstream resolver configured")]
    NoUpstream,
    /// Every upstream failed; the last cause.
    #[error("upstream {upstream}: {reason}")]
    Upstream {
        /// The upstream asked last.
        upstream: SocketAddr,
        /// What went wrong.
        reason: String,
    },
}

/// The upstream resolvers of a resolv.conf text (port 53).
pub fn resolv_conf_upstreams(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| {
            let ip = rest.trim().split('%').next()?;
            ip.parse::<IpAddr>().ok()
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Parses `--dns-upstream` entries: `ip` or `ip:port` (`[v6]:port`).
pub fn parse_upstream(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    s.parse::<SocketAddr>()
        .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| format!("{s:?} is not an IP address or IP:port"))
}

/// A cached upstream answer.
#[derive(Debug, Clone)]
struct Entry {
    stored: Instant,
    ttl: u32,
    rcode: ResponseCode,
    answers: Vec<Record>,
    authorities: Vec<Record>,
}

/// What an upstream said (sections without OPT), TTLs as they are now.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    /// Its response code.
    pub rcode: ResponseCode,
    /// Its answers.
    pub answers: Vec<Record>,
    /// Its authority section (the SOA of a negative answer).
    pub authorities: Vec<Record>,
    /// Served from the cache.
    pub cached: bool,
}

type CacheKey = (Name, RecordType, DNSClass);

/// The upstreams and the cache of their answers.
#[derive(Debug)]
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    capacity: usize,
    cache: Mutex<HashMap<CacheKey, Entry>>,
}

fn cache_ttl(rcode: ResponseCode, answers: &[Record], authorities: &[Record]) -> Option<u32> {
    match rcode {
        ResponseCode::NoError if !answers.is_empty() => {
            answers.iter().map(|r| r.ttl).min().map(|t| t.min(MAX_TTL))
        }
        ResponseCode::NoError | ResponseCode::NXDomain => {
            let soa = authorities.iter().find_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            });
            Some(soa.unwrap_or(30).min(MAX_NEGATIVE_TTL))
        }
        _ => None,
    }
}

impl Forwarder {
    /// Forwards to `upstreams`, caching at most `capacity` answers.
    pub fn new(upstreams: Vec<SocketAddr>, capacity: usize) -> Self {
        Self {
            upstreams,
            capacity,
            cache: Mutex::default(),
        }
    }

    /// The upstreams.
    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CacheKey, Entry>> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn cached(&self, k: &CacheKey) -> Option<Upstream> {
        let mut cache = self.lock();
        let e = cache.get(k)?;
        let age = u32::try_from(e.stored.elapsed().as_secs()).unwrap_or(u32::MAX);
        if age >= e.ttl {
            cache.remove(k);
            return None;
        }
        let aged = |rs: &[Record]| -> Vec<Record> {
            rs.iter()
                .cloned()
                .map(|mut r| {
                    r.ttl = r.ttl.saturating_sub(age).max(1);
                    r
                })
                .collect()
        };
        Some(Upstream {
            rcode: e.rcode,
            answers: aged(&e.answers),
            authorities: aged(&e.authorities),
            cached: true,
        })
    }

    fn store(&self, k: CacheKey, u: &Upstream) {
        let Some(ttl) = cache_ttl(u.rcode, &u.answers, &u.authorities).filter(|t| *t > 0) else {
            return;
        };
        let mut cache = self.lock();
        if cache.len() >= self.capacity {
            cache.retain(|_, e| e.stored.elapsed().as_secs() < u64::from(e.ttl));
            if cache.len() >= self.capacity {
                // Still full: drop a tenth, whichever the map yields first.
                let drop: Vec<CacheKey> =
                    cache.keys().take(self.capacity / 10 + 1).cloned().collect();
                for k in drop {
                    cache.remove(&k);
                }
            }
        }
        cache.insert(
            k,
            Entry {
                stored: Instant::now(),
                ttl,
                rcode: u.rcode,
                answers: u.answers.clone(),
                authorities: u.authorities.clone(),
            },
        );
    }

    /// Answers cached now.
    pub fn cache_len(&self) -> usize {
        self.lock().len()
    }

    /// The upstream answer to `name`/`qtype`/`class`: from the cache, else
    /// from each upstream in turn.
    pub async fn resolve(
        &self,
        name: &Name,
        qtype: RecordType,
        class: DNSClass,
    ) -> Result<Upstream, ForwardError> {
        let k = (name.to_lowercase(), qtype, class);
        if let Some(hit) = self.cached(&k) {
            return Ok(hit);
        }
        let mut last = ForwardError::NoUpstream;
        for upstream in &self.upstreams {
            match ask(*upstream, name, qtype, class).await {
                Ok(u) => {
                    self.store(k, &u);
                    return Ok(u);
                }
                Err(reason) => {
                    last = ForwardError::Upstream {
                        upstream: *upstream,
                        reason,
                    }
                }
            }
        }
        Err(last)
    }
}

fn query_message(name: &Name, qtype: RecordType, class: DNSClass) -> Message {
    let mut m = Message::query();
    let mut q = Query::query(name.clone(), qtype);
    q.set_query_class(class);
    m.add_query(q);
    m.metadata.recursion_desired = true;
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    m.set_edns(edns);
    m
}

fn check(sent: &Message, got: &[u8]) -> Result<Message, String> {
    let m = Message::from_vec(got).map_err(|e| format!("cannot parse the answer: {e}"))?;
    if m.metadata.id != sent.metadata.id || m.queries != sent.queries {
        return Err("the answer is not for the question asked".to_owned());
    }
    Ok(m)
}

/// One question to one upstream: UDP, then TCP if truncated.
async fn ask(
    upstream: SocketAddr,
    name: &Name,
    qtype: RecordType,
    class: DNSClass,
) -> Result<Upstream, String> {
    let sent = query_message(name, qtype, class);
    let bytes = sent.to_vec().map_err(|e| e.to_string())?;
    let io = |e: std::io::Error| e.to_string();
    let udp = async {
        let local: SocketAddr = match upstream {
            SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(local).await.map_err(io)?;
        socket.connect(upstream).await.map_err(io)?;
        socket.send(&bytes).await.map_err(io)?;
        let mut buf = vec![0u8; 4096];
        loop {
            let n = socket.recv(&mut buf).await.map_err(io)?;
            // A stray datagram (not our answer) is ignored.
            if let Ok(m) = check(&sent, &buf[..n]) {
                return Ok::<_, String>(m);
            }
        }
    };
    let mut m = tokio::time::timeout(UPSTREAM_TIMEOUT, udp)
        .await
        .map_err(|_| "no answer over UDP in 2 s".to_owned())??;
    if m.metadata.truncation {
        let tcp = async {
            let mut s = TcpStream::connect(upstream).await.map_err(io)?;
            let len = u16::try_from(bytes.len()).map_err(|e| e.to_string())?;
            s.write_all(&len.to_be_bytes()).await.map_err(io)?;
            s.write_all(&bytes).await.map_err(io)?;
            let n = s.read_u16().await.map_err(io)?;
            let mut buf = vec![0u8; usize::from(n)];
            s.read_exact(&mut buf).await.map_err(io)?;
            check(&sent, &buf)
        };
        m = tokio::time::timeout(UPSTREAM_TIMEOUT, tcp)
            .await
            .map_err(|_| "no answer over TCP in 2 s".to_owned())??;
    }
    Ok(Upstream {
        rcode: m.metadata.response_code,
        answers: m.answers,
        authorities: m.authorities,
        cached: false,
    })
}
