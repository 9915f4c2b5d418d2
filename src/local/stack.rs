//! A running stack's processes: how it is started and stopped, how children
//! are spawned and recorded in the state file, and how start-up waits on
//! conditions while watching that no child has died.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::plane::Plane;
use super::process::{self, Process, Tie};
use super::{LocalError, ProcessRecord, StackState, check_binaries, probe, restart, state};

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
    /// Where the node's images are (`make image`; default: [`super::node::default_image_dir`]).
    pub image_dir: Option<PathBuf>,
    /// What the host plane's API server stores its objects in (the virtual
    /// plane always runs etcd).
    pub host_datastore: super::Datastore,
    /// A structured authentication configuration for the virtual API server
    /// only (`--authentication-config`: JWT issuers for single sign-on).
    pub authentication_config: Option<PathBuf>,
    /// Ports of services on this machine's loopback (an identity provider,
    /// a chart repository) that the real node's pods reach at
    /// `API_IP:<port>` inside the node's namespace.
    pub node_relays: Vec<u16>,
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
    /// The DNS upstreams (`--dns-upstream`; empty: /etc/resolv.conf's).
    pub dns_upstreams: Vec<String>,
}

/// A running local stack.
#[derive(Debug)]
pub struct Stack {
    pub(super) opts: StackOptions,
    pub(super) processes: Vec<Process>,
    /// How each of `processes` was started (for restarts), same order.
    pub(super) specs: Vec<restart::Spec>,
    pub(super) state: StackState,
    /// The real node's relays, when it runs one.
    pub(super) node: Option<super::node::RealNode>,
    /// The host's volume provisioner ([`super::storage`]).
    pub(super) storage: Option<tokio::task::JoinHandle<()>>,
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
        if opts.host_datastore == super::Datastore::Kine && !opts.bin_dir.join("kine").is_file() {
            return Err(LocalError::MissingBinary {
                name: "kine".into(),
                dir: opts.bin_dir.clone(),
            });
        }
        if opts.real_nodes > 0 {
            let images = opts
                .image_dir
                .clone()
                .unwrap_or_else(super::node::default_image_dir);
            super::node::check_prerequisites(&opts.bin_dir, &images)?;
        }
        state::claim(&opts.state_dir)?;
        Ok(Self {
            state: StackState::new(&opts.state_dir, opts.nodes),
            opts,
            processes: Vec::new(),
            specs: Vec::new(),
            node: None,
            storage: None,
        })
    }

    /// The recorded state (ports, pids, kubeconfig paths).
    pub fn state(&self) -> &StackState {
        &self.state
    }

    pub(super) fn spawn(
        &mut self,
        name: &str,
        binary: &str,
        args: Vec<String>,
    ) -> Result<(), LocalError> {
        self.spawn_with_env(name, binary, args, &[])
    }

    pub(super) fn spawn_with_env(
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
    pub(super) fn spawn_program(
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
    pub(super) fn spawn_per_plane<const N: usize>(
        &mut self,
        planes: [&Plane; N],
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
    pub(super) async fn wait_http_ok(
        &mut self,
        what: &str,
        client: &kube::Client,
        path: &str,
        deadline: Instant,
    ) -> Result<(), LocalError> {
        self.wait_for(what, deadline, || async {
            probe::get_ok(client, path).await
        })
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
    pub(super) async fn wait_for<F, Fut>(
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
        if let Some(task) = self.storage.take() {
            task.abort();
        }
        while let Some(mut p) = self.processes.pop() {
            p.stop(Duration::from_secs(10)).await;
        }
        self.node = None;
        super::node::teardown(&self.opts.state_dir);
        state::release(&self.opts.state_dir);
    }
}

impl Drop for Stack {
    /// A stack dropped without [`Stack::shutdown`] (a panic, an abandoned
    /// future) still leaves no process behind.
    fn drop(&mut self) {
        if let Some(task) = self.storage.take() {
            task.abort();
        }
        for p in &mut self.processes {
            p.kill_now();
        }
    }
}
