//! The front door under load, measured (not asserted): GETs of one
//! ConfigMap at a fixed rate (open loop: each request starts at its time,
//! whether or not the earlier ones have answered) for a fixed time, first
//! directly against the virtual API, then through the front door of a dev
//! stack; error rate, p50/p99 latency and the syncer's resident memory
//! before and after. This process is the load generator, on loopback.
//!
//! ```sh
//! cargo test --test frontdoor_load            # 100 requests/s for 60 s each way
//! VCLUSTER_LOAD_RATE=200 VCLUSTER_LOAD_SECONDS=30 cargo test --test frontdoor_load
//! ```
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod common;

use std::time::{Duration, Instant};

use common::*;

const PATH: &str = "/api/v1/namespaces/default/configmaps/kube-root-ca.crt";
/// No request waits longer than this (then it counts as an error).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Run {
    ok: Vec<Duration>,
    errors: usize,
    sent: usize,
    wall: Duration,
}

async fn run(client: kube::Client, rate: u64, seconds: u64) -> Run {
    let total = rate * seconds;
    let every = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        tokio::time::sleep_until(start + every * u32::try_from(i).unwrap()).await;
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let req = http::Request::get(PATH).body(Vec::new()).unwrap();
            let t = Instant::now();
            match tokio::time::timeout(REQUEST_TIMEOUT, c.request_text(req)).await {
                Ok(Ok(_)) => Ok(t.elapsed()),
                _ => Err(()),
            }
        }));
    }
    let (mut ok, mut errors) = (Vec::new(), 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(d) => ok.push(d),
            Err(()) => errors += 1,
        }
    }
    ok.sort();
    Run {
        ok,
        errors,
        sent: total as usize,
        wall: start.elapsed().into(),
    }
}

fn pct(v: &[Duration], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e3
}

fn line(name: &str, r: &Run) -> String {
    format!(
        "| {name} | {} | {} ({:.2} %) | {:.2} | {:.2} | {:.1} s |",
        r.sent,
        r.errors,
        100.0 * r.errors as f64 / r.sent as f64,
        pct(&r.ok, 0.50),
        pct(&r.ok, 0.99),
        r.wall.as_secs_f64()
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let (rate, seconds) = (
        setting("VCLUSTER_LOAD_RATE", 100),
        setting("VCLUSTER_LOAD_SECONDS", 60),
    );
    let stack = DevStack::up(&[]);
    let syncer = stack
        .state
        .processes
        .iter()
        .find(|p| p.name == "syncer")
        .map(|p| p.pid)
        .expect("the dev stack's syncer");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let direct = client(&stack.vcluster_kubeconfig()).await;
        let front = client(&stack.state.front_door.as_ref().unwrap().kubeconfig).await;
        for c in [&direct, &front] {
            for _ in 0..20 {
                let req = http::Request::get(PATH).body(Vec::new()).unwrap();
                c.request_text(req).await.unwrap();
            }
        }
        let rss0 = rss_kib(syncer);
        let d = run(direct, rate, seconds).await;
        let rss1 = rss_kib(syncer);
        let f = run(front, rate, seconds).await;
        let rss2 = rss_kib(syncer);
        println!("{rate} GET/s for {seconds} s each way, open loop, timeout {REQUEST_TIMEOUT:?}");
        println!("| path | requests | errors | p50 ms | p99 ms | wall |");
        println!("|---|---|---|---|---|---|");
        println!("{}", line("virtual API directly", &d));
        println!("{}", line("through the front door", &f));
        println!(
            "syncer RSS: {:.1} MiB before, {:.1} MiB after the direct run, {:.1} MiB after the front-door run",
            rss0 as f64 / 1024.0,
            rss1 as f64 / 1024.0,
            rss2 as f64 / 1024.0
        );
    });
}
