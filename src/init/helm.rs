//! Helm charts installed into a new virtual cluster once, at its first start
//! (`vcluster syncer --init-helm-charts FILE`, the chart's `init.helmCharts`),
//! after the init manifests.
//!
//! The file is a YAML list of [`ChartEntry`]: a release name and namespace, a
//! chart (a name in a repository with `repo`, an `oci://` reference, a path
//! the syncer can read, or a packaged chart carried in the file as base64,
//! `bundle`), a version and values. It is checked at start; an entry that
//! cannot be installed as written stops the syncer with one line.
//!
//! Each chart is installed by the real `helm` binary (`--helm-binary`),
//! `helm upgrade --install` in the order written, against the virtual API:
//! the syncer writes its own virtual credentials to a private kubeconfig in a
//! temporary directory that also holds the values files and helm's cache and
//! configuration (nothing of the container's environment leaks in). A helm
//! failure that may pass (the API or a repository not answering yet) is
//! retried until [`APPLY_DEADLINE`]; others are final.
//!
//! The outcome is recorded per release in the init record (ConfigMap
//! `kube-system/vcluster-init` inside), key `helm.<namespace>.<release>`, with
//! the entry's digest, written with the field manager [`FIELD_MANAGER`] beside
//! the manifests' keys. A restart does not run helm again for an installed
//! entry; with `--init-reapply` an entry that changed since is upgraded. A
//! failed entry is tried again at the next start (nothing of it was kept).
//! Each release gets an Event on the record: `InitHelmChartInstalled`, or a
//! Warning `InitHelmChartFailed` with helm's error line. A helm binary that
//! cannot be run is one Warning and one log line; the syncer goes on.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable as _};
use base64::Engine as _;
use kube::config::Kubeconfig;
use kube::runtime::events::EventType;
use serde::{Deserialize, Serialize};

use super::{APPLY_DEADLINE, InitError, read_record, records, write_record};
use crate::sync::Context;
use crate::translate::names::is_dns_label;

/// The field manager of the record's helm keys (the manifests' keys are
/// [`super::FIELD_MANAGER`]'s: each writer keeps its own).
pub const FIELD_MANAGER: &str = "vcluster-init-helm";
/// Prefix of the record's keys, `helm.<namespace>.<release>`.
pub const KEY_PREFIX: &str = "helm.";
/// helm's own `--timeout` (hooks); the process is killed a minute later.
pub const HELM_TIMEOUT: Duration = Duration::from_secs(300);
/// A release name as helm takes it: at most this long.
const RELEASE_NAME_MAX: usize = 53;

/// One chart of the file, as written (empty strings: not given).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChartEntry {
    /// The release name.
    pub name: String,
    /// The release's namespace (created if missing; default `default`).
    #[serde(default)]
    pub namespace: String,
    /// A chart name in `repo`, an `oci://` reference, or a path.
    #[serde(default)]
    pub chart: String,
    /// The chart repository's URL.
    #[serde(default)]
    pub repo: String,
    /// The chart version (default: the latest).
    #[serde(default, deserialize_with = "string_or_number")]
    pub version: String,
    /// The release's values.
    #[serde(default)]
    pub values: serde_json::Value,
    /// A packaged chart (`helm package`), base64.
    #[serde(default)]
    pub bundle: String,
}

/// A version written as a YAML number (`version: 1.2`) is a string too.
fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        serde_json::Value::Null => Ok(String::new()),
        other => Err(serde::de::Error::custom(format!(
            "version must be a string, not {other}"
        ))),
    }
}

/// An entry checked at start, with its digest and its bundle decoded.
#[derive(Debug, Clone)]
pub struct InitChart {
    /// The entry (namespace and values filled in).
    pub entry: ChartEntry,
    /// SHA-256 of the entry, hex: what the record compares.
    pub digest: String,
    /// The packaged chart of `bundle`.
    bundle: Option<Vec<u8>>,
}

impl InitChart {
    /// `namespace/name`, for messages.
    pub fn release(&self) -> String {
        format!("{}/{}", self.entry.namespace, self.entry.name)
    }

    /// The record's key for this release.
    pub fn key(&self) -> String {
        format!("{KEY_PREFIX}{}.{}", self.entry.namespace, self.entry.name)
    }
}

/// What `--init-helm-charts` asks for.
#[derive(Debug, Clone)]
pub struct HelmInit {
    /// The charts, in file order.
    pub charts: Vec<InitChart>,
    /// Upgrade an entry that changed since it was installed.
    pub reapply: bool,
    /// The helm binary (a bare name is looked up on PATH).
    pub helm: PathBuf,
}

/// Reads and checks the helm charts file.
pub fn load(file: &Path) -> Result<Vec<InitChart>, InitError> {
    let path = file.display().to_string();
    let yaml = std::fs::read_to_string(file).map_err(|e| InitError::Read {
        what: "helm charts",
        path: path.clone(),
        message: e.to_string(),
    })?;
    parse(&path, &yaml)
}

/// [`load`] of text already read: a YAML list of entries (empty: none).
pub fn parse(path: &str, yaml: &str) -> Result<Vec<InitChart>, InitError> {
    let err = |entry: usize, release: &str, message: String| InitError::Chart {
        path: path.to_owned(),
        entry,
        release: if release.is_empty() {
            String::new()
        } else {
            format!(" (release {release})")
        },
        message,
    };
    let list: Option<Vec<serde_json::Value>> =
        serde_yaml::from_str(yaml).map_err(|e| InitError::Charts {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    let mut charts = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, v) in list.unwrap_or_default().into_iter().enumerate() {
        let name = v["name"].as_str().unwrap_or_default().to_owned();
        let mut entry: ChartEntry =
            serde_json::from_value(v).map_err(|e| err(i + 1, &name, e.to_string()))?;
        let bundle = check(&mut entry).map_err(|m| err(i + 1, &name, m))?;
        if !seen.insert((entry.namespace.clone(), entry.name.clone())) {
            return Err(err(
                i + 1,
                &name,
                format!(
                    "a second release {} in namespace {}",
                    entry.name, entry.namespace
                ),
            ));
        }
        let digest = crate::translate::sha256_hex(
            serde_json::to_string(&entry).unwrap_or_default().as_bytes(),
            32,
        );
        charts.push(InitChart {
            entry,
            digest,
            bundle,
        });
    }
    Ok(charts)
}

/// Checks an entry and fills in its defaults; returns the decoded bundle.
fn check(e: &mut ChartEntry) -> Result<Option<Vec<u8>>, String> {
    if e.name.len() > RELEASE_NAME_MAX || !e.name.split('.').all(is_dns_label) {
        return Err(format!(
            "name {:?} is not a release name (lowercase letters, digits, '-' and '.', at most {RELEASE_NAME_MAX})",
            e.name
        ));
    }
    if e.namespace.is_empty() {
        e.namespace = "default".to_owned();
    }
    if !is_dns_label(&e.namespace) {
        return Err(format!(
            "namespace {:?} is not a namespace name",
            e.namespace
        ));
    }
    if e.values.is_null() {
        e.values = serde_json::Value::Object(serde_json::Map::new());
    }
    if !e.values.is_object() {
        return Err("values must be a map".to_owned());
    }
    if !e.bundle.is_empty() {
        if !e.chart.is_empty() || !e.repo.is_empty() || !e.version.is_empty() {
            return Err(
                "bundle is the chart itself: give no chart, repo or version with it".to_owned(),
            );
        }
        let text: String = e.bundle.split_ascii_whitespace().collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|x| {
                format!("bundle is not base64 ({x}): base64 the .tgz of `helm package`")
            })?;
        if !bytes.starts_with(&[0x1f, 0x8b]) {
            return Err(
                "bundle is not a packaged chart (a gzipped tar of `helm package`)".to_owned(),
            );
        }
        return Ok(Some(bytes));
    }
    if e.chart.is_empty() {
        return Err(
            "no chart (a name with repo, an oci:// reference or a path) and no bundle".to_owned(),
        );
    }
    if e.chart.starts_with("oci://") && !e.repo.is_empty() {
        return Err("an oci:// chart takes no repo".to_owned());
    }
    Ok(None)
}

/// What was recorded for a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChartRecord {
    /// The entry's digest when helm last ran for it.
    pub digest: String,
    /// `installed` or `failed`.
    pub status: String,
    /// The release's revision helm reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// `name-version` of the chart helm installed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub chart: String,
    /// When.
    pub at: String,
    /// helm's error line, when it failed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// The record's status of an installed release.
pub const INSTALLED: &str = "installed";
/// The record's status of a release helm failed to install.
pub const FAILED: &str = "failed";

/// What to do with an entry, given its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChartDecision {
    /// Not installed yet (or the last try failed): install.
    Install,
    /// Installed from another entry, and reapply asked for: upgrade.
    Upgrade,
    /// Leave the release alone, for this reason.
    Skip(&'static str),
}

/// Installed once: upgraded only when asked and the entry changed.
pub fn decide(recorded: Option<&ChartRecord>, digest: &str, reapply: bool) -> ChartDecision {
    match recorded {
        None => ChartDecision::Install,
        Some(r) if r.status != INSTALLED => ChartDecision::Install,
        Some(r) if r.digest == digest => ChartDecision::Skip("already installed"),
        Some(_) if reapply => ChartDecision::Upgrade,
        Some(_) => {
            ChartDecision::Skip("installed once before; --init-reapply upgrades a changed entry")
        }
    }
}

/// The arguments of `helm upgrade --install` for `chart`, whose chart is
/// `chart_ref` (the entry's chart, or its bundle written to a file).
pub fn helm_args(
    entry: &ChartEntry,
    chart_ref: &str,
    kubeconfig: &Path,
    values: &Path,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "upgrade",
        "--install",
        &entry.name,
        chart_ref,
        "--namespace",
        &entry.namespace,
        "--create-namespace",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    if !entry.repo.is_empty() {
        args.extend(["--repo", &entry.repo].map(OsString::from));
    }
    if !entry.version.is_empty() {
        args.extend(["--version", &entry.version].map(OsString::from));
    }
    args.extend([
        "--values".into(),
        values.into(),
        "--kubeconfig".into(),
        kubeconfig.into(),
        "--timeout".into(),
        format!("{}s", HELM_TIMEOUT.as_secs()).into(),
        "--output".into(),
        "json".into(),
    ]);
    args
}

/// Variables passed on from the syncer's environment to helm (the way out to
/// a repository); everything else is set here.
const PASSED_ON: &[&str] = &[
    "PATH",
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "NO_PROXY",
    "https_proxy",
    "http_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

/// helm's whole environment: its home, cache, configuration and data under
/// `work`, the proxy and CA settings of `outer`; no KUBECONFIG or HELM_*
/// of the container's.
pub fn helm_env(
    work: &Path,
    outer: impl Iterator<Item = (OsString, OsString)>,
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = outer
        .filter(|(k, _)| PASSED_ON.iter().any(|p| k == p))
        .collect();
    for (k, sub) in [
        ("HOME", ""),
        ("TMPDIR", "tmp"),
        ("HELM_CACHE_HOME", "cache"),
        ("HELM_CONFIG_HOME", "config"),
        ("HELM_DATA_HOME", "data"),
    ] {
        env.push((k.into(), work.join(sub).into()));
    }
    env
}

/// Why helm did not install a chart.
#[derive(Debug, thiserror::Error)]
pub enum HelmError {
    /// The binary cannot be run at all.
    #[error("helm binary {binary} cannot be run: {message}")]
    Missing {
        /// As given (`--helm-binary`).
        binary: String,
        /// Why.
        message: String,
    },
    /// May pass on a later try (the API or a repository not answering).
    #[error("{0}")]
    Later(String),
    /// Will not pass as the entry stands.
    #[error("{0}")]
    Final(String),
}

/// Failures of reaching the virtual API or a repository, which a later try
/// may not meet; anything else (a chart not found, a template error, a
/// refused object) is final.
const PASSING: &[&str] = &[
    "connection refused",
    "connection reset",
    "i/o timeout",
    "tls handshake timeout",
    "no route to host",
    "cluster unreachable",
    "server is currently unable to handle the request",
    "context deadline exceeded",
    "too many requests",
    "etcdserver",
    "temporary failure in name resolution",
    "unexpected eof",
];

/// [`HelmError::Later`] or [`HelmError::Final`] for helm's error line.
pub fn classify(line: String) -> HelmError {
    let lower = line.to_lowercase();
    if PASSING.iter().any(|p| lower.contains(p)) {
        HelmError::Later(line)
    } else {
        HelmError::Final(line)
    }
}

/// What helm installed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Installed {
    /// The release's revision.
    pub revision: Option<u64>,
    /// `name-version` of the chart.
    pub chart: String,
}

/// Reads `helm ... --output json`'s release (lenient: helm exited 0).
pub fn installed(stdout: &[u8]) -> Installed {
    let v: serde_json::Value = serde_json::from_slice(stdout).unwrap_or_default();
    let meta = &v["chart"]["metadata"];
    let chart = match (meta["name"].as_str(), meta["version"].as_str()) {
        (Some(n), Some(ver)) => format!("{n}-{ver}"),
        _ => String::new(),
    };
    Installed {
        revision: v["version"].as_u64(),
        chart,
    }
}

/// Runs helm once.
async fn run_helm(
    binary: &Path,
    args: &[OsString],
    env: &[(OsString, OsString)],
) -> Result<Installed, HelmError> {
    let mut cmd = tokio::process::Command::new(binary);
    cmd.args(args)
        .env_clear()
        .envs(env.iter().cloned())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let limit = HELM_TIMEOUT + Duration::from_secs(60);
    let out = match tokio::time::timeout(limit, cmd.output()).await {
        Err(_) => {
            return Err(HelmError::Final(format!(
                "helm did not finish within {}s",
                limit.as_secs()
            )));
        }
        Ok(Err(e)) => {
            return Err(HelmError::Missing {
                binary: binary.display().to_string(),
                message: e.to_string(),
            });
        }
        Ok(Ok(out)) => out,
    };
    if out.status.success() {
        Ok(installed(&out.stdout))
    } else {
        // helm's last line is its `Error: ...`.
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(classify(crate::local::meaningful_line(&stderr)))
    }
}

/// The temporary directory helm runs in (deleted with it): the virtual
/// kubeconfig, values files, bundles, helm's home.
struct Workspace {
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    env: Vec<(OsString, OsString)>,
}

impl Workspace {
    /// Writes the virtual credentials the syncer uses, readable by it alone.
    fn new(virtual_kubeconfig: &Path) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("vcluster-init-helm-")
            .tempdir()
            .map_err(|e| format!("cannot make a temporary directory for helm: {e}"))?;
        std::fs::create_dir(dir.path().join("tmp"))
            .map_err(|e| format!("cannot make helm's temporary directory: {e}"))?;
        let config = Kubeconfig::read_from(virtual_kubeconfig)
            .map_err(|e| format!("cannot read the virtual kubeconfig: {e}"))?;
        let yaml = crate::kubeconfig::to_yaml(&config)
            .map_err(|e| format!("cannot render the virtual kubeconfig: {e}"))?;
        let kubeconfig = dir.path().join("kubeconfig");
        crate::kubeconfig::write_private(&kubeconfig, &yaml)
            .map_err(|e| format!("cannot write helm's kubeconfig: {e}"))?;
        let env = helm_env(dir.path(), std::env::vars_os());
        Ok(Self {
            dir,
            kubeconfig,
            env,
        })
    }

    /// Installs entry number `i` (its values and bundle written first),
    /// retrying failures that may pass until [`APPLY_DEADLINE`].
    async fn install(
        &self,
        helm: &Path,
        i: usize,
        chart: &InitChart,
    ) -> Result<Installed, HelmError> {
        let values = self.dir.path().join(format!("values-{i}.json"));
        let written = crate::kubeconfig::write_private(&values, &chart.entry.values.to_string());
        written.map_err(|e| HelmError::Final(format!("cannot write the values file: {e}")))?;
        let chart_ref = match &chart.bundle {
            Some(bytes) => {
                let file = self.dir.path().join(format!("chart-{i}.tgz"));
                std::fs::write(&file, bytes)
                    .map_err(|e| HelmError::Final(format!("cannot write the bundle: {e}")))?;
                file.display().to_string()
            }
            None => chart.entry.chart.clone(),
        };
        let args = helm_args(&chart.entry, &chart_ref, &self.kubeconfig, &values);
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(Duration::from_secs(5))
            .without_max_times()
            .with_total_delay(Some(APPLY_DEADLINE));
        (|| run_helm(helm, &args, &self.env))
            .retry(backoff)
            .when(|e| matches!(e, HelmError::Later(_)))
            .notify(|e, pause| {
                tracing::info!(release = %chart.release(), error = %e, ?pause, "helm failed; retrying");
            })
            .await
    }
}

/// Installs the charts [`decide`] picks, records each outcome and reports it
/// with events. Never fails the syncer: everything is logged.
pub async fn run(ctx: Arc<Context>, init: HelmInit, virtual_kubeconfig: PathBuf) {
    let records = records(&ctx.virt);
    let recorded = read_record(&records).await;
    let mut state: BTreeMap<String, String> = recorded
        .and_then(|r| r.data)
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k.starts_with(KEY_PREFIX))
        .collect();
    let mut todo = Vec::new();
    for chart in &init.charts {
        let rec = state
            .get(&chart.key())
            .and_then(|v| serde_json::from_str::<ChartRecord>(v).ok());
        match decide(rec.as_ref(), &chart.digest, init.reapply) {
            ChartDecision::Skip(why) => {
                tracing::info!(release = %chart.release(), why, "init helm chart not installed again");
            }
            d => todo.push((chart, d)),
        }
    }
    if todo.is_empty() {
        return;
    }
    let Some(mut written) = write_record(&records, FIELD_MANAGER, serde_json::json!(state)).await
    else {
        return;
    };
    let work = match Workspace::new(&virtual_kubeconfig) {
        Ok(w) => w,
        Err(why) => {
            tracing::error!(error = %why, "init helm charts not installed");
            let note = format!("init helm charts not installed: {why}");
            ctx.event(&written, EventType::Warning, "InitHelmChartFailed", note)
                .await;
            return;
        }
    };
    for (i, (chart, decision)) in todo.iter().enumerate() {
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let (record, type_, reason, note) = match work.install(&init.helm, i, chart).await {
            Ok(done) => {
                let verb = if *decision == ChartDecision::Upgrade {
                    "upgraded"
                } else {
                    "installed"
                };
                tracing::info!(release = %chart.release(), chart = %done.chart, revision = ?done.revision, "init helm chart {verb}");
                let note = format!(
                    "{verb} release {}: chart {}, revision {}",
                    chart.release(),
                    done.chart,
                    done.revision
                        .map_or_else(|| "?".to_owned(), |r| r.to_string())
                );
                let record = ChartRecord {
                    digest: chart.digest.clone(),
                    status: INSTALLED.to_owned(),
                    revision: done.revision,
                    chart: done.chart,
                    at: now,
                    error: String::new(),
                };
                (record, EventType::Normal, "InitHelmChartInstalled", note)
            }
            Err(HelmError::Missing { binary, message }) => {
                let left: Vec<String> = todo[i..].iter().map(|(c, _)| c.release()).collect();
                let why = format!(
                    "helm binary {binary} cannot be run ({message}): init charts not installed: {} (--helm-binary names it)",
                    left.join(", ")
                );
                tracing::error!("{why}");
                ctx.event(&written, EventType::Warning, "InitHelmChartFailed", why)
                    .await;
                return;
            }
            Err(e) => {
                let line = e.to_string();
                tracing::warn!(release = %chart.release(), error = %line, "init helm chart failed");
                let note = format!("release {}: {line}", chart.release());
                let record = ChartRecord {
                    digest: chart.digest.clone(),
                    status: FAILED.to_owned(),
                    revision: None,
                    chart: String::new(),
                    at: now,
                    error: line,
                };
                (record, EventType::Warning, "InitHelmChartFailed", note)
            }
        };
        state.insert(
            chart.key(),
            serde_json::to_string(&record).unwrap_or_default(),
        );
        if let Some(w) = write_record(&records, FIELD_MANAGER, serde_json::json!(state)).await {
            written = w;
        }
        ctx.event(&written, type_, reason, note).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn one(yaml: &str) -> InitChart {
        let mut charts = parse("charts.yaml", yaml).unwrap();
        assert_eq!(charts.len(), 1);
        charts.remove(0)
    }

    fn refusal(yaml: &str) -> String {
        parse("charts.yaml", yaml).unwrap_err().to_string()
    }

    #[test]
    fn entries_get_their_defaults_and_a_digest_of_what_they_say() {
        let a = one("- name: web\n  chart: /charts/web\n");
        assert_eq!(a.entry.namespace, "default");
        assert_eq!(a.entry.values, serde_json::json!({}));
        assert_eq!(a.key(), "helm.default.web");
        assert_eq!(a.release(), "default/web");
        // Written differently, the same entry: the same digest.
        let same = one("- {chart: /charts/web, name: web, namespace: default, values: {}}");
        assert_eq!(a.digest, same.digest);
        let other = one("- name: web\n  chart: /charts/web\n  values: {replicas: 2}\n");
        assert_ne!(a.digest, other.digest);
        let newer =
            one("- name: web\n  chart: web\n  repo: https://charts.example.com\n  version: 1.2\n");
        assert_eq!(newer.entry.version, "1.2");
        assert!(parse("f", "").unwrap().is_empty());
        assert!(parse("f", "[]").unwrap().is_empty());
    }

    #[test]
    fn an_entry_that_cannot_be_installed_is_named() {
        for (yaml, says) in [
            (
                "- name: Web\n  chart: x\n",
                "entry 1 (release Web): name \"Web\" is not a release name",
            ),
            ("- name: web\n", "no chart"),
            (
                "- name: web\n  chart: x\n  valuse: {}\n",
                "unknown field `valuse`",
            ),
            (
                "- name: web\n  chart: x\n  namespace: Team_A\n",
                "not a namespace name",
            ),
            (
                "- name: web\n  chart: x\n  values: [1]\n",
                "values must be a map",
            ),
            (
                "- name: web\n  chart: oci://r.example.com/web\n  repo: https://r\n",
                "takes no repo",
            ),
            (
                "- name: web\n  bundle: H4sI\n  repo: https://r\n",
                "give no chart, repo or version",
            ),
            ("- name: web\n  bundle: '%%%'\n", "bundle is not base64"),
            ("- name: web\n  bundle: aGVsbG8=\n", "not a packaged chart"),
            (
                "- {name: web, chart: a}\n- {name: db, chart: b}\n- {name: web, chart: c, namespace: default}\n",
                "entry 3 (release web): a second release web in namespace default",
            ),
            ("name: web\n", "not a list"),
        ] {
            let e = refusal(yaml);
            assert!(
                e.contains(says) && e.contains("charts.yaml"),
                "{says:?} in {e}"
            );
        }
    }

    #[test]
    fn a_bundle_is_decoded_whatever_its_line_breaks() {
        let tgz = [0x1f, 0x8b, 8, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9];
        let b64 = base64::engine::general_purpose::STANDARD.encode(tgz);
        let (head, tail) = b64.split_at(8);
        let c = one(&format!(
            "- name: web\n  bundle: |\n    {head}\n    {tail}\n"
        ));
        assert_eq!(c.bundle.as_deref(), Some(&tgz[..]));
    }

    #[test]
    fn installed_once_and_upgraded_only_when_asked_for_a_changed_entry() {
        let rec = |digest: &str, status: &str| ChartRecord {
            digest: digest.to_owned(),
            status: status.to_owned(),
            revision: Some(1),
            chart: "web-1.0.0".to_owned(),
            at: "now".to_owned(),
            error: String::new(),
        };
        assert_eq!(decide(None, "d1", false), ChartDecision::Install);
        let done = rec("d1", INSTALLED);
        assert!(matches!(
            decide(Some(&done), "d1", false),
            ChartDecision::Skip(_)
        ));
        assert!(matches!(
            decide(Some(&done), "d1", true),
            ChartDecision::Skip(_)
        ));
        assert!(matches!(
            decide(Some(&done), "d2", false),
            ChartDecision::Skip(_)
        ));
        assert_eq!(decide(Some(&done), "d2", true), ChartDecision::Upgrade);
        // A failed try kept nothing of the tenant's: tried again.
        let failed = rec("d1", FAILED);
        assert_eq!(decide(Some(&failed), "d1", false), ChartDecision::Install);
        // The record's text round-trips.
        let text = serde_json::to_string(&done).unwrap();
        assert_eq!(serde_json::from_str::<ChartRecord>(&text).unwrap(), done);
        assert!(!text.contains("error"), "{text}");
    }

    #[test]
    fn helm_is_asked_for_the_release_in_its_namespace_with_the_entrys_chart() {
        let kc = Path::new("/w/kubeconfig");
        let values = Path::new("/w/values-0.json");
        let strings = |args: Vec<OsString>| -> Vec<String> {
            args.into_iter().map(|a| a.into_string().unwrap()).collect()
        };
        let from_repo = one(
            "- {name: web, namespace: apps, chart: web, repo: 'https://charts.example.com', version: 1.2.3}",
        );
        assert_eq!(
            strings(helm_args(&from_repo.entry, "web", kc, values)).join(" "),
            "upgrade --install web web --namespace apps --create-namespace \
             --repo https://charts.example.com --version 1.2.3 \
             --values /w/values-0.json --kubeconfig /w/kubeconfig --timeout 300s --output json"
        );
        let from_path = one("- {name: web, chart: /charts/web}");
        let args = strings(helm_args(&from_path.entry, "/charts/web", kc, values));
        assert!(!args.contains(&"--repo".to_owned()) && !args.contains(&"--version".to_owned()));
        assert_eq!(args[2..4], ["web", "/charts/web"]);
    }

    #[test]
    fn helm_runs_with_its_own_home_and_none_of_the_containers_kubeconfig() {
        let outer = [
            ("PATH", "/usr/local/bin"),
            ("KUBECONFIG", "/root/.kube/config"),
            ("HELM_REPOSITORY_CONFIG", "/etc/helm/repos.yaml"),
            ("HTTPS_PROXY", "http://proxy:3128"),
            ("HOME", "/root"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let env: BTreeMap<String, String> = helm_env(Path::new("/w"), outer.into_iter())
            .into_iter()
            .map(|(k, v)| (k.into_string().unwrap(), v.into_string().unwrap()))
            .collect();
        assert_eq!(env["PATH"], "/usr/local/bin");
        assert_eq!(env["HTTPS_PROXY"], "http://proxy:3128");
        assert_eq!(env["HOME"], "/w/");
        assert_eq!(env["HELM_CACHE_HOME"], "/w/cache");
        assert_eq!(env["HELM_CONFIG_HOME"], "/w/config");
        assert!(!env.contains_key("KUBECONFIG") && !env.contains_key("HELM_REPOSITORY_CONFIG"));
    }

    #[test]
    fn helms_error_line_says_whether_a_later_try_may_pass() {
        let line = |stderr: &str| crate::local::meaningful_line(stderr);
        let stderr =
            "walk.go:75: found symbolic link\nError: INSTALLATION FAILED: repo missing not found\n";
        assert_eq!(
            line(stderr),
            "Error: INSTALLATION FAILED: repo missing not found"
        );
        assert!(matches!(classify(line(stderr)), HelmError::Final(_)));
        let down = "Error: Kubernetes cluster unreachable: Get \"https://127.0.0.1:6443/version\": dial tcp 127.0.0.1:6443: connect: connection refused";
        assert!(matches!(classify(line(down)), HelmError::Later(_)));
        assert!(matches!(
            classify("Error: path \"/charts/x\" not found".to_owned()),
            HelmError::Final(_)
        ));
    }

    #[test]
    fn the_release_helm_reports_is_read() {
        let out =
            br#"{"name":"web","version":2,"chart":{"metadata":{"name":"web","version":"1.2.3"}}}"#;
        assert_eq!(
            installed(out),
            Installed {
                revision: Some(2),
                chart: "web-1.2.3".to_owned()
            }
        );
        assert_eq!(installed(b"not json"), Installed::default());
    }
}
