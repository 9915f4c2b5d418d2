//! Sleep mode: an idle virtual cluster frees the host, and wakes on the next
//! request.
//!
//! - [`activity`]: which front-door requests count (a person's), and the
//!   clock of the last one;
//! - the state lives in Kubernetes, on the vcluster's host API Service
//!   (`--api-service`): [`LAST_ACTIVITY_ANNOTATION`] (written at most once a
//!   minute) and [`SLEEPING_SINCE_ANNOTATION`] (present while asleep). The
//!   loop here ([`run`]) reads them back, decides (idle past `--sleep-after`
//!   → asleep; a counted request after the cluster fell asleep → awake),
//!   writes the decision down first and only then acts on it, so a syncer
//!   killed at any point converges; `vcluster sleep|wake` edit the same
//!   annotations;
//! - the pod rule ([`crate::sync::pods`]) follows [`Sleep::asleep`]: while
//!   asleep it holds every pod not exempt ([`STAY_AWAKE_LABEL`] on the pod or
//!   its namespace): the virtual pod is marked (condition
//!   [`SLEEPING_CONDITION`], Ready false, reason [`SLEEPING_REASON`]) and
//!   then its host copy deleted; on wake the marked pods are created again.
//!   Virtual objects are never edited beyond that status.

pub mod activity;

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt as _;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams};
use kube::runtime::events::EventType;
use serde_json::{Value, json};

use crate::FIELD_MANAGER;
use crate::sync::Context;
use crate::sync::cache::Cache;
use crate::sync::feed::Readiness;
pub use activity::{Activity, ActivityPolicy, Verdict};

/// Annotation on the vcluster's host Service: the last counted request (RFC 3339).
pub const LAST_ACTIVITY_ANNOTATION: &str = "vcluster.dev/last-activity";
/// Annotation on the vcluster's host Service: asleep since (RFC 3339); absent while awake.
pub const SLEEPING_SINCE_ANNOTATION: &str = "vcluster.dev/sleeping-since";
/// Annotation on the vcluster's host Service: the configured `--sleep-after`
/// in seconds (for `vcluster list`); absent when sleep after inactivity is off.
pub const SLEEP_AFTER_ANNOTATION: &str = "vcluster.dev/sleep-after-seconds";
/// Label (`"true"`) on a virtual pod or namespace: its pods keep running while the cluster sleeps.
pub const STAY_AWAKE_LABEL: &str = "vcluster.dev/stay-awake";
/// Condition type on a virtual pod whose host copy sleeps.
pub const SLEEPING_CONDITION: &str = "vcluster.dev/Sleeping";
/// Reason of the sleeping pod's conditions and the sleep Events.
pub const SLEEPING_REASON: &str = "VClusterSleeping";
/// The message on a sleeping pod.
pub const SLEEPING_MESSAGE: &str =
    "the virtual cluster sleeps: this pod is stopped until the next request wakes it";

/// How often the loop looks at the host Service when nothing asks it to.
const POLL: Duration = Duration::from_secs(2);

/// How the syncer sleeps.
#[derive(Debug, Clone, Default)]
pub struct SleepOptions {
    /// Sleep after this long without a counted request; `None`: only when
    /// asked (`vcluster sleep`).
    pub after: Option<Duration>,
    /// What counts as activity.
    pub policy: ActivityPolicy,
    /// The host Service that keeps the state (the vcluster's API Service).
    pub service: String,
    /// Where the waking page is served; tenant ingresses point at it (on
    /// [`SleepOptions::service`], this port) while the vcluster sleeps.
    pub wake_listen: Option<std::net::SocketAddr>,
    /// A virtual CronJob firing while asleep wakes the cluster (else its
    /// pods are held until the next wake, like any other).
    pub wake_on_cronjobs: bool,
}

/// The sleep state the front door, the pod rule and the loop share.
#[derive(Debug, Default)]
pub struct Sleep {
    /// The last counted request.
    pub activity: Activity,
    /// Asleep, as last read from the host (what the pod rule follows).
    asleep: AtomicBool,
    /// Set once the state has been read from the host: pods wait for it, so
    /// a syncer restarted while asleep never creates them first.
    known: Readiness,
    /// Bumped whenever what the pod rule decides may have changed.
    changed: tokio::sync::watch::Sender<u64>,
    /// Virtual namespaces labelled to stay awake.
    exempt_namespaces: RwLock<HashSet<String>>,
    /// When the last wake began, until every slept pod is back.
    woke: Mutex<Option<Instant>>,
}

impl Sleep {
    /// True while the vcluster sleeps.
    pub fn asleep(&self) -> bool {
        self.asleep.load(Ordering::Relaxed)
    }

    /// Returns once the state has been read from the host.
    pub async fn known(&self) {
        self.known.wait().await;
    }

    /// A receiver that sees a change whenever pods must be looked at again.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// True when `pod` keeps running while the cluster sleeps.
    pub fn exempt(&self, pod: &Pod) -> bool {
        let labelled = |m: &ObjectMeta| {
            m.labels
                .as_ref()
                .and_then(|l| l.get(STAY_AWAKE_LABEL))
                .is_some_and(|v| v == "true")
        };
        labelled(&pod.metadata)
            || pod
                .metadata
                .namespace
                .as_ref()
                .is_some_and(|ns| self.namespace_exempt(ns))
    }

    /// True when virtual namespace `ns` is labelled to stay awake.
    pub fn namespace_exempt(&self, ns: &str) -> bool {
        self.exempt_namespaces
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(ns)
    }

    /// Sets the state (for tests and the loop) and tells the pod rule.
    pub fn set_asleep(&self, asleep: bool) {
        self.asleep.store(asleep, Ordering::Relaxed);
        self.activity.asleep.store(asleep, Ordering::Relaxed);
        self.changed.send_modify(|n| *n += 1);
    }

    /// The wake under way, if any: when it began.
    pub fn waking_since(&self) -> Option<Instant> {
        *self
            .woke
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The wake is complete: every slept pod is back (returns how long it took).
    pub fn woken(&self) -> Option<Duration> {
        let began = self
            .woke
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()?;
        let took = began.elapsed();
        crate::sync::metrics::global().woken(took);
        Some(took)
    }
}

/// How long a visitor of the waking page is asked to wait before retrying.
pub const WAKE_RETRY_SECONDS: u32 = 5;

/// What a visitor of one of the tenant's ingresses gets while the vcluster
/// sleeps (the host ingress copies point at the syncer's waking page): the
/// visit counts as activity, which wakes the cluster; the answer is a
/// `503` with `Retry-After`, never cached.
pub fn waking_page(sleep: &Sleep) -> (u16, [(&'static str, String); 3], &'static str) {
    sleep.activity.touch(now_secs());
    (
        503,
        [
            ("retry-after", WAKE_RETRY_SECONDS.to_string()),
            ("cache-control", "no-store".to_owned()),
            ("content-type", "text/html; charset=utf-8".to_owned()),
        ],
        "<!doctype html><title>Waking up</title><h1>Waking up</h1>\n<p>This virtual cluster was asleep and is starting again. Retry in a few seconds.</p>\n",
    )
}

/// True when the virtual pod carries the sleeping mark (its host copy was
/// deleted because the cluster slept).
pub fn slept(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == SLEEPING_CONDITION && c.status == "True")
        })
}

/// The status merge patch that marks a virtual pod asleep: not Ready, its
/// containers waiting, and the sleeping condition; `None` when it already is.
pub fn sleeping_status(p: &Pod) -> Option<Value> {
    if slept(p) {
        return None;
    }
    let now = Timestamp::now().to_string();
    let status = p.status.clone().unwrap_or_default();
    let mut conditions: Vec<Value> = status
        .conditions
        .iter()
        .flatten()
        .filter(|c| !matches!(c.type_.as_str(), "Ready" | "ContainersReady"))
        .filter_map(|c| serde_json::to_value(c).ok())
        .collect();
    for t in ["Ready", "ContainersReady"] {
        conditions.push(json!({
            "type": t, "status": "False", "reason": SLEEPING_REASON,
            "message": SLEEPING_MESSAGE, "lastTransitionTime": now,
        }));
    }
    conditions.push(json!({
        "type": SLEEPING_CONDITION, "status": "True", "reason": SLEEPING_REASON,
        "message": SLEEPING_MESSAGE, "lastTransitionTime": now,
    }));
    let waiting = |statuses: &Option<Vec<k8s_openapi::api::core::v1::ContainerStatus>>| {
        statuses.as_ref().map(|cs| {
            cs.iter()
                .map(|c| {
                    json!({
                        "name": c.name, "image": c.image, "imageID": c.image_id,
                        "ready": false, "started": false, "restartCount": c.restart_count,
                        "state": {"waiting": {"reason": SLEEPING_REASON, "message": SLEEPING_MESSAGE}},
                    })
                })
                .collect::<Vec<_>>()
        })
    };
    let mut out = json!({"status": {"conditions": conditions}});
    if let Some(cs) = waiting(&status.container_statuses) {
        out["status"]["containerStatuses"] = cs.into();
    }
    Some(out)
}

/// Virtual pods in `pods` still marked asleep.
pub fn still_asleep(pods: &Cache<Pod>) -> usize {
    #[derive(serde::Deserialize)]
    struct Cond {
        #[serde(rename = "type")]
        type_: String,
        status: String,
    }
    #[derive(serde::Deserialize)]
    struct Status {
        conditions: Option<Vec<Cond>>,
    }
    #[derive(serde::Deserialize)]
    struct View {
        status: Option<Status>,
    }
    pods.entries()
        .iter()
        .filter(|p| {
            p.view::<View>()
                .ok()
                .and_then(|v| v.status?.conditions)
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == SLEEPING_CONDITION && c.status == "True")
                })
        })
        .count()
}

fn parse_time(s: &str) -> Option<i64> {
    s.parse::<Timestamp>().ok().map(|t| t.as_second())
}

fn format_time(secs: i64) -> String {
    Timestamp::from_second(secs)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn now_secs() -> i64 {
    Timestamp::now().as_second()
}

/// The sleep state of a vcluster as its host Service's annotations tell it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recorded {
    /// The last counted request (Unix seconds).
    pub last_activity: Option<i64>,
    /// Asleep since (Unix seconds).
    pub sleeping_since: Option<i64>,
    /// The configured `--sleep-after`, in seconds.
    pub sleep_after: Option<i64>,
}

impl Recorded {
    /// Reads the annotations of `svc`.
    pub fn of(svc: &Service) -> Self {
        let ann = svc.annotations();
        Self {
            last_activity: ann
                .get(LAST_ACTIVITY_ANNOTATION)
                .and_then(|s| parse_time(s)),
            sleeping_since: ann
                .get(SLEEPING_SINCE_ANNOTATION)
                .and_then(|s| parse_time(s)),
            sleep_after: ann.get(SLEEP_AFTER_ANNOTATION).and_then(|s| s.parse().ok()),
        }
    }
}

/// What the loop does after reading the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing changes.
    Stay,
    /// Write the last activity down.
    Record(i64),
    /// Fall asleep now (idle since the given time).
    Sleep,
    /// Wake: a counted request after the cluster fell asleep.
    Wake(i64),
}

/// The decision of one look (pure): `recorded` on the host, `last` the last
/// counted request known here, `now`, and `after` (`--sleep-after`).
pub fn decide(recorded: &Recorded, last: i64, now: i64, after: Option<Duration>) -> Step {
    match recorded.sleeping_since {
        Some(since) if last > since => Step::Wake(last),
        Some(_) => Step::Stay,
        None => {
            let idle = now - last;
            match after {
                Some(a) if idle >= i64::try_from(a.as_secs()).unwrap_or(i64::MAX) => Step::Sleep,
                _ if recorded
                    .last_activity
                    .is_none_or(|w| last - w >= activity::WRITE_EVERY_SECONDS) =>
                {
                    Step::Record(last)
                }
                _ => Step::Stay,
            }
        }
    }
}

/// A merge patch of the state annotations.
fn annotations_patch(pairs: &[(&str, Option<String>)]) -> Value {
    let ann: serde_json::Map<String, Value> = pairs
        .iter()
        .map(|(k, v)| {
            (
                (*k).to_owned(),
                v.clone().map_or(Value::Null, Value::String),
            )
        })
        .collect();
    json!({"metadata": {"annotations": ann}})
}

/// Writes the state annotations on Service `name` (what `vcluster
/// sleep|wake` and the loop both do).
pub async fn write_state(
    services: &Api<Service>,
    name: &str,
    pairs: &[(&str, Option<String>)],
) -> Result<(), kube::Error> {
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    services
        .patch(name, &params, &Patch::Merge(annotations_patch(pairs)))
        .await
        .map(drop)
}

/// The annotations `vcluster sleep` writes: asleep from `now`.
pub fn sleep_now(now: i64) -> Vec<(&'static str, Option<String>)> {
    vec![(SLEEPING_SINCE_ANNOTATION, Some(format_time(now)))]
}

/// The annotations `vcluster wake` writes: awake, active at `now`.
pub fn wake_now(now: i64) -> Vec<(&'static str, Option<String>)> {
    vec![
        (SLEEPING_SINCE_ANNOTATION, None),
        (LAST_ACTIVITY_ANNOTATION, Some(format_time(now))),
    ]
}

/// Why the last wake happened, for the metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Request,
    Command,
    CronJob,
}

/// Follows and decides the sleep state until the process ends.
pub async fn run(sleep: Arc<Sleep>, ctx: Arc<Context>, opts: SleepOptions) {
    let services: Api<Service> = Api::namespaced(ctx.host.clone(), &ctx.names.host_namespace);
    let mut first = true;
    let mut warned = false;
    loop {
        match look(&sleep, &ctx, &services, &opts, first).await {
            Ok(()) => {
                first = false;
                warned = false;
            }
            Err(e) if !warned => {
                tracing::warn!(service = %opts.service, error = %e, "cannot read or write the sleep state");
                warned = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            () = sleep.activity.kick.notified() => {}
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

/// One look: read the host, decide, write the decision down, then act.
async fn look(
    sleep: &Sleep,
    ctx: &Context,
    services: &Api<Service>,
    opts: &SleepOptions,
    first: bool,
) -> Result<(), kube::Error> {
    let now = now_secs();
    let Some(svc) = services.get_opt(&opts.service).await? else {
        if first {
            tracing::warn!(service = %opts.service, "no host Service to keep the sleep state on: sleep mode is off");
            sleep.known.set();
        }
        return Ok(());
    };
    let recorded = Recorded::of(&svc);
    match recorded.last_activity {
        Some(at) => sleep.activity.restore(at),
        // Never recorded: the cluster's life starts now.
        None => sleep.activity.restore_unwritten(now),
    }
    let after_secs = opts.after.map(|a| a.as_secs().to_string());
    if first && recorded.sleep_after.map(|s| s.to_string()) != after_secs {
        write_state(
            services,
            &opts.service,
            &[(SLEEP_AFTER_ANNOTATION, after_secs)],
        )
        .await?;
    }
    let mut last = sleep.activity.last();
    // With --sleep-wake-on-cronjobs, a CronJob that fired since the cluster
    // fell asleep wakes it as a request would.
    let fired = match recorded.sleeping_since {
        Some(since) if opts.wake_on_cronjobs => cronjob_fired(sleep, ctx)
            .await
            .filter(|at| *at > since && *at > last),
        _ => None,
    };
    if let Some(at) = fired {
        last = at;
    }
    let was = sleep.asleep();
    let asleep = match decide(&recorded, last, now, opts.after) {
        Step::Stay => recorded.sleeping_since.is_some(),
        Step::Record(at) => {
            write_state(
                services,
                &opts.service,
                &[(LAST_ACTIVITY_ANNOTATION, Some(format_time(at)))],
            )
            .await?;
            sleep.activity.written_at(at);
            false
        }
        Step::Sleep => {
            write_state(services, &opts.service, &sleep_now(now)).await?;
            true
        }
        Step::Wake(at) => {
            write_state(services, &opts.service, &wake_now(at)).await?;
            sleep.activity.written_at(at);
            if was {
                let trigger = if fired.is_some() {
                    Trigger::CronJob
                } else {
                    Trigger::Request
                };
                began_wake(sleep, ctx, trigger).await;
            }
            false
        }
    };
    // Exemptions matter only while asleep: read them then (before the pods
    // are held on falling asleep), not on every look of an awake cluster.
    if asleep {
        update_exempt(sleep, ctx).await;
    }
    if first {
        sleep.set_asleep(asleep);
        crate::sync::metrics::global().sleeping(asleep);
        sleep.known.set();
        tracing::info!(asleep, "sleep state read from the host");
        return Ok(());
    }
    if asleep == was {
        return Ok(());
    }
    sleep.set_asleep(asleep);
    crate::sync::metrics::global().sleeping(asleep);
    if asleep {
        crate::sync::metrics::global().slept();
        let idle = now - last;
        tracing::info!(idle_seconds = idle, "the virtual cluster falls asleep");
        event(ctx, "Sleeping", format!("the virtual cluster sleeps (no request for {idle} s): its pods are stopped on the host until the next request")).await;
    } else if sleep.waking_since().is_none() {
        // Woken from outside (`vcluster wake`).
        began_wake(sleep, ctx, Trigger::Command).await;
    }
    Ok(())
}

async fn began_wake(sleep: &Sleep, ctx: &Context, trigger: Trigger) {
    *sleep
        .woke
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
    let why = match trigger {
        Trigger::Request => "request",
        Trigger::Command => "command",
        Trigger::CronJob => "cronjob",
    };
    crate::sync::metrics::global().woke(why);
    tracing::info!(trigger = why, "the virtual cluster wakes");
    event(
        ctx,
        "Awake",
        format!("the virtual cluster wakes ({why}): its pods are created on the host again"),
    )
    .await;
}

/// The last time a virtual CronJob fired (outside namespaces that stay
/// awake), if it can be read.
async fn cronjob_fired(sleep: &Sleep, ctx: &Context) -> Option<i64> {
    let api: Api<CronJob> = Api::all(ctx.virt.clone());
    let list = match api.list(&ListParams::default()).await {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!(error = %e, "cannot list the virtual CronJobs");
            return None;
        }
    };
    list.items
        .iter()
        .filter(|c| {
            !c.metadata
                .namespace
                .as_deref()
                .is_some_and(|ns| sleep.namespace_exempt(ns))
        })
        .filter_map(|c| c.status.as_ref()?.last_schedule_time.as_ref())
        .map(|t| t.0.as_second())
        .max()
}

/// An Event on the virtual `default` namespace.
async fn event(ctx: &Context, reason: &str, note: String) {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some("default".into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    ctx.event(&ns, EventType::Normal, reason, note).await;
}

/// Reads the virtual namespaces labelled to stay awake; a change re-queues the pods.
async fn update_exempt(sleep: &Sleep, ctx: &Context) {
    let api: Api<Namespace> = Api::all(ctx.virt.clone());
    let lp = ListParams::default().labels(&format!("{STAY_AWAKE_LABEL}=true"));
    let Ok(list) = api.list_metadata(&lp).await else {
        return;
    };
    let now: HashSet<String> = list.items.iter().map(kube::ResourceExt::name_any).collect();
    let mut held = sleep
        .exempt_namespaces
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if *held != now {
        let names: BTreeSet<_> = now.iter().collect();
        tracing::info!(namespaces = ?names, "namespaces that stay awake");
        *held = now;
        drop(held);
        sleep.changed.send_modify(|n| *n += 1);
    }
}

#[cfg(test)]
mod tests;
