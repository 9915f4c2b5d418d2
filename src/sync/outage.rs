//! How the syncer gets going again after an API server outage.
//!
//! A reconcile that fails because an API server cannot be reached (or
//! answers 5xx or 429) waits out its key's exponential backoff, which grows
//! to 30 s while the server is away: left alone, a key that failed just
//! before the server came back would wait up to 30 s more. So such a failure
//! is reported here ([`Outage::noticed`]); one task then probes `/readyz` of
//! both API servers, and if one of them was down, the moment both answer
//! again it tells every engine ([`Outage::recovered`]), which retries its
//! failed keys at once with a fresh backoff. A failure while both servers
//! answer (a webhook that keeps answering 500, say) changes nothing: such
//! keys keep their backoff.
//!
//! An API server that is coming back must not be knocked over again by the
//! syncer's backlog, so reconciles pass an [`Admission`] shared by every
//! engine: it closes while an API server is known to be down (the syncer
//! then sends nothing but the `/readyz` probe and its watches' attempts),
//! opens again at [`RAMP_START`] reconciles at a time when both answer, and
//! doubles every [`RAMP_STEP`] without a failure that may mean an outage
//! (a refused connection, a timeout, 5xx, 429) until the engines' own
//! concurrency is the only bound; such a failure while it ramps halves it
//! (slow start, as TCP does after a loss).
//!
//! The same admission paces the syncer by the API servers while both
//! answer: a reconcile refused with 429 (the server's priority and fairness
//! queues for the syncer's flow are full, or its in-flight limit is
//! reached) is reported ([`Outage::throttled`]), and the limit drops to half
//! of itself, or of the reconciles running then if there was none
//! (multiplicative decrease); it then grows by
//! [`RAMP_START`] every [`RAMP_STEP`] without a throttle or an outage-like
//! failure (additive increase), halves again at the next, and is lifted
//! past [`RAMP_END`]. So the syncer sends what the host's API server
//! accepts, whatever `--concurrency` says: a small server is not flooded, a
//! large one is not left idle. The throttled key itself waits at least the
//! `retryAfterSeconds` the server named.
//!
//! The watches are the other half: their backoff is capped at
//! [`WATCH_BACKOFF_MAX`] (kube-runtime's default grows to 30 s and more with
//! jitter), so every cache is current again within about two seconds of the
//! API answering.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use backon::BackoffBuilder as _;
use tokio::sync::{Notify, watch};

/// The longest backoff step of a failing watch; jitter adds up to as much
/// again, so attempts are at most twice this apart.
pub const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How often `/readyz` is asked during an outage.
const PROBE_EVERY: Duration = Duration::from_millis(250);

/// Reconciles admitted at once when both API servers answer again.
pub const RAMP_START: usize = 4;

/// How often the admission limit doubles (or halves) while it ramps up.
pub const RAMP_STEP: Duration = Duration::from_millis(500);

/// Past this limit admission stops counting: the engines' own concurrency
/// bounds them again.
pub const RAMP_END: usize = 256;

/// A watch's backoff: 250 ms doubling to [`WATCH_BACKOFF_MAX`], with jitter,
/// started afresh by the next event (kube-runtime's `StreamBackoff` resets
/// it on every item that is not an error).
#[derive(Debug)]
pub struct WatchBackoff(backon::ExponentialBackoff);

impl WatchBackoff {
    fn builder() -> backon::ExponentialBuilder {
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(250))
            .with_max_delay(WATCH_BACKOFF_MAX)
            .with_jitter()
            .without_max_times()
    }
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self(Self::builder().build())
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        // Never `None` (without max times): a watch never gives up.
        Some(self.0.next().unwrap_or(WATCH_BACKOFF_MAX))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.0 = Self::builder().build();
    }
}

/// Whether a failure of this category may mean an API server is away.
pub fn may_be_outage(category: &str) -> bool {
    matches!(category, "transport" | "api" | "throttled")
}

/// How many reconciles may run at once, across every engine (see the
/// module docs): `None` is unbounded, `Some(0)` closed.
#[derive(Debug, Default)]
pub struct Admission {
    gate: std::sync::Mutex<Gate>,
    changed: Notify,
}

#[derive(Debug, Default)]
struct Gate {
    limit: Option<usize>,
    running: usize,
    /// Grows by [`RAMP_START`] a step (after a throttle) rather than
    /// doubling (after an outage).
    additive: bool,
}

/// One admitted reconcile; its place is given back when dropped.
#[derive(Debug)]
pub struct Admitted<'a>(&'a Admission);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        let mut g = super::lock(&self.0.gate);
        g.running = g.running.saturating_sub(1);
        drop(g);
        self.0.changed.notify_one();
    }
}

impl Admission {
    /// Waits until one more reconcile may run.
    pub async fn admit(&self) -> Admitted<'_> {
        loop {
            // Registered before the look, so no change is missed.
            let changed = self.changed.notified();
            {
                let mut g = super::lock(&self.gate);
                if g.limit.is_none_or(|l| g.running < l) {
                    g.running += 1;
                    return Admitted(self);
                }
            }
            changed.await;
        }
    }

    /// The limit now (`None`: unbounded).
    pub fn limit(&self) -> Option<usize> {
        super::lock(&self.gate).limit
    }

    fn set(&self, limit: Option<usize>) {
        super::lock(&self.gate).limit = limit;
        super::metrics::global().admission_limit(limit);
        self.changed.notify_waiters();
    }

    /// Admits nothing more until [`Admission::reopen`].
    pub fn close(&self) {
        self.set(Some(0));
    }

    /// Admits [`RAMP_START`] at a time, doubling from there (slow start).
    pub fn reopen(&self) {
        super::lock(&self.gate).additive = false;
        self.set(Some(RAMP_START));
    }

    /// An API server throttled a reconcile: admits half of the limit (half
    /// of what runs now if there was none), at least one, growing
    /// additively from there. Returns the new limit.
    pub fn throttle(&self) -> usize {
        let next = {
            let mut g = super::lock(&self.gate);
            g.additive = true;
            let now = g.limit.unwrap_or(g.running);
            (now / 2).max(1)
        };
        self.set(Some(next));
        next
    }

    /// One step of the ramp: after a step without failures, doubled (after
    /// an outage) or grown by [`RAMP_START`] (after a throttle), unbounded
    /// past [`RAMP_END`]; halved after a step with failures. Returns whether
    /// a limit remains.
    pub fn step(&self, failed: bool) -> bool {
        let (Some(l), additive) = ({
            let g = super::lock(&self.gate);
            (g.limit, g.additive)
        }) else {
            return false;
        };
        let grown = if additive { l + RAMP_START } else { l * 2 };
        let next = if failed {
            Some((l / 2).max(1))
        } else if grown > RAMP_END {
            None
        } else {
            Some(grown.max(1))
        };
        self.set(next);
        next.is_some()
    }
}

/// The outage watch shared by every engine (see the module docs).
#[derive(Debug)]
pub struct Outage {
    noticed: Notify,
    probing: AtomicBool,
    failures: AtomicU64,
    throttles: AtomicU64,
    recovered: watch::Sender<u64>,
    admission: Admission,
}

impl Default for Outage {
    fn default() -> Self {
        Self {
            noticed: Notify::new(),
            probing: AtomicBool::new(false),
            failures: AtomicU64::new(0),
            throttles: AtomicU64::new(0),
            recovered: watch::channel(0).0,
            admission: Admission::default(),
        }
    }
}

impl Outage {
    /// A reconcile failed in a way an unreachable API server explains.
    pub fn noticed(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if !self.probing.load(Ordering::Relaxed) {
            self.noticed.notify_one();
        }
    }

    /// A reconcile failed with an error of `category` (see
    /// [`super::SyncError::category`]): a throttle or an outage-like
    /// failure is reported; others change nothing here.
    pub fn failed(&self, category: &str) {
        if category == "throttled" {
            self.throttled();
        } else if may_be_outage(category) {
            self.noticed();
        }
    }

    /// A reconcile was refused with 429: the admission is halved unless the
    /// API server turns out to be down (see the module docs).
    pub fn throttled(&self) {
        self.throttles.fetch_add(1, Ordering::Relaxed);
        self.noticed();
    }

    /// Waits until one more reconcile may run (see [`Admission`]).
    pub async fn admit(&self) -> Admitted<'_> {
        self.admission.admit().await
    }

    /// The admission of reconciles.
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// Changes each time both API servers answer again after one was down.
    pub fn recovered(&self) -> watch::Receiver<u64> {
        self.recovered.subscribe()
    }

    /// Runs until the process ends: after each notice, probes both API
    /// servers until both answer `/readyz` (admitting no reconcile while one
    /// does not), reports a recovery if one of them did not at first, and
    /// ramps the admission up again.
    pub async fn run(self: Arc<Self>, host: kube::Client, virt: kube::Client) {
        self.watch(|| async { futures::join!(ready(&host), ready(&virt)) })
            .await;
    }

    /// [`Outage::run`] with `both_ready` telling whether the host and the
    /// virtual API server answer.
    async fn watch<F, Fut>(&self, both_ready: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = (bool, bool)>,
    {
        let mut throttles = 0;
        loop {
            self.noticed.notified().await;
            self.probing.store(true, Ordering::Relaxed);
            let mut was_down = false;
            loop {
                let (h, v) = both_ready().await;
                if h && v {
                    break;
                }
                if !was_down {
                    tracing::info!(
                        host = h,
                        r#virtual = v,
                        "an API server is not ready: reconciles paused"
                    );
                    self.admission.close();
                }
                was_down = true;
                tokio::time::sleep(PROBE_EVERY).await;
            }
            self.probing.store(false, Ordering::Relaxed);
            if was_down {
                tracing::info!(
                    admitted = RAMP_START,
                    "both API servers ready again: retrying failed keys now"
                );
                self.admission.reopen();
                self.recovered.send_modify(|n| *n += 1);
            } else if self.throttles.load(Ordering::Relaxed) != throttles {
                let admitted = self.admission.throttle();
                tracing::info!(
                    admitted,
                    "an API server throttled reconciles: fewer at once"
                );
            }
            self.ramp(|| async {
                let (h, v) = both_ready().await;
                h && v
            })
            .await;
            // Throttles during the ramp have halved it already.
            throttles = self.throttles.load(Ordering::Relaxed);
        }
    }

    /// Steps the admission limit up every [`RAMP_STEP`] until it is
    /// unbounded; a step with outage-like failures halves it, or ends the
    /// ramp if an API server is down again (the next probe closes it).
    async fn ramp<F, Fut>(&self, ready: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = bool>,
    {
        while self.admission.limit().is_some() {
            let before = self.failures.load(Ordering::Relaxed);
            tokio::time::sleep(RAMP_STEP).await;
            let failed = self.failures.load(Ordering::Relaxed) != before;
            if failed && !ready().await {
                return;
            }
            if !self.admission.step(failed) {
                tracing::info!("reconciles admitted without a limit again");
            }
        }
    }
}

/// Whether `client`'s API server answers `GET /readyz` with 200 within 2 s
/// (open to every client through `system:public-info-viewer`). Sent raw: a
/// "not ready" answer is what is asked, not an error to log.
async fn ready(client: &kube::Client) -> bool {
    let Ok(req) = http::Request::get("/readyz").body(kube::client::Body::from(Vec::new())) else {
        return false;
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), client.send(req)).await,
        Ok(Ok(resp)) if resp.status().is_success()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::utils::Backoff as _;

    #[test]
    fn a_watch_backoff_stays_short_and_starts_over() {
        let mut b = WatchBackoff::default();
        let first: Vec<Duration> = b.by_ref().take(20).collect();
        assert!(
            first.iter().all(|d| *d <= 2 * WATCH_BACKOFF_MAX),
            "{first:?}"
        );
        assert!(first[0] < Duration::from_millis(600), "{first:?}");
        b.reset();
        assert!(b.next().unwrap() < Duration::from_millis(600));
    }

    /// Whether a reconcile would be admitted within a moment.
    async fn admits(a: &Admission) -> Option<Admitted<'_>> {
        tokio::time::timeout(Duration::from_millis(50), a.admit())
            .await
            .ok()
    }

    #[tokio::test]
    async fn admission_closes_during_an_outage_and_reopens_slowly() {
        let a = Admission::default();
        // Unbounded at first.
        let many: Vec<_> = futures::future::join_all((0..100).map(|_| a.admit())).await;
        drop(many);
        a.close();
        assert!(admits(&a).await.is_none(), "admitted while closed");
        // A waiting reconcile goes as soon as the gate opens again.
        let waiting = tokio::spawn({
            let a = Arc::new(Admission::default());
            a.close();
            let b = Arc::clone(&a);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                b.reopen();
            });
            async move {
                let _admitted = a.admit().await;
            }
        });
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("the waiting reconcile was not admitted on reopen")
            .unwrap();
        a.reopen();
        let mut first = Vec::new();
        for _ in 0..RAMP_START {
            first.push(admits(&a).await.expect("admitted up to the start limit"));
        }
        assert!(admits(&a).await.is_none(), "admitted past {RAMP_START}");
        first.pop();
        assert!(
            admits(&a).await.is_some(),
            "a finished reconcile frees its place"
        );
    }

    #[test]
    fn admission_doubles_halves_and_ends_unbounded() {
        let a = Admission::default();
        assert!(!a.step(false), "an unbounded admission has nothing to ramp");
        a.reopen();
        assert!(a.step(false));
        assert_eq!(a.limit(), Some(2 * RAMP_START));
        assert!(a.step(true));
        assert_eq!(a.limit(), Some(RAMP_START));
        while a.step(false) {}
        assert_eq!(a.limit(), None);
        a.close();
        assert!(a.step(true));
        assert_eq!(a.limit(), Some(1), "never below one once open");
    }

    #[tokio::test]
    async fn a_throttle_halves_what_runs_and_grows_back_additively() {
        let a = Admission::default();
        // Unbounded, 40 reconciles running: a 429 admits 20.
        let running: Vec<_> = futures::future::join_all((0..40).map(|_| a.admit())).await;
        assert_eq!(a.throttle(), 20);
        assert_eq!(a.limit(), Some(20));
        assert!(admits(&a).await.is_none(), "admitted past the halved limit");
        drop(running);
        // Additive increase, not doubling.
        assert!(a.step(false));
        assert_eq!(a.limit(), Some(20 + RAMP_START));
        // Another throttle while limited halves the limit, not the running.
        assert_eq!(a.throttle(), (20 + RAMP_START) / 2);
        assert!(a.step(true));
        assert_eq!(a.limit(), Some((20 + RAMP_START) / 4));
        let mut steps = 0;
        while a.step(false) {
            steps += 1;
        }
        assert_eq!(a.limit(), None, "lifted past the end of the ramp");
        assert!(
            steps > RAMP_END / RAMP_START / 2,
            "grew too fast: {steps} steps"
        );
        // An outage's reopening doubles again.
        a.reopen();
        assert!(a.step(false));
        assert_eq!(a.limit(), Some(2 * RAMP_START));
        // Nothing running: never below one.
        let b = Admission::default();
        assert_eq!(b.throttle(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn throttles_while_the_servers_answer_pace_the_syncer() {
        let o = Arc::new(Outage::default());
        let watching = tokio::spawn({
            let o = Arc::clone(&o);
            async move { o.watch(|| async { (true, true) }).await }
        });
        let running: Vec<_> = futures::future::join_all((0..64).map(|_| o.admit())).await;
        // A failure that is no throttle, both servers answering: no limit.
        o.noticed();
        tokio::time::sleep(RAMP_STEP).await;
        assert_eq!(o.admission.limit(), None);
        // A 429: half of the 64 running.
        o.throttled();
        tokio::time::sleep(RAMP_STEP / 10).await;
        assert_eq!(o.admission.limit(), Some(32));
        drop(running);
        // Then additive steps: 32 -> past 256 by 4 a step.
        let started = tokio::time::Instant::now();
        while o.admission.limit().is_some() {
            tokio::time::sleep(RAMP_STEP / 10).await;
        }
        assert!(
            started.elapsed() >= RAMP_STEP * 50,
            "{:?}",
            started.elapsed()
        );
        // Nothing left to halve twice: the throttle was spent.
        tokio::time::sleep(RAMP_STEP * 4).await;
        assert_eq!(o.admission.limit(), None);
        watching.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn the_ramp_halts_when_an_api_server_is_down_again() {
        let o = Outage::default();
        o.admission.reopen();
        // Healthy: unbounded within a few steps.
        let started = tokio::time::Instant::now();
        o.ramp(|| async { true }).await;
        assert_eq!(o.admission.limit(), None);
        assert!(
            started.elapsed() <= RAMP_STEP * 8,
            "{:?}",
            started.elapsed()
        );
        // Failures while the API server is away again: the ramp stops and
        // leaves the limit where it was (the next probe closes it).
        o.admission.reopen();
        let failing = async {
            loop {
                o.noticed();
                tokio::time::sleep(RAMP_STEP / 4).await;
            }
        };
        tokio::select! {
            () = o.ramp(|| async { false }) => {}
            () = failing => unreachable!(),
        }
        assert_eq!(o.admission.limit(), Some(RAMP_START));
    }

    #[test]
    fn outage_categories() {
        assert!(may_be_outage("transport"));
        assert!(may_be_outage("api"));
        assert!(!may_be_outage("rejected"));
        assert!(!may_be_outage("conflict"));
    }
}
