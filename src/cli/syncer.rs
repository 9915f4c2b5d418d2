//! `vcluster syncer`: flags and environment for [`crate::syncer::run`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use crate::sync::Settings;
use crate::syncer::{self, SyncerOptions};
use crate::translate::VclusterName;
use crate::translate::ingress::{DEFAULT_DENIED_ANNOTATIONS, IngressPolicy};

pub(super) const IN_CLUSTER_NAMESPACE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("init_sources").multiple(true).args(["init_manifests", "init_helm_charts"])))]
pub struct SyncerArgs {
    /// The vcluster's name (a DNS label of at most 40 characters).
    #[arg(long, env = "VCLUSTER_NAME")]
    name: String,
    /// The host namespace the vcluster lives in (default: the pod's own namespace).
    #[arg(long, env = "VCLUSTER_HOST_NAMESPACE")]
    host_namespace: Option<String>,
    /// Kubeconfig for the host API (default: the pod's service account).
    #[arg(long, env = "VCLUSTER_HOST_KUBECONFIG")]
    host_kubeconfig: Option<PathBuf>,
    /// Kubeconfig for the virtual API (the admin credential the control plane writes).
    #[arg(long, env = "VCLUSTER_VIRTUAL_KUBECONFIG")]
    virtual_kubeconfig: PathBuf,
    /// Wait up to this many seconds for the virtual kubeconfig to appear (the
    /// control plane writes it once up; the chart sets 600).
    #[arg(
        long,
        env = "VCLUSTER_VIRTUAL_KUBECONFIG_WAIT_SECONDS",
        default_value_t = 0
    )]
    virtual_kubeconfig_wait_seconds: u64,
    /// Seconds between full resyncs (which also revert drift on the host).
    #[arg(long, env = "VCLUSTER_RESYNC_SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(5..))]
    resync_seconds: u64,
    /// Concurrent reconciles per kind.
    #[arg(long, env = "VCLUSTER_CONCURRENCY", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=512))]
    concurrency: u16,
    /// Server-side timeout of each watch call, in seconds (a new watch follows).
    #[arg(long, env = "VCLUSTER_WATCH_TIMEOUT_SECONDS", default_value_t = 290, value_parser = clap::value_parser!(u32).range(1..=3600))]
    watch_timeout_seconds: u32,
    /// Ask the API servers for watch bookmarks.
    #[arg(long, env = "VCLUSTER_WATCH_BOOKMARKS", default_value_t = true, action = clap::ArgAction::Set)]
    watch_bookmarks: bool,
    /// Receive initial lists as a stream of watch events where the API
    /// server supports it (probed at start); `false` always lists in pages.
    #[arg(long, env = "VCLUSTER_STREAM_LISTS", default_value_t = true, action = clap::ArgAction::Set)]
    stream_lists: bool,
    /// Which kinds sync: a comma-separated subset of
    /// pods,configmaps,secrets,events,services,endpoints,ingresses,persistentvolumeclaims
    /// (the default), and certificates (opt-in: tenant cert-manager
    /// Certificates issued by the host's cert-manager).
    #[arg(
        long = "sync",
        env = "VCLUSTER_SYNC",
        default_value = syncer::Kinds::DEFAULT_LIST
    )]
    sync: String,
    /// Sync every ConfigMap and Secret, not only those pods reference.
    #[arg(long, env = "VCLUSTER_SYNC_ALL_CONFIGS")]
    sync_all_configs: bool,
    /// Host name synced pods use for the virtual API (KUBERNETES_SERVICE_HOST;
    /// default: the cluster IP of the vcluster's host Service, see --api-service).
    #[arg(long, env = "VCLUSTER_API_SERVICE_HOST")]
    api_service_host: Option<String>,
    /// The vcluster's API Service in the host namespace (default: the
    /// vcluster's name); the virtual default/kubernetes Service gets its cluster IP.
    #[arg(long, env = "VCLUSTER_API_SERVICE")]
    api_service: Option<String>,
    /// Ingress annotations refused (comma-separated; `*` matches any run of
    /// characters). Default: every *snippet* annotation and the nginx
    /// annotations that name secrets.
    #[arg(long, env = "VCLUSTER_INGRESS_DENIED_ANNOTATIONS", value_delimiter = ',', default_values_t = DEFAULT_DENIED_ANNOTATIONS.iter().map(|s| (*s).to_owned()))]
    ingress_denied_annotations: Vec<String>,
    /// Hosts ingresses may use (comma-separated `*.suffix` or exact names;
    /// `{name}` stands for the vcluster's name). Default: any host.
    #[arg(long, env = "VCLUSTER_INGRESS_ALLOWED_HOSTS", value_delimiter = ',')]
    ingress_allowed_hosts: Vec<String>,
    /// The host ClusterIssuers tenants' cert-manager Certificates may name
    /// (comma-separated; needed by `--sync ...,certificates`).
    #[arg(
        long,
        env = "VCLUSTER_CERTIFICATE_CLUSTER_ISSUERS",
        value_delimiter = ','
    )]
    certificate_cluster_issuers: Vec<String>,
    /// Refuse an ingress whose host (or TLS host) an ingress outside this
    /// vcluster already serves, first come first served. Needs list/watch
    /// of ingresses cluster-wide; without that read it is off (a warning
    /// says so).
    #[arg(long, env = "VCLUSTER_INGRESS_HOST_OWNERSHIP", default_value_t = true, action = clap::ArgAction::Set)]
    ingress_host_ownership: bool,
    /// Service types synced to the host (comma-separated: ClusterIP,
    /// NodePort, LoadBalancer, ExternalName); others get a Warning and
    /// nothing on the host.
    #[arg(
        long,
        env = "VCLUSTER_ALLOWED_SERVICE_TYPES",
        default_value = "ClusterIP,NodePort,LoadBalancer,ExternalName"
    )]
    allowed_service_types: crate::policy::service_types::ServiceTypes,
    /// Addresses tenant-written Endpoints/EndpointSlices may name besides
    /// this vcluster's own pods (comma-separated CIDRs; default none). The
    /// host's service range, node addresses and pod ranges stay refused.
    #[arg(long, env = "VCLUSTER_ENDPOINTS_ALLOWED_CIDRS", default_value = "", value_parser = crate::policy::endpoints::EndpointPolicy::parse)]
    endpoints_allowed_cidrs: crate::policy::endpoints::EndpointPolicy,
    /// Virtual storage class → host storage class for claims
    /// (comma-separated `virtual=host` pairs); unmapped classes pass as named.
    #[arg(long, env = "VCLUSTER_STORAGE_CLASS_MAP", value_delimiter = ',')]
    storage_class_map: Vec<String>,
    /// The host storage classes claims may use (comma-separated; default:
    /// any). A claim in another class gets a Warning and nothing on the host.
    #[arg(long, env = "VCLUSTER_ALLOWED_STORAGE_CLASSES", value_delimiter = ',')]
    allowed_storage_classes: Vec<String>,
    /// Pod Security Standards level a pod must meet to reach the host:
    /// privileged, baseline or restricted.
    #[arg(
        long,
        env = "VCLUSTER_POD_SECURITY_STANDARD",
        default_value = "baseline"
    )]
    pod_security_standard: crate::policy::pss::Level,
    /// Port synced pods use for the virtual API (KUBERNETES_SERVICE_PORT).
    #[arg(long, env = "VCLUSTER_API_SERVICE_PORT", default_value_t = 443)]
    api_service_port: u16,
    /// How synced pods get their virtual service-account tokens: `shared` (one
    /// host Secret per service account, namespace, audience and lifetime, a
    /// token bound to no object, valid until it expires) or `per-pod` (one
    /// Secret per pod, a token bound to the virtual pod, void once it goes).
    #[arg(long, env = "VCLUSTER_POD_TOKENS", default_value_t = crate::translate::pod::TokenMode::Shared)]
    pod_tokens: crate::translate::pod::TokenMode,
    /// The virtual cluster's client CA certificate (PEM). Setting it turns the
    /// front door on: client certificates it signed authenticate there.
    #[arg(long, env = "VCLUSTER_CLIENT_CA_CERT")]
    client_ca_cert: Option<PathBuf>,
    /// The client CA's private key (PEM: PKCS#8, or SEC1 for P-256 as k3s writes it): signs the admin certificate
    /// of the `vc-<name>` kubeconfig Secret.
    #[arg(long, env = "VCLUSTER_CLIENT_CA_KEY", requires = "client_ca_cert")]
    client_ca_key: Option<PathBuf>,
    /// Address of the front door (HTTPS).
    #[arg(
        long,
        env = "VCLUSTER_FRONT_DOOR_LISTEN",
        default_value = "0.0.0.0:8443"
    )]
    front_door_listen: SocketAddr,
    /// Connections the front door serves at once; more are closed as they arrive.
    #[arg(long, env = "VCLUSTER_FRONT_DOOR_MAX_CONNECTIONS", default_value_t = crate::proxy::MAX_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    front_door_max_connections: u32,
    /// An extra name or IP of the front door's serving certificate (repeatable).
    #[arg(long = "tls-san", env = "VCLUSTER_TLS_SANS", value_delimiter = ',')]
    tls_sans: Vec<String>,
    /// Lifetime of the serving certificate in hours (renewed at two thirds).
    #[arg(long, env = "VCLUSTER_SERVING_CERT_HOURS", default_value_t = 2160, value_parser = clap::value_parser!(u64).range(1..=87_600))]
    serving_cert_hours: u64,
    /// Server URL of the `vc-<name>` kubeconfig (default: the vcluster
    /// Service, https://<name>.<host namespace>.svc:443).
    #[arg(long, env = "VCLUSTER_KUBECONFIG_SERVER")]
    kubeconfig_server: Option<String>,
    /// The StatefulSet in the host namespace that owns every host object the
    /// syncer writes (the chart's own), so the host's garbage collector
    /// removes them when it goes; default: no owner.
    #[arg(long, env = "VCLUSTER_OWNER_STATEFULSET")]
    owner_statefulset: Option<String>,
    /// Serve the virtual cluster's DNS (and point synced pods at it).
    #[arg(long, env = "VCLUSTER_DNS", default_value_t = true, action = clap::ArgAction::Set)]
    dns: bool,
    /// Port of the DNS server (UDP and TCP); the host Service <name>-dns sends 53 here.
    #[arg(long, env = "VCLUSTER_DNS_PORT", default_value_t = crate::discovery::DNS_PORT)]
    dns_port: u16,
    /// Address the DNS server binds.
    #[arg(long, env = "VCLUSTER_DNS_BIND_ADDRESS", default_value = "0.0.0.0")]
    dns_bind_address: std::net::IpAddr,
    /// The virtual cluster's DNS domain.
    #[arg(long, env = "VCLUSTER_CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
    /// Resolvers asked for names outside the cluster (comma-separated IP or
    /// IP:port; default: the nameservers of /etc/resolv.conf).
    #[arg(long, env = "VCLUSTER_DNS_UPSTREAM", value_delimiter = ',', value_parser = crate::dns::forward::parse_upstream)]
    dns_upstream: Vec<SocketAddr>,
    /// Upstream answers the DNS server keeps at most.
    #[arg(long, env = "VCLUSTER_DNS_CACHE_SIZE", default_value_t = 10_000)]
    dns_cache_size: usize,
    /// The host Service sending port 53 to the DNS server (default: <name>-dns).
    #[arg(long, env = "VCLUSTER_DNS_SERVICE")]
    dns_service: Option<String>,
    /// Address of the /healthz and /readyz endpoints.
    #[arg(long, env = "VCLUSTER_HEALTH_LISTEN", default_value = "0.0.0.0:8080")]
    health_listen: SocketAddr,
    /// Manifests (multi-document YAML) applied into the virtual cluster once,
    /// at its first start; the record is ConfigMap kube-system/vcluster-init.
    #[arg(long, env = "VCLUSTER_INIT_MANIFESTS")]
    init_manifests: Option<PathBuf>,
    /// Helm charts (a YAML list: name, namespace, chart, repo, version,
    /// values, bundle) installed into the virtual cluster once, at its first
    /// start, after the init manifests; recorded in the same ConfigMap.
    #[arg(long, env = "VCLUSTER_INIT_HELM_CHARTS")]
    init_helm_charts: Option<PathBuf>,
    /// The helm binary the init charts are installed with (a bare name is
    /// looked up on PATH).
    #[arg(long, env = "VCLUSTER_HELM_BINARY", default_value = "helm")]
    helm_binary: PathBuf,
    /// Sleep after this long without a request from a person through the
    /// front door (`90s`, `30m`, `2h`, `1h30m`): the tenant's pods leave the
    /// host until the next request. Default: off (`vcluster sleep` still works).
    #[arg(long, env = "VCLUSTER_SLEEP_AFTER", value_parser = parse_duration)]
    sleep_after: Option<Duration>,
    /// Serve the waking page here (any path: 503 with Retry-After; a visit
    /// wakes the cluster); while asleep, tenant ingresses on the host point
    /// at it, through port PORT of the vcluster's API Service.
    #[arg(long, env = "VCLUSTER_SLEEP_WAKE_LISTEN")]
    sleep_wake_listen: Option<SocketAddr>,
    /// A virtual CronJob firing while the cluster sleeps wakes it (without
    /// this its pods wait for the next wake).
    #[arg(long, env = "VCLUSTER_SLEEP_WAKE_ON_CRONJOBS")]
    sleep_wake_on_cronjobs: bool,
    /// Count requests of the virtual cluster's service accounts as activity.
    #[arg(long, env = "VCLUSTER_SLEEP_COUNT_SERVICE_ACCOUNTS")]
    sleep_count_service_accounts: bool,
    /// User agents whose requests are not activity (`argocd/*` matches by prefix).
    #[arg(long, env = "VCLUSTER_SLEEP_IGNORE_USER_AGENTS", value_delimiter = ',')]
    sleep_ignore_user_agents: Vec<String>,
    /// Groups whose members' requests are not activity.
    #[arg(long, env = "VCLUSTER_SLEEP_IGNORE_GROUPS", value_delimiter = ',')]
    sleep_ignore_groups: Vec<String>,
    /// Apply the init manifests again when the file has changed since they
    /// were applied, and upgrade an init chart whose entry changed (default:
    /// once, whatever the tenant changed since).
    #[arg(long, env = "VCLUSTER_INIT_REAPPLY", requires = "init_sources")]
    init_reapply: bool,
}

/// A duration such as `90s`, `30m`, `2h` or `1h30m` (at least one second).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?}: use a number with s, m or h (90s, 30m, 1h30m)");
    let mut total = 0u64;
    let mut digits = String::new();
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        total = total.saturating_add(n.saturating_mul(unit));
        digits.clear();
    }
    if !digits.is_empty() || total == 0 {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

pub fn run(args: SyncerArgs) -> anyhow::Result<ExitCode> {
    let name = VclusterName::new(&args.name)?;
    let host_namespace = match args.host_namespace {
        Some(ns) => ns,
        None => std::fs::read_to_string(IN_CLUSTER_NAMESPACE)
            .map(|s| s.trim().to_owned())
            .context("no --host-namespace given and not running in a pod")?,
    };
    let nonempty = |list: Vec<String>| -> Vec<String> {
        list.into_iter().filter(|s| !s.trim().is_empty()).collect()
    };
    let ingress_policy = IngressPolicy::new(
        &name,
        nonempty(args.ingress_denied_annotations),
        nonempty(args.ingress_allowed_hosts),
    );
    let front_door = args
        .client_ca_cert
        .map(|client_ca_cert| crate::proxy::FrontDoorOptions {
            listen: args.front_door_listen,
            max_connections: args.front_door_max_connections as usize,
            client_ca_cert,
            client_ca_key: args.client_ca_key,
            tls_sans: args.tls_sans,
            serving_validity: Duration::from_secs(args.serving_cert_hours * 3600),
            kubeconfig_server: args
                .kubeconfig_server
                .unwrap_or_else(|| format!("https://{name}.{host_namespace}.svc:443")),
        });
    let dns = args.dns.then(|| crate::dns::DnsOptions {
        listen: SocketAddr::new(args.dns_bind_address, args.dns_port),
        domain: args.cluster_domain.clone(),
        upstreams: if args.dns_upstream.is_empty() {
            crate::dns::system_upstreams()
        } else {
            args.dns_upstream.clone()
        },
        cache_size: args.dns_cache_size,
        host_service: args
            .dns_service
            .clone()
            .unwrap_or_else(|| crate::discovery::dns_service(name.as_str())),
    });
    let kinds =
        syncer::Kinds::parse(&args.sync, args.sync_all_configs).map_err(anyhow::Error::msg)?;
    let certificate_cluster_issuers = nonempty(args.certificate_cluster_issuers);
    if kinds.has("certificates") && certificate_cluster_issuers.is_empty() {
        anyhow::bail!(
            "--sync certificates needs --certificate-cluster-issuers: the host ClusterIssuers tenants' Certificates may name"
        );
    }
    let api_service = args.api_service.unwrap_or_else(|| name.to_string());
    let settings = Settings {
        sync_all_configs: args.sync_all_configs,
        api_host: args.api_service_host,
        api_port: args.api_service_port,
        pod_tokens: args.pod_tokens,
        api_service: api_service.clone(),
        ingress_policy,
        certificate_cluster_issuers,
        ingress_host_ownership: args.ingress_host_ownership,
        service_types: args.allowed_service_types,
        endpoint_policy: args.endpoints_allowed_cidrs,
        storage_classes: crate::policy::storage_classes::StorageClassPolicy::new(
            &args.storage_class_map,
            &args.allowed_storage_classes,
        )
        .map_err(anyhow::Error::msg)?,
        pod_security: args.pod_security_standard,
        resync: Duration::from_secs(args.resync_seconds),
        front_door_ca: None,
        cluster_domain: dns.as_ref().map(|d| d.domain.clone()),
        waking_page: args
            .sleep_wake_listen
            .map(|a| (api_service.clone(), i32::from(a.port()))),
    };
    let init = match args.init_manifests {
        Some(file) => {
            let opts = crate::init::InitOptions {
                file,
                reapply: args.init_reapply,
            };
            Some((crate::init::load(&opts)?, opts.reapply))
        }
        None => None,
    };
    let init_helm = match args.init_helm_charts {
        Some(file) => Some(crate::init::helm::HelmInit {
            charts: crate::init::helm::load(&file)?,
            reapply: args.init_reapply,
            helm: args.helm_binary,
        }),
        None => None,
    };
    let sleep = crate::sleep::SleepOptions {
        after: args.sleep_after,
        policy: crate::sleep::ActivityPolicy {
            count_service_accounts: args.sleep_count_service_accounts,
            ignored_user_agents: nonempty(args.sleep_ignore_user_agents),
            ignored_groups: nonempty(args.sleep_ignore_groups),
        },
        service: settings.api_service.clone(),
        wake_listen: args.sleep_wake_listen,
        wake_on_cronjobs: args.sleep_wake_on_cronjobs,
    };
    let opts = SyncerOptions {
        sleep,
        init,
        init_helm,
        kinds,
        settings,
        name,
        host_namespace,
        host_kubeconfig: args.host_kubeconfig,
        virtual_kubeconfig: args.virtual_kubeconfig,
        virtual_kubeconfig_wait: Duration::from_secs(args.virtual_kubeconfig_wait_seconds),
        concurrency: usize::from(args.concurrency),
        watch_timeout_seconds: args.watch_timeout_seconds,
        watch_bookmarks: args.watch_bookmarks,
        stream_lists: args.stream_lists,
        listen: args.health_listen,
        front_door,
        owner_statefulset: args.owner_statefulset,
        dns,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        tokio::select! {
            r = syncer::run(opts) => r.map(|()| ExitCode::SUCCESS).map_err(anyhow::Error::from),
            _ = tokio::signal::ctrl_c() => Ok(ExitCode::SUCCESS),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_read_as_people_write_them() {
        for (text, secs) in [("90s", 90), ("30m", 1800), ("2h", 7200), ("1h30m", 5400)] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs(secs)),
                "{text}"
            );
        }
        for bad in ["", "30", "0s", "5d", "m", "1.5h"] {
            assert!(
                parse_duration(bad)
                    .unwrap_err()
                    .contains("invalid duration"),
                "{bad}"
            );
        }
    }
}
