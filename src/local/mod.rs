//! The embedded default: real local control planes for development and tests.
//!
//! [`Stack::start`] brings up, on 127.0.0.1 with free ports, a **host** plane
//! (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, and KWOK
//! managing fake Nodes) and a **virtual** plane (etcd, kube-apiserver,
//! kube-controller-manager configured like the k3s server). The binaries are
//! built from pinned Go modules by `e2e/kube/build.sh` (`make kube-bins`).
//!
//! Each plane has its own etcd, so either can be restarted or compacted alone
//! in fault runs. This module owns the pins and binaries, and its parts own
//! the rest: [`ports`] (which component listens where), `plane` (one
//! plane's PKI and arguments), `stack` (the processes), `boot` (the start-up
//! order), `syncer` (the syncer beside the planes), `probe` (readiness
//! checks), `kwok`, `restart`, `state` and [`storage`] (the host's default
//! StorageClass and its hostPath provisioner). Nothing here serves production
//! except the plane definition, which [`crate::control_plane`] reuses so the
//! chart's `k8s` distro runs the same virtual plane.

mod boot;
mod kwok;
mod netns;
pub mod node;
mod node_files;
mod node_teardown;
mod plane;
pub mod ports;
mod probe;
pub mod process;
mod restart;
mod stack;
mod state;
/// The line of a failing tool's output that explains it (used for helm's stderr too).
pub(crate) use state::meaningful_line;
pub mod storage;
mod syncer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use kwok::COMPLETE_DELAY_ANNOTATION as KWOK_COMPLETE_DELAY_ANNOTATION;
pub(crate) use plane::Plane;
pub use plane::{Datastore, Ports, Role, VIRTUAL_DISABLED_CONTROLLERS};
pub use ports::StackPorts;
pub use probe::{api_ready, http_get, http_ok};
pub use restart::request_restart;
pub use stack::{Stack, StackOptions, SyncerSpec};
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
    #[error(transparent)]
    Api(#[from] crate::api::ApiError),
    /// An object the stack creates could not be built.
    #[error("cannot build {what}: {source}")]
    Object {
        /// Which object.
        what: String,
        /// The cause.
        source: serde_json::Error,
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

/// Removes a stopped stack's state (logs stay).
pub fn release_state(state_dir: &Path) {
    node::teardown(state_dir);
    state::release(state_dir);
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
}
