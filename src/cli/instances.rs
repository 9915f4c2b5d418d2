//! `vcluster create | connect | disconnect | list | delete`: vclusters seen from the host.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Args;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::{create, instances};

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
    /// Sign in through the organisation's OpenID provider (single sign-on): the
    /// kubeconfig's user runs an exec credential plugin (`kubectl oidc-login
    /// get-token`) instead of holding the admin certificate.
    #[arg(long)]
    oidc: bool,
    /// With --oidc: the provider's issuer URL (https), as the chart's `sso.oidc.issuerUrl`.
    #[arg(long, value_name = "URL")]
    oidc_issuer_url: Option<String>,
    /// With --oidc: the client id (one of the chart's `sso.oidc.audiences`).
    #[arg(long, value_name = "ID")]
    oidc_client_id: Option<String>,
    /// With --oidc: the client's secret, for providers that require one.
    #[arg(long, value_name = "SECRET")]
    oidc_client_secret: Option<String>,
    /// With --oidc: a scope to ask for besides `openid` (repeatable), e.g. groups, email.
    #[arg(long = "oidc-extra-scope", value_name = "SCOPE")]
    oidc_extra_scopes: Vec<String>,
    /// With --oidc: the plugin to run: `kubectl` (as `kubectl oidc-login get-token`)
    /// or a standalone binary such as `kubelogin` (as `kubelogin get-token`).
    #[arg(long, value_name = "COMMAND")]
    oidc_exec_command: Option<String>,
    /// Sign in with a bearer token (an ID token) kept in this file instead of the
    /// admin certificate; kubectl reads it again when it changes.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

/// How the written kubeconfig's user signs in: `None` keeps the admin
/// certificate. Checked before anything is read from the host.
fn sign_in(args: &ConnectArgs) -> anyhow::Result<Option<crate::kubeconfig::SignIn>> {
    use crate::kubeconfig::{OidcLogin, SignIn};
    let oidc_options = args.oidc_issuer_url.is_some()
        || args.oidc_client_id.is_some()
        || args.oidc_client_secret.is_some()
        || !args.oidc_extra_scopes.is_empty()
        || args.oidc_exec_command.is_some();
    if args.oidc && args.token_file.is_some() {
        bail!("--oidc and --token-file are two ways to sign in: give one");
    }
    if oidc_options && !args.oidc {
        bail!("the --oidc-* options apply only with --oidc");
    }
    if let Some(file) = &args.token_file {
        let abs = std::path::absolute(file)
            .with_context(|| format!("invalid --token-file {}", file.display()))?;
        match std::fs::File::open(&abs) {
            Ok(_) => {}
            // A kubeconfig written for a member who gets the token later
            // (kubectl reads the file at each call); a wrong directory is
            // still a mistake.
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && abs.parent().is_some_and(Path::is_dir) =>
            {
                say_err(&format!(
                    "note: {} does not exist yet; kubectl reads the token from it at each call",
                    abs.display()
                ));
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot read --token-file {}", abs.display()));
            }
        }
        return Ok(Some(SignIn::TokenFile(abs.display().to_string())));
    }
    if !args.oidc {
        return Ok(None);
    }
    let Some(issuer_url) = args.oidc_issuer_url.clone() else {
        bail!(
            "--oidc needs --oidc-issuer-url (the provider's issuer, as the chart's sso.oidc.issuerUrl)"
        );
    };
    if !issuer_url.starts_with("https://") || issuer_url.len() == "https://".len() {
        bail!(
            "--oidc-issuer-url must be an https URL (the API server accepts only https issuers), not {issuer_url:?}"
        );
    }
    let client_id = args.oidc_client_id.clone().unwrap_or_default();
    if client_id.is_empty() {
        bail!("--oidc needs --oidc-client-id (one of the chart's sso.oidc.audiences)");
    }
    Ok(Some(SignIn::Oidc(OidcLogin {
        issuer_url,
        client_id,
        client_secret: args.oidc_client_secret.clone(),
        extra_scopes: args.oidc_extra_scopes.clone(),
        command: args
            .oidc_exec_command
            .clone()
            .unwrap_or_else(|| "kubectl".to_owned()),
    })))
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The vcluster's name (also its Helm release's).
    name: String,
    /// Its host namespace, created if missing (default: the kubeconfig
    /// context's namespace).
    #[arg(short, long)]
    namespace: Option<String>,
    #[command(flatten)]
    host: HostArgs,
    /// A values file for the chart (repeatable, as `helm install -f`).
    #[arg(short = 'f', long = "values")]
    values: Vec<PathBuf>,
    /// A chart value, `key=value` (repeatable, as `helm install --set`).
    #[arg(long)]
    set: Vec<String>,
    /// Change an existing vcluster: a `helm upgrade` keeping the values given
    /// before, with these on top.
    #[arg(long)]
    upgrade: bool,
    /// Connect once it is ready (as `vcluster connect NAME --switch-context`).
    #[arg(long)]
    connect: bool,
    /// How long to wait for the control plane and the syncer, in seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// A chart directory to install instead of the one bundled in this binary.
    #[arg(long)]
    chart: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DisconnectArgs {
    /// The vcluster whose context to remove (default: the current context,
    /// if it is a vcluster's).
    name: Option<String>,
    /// Its host namespace (default: the kubeconfig context's namespace).
    #[arg(short, long, requires = "name")]
    namespace: Option<String>,
    /// The kubeconfig file to edit (default: $KUBECONFIG or ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
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

/// The kubeconfig file `vcluster` reads and writes: `--kubeconfig`, else the
/// first of `$KUBECONFIG`, else `~/.kube/config`.
fn kubeconfig_file(given: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.clone());
    }
    std::env::var_os("KUBECONFIG")
        .and_then(|v| std::env::split_paths(&v).next())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".kube/config")))
        .context("no --kubeconfig, $KUBECONFIG or $HOME")
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
        None => (
            Kubeconfig::read().context("cannot read the host kubeconfig (use --kubeconfig)")?,
            kubeconfig_file(None)?,
        ),
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
    runtime()?.block_on(connect_to(args))
}

async fn connect_to(args: ConnectArgs) -> anyhow::Result<ExitCode> {
    {
        let sign_in = sign_in(&args)?;
        let (host, file, ns) = target(&args.name, &args.host, args.namespace.as_deref()).await?;
        let secret_kc = instances::kubeconfig(&host, &args.name, &ns).await?;
        let context = instances::context_name(&args.name, &ns);
        let (server, forwarding) = match &args.server {
            Some(url) => (url.clone(), None),
            None => {
                let pod = instances::ready_pod(&host, &args.name, &ns).await?;
                let (listener, addr) = instances::bind_local(args.local_port).await?;
                (format!("https://{addr}"), Some((pod, listener)))
            }
        };
        let mut kc = instances::retarget(secret_kc, &context, &server)?;
        if let Some(how) = &sign_in {
            crate::kubeconfig::sign_in_with(&mut kc, how);
        }
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
                if args.switch_context {
                    " (now current)"
                } else {
                    ""
                }
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
    }
}

pub fn create(args: CreateArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async move {
        let (host, _, ns) = target(&args.name, &args.host, args.namespace.as_deref()).await?;
        let mut global = vec!["--namespace".to_owned(), ns.clone()];
        if let Some(k) = &args.host.kubeconfig {
            global.extend(["--kubeconfig".to_owned(), k.display().to_string()]);
        }
        if let Some(c) = &args.host.context {
            global.extend(["--kube-context".to_owned(), c.clone()]);
        }
        let helm = create::Helm {
            bin: create::find_helm()?,
            global,
        };
        let scratch = tempfile::tempdir().context("cannot make a temporary directory")?;
        let chart = match &args.chart {
            Some(c) => c.clone(),
            None => create::write_chart(scratch.path())?,
        };
        let req = create::Request {
            name: args.name.clone(),
            namespace: ns.clone(),
            chart,
            values: args.values.clone(),
            set: args.set.clone(),
            upgrade: args.upgrade,
        };
        let upgraded = tokio::task::block_in_place(|| create::install(&helm, &req))?;
        say_err(&format!(
            "{} vcluster {} in namespace {ns}; waiting for it to be ready (up to {} s)",
            if upgraded { "upgraded" } else { "installed" },
            args.name,
            args.timeout
        ));
        let took = create::wait_ready(
            &host,
            &args.name,
            &ns,
            std::time::Duration::from_secs(args.timeout),
            |w, elapsed| {
                say_err(&format!(
                    "  [{:>4} s] waiting for {}: {}",
                    elapsed.as_secs(),
                    w.what,
                    w.state
                ));
            },
        )
        .await?;
        say_err(&format!(
            "vcluster {} is ready in namespace {ns} ({:.1} s); connect with: vcluster connect {} -n {ns}",
            args.name,
            took.as_secs_f64(),
            args.name
        ));
        if !args.connect {
            return Ok(ExitCode::SUCCESS);
        }
        connect_to(ConnectArgs {
            name: args.name,
            namespace: Some(ns),
            host: args.host,
            print: false,
            update_kubeconfig: None,
            switch_context: true,
            local_port: 0,
            server: None,
            oidc: false,
            oidc_issuer_url: None,
            oidc_client_id: None,
            oidc_client_secret: None,
            oidc_extra_scopes: Vec::new(),
            oidc_exec_command: None,
            token_file: None,
        })
        .await
    })
}

pub fn disconnect(args: DisconnectArgs) -> anyhow::Result<ExitCode> {
    let file = kubeconfig_file(args.kubeconfig.as_ref())?;
    let mut kc = Kubeconfig::read_from(&file)
        .with_context(|| format!("cannot read kubeconfig {}", file.display()))?;
    let context = match &args.name {
        Some(name) => {
            crate::translate::VclusterName::new(name)?;
            let ns = match &args.namespace {
                Some(ns) => ns.clone(),
                None => current_namespace(&kc).with_context(|| {
                    format!("no namespace for vcluster {name}: pass -n NAMESPACE")
                })?,
            };
            Some(instances::context_name(name, &ns))
        }
        None => None,
    };
    let d = instances::disconnect(&mut kc, context.as_deref())?;
    let yaml = crate::kubeconfig::to_yaml(&kc)?;
    crate::kubeconfig::write_private(&file, &yaml)
        .with_context(|| format!("cannot write {}", file.display()))?;
    let now = match (&d.switched_to, d.was_current) {
        (Some(c), _) => format!("; current context is {c} again"),
        (None, true) => "; no context is current now (kubectl config use-context NAME)".to_owned(),
        (None, false) => String::new(),
    };
    say_err(&format!(
        "context {} removed from {}{now}",
        d.context,
        file.display()
    ));
    Ok(ExitCode::SUCCESS)
}

/// The namespace of the kubeconfig's current context.
fn current_namespace(kc: &Kubeconfig) -> Option<String> {
    let current = kc.current_context.as_deref()?;
    kc.contexts
        .iter()
        .find(|c| c.name == current)
        .and_then(|c| c.context.as_ref())
        .and_then(|c| c.namespace.clone())
}

pub fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async move {
        let (host, _) = host_client(&args.host).await?;
        let found = instances::list(&host, args.namespace.as_deref()).await?;
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "{:<24} {:<24} {:<12} {:<9} {:<21} {:<21} KUBECONFIG",
            "NAME", "NAMESPACE", "STATE", "SLEEP", "IDLE SINCE", "SLEEPS AT"
        )?;
        for i in &found {
            let (sleep, idle, at) = sleep_columns(i.sleep.as_ref());
            writeln!(
                out,
                "{:<24} {:<24} {:<12} {:<9} {:<21} {:<21} {}",
                i.name,
                i.namespace,
                i.state,
                sleep,
                idle,
                at,
                if i.kubeconfig { "yes" } else { "no" }
            )?;
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `vcluster list`'s sleep columns: Awake/Sleeping, idle since (the last
/// counted request) and when it will sleep (`-`: not by itself).
fn sleep_columns(r: Option<&crate::sleep::Recorded>) -> (&'static str, String, String) {
    let time = |s: i64| {
        k8s_openapi::jiff::Timestamp::from_second(s)
            .map_or_else(|_| "-".to_owned(), |t| t.to_string())
    };
    let Some(r) = r else {
        return ("-", "-".to_owned(), "-".to_owned());
    };
    let idle = r.last_activity.map_or_else(|| "-".to_owned(), time);
    if r.sleeping_since.is_some() {
        return ("Sleeping", idle, "-".to_owned());
    }
    let at = match (r.last_activity, r.sleep_after) {
        (Some(last), Some(after)) => time(last + after),
        _ => "-".to_owned(),
    };
    ("Awake", idle, at)
}

#[derive(Debug, Args)]
pub struct SleepArgs {
    /// The vcluster's name.
    name: String,
    /// Its host namespace (default: the kubeconfig context's namespace).
    #[arg(short, long)]
    namespace: Option<String>,
    #[command(flatten)]
    host: HostArgs,
}

/// `vcluster sleep` (`asleep`) and `vcluster wake`.
pub fn set_sleep(args: SleepArgs, asleep: bool) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async move {
        let (host, _, ns) = target(&args.name, &args.host, args.namespace.as_deref()).await?;
        instances::set_sleep(&host, &args.name, &ns, asleep).await?;
        let what = if asleep {
            "sleeps: its pods leave the host"
        } else {
            "wakes: its pods come back as the host schedules them"
        };
        writeln!(
            std::io::stdout().lock(),
            "vcluster {} in namespace {ns} {what}",
            args.name
        )?;
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
