//! End-to-end tests of sleep mode (KWOK lane): a syncer with `--sleep-after`
//! and its front door; the tenant works through the front door (what counts
//! as activity), the tests watch through the direct admin credential and
//! the host (what does not). Idle past the threshold, the host holds none of
//! the tenant's pods while every virtual object stays as written; an
//! ignored user agent and the opt-out header do not wake it; a `kubectl get`
//! does, and the same pods come back Running; `vcluster sleep|wake|list`;
//! a syncer killed with SIGKILL while asleep and while waking converges; a
//! tenant ingress points at the waking page while asleep, and a visit wakes it;
//! so does a CronJob firing (`--sleep-wake-on-cronjobs`); a sleep in the middle
//! of a burst of creations holds every pod; StatefulSet and Job pods come
//! back as themselves, and a pod deleted while asleep is not created again.
//! `VCLUSTER_E2E_WAKE_PODS=N` sets the size of the wake-latency run (100).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, ListParams};
use libtest_mimic::Arguments;
use serde_json::json;
use vcluster::local::KWOK_COMPLETE_DELAY_ANNOTATION;
use vcluster::sleep::{SLEEPING_CONDITION, SLEEPING_REASON, STAY_AWAKE_LABEL};
use vcluster::translate::markers::{NAMESPACE_LABEL, OWNER_LABEL};

const VC: &str = "sleepy";
const HOST_NS: &str = "team-sleepy";
const NS: &str = "shop";
/// A namespace labelled to stay awake.
const OPS: &str = "ops";
const SLEEP_AFTER: Duration = Duration::from_secs(20);
const T: Duration = Duration::from_secs(120);
const IGNORED_AGENT: &str = "sleepy-bot/1.0";

struct Env {
    synced: SyncedEnv,
    /// The tenant's kubeconfig: through the front door (its requests count).
    front_kc: PathBuf,
    /// The syncer's waking page, on 127.0.0.1.
    wake_port: u16,
}

/// Clients of one test's runtime (a client's worker lives on the runtime
/// that made it).
struct Clients {
    /// The tenant through the front door (its requests count).
    front: kube::Client,
    /// The virtual API directly (the syncer's credential: never counted).
    virt: kube::Client,
    host: kube::Client,
}

impl Env {
    async fn clients(&self) -> Clients {
        let (virt, host) = clients(&self.synced.stack).await;
        Clients {
            front: client(&self.front_kc).await,
            virt,
            host,
        }
    }

    fn metrics(&self) -> String {
        syncer_metrics(self.synced.syncer.lock().unwrap().as_ref().unwrap().port)
    }

    fn metric(&self, name: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name}"))
    }

    fn host_kc(&self) -> String {
        self.synced
            .stack
            .host_kubeconfig()
            .to_str()
            .unwrap()
            .to_owned()
    }

    /// `vcluster ARGS... -n HOST_NS --kubeconfig HOST`; must succeed; stdout.
    fn vcluster_ok(&self, args: &[&str]) -> String {
        let host = self.host_kc();
        let mut a = args.to_vec();
        a.extend(["-n", HOST_NS, "--kubeconfig", &host]);
        let out = vcluster(&a);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "vcluster {args:?}: {stderr}");
        stdout
    }

    /// The SLEEP column of `vcluster list`.
    fn listed_state(&self) -> String {
        let out = self.vcluster_ok(&["list"]);
        let row = out
            .lines()
            .find(|l| l.starts_with(VC))
            .unwrap_or_else(|| panic!("{out}"));
        row.split_whitespace().nth(3).unwrap().to_owned()
    }
}

/// Host pods of the tenant's workloads (namespaces `shop` and `ops`; not
/// terminating): what another test left in a namespace of its own is not
/// counted.
async fn host_pods(c: &Clients) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(c.host.clone(), HOST_NS);
    let lp = ListParams::default().labels(&format!(
        "{OWNER_LABEL}={VC},{NAMESPACE_LABEL} in ({NS},{OPS})"
    ));
    api.list(&lp)
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

/// Waits until the host holds none of the tenant's pods but the one that
/// stays awake (terminating ones included: they are gone).
async fn host_asleep(c: &Clients, timeout: Duration) {
    let api: Api<Pod> = Api::namespaced(c.host.clone(), HOST_NS);
    let lp = ListParams::default().labels(&format!("vcluster.dev/owner={VC}"));
    eventually("only the awake pod on the host", timeout, || async {
        let names: Vec<String> = api
            .list(&lp)
            .await
            .map_err(|e| e.to_string())?
            .items
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        if names.len() == 1 && names[0].starts_with("keeper-x-ops") {
            Ok(())
        } else {
            Err(format!("{names:?}"))
        }
    })
    .await;
}

fn ready(p: &Pod) -> Option<&k8s_openapi::api::core::v1::PodCondition> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// Waits until `n` virtual pods of `ns` are Running and Ready, asking with
/// `client`; returns them by name.
async fn virtual_ready(client: &kube::Client, ns: &str, n: usize) -> BTreeMap<String, Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let what = format!("{n} ready pods in {ns}");
    exactly(&what, &api, &ListParams::default(), n, within(n), |p| {
        phase(p) == "Running" && ready(p).is_some_and(|c| c.status == "True")
    })
    .await
    .into_iter()
    .map(|p| (p.metadata.name.clone().unwrap(), p))
    .collect()
}

/// Waits until `n` host pods of this vcluster are Running.
async fn host_running(c: &Clients, n: usize) {
    eventually(&format!("{n} running host pods"), within(n), || async {
        let running = host_pods(c)
            .await
            .iter()
            .filter(|p| phase(p) == "Running")
            .count();
        if running == n {
            Ok(())
        } else {
            Err(format!("{running} of {n}"))
        }
    })
    .await;
}

/// Each pod's uid, by name.
fn uids(pods: &BTreeMap<String, Pod>) -> BTreeMap<String, String> {
    pods.iter()
        .map(|(n, p)| (n.clone(), p.metadata.uid.clone().unwrap()))
        .collect()
}

/// What must not change while asleep: each pod's uid and spec.
fn identities(pods: &BTreeMap<String, Pod>) -> BTreeMap<String, (String, String)> {
    pods.iter()
        .map(|(n, p)| {
            let spec = p.spec.clone().unwrap();
            (
                n.clone(),
                (
                    p.metadata.uid.clone().unwrap(),
                    serde_json::to_string(&spec).unwrap(),
                ),
            )
        })
        .collect()
}

async fn virtual_pods(client: &kube::Client, ns: &str) -> BTreeMap<String, Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|p| (p.metadata.name.clone().unwrap(), p))
        .collect()
}

fn idle_past_the_threshold_frees_the_host_and_leaves_the_virtual_objects_alone(env: &Env) {
    block_on(async {
        let c = env.clients().await;
        let before = virtual_ready(&c.virt, NS, 4).await;
        let deploy: Api<Deployment> = Api::namespaced(c.virt.clone(), NS);
        let d0 = deploy.get("web").await.unwrap();
        // Nothing counts from here on: the cluster falls asleep by itself.
        host_asleep(&c, SLEEP_AFTER + T).await;
        let after = virtual_pods(&c.virt, NS).await;
        assert_eq!(
            identities(&after),
            identities(&before),
            "virtual pods unchanged"
        );
        for (name, p) in &after {
            let r = ready(p).unwrap();
            assert_eq!(
                (r.status.as_str(), r.reason.as_deref()),
                ("False", Some(SLEEPING_REASON)),
                "{name}"
            );
            let conds = p.status.as_ref().unwrap().conditions.as_ref().unwrap();
            assert!(
                conds.iter().any(|c| c.type_ == SLEEPING_CONDITION),
                "{name}"
            );
        }
        let d1 = deploy.get("web").await.unwrap();
        assert_eq!(d1.spec.as_ref().unwrap().replicas, Some(3));
        assert_eq!(
            d1.metadata.generation, d0.metadata.generation,
            "no replica edits"
        );
        // What does not run stays on the host.
        let cms: Api<ConfigMap> = Api::namespaced(c.host.clone(), HOST_NS);
        let svcs: Api<Service> = Api::namespaced(c.host.clone(), HOST_NS);
        let host_name = |n: &str| env.synced.host_name(NS, n);
        assert!(cms.get_opt(&host_name("settings")).await.unwrap().is_some());
        assert!(svcs.get_opt(&host_name("web")).await.unwrap().is_some());
        // The pod of the namespace labelled to stay awake still runs.
        let keeper = virtual_ready(&c.virt, OPS, 1).await;
        assert!(keeper.contains_key("keeper"));
        event_with_reason(&c.virt, "default", "Sleeping").await;
        assert_eq!(env.metric("vcluster_syncer_sleeping"), 1.0);
        assert_eq!(env.listed_state(), "Sleeping");
    });
}

fn an_ignored_user_agent_or_the_opt_out_header_does_not_wake_it(env: &Env) {
    block_on(async {
        let c = env.clients().await;
        let last = env.metric("vcluster_syncer_last_activity_timestamp_seconds");
        for (header, value) in [
            ("user-agent", IGNORED_AGENT),
            ("x-vcluster-no-activity", "true"),
        ] {
            let req = http::Request::get(format!("/api/v1/namespaces/{NS}/pods"))
                .header(header, value)
                .body(Vec::new())
                .unwrap();
            let body = c.front.request_text(req).await.unwrap();
            assert!(body.contains("\"PodList\""), "{body}");
        }
        // Classified as the request is served: nothing was recorded.
        assert_eq!(
            env.metric("vcluster_syncer_last_activity_timestamp_seconds"),
            last
        );
        assert_eq!(env.metric("vcluster_syncer_sleeping"), 1.0);
        assert_eq!(host_pods(&c).await.len(), 1);
    });
}

fn a_kubectl_get_wakes_it_and_the_same_pods_come_back_running(env: &Env) {
    block_on(async {
        let c = env.clients().await;
        let before = virtual_pods(&c.virt, NS).await;
        let started = Instant::now();
        let out = kubectl_ok(&env.front_kc, &["get", "pods", "-n", NS], None);
        let answered = started.elapsed();
        assert!(out.contains("web-"), "{out}");
        // Polled through the front door, as a person waiting would.
        let back = virtual_ready(&c.front, NS, 4).await;
        host_running(&c, 5).await;
        println!(
            "wake: kubectl answered in {:.2} s; 4 pods Running and Ready again {:.2} s after it was sent",
            answered.as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
        assert_eq!(
            uids(&back),
            uids(&before),
            "the same virtual pods, not new ones"
        );
        event_with_reason(&c.virt, "default", "Awake").await;
        assert_eq!(env.metric("vcluster_syncer_sleeping"), 0.0);
        assert!(
            env.metrics()
                .contains("vcluster_syncer_wakes_total{trigger=\"request\"} 1")
        );
        assert_eq!(env.listed_state(), "Awake");
    });
}

fn a_syncer_killed_while_asleep_or_waking_converges(env: &Env) {
    block_on(async {
        let c = env.clients().await;
        let out = env.vcluster_ok(&["sleep", VC]);
        assert!(out.contains("sleeps"), "{out}");
        host_asleep(&c, T).await;
        env.synced.kill_syncer();
        env.synced.restart_syncer();
        // Ready means every pod was reconciled once: none came back.
        assert_eq!(host_pods(&c).await.len(), 1);
        assert_eq!(virtual_pods(&c.virt, NS).await.len(), 4);
        assert_eq!(env.listed_state(), "Sleeping");
        env.vcluster_ok(&["wake", VC]);
        // Killed as the wake begins.
        env.synced.kill_syncer();
        env.synced.restart_syncer();
        virtual_ready(&c.front, NS, 4).await;
        host_running(&c, 5).await;
        assert_eq!(env.listed_state(), "Awake");
    });
}

/// The status line, headers (lower-cased names) and body of a plain
/// `GET path` to 127.0.0.1:`port`, as an ingress controller would send it.
fn http_get(port: u16, path: &str) -> (String, BTreeMap<String, String>, String) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: shop.example.com\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap().to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

/// While asleep the tenant's host ingress points at the syncer's waking
/// page; a visit gets `503` with `Retry-After` and wakes the cluster; the
/// backends come back.
fn an_ingress_visit_while_asleep_gets_the_waking_page_and_wakes_it(env: &Env) {
    block_on(async {
        let c = env.clients().await;
        let hing: Api<Ingress> = Api::namespaced(c.host.clone(), HOST_NS);
        let vc = vcluster::translate::VclusterName::new(VC).unwrap();
        let name = vcluster::translate::host_name(&vc, NS, "web");
        let web = (vcluster::translate::host_name(&vc, NS, "web"), Some(80));
        let page = (VC.to_owned(), Some(i32::from(env.wake_port)));
        let backend_is = |want: (String, Option<i32>)| {
            let (hing, name) = (hing.clone(), name.clone());
            async move {
                eventually(
                    &format!("the host ingress backend to be {want:?}"),
                    T,
                    || async {
                        let i = hing.get(&name).await.map_err(|e| e.to_string())?;
                        let spec = i.spec.clone().unwrap_or_default();
                        let tls = spec.tls.clone();
                        let got: Vec<_> = spec
                            .rules
                            .into_iter()
                            .flatten()
                            .flat_map(|r| r.http.map(|h| h.paths).unwrap_or_default())
                            .filter_map(|p| p.backend.service)
                            .map(|s| (s.name, s.port.and_then(|p| p.number)))
                            .collect();
                        if !got.is_empty() && got.iter().all(|g| *g == want) {
                            Ok(tls)
                        } else {
                            Err(format!("{got:?}"))
                        }
                    },
                )
                .await
            }
        };
        let tls_awake = backend_is(web.clone()).await;
        env.vcluster_ok(&["sleep", VC]);
        host_asleep(&c, T).await;
        let tls_asleep = backend_is(page).await;
        assert_eq!(tls_asleep, tls_awake, "hosts and TLS stay as they are");
        let wakes = |m: &str| {
            m.lines()
                .find_map(|l| l.strip_prefix("vcluster_syncer_wakes_total{trigger=\"request\"} "))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let before = wakes(&env.metrics());
        let (status, headers, body) = http_get(env.wake_port, "/cart?item=1");
        assert!(status.contains(" 503 "), "{status}");
        assert_eq!(headers.get("retry-after").map(String::as_str), Some("5"));
        assert_eq!(
            headers.get("cache-control").map(String::as_str),
            Some("no-store")
        );
        assert!(body.contains("Waking up"), "{body}");
        // The visit wakes it. The state has whole seconds, so a visit in the
        // very second the cluster fell asleep counts as before it: the
        // visitor retries, as Retry-After asks.
        eventually("a visit to wake it", T, || async {
            if wakes(&env.metrics()) > before {
                return Ok(());
            }
            let (status, _, _) = http_get(env.wake_port, "/cart?item=1");
            Err(status)
        })
        .await;
        // The pods come back (watched without counting), and so do the backends.
        host_running(&c, 5).await;
        backend_is(web).await;
        virtual_ready(&c.virt, NS, 4).await;
        assert_eq!(wakes(&env.metrics()), before + 1.0, "woken by a request");
        assert_eq!(env.listed_state(), "Awake");
    });
}

/// `vcluster sleep` in the middle of a burst of pod creations: every pod,
/// created before or after the decision, ends up held (none left on the
/// host), keeps its identity, and comes back on wake.
fn a_sleep_during_a_burst_of_creations_holds_every_pod(env: &Env) {
    block_on(async {
        let c = env.clients().await;
        let ns = "burst";
        namespace(&c.virt, ns).await;
        let pods: Api<Pod> = Api::namespaced(c.virt.clone(), ns);
        let pod = |i: usize| {
            json!({"metadata": {"name": format!("b-{i}")},
                "spec": {"containers": [{"name": "app", "image": "nginx"}]}})
        };
        for i in 0..15 {
            create(&pods, pod(i)).await;
        }
        env.vcluster_ok(&["sleep", VC]);
        for i in 15..30 {
            create(&pods, pod(i)).await;
        }
        host_asleep(&c, T).await;
        let held = virtual_pods(&c.virt, ns).await;
        assert_eq!(held.len(), 30, "every pod stays virtual");
        env.vcluster_ok(&["wake", VC]);
        let back = virtual_ready(&c.virt, ns, 30).await;
        // The same pods (uids); those created while asleep get their node
        // binding only now.
        assert_eq!(uids(&back), uids(&held), "the same pods came back");
        kubectl_ok(
            &env.synced.stack.vcluster_kubeconfig(),
            &["delete", "namespace", ns],
            None,
        );
        virtual_ready(&c.virt, NS, 4).await;
    });
}

/// With `--sleep-wake-on-cronjobs`, a CronJob firing while the cluster
/// sleeps wakes it (the Job's pod then runs on the host).
fn a_cronjob_firing_while_asleep_wakes_it(env: &Env) {
    block_on(async {
        let c = env.clients().await;
        env.vcluster_ok(&["sleep", VC]);
        host_asleep(&c, T).await;
        let wakes = |m: &str| {
            m.lines()
                .find_map(|l| l.strip_prefix("vcluster_syncer_wakes_total{trigger=\"cronjob\"} "))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        assert_eq!(wakes(&env.metrics()), 0.0);
        // Written with the syncer's own credential: not activity. In a
        // namespace of its own, so its Job's pods are not counted below.
        namespace(&c.virt, "batch").await;
        let cron: Api<CronJob> = Api::namespaced(c.virt.clone(), "batch");
        create(
            &cron,
            json!({"metadata": {"name": "report"}, "spec": {"schedule": "* * * * *",
                "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never",
                    "containers": [{"name": "report", "image": "busybox"}]}}}}}}),
        )
        .await;
        // It fires within a minute; the cluster wakes and its pods come back.
        eventually(
            "a wake by the CronJob",
            Duration::from_secs(150),
            || async {
                let n = wakes(&env.metrics());
                if n >= 1.0 {
                    Ok(())
                } else {
                    Err(format!("{n}"))
                }
            },
        )
        .await;
        virtual_ready(&c.virt, NS, 4).await;
        assert_eq!(env.listed_state(), "Awake");
        kubectl_ok(
            &env.synced.stack.vcluster_kubeconfig(),
            &["delete", "namespace", "batch"],
            None,
        );
    });
}

/// The size of the wake-latency run: `VCLUSTER_E2E_WAKE_PODS` (100).
fn wake_pods() -> usize {
    std::env::var("VCLUSTER_E2E_WAKE_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

/// How long `n` pods may take to become Running or Ready.
fn within(n: usize) -> Duration {
    T.max(Duration::from_millis(300 * n as u64))
}

fn wake_latency_of_many_pods(env: &Env) {
    let n = wake_pods();
    block_on(async {
        let c = env.clients().await;
        let replicas = n.to_string();
        kubectl_ok(
            &env.front_kc,
            &[
                "scale",
                "deployment",
                "web",
                "-n",
                NS,
                "--replicas",
                &replicas,
            ],
            None,
        );
        virtual_ready(&c.front, NS, n + 1).await;
        env.vcluster_ok(&["sleep", VC]);
        host_asleep(&c, T).await;
        let started = Instant::now();
        kubectl_ok(&env.front_kc, &["get", "pods", "-n", NS], None);
        // The person who woke it keeps working (a request every 5 s): a
        // wake of many pods outlasts the suite's 20 s idle threshold, and
        // an idle cluster would fall asleep again before they are back.
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c.front.clone());
        let keep_awake = async {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let _ = namespaces.get("default").await;
            }
        };
        tokio::select! {
            () = host_running(&c, n + 2) => {}
            () = keep_awake => {}
        }
        let host_back = started.elapsed();
        virtual_ready(&c.front, NS, n + 1).await;
        println!(
            "wake latency, {} pods: first request -> every host pod Running {:.2} s, every virtual pod Ready {:.2} s",
            n + 1,
            host_back.as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
    });
}

/// A StatefulSet's and a Job's pods sleep and come back as themselves (the
/// same names and uids, no second Job pod), and a pod the tenant deletes
/// while the cluster sleeps stays deleted: it is not created again on wake.
/// The deletion goes through the direct admin credential (a request through
/// the front door would wake the cluster first).
fn statefulset_and_job_pods_keep_their_identities_and_a_deleted_pod_stays_gone(env: &Env) {
    const IDS: &str = "identities";
    block_on(async {
        let c = env.clients().await;
        namespace(&c.front, IDS).await;
        let template = json!({"metadata": {"labels": {"app": "db"}},
            "spec": {"containers": [{"name": "app", "image": "nginx"}]}});
        create(
            &Api::<k8s_openapi::api::apps::v1::StatefulSet>::namespaced(c.front.clone(), IDS),
            json!({"metadata": {"name": "db"}, "spec": {"replicas": 2, "serviceName": "db",
                "selector": {"matchLabels": {"app": "db"}}, "template": template}}),
        )
        .await;
        create(
            &Api::<k8s_openapi::api::batch::v1::Job>::namespaced(c.front.clone(), IDS),
            // KWOK completes a Job's pod 1 to 2 s after it runs; this one
            // must still be running when the cluster falls asleep.
            json!({"metadata": {"name": "once"}, "spec": {"backoffLimit": 0,
                "template": {"metadata": {"annotations": {KWOK_COMPLETE_DELAY_ANNOTATION: "30m"}},
                    "spec": {"restartPolicy": "Never",
                    "containers": [{"name": "app", "image": "nginx"}]}}}}),
        )
        .await;
        create(
            &Api::<Pod>::namespaced(c.front.clone(), IDS),
            json!({"metadata": {"name": "gone"}, "spec": {"containers": [{"name": "app", "image": "nginx"}]}}),
        )
        .await;
        let mut before = uids(&virtual_ready(&c.front, IDS, 4).await);
        assert!(
            before.contains_key("db-0") && before.contains_key("db-1"),
            "{before:?}"
        );
        assert_eq!(
            before.keys().filter(|n| n.starts_with("once-")).count(),
            1,
            "{before:?}"
        );

        env.vcluster_ok(&["sleep", VC]);
        host_asleep(&c, T).await;
        let pods: Api<Pod> = Api::namespaced(c.virt.clone(), IDS);
        pods.delete("gone", &Default::default()).await.unwrap();
        eventually(
            "the deleted pod to leave the virtual cluster",
            T,
            || async {
                match pods.get_opt("gone").await.map_err(|e| e.to_string())? {
                    None => Ok(()),
                    Some(_) => Err("still there".to_owned()),
                }
            },
        )
        .await;
        before.remove("gone");
        env.vcluster_ok(&["wake", VC]);
        let after = uids(&virtual_ready(&c.front, IDS, 3).await);
        assert_eq!(
            after, before,
            "the same pods, by name and uid, and no other"
        );
        let host: Api<Pod> = Api::namespaced(c.host.clone(), HOST_NS);
        for name in before.keys() {
            let h = host.get(&env.synced.host_name(IDS, name)).await.unwrap();
            assert_eq!(phase(&h), "Running", "{name}");
        }
        assert!(
            host.get_opt(&env.synced.host_name(IDS, "gone"))
                .await
                .unwrap()
                .is_none(),
            "the deleted pod came back on the host"
        );
        kubectl_ok(
            &env.front_kc,
            &["delete", "namespace", IDS, "--wait=false"],
            None,
        );
    });
}

const TESTS: &[Test<Env>] = &[
    (
        "idle_past_the_threshold_frees_the_host_and_leaves_the_virtual_objects_alone",
        idle_past_the_threshold_frees_the_host_and_leaves_the_virtual_objects_alone,
    ),
    (
        "an_ignored_user_agent_or_the_opt_out_header_does_not_wake_it",
        an_ignored_user_agent_or_the_opt_out_header_does_not_wake_it,
    ),
    (
        "a_kubectl_get_wakes_it_and_the_same_pods_come_back_running",
        a_kubectl_get_wakes_it_and_the_same_pods_come_back_running,
    ),
    (
        "a_syncer_killed_while_asleep_or_waking_converges",
        a_syncer_killed_while_asleep_or_waking_converges,
    ),
    (
        "an_ingress_visit_while_asleep_gets_the_waking_page_and_wakes_it",
        an_ingress_visit_while_asleep_gets_the_waking_page_and_wakes_it,
    ),
    (
        "a_sleep_during_a_burst_of_creations_holds_every_pod",
        a_sleep_during_a_burst_of_creations_holds_every_pod,
    ),
    (
        "a_cronjob_firing_while_asleep_wakes_it",
        a_cronjob_firing_while_asleep_wakes_it,
    ),
    (
        "statefulset_and_job_pods_keep_their_identities_and_a_deleted_pod_stays_gone",
        statefulset_and_job_pods_keep_their_identities_and_a_deleted_pod_stays_gone,
    ),
    ("wake_latency_of_many_pods", wake_latency_of_many_pods),
];

/// The tenant's workloads, created through the front door.
async fn workloads(front: &kube::Client) {
    namespace(front, NS).await;
    create(
        &Api::<k8s_openapi::api::core::v1::Namespace>::all(front.clone()),
        json!({"metadata": {"name": OPS, "labels": {STAY_AWAKE_LABEL: "true"}}}),
    )
    .await;
    create(
        &Api::<ConfigMap>::namespaced(front.clone(), NS),
        json!({"metadata": {"name": "settings"}, "data": {"mode": "calm"}}),
    )
    .await;
    let container = json!({"name": "app", "image": "nginx",
        "volumeMounts": [{"name": "settings", "mountPath": "/etc/settings"}]});
    let spec = json!({"containers": [container],
        "volumes": [{"name": "settings", "configMap": {"name": "settings"}}]});
    create(
        &Api::<Deployment>::namespaced(front.clone(), NS),
        json!({"metadata": {"name": "web"}, "spec": {"replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": spec}}}),
    )
    .await;
    create(
        &Api::<Service>::namespaced(front.clone(), NS),
        json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"},
            "ports": [{"port": 80}]}}),
    )
    .await;
    create(
        &Api::<Ingress>::namespaced(front.clone(), NS),
        json!({"metadata": {"name": "web"}, "spec": {
            "tls": [{"hosts": ["shop.example.com"], "secretName": "shop-tls"}],
            "rules": [{"host": "shop.example.com", "http": {"paths": [{"path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}}),
    )
    .await;
    create(
        &Api::<Pod>::namespaced(front.clone(), NS),
        json!({"metadata": {"name": "solo"}, "spec": {"containers": [{"name": "app", "image": "nginx"}]}}),
    )
    .await;
    create(
        &Api::<Pod>::namespaced(front.clone(), OPS),
        json!({"metadata": {"name": "keeper"}, "spec": {"containers": [{"name": "app", "image": "nginx"}]}}),
    )
    .await;
}

fn main() {
    let args = Arguments::from_args();
    list_or_check(&args, &[TESTS]);
    // KWOK nodes hold 250 pods each: room for the wake-latency run.
    let nodes = (wake_pods() / 200 + 1).max(2).to_string();
    let stack = DevStack::up(&["--no-syncer", "--nodes", &nodes]);
    host_namespace_with_api_service(&stack, VC, HOST_NS);
    let pki = stack.dir.path().join("vcluster").join("pki");
    assert!(pki.join("ca.key").exists(), "the virtual plane's client CA");
    let front_port = free_port();
    let wake_port = free_port();
    let syncer_args: Vec<String> = vec![
        format!("--sleep-wake-listen=127.0.0.1:{wake_port}"),
        "--sleep-wake-on-cronjobs".to_owned(),
        format!("--sleep-after={}s", SLEEP_AFTER.as_secs()),
        "--sleep-ignore-user-agents=sleepy-bot/*".to_owned(),
        format!("--client-ca-cert={}", pki.join("ca.crt").display()),
        format!("--client-ca-key={}", pki.join("ca.key").display()),
        format!("--front-door-listen=127.0.0.1:{front_port}"),
        format!("--kubeconfig-server=https://127.0.0.1:{front_port}"),
    ];
    // The suite's one syncer configuration, for its restarts too.
    let syncer_args: &'static [&'static str] = Box::leak(
        syncer_args
            .into_iter()
            .map(|s| &*Box::leak(s.into_boxed_str()))
            .collect::<Vec<&'static str>>()
            .into_boxed_slice(),
    );
    let syncer = SyncerProcess::start_with(&stack, VC, HOST_NS, syncer_args);
    let log = syncer.log.clone();
    let front_kc = stack.dir.path().join("front-door.kubeconfig");
    block_on(async {
        let (_, host) = clients(&stack).await;
        let secrets: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(host.clone(), HOST_NS);
        let secret = present(
            "the vc-<name> Secret",
            &secrets,
            &vcluster::discovery::kubeconfig_secret(VC),
        )
        .await;
        let kc = &secret.data.unwrap()[vcluster::discovery::KUBECONFIG_KEY].0;
        std::fs::write(&front_kc, kc).unwrap();
        workloads(&client(&front_kc).await).await;
    });
    let env = Env {
        synced: SyncedEnv {
            stack,
            syncer: std::sync::Mutex::new(Some(syncer)),
            vc: VC,
            host_namespace: HOST_NS,
            syncer_args,
        },
        front_kc,
        wake_port,
    };
    let env = std::sync::Arc::new(env);
    let failed = run_groups(&args, &env, &[(TESTS, Some(1))]);
    finish(env, failed, Some(log));
}
