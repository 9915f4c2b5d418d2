//! The front door's added latency, measured (not asserted): 1,000 GETs and
//! 200 watch events, directly against the virtual API and through the front
//! door of a dev stack. Run it in release mode:
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

fn summary(name: &str, mut v: Vec<Duration>) -> String {
    v.sort();
    format!(
        "{name:<28} n={:<5} p50={:>8.3} ms  p99={:>8.3} ms",
        v.len(),
        percentile(&v, 0.50).as_secs_f64() * 1e3,
        percentile(&v, 0.99).as_secs_f64() * 1e3,
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
        let direct = client(&stack.vcluster_kubeconfig()).await;
        let front = client(&stack.state.front_door.as_ref().unwrap().kubeconfig).await;
        let path = "/api/v1/namespaces/default/configmaps/kube-root-ca.crt";
        let get = |c: kube::Client| async move {
            let req = http::Request::get(path).body(Vec::new()).unwrap();
            let t = Instant::now();
            c.request_text(req).await.unwrap();
            t.elapsed()
        };
        for _ in 0..50 {
            get(direct.clone()).await;
            get(front.clone()).await;
        }
        let (mut d, mut f) = (Vec::new(), Vec::new());
        for _ in 0..GETS {
            d.push(get(direct.clone()).await);
            f.push(get(front.clone()).await);
        }
        println!("{}", summary("GET direct", d));
        println!("{}", summary("GET through the front door", f));

        Api::<Namespace>::all(direct.clone())
            .create(
                &PostParams::default(),
                &serde_json::from_value(serde_json::json!({"metadata": {"name": NS}})).unwrap(),
            )
            .await
            .unwrap();
        let (seen_d, seen_f) = (watch(direct.clone()), watch(front.clone()));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let cms: Api<ConfigMap> = Api::namespaced(direct.clone(), NS);
        let (mut wd, mut wf) = (Vec::new(), Vec::new());
        for i in 0..EVENTS {
            let name = format!("cm-{i}");
            let cm: ConfigMap =
                serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
            let t0 = Instant::now();
            cms.create(&PostParams::default(), &cm).await.unwrap();
            let (a, b) = eventually(
                &format!("{name} on both watches"),
                Duration::from_secs(30),
                || async {
                    let a = seen_d.lock().unwrap().get(&name).copied();
                    let b = seen_f.lock().unwrap().get(&name).copied();
                    match (a, b) {
                        (Some(a), Some(b)) => Ok((a, b)),
                        _ => Err("not yet".to_owned()),
                    }
                },
            )
            .await;
            wd.push(a - t0);
            wf.push(b - t0);
        }
        println!("{}", summary("watch event direct", wd));
        println!("{}", summary("watch event via front door", wf));
    });
}
