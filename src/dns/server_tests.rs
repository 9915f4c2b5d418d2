//! The server over the wire: EDNS, truncation, negative answers with the
//! SOA, and forwarding to a stand-in upstream with the cache in front.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;

use super::*;
use crate::dns::forward::Forwarder;
use crate::sync::tests::obj;

fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::query();
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m.metadata.recursion_desired = true;
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

/// A zone with one headless Service of 60 ready endpoints.
fn big_records() -> Records {
    let mut r = Records::default();
    let svc: Service = obj(json!({
        "metadata": {"name": "many", "namespace": "shop"},
        "spec": {"clusterIP": "None", "clusterIPs": ["None"]},
    }));
    r.set_service("shop", "many", Some(&svc));
    let endpoints: Vec<_> = (0..60)
        .map(|i| json!({"addresses": [format!("10.244.1.{i}")]}))
        .collect();
    let slice: EndpointSlice = obj(json!({
        "metadata": {"name": "many-1", "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": "many"}},
        "addressType": "IPv4", "endpoints": endpoints,
    }));
    r.set_slice("shop", "many-1", Some(&slice));
    r
}

fn server(upstreams: Vec<SocketAddr>) -> Server {
    Server::new(
        Zone::new("cluster.local").unwrap(),
        Arc::new(RwLock::new(big_records())),
        Forwarder::new(upstreams, 100),
    )
}

/// A stand-in upstream answering every A question with 192.0.2.1 (TTL 60)
/// and counting the questions.
async fn upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let asked = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&asked);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, peer) = socket.recv_from(&mut buf).await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            let req = Message::from_vec(&buf[..n]).unwrap();
            let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
            resp.queries.clone_from(&req.queries);
            let name = req.queries[0].name().clone();
            let a = A(std::net::Ipv4Addr::new(192, 0, 2, 1));
            resp.add_answer(Record::from_rdata(name, 60, RData::A(a)));
            socket.send_to(&resp.to_vec().unwrap(), peer).await.unwrap();
        }
    });
    (addr, asked)
}

async fn answer(s: &Server, bytes: &[u8], udp: bool) -> Message {
    Message::from_vec(&s.respond(bytes, udp).await.unwrap()).unwrap()
}

#[tokio::test]
async fn big_answers_are_truncated_over_udp_and_whole_over_tcp() {
    let s = server(vec![]);
    let q = query("many.shop.svc.cluster.local.", RecordType::A, None);
    let udp = answer(&s, &q, true).await;
    assert!(udp.metadata.truncation, "60 records do not fit 512 bytes");
    assert!(udp.answers.is_empty());
    let tcp = answer(&s, &q, false).await;
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.answers.len(), 60);
    assert!(tcp.metadata.authoritative);
    // EDNS with room enough: whole over UDP too (60 * 16 bytes and a header).
    let q = query("many.shop.svc.cluster.local.", RecordType::A, Some(4096));
    let big = answer(&s, &q, true).await;
    assert!(!big.metadata.truncation);
    assert_eq!(big.answers.len(), 60);
    assert_eq!(big.edns.map(|e| e.max_payload()), Some(1232));
}

#[tokio::test]
async fn negative_answers_carry_the_soa() {
    let s = server(vec![]);
    for (name, rcode) in [
        ("nope.shop.svc.cluster.local.", ResponseCode::NXDomain),
        ("many.shop.svc.cluster.local.", ResponseCode::NoError),
    ] {
        let m = answer(&s, &query(name, RecordType::AAAA, None), true).await;
        assert_eq!(m.metadata.response_code, rcode, "{name}");
        assert!(m.answers.is_empty());
        assert_eq!(m.authorities.len(), 1);
        assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
    }
    // Garbage with a header gets FORMERR; less than a header, nothing.
    let mut junk = query("x.", RecordType::A, None);
    junk.truncate(14);
    let m = answer(&s, &junk, true).await;
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    assert!(s.respond(&[1, 2, 3], true).await.is_none());
}

#[tokio::test]
async fn outside_names_are_forwarded_once_then_cached() {
    let (up, asked) = upstream().await;
    let s = server(vec![up]);
    let q = query("example.com.", RecordType::A, None);
    for _ in 0..3 {
        let m = answer(&s, &q, true).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(m.answers.len(), 1);
        assert!(!m.metadata.authoritative);
        assert!(m.metadata.recursion_available);
    }
    assert_eq!(asked.load(Ordering::SeqCst), 1, "the cache answers twice");
    assert_eq!(s.forwarder().cache_len(), 1);
    // No upstream answering: SERVFAIL, nothing cached.
    let dead = server(vec!["127.0.0.1:9".parse().unwrap()]);
    let m = answer(&dead, &query("example.org.", RecordType::A, None), true).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(dead.forwarder().cache_len(), 0);
}

#[tokio::test]
async fn the_probe_name_is_never_forwarded() {
    let (up, asked) = upstream().await;
    let s = server(vec![up]);
    let probe = s.probe().0.to_ascii();
    let m = answer(&s, &query(&probe, RecordType::HINFO, None), true).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(s.probe().1, "a probe that came back shows a loop");
    assert_eq!(asked.load(Ordering::SeqCst), 0);
}

/// Asks `addr` over UDP with a blocking socket: the answer's code, or `None`
/// after a second without one.
fn ask_blocking(addr: SocketAddr, q: &[u8]) -> Option<ResponseCode> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    socket.send_to(q, addr).unwrap();
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).ok()?;
    Some(Message::from_vec(&buf[..n]).ok()?.metadata.response_code)
}

/// The question over TCP, blocking: the answer's record count.
fn ask_tcp_blocking(addr: SocketAddr, q: &[u8]) -> usize {
    use std::io::{Read as _, Write as _};
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let len = u16::try_from(q.len()).unwrap().to_be_bytes();
    conn.write_all(&[&len[..], q].concat()).unwrap();
    let mut len = [0u8; 2];
    conn.read_exact(&mut len).unwrap();
    let mut out = vec![0u8; usize::from(u16::from_be_bytes(len))];
    conn.read_exact(&mut out).unwrap();
    Message::from_vec(&out).unwrap().answers.len()
}

#[tokio::test]
async fn answers_come_from_threads_of_their_own_and_stop_with_them() {
    let s = Arc::new(server(vec![]));
    let (udp, tcp) = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let (at, tcp_at) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
    let threads = Threads::start(&s, &udp, &tcp, 2).unwrap();
    assert_eq!(threads.count(), 2);
    drop((udp, tcp));
    // The runtime that started them is blocked in these calls (this test's
    // runtime has one thread): only a thread of their own can answer.
    let q = query("many.shop.svc.cluster.local.", RecordType::A, None);
    for _ in 0..20 {
        assert_eq!(ask_blocking(at, &q), Some(ResponseCode::NoError));
    }
    assert_eq!(ask_tcp_blocking(tcp_at, &q), 60);
    drop(threads);
    let deadline = Instant::now() + Duration::from_secs(5);
    while ask_blocking(at, &q).is_some() {
        assert!(Instant::now() < deadline, "still answering after the stop");
    }
}
