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
//! The watches are the other half: their backoff is capped at
//! [`WATCH_BACKOFF_MAX`] (kube-runtime's default grows to 30 s and more with
//! jitter), so every cache is current again within about two seconds of the
//! API answering.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use backon::BackoffBuilder as _;
use tokio::sync::{Notify, watch};

/// The longest backoff step of a failing watch; jitter adds up to as much
/// again, so attempts are at most twice this apart.
pub const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How often `/readyz` is asked during an outage.
const PROBE_EVERY: Duration = Duration::from_millis(250);

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

/// The outage watch shared by every engine (see the module docs).
#[derive(Debug)]
pub struct Outage {
    noticed: Notify,
    probing: AtomicBool,
    recovered: watch::Sender<u64>,
}

impl Default for Outage {
    fn default() -> Self {
        Self {
            noticed: Notify::new(),
            probing: AtomicBool::new(false),
            recovered: watch::channel(0).0,
        }
    }
}

impl Outage {
    /// A reconcile failed in a way an unreachable API server explains.
    pub fn noticed(&self) {
        if !self.probing.load(Ordering::Relaxed) {
            self.noticed.notify_one();
        }
    }

    /// Changes each time both API servers answer again after one was down.
    pub fn recovered(&self) -> watch::Receiver<u64> {
        self.recovered.subscribe()
    }

    /// Runs until the process ends: after each notice, probes both API
    /// servers until both answer `/readyz`, and reports a recovery if one
    /// of them did not at first.
    pub async fn run(self: Arc<Self>, host: kube::Client, virt: kube::Client) {
        loop {
            self.noticed.notified().await;
            self.probing.store(true, Ordering::Relaxed);
            let mut was_down = false;
            loop {
                let (h, v) = futures::join!(ready(&host), ready(&virt));
                if h && v {
                    break;
                }
                if !was_down {
                    tracing::info!(host = h, r#virtual = v, "an API server is not ready");
                }
                was_down = true;
                tokio::time::sleep(PROBE_EVERY).await;
            }
            self.probing.store(false, Ordering::Relaxed);
            if was_down {
                tracing::info!("both API servers ready again: retrying failed keys now");
                self.recovered.send_modify(|n| *n += 1);
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

    #[test]
    fn outage_categories() {
        assert!(may_be_outage("transport"));
        assert!(may_be_outage("api"));
        assert!(!may_be_outage("rejected"));
        assert!(!may_be_outage("conflict"));
    }
}
