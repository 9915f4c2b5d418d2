//! The zone's answers over in-memory caches: every record type, negative
//! answers, and names expanded by a pod's search path as a resolver does.

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RecordType};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{Value, json};

use super::{Outcome, Records, Zone};
use crate::sync::cache::filled;
use crate::sync::tests::obj;

fn svc(ns: &str, name: &str, spec: Value) -> Service {
    obj(json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}))
}

fn slice(ns: &str, name: &str, service: &str, endpoints: Value) -> EndpointSlice {
    obj(json!({
        "metadata": {"name": name, "namespace": ns,
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4", "endpoints": endpoints,
    }))
}

fn pod(ns: &str, name: &str, ip: &str, ready: bool, host: Option<(&str, &str)>) -> Pod {
    let mut spec = json!({"containers": [{"name": "c", "image": "busybox"}]});
    if let Some((h, s)) = host {
        spec["hostname"] = json!(h);
        spec["subdomain"] = json!(s);
    }
    let ready = if ready { "True" } else { "False" };
    obj(json!({
        "metadata": {"name": name, "namespace": ns}, "spec": spec,
        "status": {"podIP": ip, "podIPs": [{"ip": ip}],
                   "conditions": [{"type": "Ready", "status": ready}]},
    }))
}

fn ep(ip: &str, hostname: Option<&str>, ready: bool) -> Value {
    let mut e = json!({"addresses": [ip], "conditions": {"ready": ready}});
    if let Some(h) = hostname {
        e["hostname"] = json!(h);
    }
    e
}

/// The virtual cluster of these tests, through the same rebuild the
/// syncer runs over its caches.
fn records() -> Records {
    let services = filled([
        svc(
            "shop",
            "redis",
            json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                   "ports": [{"name": "redis", "port": 6379, "protocol": "TCP"},
                             {"port": 9121}]}),
        ),
        svc(
            "shop",
            "web",
            json!({"clusterIP": "10.96.0.11", "clusterIPs": ["10.96.0.11", "fd00::11"],
                   "ports": [{"name": "http", "port": 80}]}),
        ),
        svc(
            "shop",
            "db",
            json!({"clusterIP": "None", "clusterIPs": ["None"],
                   "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]}),
        ),
        svc(
            "shop",
            "lazy",
            json!({"clusterIP": "None", "publishNotReadyAddresses": true}),
        ),
        svc(
            "shop",
            "ext",
            json!({"type": "ExternalName", "externalName": "example.com"}),
        ),
        svc(
            "shop",
            "alias",
            json!({"type": "ExternalName", "externalName": "Redis.shop.svc.cluster.local."}),
        ),
        // Selector-less, headless: its endpoints are the slice written by hand.
        svc(
            "shop",
            "legacy",
            json!({"clusterIP": "None", "clusterIPs": ["None"],
                   "ports": [{"name": "pg", "port": 5432}]}),
        ),
        svc(
            "other",
            "api",
            json!({"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"]}),
        ),
    ]);
    let slices = filled([
        slice(
            "shop",
            "db-x1",
            "db",
            json!([
                ep("10.244.0.5", Some("db-0"), true),
                ep("10.244.0.7", None, false)
            ]),
        ),
        slice(
            "shop",
            "db-x2",
            "db",
            json!([ep("10.244.0.6", Some("db-1"), true)]),
        ),
        slice(
            "shop",
            "legacy-1",
            "legacy",
            json!([
                ep("192.168.7.5", Some("primary"), true),
                ep("192.168.7.6", None, true),
                ep("192.168.7.7", Some("standby"), false)
            ]),
        ),
        // A hand-written slice of a Service with a cluster IP: no endpoint names.
        slice(
            "shop",
            "redis-1",
            "redis",
            json!([ep("192.168.7.8", Some("cache"), true)]),
        ),
        slice(
            "shop",
            "lazy-x1",
            "lazy",
            json!([ep("10.244.0.9", None, false)]),
        ),
    ]);
    let pods = filled([
        pod("shop", "db-0", "10.244.0.5", true, Some(("db-0", "db"))),
        pod("shop", "db-1", "10.244.0.6", true, Some(("db-1", "db"))),
        // Not in a slice yet: answered from the pod itself.
        pod("shop", "db-2", "10.244.0.10", true, Some(("db-2", "db"))),
        pod("shop", "db-3", "10.244.0.11", false, Some(("db-3", "db"))),
        pod("shop", "web-1", "10.244.0.8", true, None),
    ]);
    super::super::rebuild(&services, &slices, &pods)
}

fn zone() -> Zone {
    Zone::new("cluster.local").unwrap()
}

/// The rcode and answers (`TYPE data`, in order), or `None` when forwarded.
fn ask(r: &Records, name: &str, qtype: RecordType) -> Option<(ResponseCode, Vec<String>)> {
    match zone().lookup(r, &Name::from_ascii(name).unwrap(), qtype) {
        Outcome::Forward => None,
        Outcome::Answer(a) => Some((
            a.rcode,
            a.answers
                .iter()
                .map(|rec| format!("{} {}", rec.record_type(), rec.data))
                .collect(),
        )),
    }
}

const OK: ResponseCode = ResponseCode::NoError;
const NX: ResponseCode = ResponseCode::NXDomain;

#[test]
fn every_record_of_the_specification() {
    use RecordType::{A, AAAA, CNAME, PTR, SOA, SRV, TXT};
    let r = records();
    let cases: &[(&str, RecordType, ResponseCode, &[&str])] = &[
        // Services with a cluster IP, by family; case-insensitive.
        ("redis.shop.svc.cluster.local.", A, OK, &["A 10.96.0.10"]),
        ("REDIS.Shop.SVC.cluster.LOCAL.", A, OK, &["A 10.96.0.10"]),
        ("web.shop.svc.cluster.local.", AAAA, OK, &["AAAA fd00::11"]),
        ("redis.shop.svc.cluster.local.", AAAA, OK, &[]),
        ("redis.shop.svc.cluster.local.", TXT, OK, &[]),
        // Headless: each ready endpoint; publishNotReadyAddresses: all.
        (
            "db.shop.svc.cluster.local.",
            A,
            OK,
            &["A 10.244.0.5", "A 10.244.0.6"],
        ),
        ("lazy.shop.svc.cluster.local.", A, OK, &["A 10.244.0.9"]),
        // Endpoint hostnames, dashed IPs, and pods with hostname + subdomain.
        ("db-0.db.shop.svc.cluster.local.", A, OK, &["A 10.244.0.5"]),
        ("db-2.db.shop.svc.cluster.local.", A, OK, &["A 10.244.0.10"]),
        ("db-3.db.shop.svc.cluster.local.", A, NX, &[]),
        (
            "10-244-0-9.lazy.shop.svc.cluster.local.",
            A,
            OK,
            &["A 10.244.0.9"],
        ),
        ("10-244-0-7.db.shop.svc.cluster.local.", A, NX, &[]),
        ("db-0.redis.shop.svc.cluster.local.", A, NX, &[]),
        // ExternalName: a CNAME, followed inside the zone.
        (
            "ext.shop.svc.cluster.local.",
            A,
            OK,
            &["CNAME example.com."],
        ),
        (
            "alias.shop.svc.cluster.local.",
            A,
            OK,
            &["CNAME redis.shop.svc.cluster.local.", "A 10.96.0.10"],
        ),
        (
            "alias.shop.svc.cluster.local.",
            CNAME,
            OK,
            &["CNAME redis.shop.svc.cluster.local."],
        ),
        // SRV of named ports: the Service, or each ready endpoint.
        (
            "_redis._tcp.redis.shop.svc.cluster.local.",
            SRV,
            OK,
            &["SRV 0 100 6379 redis.shop.svc.cluster.local."],
        ),
        (
            "_pg._tcp.db.shop.svc.cluster.local.",
            SRV,
            OK,
            &[
                "SRV 0 50 5432 db-0.db.shop.svc.cluster.local.",
                "SRV 0 50 5432 db-1.db.shop.svc.cluster.local.",
            ],
        ),
        ("_redis._udp.redis.shop.svc.cluster.local.", SRV, NX, &[]),
        ("_nope._tcp.redis.shop.svc.cluster.local.", SRV, NX, &[]),
        ("_redis._tcp.redis.shop.svc.cluster.local.", A, OK, &[]),
        ("_tcp.redis.shop.svc.cluster.local.", SRV, OK, &[]),
        // Pods by dashed IP, only in their own namespace.
        (
            "10-244-0-8.shop.pod.cluster.local.",
            A,
            OK,
            &["A 10.244.0.8"],
        ),
        ("10-244-0-8.other.pod.cluster.local.", A, NX, &[]),
        ("10-1-2-3.shop.pod.cluster.local.", A, NX, &[]),
        // PTR of cluster IPs and pod IPs; unknown addresses go upstream.
        (
            "10.0.96.10.in-addr.arpa.",
            PTR,
            OK,
            &["PTR redis.shop.svc.cluster.local."],
        ),
        (
            "5.0.244.10.in-addr.arpa.",
            PTR,
            OK,
            &["PTR db-0.db.shop.svc.cluster.local."],
        ),
        (
            "8.0.244.10.in-addr.arpa.",
            PTR,
            OK,
            &["PTR 10-244-0-8.shop.pod.cluster.local."],
        ),
        // PTR of a headless Service's endpoints (hand-written slices too):
        // hostname or dashed IP under the Service; ready ones, or all with
        // publishNotReadyAddresses; a pod behind one is named as its
        // endpoint; a cluster IP is named by its Service.
        (
            "5.7.168.192.in-addr.arpa.",
            PTR,
            OK,
            &["PTR primary.legacy.shop.svc.cluster.local."],
        ),
        (
            "6.7.168.192.in-addr.arpa.",
            PTR,
            OK,
            &["PTR 192-168-7-6.legacy.shop.svc.cluster.local."],
        ),
        (
            "9.0.244.10.in-addr.arpa.",
            PTR,
            OK,
            &["PTR 10-244-0-9.lazy.shop.svc.cluster.local."],
        ),
        ("5.7.168.192.in-addr.arpa.", A, OK, &[]),
        // ... and the names they point at resolve.
        (
            "primary.legacy.shop.svc.cluster.local.",
            A,
            OK,
            &["A 192.168.7.5"],
        ),
        (
            "192-168-7-6.legacy.shop.svc.cluster.local.",
            A,
            OK,
            &["A 192.168.7.6"],
        ),
        (
            "legacy.shop.svc.cluster.local.",
            A,
            OK,
            &["A 192.168.7.5", "A 192.168.7.6"],
        ),
        // Names that exist without records, names that do not.
        ("shop.svc.cluster.local.", A, OK, &[]),
        ("svc.cluster.local.", A, OK, &[]),
        ("nowhere.svc.cluster.local.", A, NX, &[]),
        ("nope.shop.svc.cluster.local.", A, NX, &[]),
        ("a.b.c.d.e.f.svc.cluster.local.", A, NX, &[]),
        ("redis.shop.cluster.local.", A, NX, &[]),
        (
            "cluster.local.",
            SOA,
            OK,
            &["SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5"],
        ),
        ("dns-version.cluster.local.", TXT, OK, &["TXT 1.1.0"]),
    ];
    for (name, qtype, rcode, answers) in cases {
        let got = ask(&r, name, *qtype);
        let want = Some((*rcode, answers.iter().map(|s| (*s).to_owned()).collect()));
        assert_eq!(got, want, "{name} {qtype}");
    }
    // Unknown, not ready, or an endpoint of a Service with a cluster IP: upstream.
    for forwarded in [
        "example.com.",
        "1.2.3.4.in-addr.arpa.",
        "in-addr.arpa.",
        "7.7.168.192.in-addr.arpa.",
        "7.0.244.10.in-addr.arpa.",
        "8.7.168.192.in-addr.arpa.",
    ] {
        assert_eq!(ask(&r, forwarded, PTR), None, "{forwarded}");
    }
}

#[test]
fn ttls_are_five_seconds_and_srv_answers_carry_target_addresses() {
    let r = records();
    let name = Name::from_ascii("_pg._tcp.db.shop.svc.cluster.local.").unwrap();
    let Outcome::Answer(a) = zone().lookup(&r, &name, RecordType::SRV) else {
        panic!("answered from the zone")
    };
    assert!(a.answers.iter().all(|rec| rec.ttl == 5));
    let extra: Vec<String> = a
        .additionals
        .iter()
        .map(|rec| format!("{} {}", rec.name, rec.data))
        .collect();
    assert_eq!(
        extra,
        [
            "db-0.db.shop.svc.cluster.local. 10.244.0.5",
            "db-1.db.shop.svc.cluster.local. 10.244.0.6"
        ]
    );
    let ext = Name::from_ascii("ext.shop.svc.cluster.local.").unwrap();
    let Outcome::Answer(a) = zone().lookup(&r, &ext, RecordType::A) else {
        panic!("answered from the zone")
    };
    assert_eq!(a.chase, Name::from_ascii("example.com.").ok());
}

#[test]
fn changes_and_deletions_reach_the_answers() {
    let mut r = records();
    r.set_service("shop", "redis", None);
    assert_eq!(
        ask(&r, "redis.shop.svc.cluster.local.", RecordType::A),
        Some((NX, vec![]))
    );
    assert_eq!(ask(&r, "10.0.96.10.in-addr.arpa.", RecordType::PTR), None);
    r.set_slice("shop", "legacy-1", None);
    assert_eq!(ask(&r, "5.7.168.192.in-addr.arpa.", RecordType::PTR), None);
    r.set_slice("shop", "db-x2", None);
    assert_eq!(
        ask(&r, "db.shop.svc.cluster.local.", RecordType::A),
        Some((OK, vec!["A 10.244.0.5".to_owned()]))
    );
    let moved = pod("shop", "web-1", "10.244.1.1", true, None);
    r.set_pod("shop", "web-1", Some(&moved));
    assert_eq!(ask(&r, "8.0.244.10.in-addr.arpa.", RecordType::PTR), None);
    assert_eq!(
        ask(&r, "10-244-1-1.shop.pod.cluster.local.", RecordType::A),
        Some((OK, vec!["A 10.244.1.1".to_owned()]))
    );
    r.set_pod("shop", "web-1", None);
    r.set_service("other", "api", None);
    assert_eq!(
        ask(&r, "other.svc.cluster.local.", RecordType::A),
        Some((NX, vec![])),
        "a namespace with nothing left is a name that does not exist"
    );
}

/// What a stub resolver does with `name` from a pod of `ns` (search list
/// `<ns>.svc.<zone> svc.<zone> <zone>`, ndots:5): the first name that has
/// an answer, or `None`.
fn resolve_from(r: &Records, ns: &str, name: &str) -> Option<(String, Vec<String>)> {
    let search = [
        format!("{ns}.svc.cluster.local"),
        "svc.cluster.local".to_owned(),
        "cluster.local".to_owned(),
    ];
    let mut tries: Vec<String> = Vec::new();
    if name.matches('.').count() < 5 {
        tries.extend(search.iter().map(|s| format!("{name}.{s}.")));
    }
    tries.push(format!("{name}."));
    tries.into_iter().find_map(|fqdn| {
        let (rcode, answers) = ask(r, &fqdn, RecordType::A)?;
        (rcode == OK && !answers.is_empty()).then_some((fqdn, answers))
    })
}

#[test]
fn short_names_resolve_through_the_search_path() {
    let r = records();
    let found = |ns, name| resolve_from(&r, ns, name).map(|(fqdn, _)| fqdn);
    assert_eq!(
        found("shop", "redis").as_deref(),
        Some("redis.shop.svc.cluster.local.")
    );
    assert_eq!(
        found("shop", "api.other").as_deref(),
        Some("api.other.svc.cluster.local.")
    );
    assert_eq!(
        found("other", "db-0.db.shop").as_deref(),
        Some("db-0.db.shop.svc.cluster.local.")
    );
    assert_eq!(found("other", "redis"), None, "redis is in shop, not other");
    assert_eq!(
        found("shop", "example.com"),
        None,
        "every expansion is NXDOMAIN, then the name goes upstream"
    );
}
