//! How engines run: their settings ([`EngineOptions`]), which API a watch is
//! on ([`Side`]), and the start-up probe for streamed initial lists.

use std::time::Duration;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::watcher;

/// Engine settings.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Concurrent reconciles.
    pub concurrency: usize,
    /// Period of the full resync (which also reverts drift).
    pub resync: Duration,
    /// Server-side timeout of each watch call (a new watch follows each).
    pub watch_timeout_seconds: u32,
    /// Ask for watch bookmarks (they keep resource versions fresh, so a
    /// re-watch rarely finds its version compacted).
    pub watch_bookmarks: bool,
    /// The host API server streams initial lists in watches (see [`streams_lists`]).
    pub host_streams_lists: bool,
    /// The virtual API server streams initial lists in watches.
    pub virtual_streams_lists: bool,
}

/// Which API a watch is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The host cluster's API.
    Host,
    /// The virtual cluster's API.
    Virtual,
}

impl EngineOptions {
    /// The watcher configuration these options ask for on `side`: the
    /// initial list streamed as watch events where the server can (no pages
    /// of hundreds of objects held at once), else listed in pages.
    pub fn watcher_config(&self, side: Side) -> watcher::Config {
        let c = watcher::Config::default().timeout(self.watch_timeout_seconds);
        let streams = match side {
            Side::Host => self.host_streams_lists,
            Side::Virtual => self.virtual_streams_lists,
        };
        if streams {
            // Streaming lists end their initial events with a bookmark.
            c.streaming_lists()
        } else if self.watch_bookmarks {
            c
        } else {
            c.disable_bookmarks()
        }
    }
}

/// Whether `client`'s API server streams initial lists in watches
/// (`sendInitialEvents`, the WatchList feature: on by default since
/// Kubernetes 1.34, off in 1.33). Probed with a watch on an empty selection
/// of ConfigMaps in `namespace`: a server that streams opens with the
/// bookmark that ends the initial events; one that does not refuses the
/// parameter or sends nothing.
pub async fn streams_lists(client: &kube::Client, namespace: &str, side: Side) -> bool {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{WatchEvent, WatchParams};
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let wp = WatchParams::streaming_lists()
        .labels("vcluster.dev/probe=none")
        .timeout(2);
    let streams = match api.watch(&wp, "0").await {
        Ok(stream) => {
            futures::pin_mut!(stream);
            let first = tokio::time::timeout(Duration::from_secs(3), stream.next()).await;
            matches!(
                first,
                Ok(Some(Ok(WatchEvent::Bookmark(b))))
                    if b.metadata.annotations.contains_key("k8s.io/initial-events-end")
            )
        }
        Err(e) => {
            tracing::debug!(?side, error = %e, "streamed-list probe refused");
            false
        }
    };
    if streams {
        tracing::info!(?side, "the API server streams initial lists");
    } else {
        tracing::info!(
            ?side,
            "the API server does not stream lists; listing in pages"
        );
    }
    streams
}
