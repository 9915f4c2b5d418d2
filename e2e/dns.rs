//! End-to-end tests of the cluster DNS the syncer serves (KWOK lane): a DNS
//! client asks the syncer's listener, as a tenant pod's resolver would, about
//! Services, a headless StatefulSet, ExternalNames, SRV and PTR records, and
//! names outside the cluster, which the syncer forwards to a stand-in
//! upstream this test runs on loopback. The host copies of ClusterFirst pods
//! point at the DNS Service, and the virtual `kube-system/kube-dns` shows its
//! address.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod common;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::Api;
use libtest_mimic::Arguments;
use serde_json::json;
use vcluster::translate::{VclusterName, host_name};

const T: Duration = Duration::from_secs(90);
const VC: &str = "dns";
const HOST_NS: &str = "team-dns";
const NS: &str = "shop";
/// What the stand-in upstream answers for every A question.
const UPSTREAM_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 44);

struct Env {
    stack: DevStack,
    syncer: SyncerProcess,
}

/// A stand-in upstream resolver on loopback: every A question gets
/// [`UPSTREAM_IP`] (TTL 300), anything else NXDOMAIN.
fn start_upstream() -> SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                return;
            };
            let Ok(req) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
            resp.queries.clone_from(&req.queries);
            resp.metadata.recursion_available = true;
            let q = &req.queries[0];
            if q.query_type() == RecordType::A {
                resp.add_answer(Record::from_rdata(
                    q.name().clone(),
                    300,
                    RData::A(A(UPSTREAM_IP)),
                ));
            } else {
                resp.metadata.response_code = ResponseCode::NXDomain;
            }
            let _ = socket.send_to(&resp.to_vec().unwrap(), peer);
        }
    });
    addr
}

/// One question to the syncer's DNS, over UDP or TCP.
fn ask(env: &Env, name: &str, qtype: RecordType, tcp: bool) -> Message {
    let mut m = Message::query();
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m.metadata.recursion_desired = true;
    let bytes = m.to_vec().unwrap();
    let server: SocketAddr = (Ipv4Addr::LOCALHOST, env.syncer.dns_port).into();
    let got = if tcp {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect(server).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&u16::try_from(bytes.len()).unwrap().to_be_bytes())
            .unwrap();
        s.write_all(&bytes).unwrap();
        let mut len = [0u8; 2];
        s.read_exact(&mut len).unwrap();
        let mut out = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut out).unwrap();
        out
    } else {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.send_to(&bytes, server).unwrap();
        let mut buf = [0u8; 4096];
        let (n, _) = s.recv_from(&mut buf).unwrap();
        buf[..n].to_vec()
    };
    let resp = Message::from_vec(&got).unwrap();
    assert_eq!(resp.metadata.id, m.metadata.id);
    resp
}

/// The answers as `TYPE data`, sorted.
fn answers(m: &Message) -> BTreeSet<String> {
    m.answers
        .iter()
        .map(|r| format!("{} {}", r.record_type(), r.data))
        .collect()
}

fn set(items: &[String]) -> BTreeSet<String> {
    items.iter().cloned().collect()
}

/// Waits until `name`/`qtype` is answered with exactly `want`.
fn answered(env: &Env, name: &str, qtype: RecordType, want: &BTreeSet<String>) {
    eventually_sync(&format!("{name} {qtype} -> {want:?}"), T, || {
        let got = answers(&ask(env, name, qtype, false));
        if &got == want {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    });
}

fn svc_name(name: &str) -> String {
    format!("{name}.{NS}.svc.cluster.local.")
}

/// The workloads every test reads: a ClusterIP Service with a named port, a
/// headless Service for a two-replica StatefulSet, and two ExternalNames.
async fn workloads(v: &kube::Client) {
    namespace(v, NS).await;
    let services: Api<Service> = Api::namespaced(v.clone(), NS);
    for body in [
        json!({"metadata": {"name": "redis"},
               "spec": {"selector": {"app": "redis"},
                        "ports": [{"name": "redis", "port": 6379, "protocol": "TCP"}]}}),
        json!({"metadata": {"name": "db"},
               "spec": {"clusterIP": "None", "selector": {"app": "db"},
                        "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]}}),
        json!({"metadata": {"name": "ext"},
               "spec": {"type": "ExternalName", "externalName": "shop.example.test"}}),
        json!({"metadata": {"name": "alias"},
               "spec": {"type": "ExternalName", "externalName": "redis.shop.svc.cluster.local"}}),
    ] {
        create(&services, body).await;
    }
    let sets: Api<StatefulSet> = Api::namespaced(v.clone(), NS);
    create(
        &sets,
        json!({"metadata": {"name": "db"},
               "spec": {"serviceName": "db", "replicas": 2,
                        "selector": {"matchLabels": {"app": "db"}},
                        "template": {"metadata": {"labels": {"app": "db"}},
                                     "spec": {"containers": [{"name": "pg", "image": "postgres"}]}}}}),
    )
    .await;
}

/// The virtual pods `db-0` and `db-1`, once running with IPs.
fn db_ips(env: &Env) -> Vec<String> {
    let mut ips = Vec::new();
    block_on(async {
        let (v, _) = clients(&env.stack).await;
        let pods: Api<Pod> = Api::namespaced(v, NS);
        ips = eventually("db-0 and db-1 running with IPs", T, || async {
            let mut out = Vec::new();
            for name in ["db-0", "db-1"] {
                let p = pods.get(name).await.map_err(|e| e.to_string())?;
                let ip = p
                    .status
                    .and_then(|s| s.pod_ip)
                    .ok_or(format!("{name} has no IP"))?;
                out.push(ip);
            }
            Ok::<_, String>(out)
        })
        .await;
    });
    ips
}

fn virtual_cluster_ip(env: &Env, ns: &str, name: &str) -> String {
    let mut ip = String::new();
    block_on(async {
        let (v, _) = clients(&env.stack).await;
        let api: Api<Service> = Api::namespaced(v, ns);
        ip = eventually(&format!("{ns}/{name} with a cluster IP"), T, || async {
            api.get(name)
                .await
                .map_err(|e| e.to_string())?
                .spec
                .and_then(|s| s.cluster_ip)
                .filter(|ip| !ip.is_empty())
                .ok_or_else(|| "none".to_owned())
        })
        .await;
    });
    ip
}

/// Waits until `redis` resolves to its cluster IP; returns the IP.
fn redis_resolves(env: &Env) -> String {
    let redis = virtual_cluster_ip(env, NS, "redis");
    answered(
        env,
        &svc_name("redis"),
        RecordType::A,
        &set(&[format!("A {redis}")]),
    );
    redis
}

fn services_and_external_names(env: &Env) {
    let redis = redis_resolves(env);
    // Over TCP too, and case-insensitively.
    let m = ask(env, "REDIS.shop.SVC.cluster.local.", RecordType::A, true);
    assert_eq!(answers(&m), set(&[format!("A {redis}")]));
    assert!(m.metadata.authoritative);
    // ExternalName into the cluster: followed.
    answered(
        env,
        &svc_name("alias"),
        RecordType::A,
        &set(&[
            "CNAME redis.shop.svc.cluster.local.".to_owned(),
            format!("A {redis}"),
        ]),
    );
    // ExternalName outside: followed through the upstream.
    answered(
        env,
        &svc_name("ext"),
        RecordType::A,
        &set(&[
            "CNAME shop.example.test.".to_owned(),
            format!("A {UPSTREAM_IP}"),
        ]),
    );
    // SRV of the named port, PTR of the cluster IP.
    answered(
        env,
        &format!("_redis._tcp.{}", svc_name("redis")),
        RecordType::SRV,
        &set(&["SRV 0 100 6379 redis.shop.svc.cluster.local.".to_owned()]),
    );
    let octets: Vec<&str> = redis.split('.').rev().collect();
    answered(
        env,
        &format!("{}.in-addr.arpa.", octets.join(".")),
        RecordType::PTR,
        &set(&["PTR redis.shop.svc.cluster.local.".to_owned()]),
    );
    // A name that does not exist, one that exists without the type asked.
    for (name, rcode) in [
        (svc_name("nope"), ResponseCode::NXDomain),
        (svc_name("redis"), ResponseCode::NoError),
    ] {
        let m = ask(env, &name, RecordType::AAAA, false);
        assert_eq!(m.metadata.response_code, rcode, "{name}");
        assert!(m.answers.is_empty());
        assert_eq!(m.authorities[0].record_type(), RecordType::SOA, "{name}");
    }
}

fn headless_statefulset_pods(env: &Env) {
    let ips = db_ips(env);
    let a = |ips: &[String]| set(&ips.iter().map(|ip| format!("A {ip}")).collect::<Vec<_>>());
    answered(env, &svc_name("db"), RecordType::A, &a(&ips));
    answered(
        env,
        &format!("db-0.{}", svc_name("db")),
        RecordType::A,
        &a(&ips[..1]),
    );
    answered(
        env,
        &format!("db-1.{}", svc_name("db")),
        RecordType::A,
        &a(&ips[1..]),
    );
    answered(
        env,
        &format!("_pg._tcp.{}", svc_name("db")),
        RecordType::SRV,
        &set(&[
            "SRV 0 50 5432 db-0.db.shop.svc.cluster.local.".to_owned(),
            "SRV 0 50 5432 db-1.db.shop.svc.cluster.local.".to_owned(),
        ]),
    );
    let octets: Vec<&str> = ips[0].split('.').rev().collect();
    answered(
        env,
        &format!("{}.in-addr.arpa.", octets.join(".")),
        RecordType::PTR,
        &set(&["PTR db-0.db.shop.svc.cluster.local.".to_owned()]),
    );
    let dashed = ips[1].replace('.', "-");
    answered(
        env,
        &format!("{dashed}.{NS}.pod.cluster.local."),
        RecordType::A,
        &a(&ips[1..]),
    );
}

fn names_outside_go_upstream_once(env: &Env) {
    redis_resolves(env);
    for _ in 0..3 {
        let m = ask(env, "www.example.test.", RecordType::A, false);
        assert_eq!(answers(&m), set(&[format!("A {UPSTREAM_IP}")]));
        assert!(!m.metadata.authoritative);
    }
    let metrics = {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, env.syncer.port)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: syncer\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    for want in [
        "vcluster_syncer_dns_queries_total{qtype=\"A\",rcode=\"NOERROR\",source=\"cache\"}",
        "vcluster_syncer_dns_queries_total{qtype=\"A\",rcode=\"NOERROR\",source=\"zone\"}",
        "vcluster_syncer_dns_duration_seconds_count{source=\"forward\"}",
    ] {
        assert!(metrics.contains(want), "{want} missing:\n{metrics}");
    }
}

fn pods_and_kube_dns_use_the_dns_service(env: &Env) {
    db_ips(env);
    block_on(async {
        let (v, h) = clients(&env.stack).await;
        let host_dns = Api::<Service>::namespaced(h.clone(), HOST_NS)
            .get(&format!("{VC}-dns"))
            .await
            .unwrap()
            .spec
            .and_then(|s| s.cluster_ip)
            .unwrap();
        let kube_dns: Api<Service> = Api::namespaced(v, "kube-system");
        eventually(
            "kube-system/kube-dns at the DNS Service's address",
            T,
            || async {
                let s = kube_dns
                    .get_opt("kube-dns")
                    .await
                    .map_err(|e| e.to_string())?;
                let ip = s.and_then(|s| s.spec).and_then(|s| s.cluster_ip);
                if ip.as_deref() == Some(host_dns.as_str()) {
                    Ok(())
                } else {
                    Err(format!("{ip:?}"))
                }
            },
        )
        .await;
        let vc = VclusterName::new(VC).unwrap();
        let pod = Api::<Pod>::namespaced(h, HOST_NS)
            .get(&host_name(&vc, NS, "db-0"))
            .await
            .unwrap();
        let spec = serde_json::to_value(pod.spec.unwrap()).unwrap();
        assert_eq!(spec["dnsPolicy"], "None");
        assert_eq!(
            spec["dnsConfig"],
            json!({"nameservers": [host_dns],
                   "searches": ["shop.svc.cluster.local", "svc.cluster.local", "cluster.local"],
                   "options": [{"name": "ndots", "value": "5"}]})
        );
    });
}

const TESTS: &[Test<Env>] = &[
    ("services_and_external_names", services_and_external_names),
    ("headless_statefulset_pods", headless_statefulset_pods),
    (
        "names_outside_go_upstream_once",
        names_outside_go_upstream_once,
    ),
    (
        "pods_and_kube_dns_use_the_dns_service",
        pods_and_kube_dns_use_the_dns_service,
    ),
];

fn main() {
    let args = Arguments::from_args();
    list_or_check(&args, &[TESTS]);
    let stack = DevStack::up(&["--no-syncer", "--nodes", "2"]);
    let hk = stack.host_kubeconfig();
    kubectl_ok(&hk, &["create", "namespace", HOST_NS], None);
    api_service(&hk, VC, HOST_NS);
    let upstream = format!("--dns-upstream=127.0.0.1:{}", start_upstream().port());
    let syncer = SyncerProcess::start_with(&stack, VC, HOST_NS, &[&upstream]);
    let log = syncer.log.clone();
    block_on(async {
        let (v, _) = clients(&stack).await;
        workloads(&v).await;
    });
    let env = Arc::new(Env { stack, syncer });
    let failed = run_groups(&args, &env, &[(TESTS, None)]);
    finish(env, failed, Some(log));
}
