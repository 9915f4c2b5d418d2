//! `vcluster connect | list | delete`: vclusters seen from the host.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::instances;

#[derive(Debug, Args, Clone)]
pub struct HostArgs {
    /// Kubeconfig of the host cluster (default: $KUBECONFIG or ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Context of that kubeconfig (default: its current context).
    #[arg(long)]
    context: Option<String>,
}

#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// The vcluster's name.
    name: String,
    /// Its host namespace (default: the kubeconfig context's namespace).
    #[arg(short, long)]
    namespace: Option<String>,
    #[command(flatten)]
    host: HostArgs,
    /// Print the kubeconfig to stdout instead of merging it into a file.
    #[arg(long)]
    print: bool,
    /// The kubeconfig file to merge the vcluster's context into (default: the
    /// host kubeconfig file).
    #[arg(long, conflicts_with = "print")]
    update_kubeconfig: Option<PathBuf>,
    /// Make the vcluster's context the current one.
    #[arg(long)]
    switch_context: bool,
    /// Local port of the port-forward (default: a free one).
    #[arg(long, default_value_t = 0)]
    local_port: u16,
    /// A URL at which the vcluster is reachable (a LoadBalancer, an Ingress):
    /// no port-forward, the kubeconfig points there and the command returns.
    #[arg(long)]
    server: Option<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this host namespace (default: every namespace you may list).
    #[arg(short, long)]
    namespace: Option<String>,
    #[command(flatten)]
    host: HostArgs,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The vcluster's name.
    name: String,
    /// Delete its PersistentVolumeClaims too (the tenant's data and the
    /// control plane's; their volumes go as their reclaim policy says).
    /// Default: they are kept.
    #[arg(long)]
    delete_volumes: bool,
    /// Its host namespace (default: the kubeconfig context's namespace).
    #[arg(short, long)]
    namespace: Option<String>,
    #[command(flatten)]
    host: HostArgs,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// The host client and the kubeconfig file it came from.
async fn host_client(h: &HostArgs) -> anyhow::Result<(kube::Client, PathBuf)> {
    let opts = KubeConfigOptions {
        context: h.context.clone(),
        ..KubeConfigOptions::default()
    };
    let (kc, file) = match &h.kubeconfig {
        Some(p) => (
            Kubeconfig::read_from(p)
                .with_context(|| format!("cannot read kubeconfig {}", p.display()))?,
            p.clone(),
        ),
        None => {
            let file = std::env::var_os("KUBECONFIG")
                .and_then(|v| std::env::split_paths(&v).next())
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".kube/config")))
                .context("no --kubeconfig, $KUBECONFIG or $HOME")?;
            (
                Kubeconfig::read().context("cannot read the host kubeconfig (use --kubeconfig)")?,
                file,
            )
        }
    };
    let config = kube::Config::from_custom_kubeconfig(kc, &opts)
        .await
        .context("invalid host kubeconfig")?;
    let client = kube::Client::try_from(config).context("cannot build a host client")?;
    Ok((client, file))
}

fn say_err(text: &str) {
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "{text}");
}

/// The host client, its kubeconfig file and the vcluster's namespace (given,
/// or the context's).
async fn target(
    name: &str,
    h: &HostArgs,
    namespace: Option<&str>,
) -> anyhow::Result<(kube::Client, PathBuf, String)> {
    crate::translate::VclusterName::new(name)?;
    let (host, file) = host_client(h).await?;
    let ns = namespace.map_or_else(|| host.default_namespace().to_owned(), str::to_owned);
    Ok((host, file, ns))
}

pub fn connect(args: ConnectArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async move {
        let (host, file, ns) = target(&args.name, &args.host, args.namespace.as_deref()).await?;
        let secret_kc = instances::kubeconfig(&host, &args.name, &ns).await?;
        let context = format!("vcluster_{}_{ns}", args.name);
        let (server, forwarding) = match &args.server {
            Some(url) => (url.clone(), None),
            None => {
                let pod = instances::ready_pod(&host, &args.name, &ns).await?;
                let (listener, addr) = instances::bind_local(args.local_port).await?;
                (format!("https://{addr}"), Some((pod, listener)))
            }
        };
        let kc = instances::retarget(secret_kc, &context, &server)?;
        if args.print {
            let yaml = crate::kubeconfig::to_yaml(&kc)?;
            let mut out = std::io::stdout().lock();
            out.write_all(yaml.as_bytes())?;
            out.flush()?;
        } else {
            let target = args.update_kubeconfig.clone().unwrap_or(file);
            instances::merge_into_file(&target, kc, args.switch_context)?;
            say_err(&format!(
                "context {context} written to {}{}",
                target.display(),
                if args.switch_context { " (now current)" } else { "" }
            ));
        }
        let Some((pod, listener)) = forwarding else {
            return Ok(ExitCode::SUCCESS);
        };
        say_err(&format!(
            "forwarding {server} -> pod {pod}:{} in namespace {ns}; press Ctrl-C to stop",
            crate::discovery::FRONT_DOOR_PORT
        ));
        tokio::select! {
            r = instances::forward(&host, &ns, &pod, crate::discovery::FRONT_DOOR_PORT, listener) => {
                r?;
                Ok(ExitCode::FAILURE)
            }
            () = super::dev::interrupted() => Ok(ExitCode::SUCCESS),
        }
    })
}

pub fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async move {
        let (host, _) = host_client(&args.host).await?;
        let found = instances::list(&host, args.namespace.as_deref()).await?;
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "{:<24} {:<24} {:<12} KUBECONFIG",
            "NAME", "NAMESPACE", "STATE"
        )?;
        for i in &found {
            writeln!(
                out,
                "{:<24} {:<24} {:<12} {}",
                i.name,
                i.namespace,
                i.state,
                if i.kubeconfig { "yes" } else { "no" }
            )?;
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn delete(args: DeleteArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async move {
        let (host, _, ns) = target(&args.name, &args.host, args.namespace.as_deref()).await?;
        let deleted = instances::delete(&host, &args.name, &ns, args.delete_volumes).await?;
        let summary: Vec<String> = deleted
            .kinds
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "vcluster {} in namespace {ns} deleted ({})",
            args.name,
            summary.join(", ")
        )?;
        if deleted.kept_claims > 0 {
            writeln!(
                out,
                "kept {} PersistentVolumeClaims and their data; delete them with `vcluster delete {} -n {ns} --delete-volumes`",
                deleted.kept_claims, args.name
            )?;
        }
        Ok(ExitCode::SUCCESS)
    })
}
