//! The `vcluster` command line (clap). Subcommands parse options and call the
//! modules; they hold no logic of their own beyond presentation.

mod cidr;
mod dev;
mod instances;
mod pki;
mod syncer;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Virtual Kubernetes clusters inside one host namespace.
#[derive(Debug, Parser)]
#[command(name = "vcluster", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the product locally on real control planes (the embedded default).
    Dev(dev::DevArgs),
    /// Run the syncer beside a virtual control plane.
    Syncer(Box<syncer::SyncerArgs>),
    /// Print the host's service CIDR (what the virtual API must be started with).
    ServiceCidr(cidr::ServiceCidrArgs),
    /// Prepare the certificates of the chart's upstream (`k8s`) control plane.
    ControlPlanePki(pki::PkiArgs),
    /// Create a vcluster: install the bundled chart with helm and wait until it is ready.
    Create(Box<instances::CreateArgs>),
    /// Connect to a vcluster: write a kubeconfig context and port-forward to it.
    Connect(instances::ConnectArgs),
    /// Remove the kubeconfig context `connect` wrote (and go back to the one before).
    Disconnect(instances::DisconnectArgs),
    /// List the vclusters in the host cluster.
    List(instances::ListArgs),
    /// Delete a vcluster and everything it owns in its host namespace.
    Delete(instances::DeleteArgs),
    /// Put a vcluster to sleep now: its pods leave the host until it wakes.
    Sleep(instances::SleepArgs),
    /// Wake a sleeping vcluster: its pods come back on the host.
    Wake(instances::SleepArgs),
}

/// Logs go to stderr; `VCLUSTER_LOG` takes an env-filter directive. By default
/// kube-client's per-request errors are hidden: readiness polling expects them.
fn init_tracing() {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_env("VCLUSTER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube_client=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

/// Entry point of the binary: a usage mistake or a failure prints one line
/// and exits non-zero.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            let rendered = e.render().to_string();
            let first = rendered
                .lines()
                .next()
                .unwrap_or("error: invalid arguments");
            eprintln!("{first} (see `vcluster --help`)");
            return ExitCode::from(2);
        }
    };
    init_tracing();
    let result = match cli.command {
        Command::Dev(args) => dev::run(args),
        Command::Syncer(args) => syncer::run(*args),
        Command::ServiceCidr(args) => cidr::run(args),
        Command::ControlPlanePki(args) => pki::run(args),
        Command::Create(args) => instances::create(*args),
        Command::Connect(args) => instances::connect(args),
        Command::Disconnect(args) => instances::disconnect(args),
        Command::List(args) => instances::list(args),
        Command::Delete(args) => instances::delete(args),
        Command::Sleep(args) => instances::set_sleep(args, true),
        Command::Wake(args) => instances::set_sleep(args, false),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, without repeating a cause that the
/// message already contains.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if out.contains(&s) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s);
    }
    out.replace('\n', " ")
}
