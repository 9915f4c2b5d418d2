//! `vcluster syncer`: the process beside the virtual control plane. It runs
//! one sync engine per kind and answers `/healthz` (alive) and `/readyz`
//! (every engine has finished its initial sync).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::ResourceExt;
use kube::api::Api;
use kube::config::Kubeconfig;
use kube::runtime::reflector;

use crate::sync::config::{ConfigRule, Scope};
use crate::sync::nodes::VirtualNodes;
use crate::sync::pods::PodRule;
use crate::sync::{Context, Engine, EngineOptions};
use crate::translate::pod::references;
use crate::translate::{VclusterName, VirtualKey};

/// Failures that stop the syncer from starting.
#[derive(Debug, thiserror::Error)]
pub enum SyncerError {
    /// A kubeconfig could not be read.
    #[error("cannot read kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: kube::config::KubeconfigError,
    },
    /// A client could not be built.
    #[error("cannot build a client for the {which} API: {source}")]
    Client {
        /// Host or virtual.
        which: &'static str,
        /// The cause.
        source: Box<kube::Error>,
    },
    /// In-cluster configuration is missing.
    #[error("no --host-kubeconfig given and not running in a pod: {0}")]
    InCluster(#[from] kube::config::InClusterError),
    /// The front door failed.
    #[error("front door: {0}")]
    FrontDoor(#[from] crate::proxy::ProxyError),
    /// The health endpoint could not listen.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// Which kinds the syncer syncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kinds {
    /// Pods (and the virtual Nodes they are bound to).
    pub pods: bool,
    /// ConfigMaps.
    pub configmaps: bool,
    /// Secrets.
    pub secrets: bool,
    /// Host events about pods, copied up.
    pub events: bool,
}

impl Kinds {
    /// Every kind.
    pub const ALL: Self = Self {
        pods: true,
        configmaps: true,
        secrets: true,
        events: true,
    };

    /// Parses a comma-separated list (`pods,configmaps,secrets,events`) and
    /// refuses combinations that cannot work.
    pub fn parse(list: &str, sync_all_configs: bool) -> Result<Self, String> {
        let mut k = Self {
            pods: false,
            configmaps: false,
            secrets: false,
            events: false,
        };
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item {
                "pods" => k.pods = true,
                "configmaps" => k.configmaps = true,
                "secrets" => k.secrets = true,
                "events" => k.events = true,
                other => {
                    return Err(format!(
                        "unknown kind {other:?} in --sync (known: pods, configmaps, secrets, events)"
                    ));
                }
            }
        }
        if k.pods && !(k.configmaps && k.secrets) {
            return Err("--sync: pods need configmaps and secrets (the objects they mount)".into());
        }
        if !k.pods && (k.configmaps || k.secrets) && !sync_all_configs {
            return Err(
                "--sync: without pods, configmaps and secrets are synced only with --sync-all-configs".into(),
            );
        }
        if k.events && !k.pods {
            return Err("--sync: events are those of synced pods, so they need pods".into());
        }
        Ok(k)
    }
}

/// How the syncer runs.
#[derive(Debug, Clone)]
pub struct SyncerOptions {
    /// The vcluster's name.
    pub name: VclusterName,
    /// The host namespace it lives in.
    pub host_namespace: String,
    /// Host kubeconfig; `None` for the pod's service account.
    pub host_kubeconfig: Option<PathBuf>,
    /// Virtual kubeconfig (the admin credential the control plane writes).
    pub virtual_kubeconfig: PathBuf,
    /// Full resync period.
    pub resync: Duration,
    /// Concurrent reconciles per kind.
    pub concurrency: usize,
    /// Server-side timeout of each watch call.
    pub watch_timeout_seconds: u32,
    /// Ask for watch bookmarks.
    pub watch_bookmarks: bool,
    /// Sync every ConfigMap and Secret, not only referenced ones.
    pub sync_all_configs: bool,
    /// Where `/healthz` and `/readyz` are served.
    pub listen: SocketAddr,
    /// Where in-cluster clients of synced pods reach the virtual API.
    pub api: crate::translate::pod::ApiEndpoint,
    /// Which kinds sync.
    pub kinds: Kinds,
    /// The front door, when it is served.
    pub front_door: Option<crate::proxy::FrontDoorOptions>,
}

async fn client_from(path: &PathBuf, which: &'static str) -> Result<kube::Client, SyncerError> {
    let kc = Kubeconfig::read_from(path).map_err(|source| SyncerError::Kubeconfig {
        path: path.clone(),
        source,
    })?;
    crate::kubeconfig::client(kc)
        .await
        .map_err(|e| SyncerError::Client {
            which,
            source: Box::new(e),
        })
}

/// Runs the syncer until the process ends.
pub async fn run(opts: SyncerOptions) -> Result<(), SyncerError> {
    let host = match &opts.host_kubeconfig {
        Some(p) => client_from(p, "host").await?,
        None => {
            kube::Client::try_from(kube::Config::incluster()?).map_err(|e| SyncerError::Client {
                which: "host",
                source: Box::new(e),
            })?
        }
    };
    let virt = client_from(&opts.virtual_kubeconfig, "virtual").await?;
    let ctx = Arc::new(Context::new(
        opts.name.clone(),
        opts.host_namespace.clone(),
        host.clone(),
        virt.clone(),
    ));
    let engine_opts = EngineOptions {
        concurrency: opts.concurrency,
        resync: opts.resync,
        watch_timeout_seconds: opts.watch_timeout_seconds,
        watch_bookmarks: opts.watch_bookmarks,
    };
    let scope = if opts.sync_all_configs {
        Scope::All
    } else {
        Scope::Referenced
    };

    // Virtual Services, for the service links of new pods: cached before any
    // pod is synced.
    let (services, services_writer) = reflector::store::<Service>();
    let service_watch = crate::sync::cached_watch(
        Api::<Service>::all(virt.clone()),
        engine_opts.watcher_config(),
        services_writer,
    );
    tokio::spawn(service_watch.for_each(|_| std::future::ready(())));
    // If the writer is dropped the watch task ended; nothing more to wait for.
    let _ = services.wait_until_ready().await;

    let pod_cache = reflector::store::<Pod>();
    let configmaps = Engine::new(
        ConfigRule::<ConfigMap>::new(scope, pod_cache.0.clone()),
        Arc::clone(&ctx),
    );
    let secrets = Engine::new(
        ConfigRule::<Secret>::new(scope, pod_cache.0.clone()),
        Arc::clone(&ctx),
    );
    let nodes = Arc::new(VirtualNodes::new(virt.clone(), host.clone()));
    let pods = Engine::with_virtual_store(
        PodRule::new(
            configmaps.host_store(),
            secrets.host_store(),
            Arc::clone(&nodes),
            opts.api.clone(),
            services,
        ),
        Arc::clone(&ctx),
        pod_cache,
    );
    {
        // A pod that appears, changes or goes re-evaluates what it references.
        let (cms, secs) = (Arc::clone(&configmaps), Arc::clone(&secrets));
        pods.on_virtual_change(move |pod: &Pod| {
            let ns = pod.namespace().unwrap_or_default();
            let refs = references(pod);
            let key = |name: &String| VirtualKey {
                namespace: ns.clone(),
                name: name.clone(),
            };
            refs.configmaps
                .iter()
                .chain(&refs.optional_configmaps)
                .for_each(|n| cms.enqueue(key(n)));
            refs.secrets
                .iter()
                .chain(&refs.optional_secrets)
                .for_each(|n| secs.enqueue(key(n)));
        });
    }

    let kinds = &opts.kinds;
    if kinds.configmaps {
        tokio::spawn(Arc::clone(&configmaps).run(engine_opts));
    }
    if kinds.secrets {
        tokio::spawn(Arc::clone(&secrets).run(engine_opts));
    }
    if kinds.pods {
        tokio::spawn(Arc::clone(&pods).run(engine_opts));
        let (nodes, host_pods) = (Arc::clone(&nodes), pods.host_store());
        tokio::spawn(async move { nodes.maintain(host_pods, Duration::from_secs(10)).await });
        if kinds.events {
            tokio::spawn(crate::sync::events::run(
                Arc::clone(&ctx),
                pods.host_store(),
                pods.virtual_store(),
            ));
        }
    }
    let ready = {
        let (a, b, c) = (
            Arc::clone(&configmaps),
            Arc::clone(&secrets),
            Arc::clone(&pods),
        );
        let k = *kinds;
        move || {
            (!k.configmaps || a.is_ready())
                && (!k.secrets || b.is_ready())
                && (!k.pods || c.is_ready())
        }
    };
    tracing::info!(vcluster = %opts.name, host_namespace = %opts.host_namespace, listen = %opts.listen, "syncer started");
    if let Some(fd) = opts.front_door.clone() {
        let target = crate::proxy::host::HostTarget {
            vcluster: opts.name.clone(),
            namespace: opts.host_namespace.clone(),
            host: host.clone(),
            virt: virt.clone(),
        };
        tokio::select! {
            r = crate::proxy::run(target, fd) => return r.map_err(SyncerError::from),
            r = serve_health(opts.listen, ready) => return r,
        }
    }
    serve_health(opts.listen, ready).await
}

async fn serve_health(
    addr: SocketAddr,
    ready: impl Fn() -> bool + Clone + Send + Sync + 'static,
) -> Result<(), SyncerError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| SyncerError::Listen { addr, source })?;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let ready = ready.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let ready = ready.clone();
                async move {
                    let (code, body) = match req.uri().path() {
                        "/healthz" | "/livez" => (StatusCode::OK, "ok"),
                        "/readyz" if ready() => (StatusCode::OK, "ok"),
                        "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, "initial sync in progress"),
                        _ => (StatusCode::NOT_FOUND, "not found"),
                    };
                    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                    *resp.status_mut() = code;
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_lists_are_parsed_and_checked() {
        assert_eq!(
            Kinds::parse("pods,configmaps,secrets,events", false),
            Ok(Kinds::ALL)
        );
        assert_eq!(
            Kinds::parse("configmaps, secrets", true).map(|k| (k.pods, k.configmaps)),
            Ok((false, true))
        );
        for (bad, why) in [
            ("pods", "pods need configmaps and secrets"),
            ("configmaps", "only with --sync-all-configs"),
            (
                "pods,configmaps,secrets,services",
                "unknown kind \"services\"",
            ),
            ("events", "need pods"),
        ] {
            let err = Kinds::parse(bad, false).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
