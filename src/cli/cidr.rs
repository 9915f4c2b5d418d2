//! `vcluster service-cidr`: prints the host's service CIDR(s), comma-separated,
//! for starting a virtual control plane with the host's range (the chart runs
//! it before k3s starts).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use kube::config::Kubeconfig;

use super::syncer::IN_CLUSTER_NAMESPACE;

/// Options of `vcluster service-cidr`.
#[derive(Debug, Args)]
pub struct ServiceCidrArgs {
    /// Kubeconfig for the host API (default: in-cluster service account).
    #[arg(long, env = "VCLUSTER_HOST_KUBECONFIG")]
    host_kubeconfig: Option<PathBuf>,
    /// Host namespace the probe runs in (default: the pod's namespace).
    #[arg(long, env = "VCLUSTER_HOST_NAMESPACE")]
    host_namespace: Option<String>,
    /// Skip the ServiceCIDR objects and use the dry-run probe only.
    #[arg(long)]
    probe: bool,
    /// Write the result to this file (directories created) instead of stdout.
    #[arg(long)]
    output: Option<PathBuf>,
}

pub fn run(args: ServiceCidrArgs) -> anyhow::Result<ExitCode> {
    let namespace = match args.host_namespace {
        Some(ns) => ns,
        None => std::fs::read_to_string(IN_CLUSTER_NAMESPACE)
            .map(|s| s.trim().to_owned())
            .context("no --host-namespace given and not running in a pod")?,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let cidrs = rt.block_on(async {
        let client = match &args.host_kubeconfig {
            Some(path) => {
                let kc = Kubeconfig::read_from(path)
                    .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
                crate::kubeconfig::client(kc)
                    .await
                    .context("cannot build a host client")?
            }
            None => kube::Client::try_default()
                .await
                .context("no --host-kubeconfig given and no in-cluster configuration")?,
        };
        crate::sync::cidr::host_service_cidrs(&client, &namespace, !args.probe)
            .await
            .context("cannot discover the host's service CIDR")
    })?;
    let line = cidrs.join(",");
    match &args.output {
        Some(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            std::fs::write(path, format!("{line}\n"))
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        None => {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{line}").context("cannot write to stdout")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
