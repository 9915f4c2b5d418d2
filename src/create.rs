//! `vcluster create`: the chart bundled in this binary installed with the
//! `helm` binary on `PATH`, then a wait for the control plane and the syncer.
//!
//! The chart ships inside the binary ([`CHART`], the repository's `chart/`
//! at build time), so the CLI and the chart it installs always match; `--chart`
//! points at another chart directory. Helm does the install (release records,
//! `helm list`, `helm uninstall` all keep working); this module only decides
//! whether the install may go ahead and when the vcluster is ready.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use include_dir::{Dir, include_dir};

use crate::instances::{self, InstanceError};

/// The repository's `chart/` directory, as it was when this binary was built.
pub static CHART: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/chart");

/// The chart's name in `Chart.yaml`: a release of any other chart is not a vcluster.
pub const CHART_NAME: &str = "vcluster";

/// Failures of `vcluster create`; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// No `helm` binary.
    #[error(
        "helm not found on PATH: vcluster create installs its chart with helm 3 (https://helm.sh/docs/intro/install/)"
    )]
    NoHelm,
    /// The release exists and `--upgrade` was not given.
    #[error(
        "vcluster {name} already exists in namespace {namespace}; pass --upgrade to change its values"
    )]
    Exists {
        /// The release.
        name: String,
        /// Its namespace.
        namespace: String,
    },
    /// A release of that name is another chart's.
    #[error(
        "release {name} in namespace {namespace} is of the chart {chart}, not a vcluster; choose another name"
    )]
    NotVcluster {
        /// The release.
        name: String,
        /// Its namespace.
        namespace: String,
        /// The chart it was installed from.
        chart: String,
    },
    /// Helm refused or failed.
    #[error("helm {action} failed: {message}")]
    Helm {
        /// The helm command (`install`, `upgrade`, `get metadata`).
        action: String,
        /// The first line helm printed on stderr.
        message: String,
    },
    /// The bundled chart could not be written out.
    #[error("cannot write the bundled chart to {path}: {message}")]
    Chart {
        /// Where.
        path: String,
        /// Why.
        message: String,
    },
    /// Not ready within the timeout.
    #[error(
        "vcluster {name} in namespace {namespace} is not ready after {seconds} s: still waiting for {waiting}; see `kubectl -n {namespace} describe pod {name}-0`"
    )]
    Timeout {
        /// The release.
        name: String,
        /// Its namespace.
        namespace: String,
        /// The deadline, seconds.
        seconds: u64,
        /// What it was waiting for.
        waiting: String,
    },
    /// Reading the host failed.
    #[error(transparent)]
    Instance(#[from] InstanceError),
}

/// The `helm` executable on `PATH`.
pub fn find_helm() -> Result<PathBuf, CreateError> {
    let path = std::env::var_os("PATH").ok_or(CreateError::NoHelm)?;
    std::env::split_paths(&path)
        .map(|d| d.join("helm"))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or(CreateError::NoHelm)
}

/// Writes the bundled chart into `dir` and returns the chart's directory.
pub fn write_chart(dir: &Path) -> Result<PathBuf, CreateError> {
    let chart = dir.join(CHART_NAME);
    let err = |e: std::io::Error| CreateError::Chart {
        path: chart.display().to_string(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(&chart).map_err(err)?;
    CHART.extract(&chart).map_err(err)?;
    Ok(chart)
}

/// How helm reaches the host: the flags every helm call gets.
#[derive(Debug, Clone)]
pub struct Helm {
    /// The helm binary.
    pub bin: PathBuf,
    /// `--kubeconfig`, `--kube-context` and `--namespace` as given to `vcluster`.
    pub global: Vec<String>,
}

impl Helm {
    fn run(&self, action: &str, args: &[String]) -> Result<String, CreateError> {
        let out = Command::new(&self.bin)
            .args(args)
            .args(&self.global)
            .output()
            .map_err(|e| CreateError::Helm {
                action: action.to_owned(),
                message: format!("cannot run {}: {e}", self.bin.display()),
            })?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(CreateError::Helm {
            action: action.to_owned(),
            message: first_error_line(&stderr),
        })
    }

    /// The chart name of release `name`, or `None` when there is no such release.
    pub fn release_chart(&self, name: &str) -> Result<Option<String>, CreateError> {
        let args = ["get", "metadata", name, "-o", "json"].map(str::to_owned);
        match self.run("get metadata", &args) {
            Ok(json) => {
                let v: serde_json::Value =
                    serde_json::from_str(&json).map_err(|e| CreateError::Helm {
                        action: "get metadata".to_owned(),
                        message: format!("unreadable answer: {e}"),
                    })?;
                Ok(Some(v["chart"].as_str().unwrap_or("").to_owned()))
            }
            Err(CreateError::Helm { message, .. }) if message.contains("not found") => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The line of helm's stderr that says what went wrong (its `Error:` line,
/// else the first non-empty one).
fn first_error_line(stderr: &str) -> String {
    let lines = || stderr.lines().map(str::trim).filter(|l| !l.is_empty());
    lines()
        .find_map(|l| l.strip_prefix("Error: "))
        .or_else(|| lines().next())
        .unwrap_or("no message")
        .to_owned()
}

/// What `vcluster create` was asked for.
#[derive(Debug, Clone)]
pub struct Request {
    /// The vcluster (= the Helm release).
    pub name: String,
    /// Its host namespace.
    pub namespace: String,
    /// The chart directory (the bundled one written out, or `--chart`).
    pub chart: PathBuf,
    /// `-f` files.
    pub values: Vec<PathBuf>,
    /// `--set` assignments.
    pub set: Vec<String>,
    /// Whether an existing vcluster may be upgraded.
    pub upgrade: bool,
}

/// Decides whether the install may go ahead and runs helm; returns whether
/// it upgraded an existing release.
pub fn install(helm: &Helm, req: &Request) -> Result<bool, CreateError> {
    let existing = helm.release_chart(&req.name)?;
    match existing.as_deref() {
        Some(chart) if chart != CHART_NAME => {
            return Err(CreateError::NotVcluster {
                name: req.name.clone(),
                namespace: req.namespace.clone(),
                chart: chart.to_owned(),
            });
        }
        Some(_) if !req.upgrade => {
            return Err(CreateError::Exists {
                name: req.name.clone(),
                namespace: req.namespace.clone(),
            });
        }
        _ => {}
    }
    let upgrading = existing.is_some();
    let mut args: Vec<String> = if upgrading {
        // Values given before stay unless given again (helm's default for an
        // upgrade would drop them).
        vec!["upgrade".into(), "--reset-then-reuse-values".into()]
    } else {
        vec!["install".into(), "--create-namespace".into()]
    };
    args.push(req.name.clone());
    args.push(req.chart.display().to_string());
    for f in &req.values {
        args.push("--values".into());
        args.push(f.display().to_string());
    }
    for s in &req.set {
        args.push("--set".into());
        args.push(s.clone());
    }
    helm.run(if upgrading { "upgrade" } else { "install" }, &args)?;
    Ok(upgrading)
}

/// One step of the wait, for the progress display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// What is awaited.
    pub what: String,
    /// Its state now.
    pub state: String,
}

/// Where vcluster `name` stands: `None` when ready (its control-plane pod
/// Running and Ready, so every container's probe passes, and its syncer has
/// written the `vc-<name>` kubeconfig Secret), else what it waits for.
pub async fn readiness(
    host: &kube::Client,
    name: &str,
    namespace: &str,
) -> Result<Option<Waiting>, CreateError> {
    match instances::ready_pod(host, name, namespace).await {
        Ok(_) => {}
        Err(InstanceError::NotReady { why, .. }) => {
            return Ok(Some(Waiting {
                what: "the control-plane pod to be Ready".to_owned(),
                state: why,
            }));
        }
        Err(e) => return Err(e.into()),
    }
    match instances::kubeconfig(host, name, namespace).await {
        Ok(_) => Ok(None),
        Err(InstanceError::NotFound { .. } | InstanceError::NotReady { .. }) => Ok(Some(Waiting {
            what: format!(
                "the syncer's kubeconfig Secret {}",
                crate::discovery::kubeconfig_secret(name)
            ),
            state: "not written yet".to_owned(),
        })),
        Err(e) => Err(e.into()),
    }
}

/// Polls [`readiness`] until ready or `timeout`; `progress` is told each
/// change of what it waits for, and every `every` while nothing changes.
pub async fn wait_ready(
    host: &kube::Client,
    name: &str,
    namespace: &str,
    timeout: Duration,
    mut progress: impl FnMut(&Waiting, Duration),
) -> Result<Duration, CreateError> {
    let start = Instant::now();
    let every = Duration::from_secs(15);
    let mut last: Option<(Waiting, Instant)> = None;
    loop {
        let Some(w) = readiness(host, name, namespace).await? else {
            return Ok(start.elapsed());
        };
        let changed = last.as_ref().is_none_or(|(l, _)| *l != w);
        let quiet_for = last.as_ref().map_or(every, |(_, at)| at.elapsed());
        if changed || quiet_for >= every {
            progress(&w, start.elapsed());
            last = Some((w.clone(), Instant::now()));
        }
        if start.elapsed() >= timeout {
            return Err(CreateError::Timeout {
                name: name.to_owned(),
                namespace: namespace.to_owned(),
                seconds: timeout.as_secs(),
                waiting: format!("{} ({})", w.what, w.state),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_chart_is_the_repositorys() {
        let dir = tempfile::tempdir().unwrap();
        let chart = write_chart(dir.path()).unwrap();
        let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("chart");
        for f in ["Chart.yaml", "values.yaml", "templates/statefulset.yaml"] {
            assert_eq!(
                std::fs::read(chart.join(f)).unwrap(),
                std::fs::read(manifest_dir.join(f)).unwrap(),
                "{f}"
            );
        }
        let yaml = std::fs::read_to_string(chart.join("Chart.yaml")).unwrap();
        assert!(yaml.contains(&format!("name: {CHART_NAME}\n")), "{yaml}");
    }

    #[test]
    fn helms_error_line_is_the_message() {
        assert_eq!(
            first_error_line("WARNING: x\nError: INSTALLATION FAILED: nope\n"),
            "INSTALLATION FAILED: nope"
        );
        assert_eq!(first_error_line("\n  odd failure\n"), "odd failure");
    }
}
