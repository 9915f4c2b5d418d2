//! End-to-end tests of networking: Services, Endpoints/EndpointSlices,
//! Ingresses and cert-manager sharing between a virtual cluster and its host.
//! One dev stack and one `vcluster syncer` are shared; each test works in
//! its own virtual namespaces.
//!
//! The host runs a real cert-manager (its controllers, built by `make
//! shared-bins`, and the pinned release's CRDs): `cert_manager_certificate_is_mirrored_up`
//! has its ingress-shim and CA issuer certify a tenant ingress, and the syncer
//! mirror the certificate and its renewals up;
//! `tenant_certificates_are_issued_by_allowed_host_issuers` has it issue a
//! Certificate the tenant wrote itself (`--sync ...,certificates`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod common;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use common::shared::*;
use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use libtest_mimic::Arguments;
use serde_json::json;
use vcluster::translate::{VclusterName, host_name};

const T: Duration = Duration::from_secs(60);
/// Issuing and renewing through cert-manager (a renewal comes about 30 s in).
const CERT_T: Duration = Duration::from_secs(150);
const VC: &str = "net";
const HOST_NS: &str = "team-net";
/// Another tenant's host namespace, holding foreign objects.
const OTHER_NS: &str = "team-other";

struct Env {
    stack: DevStack,
    /// The syncer, and whether it runs with the isolated Service types.
    syncer: std::sync::Mutex<(SyncerProcess, bool)>,
    /// The host's cert-manager.
    cert_manager: HostService,
}

/// Syncer flags every phase shares: every kind and tenant Certificates
/// (issued by the host's ClusterIssuer `cert-ca` only); ingress hosts kept to the vcluster's
/// names; tenant endpoints may also name the documentation range and the
/// /12 around the host's service range (which stays refused all the same).
const SYNCER_ARGS: &[&str] = &[
    "--sync",
    "pods,configmaps,secrets,events,services,endpoints,ingresses,persistentvolumeclaims,certificates",
    "--certificate-cluster-issuers",
    "cert-ca",
    "--ingress-allowed-hosts",
    "*.{name}.apps.example.com",
    "--endpoints-allowed-cidrs",
    "192.0.2.0/24,10.96.0.0/12",
];
/// The isolated phase: the example values' Service types.
const ISOLATED_ARGS: &[&str] = &["--allowed-service-types", "ClusterIP,ExternalName"];

/// Restarts the syncer (killed first, as a crash would), isolated or not.
fn restart_syncer(env: &Env, isolated: bool) {
    let mut guard = env.syncer.lock().unwrap();
    guard.0.kill();
    let mut args = SYNCER_ARGS.to_vec();
    if isolated {
        args.extend_from_slice(ISOLATED_ARGS);
    }
    *guard = (
        SyncerProcess::start_with(&env.stack, VC, HOST_NS, &args),
        isolated,
    );
}

/// Makes sure the syncer runs with the isolated Service types.
fn ensure_isolated(env: &Env) {
    if !env.syncer.lock().unwrap().1 {
        restart_syncer(env, true);
    }
}

fn syncer_log(env: &Env) -> String {
    std::fs::read_to_string(&env.syncer.lock().unwrap().0.log).unwrap_or_default()
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

/// Waits for a Warning event with `reason` about `name` in `ns` whose note
/// passes `ok` (an earlier one may have seen an older state).
async fn warning_where(
    v: &kube::Client,
    ns: &str,
    name: &str,
    reason: &str,
    ok: impl Fn(&str) -> bool,
) -> String {
    let events: Api<Event> = Api::namespaced(v.clone(), ns);
    eventually(
        &format!("a fitting {reason} warning on {ns}/{name}"),
        T,
        || async {
            let l = events
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            let notes: Vec<String> = l
                .items
                .into_iter()
                .filter(|e| {
                    e.reason.as_deref() == Some(reason)
                        && e.type_.as_deref() == Some("Warning")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                })
                .filter_map(|e| e.note)
                .collect();
            notes
                .iter()
                .find(|n| ok(n))
                .cloned()
                .ok_or_else(|| format!("{notes:?}"))
        },
    )
    .await
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

/// A selector-less Service whose cluster IP the host already gives to another
/// Service is replaced inside at the host's address; the tenant's own
/// Endpoints of it survive that (the virtual endpoints controller deletes the
/// Endpoints of a Service it finds gone) and keep going down.
fn a_replaced_selector_less_service_keeps_its_endpoints(env: &Env) {
    block_on(async {
        let (v, h) = clients_of(env).await;
        let ns = "replaced";
        namespace(&v, ns).await;
        let foreign: Api<Service> = Api::namespaced(h.clone(), OTHER_NS);
        create(
            &foreign,
            json!({"metadata": {"name": "holds-ip"},
                "spec": {"clusterIP": "10.96.200.201", "ports": [{"port": 80}]}}),
        )
        .await;
        let vapi: Api<Service> = Api::namespaced(v.clone(), ns);
        let veps: Api<Endpoints> = Api::namespaced(v.clone(), ns);
        create(
            &vapi,
            json!({"metadata": {"name": "db"},
                "spec": {"clusterIP": "10.96.200.201", "ports": [{"port": 5432}]}}),
        )
        .await;
        create(
            &veps,
            json!({"metadata": {"name": "db", "labels": {"team": "data"}},
                "subsets": [{"addresses": [{"ip": "192.0.2.31"}], "ports": [{"port": 5432}]}]}),
        )
        .await;
        let (vs, hs) = in_parity(&v, &h, ns, "db").await;
        assert_ne!(cluster_ip(&hs), "10.96.200.201");
        assert_eq!(cluster_ip(&vs), cluster_ip(&hs));
        let heps: Api<Endpoints> = Api::namespaced(h.clone(), HOST_NS);
        let ips = |e: &Endpoints| -> Vec<String> {
            e.subsets
                .iter()
                .flatten()
                .flat_map(|s| s.addresses.iter().flatten())
                .map(|a| a.ip.clone())
                .collect()
        };
        // The tenant's Endpoints and their host copy are there once the
        // replacement has settled: looked at until at least 5 s after it (the
        // controller's deletion comes within about a second; without the
        // syncer putting them back they stay gone).
        let replaced = std::time::Instant::now();
        eventually(
            "the tenant's Endpoints of the replaced Service",
            T,
            || async {
                let e = veps
                    .get_opt("db")
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or("the virtual Endpoints are gone")?;
                if ips(&e) != ["192.0.2.31"]
                    || e.labels().get("team").map(String::as_str) != Some("data")
                {
                    return Err(format!("virtual Endpoints changed: {e:?}"));
                }
                let he = heps
                    .get_opt(&hn(ns, "db"))
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or("no host copy")?;
                if ips(&he) != ["192.0.2.31"] {
                    return Err(format!("host copy {:?}", ips(&he)));
                }
                if replaced.elapsed() < Duration::from_secs(5) {
                    return Err("there; looking again until 5 s after the replacement".to_owned());
                }
                Ok(())
            },
        )
        .await;
        foreign
            .delete("holds-ip", &DeleteParams::default())
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

/// The host Secret's `tls.crt` as mirrored up under the tenant's name, once
/// it passes `ok`.
async fn mirrored_cert(vsec: &Api<Secret>, name: &str, ok: impl Fn(&[u8]) -> bool) -> Secret {
    eventually(
        &format!("the certificate mirrored up as {name}"),
        CERT_T,
        || async {
            let s = vsec
                .get_opt(name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("no mirror yet")?;
            let crt = s
                .data
                .as_ref()
                .and_then(|d| d.get("tls.crt"))
                .map(|b| b.0.clone())
                .unwrap_or_default();
            if !crt.is_empty() && ok(&crt) {
                Ok(s)
            } else {
                Err(format!("tls.crt of {} bytes", crt.len()))
            }
        },
    )
    .await
}

fn data(s: &Secret, key: &str) -> Vec<u8> {
    s.data.as_ref().unwrap()[key].0.clone()
}

/// A real cert-manager on the host (ingress-shim, the certificate
/// controllers, a CA ClusterIssuer) issues the certificate the tenant's
/// ingress asks for; the syncer mirrors it up, and its renewals too.
fn cert_manager_certificate_is_mirrored_up(env: &Env) {
    block_on(async {
        let (v, h) = clients_of(env).await;
        let ca = ca_cluster_issuer(&h, "tenant-ca").await;
        let ns = "certs";
        namespace(&v, ns).await;
        let ing: Api<Ingress> = Api::namespaced(v.clone(), ns);
        // A TLS host outside the vcluster's names: refused, so no host
        // ingress exists for cert-manager to make a Certificate from.
        create(
            &ing,
            json!({"metadata": {"name": "stray", "annotations": {"cert-manager.io/cluster-issuer": "tenant-ca"}},
                "spec": {"tls": [{"hosts": ["shop.someone-else.example.com"], "secretName": "stray-tls"}],
                    "rules": [{"host": "stray.net.apps.example.com", "http": {"paths": [
                        {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "app", "port": {"number": 80}}}}]}}]}}),
        )
        .await;
        let hosts = ["app.net.apps.example.com", "www.net.apps.example.com"];
        // Two-minute certificates renewed 90 s before they end: a renewal
        // about 30 s after each issue.
        create(
            &ing,
            json!({"metadata": {"name": "app", "annotations": {
                    "cert-manager.io/cluster-issuer": "tenant-ca",
                    "cert-manager.io/duration": "2m", "cert-manager.io/renew-before": "90s"}},
                "spec": {"tls": [{"hosts": hosts, "secretName": "app-tls"}],
                    "rules": hosts.iter().map(|h| json!({"host": h, "http": {"paths": [
                        {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "app", "port": {"number": 80}}}}]}})).collect::<Vec<_>>()}}),
        )
        .await;
        let note = warning(&v, ns, "stray", "IngressHostDenied").await;
        assert!(note.contains("shop.someone-else.example.com"), "{note}");

        // cert-manager's own ingress-shim made the Certificate on the host.
        let certs = cert_manager_api(&h, Some(HOST_NS), "Certificate", "certificates");
        let cert = exists(&certs, &hn(ns, "app-tls")).await;
        let mut names: Vec<String> =
            serde_json::from_value(cert.data["spec"]["dnsNames"].clone()).unwrap();
        names.sort();
        assert_eq!(names, hosts, "the Certificate asks for the ingress hosts");
        assert_eq!(cert.data["spec"]["secretName"], hn(ns, "app-tls"));
        assert_eq!(cert.data["spec"]["issuerRef"]["name"], "tenant-ca");
        assert_eq!(cert.data["spec"]["issuerRef"]["kind"], "ClusterIssuer");

        // Its controller issued the Secret; it comes up under the tenant's name.
        let vsec: Api<Secret> = Api::namespaced(v.clone(), ns);
        let first = mirrored_cert(&vsec, "app-tls", |_| true).await;
        let crt = data(&first, "tls.crt");
        assert_eq!(dns_sans(&crt), hosts, "SANs are exactly the ingress hosts");
        assert!(
            signed_by(&crt, ca.as_bytes()),
            "the certificate chains to the CA"
        );
        assert_eq!(
            data(&first, "ca.crt"),
            ca.as_bytes(),
            "ca.crt is the issuer's CA"
        );
        assert!(!data(&first, "tls.key").is_empty());
        assert_eq!(first.type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(
            first.metadata.labels.as_ref().unwrap()["vcluster.dev/mirror"],
            "true"
        );
        assert_eq!(
            first.metadata.annotations.as_ref().unwrap()["vcluster.dev/mirror-of"],
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
        mirrored_cert(&vsec, "app-tls", |c| c != b"tampered").await;

        // cert-manager renews the short-lived certificate; the renewal is mirrored.
        let serial1 = serial(&crt);
        let renewed = mirrored_cert(&vsec, "app-tls", |c| serial(c) != serial1).await;
        let crt2 = data(&renewed, "tls.crt");
        assert_eq!(dns_sans(&crt2), hosts);
        assert!(signed_by(&crt2, ca.as_bytes()));

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
        // The refused ingress never reached the host, so no Certificate names
        // its host (after the renewal: cert-manager had every chance).
        let hing: Api<Ingress> = Api::namespaced(h.clone(), HOST_NS);
        assert!(hing.get_opt(&hn(ns, "stray")).await.unwrap().is_none());
        for c in certs.list(&ListParams::default()).await.unwrap() {
            let names = c.data["spec"]["dnsNames"].to_string();
            assert!(
                !names.contains("someone-else"),
                "a Certificate for a foreign host: {}",
                c.data
            );
        }

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

/// A tenant's own Certificate (applied with kubectl) naming the host
/// ClusterIssuer the vcluster may use is issued by the host's real
/// cert-manager; its status and Secret come up. One naming another
/// ClusterIssuer, a foreign host or a CA is refused with a Warning; one
/// naming the tenant's own Issuer stays inside.
fn tenant_certificates_are_issued_by_allowed_host_issuers(env: &Env) {
    block_on(async {
        let (v, h) = clients_of(env).await;
        let ca = ca_cluster_issuer(&h, "cert-ca").await;
        let ns = "tenant-certs";
        namespace(&v, ns).await;
        // The syncer gave the virtual API the kind, from the host's definition.
        let crds: Api<CustomResourceDefinition> = Api::all(v.clone());
        let crd = exists(&crds, "certificates.cert-manager.io").await;
        assert_eq!(crd.labels()["vcluster.dev/mirror"], "true");
        let hosts = ["api.net.apps.example.com", "grpc.net.apps.example.com"];
        let manifest = format!(
            "apiVersion: cert-manager.io/v1\nkind: Certificate\nmetadata:\n  name: api\n\
             spec:\n  secretName: api-tls\n  dnsNames: [{}]\n\
             \x20 issuerRef: {{name: cert-ca, kind: ClusterIssuer, group: cert-manager.io}}\n",
            hosts.join(", ")
        );
        let vk = env.stack.vcluster_kubeconfig();
        kubectl_ok(&vk, &["apply", "-n", ns, "-f", "-"], Some(&manifest));
        let vcerts = cert_manager_api(&v, Some(ns), "Certificate", "certificates");
        let refused = [
            (
                "internal",
                json!({"name": "tenant-ca", "kind": "ClusterIssuer"}),
                json!({}),
                "CertificateIssuerDenied",
                "tenant-ca",
            ),
            (
                "foreign",
                json!({"name": "cert-ca", "kind": "ClusterIssuer"}),
                json!({"dnsNames": ["shop.someone-else.example.com"]}),
                "CertificateHostDenied",
                "shop.someone-else.example.com",
            ),
            (
                "signer",
                json!({"name": "cert-ca", "kind": "ClusterIssuer"}),
                json!({"isCA": true}),
                "CertificateFieldDenied",
                "isCA",
            ),
            ("own", json!({"name": "mine"}), json!({}), "", ""),
        ];
        for (name, issuer, extra, _, _) in &refused {
            let mut spec = json!({"secretName": format!("{name}-tls"), "dnsNames": ["x.net.apps.example.com"], "issuerRef": issuer});
            for (k, val) in extra.as_object().unwrap() {
                spec[k] = val.clone();
            }
            create(
                &vcerts,
                json!({"apiVersion": "cert-manager.io/v1", "kind": "Certificate",
                "metadata": {"name": name}, "spec": spec}),
            )
            .await;
        }

        // On the host: the translated Certificate, issued by the real cert-manager.
        let hcerts = cert_manager_api(&h, Some(HOST_NS), "Certificate", "certificates");
        let hc = exists(&hcerts, &hn(ns, "api")).await;
        assert_eq!(hc.data["spec"]["secretName"], hn(ns, "api-tls"));
        assert_eq!(hc.data["spec"]["issuerRef"]["name"], "cert-ca");
        let vsec: Api<Secret> = Api::namespaced(v.clone(), ns);
        let mirror = mirrored_cert(&vsec, "api-tls", |_| true).await;
        let crt = data(&mirror, "tls.crt");
        assert_eq!(
            dns_sans(&crt),
            hosts,
            "SANs are exactly the Certificate's names"
        );
        assert!(signed_by(&crt, ca.as_bytes()), "it chains to the host CA");
        // Its status comes up: Ready, without the host's Secret names.
        let status = eventually("the virtual Certificate to be Ready", CERT_T, || async {
            let c = vcerts.get("api").await.map_err(|e| e.to_string())?;
            let ready = c.data["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            if ready {
                Ok(c.data["status"].clone())
            } else {
                Err(c.data["status"].to_string())
            }
        })
        .await;
        assert!(status.get("notAfter").is_some(), "{status}");
        assert!(status.get("nextPrivateKeySecretName").is_none(), "{status}");
        let ready = kubectl_ok(
            &vk,
            &[
                "get",
                "certificate",
                "api",
                "-n",
                ns,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ],
            None,
        );
        assert_eq!(ready.trim(), "True");

        // The refused ones get a Warning naming why, and nothing on the host.
        for (name, _, _, reason, names_it) in &refused {
            if reason.is_empty() {
                continue;
            }
            let note = warning(&v, ns, name, reason).await;
            assert!(note.contains(names_it), "{name}: {note}");
        }
        for (name, ..) in &refused {
            assert!(
                hcerts.get_opt(&hn(ns, name)).await.unwrap().is_none(),
                "{name} reached the host"
            );
        }
        // The one naming the tenant's own Issuer stays inside, without a word.
        let events: Api<Event> = Api::namespaced(v.clone(), ns);
        let about_own = events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("own"))
            .count();
        assert_eq!(about_own, 0, "no event about the tenant's own Certificate");

        // Deleted in the vcluster: gone from the host, the mirror removed.
        kubectl_ok(&vk, &["delete", "certificate", "api", "-n", ns], None);
        eventually("the host Certificate and the mirror to go", T, || async {
            let host = hcerts
                .get_opt(&hn(ns, "api"))
                .await
                .map_err(|e| e.to_string())?;
            let mirror = vsec.get_opt("api-tls").await.map_err(|e| e.to_string())?;
            match (host, mirror) {
                (None, None) => Ok(()),
                (host, mirror) => Err(format!(
                    "host {}, mirror {}",
                    host.is_some(),
                    mirror.is_some()
                )),
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

/// The ready-or-not addresses of host Endpoints `name`, once they exist.
async fn host_endpoint_ips(h: &kube::Client, name: String) -> BTreeSet<String> {
    let eps: Api<Endpoints> = Api::namespaced(h.clone(), HOST_NS);
    let e = exists(&eps, &name).await;
    e.subsets
        .iter()
        .flatten()
        .flat_map(|s| {
            s.addresses
                .iter()
                .flatten()
                .chain(s.not_ready_addresses.iter().flatten())
        })
        .map(|a| a.ip.clone())
        .collect()
}

/// Every address of host EndpointSlice `name`, once it exists.
async fn host_slice_ips(h: &kube::Client, name: String) -> BTreeSet<String> {
    let slices: Api<EndpointSlice> = Api::namespaced(h.clone(), HOST_NS);
    let s = exists(&slices, &name).await;
    s.endpoints
        .iter()
        .flatten()
        .flat_map(|e| e.addresses.clone())
        .collect()
}

/// Waits until `get` yields `want`.
async fn until_ips<F, Fut>(what: &str, want: &BTreeSet<String>, get: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = BTreeSet<String>>,
{
    eventually(what, T, || async {
        let got = get().await;
        if &got == want {
            Ok(())
        } else {
            Err(format!("{got:?}, want {want:?}"))
        }
    })
    .await;
}

fn tenant_endpoints_reach_only_own_pods_and_allowed_ranges(env: &Env) {
    block_on(async {
        let (v, h) = clients_of(env).await;
        let ns = "escape";
        namespace(&v, ns).await;
        // One of this vcluster's pods, and another team's pod on the host.
        let vpods: Api<Pod> = Api::namespaced(v.clone(), ns);
        create(
            &vpods,
            json!({"metadata": {"name": "own", "labels": {"app": "own"}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
        )
        .await;
        let own_ip = pod_ips(&v, ns, "own", 1).await.into_iter().next().unwrap();
        let hpods: Api<Pod> = Api::namespaced(h.clone(), OTHER_NS);
        create(
            &hpods,
            json!({"metadata": {"name": "their-db", "labels": {"app": "their-db"}},
                "spec": {"containers": [{"name": "c", "image": "postgres"}]}}),
        )
        .await;
        let foreign_ip = running(&hpods, "their-db", 1, T).await[0]
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap();
        let api_ip = cluster_ip(
            &Api::<Service>::namespaced(h.clone(), "default")
                .get("kubernetes")
                .await
                .unwrap(),
        );
        let vsvc: Api<Service> = Api::namespaced(v.clone(), ns);
        for name in ["escape", "sliced", "named"] {
            create(
                &vsvc,
                json!({"metadata": {"name": name}, "spec": {"ports": [{"name": "http", "port": 80}]}}),
            )
            .await;
        }
        // Endpoints naming the host API server, another team's pod, an
        // address outside every allowed range, the metadata address, one
        // allowed range and the vcluster's own pod.
        create(
            &Api::<Endpoints>::namespaced(v.clone(), ns),
            json!({"metadata": {"name": "escape"},
                "subsets": [{"addresses": [{"ip": own_ip}, {"ip": api_ip}, {"ip": foreign_ip},
                                           {"ip": "198.51.100.7"}, {"ip": "192.0.2.30"}],
                             "ports": [{"name": "http", "port": 80}]}]}),
        )
        .await;
        let slices: Api<EndpointSlice> = Api::namespaced(v.clone(), ns);
        create(
            &slices,
            json!({"metadata": {"name": "sliced-1", "labels": {"kubernetes.io/service-name": "sliced"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [own_ip]}, {"addresses": [api_ip]}, {"addresses": [foreign_ip]}],
                "ports": [{"name": "http", "port": 80}]}),
        )
        .await;
        create(
            &slices,
            json!({"metadata": {"name": "named-1", "labels": {"kubernetes.io/service-name": "named"}},
                "addressType": "FQDN",
                "endpoints": [{"addresses": ["kubernetes.default.svc.cluster.local"]}],
                "ports": [{"name": "http", "port": 443}]}),
        )
        .await;

        let want: BTreeSet<String> = [own_ip.clone(), "192.0.2.30".into()].into();
        until_ips(
            "host Endpoints with only the allowed addresses",
            &want,
            || host_endpoint_ips(&h, hn(ns, "escape")),
        )
        .await;
        // The first reconcile may have run before the pod's IP was known.
        let mine = format!("{own_ip} (");
        let note = warning_where(&v, ns, "escape", "EndpointAddressRefused", |n| {
            !n.contains(&mine)
        })
        .await;
        for (addr, why) in [
            (api_ip.as_str(), "the host's service range"),
            (foreign_ip.as_str(), "not a pod of this virtual cluster"),
            ("198.51.100.7", "not a pod of this virtual cluster"),
        ] {
            assert!(
                note.contains(&format!("{addr} (")),
                "{addr} not named: {note}"
            );
            assert!(note.contains(why), "{why}: {note}");
        }
        until_ips(
            "host slice with only the own pod",
            &BTreeSet::from([own_ip.clone()]),
            || host_slice_ips(&h, hn(ns, "sliced-1")),
        )
        .await;
        let note = warning_where(&v, ns, "sliced-1", "EndpointAddressRefused", |n| {
            !n.contains(&mine)
        })
        .await;
        assert!(
            note.contains(&api_ip) && note.contains(&foreign_ip),
            "{note}"
        );
        let note = warning(&v, ns, "named-1", "EndpointAddressRefused").await;
        assert!(note.contains("FQDN"), "{note}");
        assert!(
            Api::<EndpointSlice>::namespaced(h.clone(), HOST_NS)
                .get_opt(&hn(ns, "named-1"))
                .await
                .unwrap()
                .is_none(),
            "an FQDN slice reached the host"
        );

        // The pod goes: its address is no longer the vcluster's and leaves
        // the host copies (the syncer re-evaluates on pod IP changes).
        vpods
            .delete("own", &DeleteParams::default().grace_period(0))
            .await
            .unwrap();
        until_ips(
            "the gone pod's address to leave the host Endpoints",
            &BTreeSet::from(["192.0.2.30".to_owned()]),
            || host_endpoint_ips(&h, hn(ns, "escape")),
        )
        .await;
        until_ips(
            "the gone pod's address to leave the host slice",
            &BTreeSet::new(),
            || host_slice_ips(&h, hn(ns, "sliced-1")),
        )
        .await;
        hpods
            .delete("their-db", &DeleteParams::default().grace_period(0))
            .await
            .unwrap();
    });
}

fn ingress(
    host: &str,
    tls_host: Option<&str>,
    annotations: serde_json::Value,
) -> serde_json::Value {
    let mut spec = json!({"rules": [{"host": host, "http": {"paths": [
        {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]});
    if let Some(t) = tls_host {
        spec["tls"] = json!([{"hosts": [t], "secretName": "web-tls"}]);
    }
    json!({"metadata": {"annotations": annotations}, "spec": spec})
}

/// Creates ingress `name` in `api` from an [`ingress`] body.
async fn create_ingress(api: &Api<Ingress>, name: &str, mut body: serde_json::Value) -> Ingress {
    body["metadata"]["name"] = json!(name);
    create(api, body).await
}

async fn absent_for_a_while(api: &Api<Ingress>, name: &str) {
    // The refusal's event is the sign it was decided; the host must not have it.
    assert!(
        api.get_opt(name).await.unwrap().is_none(),
        "{name} reached the host"
    );
}

fn ingress_hosts_served_elsewhere_are_refused(env: &Env) {
    block_on(async {
        let (v, h) = clients_of(env).await;
        let ns = "hosts";
        namespace(&v, ns).await;
        let other: Api<Ingress> = Api::namespaced(h.clone(), OTHER_NS);
        let hing: Api<Ingress> = Api::namespaced(h.clone(), HOST_NS);
        let ing: Api<Ingress> = Api::namespaced(v.clone(), ns);
        // Another team serves these first.
        create_ingress(
            &other,
            "taken",
            ingress("taken.net.apps.example.com", None, json!({})),
        )
        .await;
        create_ingress(
            &other,
            "wild",
            ingress("*.wild.net.apps.example.com", None, json!({})),
        )
        .await;

        create_ingress(
            &ing,
            "grab",
            ingress("taken.net.apps.example.com", None, json!({})),
        )
        .await;
        let note = warning(&v, ns, "grab", "IngressHostConflict").await;
        assert!(
            note.contains("taken.net.apps.example.com is already served"),
            "{note}"
        );
        assert!(
            !note.contains(OTHER_NS),
            "another team's namespace is not told: {note}"
        );
        // Only a TLS host (what cert-manager would certify) overlaps the wildcard.
        create_ingress(
            &ing,
            "tls-grab",
            ingress(
                "mine.net.apps.example.com",
                Some("pay.wild.net.apps.example.com"),
                json!({"cert-manager.io/cluster-issuer": "letsencrypt"}),
            ),
        )
        .await;
        let note = warning(&v, ns, "tls-grab", "IngressHostConflict").await;
        assert!(
            note.contains("pay.wild.net.apps.example.com overlaps *.wild.net.apps.example.com"),
            "{note}"
        );
        for name in ["grab", "tls-grab"] {
            absent_for_a_while(&hing, &hn(ns, name)).await;
        }
        // A host of its own goes down.
        create_ingress(
            &ing,
            "own",
            ingress("own.net.apps.example.com", None, json!({})),
        )
        .await;
        exists(&hing, &hn(ns, "own")).await;
        // The other team's ingress goes: the refused one is synced now.
        other
            .delete("taken", &DeleteParams::default())
            .await
            .unwrap();
        exists(&hing, &hn(ns, "grab")).await;
        other
            .delete("wild", &DeleteParams::default())
            .await
            .unwrap();
    });
}

/// Lines of the syncer log reporting a later foreign claim on `host`.
fn kept_reports(env: &Env, host: &str) -> usize {
    syncer_log(env)
        .lines()
        .filter(|l| l.contains("claims a host this vcluster serves") && l.contains(host))
        .count()
}

fn ingress_hosts_stay_with_the_first_across_a_restart(env: &Env) {
    block_on(async {
        let (v, h) = clients_of(env).await;
        let ns = "first";
        namespace(&v, ns).await;
        let host = "first.net.apps.example.com";
        let ing: Api<Ingress> = Api::namespaced(v.clone(), ns);
        let hing: Api<Ingress> = Api::namespaced(h.clone(), HOST_NS);
        create_ingress(&ing, "first", ingress(host, Some(host), json!({}))).await;
        let before = exists(&hing, &hn(ns, "first")).await;
        // Later, another team claims the same host: this vcluster keeps it,
        // and the syncer reports the later one.
        let other: Api<Ingress> = Api::namespaced(h.clone(), OTHER_NS);
        create_ingress(&other, "late", ingress(host, None, json!({}))).await;
        eventually_sync("the later claim reported", T, || {
            if kept_reports(env, host) > 0 {
                Ok(())
            } else {
                Err("not yet".into())
            }
        });
        // After a restart the new process decides the same.
        let seen = kept_reports(env, host);
        restart_syncer(env, true);
        eventually_sync("the restarted syncer to report the later claim", T, || {
            if kept_reports(env, host) > seen {
                Ok(())
            } else {
                Err("not yet".into())
            }
        });
        let after = hing.get(&hn(ns, "first")).await.unwrap();
        assert_eq!(
            after.metadata.uid, before.metadata.uid,
            "the first one's copy stayed"
        );
        other
            .delete("late", &DeleteParams::default())
            .await
            .unwrap();
    });
}

fn service_types_outside_the_policy_stay_off_the_host(env: &Env) {
    ensure_isolated(env);
    block_on(async {
        let (v, h) = clients_of(env).await;
        let ns = "types";
        namespace(&v, ns).await;
        let vapi: Api<Service> = Api::namespaced(v.clone(), ns);
        let hapi: Api<Service> = Api::namespaced(h.clone(), HOST_NS);
        let svc = |name: &str, t: &str| {
            json!({"metadata": {"name": name},
                "spec": {"type": t, "selector": {"app": name}, "ports": [{"port": 80}]}})
        };
        for (name, t) in [
            ("lb", "LoadBalancer"),
            ("np", "NodePort"),
            ("plain", "ClusterIP"),
        ] {
            create(&vapi, svc(name, t)).await;
        }
        create(
            &vapi,
            json!({"metadata": {"name": "alias"}, "spec": {"type": "ExternalName", "externalName": "db.example.org"}}),
        )
        .await;
        for (name, t) in [("lb", "LoadBalancer"), ("np", "NodePort")] {
            let note = warning(&v, ns, name, "ServiceTypeNotAllowed").await;
            assert!(
                note.contains(&format!("Service type {t} is not allowed"))
                    && note.contains("allowed: ClusterIP, ExternalName"),
                "{note}"
            );
        }
        exists(&hapi, &hn(ns, "plain")).await;
        exists(&hapi, &hn(ns, "alias")).await;
        for name in ["lb", "np"] {
            assert!(
                hapi.get_opt(&hn(ns, name)).await.unwrap().is_none(),
                "{name} reached the host"
            );
        }
        // One that becomes NodePort leaves the host.
        vapi.patch(
            "plain",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"type": "NodePort"}})),
        )
        .await
        .unwrap();
        eventually(
            "the Service turned NodePort to leave the host",
            T,
            || async {
                match hapi.get_opt(&hn(ns, "plain")).await {
                    Ok(None) => Ok(()),
                    other => Err(format!("{:?}", other.map(|o| o.is_some()))),
                }
            },
        )
        .await;
        // No host Service of this vcluster is a NodePort or LoadBalancer.
        let all = hapi
            .list(&ListParams::default().labels(&format!("vcluster.dev/owner={VC}")))
            .await
            .unwrap();
        for s in &all.items {
            let t = s
                .spec
                .as_ref()
                .and_then(|s| s.type_.clone())
                .unwrap_or_default();
            assert!(
                t == "ClusterIP" || t == "ExternalName" || t.is_empty(),
                "{} is {t}",
                s.metadata.name.clone().unwrap_or_default()
            );
        }
    });
}

/// A Service that loses its selector: the Endpoints the host's endpoints
/// controller derived from its host copy (our labels copied, no source
/// markers) are taken over by the tenant's own, not reported as a name
/// collision every 30 s.
fn a_service_losing_its_selector_gets_the_tenants_endpoints(env: &Env) {
    block_on(async {
        let (v, h) = clients_of(env).await;
        let ns = "unselect";
        namespace(&v, ns).await;
        create(
            &Api::<Pod>::namespaced(v.clone(), ns),
            json!({"metadata": {"name": "web", "labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
        )
        .await;
        let pod_ip = pod_ips(&v, ns, "web", 1).await;
        let vsvc: Api<Service> = Api::namespaced(v.clone(), ns);
        create(
            &vsvc,
            json!({"metadata": {"name": "web"},
                "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}),
        )
        .await;
        // The host derives Endpoints for the host copy of the Service.
        until_ips("host-derived Endpoints", &pod_ip, || {
            host_endpoint_ips(&h, hn(ns, "web"))
        })
        .await;
        vsvc.patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"selector": null}})),
        )
        .await
        .unwrap();
        // Now the tenant's to give: it names an address of the allowed range.
        let veps: Api<Endpoints> = Api::namespaced(v.clone(), ns);
        let subsets = json!([{"addresses": [{"ip": "192.0.2.40"}], "ports": [{"port": 80}]}]);
        eventually("the tenant's Endpoints to be written", T, || async {
            let r = match veps.get_opt("web").await.map_err(|e| e.to_string())? {
                Some(_) => veps
                    .patch(
                        "web",
                        &PatchParams::default(),
                        &Patch::Merge(json!({"subsets": subsets})),
                    )
                    .await
                    .map(drop),
                None => veps
                    .create(
                        &PostParams::default(),
                        &serde_json::from_value(
                            json!({"metadata": {"name": "web"}, "subsets": subsets}),
                        )
                        .unwrap(),
                    )
                    .await
                    .map(drop),
            };
            r.map_err(|e| e.to_string())
        })
        .await;
        let want: BTreeSet<String> = ["192.0.2.40".to_owned()].into();
        until_ips("the tenant's Endpoints on the host", &want, || {
            host_endpoint_ips(&h, hn(ns, "web"))
        })
        .await;
        let host = Api::<Endpoints>::namespaced(h.clone(), HOST_NS)
            .get(&hn(ns, "web"))
            .await
            .unwrap();
        assert!(
            host.metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key("vcluster.dev/uid")),
            "{:?}",
            host.metadata.annotations
        );
        let events: Api<Event> = Api::namespaced(v.clone(), ns);
        let collisions: Vec<_> = events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("SyncNameCollision"))
            .filter_map(|e| e.note)
            .collect();
        assert!(collisions.is_empty(), "{collisions:?}");
    });
}

const TESTS: &[Test<Env>] = &[
    (
        "cluster_ip_and_node_port_parity",
        cluster_ip_and_node_port_parity,
    ),
    (
        "a_replaced_selector_less_service_keeps_its_endpoints",
        a_replaced_selector_less_service_keeps_its_endpoints,
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
        "tenant_certificates_are_issued_by_allowed_host_issuers",
        tenant_certificates_are_issued_by_allowed_host_issuers,
    ),
    (
        "virtual_kubernetes_service_points_at_the_vcluster",
        virtual_kubernetes_service_points_at_the_vcluster,
    ),
    ("service_cidr_is_discovered", service_cidr_is_discovered),
    (
        "tenant_endpoints_reach_only_own_pods_and_allowed_ranges",
        tenant_endpoints_reach_only_own_pods_and_allowed_ranges,
    ),
    (
        "ingress_hosts_served_elsewhere_are_refused",
        ingress_hosts_served_elsewhere_are_refused,
    ),
    (
        "a_service_losing_its_selector_gets_the_tenants_endpoints",
        a_service_losing_its_selector_gets_the_tenants_endpoints,
    ),
];

/// Run after [`TESTS`], in this order (the first restarts the syncer).
const ISOLATED: &[Test<Env>] = &[
    (
        "ingress_hosts_stay_with_the_first_across_a_restart",
        ingress_hosts_stay_with_the_first_across_a_restart,
    ),
    (
        "service_types_outside_the_policy_stay_off_the_host",
        service_types_outside_the_policy_stay_off_the_host,
    ),
];

fn main() {
    let args = Arguments::from_args();
    list_or_check(&args, &[TESTS, ISOLATED]);
    let stack = DevStack::up(&["--no-syncer", "--nodes", "2"]);
    let hk = stack.host_kubeconfig();
    for ns in [HOST_NS, OTHER_NS] {
        kubectl_ok(&hk, &["create", "namespace", ns], None);
    }
    api_service(&hk, VC, HOST_NS);
    // The host's cert-manager, real: its CRDs and controllers (make shared-bins).
    let cert_manager = start_cert_manager(&stack);
    let syncer = SyncerProcess::start_with(&stack, VC, HOST_NS, SYNCER_ARGS);
    let log = syncer.log.clone();
    let env = Arc::new(Env {
        stack,
        syncer: std::sync::Mutex::new((syncer, false)),
        cert_manager,
    });
    // The isolated phase restarts the syncer: after every other test, one at a time.
    let failed = run_groups(&args, &env, &[(TESTS, None), (ISOLATED, Some(1))]);
    println!(
        "cert-manager controller: RSS {} after the suite",
        env.cert_manager.rss()
    );
    finish(env, failed, Some(log));
}
