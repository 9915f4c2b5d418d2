//! Restarting one component of a running stack (`vcluster dev restart`), for
//! fault runs: the command leaves a request file `restart/<name>` in the
//! state directory and stops the component with SIGTERM, then SIGKILL after
//! [`STOP_GRACE`] (a kube-apiserver otherwise waits a minute for its open
//! watches); the supervisor,
//! seeing that child exit with a request waiting, starts it again with the
//! same command line, log and environment and records the new pid.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::process::{self, Tie};
use super::{LocalError, Stack, StackState};

/// How a child was started.
#[derive(Debug, Clone)]
pub(super) struct Spec {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Spec {
    pub(super) fn new(program: &Path, args: &[String], env: &[(&str, String)]) -> Self {
        Self {
            program: program.to_owned(),
            args: args.to_vec(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        }
    }
}

/// How long a component may take to stop before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

fn request_file(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join("restart").join(name)
}

impl Stack {
    /// Starts child `i` again if a restart of it was requested; `Ok(false)`
    /// when none was (its exit is then a failure of the stack).
    pub(super) fn restart_if_requested(&mut self, i: usize) -> Result<bool, LocalError> {
        let (Some(old), Some(spec)) = (self.processes.get(i), self.specs.get(i)) else {
            return Ok(false);
        };
        let name = old.name().to_owned();
        let request = request_file(&self.opts.state_dir, &name);
        if std::fs::remove_file(&request).is_err() {
            return Ok(false);
        }
        let env: Vec<(&str, String)> = spec
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        let p = process::spawn(
            &name,
            &spec.program,
            &spec.args,
            &env,
            old.log(),
            Tie::ToParent,
        )?;
        if let Some(rec) = self.state.processes.iter_mut().find(|r| r.name == name) {
            rec.pid = p.pid();
        }
        tracing::info!(process = %name, pid = p.pid(), "restarted on request");
        self.processes[i] = p;
        self.state.save()?;
        Ok(true)
    }
}

/// Asks the supervisor of the stack in `state_dir` to restart component
/// `name` (as `vcluster dev status` lists it) and waits until the new process
/// runs; returns its pid.
pub async fn request_restart(
    state_dir: &Path,
    name: &str,
    timeout: Duration,
) -> Result<u32, LocalError> {
    let Some(state) = StackState::load(state_dir)? else {
        return Err(LocalError::NotRunning {
            dir: state_dir.to_owned(),
        });
    };
    if !state.supervisor_alive() {
        return Err(LocalError::Stale {
            dir: state_dir.to_owned(),
            pid: state.supervisor_pid,
        });
    }
    let Some(old) = state.processes.iter().find(|p| p.name == name) else {
        return Err(LocalError::UnknownComponent {
            name: name.to_owned(),
            known: state
                .processes
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    let file = request_file(state_dir, name);
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(super::io_err(format!("create {}", dir.display())))?;
    }
    super::write_public(&file, "")?;
    process::signal(old.pid, rustix::process::Signal::TERM);
    let started = Instant::now();
    let deadline = started + timeout;
    let mut killed = false;
    loop {
        if !killed && started.elapsed() > STOP_GRACE && process::alive(old.pid) {
            process::signal(old.pid, rustix::process::Signal::KILL);
            killed = true;
        }
        let new = StackState::load(state_dir)?
            .and_then(|s| s.processes.into_iter().find(|p| p.name == name))
            .map(|p| p.pid)
            .filter(|pid| *pid != old.pid && process::alive(*pid));
        if let Some(pid) = new {
            return Ok(pid);
        }
        if Instant::now() >= deadline {
            // The request stays: the supervisor acts on it once the process ends.
            return Err(LocalError::Timeout {
                what: format!("{name} to restart"),
                secs: timeout.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
