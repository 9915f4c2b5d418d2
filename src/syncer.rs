//! `vcluster syncer`: the process beside the virtual control plane. It runs
//! one sync engine per kind and answers `/healthz` (alive) and `/readyz`
//! (every engine has finished its initial sync), and serves its Prometheus
//! metrics at `/metrics` (see [`crate::sync::metrics`]).

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
use k8s_openapi::api::networking::v1::Ingress;
use kube::ResourceExt;
use kube::api::Api;
use kube::config::Kubeconfig;

use crate::sync::addresses::AddressIndex;
use crate::sync::cache;
use crate::sync::config::{ConfigRule, Scope};
use crate::sync::endpoints::{EndpointSources, EndpointsRule, SliceRule, tenant_keys};
use crate::sync::ingress_hosts::HostIngresses;
use crate::sync::ingresses::IngressRule;
use crate::sync::nodes::VirtualNodes;
use crate::sync::pods::{PodRule, TokenIndex};
use crate::sync::services::ServiceRule;
use crate::sync::{Context, Engine, EngineOptions, Side, streams_lists};
use crate::translate::ingress::tls_secrets;
use crate::translate::pod::references;
use crate::translate::service::slice_service;
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
    /// Services (and the virtual `default/kubernetes` Service's address).
    pub services: bool,
    /// Endpoints and EndpointSlices of selector-less Services.
    pub endpoints: bool,
    /// Ingresses (and mirrors of the certificates cert-manager issues).
    pub ingresses: bool,
}

impl Kinds {
    /// Every kind.
    pub const ALL: Self = Self {
        pods: true,
        configmaps: true,
        secrets: true,
        events: true,
        services: true,
        endpoints: true,
        ingresses: true,
    };

    /// The default `--sync` list.
    pub const DEFAULT_LIST: &'static str =
        "pods,configmaps,secrets,events,services,endpoints,ingresses";

    /// Parses a comma-separated list (`pods,configmaps,secrets,events`) and
    /// refuses combinations that cannot work.
    pub fn parse(list: &str, sync_all_configs: bool) -> Result<Self, String> {
        let mut k = Self {
            pods: false,
            configmaps: false,
            secrets: false,
            events: false,
            services: false,
            endpoints: false,
            ingresses: false,
        };
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item {
                "pods" => k.pods = true,
                "configmaps" => k.configmaps = true,
                "secrets" => k.secrets = true,
                "events" => k.events = true,
                "services" => k.services = true,
                "endpoints" => k.endpoints = true,
                "ingresses" => k.ingresses = true,
                other => {
                    return Err(format!(
                        "unknown kind {other:?} in --sync (known: {})",
                        Self::DEFAULT_LIST.replace(',', ", ")
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
        if k.endpoints && !k.services {
            return Err("--sync: endpoints belong to Services, so they need services".into());
        }
        if k.ingresses && !(k.services && k.secrets) {
            return Err(
                "--sync: ingresses need services and secrets (their backends and TLS certificates)"
                    .into(),
            );
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
    /// How long to wait for the virtual kubeconfig to appear (zero: not at all).
    pub virtual_kubeconfig_wait: Duration,
    /// Full resync period.
    pub resync: Duration,
    /// Concurrent reconciles per kind.
    pub concurrency: usize,
    /// Server-side timeout of each watch call.
    pub watch_timeout_seconds: u32,
    /// Ask for watch bookmarks.
    pub watch_bookmarks: bool,
    /// Use streamed initial lists where the API servers support them.
    pub stream_lists: bool,
    /// Sync every ConfigMap and Secret, not only referenced ones.
    pub sync_all_configs: bool,
    /// Where `/healthz` and `/readyz` are served.
    pub listen: SocketAddr,
    /// Host name or IP synced pods use for the virtual API; `None`: the
    /// cluster IP of host Service `api_service` (its DNS name until it exists).
    pub api_host: Option<String>,
    /// Port synced pods use for the virtual API.
    pub api_port: u16,
    /// The vcluster's API Service in the host namespace.
    pub api_service: String,
    /// What ingresses may do.
    pub ingress_policy: crate::translate::ingress::IngressPolicy,
    /// Refuse ingress hosts that ingresses outside this vcluster already
    /// serve (needs cluster-wide ingress reads; off without them).
    pub ingress_host_ownership: bool,
    /// The Service types synced to the host.
    pub service_types: crate::policy::service_types::ServiceTypes,
    /// Where tenant-written endpoints may point besides the vcluster's pods.
    pub endpoint_policy: crate::policy::endpoints::EndpointPolicy,
    /// The Pod Security Standards level pods must meet to reach the host.
    pub pod_security: crate::policy::pss::Level,
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
    // In the pod the control plane writes its admin kubeconfig once it is up.
    let give_up = std::time::Instant::now() + opts.virtual_kubeconfig_wait;
    if !opts.virtual_kubeconfig.exists() && !opts.virtual_kubeconfig_wait.is_zero() {
        tracing::info!(path = %opts.virtual_kubeconfig.display(), "waiting for the virtual control plane's kubeconfig");
        while !opts.virtual_kubeconfig.exists() && std::time::Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
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
        host_streams_lists: opts.stream_lists
            && streams_lists(&host, &opts.host_namespace, Side::Host).await,
        virtual_streams_lists: opts.stream_lists
            && streams_lists(&virt, "default", Side::Virtual).await,
    };
    let scope = if opts.sync_all_configs {
        Scope::All
    } else {
        Scope::Referenced
    };

    let kinds = &opts.kinds;
    let mut service_links = None;

    // Virtual Services: the Service engine's cache, or a plain watch when
    // Services are not synced; pods need it complete (service links) first.
    let (services, services_writer) = cache::cache::<Service>();
    let service_engine = Engine::with_virtual_store(
        ServiceRule::new(services.clone(), opts.service_types.clone()),
        Arc::clone(&ctx),
        (services.clone(), services_writer),
    );
    if kinds.services {
        tokio::spawn(Arc::clone(&service_engine).run(engine_opts));
        tokio::spawn(crate::sync::apiservice::run(
            Arc::clone(&ctx),
            opts.api_service.clone(),
        ));
        tokio::spawn(crate::sync::cidr::run(Arc::clone(&ctx), opts.resync));
    } else {
        let (links, links_writer) = cache::cache::<Service>();
        let watch = cache::watch(
            Api::<Service>::all(virt.clone()),
            engine_opts.watcher_config(Side::Virtual),
            links_writer,
            |_| {},
            || {},
        );
        tokio::spawn(watch.for_each(|_| std::future::ready(())));
        links.wait_until_ready().await;
        service_links = Some(links);
    }
    let services_for_links = service_links.unwrap_or_else(|| services.clone());
    // The Service engine's initial sync done: pods created from here on get
    // every Service's links.
    while kinds.services && !service_engine.is_ready() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let api = crate::translate::pod::ApiEndpoint {
        host: match &opts.api_host {
            Some(h) => h.clone(),
            None => crate::sync::apiservice::host_ip(&ctx, &opts.api_service)
                .await
                .ok()
                .flatten()
                .unwrap_or_else(|| format!("{}.{}.svc", opts.api_service, opts.host_namespace)),
        },
        port: opts.api_port,
    };

    let pod_cache = cache::cache::<Pod>();
    let ingress_cache = cache::cache::<Ingress>();
    let configmaps = Engine::new(
        ConfigRule::<ConfigMap>::new(scope, pod_cache.0.clone(), ingress_cache.0.clone()),
        Arc::clone(&ctx),
    );
    let secrets = Engine::new(
        ConfigRule::<Secret>::new(scope, pod_cache.0.clone(), ingress_cache.0.clone()),
        Arc::clone(&ctx),
    );
    let nodes = Arc::new(VirtualNodes::new(virt.clone(), host.clone()));
    let tokens = Arc::new(TokenIndex::default());
    let pods = Engine::with_virtual_store(
        PodRule::new(
            configmaps.host_store(),
            secrets.host_store(),
            Arc::clone(&nodes),
            api,
            services_for_links,
            opts.pod_security,
            Arc::clone(&tokens),
        ),
        Arc::clone(&ctx),
        pod_cache,
    );
    let host_ingresses = Arc::new(HostIngresses::default());
    let ingresses = Engine::with_virtual_store(
        IngressRule::new(opts.ingress_policy.clone(), Arc::clone(&host_ingresses)),
        Arc::clone(&ctx),
        ingress_cache,
    );
    let addresses = Arc::new(AddressIndex::default());
    let endpoint_sources = EndpointSources {
        services: services.clone(),
        types: opts.service_types.clone(),
        policy: opts.endpoint_policy.clone(),
        addresses: Arc::clone(&addresses),
    };
    let endpoints = Engine::new(
        EndpointsRule::new(endpoint_sources.clone()),
        Arc::clone(&ctx),
    );
    let slices = Engine::new(SliceRule::new(endpoint_sources.clone()), Arc::clone(&ctx));
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
        // So does an ingress, for its TLS Secrets.
        let secs = Arc::clone(&secrets);
        ingresses.on_virtual_change(move |ing: &Ingress| {
            let ns = ing.namespace().unwrap_or_default();
            for name in tls_secrets(ing) {
                secs.enqueue(VirtualKey {
                    namespace: ns.clone(),
                    name,
                });
            }
        });
        // A Service that gains or loses its selector re-evaluates its endpoints.
        let (eps, sls) = (Arc::clone(&endpoints), Arc::clone(&slices));
        service_engine.on_virtual_change(move |svc: &Service| {
            let key = VirtualKey {
                namespace: svc.namespace().unwrap_or_default(),
                name: svc.name_any(),
            };
            // Parsed: the cache keeps only the project's own labels at hand.
            for slice in sls.virtual_store().objects_in(Some(&key.namespace)) {
                if slice_service(&slice) == Some(key.name.as_str()) {
                    sls.enqueue(VirtualKey {
                        namespace: key.namespace.clone(),
                        name: slice.name_any(),
                    });
                }
            }
            eps.enqueue(key);
        });
    }

    if kinds.configmaps {
        tokio::spawn(Arc::clone(&configmaps).run(engine_opts));
    }
    if kinds.secrets {
        tokio::spawn(Arc::clone(&secrets).run(engine_opts));
    }
    if kinds.pods {
        tokio::spawn(Arc::clone(&pods).run(engine_opts));
        tokio::spawn(
            Arc::clone(&tokens).run(Arc::clone(&ctx), engine_opts.watcher_config(Side::Host)),
        );
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
    // --- Isolation (issue 18): the watches the endpoint address policy and
    // the ingress host ownership policy read, and what they re-queue. The
    // endpoint engines start once this vcluster's pod IPs are known, the
    // ingress engine once host ingresses are listed (or known unreadable):
    // deciding on a partial view would drop good addresses or let a taken
    // host through.
    if kinds.endpoints {
        let (eps, sls) = (Arc::clone(&endpoints), Arc::clone(&slices));
        let requeue = move || {
            let (e, s) = tenant_keys(
                &endpoint_sources,
                &eps.virtual_store(),
                &sls.virtual_store(),
            );
            e.into_iter().for_each(|k| eps.enqueue(k));
            s.into_iter().for_each(|k| sls.enqueue(k));
        };
        let idx = Arc::clone(&addresses);
        pods.on_virtual_change(move |pod: &Pod| {
            if pod.status.as_ref().is_some_and(|s| s.pod_ip.is_some()) {
                idx.poke();
            }
        });
        tokio::spawn(Arc::clone(&addresses).run(
            host.clone(),
            opts.host_namespace.clone(),
            kinds.pods.then(|| pods.host_store()),
            opts.resync,
            requeue,
        ));
        let (eps, sls, idx) = (
            Arc::clone(&endpoints),
            Arc::clone(&slices),
            Arc::clone(&addresses),
        );
        tokio::spawn(async move {
            idx.wait_until_ready().await;
            tokio::spawn(eps.run(engine_opts));
            sls.run(engine_opts).await;
        });
    }
    if kinds.ingresses {
        let (ing, idx) = (Arc::clone(&ingresses), Arc::clone(&host_ingresses));
        let own_ns = opts.host_namespace.clone();
        let (vc, hc, on) = (opts.name.clone(), host.clone(), opts.ingress_host_ownership);
        tokio::spawn(async move {
            if on {
                let requeue = {
                    let ing = Arc::clone(&ing);
                    move || {
                        for i in ing.virtual_store().entries() {
                            ing.enqueue(VirtualKey {
                                namespace: i.namespace().unwrap_or_default(),
                                name: i.name_any(),
                            });
                        }
                    }
                };
                idx.start(
                    hc,
                    vc,
                    own_ns,
                    engine_opts.watcher_config(Side::Host),
                    requeue,
                )
                .await;
            }
            ing.run(engine_opts).await;
        });
    }
    // --- end of the isolation block.
    if kinds.ingresses {
        tokio::spawn(crate::sync::certs::run(
            Arc::clone(&ctx),
            crate::sync::certs::Sources {
                ingresses: ingresses.virtual_store(),
                host_ingresses: ingresses.host_store(),
                secrets: secrets.virtual_store(),
                ready: {
                    let (i, s) = (Arc::clone(&ingresses), Arc::clone(&secrets));
                    Arc::new(move || i.is_ready() && s.is_ready())
                },
            },
            engine_opts,
        ));
    }
    let ready = {
        let (a, b, c) = (
            Arc::clone(&configmaps),
            Arc::clone(&secrets),
            Arc::clone(&pods),
        );
        let (d, e, f, g) = (
            Arc::clone(&service_engine),
            Arc::clone(&endpoints),
            Arc::clone(&slices),
            Arc::clone(&ingresses),
        );
        let k = *kinds;
        move || {
            (!k.configmaps || a.is_ready())
                && (!k.secrets || b.is_ready())
                && (!k.pods || c.is_ready())
                && (!k.services || d.is_ready())
                && (!k.endpoints || (e.is_ready() && f.is_ready()))
                && (!k.ingresses || g.is_ready())
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
                    if req.uri().path() == "/metrics" {
                        let body = crate::sync::metrics::global().encode();
                        let mut resp = Response::new(Full::new(Bytes::from(body)));
                        resp.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static(
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            ),
                        );
                        return Ok::<_, Infallible>(resp);
                    }
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
        assert_eq!(Kinds::parse(Kinds::DEFAULT_LIST, false), Ok(Kinds::ALL));
        assert_eq!(
            Kinds::parse("pods,configmaps,secrets,events", false).map(|k| (k.pods, k.services)),
            Ok((true, false))
        );
        assert_eq!(
            Kinds::parse("configmaps, secrets", true).map(|k| (k.pods, k.configmaps)),
            Ok((false, true))
        );
        for (bad, why) in [
            ("pods", "pods need configmaps and secrets"),
            ("configmaps", "only with --sync-all-configs"),
            (
                "pods,configmaps,secrets,service",
                "unknown kind \"service\"",
            ),
            ("events", "need pods"),
            ("endpoints", "need services"),
            ("services,ingresses", "need services and secrets"),
        ] {
            let err = Kinds::parse(bad, false).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
