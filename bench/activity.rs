//! What activity tracking adds to each front-door request: the
//! classification of a kubectl request (a person's, against two ignored
//! user-agent patterns and an ignored group) and the store of its time, as
//! the front door does it before forwarding. Figures, not a test:
//!
//! ```sh
//! cargo run --release --example activity_cost
//! ```
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::hint::black_box;
use std::time::Instant;

use http::{HeaderMap, HeaderValue};
use vcluster::proxy::authn::Identity;
use vcluster::sleep::{Activity, ActivityPolicy};

const ROUNDS: u32 = 1_000_000;

fn main() {
    let policy = ActivityPolicy {
        count_service_accounts: false,
        ignored_user_agents: vec!["argocd/*".into(), "prometheus/*".into()],
        ignored_groups: vec!["bots".into()],
    };
    let id = Identity {
        user: "alice".into(),
        groups: vec!["team-a".into(), "system:authenticated".into()],
        ..Identity::default()
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::USER_AGENT,
        HeaderValue::from_static("kubectl/v1.36.3 (linux/amd64) kubernetes/6a7c3c1"),
    );
    headers.insert(
        http::header::ACCEPT,
        HeaderValue::from_static("application/json"),
    );
    let activity = Activity::default();
    let path = "/api/v1/namespaces/default/pods";
    let query = Some("limit=500");
    let started = Instant::now();
    for i in 0..ROUNDS {
        let v = policy.classify(black_box(&id), black_box(path), black_box(query), &headers);
        if v == vcluster::sleep::Verdict::Counts {
            // A new second now and then, as a busy front door sees it.
            activity.touch(1_800_000_000 + i64::from(i / 1000));
        }
    }
    let took = started.elapsed();
    println!(
        "activity tracking: {ROUNDS} requests classified and recorded in {:.1} ms, {:.1} ns per request",
        took.as_secs_f64() * 1e3,
        took.as_secs_f64() * 1e9 / f64::from(ROUNDS)
    );
}
