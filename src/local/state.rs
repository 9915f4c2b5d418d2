//! The state directory's `stack.json`: what is running, where, and whether it
//! is ready. `dev up --detach`, `dev status` and `dev down` read it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::plane::{Plane, Ports};
use super::process;
use super::{LocalError, STATE_FILE};

/// One child process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// Component name.
    pub name: String,
    /// Process id.
    pub pid: u32,
    /// Log file.
    pub log: PathBuf,
}

/// One plane's endpoints.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PlaneRecord {
    /// API server URL.
    pub server: String,
    /// Admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// Ports in use.
    pub ports: Option<Ports>,
}

impl PlaneRecord {
    pub(super) fn new(plane: &Plane, kubeconfig: &Path) -> Self {
        Self {
            server: format!("https://127.0.0.1:{}", plane.ports.apiserver),
            kubeconfig: kubeconfig.to_owned(),
            ports: Some(plane.ports),
        }
    }
}

/// The content of `stack.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StackState {
    /// The process that supervises the stack (`vcluster dev up`).
    pub supervisor_pid: u32,
    /// The state directory.
    pub state_dir: PathBuf,
    /// True once every component is ready.
    pub ready: bool,
    /// Milliseconds from start to ready.
    pub ready_after_ms: Option<u64>,
    /// Fake nodes requested.
    pub nodes: u32,
    /// The host plane.
    pub host: PlaneRecord,
    /// The virtual plane.
    pub vcluster: PlaneRecord,
    /// KWOK's kubelet API port.
    pub kwok_port: Option<u16>,
    /// The syncer's health port, when the stack runs a syncer.
    #[serde(default)]
    pub syncer_port: Option<u16>,
    /// The syncer's front door, when the stack runs a syncer.
    #[serde(default)]
    pub front_door: Option<FrontDoorRecord>,
    /// The syncer's DNS port (UDP and TCP on 127.0.0.1), when it runs one.
    #[serde(default)]
    pub dns_port: Option<u16>,
    /// Every child process, in start order.
    pub processes: Vec<ProcessRecord>,
}

/// The front door of the stack's syncer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FrontDoorRecord {
    /// Its URL.
    pub server: String,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The tenant kubeconfig pointing at it (`vcluster.kubeconfig`).
    pub kubeconfig: PathBuf,
}

impl StackState {
    /// A fresh state owned by this process.
    pub fn new(state_dir: &Path, nodes: u32) -> Self {
        Self {
            supervisor_pid: std::process::id(),
            state_dir: state_dir.to_owned(),
            ready: false,
            ready_after_ms: None,
            nodes,
            host: PlaneRecord::default(),
            vcluster: PlaneRecord::default(),
            kwok_port: None,
            syncer_port: None,
            front_door: None,
            dns_port: None,
            processes: Vec::new(),
        }
    }

    /// Every port the stack listens on.
    pub fn ports(&self) -> Vec<u16> {
        let mut out = Vec::new();
        for plane in [&self.host, &self.vcluster] {
            if let Some(p) = plane.ports {
                out.extend([
                    p.etcd_client,
                    p.etcd_peer,
                    p.apiserver,
                    p.controller_manager,
                ]);
                out.extend(p.scheduler);
            }
        }
        out.extend(self.kwok_port);
        out.extend(self.syncer_port);
        out.extend(self.front_door.as_ref().map(|f| f.port));
        out.extend(self.dns_port);
        out
    }

    /// Writes `stack.json` atomically.
    pub fn save(&self) -> Result<(), LocalError> {
        let path = self.state_dir.join(STATE_FILE);
        let tmp = self.state_dir.join(format!("{STATE_FILE}.tmp"));
        let json = serde_json::to_string_pretty(self).map_err(|source| LocalError::State {
            path: path.clone(),
            source,
        })?;
        super::write_public(&tmp, &json)?;
        std::fs::rename(&tmp, &path).map_err(|source| LocalError::Io {
            what: format!("write {}", path.display()),
            source,
        })
    }

    /// Reads `stack.json`; `Ok(None)` when there is none.
    pub fn load(state_dir: &Path) -> Result<Option<Self>, LocalError> {
        let path = state_dir.join(STATE_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(LocalError::Io {
                    what: format!("read {}", path.display()),
                    source,
                });
            }
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| LocalError::State { path, source })
    }

    /// True when the supervisor recorded here is still running.
    pub fn supervisor_alive(&self) -> bool {
        process::alive(self.supervisor_pid)
            && process::cmdline(self.supervisor_pid).is_some_and(|c| c.contains("dev"))
    }

    /// The children still alive that are ours: same pid, and a command line
    /// that names this state directory (so a reused pid is never touched).
    pub fn live_children(&self) -> Vec<&ProcessRecord> {
        let dir = self.state_dir.display().to_string();
        self.processes
            .iter()
            .filter(|p| process::alive(p.pid))
            .filter(|p| process::cmdline(p.pid).is_some_and(|c| c.contains(&dir)))
            .collect()
    }
}

/// Refuses a state directory that is in use or stale; otherwise creates it.
pub(super) fn claim(state_dir: &Path) -> Result<(), LocalError> {
    if let Some(state) = StackState::load(state_dir)? {
        if state.supervisor_alive() {
            return Err(LocalError::AlreadyRunning {
                dir: state_dir.to_owned(),
                pid: state.supervisor_pid,
            });
        }
        return Err(LocalError::Stale {
            dir: state_dir.to_owned(),
            pid: state.supervisor_pid,
        });
    }
    std::fs::create_dir_all(state_dir).map_err(|source| LocalError::Io {
        what: format!("create {}", state_dir.display()),
        source,
    })
}

/// Removes everything in the state directory but the logs.
pub fn release(state_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.file_name().is_some_and(|n| n == "logs") {
            continue;
        }
        let _ = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
    }
}

/// The line of a log tail most likely to explain a failure: the last one that
/// mentions an error, else the last non-empty one.
pub fn meaningful_line(tail: &str) -> String {
    let lines: Vec<&str> = tail
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .rev()
        .find(|l| {
            let lower = l.to_ascii_lowercase();
            lower.contains("error")
                || lower.contains("fatal")
                || lower.contains("address already in use")
        })
        .or(lines.last())
        .map(|l| l.chars().take(400).collect())
        .unwrap_or_else(|| "no output".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meaningful_line_prefers_errors() {
        let tail = "I0101 starting\nE0101 listen tcp 127.0.0.1:6443: bind: address already in use\nI0101 shutting down\n";
        assert!(meaningful_line(tail).contains("address already in use"));
        assert_eq!(meaningful_line("a\nb\n\n"), "b");
        assert_eq!(meaningful_line(""), "no output");
    }

    #[test]
    fn state_round_trips_and_claim_detects_stale() {
        let dir = tempfile::tempdir().unwrap();
        claim(dir.path()).unwrap();
        let mut st = StackState::new(dir.path(), 2);
        // A pid that cannot be running: the directory is stale.
        st.supervisor_pid = u32::MAX - 1;
        st.save().unwrap();
        let back = StackState::load(dir.path()).unwrap().unwrap();
        assert_eq!(back.nodes, 2);
        let err = claim(dir.path()).unwrap_err().to_string();
        assert!(err.starts_with("stale state directory"), "{err}");
        release(dir.path());
        assert!(StackState::load(dir.path()).unwrap().is_none());
        claim(dir.path()).unwrap();
    }
}
