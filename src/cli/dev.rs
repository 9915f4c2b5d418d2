//! `vcluster dev up|down|status`: the local stack from the command line.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};

use crate::local::process::{self, Tie};
use crate::local::{self, LocalError, Stack, StackOptions, StackState};

#[derive(Debug, Args)]
pub struct DevArgs {
    #[command(subcommand)]
    command: DevCommand,
}

#[derive(Debug, Args, Clone)]
struct StateDirArg {
    /// The state directory: kubeconfigs, certificates, data and logs.
    #[arg(long, env = "VCLUSTER_DEV_STATE_DIR", default_value = ".vcluster-dev")]
    state_dir: PathBuf,
}

#[derive(Debug, Args, Clone)]
struct UpArgs {
    #[command(flatten)]
    state: StateDirArg,
    /// Where the pinned upstream binaries are (default: the `make kube-bins` cache).
    #[arg(long, env = "VCLUSTER_BIN_DIR")]
    bin_dir: Option<PathBuf>,
    /// Fake nodes KWOK manages in the host cluster.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1000))]
    nodes: u32,
    /// Return once the stack is ready and leave it running in the background.
    #[arg(long)]
    detach: bool,
    /// How long start-up may take, in seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Fixed port for the host API server (default: a free port).
    #[arg(long)]
    host_api_port: Option<u16>,
    /// Fixed port for the virtual cluster's API server (default: a free port).
    #[arg(long)]
    vcluster_api_port: Option<u16>,
    /// An extra argument for both kube-apiservers (repeatable), e.g. --apiserver-arg=--watch-cache=false.
    #[arg(long = "apiserver-arg", allow_hyphen_values = true)]
    apiserver_args: Vec<String>,
    /// A structured authentication configuration (apiserver.config.k8s.io/v1
    /// AuthenticationConfiguration: OIDC issuers, audiences, claim mappings) for
    /// the virtual API server only: single sign-on for the vcluster's tenants.
    #[arg(long, value_name = "FILE")]
    authentication_config: Option<PathBuf>,
    /// Real nodes (kubelet, containerd, kube-proxy in a network namespace of the
    /// stack's own; needs root, `make node-deps` and `make image`): 0 or 1.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1))]
    real_nodes: u32,
    /// Where the real node's images are (default: target/images beside the executable).
    #[arg(long, env = "VCLUSTER_IMAGE_DIR")]
    image_dir: Option<PathBuf>,
    /// What the host plane's API server stores its objects in: etcd, or kine
    /// on SQLite (as k3s hosts run; `make kube-bins` builds kine).
    #[arg(long, default_value = "etcd")]
    host_datastore: local::Datastore,
    /// A service on this machine's 127.0.0.1:PORT (an identity provider, a
    /// chart repository) made reachable from the real node's pods at
    /// 10.246.0.1:PORT (repeatable; with --real-nodes 1).
    #[arg(long = "node-relay", value_name = "PORT")]
    node_relays: Vec<u16>,
    /// Do not run the syncer (only the control planes).
    #[arg(long)]
    no_syncer: bool,
    /// The vcluster name the syncer uses.
    #[arg(long, default_value = "dev")]
    name: String,
    /// The host namespace the vcluster lives in (created if missing).
    #[arg(long, default_value = "vcluster-dev")]
    host_namespace: String,
    /// Resolvers the syncer's DNS asks for names outside the cluster
    /// (comma-separated IP or IP:port; default: those of /etc/resolv.conf).
    #[arg(long, value_delimiter = ',')]
    dns_upstream: Vec<String>,
    /// Internal: run as the background supervisor of a detached stack.
    #[arg(long, hide = true)]
    supervise: bool,
}

#[derive(Debug, Subcommand)]
enum DevCommand {
    /// Start the host and virtual control planes (Ctrl-C stops them).
    Up(UpArgs),
    /// Stop the stack started from the state directory and remove its state (logs stay).
    Down(StateDirArg),
    /// Show what runs and whether it is ready.
    Status(StateDirArg),
    /// Restart one component of a running stack (for fault runs), e.g. host-kube-apiserver.
    Restart(RestartArgs),
}

#[derive(Debug, Args, Clone)]
struct RestartArgs {
    #[command(flatten)]
    state: StateDirArg,
    /// The component, as `vcluster dev status` names it (host-kube-apiserver, vcluster-etcd, ...).
    component: String,
    /// How long the restart may take, in seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

pub fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    // One thread: every child is spawned from the main thread, so the
    // parent-death signal fires only when this process ends.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        match args.command {
            DevCommand::Up(up) if up.detach && !up.supervise => up_detached(&up).await,
            DevCommand::Up(up) => up_foreground(&up).await,
            DevCommand::Down(s) => down(&absolute(&s.state_dir)?).await,
            DevCommand::Status(s) => status(&absolute(&s.state_dir)?).await,
            DevCommand::Restart(r) => restart(&r).await,
        }
    })
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("invalid state directory {}", p.display()))
}

fn options(up: &UpArgs) -> anyhow::Result<StackOptions> {
    if !up.node_relays.is_empty() && up.real_nodes == 0 {
        anyhow::bail!(
            "--node-relay needs --real-nodes 1 (it opens ports inside the real node's namespace)"
        );
    }
    Ok(StackOptions {
        state_dir: absolute(&up.state.state_dir)?,
        bin_dir: match &up.bin_dir {
            Some(d) => absolute(d)?,
            None => local::default_bin_dir(),
        },
        nodes: up.nodes,
        host_api_port: up.host_api_port,
        vcluster_api_port: up.vcluster_api_port,
        timeout: Duration::from_secs(up.timeout),
        apiserver_args: up.apiserver_args.clone(),
        real_nodes: up.real_nodes,
        host_datastore: up.host_datastore,
        authentication_config: up
            .authentication_config
            .as_deref()
            .map(authentication_config)
            .transpose()?,
        image_dir: up.image_dir.as_deref().map(absolute).transpose()?,
        node_relays: up.node_relays.clone(),
        syncer: if up.no_syncer {
            None
        } else {
            crate::translate::VclusterName::new(&up.name)?;
            Some(local::SyncerSpec {
                exe: std::env::current_exe().context("cannot find the vcluster executable")?,
                name: up.name.clone(),
                host_namespace: up.host_namespace.clone(),
                dns_upstreams: up.dns_upstream.clone(),
            })
        },
    })
}

/// The absolute path of an authentication configuration file that can be read
/// (kube-apiserver reads it again when it changes, so it stays where it is).
fn authentication_config(p: &Path) -> anyhow::Result<PathBuf> {
    let abs = std::path::absolute(p)
        .with_context(|| format!("invalid authentication configuration path {}", p.display()))?;
    std::fs::File::open(&abs).with_context(|| {
        format!(
            "cannot read the authentication configuration {}",
            abs.display()
        )
    })?;
    Ok(abs)
}

pub(super) async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

fn ready_banner(state: &StackState) -> String {
    let secs = state.ready_after_ms.unwrap_or(0) as f64 / 1000.0;
    if let Some(fd) = &state.front_door {
        return format!(
            "dev stack ready in {secs:.1}s ({} fake nodes)\n  host:     {}  kubectl --kubeconfig {}\n  vcluster: {}  kubectl --kubeconfig {}  (the syncer's front door)",
            state.nodes,
            state.host.server,
            state.host.kubeconfig.display(),
            fd.server,
            fd.kubeconfig.display(),
        );
    }
    format!(
        "dev stack ready in {secs:.1}s ({} fake nodes)\n  host:     {}  kubectl --kubeconfig {}\n  vcluster: {}  kubectl --kubeconfig {}",
        state.nodes,
        state.host.server,
        state.host.kubeconfig.display(),
        state.vcluster.server,
        state.vcluster.kubeconfig.display(),
    )
}

async fn up_foreground(up: &UpArgs) -> anyhow::Result<ExitCode> {
    let opts = options(up)?;
    let mut stack = Stack::prepare(opts)?;
    let booted = tokio::select! {
        r = stack.boot() => r.map(|()| true),
        () = interrupted() => Ok(false),
    };
    match booted {
        Ok(true) => {}
        Ok(false) => {
            tracing::info!("interrupted during start-up; stopping");
            stack.shutdown().await;
            return Ok(ExitCode::from(130));
        }
        Err(e) => {
            stack.shutdown().await;
            return Err(e.into());
        }
    }
    if !up.supervise {
        say(&ready_banner(stack.state()));
        say("Press Ctrl-C to stop.");
    }
    let code = tokio::select! {
        () = interrupted() => ExitCode::SUCCESS,
        why = stack.watch_children() => {
            tracing::error!(reason = %why, "a component stopped; stopping the stack");
            ExitCode::FAILURE
        }
    };
    stack.shutdown().await;
    tracing::info!("dev stack stopped");
    Ok(code)
}

async fn up_detached(up: &UpArgs) -> anyhow::Result<ExitCode> {
    let opts = options(up)?;
    local::check_binaries(&opts.bin_dir)?;
    if let Some(state) = StackState::load(&opts.state_dir)? {
        let pid = state.supervisor_pid;
        let dir = opts.state_dir.clone();
        return Err(if state.supervisor_alive() {
            LocalError::AlreadyRunning { dir, pid }
        } else {
            LocalError::Stale { dir, pid }
        }
        .into());
    }
    let logs = opts.state_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let log = logs.join("supervisor.log");
    let _ = std::fs::remove_file(&log);
    let exe = std::env::current_exe().context("cannot find the vcluster executable")?;
    let args = supervisor_args(up, &opts);
    let supervisor = process::spawn("supervisor", &exe, &args, &[], &log, Tie::Detached)?;
    wait_supervised(supervisor, &log, up, &opts).await
}

/// The command line of the background `dev up --supervise` for `up`.
fn supervisor_args(up: &UpArgs, opts: &StackOptions) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "dev".into(),
        "up".into(),
        "--supervise".into(),
        format!("--state-dir={}", opts.state_dir.display()),
        format!("--bin-dir={}", opts.bin_dir.display()),
        format!("--nodes={}", opts.nodes),
        format!("--timeout={}", up.timeout),
    ];
    args.extend(opts.host_api_port.map(|p| format!("--host-api-port={p}")));
    if up.no_syncer {
        args.push("--no-syncer".into());
    }
    args.extend(
        up.apiserver_args
            .iter()
            .map(|a| format!("--apiserver-arg={a}")),
    );
    args.push(format!("--real-nodes={}", opts.real_nodes));
    if opts.host_datastore == local::Datastore::Kine {
        args.push("--host-datastore=kine".into());
    }
    args.extend(
        opts.authentication_config
            .as_ref()
            .map(|p| format!("--authentication-config={}", p.display())),
    );
    args.extend(
        opts.image_dir
            .as_ref()
            .map(|d| format!("--image-dir={}", d.display())),
    );
    args.extend(opts.node_relays.iter().map(|p| format!("--node-relay={p}")));
    args.push(format!("--name={}", up.name));
    args.push(format!("--host-namespace={}", up.host_namespace));
    if !up.dns_upstream.is_empty() {
        args.push(format!("--dns-upstream={}", up.dns_upstream.join(",")));
    }
    args.extend(
        opts.vcluster_api_port
            .map(|p| format!("--vcluster-api-port={p}")),
    );
    args
}

/// Waits until the background supervisor reports the stack ready (or fails
/// with its own error line, or times out and is stopped).
async fn wait_supervised(
    mut supervisor: process::Process,
    log: &Path,
    up: &UpArgs,
    opts: &StackOptions,
) -> anyhow::Result<ExitCode> {
    let deadline = Instant::now() + Duration::from_secs(up.timeout + 15);
    loop {
        if let Some(status) = supervisor.exited() {
            let line = process::log_tail(log, 30)
                .lines()
                .rev()
                .find(|l| l.starts_with("error: "))
                .map(|l| l.trim_start_matches("error: ").to_owned())
                .unwrap_or_else(|| {
                    format!(
                        "the stack supervisor exited ({status}); see {}",
                        log.display()
                    )
                });
            bail!("{line}");
        }
        if let Some(state) = StackState::load(&opts.state_dir)?
            && state.ready
            && state.supervisor_pid == supervisor.pid()
        {
            say(&ready_banner(&state));
            say(&format!(
                "Running in the background (supervisor pid {}); stop it with `vcluster dev down --state-dir {}`.",
                state.supervisor_pid,
                opts.state_dir.display()
            ));
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() > deadline {
            supervisor.stop(Duration::from_secs(15)).await;
            bail!(
                "the dev stack did not become ready in {}s; see {}",
                up.timeout,
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn down(state_dir: &Path) -> anyhow::Result<ExitCode> {
    let Some(state) = StackState::load(state_dir)? else {
        say(&format!(
            "no dev stack in {}: nothing to stop",
            state_dir.display()
        ));
        return Ok(ExitCode::SUCCESS);
    };
    if state.supervisor_alive() {
        process::signal(state.supervisor_pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        while process::alive(state.supervisor_pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Whatever is still there (a supervisor that was killed, a stuck child).
    let leftovers = state.live_children();
    for p in &leftovers {
        process::signal(p.pid, rustix::process::Signal::KILL);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while state.live_children().iter().any(|p| process::alive(p.pid)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    local::release_state(state_dir);
    say(&format!("dev stack in {} stopped", state_dir.display()));
    Ok(ExitCode::SUCCESS)
}

async fn status(state_dir: &Path) -> anyhow::Result<ExitCode> {
    let Some(state) = StackState::load(state_dir)? else {
        return Err(LocalError::NotRunning {
            dir: state_dir.to_owned(),
        }
        .into());
    };
    let supervisor = state.supervisor_alive();
    let mut lines = vec![format!(
        "dev stack in {}: {}",
        state_dir.display(),
        match (supervisor, state.ready) {
            (true, true) => "ready",
            (true, false) => "starting",
            (false, _) => "stale (supervisor gone; run `vcluster dev down` to clean up)",
        }
    )];
    lines.push(format!(
        "  {:<33}pid {:<8} {}",
        "supervisor",
        state.supervisor_pid,
        up_down(supervisor)
    ));
    let mut all_up = supervisor;
    for p in &state.processes {
        let alive = process::alive(p.pid);
        all_up &= alive;
        lines.push(format!(
            "  {:<33}pid {:<8} {}",
            p.name,
            p.pid,
            up_down(alive)
        ));
    }
    for (name, plane) in [("host", &state.host), ("vcluster", &state.vcluster)] {
        let ready = local::api_ready(&plane.kubeconfig).await;
        all_up &= ready;
        lines.push(format!(
            "  {:<33}{:<28} {}  kubeconfig {}",
            format!("{name} API"),
            plane.server,
            if ready { "ready" } else { "not ready" },
            plane.kubeconfig.display()
        ));
    }
    if let Some(fd) = &state.front_door {
        let ready = local::api_ready(&fd.kubeconfig).await;
        all_up &= ready;
        lines.push(format!(
            "  {:<33}{:<28} {}  kubeconfig {}",
            "front door",
            fd.server,
            if ready { "ready" } else { "not ready" },
            fd.kubeconfig.display()
        ));
    }
    if let Some(port) = state.syncer_port {
        match local::http_get(port, "/metrics").await {
            Some(text) => {
                lines.push(format!(
                    "  syncer metrics (http://127.0.0.1:{port}/metrics):"
                ));
                lines.extend(
                    crate::sync::metrics::summarize(&text)
                        .into_iter()
                        .map(|l| format!("    {l}")),
                );
            }
            None => lines.push(format!(
                "  syncer metrics: http://127.0.0.1:{port}/metrics does not answer"
            )),
        }
    }
    say(&lines.join("\n"));
    Ok(if all_up && state.ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn restart(r: &RestartArgs) -> anyhow::Result<ExitCode> {
    let dir = absolute(&r.state.state_dir)?;
    let timeout = Duration::from_secs(r.timeout);
    let started = Instant::now();
    let pid = local::request_restart(&dir, &r.component, timeout).await?;
    // An API server counts as restarted once it answers /readyz again.
    let plane = StackState::load(&dir)?.and_then(|s| match r.component.as_str() {
        "host-kube-apiserver" => Some(s.host.kubeconfig),
        "vcluster-kube-apiserver" => Some(s.vcluster.kubeconfig),
        _ => None,
    });
    if let Some(kubeconfig) = plane {
        while !local::api_ready(&kubeconfig).await {
            if started.elapsed() > timeout {
                bail!(
                    "{} restarted (pid {pid}) but is not ready after {}s",
                    r.component,
                    r.timeout
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    say(&format!(
        "{} restarted (pid {pid}) in {:.1}s",
        r.component,
        started.elapsed().as_secs_f64()
    ));
    Ok(ExitCode::SUCCESS)
}

fn up_down(alive: bool) -> &'static str {
    if alive { "running" } else { "gone" }
}
