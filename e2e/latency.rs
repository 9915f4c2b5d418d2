//! The front door's added latency, measured (not asserted): 1,000 GETs and
//! 200 watch events, directly against the virtual API and through the front
//! door of a dev stack, each over HTTP/1.1 and over HTTP/2 (the GETs of the
//! four ways take turns; the four watches see the same events). Run it in
//! release mode:
//!
//! ```sh
//! cargo test --release --test frontdoor_latency
//! ```
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, PostParams, WatchEvent, WatchParams};

const GETS: usize = 1000;
const EVENTS: usize = 200;
const NS: &str = "latency";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// p50 and p99 in milliseconds.
fn p50_p99(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    (ms(percentile(&v, 0.50)), ms(percentile(&v, 0.99)))
}

/// One table row: direct and through the front door, and what it adds.
fn row(what: &str, protocol: &str, direct: Vec<Duration>, front: Vec<Duration>) -> String {
    let n = direct.len();
    let ((d50, d99), (f50, f99)) = (p50_p99(direct), p50_p99(front));
    format!(
        "| {what} (n={n}) | {protocol} | {d50:.2} / {d99:.2} ms | {f50:.2} / {f99:.2} ms | {:+.2} / {:+.2} ms |",
        f50 - d50,
        f99 - d99
    )
}

type Seen = Arc<Mutex<BTreeMap<String, Instant>>>;

/// Watches ConfigMaps in NS and notes when each name was first added.
fn watch(client: kube::Client) -> Seen {
    let seen: Seen = Arc::default();
    let out = Arc::clone(&seen);
    tokio::spawn(async move {
        let api: Api<ConfigMap> = Api::namespaced(client, NS);
        let mut stream = api
            .watch(&WatchParams::default().timeout(290), "0")
            .await
            .unwrap()
            .boxed();
        while let Some(ev) = stream.next().await {
            if let Ok(WatchEvent::Added(cm)) = ev {
                let now = Instant::now();
                out.lock()
                    .unwrap()
                    .entry(cm.metadata.name.unwrap_or_default())
                    .or_insert(now);
            }
        }
    });
    seen
}

/// The four clients: (direct, through the front door) over HTTP/1.1, then
/// over HTTP/2.
struct Clients {
    h1: (kube::Client, kube::Client),
    h2: (kube::Client, kube::Client),
}

/// A client for `kubeconfig` over HTTP/2 only (the front door's own pool).
async fn http2_client(kubeconfig: &std::path::Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let config = vcluster::kubeconfig::config(kc).await.unwrap();
    let h2 = vcluster::proxy::pool::Http2Client::new(&config)
        .unwrap()
        .expect("an HTTPS server");
    let c = h2.client().unwrap().clone();
    let req = http::Request::get("/version")
        .body(kube::client::Body::empty())
        .unwrap();
    let resp = c.send(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2, "{kubeconfig:?}");
    c
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let stack = DevStack::up(&[]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (direct_kc, front_kc) = (
            stack.vcluster_kubeconfig(),
            stack.state.front_door.as_ref().unwrap().kubeconfig.clone(),
        );
        let c = Clients {
            h1: (client(&direct_kc).await, client(&front_kc).await),
            h2: (http2_client(&direct_kc).await, http2_client(&front_kc).await),
        };
        let all = [&c.h1.0, &c.h1.1, &c.h2.0, &c.h2.1];
        let path = "/api/v1/namespaces/default/configmaps/kube-root-ca.crt";
        let get = |c: kube::Client| async move {
            let req = http::Request::get(path).body(Vec::new()).unwrap();
            let t = Instant::now();
            c.request_text(req).await.unwrap();
            t.elapsed()
        };
        for _ in 0..50 {
            for c in all {
                get(c.clone()).await;
            }
        }
        let mut gets: [Vec<Duration>; 4] = Default::default();
        for _ in 0..GETS {
            for (c, v) in all.iter().zip(gets.iter_mut()) {
                v.push(get((*c).clone()).await);
            }
        }

        Api::<Namespace>::all(c.h1.0.clone())
            .create(
                &PostParams::default(),
                &serde_json::from_value(serde_json::json!({"metadata": {"name": NS}})).unwrap(),
            )
            .await
            .unwrap();
        let seen: Vec<Seen> = all.iter().map(|c| watch((*c).clone())).collect();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let cms: Api<ConfigMap> = Api::namespaced(c.h1.0.clone(), NS);
        let mut events: [Vec<Duration>; 4] = Default::default();
        for i in 0..EVENTS {
            let name = format!("cm-{i}");
            let cm: ConfigMap =
                serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
            let t0 = Instant::now();
            cms.create(&PostParams::default(), &cm).await.unwrap();
            let at = eventually(
                &format!("{name} on all four watches"),
                Duration::from_secs(30),
                || async {
                    seen.iter()
                        .map(|s| s.lock().unwrap().get(&name).copied())
                        .collect::<Option<Vec<Instant>>>()
                        .ok_or_else(|| "not yet".to_owned())
                },
            )
            .await;
            for (t, v) in at.into_iter().zip(events.iter_mut()) {
                v.push(t - t0);
            }
        }
        let [gd1, gf1, gd2, gf2] = gets;
        let [wd1, wf1, wd2, wf2] = events;
        println!("| measured | protocol | direct p50 / p99 | through the front door p50 / p99 | added at p50 / p99 |");
        println!("|---|---|---|---|---|");
        println!("{}", row("GET of one ConfigMap", "HTTP/1.1", gd1, gf1));
        println!("{}", row("GET of one ConfigMap", "HTTP/2", gd2, gf2));
        println!("{}", row("watch event (create → seen)", "HTTP/1.1", wd1, wf1));
        println!("{}", row("watch event (create → seen)", "HTTP/2", wd2, wf2));
    });
}
