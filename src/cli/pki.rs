//! `vcluster control-plane-pki`: the init step of the chart's `k8s` distro.
//! Writes the upstream control plane's certificates and kubeconfigs under
//! `--dir` once (a restart keeps them), or prints the arguments each
//! component runs with (`--print-args`, what the chart's manifests carry).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

/// Options of `vcluster control-plane-pki`.
#[derive(Debug, Args)]
pub struct PkiArgs {
    /// The volume the control plane keeps its state on.
    #[arg(long, default_value = "/data")]
    dir: PathBuf,
    /// Print each component's arguments instead of writing anything.
    #[arg(long)]
    print_args: bool,
}

pub fn run(args: PkiArgs) -> anyhow::Result<ExitCode> {
    let cp = crate::control_plane::pod_control_plane(&args.dir, !args.print_args).with_context(
        || {
            format!(
                "cannot prepare the control plane under {}",
                args.dir.display()
            )
        },
    )?;
    let mut out = std::io::stdout().lock();
    if args.print_args {
        for (name, list) in [
            ("etcd", &cp.etcd),
            ("kube-apiserver", &cp.apiserver),
            ("kube-controller-manager", &cp.controller_manager),
        ] {
            writeln!(out, "{name}: {}", list.join(" ")).context("cannot write to stdout")?;
        }
    } else {
        writeln!(
            out,
            "control plane files ready; admin kubeconfig {}",
            cp.admin_kubeconfig.display()
        )
        .context("cannot write to stdout")?;
    }
    Ok(ExitCode::SUCCESS)
}
