//! Shared harness of the end-to-end tests: a real dev stack started the way a
//! user starts it (`vcluster dev up --detach`), clients for both planes, the
//! machine's `kubectl`, and condition waits with deadlines.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use kube::config::Kubeconfig;
use vcluster::local::StackState;

pub mod chart;
pub mod dex;
pub mod shared;

/// The images a chart-installed vcluster (`distro: k8s`) needs on the real
/// node, and a tenant's test pod.
pub const CHART_IMAGES: &[&str] = &[
    "vcluster.tar",
    "kube-apiserver.tar",
    "kube-controller-manager.tar",
    "etcd.tar",
    "pause.tar",
    "busybox.tar",
];

/// Resident set of process `pid` in KiB (`VmRSS`; 0 if it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The image directory (`VCLUSTER_IMAGE_DIR`, default `target/images`) with
/// every [`CHART_IMAGES`] in it; otherwise exits naming the one missing.
pub fn chart_image_dir() -> String {
    let images = std::env::var("VCLUSTER_IMAGE_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target/images").to_owned());
    for i in CHART_IMAGES {
        if !Path::new(&images).join(i).is_file() {
            eprintln!("e2e: {images}/{i} missing: run `make image`");
            std::process::exit(1);
        }
    }
    images
}

/// The `vcluster` binary cargo built for this test.
pub fn vcluster_bin() -> &'static str {
    env!("CARGO_BIN_EXE_vcluster")
}

/// Runs `vcluster` with `args` and returns its output.
pub fn vcluster(args: &[&str]) -> Output {
    vcluster_with_env(args, &[])
}

/// [`vcluster`] with `env` set (what it starts inherits it).
pub fn vcluster_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(vcluster_bin())
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run vcluster")
}

/// Text of a command's stdout and stderr.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A dev stack in a temporary state directory, stopped when dropped.
pub struct DevStack {
    pub dir: tempfile::TempDir,
    pub state: StackState,
    pub up_time: Duration,
    stopped: bool,
}

impl DevStack {
    /// `vcluster dev up --detach` in a fresh state directory.
    pub fn up(extra: &[&str]) -> Self {
        Self::up_with_env(extra, &[])
    }

    /// [`DevStack::up`] with `env` set for the stack's processes.
    pub fn up_with_env(extra: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("vcluster-e2e-")
            .tempdir()
            .unwrap();
        let state_dir = dir.path().to_str().unwrap().to_owned();
        let started = Instant::now();
        let mut args = vec!["dev", "up", "--detach", "--state-dir", &state_dir];
        // `make e2e-kine`: the same tests on a host plane that stores in kine.
        let store = std::env::var("VCLUSTER_E2E_HOST_DATASTORE").ok();
        let store_arg = store.as_ref().map(|s| format!("--host-datastore={s}"));
        args.extend(store_arg.as_deref());
        args.extend_from_slice(extra);
        if !extra.iter().any(|a| a.starts_with("--dns-upstream")) {
            // Nothing leaves the machine: forwarded names go to a closed local port.
            args.push(NO_UPSTREAM);
        }
        let out = vcluster_with_env(&args, env);
        let up_time = started.elapsed();
        let (stdout, stderr) = text(&out);
        assert!(
            out.status.success(),
            "dev up failed:\n{stdout}\n{stderr}\n{}",
            logs(dir.path())
        );
        let state = StackState::load(dir.path())
            .unwrap()
            .expect("stack.json after dev up");
        assert!(state.ready);
        if let Some(store) = &store {
            let name = format!("host-{store}");
            assert!(
                state.processes.iter().any(|p| p.name == name),
                "VCLUSTER_E2E_HOST_DATASTORE={store}, but no {name} runs"
            );
        }
        Self {
            dir,
            state,
            up_time,
            stopped: false,
        }
    }

    pub fn state_dir(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }

    pub fn host_kubeconfig(&self) -> PathBuf {
        self.state.host.kubeconfig.clone()
    }

    pub fn vcluster_kubeconfig(&self) -> PathBuf {
        self.state.vcluster.kubeconfig.clone()
    }

    /// `vcluster dev down`; returns its output.
    pub fn down(&mut self) -> Output {
        self.stopped = true;
        vcluster(&["dev", "down", "--state-dir", self.state_dir()])
    }

    /// `dev down`, then asserts that nothing of the stack is left: no
    /// process, no port, nothing of a real node ([`vcluster::local::node::leftovers`]).
    pub fn down_leaving_nothing(mut self) {
        let state = self.state.clone();
        let dir = self.dir.path().to_owned();
        let out = self.down();
        assert!(out.status.success(), "dev down: {:?}", text(&out));
        assert_gone(&state, Duration::from_secs(30));
        let left = vcluster::local::node::leftovers(&dir, None);
        assert!(left.is_empty(), "left behind: {left:#?}");
    }
}

impl Drop for DevStack {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.down();
        }
    }
}

/// Every component log of a state directory, for failure messages.
pub fn logs(dir: &Path) -> String {
    let mut out = String::new();
    if let Ok(entries) = std::fs::read_dir(dir.join("logs")) {
        for e in entries.flatten() {
            let tail = vcluster::local::process::log_tail(&e.path(), 15);
            out.push_str(&format!("--- {}\n{tail}\n", e.path().display()));
        }
    }
    out
}

/// A kube client for an admin kubeconfig file.
pub async fn client(kubeconfig: &Path) -> kube::Client {
    let kc = Kubeconfig::read_from(kubeconfig).unwrap();
    vcluster::kubeconfig::client(kc).await.unwrap()
}

/// The machine's `kubectl` with `--kubeconfig`, optionally fed `stdin`.
/// Writes to `out` the kubeconfig `base` with its user authenticating by
/// `token` alone (no client certificate); returns `out`.
pub fn token_kubeconfig(base: &Path, token: &str, out: PathBuf) -> PathBuf {
    let mut kc = Kubeconfig::read_from(base).unwrap();
    let user = kc.auth_infos[0].auth_info.as_mut().unwrap();
    user.client_certificate_data = None;
    user.client_key_data = None;
    user.token = Some(token.to_owned().into());
    std::fs::write(&out, vcluster::kubeconfig::to_yaml(&kc).unwrap()).unwrap();
    out
}

pub fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new("kubectl");
    cmd.arg("--kubeconfig").arg(kubeconfig).args(args);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("kubectl on PATH");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

/// `kubectl` that must succeed; returns stdout.
pub fn kubectl_ok(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let out = kubectl(kubeconfig, args, stdin);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "kubectl {args:?} failed: {stderr}");
    stdout
}

/// The vcluster's API Service on the host (443 → the front door), as the chart makes it.
pub fn api_service(host_kubeconfig: &Path, vc: &str, host_namespace: &str) {
    kubectl_ok(
        host_kubeconfig,
        &[
            "create",
            "service",
            "clusterip",
            vc,
            "-n",
            host_namespace,
            "--tcp=443:8443",
        ],
        None,
    );
}

/// Polls `check` until it yields a value or `timeout` passes (then panics
/// naming `what` and the last observation).
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Synchronous variant of [`eventually`] for checks that are not async.
pub fn eventually_sync<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Runs an async test body on its own runtime.
pub fn block_on<F: Future<Output = ()>>(f: F) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// True when something listens on 127.0.0.1:`port`.
pub fn listening(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// Asserts that no process of `state` is alive and none of its ports listens,
/// waiting up to `timeout` for them to go.
pub fn assert_gone(state: &StackState, timeout: Duration) {
    let mut pids: Vec<u32> = state.processes.iter().map(|p| p.pid).collect();
    pids.push(state.supervisor_pid);
    eventually_sync("every stack process to end", timeout, || {
        let alive: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|p| vcluster::local::process::alive(*p))
            .collect();
        if alive.is_empty() {
            Ok(())
        } else {
            Err(format!("alive: {alive:?}"))
        }
    });
    let ports = state.ports();
    assert!(ports.len() >= 9, "state records every port: {ports:?}");
    eventually_sync("every stack port to close", timeout, || {
        let open: Vec<u16> = ports.iter().copied().filter(|p| listening(*p)).collect();
        if open.is_empty() {
            Ok(())
        } else {
            Err(format!("listening: {open:?}"))
        }
    });
}

/// True when `GET path` on 127.0.0.1:`port` answers 200 (plain HTTP).
pub fn http_ok_blocking(port: u16, path: &str) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).unwrap_or(0);
    buf[..n].starts_with(b"HTTP/1.1 200") || buf[..n].starts_with(b"HTTP/1.0 200")
}

/// Creates host namespace `ns` and in it the API Service of vcluster `vc`
/// (443 -> the syncer's 8443), as the chart makes them.
pub fn host_namespace_with_api_service(stack: &DevStack, vc: &str, ns: &str) {
    let hk = stack.host_kubeconfig();
    kubectl_ok(&hk, &["create", "namespace", ns], None);
    api_service(&hk, vc, ns);
}

/// The body of `GET /metrics` on a syncer's health port 127.0.0.1:`port`.
pub fn syncer_metrics(port: u16) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n").unwrap().1.to_owned()
}

/// A `vcluster syncer` process run the way the pod runs it, against a dev
/// stack's planes; killed when dropped.
/// A DNS upstream that answers nothing (a closed local port): forwarded
/// names get SERVFAIL, and nothing leaves the machine.
pub const NO_UPSTREAM: &str = "--dns-upstream=127.0.0.1:9";

pub struct SyncerProcess {
    pub child: std::process::Child,
    pub port: u16,
    /// Its DNS port (UDP and TCP on 127.0.0.1).
    pub dns_port: u16,
    pub log: PathBuf,
    pub name: String,
    pub host_namespace: String,
}

/// A free port on 127.0.0.1 that no other caller in this test process was
/// given. The kernel may hand a just-released port out again, so two picks in
/// a row (a syncer's health and DNS ports) could otherwise be the same.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

impl SyncerProcess {
    /// Starts a syncer for vcluster `name` in host namespace `host_namespace`
    /// (created if missing) and waits for /readyz.
    pub fn start(stack: &DevStack, name: &str, host_namespace: &str) -> Self {
        Self::start_with(stack, name, host_namespace, &[])
    }

    /// [`SyncerProcess::start`] with extra syncer arguments.
    pub fn start_with(stack: &DevStack, name: &str, host_namespace: &str, extra: &[&str]) -> Self {
        let me = Self::spawn_with(stack, name, host_namespace, extra);
        me.wait_ready(Duration::from_secs(60))
    }

    /// [`SyncerProcess::start_with`] with its own host credential.
    pub fn start_as(
        stack: &DevStack,
        name: &str,
        host_namespace: &str,
        host_kubeconfig: &Path,
        extra: &[&str],
    ) -> Self {
        Self::spawn_as(stack, name, host_namespace, host_kubeconfig, extra)
            .wait_ready(Duration::from_secs(60))
    }

    /// Starts a syncer like [`SyncerProcess::start_with`] without waiting for /readyz.
    pub fn spawn_with(stack: &DevStack, name: &str, host_namespace: &str, extra: &[&str]) -> Self {
        Self::spawn_as(stack, name, host_namespace, &stack.host_kubeconfig(), extra)
    }

    /// [`SyncerProcess::spawn_with`] with its own host credential.
    pub fn spawn_as(
        stack: &DevStack,
        name: &str,
        host_namespace: &str,
        host_kubeconfig: &Path,
        extra: &[&str],
    ) -> Self {
        let virt = stack.vcluster_kubeconfig();
        Self::spawn_between(stack, &virt, name, host_namespace, host_kubeconfig, extra)
    }

    /// A syncer for `stack`'s host and the virtual API of `virtual_kubeconfig`
    /// (another stack's virtual plane: a second vcluster on the same host).
    pub fn spawn_between(
        stack: &DevStack,
        virtual_kubeconfig: &Path,
        name: &str,
        host_namespace: &str,
        host_kubeconfig: &Path,
        extra: &[&str],
    ) -> Self {
        let _ = kubectl(
            &stack.host_kubeconfig(),
            &["create", "namespace", host_namespace],
            None,
        );
        let (port, dns_port) = (free_port(), free_port());
        // The DNS Service the chart creates: synced pods wait for its address.
        let dns_service = serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("{name}-dns"), "namespace": host_namespace},
            "spec": {"ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 1053},
                               {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 1053}]},
        });
        let _ = kubectl(
            &stack.host_kubeconfig(),
            &["apply", "-f", "-"],
            Some(&dns_service.to_string()),
        );
        let mut dns_args = vec![
            "--dns-bind-address".to_owned(),
            "127.0.0.1".to_owned(),
            "--dns-port".to_owned(),
            dns_port.to_string(),
        ];
        if !extra.iter().any(|a| a.starts_with("--dns")) {
            dns_args.push(NO_UPSTREAM.to_owned());
        }
        let log = stack
            .dir
            .path()
            .join("logs")
            .join(format!("syncer-{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(vcluster_bin())
            .args([
                "syncer",
                "--name",
                name,
                "--host-namespace",
                host_namespace,
                "--host-kubeconfig",
                host_kubeconfig.to_str().unwrap(),
                "--virtual-kubeconfig",
                virtual_kubeconfig.to_str().unwrap(),
                "--health-listen",
                &format!("127.0.0.1:{port}"),
                "--resync-seconds",
                "30",
            ])
            .args(&dns_args)
            .args(extra)
            .env("VCLUSTER_LOG", "info,vcluster=debug")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Self {
            child,
            port,
            dns_port,
            log,
            name: name.to_owned(),
            host_namespace: host_namespace.to_owned(),
        }
    }

    /// Waits up to `timeout` for /readyz; panics with the log tail if the
    /// syncer exits.
    pub fn wait_ready(mut self, timeout: Duration) -> Self {
        let me = &mut self;
        eventually_sync("syncer /readyz", timeout, || {
            if let Ok(Some(status)) = me.child.try_wait() {
                panic!(
                    "syncer exited ({status}):\n{}",
                    vcluster::local::process::log_tail(&me.log, 30)
                );
            }
            if http_ok_blocking(me.port, "/readyz") {
                Ok(())
            } else {
                Err("not ready".into())
            }
        });
        self
    }

    /// Kills the syncer (SIGKILL, as a crash would) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SyncerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// POSTs a JSON body to etcd's HTTP gateway on 127.0.0.1:`port`; returns the body.
pub fn etcd_post(port: u16, path: &str, body: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!(
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "etcd {path}: {out}"
    );
    body.to_owned()
}

/// Compacts the etcd on `port` to its current revision; returns that revision.
pub fn etcd_compact(port: u16) -> i64 {
    let range = etcd_post(port, "/v3/kv/range", r#"{"key":"AA==","limit":1}"#);
    let v: serde_json::Value = serde_json::from_str(&range).unwrap();
    let rev: i64 = v["header"]["revision"].as_str().unwrap().parse().unwrap();
    etcd_post(
        port,
        "/v3/kv/compaction",
        &format!(r#"{{"revision":"{rev}","physical":true}}"#),
    );
    rev
}

/// Waits until no object of `api` matches `labels`.
pub async fn none_left<K>(what: &str, api: &kube::Api<K>, labels: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    none_left_within(what, api, labels, Duration::from_secs(60)).await;
}

/// [`none_left`] with its own deadline.
pub async fn none_left_within<K>(what: &str, api: &kube::Api<K>, labels: &str, timeout: Duration)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    eventually(what, timeout, || async {
        let n = api
            .list(&kube::api::ListParams::default().labels(labels))
            .await
            .map_err(|e| e.to_string())?
            .items
            .len();
        if n == 0 {
            Ok(())
        } else {
            Err(format!("{n} left"))
        }
    })
    .await
}

/// Clients of `stack`'s virtual API (first) and host API (second).
pub async fn clients(stack: &DevStack) -> (kube::Client, kube::Client) {
    (
        client(&stack.vcluster_kubeconfig()).await,
        client(&stack.host_kubeconfig()).await,
    )
}

/// Creates the object `v` describes with `api`.
pub async fn create<K>(api: &kube::Api<K>, v: serde_json::Value) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(v).unwrap();
    api.create(&kube::api::PostParams::default(), &obj)
        .await
        .unwrap()
}

/// Waits until object `name` of `api` exists; returns it.
pub async fn present<K>(what: &str, api: &kube::Api<K>, name: &str) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    eventually(what, Duration::from_secs(90), || async {
        api.get_opt(name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "absent".to_owned())
    })
    .await
}

/// Waits until object `name` of `api` is gone.
pub async fn gone<K>(what: &str, api: &kube::Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    eventually(what, Duration::from_secs(90), || async {
        match api.get_opt(name).await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(_) => Err("still there".into()),
        }
    })
    .await
}

/// Waits for an event with `reason` in virtual namespace `namespace`; returns it.
pub async fn event_with_reason(
    c: &kube::Client,
    namespace: &str,
    reason: &str,
) -> k8s_openapi::api::events::v1::Event {
    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(c.clone(), namespace);
    eventually(
        &format!("a {reason} event"),
        Duration::from_secs(90),
        || async {
            let l = events
                .list(&kube::api::ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            l.items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some(reason))
                .ok_or_else(|| "no event yet".to_owned())
        },
    )
    .await
}

/// A dev stack without its own syncer and one `vcluster syncer` process for
/// vcluster `vc` in host namespace `host_namespace`: what the syncer suites share.
pub struct SyncedEnv {
    pub stack: DevStack,
    pub syncer: std::sync::Mutex<Option<SyncerProcess>>,
    pub vc: &'static str,
    pub host_namespace: &'static str,
    pub syncer_args: &'static [&'static str],
}

impl SyncedEnv {
    /// `dev up --no-syncer` with `stack_args`, and the syncer with `syncer_args`.
    pub fn up(
        stack_args: &[&str],
        vc: &'static str,
        host_namespace: &'static str,
        syncer_args: &'static [&'static str],
    ) -> Self {
        let mut args = vec!["--no-syncer"];
        args.extend_from_slice(stack_args);
        let stack = DevStack::up(&args);
        let syncer = SyncerProcess::start_with(&stack, vc, host_namespace, syncer_args);
        Self {
            stack,
            syncer: std::sync::Mutex::new(Some(syncer)),
            vc,
            host_namespace,
            syncer_args,
        }
    }

    /// The host name of virtual object `namespace/name`.
    pub fn host_name(&self, namespace: &str, name: &str) -> String {
        vcluster::translate::host_name(
            &vcluster::translate::VclusterName::new(self.vc).unwrap(),
            namespace,
            name,
        )
    }

    /// Kills the syncer (SIGKILL).
    pub fn kill_syncer(&self) {
        if let Some(mut s) = self.syncer.lock().unwrap().take() {
            s.kill();
        }
    }

    /// Starts the syncer again and waits for /readyz.
    pub fn restart_syncer(&self) {
        let s =
            SyncerProcess::spawn_with(&self.stack, self.vc, self.host_namespace, self.syncer_args);
        *self.syncer.lock().unwrap() = Some(s.wait_ready(Duration::from_secs(90)));
    }

    /// Runs `groups` (see [`run_groups`]), prints the syncer's log tail on a
    /// failure, stops everything and exits non-zero if any test failed.
    pub fn run(self, args: &libtest_mimic::Arguments, groups: &[(&[Test<Self>], Option<usize>)]) {
        let env = std::sync::Arc::new(self);
        let failed = run_groups(args, &env, groups);
        let log = env.syncer.lock().unwrap().as_ref().map(|s| s.log.clone());
        finish(env, failed, log);
    }
}

/// Ends a suite: on a failure prints the tail of `syncer_log`, then drops
/// `env` (its stack and syncer: `process::exit` runs no destructors, and the
/// trials have released their references by now) and exits 101 if any test failed.
pub fn finish<E>(env: std::sync::Arc<E>, failed: u64, syncer_log: Option<PathBuf>) {
    let keep = std::env::var_os("VCLUSTER_E2E_KEEP_LOGS").is_some();
    if (failed > 0 || keep)
        && let Some(log) = syncer_log
    {
        if failed > 0 {
            eprintln!(
                "--- syncer log tail\n{}",
                vcluster::local::process::log_tail(&log, 40)
            );
        }
        // The stack's directory goes with the stack: its logs (the syncer's at
        // debug level, every restart of it appended) stay for a post-mortem
        // (or on VCLUSTER_E2E_KEEP_LOGS, for a look at a passing run).
        if let Some(logs) = log.parent() {
            keep_logs(logs);
        }
    }
    drop(env);
    if failed > 0 {
        std::process::exit(101);
    }
}

/// Copies the log files of `logs` to `target/tmp/e2e-logs/<suite>-<unix
/// seconds>/` and says where (a failed suite's evidence outlives its stack).
pub fn keep_logs(logs: &Path) {
    let suite = std::env::args()
        .next()
        .and_then(|a| {
            Path::new(&a)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "e2e".to_owned());
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let to = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("e2e-logs")
        .join(format!("{suite}-{secs}"));
    let copied = std::fs::create_dir_all(&to).and_then(|()| {
        for e in std::fs::read_dir(logs)?.flatten() {
            if e.file_type().is_ok_and(|t| t.is_file()) {
                std::fs::copy(e.path(), to.join(e.file_name()))?;
            }
        }
        Ok(())
    });
    match copied {
        Ok(()) => eprintln!("--- the stack's logs are kept in {}", to.display()),
        Err(e) => eprintln!(
            "--- could not keep the stack's logs in {}: {e}",
            to.display()
        ),
    }
}

/// Creates namespace `name`.
pub async fn namespace(c: &kube::Client, name: &str) {
    create(
        &kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(c.clone()),
        serde_json::json!({"metadata": {"name": name}}),
    )
    .await;
}

/// A test of a suite whose tests share an environment `E`.
pub type Test<E> = (&'static str, fn(&E));

/// Runs groups of tests one group after the other (a group with `Some(1)`
/// runs its tests one at a time), prints the tally as `e2e: N passed, N
/// failed`, and returns the number that failed. With `--list`, lists them.
pub fn run_groups<E: Send + Sync + 'static>(
    args: &libtest_mimic::Arguments,
    env: &std::sync::Arc<E>,
    groups: &[(&[Test<E>], Option<usize>)],
) -> u64 {
    let (mut passed, mut failed) = (0, 0);
    for (tests, threads) in groups {
        let mut a = args.clone();
        if threads.is_some() {
            a.test_threads = *threads;
        }
        let trials = tests
            .iter()
            .map(|(name, f)| {
                let (env, f) = (std::sync::Arc::clone(env), *f);
                libtest_mimic::Trial::test(*name, move || {
                    f(&env);
                    Ok(())
                })
            })
            .collect();
        let c = libtest_mimic::run(&a, trials);
        passed += c.num_passed;
        failed += c.num_failed;
    }
    println!("e2e: {passed} passed, {failed} failed");
    failed
}

/// Handles `--list` for a suite (before any stack starts) and checks the
/// upstream binaries are built; exits when there is nothing more to do.
pub fn list_or_check<E>(args: &libtest_mimic::Arguments, groups: &[&[Test<E>]]) {
    if args.list {
        let trials = groups
            .iter()
            .flat_map(|g| g.iter())
            .map(|(n, _)| libtest_mimic::Trial::test(*n, || Ok(())))
            .collect();
        libtest_mimic::run(args, trials).exit();
    }
    if let Err(e) = vcluster::local::check_binaries(&vcluster::local::default_bin_dir()) {
        eprintln!("e2e: {e}");
        std::process::exit(1);
    }
}

/// The phase of a pod ("" before it has one).
pub fn phase(p: &k8s_openapi::api::core::v1::Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// Pods labelled `app=<app>` of `pods`, once exactly `n` of them are Running
/// (not terminating) with a pod IP and a node, within `timeout`.
pub async fn running(
    pods: &kube::Api<k8s_openapi::api::core::v1::Pod>,
    app: &str,
    n: usize,
    timeout: Duration,
) -> Vec<k8s_openapi::api::core::v1::Pod> {
    let lp = kube::api::ListParams::default().labels(&format!("app={app}"));
    exactly(
        &format!("{n} running pods app={app}"),
        pods,
        &lp,
        n,
        timeout,
        |p| {
            p.metadata.deletion_timestamp.is_none()
                && phase(p) == "Running"
                && p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some()
                && p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
        },
    )
    .await
}

/// The pods of `pods` listed with `lp` once exactly `n` of them pass `keep`,
/// within `timeout` (`what` names the wait).
pub async fn exactly(
    what: &str,
    pods: &kube::Api<k8s_openapi::api::core::v1::Pod>,
    lp: &kube::api::ListParams,
    n: usize,
    timeout: Duration,
    keep: impl Fn(&k8s_openapi::api::core::v1::Pod) -> bool,
) -> Vec<k8s_openapi::api::core::v1::Pod> {
    eventually(what, timeout, || async {
        let l = pods.list(lp).await.map_err(|e| e.to_string())?;
        let (ok, other): (Vec<_>, Vec<_>) = l.items.into_iter().partition(|p| keep(p));
        if ok.len() == n {
            Ok(ok)
        } else {
            // Name the pods that do not count, with their phase, so a
            // failure says which one is behind.
            let others: Vec<String> = other
                .iter()
                .take(5)
                .map(|p| {
                    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                    format!(
                        "{} {}",
                        p.metadata.name.as_deref().unwrap_or("?"),
                        phase.unwrap_or("-")
                    )
                })
                .collect();
            Err(format!("{} of {n}; not counted: {others:?}", ok.len()))
        }
    })
    .await
}

/// A child whose stdout lines are collected as they come.
pub struct Streaming {
    pub child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Streaming {
    pub fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = std::sync::Arc::clone(&lines);
            std::thread::spawn(move || {
                for l in std::io::BufRead::lines(std::io::BufReader::new(pipe)) {
                    let Ok(l) = l else { break };
                    lines.lock().unwrap().push(l);
                }
            });
        }
        Self { child, lines }
    }

    /// Waits up to `timeout` for a line matching `pred`; panics naming
    /// `what` (with the lines so far) if none comes or the child exits.
    pub fn wait_for_line_within(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        eventually_sync(what, timeout, || {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(format!("exited {st}: {:?}", self.lines.lock().unwrap()));
            }
            let lines = self.lines.lock().unwrap();
            lines
                .iter()
                .find(|l| pred(l))
                .cloned()
                .ok_or_else(|| format!("{:?}", *lines))
        })
    }
}

impl Streaming {
    /// The lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits up to `timeout` for the child to exit; returns its status.
    pub fn wait_exit_within(&mut self, timeout: Duration, what: &str) -> std::process::ExitStatus {
        eventually_sync(what, timeout, || match self.child.try_wait() {
            Ok(Some(st)) => Ok(st),
            _ => Err(format!("still running: {:?}", self.lines())),
        })
    }

    pub fn count(&self, pred: impl Fn(&str) -> bool) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| pred(l))
            .count()
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
