//! Child processes of the local stack: spawned with their output in a log
//! file, in their own process group (so a Ctrl-C in the terminal reaches only
//! the supervisor, which stops them in order), and tied to the supervisor's
//! life with `PR_SET_PDEATHSIG`, so they end even if it is killed.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

use super::LocalError;

/// A running child process and where its output goes.
#[derive(Debug)]
pub struct Process {
    name: String,
    log: PathBuf,
    child: Child,
}

/// Options for [`spawn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tie {
    /// End the child when the spawning thread's process ends (children of the supervisor).
    ToParent,
    /// Let the child outlive its parent (the detached supervisor itself).
    Detached,
}

/// Sets the parent-death signal in the child, then checks that the parent did
/// not die before it was set (in which case the child would never be told).
///
/// The signal is SIGKILL: this path is taken only when the supervisor itself
/// was killed, and then every child gets the signal at once. With SIGTERM,
/// etcd would stop under a kube-apiserver still in its graceful shutdown,
/// which then never finishes. Orderly shutdown (API clients first, etcd last)
/// is the supervisor's job.
#[allow(unsafe_code)]
fn tie_to_parent(cmd: &mut Command) {
    let parent = rustix::process::getpid();
    // SAFETY: the closure runs between fork and exec; it only makes two raw
    // system calls (prctl, getppid), which are async-signal-safe, and
    // allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
            if rustix::process::getppid() != Some(parent) {
                return Err(std::io::Error::other(
                    "parent exited before the child started",
                ));
            }
            Ok(())
        });
    }
}

/// Starts `program` with `args`, appending its stdout and stderr to `log`.
pub fn spawn(
    name: &str,
    program: &Path,
    args: &[String],
    env: &[(&str, String)],
    log: &Path,
    tie: Tie,
) -> Result<Process, LocalError> {
    let io_err = |source| LocalError::Io {
        what: format!("open log {}", log.display()),
        source,
    };
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io_err)?;
    let err = out.try_clone().map_err(io_err)?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    if tie == Tie::ToParent {
        tie_to_parent(&mut cmd);
    }
    let child = cmd.spawn().map_err(|source| LocalError::Io {
        what: format!("start {}", program.display()),
        source,
    })?;
    tracing::debug!(process = name, pid = child.id(), "started");
    Ok(Process {
        name: name.to_owned(),
        log: log.to_owned(),
        child,
    })
}

impl Process {
    /// The component name (`host-kube-apiserver`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Asks the process to stop (SIGTERM), waits up to `grace`, then kills it.
    pub async fn stop(&mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        signal(self.pid(), Signal::TERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::warn!(process = %self.name, pid = self.pid(), "did not stop in time; killing");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills the process at once and reaps it (for drop paths).
    pub fn kill_now(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// The last lines of the process's log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }
}

/// Sends `sig` to `pid`, ignoring a process that is already gone.
pub fn signal(pid: u32, sig: Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// True when a process with this pid exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state field follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The command line of `pid`, arguments joined by spaces.
pub fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .map(String::from_utf8_lossy)
            .collect::<Vec<_>>()
            .join(" ")
            .trim_end()
            .to_owned(),
    )
}

/// The last `lines` lines of a log file (at most 64 KiB are read).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
