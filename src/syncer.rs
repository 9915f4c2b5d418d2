//! `vcluster syncer`: the process beside the virtual control plane. It
//! assembles the kinds `--sync` selects from their declarations
//! ([`KINDS`], [`crate::sync::assembly`]), answers `/healthz` (alive) and
//! `/readyz` (every engine has finished its initial sync; otherwise it names
//! the kinds still syncing), serves its Prometheus metrics at `/metrics`
//! (see [`crate::sync::metrics`]) and, when configured, the front door.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Api;
use kube::config::Kubeconfig;
use tracing::Instrument as _;

use crate::api::ApiError;
use crate::sync::assembly::Running;
use crate::sync::{
    Assembly, Context, EngineOptions, KindSpec, Names, Settings, Side, certificates, claims,
    config, endpoints, events, ingresses, pods, services, streams_lists,
};
use crate::translate::VclusterName;

/// Every kind the syncer can sync, in `--sync`'s order: adding a kind is its
/// rule file and one line here.
pub const KINDS: &[KindSpec] = &[
    pods::KIND,
    config::CONFIGMAPS,
    config::SECRETS,
    events::KIND,
    services::KIND,
    endpoints::KIND,
    ingresses::KIND,
    claims::KIND,
    certificates::KIND,
];

/// Kinds in [`KINDS`] that sync only when `--sync` names them.
pub const OPT_IN: &[&str] = &["certificates"];

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
    #[error(transparent)]
    Client(#[from] ApiError),
    /// In-cluster configuration is missing.
    #[error("no --host-kubeconfig given and not running in a pod: {0}")]
    InCluster(#[from] kube::config::InClusterError),
    /// The front door failed.
    #[error("front door: {0}")]
    FrontDoor(#[from] crate::proxy::ProxyError),
    /// The owner named by `--owner-statefulset` does not exist.
    #[error(
        "--owner-statefulset {name}: there is no StatefulSet {name} in host namespace {namespace}"
    )]
    OwnerMissing {
        /// The StatefulSet's name.
        name: String,
        /// The host namespace.
        namespace: String,
    },
    /// The DNS server could not start.
    #[error(transparent)]
    Dns(#[from] crate::dns::DnsError),
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
#[derive(Debug, Clone)]
pub struct Kinds(Vec<&'static KindSpec>);

impl PartialEq for Kinds {
    fn eq(&self, other: &Self) -> bool {
        self.names() == other.names()
    }
}

impl Eq for Kinds {}

impl Kinds {
    /// The default `--sync` list: every kind but the [`OPT_IN`] ones
    /// (checked against [`KINDS`] by a test).
    pub const DEFAULT_LIST: &'static str =
        "pods,configmaps,secrets,events,services,endpoints,ingresses,persistentvolumeclaims";

    /// Every kind synced by default.
    pub fn all() -> Self {
        Self(KINDS.iter().filter(|k| !OPT_IN.contains(&k.name)).collect())
    }

    /// Parses a comma-separated list (`pods,configmaps,secrets,events`) and
    /// refuses combinations that cannot work.
    pub fn parse(list: &str, sync_all_configs: bool) -> Result<Self, String> {
        let mut picked: Vec<&'static KindSpec> = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let Some(spec) = KINDS.iter().find(|k| k.name == item) else {
                return Err(format!(
                    "unknown kind {item:?} in --sync (known: {}, {})",
                    Self::DEFAULT_LIST.replace(',', ", "),
                    OPT_IN.join(", ")
                ));
            };
            if !picked.iter().any(|k| k.name == spec.name) {
                picked.push(spec);
            }
        }
        // In the registry's order, whatever order the list gave.
        picked.sort_by_key(|k| KINDS.iter().position(|s| s.name == k.name));
        let kinds = Self(picked);
        for spec in &kinds.0 {
            kinds.check(spec, sync_all_configs)?;
        }
        Ok(kinds)
    }

    fn check(&self, spec: &KindSpec, sync_all_configs: bool) -> Result<(), String> {
        if spec.needs.iter().all(|n| self.has(n)) {
            return Ok(());
        }
        if spec.needs_waived_by_all_configs {
            if sync_all_configs {
                return Ok(());
            }
            return Err(format!(
                "--sync: without {}, {} are synced only with --sync-all-configs",
                spec.needs.join(" and "),
                spec.name
            ));
        }
        Err(format!(
            "--sync: {} need {} ({})",
            spec.name,
            spec.needs.join(" and "),
            spec.because
        ))
    }

    /// True when kind `name` is selected.
    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|k| k.name == name)
    }

    /// The selected kinds' names.
    pub fn names(&self) -> Vec<&'static str> {
        self.0.iter().map(|k| k.name).collect()
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
    /// Concurrent reconciles per kind.
    pub concurrency: usize,
    /// Server-side timeout of each watch call.
    pub watch_timeout_seconds: u32,
    /// Ask for watch bookmarks.
    pub watch_bookmarks: bool,
    /// Use streamed initial lists where the API servers support them.
    pub stream_lists: bool,
    /// What the rules need (full resync period among them).
    pub settings: Settings,
    /// Where `/healthz` and `/readyz` are served.
    pub listen: SocketAddr,
    /// Which kinds sync.
    pub kinds: Kinds,
    /// The front door, when it is served.
    pub front_door: Option<crate::proxy::FrontDoorOptions>,
    /// Init manifests (read and checked) and whether a changed file is applied again.
    pub init: Option<(crate::init::Manifests, bool)>,
    /// Init helm charts (read and checked), installed after the manifests.
    pub init_helm: Option<crate::init::helm::HelmInit>,
    /// The StatefulSet (in the host namespace) that owns every host object
    /// the syncer writes; `None`: they have no owner (the dev stack).
    pub owner_statefulset: Option<String>,
    /// The cluster DNS, when it is served.
    pub dns: Option<crate::dns::DnsOptions>,
    /// Sleep mode.
    pub sleep: crate::sleep::SleepOptions,
}

/// The owner reference to StatefulSet `name` in `namespace`: not a
/// controller reference (the StatefulSet controller would try to release
/// objects its selector does not match) and not blocking the owner's
/// deletion (that would need the `statefulsets/finalizers` permission).
async fn owner_of(
    host: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<OwnerReference, SyncerError> {
    let api: Api<StatefulSet> = Api::namespaced(host.clone(), namespace);
    let sts = api
        .get_metadata_opt(name)
        .await
        .map_err(ApiError::of(format!(
            "cannot read the owner StatefulSet {name} in host namespace {namespace}"
        )))?
        .ok_or_else(|| SyncerError::OwnerMissing {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
        })?;
    Ok(OwnerReference {
        api_version: "apps/v1".into(),
        kind: "StatefulSet".into(),
        name: name.to_owned(),
        uid: sts.metadata.uid.unwrap_or_default(),
        controller: None,
        block_owner_deletion: Some(false),
    })
}

async fn client_from(path: &Path, which: &'static str) -> Result<kube::Client, SyncerError> {
    let kc = Kubeconfig::read_from(path).map_err(|source| SyncerError::Kubeconfig {
        path: path.to_owned(),
        source,
    })?;
    let config = crate::kubeconfig::config(kc).await;
    config.and_then(sync_client).map_err(|e| {
        SyncerError::Client(ApiError::new(
            format!("cannot build a client for the {which} API"),
            e,
        ))
    })
}

/// A client of the syncer's for `config`, without kube's own retry of 429,
/// 503 and 504 (up to 15 times, the backoff growing towards 1000 s): the
/// engine retries and paces by itself (see [`crate::sync::outage`]), and
/// the built-in retry would hide a throttling API server from it while a
/// reconcile held its place for minutes.
fn sync_client(mut config: kube::Config) -> Result<kube::Client, kube::Error> {
    config.default_retry = false;
    kube::Client::try_from(config)
}

/// The host client (kubeconfig or in-cluster) and the virtual one, once the
/// control plane has written its admin kubeconfig (in the pod it appears
/// when the control plane is up).
async fn clients(opts: &SyncerOptions) -> Result<(kube::Client, kube::Client), SyncerError> {
    let host = match &opts.host_kubeconfig {
        Some(p) => client_from(p, "host").await?,
        None => sync_client(kube::Config::incluster()?).map_err(|e| {
            SyncerError::Client(ApiError::new("cannot build a client for the host API", e))
        })?,
    };
    let path = &opts.virtual_kubeconfig;
    let give_up = std::time::Instant::now() + opts.virtual_kubeconfig_wait;
    if !path.exists() && !opts.virtual_kubeconfig_wait.is_zero() {
        tracing::info!(path = %path.display(), "waiting for the virtual control plane's kubeconfig");
        // A file appearing: nothing to subscribe to across container
        // restarts and volume types, so look twice a second.
        while !path.exists() && std::time::Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Ok((host, client_from(path, "virtual").await?))
}

/// The front door's HTTP/2 client for the virtual API; None (HTTP/1.1 only,
/// logged) when the kubeconfig does not allow one.
async fn virtual_http2(path: &Path) -> Option<crate::proxy::pool::Http2Client> {
    let made = match Kubeconfig::read_from(path) {
        Ok(kc) => crate::kubeconfig::config(kc)
            .await
            .map_err(|e| e.to_string())
            .and_then(|c| crate::proxy::pool::Http2Client::new(&c).map_err(|e| e.to_string())),
        Err(e) => Err(e.to_string()),
    };
    match made {
        Ok(Some(c)) => Some(c),
        Ok(None) => {
            tracing::info!(
                "the virtual API is not reached over HTTPS directly: the front door forwards over HTTP/1.1"
            );
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "no HTTP/2 client for the virtual API: the front door forwards over HTTP/1.1");
            None
        }
    }
}

async fn engine_options(opts: &SyncerOptions, ctx: &Context) -> EngineOptions {
    let streams = |client, ns, side| async move {
        opts.stream_lists && streams_lists(client, ns, side).await
    };
    EngineOptions {
        concurrency: opts.concurrency,
        resync: opts.settings.resync,
        watch_timeout_seconds: opts.watch_timeout_seconds,
        watch_bookmarks: opts.watch_bookmarks,
        host_streams_lists: streams(&ctx.host, &opts.host_namespace, Side::Host).await,
        virtual_streams_lists: streams(&ctx.virt, "default", Side::Virtual).await,
    }
}

/// Runs the syncer until the process ends.
pub async fn run(opts: SyncerOptions) -> Result<(), SyncerError> {
    let (host, virt) = clients(&opts).await?;
    let owner = match &opts.owner_statefulset {
        Some(sts) => Some(owner_of(&host, &opts.host_namespace, sts).await?),
        None => None,
    };
    let names = Names::new(opts.name.clone(), opts.host_namespace.clone());
    let ctx = Arc::new(Context::new(names, host.clone(), virt.clone()).with_owner(owner.clone()));
    let engine_opts = engine_options(&opts, &ctx).await;
    let mut settings = opts.settings.clone();
    // The front door's serving CA, read (or made) once: the front door signs
    // with it, and in-pod clients, which reach the virtual API through the
    // front door, trust it.
    let serving_ca = match &opts.front_door {
        Some(_) => Some(
            crate::proxy::tls::serving_ca(
                &host,
                &opts.host_namespace,
                opts.name.as_str(),
                owner.as_ref(),
            )
            .await
            .map_err(|e| SyncerError::FrontDoor(e.into()))?,
        ),
        None => None,
    };
    settings.front_door_ca = serving_ca.as_ref().map(|ca| ca.cert_pem().to_owned());
    let mut assembly = Assembly::new(Arc::clone(&ctx), engine_opts, settings, opts.kinds.names());
    for spec in &opts.kinds.0 {
        (spec.register)(&mut assembly);
    }
    if opts.init.is_some() || opts.init_helm.is_some() {
        let (manifests, charts) = (opts.init.clone(), opts.init_helm.clone());
        let (ctx, kubeconfig) = (Arc::clone(&ctx), opts.virtual_kubeconfig.clone());
        // The charts after the manifests: a chart may need their namespaces.
        let init = async move {
            if let Some((manifests, reapply)) = manifests {
                let span = tracing::info_span!("init_manifests");
                crate::init::run(Arc::clone(&ctx), manifests, reapply)
                    .instrument(span)
                    .await;
            }
            if let Some(charts) = charts {
                let span = tracing::info_span!("init_helm_charts");
                crate::init::helm::run(ctx, charts, kubeconfig)
                    .instrument(span)
                    .await;
            }
        };
        assembly.spawn("init", init);
    }
    let roles = assembly.readiness("default-roles");
    assembly.spawn(
        "default-roles",
        default_roles(virt.clone(), roles).instrument(tracing::info_span!("default_roles")),
    );
    let sleep = assembly.shared::<crate::sleep::Sleep>();
    assembly.spawn(
        "sleep",
        crate::sleep::run(Arc::clone(&sleep), Arc::clone(&ctx), opts.sleep.clone())
            .instrument(tracing::info_span!("sleep")),
    );
    let dns = match opts.dns.clone() {
        Some(d) => Some(crate::dns::register(&mut assembly, d)?),
        None => None,
    };
    let running = assembly.finish();
    tracing::info!(vcluster = %opts.name, host_namespace = %opts.host_namespace, listen = %opts.listen, kinds = ?opts.kinds.names(), "syncer started");
    let health = serve_health(opts.listen, running).instrument(tracing::info_span!("health"));
    let waking_page = {
        let sleep = Arc::clone(&sleep);
        async move {
            match opts.sleep.wake_listen {
                Some(addr) => serve_waking_page(addr, sleep).await,
                None => std::future::pending().await,
            }
        }
        .instrument(tracing::info_span!("waking_page"))
    };
    let dns = async move {
        match dns {
            Some(serve) => serve.await,
            None => std::future::pending().await,
        }
    }
    .instrument(tracing::info_span!("dns"));
    let front_door = async {
        let (Some(fd), Some(ca)) = (opts.front_door.clone(), serving_ca) else {
            return std::future::pending().await;
        };
        let target = crate::proxy::host::HostTarget {
            vcluster: opts.name.clone(),
            namespace: opts.host_namespace.clone(),
            host,
            virt,
            virt_http2: virtual_http2(&opts.virtual_kubeconfig).await,
            owner,
        };
        let activity = crate::proxy::Tracking {
            sleep,
            policy: opts.sleep.policy.clone(),
        };
        crate::proxy::run(target, fd, ca, activity).await
    }
    .instrument(tracing::info_span!("front_door"));
    tokio::select! {
        r = front_door => r.map_err(SyncerError::from),
        r = dns => r.map_err(SyncerError::from),
        r = health => r,
        r = waking_page => r,
    }
}

async fn serve_health(addr: SocketAddr, running: Running) -> Result<(), SyncerError> {
    serve_http(addr, move |path| health_response(path, &running)).await
}

/// The waking page on `addr` while the vcluster sleeps (every path; see
/// [`crate::sleep::waking_page`]).
async fn serve_waking_page(
    addr: SocketAddr,
    sleep: Arc<crate::sleep::Sleep>,
) -> Result<(), SyncerError> {
    serve_http(addr, move |_| {
        let (code, headers, body) = crate::sleep::waking_page(&sleep);
        let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        for (name, value) in headers {
            if let Ok(v) = hyper::header::HeaderValue::from_str(&value) {
                resp.headers_mut().insert(name, v);
            }
        }
        resp
    })
    .await
}

/// Plain HTTP/1 on `addr`, every request answered by `respond(path)`.
async fn serve_http(
    addr: SocketAddr,
    respond: impl Fn(&str) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
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
        let respond = respond.clone();
        let span = tracing::debug_span!("http_connection", listen = %addr);
        tokio::spawn(
            async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let resp = respond(req.uri().path());
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            }
            .instrument(span),
        );
    }
}

fn health_response(path: &str, running: &Running) -> Response<Full<Bytes>> {
    let (code, body, content_type) = match path {
        "/metrics" => (
            StatusCode::OK,
            crate::sync::metrics::global().encode(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        "/healthz" | "/livez" => (StatusCode::OK, "ok".to_owned(), "text/plain"),
        "/readyz" => match running.not_ready().as_slice() {
            [] => (StatusCode::OK, "ok".to_owned(), "text/plain"),
            waiting => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("initial sync in progress: {}", waiting.join(", ")),
                "text/plain",
            ),
        },
        _ => (StatusCode::NOT_FOUND, "not found".to_owned(), "text/plain"),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    resp
}

/// The user-facing ClusterRoles whose rules the virtual controller-manager
/// aggregates (empty until its clusterrole-aggregation controller runs).
const DEFAULT_ROLES: [&str; 3] = ["admin", "edit", "view"];

/// Sets `ready` once the virtual cluster's default roles have rules: until
/// then a RoleBinding to `edit` (a team baseline's, `init.manifests`) grants
/// nothing, and a tenant told the cluster is ready gets 403s. Right after a
/// first start the controller-manager takes seconds to get there (it may
/// restart while the new API's RBAC bootstraps).
async fn default_roles(virt: kube::Client, ready: Arc<crate::sync::feed::Readiness>) {
    let roles: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(virt);
    let started = std::time::Instant::now();
    loop {
        let mut missing = Vec::new();
        for name in DEFAULT_ROLES {
            match roles.get_opt(name).await {
                Ok(Some(r)) if r.rules.as_ref().is_some_and(|r| !r.is_empty()) => {}
                Ok(_) => missing.push(name),
                Err(e) => {
                    tracing::debug!(role = name, error = %e, "cannot read a default role yet");
                    missing.push(name);
                }
            }
        }
        if missing.is_empty() {
            tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "the virtual cluster's default roles are aggregated"
            );
            ready.set();
            return;
        }
        tracing::debug!(?missing, "default roles not aggregated yet");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_lists_are_parsed_and_checked() {
        assert_eq!(Kinds::parse(Kinds::DEFAULT_LIST, false), Ok(Kinds::all()));
        assert_eq!(
            Kinds::parse("pods,configmaps,secrets,events", false)
                .map(|k| (k.has("pods"), k.has("services"))),
            Ok((true, false))
        );
        assert_eq!(
            Kinds::parse("configmaps, secrets", true).map(|k| (k.has("pods"), k.has("configmaps"))),
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

    #[test]
    fn the_default_list_is_every_registered_kind_but_the_opt_in_ones() {
        let names: Vec<_> = KINDS
            .iter()
            .map(|k| k.name)
            .filter(|n| !OPT_IN.contains(n))
            .collect();
        assert_eq!(Kinds::DEFAULT_LIST, names.join(","));
        let with = format!("{},certificates", Kinds::DEFAULT_LIST);
        let kinds = Kinds::parse(&with, false).unwrap();
        assert!(kinds.has("certificates") && !Kinds::all().has("certificates"));
        let err = Kinds::parse("certificate", false).unwrap_err();
        assert!(
            err.contains("certificates"),
            "the opt-in kinds are named: {err}"
        );
    }

    #[test]
    fn readiness_names_the_kinds_still_syncing() {
        let resp = health_response("/readyz", &Running::default());
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            health_response("/nope", &Running::default()).status(),
            StatusCode::NOT_FOUND
        );
    }
}
