//! The embedded default: real local control planes for development and tests.
//!
//! [`Stack::start`] brings up, on 127.0.0.1 with free ports, a **host** plane
//! (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, and KWOK
//! managing fake Nodes) and a **virtual** plane (etcd, kube-apiserver,
//! kube-controller-manager configured like the k3s server). The binaries are
//! built from pinned Go modules by `e2e/kube/build.sh` (`make kube-bins`).
//!
//! Each plane has its own etcd, so either can be restarted or compacted alone
//! in fault runs. Nothing here is used by the production syncer path.

mod kwok;
mod netns;
pub mod node;
mod plane;
pub mod process;
mod restart;
mod state;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::config::Kubeconfig;

use plane::Plane;
pub use plane::{Ports, Role, VIRTUAL_DISABLED_CONTROLLERS};
use process::{Process, Tie};
pub use restart::request_restart;
pub use state::{FrontDoorRecord, ProcessRecord, StackState};

/// The pinned upstream versions, from `e2e/kube/versions.env`.
pub const VERSIONS_ENV: &str = include_str!("../../e2e/kube/versions.env");

/// The upstream binaries the stack runs.
pub const BINARIES: &[&str] = &[
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
];

/// Name of the state file inside the state directory.
pub const STATE_FILE: &str = "stack.json";

/// Errors of the local stack. Each renders as one line that names the problem.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// A pinned upstream binary is missing.
    #[error(
        "{name} not found in {dir}: run `make kube-bins` to build the pinned upstream binaries"
    )]
    MissingBinary {
        /// Binary name.
        name: String,
        /// Directory searched.
        dir: PathBuf,
    },
    /// A requested port is taken.
    #[error("port {port} on 127.0.0.1 is already in use")]
    PortInUse {
        /// The port.
        port: u16,
    },
    /// A stack is already running from this state directory.
    #[error(
        "a dev stack is already running from {dir} (supervisor pid {pid}): see `vcluster dev status`, or stop it with `vcluster dev down`"
    )]
    AlreadyRunning {
        /// State directory.
        dir: PathBuf,
        /// Supervisor pid.
        pid: u32,
    },
    /// The state directory belongs to a stack that is gone.
    #[error(
        "stale state directory {dir}: its stack (supervisor pid {pid}) is no longer running; clean it up with `vcluster dev down --state-dir {dir}`"
    )]
    Stale {
        /// State directory.
        dir: PathBuf,
        /// Supervisor pid recorded there.
        pid: u32,
    },
    /// `vcluster dev restart` named a component the stack does not run.
    #[error("the dev stack has no component {name:?} (known: {known})")]
    UnknownComponent {
        /// The name given.
        name: String,
        /// The components it runs.
        known: String,
    },
    /// No stack in this state directory.
    #[error("no dev stack in {dir}: start one with `vcluster dev up`")]
    NotRunning {
        /// State directory.
        dir: PathBuf,
    },
    /// A process ended while the stack was starting.
    #[error("{name} exited during start-up ({status}): {last_line} (full log: {log})")]
    Exited {
        /// Component name.
        name: String,
        /// Exit status.
        status: String,
        /// The last meaningful line of its log.
        last_line: String,
        /// Its log file.
        log: PathBuf,
    },
    /// Something did not become ready in time.
    #[error("timed out after {secs}s waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The limit.
        secs: u64,
    },
    /// A file-system or process operation failed.
    #[error("cannot {what}: {source}")]
    Io {
        /// What was attempted.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// PKI generation failed.
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    /// A kubeconfig could not be rendered.
    #[error(transparent)]
    Kubeconfig(#[from] crate::kubeconfig::KubeconfigError),
    /// A Kubernetes API call failed.
    #[error("{what}: {source}")]
    Kube {
        /// What was attempted.
        what: String,
        /// The cause.
        source: Box<kube::Error>,
    },
    /// The real node cannot start (missing packages, root, images).
    #[error("{0}")]
    RealNode(String),
    /// The state file could not be read or written.
    #[error("state file {path}: {source}")]
    State {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LocalError {
    let what = what.into();
    move |source| LocalError::Io { what, source }
}

/// Writes a file readable only by its owner (keys, kubeconfigs).
pub(crate) fn write_private(path: &Path, contents: &str) -> Result<(), LocalError> {
    crate::kubeconfig::write_private(path, contents)
        .map_err(io_err(format!("write {}", path.display())))
}

/// Writes a file anyone may read (certificates, public keys, configuration).
pub(crate) fn write_public(path: &Path, contents: &str) -> Result<(), LocalError> {
    std::fs::write(path, contents).map_err(io_err(format!("write {}", path.display())))
}

/// Parses `KEY=value` lines of `versions.env`.
pub fn pinned_versions() -> BTreeMap<String, String> {
    VERSIONS_ENV
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// The directory name that identifies one set of pins; `build.sh` uses the same.
pub fn pins_key() -> String {
    let v = pinned_versions();
    let get = |k: &str| {
        v.get(k)
            .map(String::as_str)
            .unwrap_or("unpinned")
            .to_owned()
    };
    format!(
        "k8s-{}_etcd-{}_kwok-{}_helm-{}",
        get("KUBERNETES_VERSION"),
        get("ETCD_VERSION"),
        get("KWOK_VERSION"),
        get("HELM_VERSION")
    )
}

/// Where `make kube-bins` puts the pinned binaries:
/// `$VCLUSTER_CACHE_DIR` or `$XDG_CACHE_HOME/vcluster` or `~/.cache/vcluster`, then `<pins>/bin`.
pub fn default_bin_dir() -> PathBuf {
    let root = std::env::var_os("VCLUSTER_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|x| PathBuf::from(x).join("vcluster")))
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/"))
                .join(".cache/vcluster")
        });
    root.join(pins_key()).join("bin")
}

/// Checks that every binary the stack needs is in `dir`.
pub fn check_binaries(dir: &Path) -> Result<(), LocalError> {
    for name in BINARIES {
        if !dir.join(name).is_file() {
            return Err(LocalError::MissingBinary {
                name: (*name).to_owned(),
                dir: dir.to_owned(),
            });
        }
    }
    Ok(())
}

/// How to start a stack.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// The state directory (kubeconfigs, PKI, data, logs).
    pub state_dir: PathBuf,
    /// Where the upstream binaries are.
    pub bin_dir: PathBuf,
    /// How many fake nodes KWOK manages in the host.
    pub nodes: u32,
    /// A fixed port for the host API server (default: a free one).
    pub host_api_port: Option<u16>,
    /// A fixed port for the virtual API server (default: a free one).
    pub vcluster_api_port: Option<u16>,
    /// How long start-up may take.
    pub timeout: Duration,
    /// The syncer to run beside the planes, if any.
    pub syncer: Option<SyncerSpec>,
    /// Extra arguments for both kube-apiservers (for example
    /// `--watch-cache=false` in fault tests).
    pub apiserver_args: Vec<String>,
    /// Real nodes (kubelet + containerd) beside the fake ones: 0 or 1.
    pub real_nodes: u32,
    /// Where the node's images are (`make image`; default: [`node::default_image_dir`]).
    pub image_dir: Option<PathBuf>,
}

/// The syncer's ports in the stack.
#[derive(Debug, Clone, Copy)]
struct SyncerPorts {
    health: u16,
    front_door: u16,
}

/// How the stack runs the syncer.
#[derive(Debug, Clone)]
pub struct SyncerSpec {
    /// The `vcluster` executable.
    pub exe: PathBuf,
    /// The vcluster name.
    pub name: String,
    /// The host namespace (created if missing).
    pub host_namespace: String,
}

/// Picks ports: the requested ones must be free; the others are free ports the
/// kernel hands out. All are held open until every one is chosen, so they are
/// distinct.
fn pick_ports(requested: &[Option<u16>]) -> Result<Vec<u16>, LocalError> {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    for want in requested {
        let port = want.unwrap_or(0);
        let listener =
            TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).map_err(|source| {
                match source.kind() {
                    std::io::ErrorKind::AddrInUse => LocalError::PortInUse { port },
                    _ => LocalError::Io {
                        what: format!("bind 127.0.0.1:{port}"),
                        source,
                    },
                }
            })?;
        let got = listener
            .local_addr()
            .map_err(io_err("read a bound port"))?
            .port();
        ports.push(got);
        held.push(listener);
    }
    Ok(ports)
}

/// A running local stack.
#[derive(Debug)]
pub struct Stack {
    opts: StackOptions,
    processes: Vec<Process>,
    /// How each of `processes` was started (for restarts), same order.
    specs: Vec<restart::Spec>,
    state: StackState,
    /// The real node's relays, when it runs one.
    node: Option<node::RealNode>,
}

async fn client_for(kubeconfig_yaml: &str, what: &str) -> Result<kube::Client, LocalError> {
    let kube_err = |source| LocalError::Kube {
        what: format!("client for {what}"),
        source: Box::new(source),
    };
    let kc = Kubeconfig::from_yaml(kubeconfig_yaml).map_err(|e| kube_err(e.into()))?;
    crate::kubeconfig::client(kc).await.map_err(kube_err)
}

/// A client for a component's self-signed health endpoint.
fn health_client(port: u16) -> Result<kube::Client, LocalError> {
    let url = format!("https://127.0.0.1:{port}")
        .parse()
        .map_err(|_| LocalError::Io {
            what: format!("parse health URL for port {port}"),
            source: std::io::Error::other("invalid URL"),
        })?;
    let mut config = kube::Config::new(url);
    config.accept_invalid_certs = true;
    kube::Client::try_from(config).map_err(|source| LocalError::Kube {
        what: format!("health client for port {port}"),
        source: Box::new(source),
    })
}

async fn get_ok(client: &kube::Client, path: &str) -> bool {
    match http::Request::get(path).body(Vec::new()) {
        Ok(req) => client
            .request_text(req)
            .await
            .is_ok_and(|body| body.trim() == "ok"),
        Err(_) => false,
    }
}

impl Stack {
    /// Starts both planes and waits until they are ready. On failure every
    /// process started so far is stopped before the error is returned.
    pub async fn start(opts: StackOptions) -> Result<Self, LocalError> {
        let mut stack = Self::prepare(opts)?;
        match stack.boot().await {
            Ok(()) => Ok(stack),
            Err(e) => {
                stack.shutdown().await;
                Err(e)
            }
        }
    }

    /// Checks the binaries and claims the state directory, starting nothing.
    /// [`Stack::boot`] then starts the processes; a caller that abandons it
    /// (for example on Ctrl-C) calls [`Stack::shutdown`].
    pub fn prepare(opts: StackOptions) -> Result<Self, LocalError> {
        check_binaries(&opts.bin_dir)?;
        if opts.real_nodes > 0 {
            let images = opts
                .image_dir
                .clone()
                .unwrap_or_else(node::default_image_dir);
            node::check_prerequisites(&opts.bin_dir, &images)?;
        }
        state::claim(&opts.state_dir)?;
        Ok(Self {
            state: StackState::new(&opts.state_dir, opts.nodes),
            opts,
            processes: Vec::new(),
            specs: Vec::new(),
            node: None,
        })
    }

    /// The recorded state (ports, pids, kubeconfig paths).
    pub fn state(&self) -> &StackState {
        &self.state
    }

    fn spawn(&mut self, name: &str, binary: &str, args: Vec<String>) -> Result<(), LocalError> {
        self.spawn_with_env(name, binary, args, &[])
    }

    fn spawn_with_env(
        &mut self,
        name: &str,
        binary: &str,
        args: Vec<String>,
        env: &[(&str, String)],
    ) -> Result<(), LocalError> {
        let program = self.opts.bin_dir.join(binary);
        self.spawn_program(name, &program, args, env)
    }

    /// Starts `program` as child `name`, logging to `logs/<name>.log`, and
    /// records it in the state file.
    fn spawn_program(
        &mut self,
        name: &str,
        program: &Path,
        args: Vec<String>,
        env: &[(&str, String)],
    ) -> Result<(), LocalError> {
        let logs = self.opts.state_dir.join("logs");
        let p = process::spawn(
            name,
            program,
            &args,
            env,
            &logs.join(format!("{name}.log")),
            Tie::ToParent,
        )?;
        self.state.processes.push(ProcessRecord {
            name: name.to_owned(),
            pid: p.pid(),
            log: p.log().to_owned(),
        });
        self.processes.push(p);
        self.specs.push(restart::Spec::new(program, &args, env));
        self.state.save()
    }

    /// Starts `binary` once per plane, named `<plane>-<binary>`, with the
    /// plane's arguments followed by `extra`.
    fn spawn_per_plane(
        &mut self,
        planes: [&Plane; 2],
        binary: &str,
        args: fn(&Plane) -> Vec<String>,
        extra: &[String],
    ) -> Result<(), LocalError> {
        for plane in planes {
            let name = format!("{}-{binary}", plane.role.name());
            let mut all = args(plane);
            all.extend_from_slice(extra);
            self.spawn(&name, binary, all)?;
        }
        Ok(())
    }

    /// Waits until `GET path` answers `ok`.
    async fn wait_http_ok(
        &mut self,
        what: &str,
        client: &kube::Client,
        path: &str,
        deadline: Instant,
    ) -> Result<(), LocalError> {
        self.wait_for(what, deadline, || async { get_ok(client, path).await })
            .await
    }

    /// Fails with the process's own last words if any child has exited.
    fn check_children(&mut self) -> Result<(), LocalError> {
        for p in &mut self.processes {
            if let Some(status) = p.exited() {
                let tail = p.log_tail(40);
                return Err(LocalError::Exited {
                    name: p.name().to_owned(),
                    status: status.to_string(),
                    last_line: state::meaningful_line(&tail),
                    log: p.log().to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Polls `check` until it returns true, failing early when a child exits.
    async fn wait_for<F, Fut>(
        &mut self,
        what: &str,
        deadline: Instant,
        mut check: F,
    ) -> Result<(), LocalError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        loop {
            self.check_children()?;
            if check().await {
                tracing::debug!(what, "ready");
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(LocalError::Timeout {
                    what: what.to_owned(),
                    secs: self.opts.timeout.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts every process and waits until the stack is ready.
    pub async fn boot(&mut self) -> Result<(), LocalError> {
        let started = Instant::now();
        let deadline = started + self.opts.timeout;
        let dir = self.opts.state_dir.clone();
        std::fs::create_dir_all(dir.join("logs"))
            .map_err(io_err(format!("create {}", dir.join("logs").display())))?;

        // host: etcd client+peer, apiserver, kcm, scheduler, kwok;
        // virtual: etcd client+peer, apiserver, kcm; syncer health, front door.
        let p = pick_ports(&[
            None,
            None,
            None,
            self.opts.host_api_port,
            None,
            None,
            None,
            None,
            None,
            self.opts.vcluster_api_port,
            None,
            None,
        ])?;
        let host_ports = Ports {
            etcd_client: p[0],
            etcd_peer: p[1],
            apiserver: p[2],
            controller_manager: p[3],
            scheduler: Some(p[4]),
        };
        let kwok_port = p[5];
        let virtual_ports = Ports {
            etcd_client: p[6],
            etcd_peer: p[7],
            apiserver: p[8],
            controller_manager: p[9],
            scheduler: None,
        };

        let host = Plane::prepare(Role::Host, host_ports, &dir)?;
        let virt = Plane::prepare(Role::Virtual, virtual_ports, &dir)?;
        let host_kc = dir.join("host.kubeconfig");
        // With a syncer, `vcluster.kubeconfig` is the front door's (written
        // once the syncer runs); the direct admin credential is the syncer's.
        let virt_kc = if self.opts.syncer.is_some() {
            virt.dir.join("admin.kubeconfig")
        } else {
            dir.join("vcluster.kubeconfig")
        };
        write_private(&host_kc, &host.admin_kubeconfig)?;
        write_private(&virt_kc, &virt.admin_kubeconfig)?;
        self.state.host = state::PlaneRecord::new(&host, &host_kc);
        self.state.vcluster = state::PlaneRecord::new(&virt, &virt_kc);
        self.state.kwok_port = Some(kwok_port);

        self.spawn_per_plane([&host, &virt], "etcd", Plane::etcd_args, &[])?;
        let mut apiserver_extra = self.opts.apiserver_args.clone();
        if self.opts.real_nodes > 0 {
            apiserver_extra.extend(self.prepare_real_node(deadline).await?);
        }
        self.spawn_per_plane(
            [&host, &virt],
            "kube-apiserver",
            Plane::apiserver_args,
            &apiserver_extra,
        )?;
        let host_client = client_for(&host.admin_kubeconfig, "the host API").await?;
        let virt_client = client_for(&virt.admin_kubeconfig, "the virtual API").await?;
        self.wait_http_ok("host API server /readyz", &host_client, "/readyz", deadline)
            .await?;
        self.wait_http_ok(
            "virtual API server /readyz",
            &virt_client,
            "/readyz",
            deadline,
        )
        .await?;
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "API servers ready"
        );

        self.spawn_per_plane(
            [&host, &virt],
            "kube-controller-manager",
            Plane::controller_manager_args,
            &[],
        )?;
        if let Some(port) = host.ports.scheduler {
            self.spawn(
                "host-kube-scheduler",
                "kube-scheduler",
                host.scheduler_args(port),
            )?;
        }
        let stages = dir.join("kwok-stages.yaml");
        write_public(&stages, kwok::STAGES)?;
        let (kwok_crt, kwok_key) = host.kwok_tls();
        let kwok_dir = host.dir.join("kwok");
        std::fs::create_dir_all(&kwok_dir)
            .map_err(io_err(format!("create {}", kwok_dir.display())))?;
        let logs_file = kwok_dir.join("container.log");
        write_public(&logs_file, kwok::CONTAINER_LOG)?;
        let node_api = dir.join("kwok-node-api.yaml");
        let with_syncer = self.opts.syncer.is_some();
        write_public(
            &node_api,
            &kwok::node_api_config(
                &logs_file,
                &kwok_dir,
                with_syncer.then_some(p[11]),
                with_syncer.then_some(p[10]),
            ),
        )?;
        let mut kwok_args = kwok::args(
            &host.kwok_kubeconfig(),
            &stages,
            kwok_port,
            (&kwok_crt, &kwok_key),
        );
        kwok_args.push(format!("--config={}", node_api.display()));
        self.spawn_with_env(
            "host-kwok",
            "kwok",
            kwok_args,
            // kwok also loads $KWOK_WORKDIR/kwok.yaml (default ~/.kwok): keep the user's out.
            &[("KWOK_WORKDIR", host.dir.join("kwok").display().to_string())],
        )?;
        kwok::create_nodes(&host_client, self.opts.nodes).await?;

        let nodes: Api<Node> = Api::all(host_client.clone());
        let want = self.opts.nodes as usize;
        self.wait_for("KWOK nodes to become Ready", deadline, || {
            let nodes = nodes.clone();
            async move { kwok::ready_nodes(&nodes).await >= want }
        })
        .await?;
        for (what, client) in [
            (
                "host controller-manager (default ServiceAccount)",
                &host_client,
            ),
            (
                "virtual controller-manager (default ServiceAccount)",
                &virt_client,
            ),
        ] {
            let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
            self.wait_for(what, deadline, || {
                let sas = sas.clone();
                async move { sas.get_opt("default").await.ok().flatten().is_some() }
            })
            .await?;
        }
        if let Some(port) = host.ports.scheduler {
            let c = health_client(port)?;
            self.wait_http_ok("host kube-scheduler /healthz", &c, "/healthz", deadline)
                .await?;
        }
        if self.opts.real_nodes > 0 {
            let front_door = self.opts.syncer.is_some().then_some(p[11]);
            self.start_real_node(&host, &host_client, front_door, deadline)
                .await?;
        }
        if let Some(spec) = self.opts.syncer.clone() {
            let ports = SyncerPorts {
                health: p[10],
                front_door: p[11],
            };
            self.start_syncer(&spec, &host_client, &host_kc, &virt_kc, ports, deadline)
                .await?;
            self.open_front_door(&spec, &host_client, ports.front_door, deadline)
                .await?;
        }
        self.state.ready = true;
        self.state.ready_after_ms = Some(started.elapsed().as_millis() as u64);
        self.state.save()?;
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "dev stack ready"
        );
        Ok(())
    }

    async fn start_syncer(
        &mut self,
        spec: &SyncerSpec,
        host_client: &kube::Client,
        host_kc: &Path,
        virt_kc: &Path,
        ports: SyncerPorts,
        deadline: Instant,
    ) -> Result<(), LocalError> {
        let port = ports.health;
        let ns: k8s_openapi::api::core::v1::Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": spec.host_namespace}}))
                .map_err(|source| LocalError::State {
                    path: "host namespace".into(),
                    source,
                })?;
        match Api::all(host_client.clone())
            .create(&post_params(), &ns)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(source) => {
                return Err(LocalError::Kube {
                    what: format!("create host namespace {}", spec.host_namespace),
                    source: Box::new(source),
                });
            }
        }
        self.create_api_service(spec, host_client).await?;
        let args = vec![
            "syncer".to_owned(),
            format!("--name={}", spec.name),
            format!("--host-namespace={}", spec.host_namespace),
            format!("--host-kubeconfig={}", host_kc.display()),
            format!("--virtual-kubeconfig={}", virt_kc.display()),
            format!("--health-listen=127.0.0.1:{port}"),
        ];
        let mut args = args;
        // The virtual plane's client CA, beside its admin kubeconfig.
        if let Some(pki) = virt_kc.parent().map(|d| d.join("pki")) {
            let front_door = ports.front_door;
            args.extend([
                format!("--client-ca-cert={}", pki.join("ca.crt").display()),
                format!("--client-ca-key={}", pki.join("ca.key").display()),
                format!("--front-door-listen=127.0.0.1:{front_door}"),
                format!("--kubeconfig-server=https://127.0.0.1:{front_door}"),
            ]);
        }
        self.spawn_program("syncer", &spec.exe, args, &[])?;
        self.state.syncer_port = Some(port);
        self.state.save()?;
        self.wait_for("syncer /readyz", deadline, || async move {
            http_ok(port, "/readyz").await
        })
        .await
    }

    /// The vcluster's API Service in the host namespace, as the chart makes
    /// it (443 -> the syncer's 8443): its cluster IP is what the virtual
    /// `default/kubernetes` Service shows and synced pods use.
    async fn create_api_service(
        &self,
        spec: &SyncerSpec,
        host_client: &kube::Client,
    ) -> Result<(), LocalError> {
        let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": spec.name, "labels": crate::discovery::labels(&spec.name, "api")},
            "spec": {"selector": crate::discovery::labels(&spec.name, crate::discovery::COMPONENT_CONTROL_PLANE),
                     "ports": [{"name": "https", "port": 443, "targetPort": crate::discovery::FRONT_DOOR_PORT, "protocol": "TCP"}]}
        }))
        .map_err(|source| LocalError::State {
            path: "vcluster Service".into(),
            source,
        })?;
        match Api::namespaced(host_client.clone(), &spec.host_namespace)
            .create(&post_params(), &svc)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(source) => Err(LocalError::Kube {
                what: format!("create the vcluster Service {}", spec.name),
                source: Box::new(source),
            }),
        }
    }

    /// Waits for the front door: its `vc-<name>` Secret becomes the tenant
    /// kubeconfig `vcluster.kubeconfig`, and a stand-in for the vcluster pod
    /// (labelled per the discovery contract; KWOK forwards its port 8443 to
    /// the front door) lets `vcluster list` and `vcluster connect` find it.
    async fn open_front_door(
        &mut self,
        spec: &SyncerSpec,
        host_client: &kube::Client,
        port: u16,
        deadline: Instant,
    ) -> Result<(), LocalError> {
        use k8s_openapi::api::core::v1::{Pod, Secret};
        let secrets: Api<Secret> = Api::namespaced(host_client.clone(), &spec.host_namespace);
        let name = crate::discovery::kubeconfig_secret(&spec.name);
        let read = |secrets: Api<Secret>, name: String| async move {
            secrets
                .get_opt(&name)
                .await
                .ok()
                .flatten()
                .and_then(|s| s.data)
                .and_then(|d| d.get(crate::discovery::KUBECONFIG_KEY).cloned())
                .and_then(|b| String::from_utf8(b.0).ok())
        };
        self.wait_for(&format!("Secret {name} from the syncer"), deadline, || {
            let (secrets, name) = (secrets.clone(), name.clone());
            async move {
                read(secrets, name).await.is_some()
                    && std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok()
            }
        })
        .await?;
        let kubeconfig = read(secrets.clone(), name.clone())
            .await
            .unwrap_or_default();
        let path = self.opts.state_dir.join("vcluster.kubeconfig");
        write_private(&path, &kubeconfig)?;
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": format!("{}-0", spec.name),
                "labels": crate::discovery::labels(&spec.name, crate::discovery::COMPONENT_CONTROL_PLANE),
            },
            // On a KWOK node, which forwards its port 8443 to the front door
            // (tolerating the taint KWOK nodes get beside a real node).
            "spec": {"nodeSelector": {"type": "kwok"},
                     "tolerations": [{"key": node::FAKE_TAINT, "operator": "Exists"}],
                     "containers": [{
                "name": "syncer",
                "image": "vcluster-dev-stand-in",
                "ports": [{"containerPort": crate::discovery::FRONT_DOOR_PORT, "name": "https"}],
            }]},
        }))
        .map_err(|source| LocalError::State {
            path: "control-plane pod".into(),
            source,
        })?;
        match Api::<Pod>::namespaced(host_client.clone(), &spec.host_namespace)
            .create(&post_params(), &pod)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(source) => {
                return Err(LocalError::Kube {
                    what: "create the control-plane stand-in pod".into(),
                    source: Box::new(source),
                });
            }
        }
        self.state.front_door = Some(FrontDoorRecord {
            server: format!("https://127.0.0.1:{port}"),
            port,
            kubeconfig: path,
        });
        self.state.save()
    }

    /// Waits until a child exits unexpectedly (returns its name) or forever.
    /// A child that exits because `vcluster dev restart` asked for it is
    /// started again instead.
    pub async fn watch_children(&mut self) -> String {
        loop {
            for i in 0..self.processes.len() {
                if let Some(status) = self.processes[i].exited() {
                    match self.restart_if_requested(i) {
                        Ok(true) => continue,
                        Ok(false) => {}
                        Err(e) => return format!("restart failed: {e}"),
                    }
                    let p = &self.processes[i];
                    return format!("{} exited ({status}); see {}", p.name(), p.log().display());
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Stops every process, last started first, and removes the state file.
    pub async fn shutdown(&mut self) {
        while let Some(mut p) = self.processes.pop() {
            p.stop(Duration::from_secs(10)).await;
        }
        self.node = None;
        node::teardown(&self.opts.state_dir);
        state::release(&self.opts.state_dir);
    }
}

impl Drop for Stack {
    /// A stack dropped without [`Stack::shutdown`] (a panic, an abandoned
    /// future) still leaves no process behind.
    fn drop(&mut self) {
        for p in &mut self.processes {
            p.kill_now();
        }
    }
}

/// True when `GET path` on 127.0.0.1:`port` (plain HTTP) answers 200.
pub async fn http_ok(port: u16, path: &str) -> bool {
    http_get(port, path).await.is_some()
}

/// The body of `GET path` on 127.0.0.1:`port` (plain HTTP) when it answers
/// 200 within 5 seconds.
pub async fn http_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .ok()?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        Some(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    (head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200")).then(|| body.to_owned())
}

/// The upstream control plane of the chart's `k8s` distro, inside the
/// vcluster pod: the same virtual plane as the dev stack (same flags), on fixed
/// loopback ports, with etcd syncing to disk.
#[derive(Debug, Clone)]
pub struct PodControlPlane {
    /// etcd arguments.
    pub etcd: Vec<String>,
    /// kube-apiserver arguments.
    pub apiserver: Vec<String>,
    /// kube-controller-manager arguments.
    pub controller_manager: Vec<String>,
    /// The admin kubeconfig the syncer uses.
    pub admin_kubeconfig: PathBuf,
    /// The client CA certificate and key (PEM).
    pub client_ca: (PathBuf, PathBuf),
}

/// Ports of [`PodControlPlane`].
pub const POD_PORTS: (u16, u16, u16, u16) = (2379, 2380, 6443, 10257);

/// The files and arguments of the pod's control plane under `dir`;
/// generates the PKI and kubeconfigs when `generate` and they are missing
/// (existing ones are kept: a restart keeps the cluster's identity).
pub fn pod_control_plane(dir: &Path, generate: bool) -> Result<PodControlPlane, LocalError> {
    let (etcd_client, etcd_peer, apiserver, controller_manager) = POD_PORTS;
    let ports = Ports {
        etcd_client,
        etcd_peer,
        apiserver,
        controller_manager,
        scheduler: None,
    };
    let layout = Plane::layout(Role::Virtual, ports, dir);
    let admin_kubeconfig = layout.dir.join("admin.kubeconfig");
    let pki = layout.dir.join("pki");
    let plane = if generate && !pki.join("ca.crt").exists() {
        let p = Plane::prepare(Role::Virtual, ports, dir)?;
        write_private(&admin_kubeconfig, &p.admin_kubeconfig)?;
        p
    } else {
        layout
    };
    Ok(PodControlPlane {
        etcd: plane
            .etcd_args()
            .into_iter()
            .filter(|a| a != "--unsafe-no-fsync=true")
            .collect(),
        apiserver: plane.apiserver_args(),
        controller_manager: plane.controller_manager_args(),
        admin_kubeconfig,
        client_ca: (pki.join("ca.crt"), pki.join("ca.key")),
    })
}

/// Removes a stopped stack's state (logs stay).
pub fn release_state(state_dir: &Path) {
    node::teardown(state_dir);
    state::release(state_dir);
}

/// True when the API server behind an admin kubeconfig file answers `/readyz`.
pub async fn api_ready(kubeconfig: &Path) -> bool {
    let Ok(yaml) = std::fs::read_to_string(kubeconfig) else {
        return false;
    };
    match client_for(&yaml, "status").await {
        Ok(c) => get_ok(&c, "/readyz").await,
        Err(_) => false,
    }
}

/// Create parameters with the project's field manager.
pub(crate) fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(crate::FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_upstream_component_is_pinned() {
        let v = pinned_versions();
        for key in [
            "KUBERNETES_VERSION",
            "ETCD_VERSION",
            "KWOK_VERSION",
            "HELM_VERSION",
        ] {
            let version = v.get(key).map(String::as_str).unwrap_or("");
            assert!(version.starts_with('v'), "{key}={version:?}");
        }
    }

    #[test]
    fn bin_dir_is_where_build_script_puts_binaries() {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/kube/build.sh");
        let out = std::process::Command::new("bash")
            .args([script, "--print-dir"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let printed = String::from_utf8(out.stdout).unwrap();
        assert_eq!(printed.trim(), default_bin_dir().display().to_string());
    }

    #[test]
    fn requested_port_in_use_is_named() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let err = pick_ports(&[None, Some(port)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("port {port} on 127.0.0.1 is already in use")
        );
        let free = pick_ports(&[None, None, None]).unwrap();
        let mut dedup = free.clone();
        dedup.sort_unstable();
        dedup.dedup();
        assert_eq!(dedup.len(), 3, "{free:?}");
    }
}
