//! End-to-end tests of networking: Services, Endpoints/EndpointSlices,
//! Ingresses and cert-manager sharing between a virtual cluster and its host.
//! One dev stack and one `vcluster syncer` are shared; each test works in
//! its own virtual namespaces.
//!
//! cert-manager itself does not run here: the test
//! `cert_manager_certificate_is_mirrored_up` stands in for the host's
//! cert-manager, doing on the host exactly what its ingress-shim and issuer do
//! for an annotated ingress (a Certificate named after the TLS secret, owned
//! by the ingress, then the issued `kubernetes.io/tls` Secret with
//! cert-manager's annotations). The syncer's side is real.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use libtest_mimic::Arguments;
use serde_json::json;
use vcluster::translate::{VclusterName, host_name};

const T: Duration = Duration::from_secs(60);
const VC: &str = "net";
const HOST_NS: &str = "team-net";
/// Another tenant's host namespace, holding foreign objects.
const OTHER_NS: &str = "team-other";

struct Env {
    stack: DevStack,
    _syncer: SyncerProcess,
}

fn hn(ns: &str, name: &str) -> String {
    host_name(&VclusterName::new(VC).unwrap(), ns, name)
}

async fn clients_of(env: &Env) -> (kube::Client, kube::Client) {
    clients(&env.stack).await
}

/// Waits for `name` to exist in `api` and returns it.
async fn exists<K>(api: &Api<K>, name: &str) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    eventually(&format!("{name} to exist"), T, || async {
        api.get_opt(name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "absent".to_owned())
    })
    .await
}

/// Waits for a Warning event with `reason` about object `name` in `ns`.
async fn warning(v: &kube::Client, ns: &str, name: &str, reason: &str) -> String {
    let events: Api<Event> = Api::namespaced(v.clone(), ns);
    let ev = eventually(&format!("a {reason} warning on {ns}/{name}"), T, || async {
        let l = events
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        l.items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
            })
            .ok_or_else(|| "no event yet".to_owned())
    })
    .await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    ev.note.unwrap_or_default()
}

fn cluster_ip(s: &Service) -> String {
    s.spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .unwrap_or_default()
}

fn node_ports(s: &Service) -> Vec<i32> {
    s.spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|p| p.node_port)
        .collect()
}

/// Waits until the virtual Service and its host copy show the same cluster
/// IP and node ports; returns both.
async fn in_parity(v: &kube::Client, h: &kube::Client, ns: &str, name: &str) -> (Service, Service) {
    let vapi: Api<Service> = Api::namespaced(v.clone(), ns);
    let hapi: Api<Service> = Api::namespaced(h.clone(), HOST_NS);
    eventually(
        &format!("{ns}/{name} in parity with the host"),
        T,
        || async {
            let vs = vapi.get(name).await.map_err(|e| e.to_string())?;
            let hs = hapi
                .get_opt(&hn(ns, name))
                .await
                .map_err(|e| e.to_string())?
                .ok_or("no host copy")?;
            if cluster_ip(&vs) == cluster_ip(&hs) && node_ports(&vs) == node_ports(&hs) {
                Ok((vs, hs))
            } else {
                Err(format!(
                    "virtual {} {:?}, host {} {:?}",
                    cluster_ip(&vs),
                    node_ports(&vs),
                    cluster_ip(&hs),
                    node_ports(&hs)
                ))
            }
        },
    )
    .await
}

fn web_deployment(name: &str, app: &str, replicas: i32) -> serde_json::Value {
    json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app}},
            "template": {"metadata": {"labels": {"app": app}}, "spec": {
                "containers": [{"name": "web", "image": "nginx:1.27", "ports": [{"containerPort": 8080}]}]}}
        }
    })
}

/// The ready addresses of every EndpointSlice of Service `svc` in `ns`.
async fn slice_addresses(c: &kube::Client, ns: &str, svc: &str) -> BTreeSet<String> {
    let slices: Api<EndpointSlice> = Api::namespaced(c.clone(), ns);
    let l = slices
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={svc}")))
        .await
        .unwrap();
    l.items
        .iter()
        .flat_map(|s| s.endpoints.iter().flatten())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
        .flat_map(|e| e.addresses.clone())
        .collect()
}

async fn pod_ips(c: &kube::Client, ns: &str, app: &str, n: usize) -> BTreeSet<String> {
    let pods: Api<Pod> = Api::namespaced(c.clone(), ns);
    running(&pods, app, n, T)
        .await
        .iter()
        .filter_map(|p| p.status.as_ref().and_then(|s| s.pod_ip.clone()))
        .collect()
}

fn cluster_ip_and_node_port_parity(env: &Env) {
    block_on(async {
        let (v, h) = clients_of(env).await;
        let ns = "parity";
        namespace(&v, ns).await;
        let vapi: Api<Service> = Api::namespaced(v.clone(), ns);
        create(
            &vapi,
            json!({"metadata": {"name": "web"},
                "spec": {"type": "NodePort", "selector": {"app": "web"},
                         "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
        )
        .await;
        let (vs, hs) = in_parity(&v, &h, ns, "web").await;
        assert!(cluster_ip(&vs).starts_with("10.96."), "{}", cluster_ip(&vs));
        assert_eq!(node_ports(&hs).len(), 1);

        // Addresses another tenant of the host already holds: the host
        // allocates others and the virtual Service shows those.
        let foreign: Api<Service> = Api::namespaced(h.clone(), OTHER_NS);
        create(
            &foreign,
            json!({"metadata": {"name": "taken"},
                "spec": {"type": "NodePort", "clusterIP": "10.96.200.200",
                         "ports": [{"port": 80, "nodePort": 30555}]}}),
        )
        .await;
        create(
            &vapi,
            json!({"metadata": {"name": "wants-taken", "labels": {"keep": "me"}},
                "spec": {"type": "NodePort", "clusterIP": "10.96.200.200", "selector": {"app": "x"},
                         "ports": [{"port": 80, "nodePort": 30555}]}}),
        )
        .await;
        let (vs, hs) = in_parity(&v, &h, ns, "wants-taken").await;
        assert_ne!(cluster_ip(&hs), "10.96.200.200");
        assert_ne!(node_ports(&hs), vec![30555]);
        assert_eq!(
            vs.metadata.labels.as_ref().unwrap()["keep"],
            "me",
            "the re-created virtual Service keeps its labels"
        );
        // The foreign object is untouched.
        let f = foreign.get("taken").await.unwrap();
        assert_eq!(cluster_ip(&f), "10.96.200.200");

        // What the tenant sees with kubectl is what the host assigned.
        let out = kubectl_ok(
            &env.stack.vcluster_kubeconfig(),
            &["get", "svc", "-n", ns, "--no-headers"],
            None,
        );
        for (name, want) in [
            ("web", in_parity(&v, &h, ns, "web").await.1),
            ("wants-taken", hs),
        ] {
            let line = out
                .lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} missing from kubectl output:\n{out}"));
            assert!(line.contains(&cluster_ip(&want)), "{line}");
            assert!(
                line.contains(&format!(":{}/TCP", node_ports(&want)[0])),
                "{line}"
            );
        }
        foreign
            .delete("taken", &DeleteParams::default())
            .await
            .unwrap();
    });
}

fn services_select_only_their_own_namespace(env: &Env) {
    block_on(async {
        let (v, h) = clients_of(env).await;
        for ns in ["sel-a", "sel-b"] {
            namespace(&v, ns).await;
            create(
                &Api::<Deployment>::namespaced(v.clone(), ns),
                web_deployment("web", "same", 2),
            )
            .await;
            create(
                &Api::<Service>::namespaced(v.clone(), ns),
                json!({"metadata": {"name": "web"},
                    "spec": {"selector": {"app": "same"}, "ports": [{"port": 80, "targetPort": 8080}]}}),
            )
            .await;
        }
        let a = pod_ips(&v, "sel-a", "same", 2).await;
        let b = pod_ips(&v, "sel-b", "same", 2).await;
        assert!(a.is_disjoint(&b));
        for (ns, ips) in [("sel-a", &a), ("sel-b", &b)] {
            // The host derives the Service's endpoints from its own pods ...
            let host_svc = hn(ns, "web");
            let got = eventually(&format!("host endpoints of {host_svc}"), T, || async {
                let got = slice_addresses(&h, HOST_NS, &host_svc).await;
                if &got == ips {
                    Ok(got)
                } else {
                    Err(format!("{got:?} want {ips:?}"))
                }
            })
            .await;
            // ... and the virtual control plane from the synced pods: they agree.
            eventually(&format!("virtual endpoints of {ns}/web"), T, || async {
                let virt = slice_addresses(&v, ns, "web").await;
                if virt == got {
                    Ok(())
                } else {
                    Err(format!("virtual {virt:?} host {got:?}"))
                }
            })
            .await;
        }
        // The selector itself is confined on the host.
        let hs: Service = Api::namespaced(h.clone(), HOST_NS)
            .get(&hn("sel-a", "web"))
            .await
            .unwrap();
        let sel = hs.spec.unwrap().selector.unwrap();
        assert_eq!(sel["vcluster.dev/owner"], VC);
        assert_eq!(sel["vcluster.dev/namespace"], "sel-a");
    });
}

fn headless_selector_less_and_external_name_services(env: &Env) {
    block_on(async {
        let (v, h) = clients_of(env).await;
        let ns = "kinds";
        namespace(&v, ns).await;
        let vapi: Api<Service> = Api::namespaced(v.clone(), ns);
        let hapi: Api<Service> = Api::namespaced(h.clone(), HOST_NS);
        create(
            &Api::<Deployment>::namespaced(v.clone(), ns),
            web_deployment("db", "db", 1),
        )
        .await;
        create(
            &vapi,
            json!({"metadata": {"name": "db"},
                "spec": {"clusterIP": "None", "selector": {"app": "db"}, "ports": [{"port": 5432}]}}),
        )
        .await;
        create(
            &vapi,
            json!({"metadata": {"name": "legacy"}, "spec": {"ports": [{"port": 5432}]}}),
        )
        .await;
        create(
            &Api::<Endpoints>::namespaced(v.clone(), ns),
            json!({"metadata": {"name": "legacy"},
                "subsets": [{"addresses": [{"ip": "192.0.2.10"}, {"ip": "192.0.2.11"}], "ports": [{"port": 5432}]}]}),
        )
        .await;
        create(
            &vapi,
            json!({"metadata": {"name": "sliced"}, "spec": {"ports": [{"name": "pg", "port": 5432}]}}),
        )
        .await;
        create(
            &Api::<EndpointSlice>::namespaced(v.clone(), ns),
            json!({"metadata": {"name": "sliced-1", "labels": {"kubernetes.io/service-name": "sliced"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["192.0.2.20"], "conditions": {"ready": true}}],
                "ports": [{"name": "pg", "port": 5432}]}),
        )
        .await;
        create(
            &vapi,
            json!({"metadata": {"name": "ext"}, "spec": {"type": "ExternalName", "externalName": "db.example.org"}}),
        )
        .await;

        let db = exists(&hapi, &hn(ns, "db")).await;
        assert_eq!(cluster_ip(&db), "None", "headless on the host too");
        let ip = pod_ips(&v, ns, "db", 1).await;
        eventually("host endpoints of the headless Service", T, || async {
            let got = slice_addresses(&h, HOST_NS, &hn(ns, "db")).await;
            if got == ip {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        })
        .await;

        let legacy = exists(&hapi, &hn(ns, "legacy")).await;
        assert_eq!(legacy.spec.unwrap().selector, None);
        let eps = exists(
            &Api::<Endpoints>::namespaced(h.clone(), HOST_NS),
            &hn(ns, "legacy"),
        )
        .await;
        let addrs: BTreeSet<String> = eps.subsets.unwrap()[0]
            .addresses
            .iter()
            .flatten()
            .map(|a| a.ip.clone())
            .collect();
        assert_eq!(
            addrs,
            BTreeSet::from(["192.0.2.10".into(), "192.0.2.11".into()])
        );

        let slice = exists(
            &Api::<EndpointSlice>::namespaced(h.clone(), HOST_NS),
            &hn(ns, "sliced-1"),
        )
        .await;
        let labels = slice.metadata.labels.unwrap();
        assert_eq!(labels["kubernetes.io/service-name"], hn(ns, "sliced"));
        eventually("host endpoints of the sliced Service", T, || async {
            let got = slice_addresses(&h, HOST_NS, &hn(ns, "sliced")).await;
            if got == BTreeSet::from(["192.0.2.20".to_owned()]) {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        })
        .await;

        let ext = exists(&hapi, &hn(ns, "ext")).await;
        let spec = ext.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ExternalName"));
        assert_eq!(spec.external_name.as_deref(), Some("db.example.org"));

        // The virtual Endpoints derived for the selector Service never go down.
        let derived = Api::<Endpoints>::namespaced(h.clone(), HOST_NS)
            .get_opt(&hn(ns, "db"))
            .await
            .unwrap();
        if let Some(d) = derived {
            let labels = d.metadata.labels.unwrap_or_default();
            assert_eq!(
                labels
                    .get("endpoints.kubernetes.io/managed-by")
                    .map(String::as_str),
                Some("endpoint-controller"),
                "the host's own controller derives them, not the syncer: {labels:?}"
            );
            let ann = d.metadata.annotations.unwrap_or_default();
            assert!(!ann.contains_key("vcluster.dev/name"), "{ann:?}");
        }
    });
}

fn load_balancer_and_ingress_status_come_up(env: &Env) {
    block_on(async {
        let (v, h) = clients_of(env).await;
        let ns = "shop";
        namespace(&v, ns).await;
        let vapi: Api<Service> = Api::namespaced(v.clone(), ns);
        create(
            &vapi,
            json!({"metadata": {"name": "front"},
                "spec": {"type": "LoadBalancer", "selector": {"app": "front"}, "ports": [{"port": 443, "targetPort": 8443}]}}),
        )
        .await;
        create(
            &Api::<Secret>::namespaced(v.clone(), ns),
            json!({"metadata": {"name": "shop-tls"}, "type": "kubernetes.io/tls",
                "data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5"}}),
        )
        .await;
        let ing: Api<Ingress> = Api::namespaced(v.clone(), ns);
        create(
            &ing,
            json!({"metadata": {"name": "shop", "annotations": {"nginx.ingress.kubernetes.io/rewrite-target": "/"}},
                "spec": {"ingressClassName": "nginx",
                    "tls": [{"hosts": ["shop.net.apps.example.com"], "secretName": "shop-tls"}],
                    "rules": [{"host": "shop.net.apps.example.com", "http": {"paths": [
                        {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "front", "port": {"number": 443}}}}]}}]}}),
        )
        .await;
        let hing: Api<Ingress> = Api::namespaced(h.clone(), HOST_NS);
        let hi = exists(&hing, &hn(ns, "shop")).await;
        let spec = hi.spec.clone().unwrap();
        assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
        let rules = spec.rules.unwrap();
        let backend = &rules[0].http.as_ref().unwrap().paths[0].backend;
        assert_eq!(backend.service.as_ref().unwrap().name, hn(ns, "front"));
        assert_eq!(
            spec.tls.unwrap()[0].secret_name.as_deref(),
            Some(hn(ns, "shop-tls").as_str())
        );
        assert_eq!(
            hi.metadata.annotations.unwrap()["nginx.ingress.kubernetes.io/rewrite-target"],
            "/"
        );
        // The tenant's own TLS Secret goes down with the ingress.
        exists(
            &Api::<Secret>::namespaced(h.clone(), HOST_NS),
            &hn(ns, "shop-tls"),
        )
        .await;

        // The host's controllers report addresses; the tenant sees them.
        let hsvc: Api<Service> = Api::namespaced(h.clone(), HOST_NS);
        exists(&hsvc, &hn(ns, "front")).await;
        let lb = json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.50"}]}}});
        hsvc.patch_status(
            &hn(ns, "front"),
            &PatchParams::default(),
            &Patch::Merge(&lb),
        )
        .await
        .unwrap();
        let ilb = json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.60", "hostname": "lb.example.com"}]}}});
        hing.patch_status(
            &hn(ns, "shop"),
            &PatchParams::default(),
            &Patch::Merge(&ilb),
        )
        .await
        .unwrap();
        let kc = env.stack.vcluster_kubeconfig();
        eventually_sync("kubectl get svc,ingress to show host addresses", T, || {
            let out = text(&kubectl(
                &kc,
                &["get", "svc,ingress", "-n", ns, "--no-headers"],
                None,
            ))
            .0;
            let svc_ok = out
                .lines()
                .any(|l| l.starts_with("service/front ") && l.contains("192.0.2.50"));
            let ing_ok = out.lines().any(|l| {
                l.starts_with("ingress.networking.k8s.io/shop ") && l.contains("192.0.2.60")
            });
            if svc_ok && ing_ok { Ok(()) } else { Err(out) }
        });
    });
}

fn denied_ingresses_get_warning_events(env: &Env) {
    block_on(async {
        let (v, h) = clients_of(env).await;
        let ns = "denied";
        namespace(&v, ns).await;
        let ing: Api<Ingress> = Api::namespaced(v.clone(), ns);
        let hing: Api<Ingress> = Api::namespaced(h.clone(), HOST_NS);
        let rule = |host: &str| {
            json!([{"host": host, "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}])
        };
        create(
            &ing,
            json!({"metadata": {"name": "snippet", "annotations": {
                    "nginx.ingress.kubernetes.io/configuration-snippet": "more_set_headers \"X: y\";"}},
                "spec": {"rules": rule("a.net.apps.example.com")}}),
        )
        .await;
        create(
            &ing,
            json!({"metadata": {"name": "elsewhere"}, "spec": {"rules": rule("www.bank.example.com")}}),
        )
        .await;
        let note = warning(&v, ns, "snippet", "IngressAnnotationDenied").await;
        assert!(
            note.contains("nginx.ingress.kubernetes.io/configuration-snippet"),
            "{note}"
        );
        let note = warning(&v, ns, "elsewhere", "IngressHostDenied").await;
        assert!(
            note.contains("www.bank.example.com") && note.contains("*.net.apps.example.com"),
            "{note}"
        );
        for name in ["snippet", "elsewhere"] {
            assert!(
                hing.get_opt(&hn(ns, name)).await.unwrap().is_none(),
                "{name} reached the host"
            );
        }
        // Fixed, it goes down; made invalid again, it leaves the host.
        let fix = json!({"spec": {"rules": rule("ok.net.apps.example.com")}});
        ing.patch("elsewhere", &PatchParams::default(), &Patch::Merge(&fix))
            .await
            .unwrap();
        exists(&hing, &hn(ns, "elsewhere")).await;
        let bad = json!({"spec": {"rules": rule("x.other.apps.example.com")}});
        ing.patch("elsewhere", &PatchParams::default(), &Patch::Merge(&bad))
            .await
            .unwrap();
        eventually("the refused ingress to leave the host", T, || async {
            match hing.get_opt(&hn(ns, "elsewhere")).await {
                Ok(None) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    });
}

fn dynamic(
    c: &kube::Client,
    ns: &str,
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
) -> Api<DynamicObject> {
    let ar =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
    Api::namespaced_with(c.clone(), ns, &ar)
}

/// What cert-manager's ingress-shim and issuer do on the host for an
/// annotated ingress: a Certificate for each TLS entry, then the Secret.
async fn stand_in_for_cert_manager(h: &kube::Client, host_ingress: &Ingress) -> Vec<u8> {
    let certs = dynamic(
        h,
        HOST_NS,
        "cert-manager.io",
        "v1",
        "Certificate",
        "certificates",
    );
    let ann = host_ingress
        .metadata
        .annotations
        .clone()
        .unwrap_or_default();
    let issuer = ann.get("cert-manager.io/cluster-issuer").cloned().unwrap();
    let tls = host_ingress.spec.as_ref().unwrap().tls.clone().unwrap();
    let entry = &tls[0];
    let secret_name = entry.secret_name.clone().unwrap();
    let hosts = entry.hosts.clone().unwrap();
    let cert: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "cert-manager.io/v1", "kind": "Certificate",
        "metadata": {"name": secret_name, "ownerReferences": [{
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "controller": true, "blockOwnerDeletion": true,
            "name": host_ingress.metadata.name, "uid": host_ingress.metadata.uid}]},
        "spec": {"secretName": secret_name, "dnsNames": hosts, "usages": ["digital signature", "key encipherment"],
                 "issuerRef": {"name": issuer, "kind": "ClusterIssuer", "group": "cert-manager.io"}}
    }))
    .unwrap();
    certs.create(&PostParams::default(), &cert).await.unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(hosts.clone()).unwrap();
    let crt = params.self_signed(&key).unwrap();
    let pem = crt.pem().into_bytes();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": secret_name, "annotations": {
            "cert-manager.io/certificate-name": secret_name,
            "cert-manager.io/issuer-name": issuer,
            "cert-manager.io/issuer-kind": "ClusterIssuer",
            "cert-manager.io/issuer-group": "cert-manager.io",
            "cert-manager.io/alt-names": hosts.join(","),
            "cert-manager.io/common-name": ""},
          "labels": {"controller.cert-manager.io/fao": "true"}},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": String::from_utf8(pem.clone()).unwrap(), "tls.key": key.serialize_pem(), "ca.crt": ""}
    }))
    .unwrap();
    Api::<Secret>::namespaced(h.clone(), HOST_NS)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    pem
}

fn cert_manager_certificate_is_mirrored_up(env: &Env) {
    block_on(async {
        let (v, h) = clients_of(env).await;
        let ns = "certs";
        namespace(&v, ns).await;
        let ing: Api<Ingress> = Api::namespaced(v.clone(), ns);
        create(
            &ing,
            json!({"metadata": {"name": "app", "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"}},
                "spec": {"tls": [{"hosts": ["app.net.apps.example.com"], "secretName": "app-tls"}],
                    "rules": [{"host": "app.net.apps.example.com", "http": {"paths": [
                        {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "app", "port": {"number": 80}}}}]}}]}}),
        )
        .await;
        let hing = exists(
            &Api::<Ingress>::namespaced(h.clone(), HOST_NS),
            &hn(ns, "app"),
        )
        .await;
        assert_eq!(
            hing.metadata.annotations.as_ref().unwrap()["cert-manager.io/cluster-issuer"],
            "letsencrypt",
            "the tenant names a host ClusterIssuer through the usual annotation"
        );
        let pem = stand_in_for_cert_manager(&h, &hing).await;

        let vsec: Api<Secret> = Api::namespaced(v.clone(), ns);
        let mirror = exists(&vsec, "app-tls").await;
        assert_eq!(mirror.type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(mirror.data.as_ref().unwrap()["tls.crt"].0, pem);
        assert_eq!(
            mirror.metadata.labels.as_ref().unwrap()["vcluster.dev/mirror"],
            "true"
        );
        assert_eq!(
            mirror.metadata.annotations.as_ref().unwrap()["vcluster.dev/mirror-of"],
            format!("{HOST_NS}/{}", hn(ns, "app-tls"))
        );
        let out = kubectl_ok(
            &env.stack.vcluster_kubeconfig(),
            &[
                "get",
                "secret",
                "app-tls",
                "-n",
                ns,
                "-o",
                "jsonpath={.data.tls\\.crt}",
            ],
            None,
        );
        assert!(!out.is_empty());

        // A tenant's edit is reverted.
        let tamper = json!({"data": {"tls.crt": "dGFtcGVyZWQ="}});
        vsec.patch("app-tls", &PatchParams::default(), &Patch::Merge(&tamper))
            .await
            .unwrap();
        eventually("the mirror to be restored", T, || async {
            let s = vsec.get("app-tls").await.map_err(|e| e.to_string())?;
            if s.data.unwrap()["tls.crt"].0 == pem {
                Ok(())
            } else {
                Err("still tampered".into())
            }
        })
        .await;
        // The mirror never goes back down: the host Secret stays cert-manager's.
        let hs = Api::<Secret>::namespaced(h.clone(), HOST_NS)
            .get(&hn(ns, "app-tls"))
            .await
            .unwrap();
        assert!(
            !hs.metadata
                .labels
                .unwrap_or_default()
                .contains_key("vcluster.dev/owner")
        );

        // The ingress goes: so does the mirror.
        ing.delete("app", &DeleteParams::default()).await.unwrap();
        eventually("the mirror to be removed", T, || async {
            match vsec.get_opt("app-tls").await {
                Ok(None) => Ok(()),
                other => Err(format!("{:?}", other.map(|o| o.is_some()))),
            }
        })
        .await;
    });
}

fn virtual_kubernetes_service_points_at_the_vcluster(env: &Env) {
    block_on(async {
        let (v, h) = clients_of(env).await;
        let api_svc: Service = Api::namespaced(h.clone(), HOST_NS).get(VC).await.unwrap();
        let want = cluster_ip(&api_svc);
        let vk: Api<Service> = Api::namespaced(v.clone(), "default");
        eventually(
            "virtual kubernetes Service at the vcluster Service's address",
            T,
            || async {
                let s = vk.get("kubernetes").await.map_err(|e| e.to_string())?;
                if cluster_ip(&s) == want {
                    Ok(())
                } else {
                    Err(cluster_ip(&s))
                }
            },
        )
        .await;
        // Synced pods are told the same address.
        let ns = "apisvc";
        namespace(&v, ns).await;
        create(
            &Api::<Pod>::namespaced(v.clone(), ns),
            json!({"metadata": {"name": "client"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
        )
        .await;
        let hp = exists(
            &Api::<Pod>::namespaced(h.clone(), HOST_NS),
            &hn(ns, "client"),
        )
        .await;
        let env_vars = hp.spec.unwrap().containers[0]
            .env
            .clone()
            .unwrap_or_default();
        let host_var = env_vars
            .iter()
            .find(|e| e.name == "KUBERNETES_SERVICE_HOST")
            .and_then(|e| e.value.clone());
        assert_eq!(host_var.as_deref(), Some(want.as_str()));
        // Nothing of it is synced down as an ordinary Service.
        assert!(
            Api::<Service>::namespaced(h.clone(), HOST_NS)
                .get_opt(&hn("default", "kubernetes"))
                .await
                .unwrap()
                .is_none()
        );
    });
}

fn service_cidr_is_discovered(env: &Env) {
    let hk = env.stack.host_kubeconfig();
    for extra in [&[][..], &["--probe"][..]] {
        let mut args = vec![
            "service-cidr",
            "--host-kubeconfig",
            hk.to_str().unwrap(),
            "--host-namespace",
            HOST_NS,
        ];
        args.extend_from_slice(extra);
        let out = vcluster(&args);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        assert_eq!(stdout.trim(), "10.96.0.0/16", "{extra:?}");
    }
    let out = vcluster(&[
        "service-cidr",
        "--host-kubeconfig",
        "/nonexistent",
        "--host-namespace",
        HOST_NS,
    ]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("/nonexistent"), "{stderr}");
}

const TESTS: &[Test<Env>] = &[
    (
        "cluster_ip_and_node_port_parity",
        cluster_ip_and_node_port_parity,
    ),
    (
        "services_select_only_their_own_namespace",
        services_select_only_their_own_namespace,
    ),
    (
        "headless_selector_less_and_external_name_services",
        headless_selector_less_and_external_name_services,
    ),
    (
        "load_balancer_and_ingress_status_come_up",
        load_balancer_and_ingress_status_come_up,
    ),
    (
        "denied_ingresses_get_warning_events",
        denied_ingresses_get_warning_events,
    ),
    (
        "cert_manager_certificate_is_mirrored_up",
        cert_manager_certificate_is_mirrored_up,
    ),
    (
        "virtual_kubernetes_service_points_at_the_vcluster",
        virtual_kubernetes_service_points_at_the_vcluster,
    ),
    ("service_cidr_is_discovered", service_cidr_is_discovered),
];

fn main() {
    let args = Arguments::from_args();
    list_or_check(&args, &[TESTS]);
    let stack = DevStack::up(&["--no-syncer", "--nodes", "2"]);
    let hk = stack.host_kubeconfig();
    for ns in [HOST_NS, OTHER_NS] {
        kubectl_ok(&hk, &["create", "namespace", ns], None);
    }
    // The vcluster's API Service on the host, as the chart makes it.
    kubectl_ok(
        &hk,
        &[
            "create",
            "service",
            "clusterip",
            VC,
            "-n",
            HOST_NS,
            "--tcp=443:8443",
        ],
        None,
    );
    // cert-manager's CRDs on the host (its controllers are stood in for).
    let crds = "../shared/testdata/crds/cert-manager";
    kubectl_ok(&hk, &["apply", "--server-side", "-f", crds], None);
    kubectl_ok(
        &hk,
        &[
            "wait",
            "--for=condition=Established",
            "crd/certificates.cert-manager.io",
            "--timeout=60s",
        ],
        None,
    );
    let syncer = SyncerProcess::start_with(
        &stack,
        VC,
        HOST_NS,
        &["--ingress-allowed-hosts", "*.{name}.apps.example.com"],
    );
    let log = syncer.log.clone();
    let env = Arc::new(Env {
        stack,
        _syncer: syncer,
    });
    let failed = run_groups(&args, &env, &[(TESTS, None)]);
    if failed > 0 {
        eprintln!(
            "--- syncer log tail\n{}",
            vcluster::local::process::log_tail(&log, 40)
        );
    }
    drop(env);
    if failed > 0 {
        std::process::exit(101);
    }
}
