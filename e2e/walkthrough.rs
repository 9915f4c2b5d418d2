//! `examples/walkthrough.md`, run: every `sh` block of it, in order, with
//! bash, as a reader would paste them, on the dev stack's real node (the
//! chart's control-plane pod really running: `distro: k8s`, the images of
//! `image/build.sh`), with a real OpenID provider (Dex, reached by the
//! virtual API server inside the node's namespace through
//! `dev up --node-relay`). The walkthrough's `sh env` block is the one not
//! run: the suite sets those variables itself (and checks the block names
//! exactly them); a `sh background` block is started and left running (a
//! port-forward). Then what the walkthrough says the reader sees is checked
//! in what the blocks printed, and the host is checked clean after its last
//! step. Needs root, `make node-deps` and the images (`make e2e` builds them
//! from the debug binary).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::dex::{self, Dex};
use common::*;

const WALKTHROUGH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/walkthrough.md");
/// The longest one block may take (`vcluster create` waits up to 300 s itself).
const BLOCK_TIMEOUT: Duration = Duration::from_secs(600);
const T: Duration = Duration::from_secs(180);

/// One fenced `sh` block of the walkthrough.
#[derive(Debug)]
struct Block {
    /// What follows `sh` on the fence: "", "env" or "background".
    kind: String,
    script: String,
    /// Its line in the file (1-based), for messages.
    line: usize,
}

fn blocks(markdown: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    for (i, l) in markdown.lines().enumerate() {
        match (&mut open, l.trim_end()) {
            (None, fence) if fence.starts_with("```sh") => {
                open = Some(Block {
                    kind: fence.trim_start_matches("```sh").trim().to_owned(),
                    script: String::new(),
                    line: i + 1,
                });
            }
            (Some(_), "```") => out.extend(open.take()),
            (Some(b), _) => {
                b.script.push_str(l);
                b.script.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(open.is_none(), "an unclosed sh block in the walkthrough");
    out
}

/// The names the `export` lines of an `env` block set.
fn exported(script: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for l in script.lines() {
        let Some(rest) = l.trim().strip_prefix("export ") else {
            continue;
        };
        // `export A=x B=y   # comment`: every NAME= that starts a word.
        let code = rest.split(" #").next().unwrap_or("");
        for word in code.split_whitespace() {
            if let Some((name, _)) = word.split_once('=')
                && !name.is_empty()
                && name.chars().all(|c| c.is_ascii_uppercase() || c == '_')
            {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

struct Reader {
    dir: PathBuf,
    env: Vec<(String, String)>,
    background: Vec<Background>,
}

/// A `sh background` block's shell, in a process group of its own: what
/// it started (the port-forward under `timeout` and `bash`) goes with it.
struct Background(Streaming);

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.0.child.id() as i32) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

impl Reader {
    fn command(&self, script: &str) -> Command {
        let mut c = Command::new("timeout");
        c.arg(BLOCK_TIMEOUT.as_secs().to_string())
            .args(["bash", "-euo", "pipefail", "-c", script])
            .current_dir(&self.dir);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// Runs one block; its stdout, or a panic with what it printed.
    fn run(&mut self, b: &Block) -> String {
        let first = b.script.lines().next().unwrap_or("");
        let started = Instant::now();
        if b.kind == "background" {
            let mut cmd = self.command(&b.script);
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            let mut s = Streaming::spawn(&mut cmd);
            s.wait_for_line_within(T, "the port-forward", |l| {
                l.starts_with("forwarding https://")
            });
            println!(
                "  line {} (background) `{first}`: forwarding after {:.1}s",
                b.line,
                started.elapsed().as_secs_f64()
            );
            self.background.push(Background(s));
            return String::new();
        }
        let out = self.command(&b.script).output().unwrap();
        let (stdout, stderr) = text(&out);
        println!(
            "  line {} `{first}`: {:.1}s",
            b.line,
            started.elapsed().as_secs_f64()
        );
        for l in stdout.lines() {
            println!("    | {l}");
        }
        assert!(
            out.status.success(),
            "walkthrough block at line {} failed ({}):\n{}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
            b.line,
            out.status,
            b.script
        );
        stdout
    }
}

fn start_dex(dir: &Path) -> Dex {
    dex::start(
        dir,
        &dex::DexSpec {
            // The relay's address inside the node's namespace: the virtual
            // API server in the pod fetches the provider's keys there.
            address: vcluster::local::node::API_IP,
            users: vec![dex::user("alice", &["team-a-developers"])],
            clients: &["vcluster"],
            token_life: Duration::from_secs(600),
        },
    )
}

fn main() {
    let images = chart_image_dir();
    let markdown = std::fs::read_to_string(WALKTHROUGH).unwrap();
    let blocks = blocks(&markdown);
    let started = Instant::now();
    let scratch = tempfile::Builder::new()
        .prefix("vcluster-e2e-walkthrough-")
        .tempdir()
        .unwrap();
    let dex = start_dex(scratch.path());
    let relay = dex.port.to_string();
    let stack = DevStack::up(&[
        "--no-syncer",
        "--nodes",
        "1",
        "--real-nodes",
        "1",
        "--image-dir",
        &images,
        "--node-relay",
        &relay,
    ]);
    println!(
        "e2e_walkthrough: Dex and dev up --real-nodes 1 ready in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let host = stack.host_kubeconfig();

    // The reader's directory: the examples as in a checkout, the provider's CA.
    let dir = scratch.path().join("reader");
    std::fs::create_dir_all(dir.join("home")).unwrap();
    std::os::unix::fs::symlink(
        concat!(env!("CARGO_MANIFEST_DIR"), "/examples"),
        dir.join("examples"),
    )
    .unwrap();
    let ca = dir.join("provider-ca.crt");
    std::fs::write(&ca, &dex.ca_pem).unwrap();
    let bins = [
        Path::new(vcluster_bin()).parent().unwrap().to_owned(),
        vcluster::local::default_bin_dir(),
    ];
    let path = std::env::join_paths(
        bins.iter()
            .cloned()
            .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
    )
    .unwrap();
    let vars: Vec<(String, String)> = [
        ("KUBECONFIG", host.display().to_string()),
        ("ISSUER", dex.issuer.clone()),
        ("PROVIDER_CA", ca.display().to_string()),
        // The provider listens on this machine's loopback; its issuer names
        // the relay inside the node's namespace.
        (
            "TOKEN_URL",
            format!("https://127.0.0.1:{}/dex/token", dex.port),
        ),
        ("CLIENT_ID", "vcluster".to_owned()),
        ("CLIENT_SECRET", "vcluster-secret".to_owned()),
        ("ALICE_PASSWORD", dex::PASSWORD.to_owned()),
        ("VC_PORT", free_port().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut env = vars.clone();
    env.push(("PATH".into(), path.to_string_lossy().into_owned()));
    env.push(("HOME".into(), dir.join("home").display().to_string()));
    let mut reader = Reader {
        dir,
        env,
        background: Vec::new(),
    };

    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let env_blocks: Vec<&Block> = blocks.iter().filter(|b| b.kind == "env").collect();
        assert_eq!(env_blocks.len(), 1, "one `sh env` block");
        let set: BTreeSet<String> = vars.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(
            exported(&env_blocks[0].script),
            set,
            "the walkthrough's variables are the ones this suite sets"
        );
        let mut printed = Vec::new();
        for b in blocks.iter().filter(|b| b.kind != "env") {
            assert!(
                ["", "background"].contains(&b.kind.as_str()),
                "unknown block kind {:?} at line {}",
                b.kind,
                b.line
            );
            let t = Instant::now();
            let out = reader.run(b);
            if b.script.contains("vcluster create ") {
                println!(
                    "vcluster create -> ready (real node, distro k8s): {:.1}s",
                    t.elapsed().as_secs_f64()
                );
            }
            printed.push(out);
        }
        let all = printed.join("\n");
        // What the walkthrough says the reader sees.
        assert!(all.contains("oidc:alice@example.test"), "whoami: {all}");
        assert!(all.contains("oidc:team-a-developers"), "whoami: {all}");
        assert!(all.contains("hello from team-a"), "the page: {all}");
        assert!(
            all.contains("team-a staging is up"),
            "the init chart's page: {all}"
        );
        let answers: Vec<&str> = all
            .lines()
            .map(str::trim)
            .filter(|l| *l == "yes" || *l == "no")
            .collect();
        assert_eq!(answers, ["yes", "no", "no"], "auth can-i: {all}");
        assert!(
            all.lines()
                .any(|l| l.contains("Running") && l.contains("hello")),
            "the host's pods: {all}"
        );
        // After `vcluster delete`: nothing of the vcluster on the host.
        eventually_sync("nothing of team-a left on the host", T, || {
            let left = kubectl_ok(
                &host,
                &[
                    "get",
                    "pods,services,secrets,configmaps,pvc",
                    "-n",
                    "team-a",
                    "-o",
                    "name",
                ],
                None,
            );
            let left: Vec<&str> = left
                .lines()
                .filter(|l| !l.ends_with("/kube-root-ca.crt"))
                .collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            }
        });
    }));
    let failed = result.is_err();
    if failed {
        let admin = reader.dir.join("admin.kubeconfig");
        let syncer_log = [
            "logs", "team-a-0", "-n", "team-a", "-c", "syncer", "--tail", "40",
        ];
        let api_log = [
            "logs",
            "team-a-0",
            "-n",
            "team-a",
            "-c",
            "kube-apiserver",
            "--tail",
            "40",
        ];
        for (kubeconfig, place, args) in [
            (
                &host,
                "host",
                &["get", "pods", "-n", "team-a", "-o", "wide"][..],
            ),
            (
                &host,
                "host",
                &["describe", "pod", "team-a-0", "-n", "team-a"],
            ),
            (&host, "host", &syncer_log),
            (&host, "host", &api_log),
            (
                &admin,
                "inside",
                &["get", "rolebindings,clusterrolebindings", "-A"],
            ),
            (
                &admin,
                "inside",
                &[
                    "get",
                    "configmap",
                    "vcluster-init",
                    "-n",
                    "kube-system",
                    "-o",
                    "yaml",
                ],
            ),
        ] {
            let out = kubectl(kubeconfig, args, None);
            let (o, e) = text(&out);
            eprintln!("--- {place}: kubectl {}\n{o}{e}", args.join(" "));
        }
        eprintln!(
            "--- Dex: log tail\n{}",
            vcluster::local::process::log_tail(&scratch.path().join("dex.log"), 20)
        );
        eprintln!("{}", logs(stack.dir.path()));
    }
    reader.background.clear();
    drop(dex);
    stack.down_leaving_nothing();
    println!(
        "e2e_walkthrough: {} in {:.1}s",
        if failed { "FAILED" } else { "passed" },
        started.elapsed().as_secs_f64()
    );
    if failed {
        std::process::exit(101);
    }
}
