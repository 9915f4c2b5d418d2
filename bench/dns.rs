//! `make bench-dns`: the syncer's cluster DNS against CoreDNS's kubernetes
//! plugin (built from its pinned Go module by `bench/coredns.sh`), both
//! reading the same virtual API on the same machine, asked the same query
//! mix:
//!
//! - a Service's A record, a headless Service's A records (its ready pods),
//!   a named port's SRV record;
//! - what a pod's resolver sends for an outside name with `ndots:5`: three
//!   NXDOMAIN answers for the search-path expansions, then the name itself,
//!   forwarded to an upstream (a stand-in on loopback that the bench runs,
//!   answering every A question at once, so the figure is the servers' own).
//!
//! For each size S it starts a dev stack with S KWOK pods, then S Services
//! (and 10 headless Services of one pod each) in 10 namespaces, then for
//! each server:
//! queries/s at saturation (64 clients, each with one query in flight) and
//! p50/p99 latency at a fixed open-loop rate, and the RSS of each process.
//! The syncer's added RSS is its RSS with DNS on minus a second syncer's with
//! `--dns=false`, both holding the same objects.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{StreamExt as _, TryStreamExt as _};
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt as _};
use serde::Serialize;
use serde_json::json;
use tokio::net::UdpSocket;

use super::report::percentile;
use super::{Args, HOST_NS, Syncer, VC, namespaces};

/// Namespaces the Services are spread over.
const NAMESPACES: usize = 10;
/// Headless Services, each selecting one KWOK pod.
const HEADLESS: usize = 10;
/// Clients at saturation, each with one query in flight.
const CLIENTS: usize = 64;

/// One server's figures at one size.
#[derive(Debug, Serialize)]
pub struct ServerResult {
    pub server: String,
    pub saturation_qps: f64,
    pub saturation_errors: usize,
    pub fixed_rate_qps: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub lost: usize,
    pub wrong: usize,
    pub rss_mib: f64,
}

/// One size's figures.
#[derive(Debug, Serialize)]
pub struct DnsSize {
    pub services: usize,
    pub servers: Vec<ServerResult>,
    pub syncer_rss_dns_off_mib: f64,
    pub syncer_added_rss_mib: f64,
}

/// A question and the answer code it must get.
#[derive(Clone)]
struct Question {
    wire: Vec<u8>,
    want: ResponseCode,
}

fn question(name: &str, qtype: RecordType, want: ResponseCode) -> anyhow::Result<Question> {
    let mut m = Message::query();
    m.add_query(Query::query(Name::from_ascii(name)?, qtype));
    m.metadata.recursion_desired = true;
    Ok(Question {
        wire: m.to_vec()?,
        want,
    })
}

/// The query mix, in a fixed order that every client walks through.
fn mix(services: usize) -> anyhow::Result<Vec<Question>> {
    let (ok, nx) = (ResponseCode::NoError, ResponseCode::NXDomain);
    let mut out = Vec::new();
    for i in 0..1000 {
        let svc = (i * 7919) % services;
        let ns = format!("dns-{}", svc % NAMESPACES);
        out.push(question(
            &format!("svc-{svc}.{ns}.svc.cluster.local."),
            RecordType::A,
            ok,
        )?);
        out.push(question(
            &format!("hl-{}.dns-0.svc.cluster.local.", i % HEADLESS),
            RecordType::A,
            ok,
        )?);
        out.push(question(
            &format!("_http._tcp.svc-{svc}.{ns}.svc.cluster.local."),
            RecordType::SRV,
            ok,
        )?);
        let outside = format!("ext-{}.example.com", i % 100);
        for search in [
            "dns-0.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local",
        ] {
            out.push(question(
                &format!("{outside}.{search}."),
                RecordType::A,
                nx,
            )?);
        }
        out.push(question(&format!("{outside}."), RecordType::A, ok)?);
    }
    Ok(out)
}

/// Sends one question and waits up to a second for its answer: `None` when
/// lost, else (latency, the answer had the expected code).
async fn ask(socket: &UdpSocket, q: &Question, id: u16) -> Option<(Duration, bool)> {
    let mut wire = q.wire.clone();
    wire[..2].copy_from_slice(&id.to_be_bytes());
    let sent = Instant::now();
    socket.send(&wire).await.ok()?;
    let mut buf = vec![0u8; 4096];
    let answer = async {
        loop {
            let n = socket.recv(&mut buf).await.ok()?;
            if n >= 2 && buf[..2] == id.to_be_bytes() {
                return Message::from_vec(&buf[..n]).ok();
            }
        }
    };
    let m = tokio::time::timeout(Duration::from_secs(1), answer)
        .await
        .ok()??;
    Some((sent.elapsed(), m.metadata.response_code == q.want))
}

async fn connected(port: u16) -> anyhow::Result<UdpSocket> {
    let s = UdpSocket::bind("127.0.0.1:0").await?;
    s.connect(("127.0.0.1", port)).await?;
    Ok(s)
}

/// Answers per second with `CLIENTS` questions in flight for `secs`, and
/// how many were lost or got a wrong code.
async fn saturate(port: u16, qs: Arc<Vec<Question>>, secs: u64) -> anyhow::Result<(f64, usize)> {
    let next = Arc::new(AtomicUsize::new(0));
    let until = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (qs, next) = (Arc::clone(&qs), Arc::clone(&next));
        let socket = connected(port).await?;
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut bad) = (0usize, 0usize);
            let mut id = u16::try_from(c).unwrap_or(0).wrapping_mul(1000);
            while Instant::now() < until {
                let i = next.fetch_add(1, Ordering::Relaxed) % qs.len();
                id = id.wrapping_add(1);
                match ask(&socket, &qs[i], id).await {
                    Some((_, true)) => ok += 1,
                    _ => bad += 1,
                }
            }
            (ok, bad)
        }));
    }
    let (mut ok, mut bad) = (0, 0);
    for t in tasks {
        let (o, b) = t.await?;
        ok += o;
        bad += b;
    }
    Ok((ok as f64 / started.elapsed().as_secs_f64(), bad))
}

/// Latencies at `rate` questions per second, sent open-loop for `secs`
/// (each on a socket of a small pool): (p50 ms, p99 ms, lost, wrong code).
async fn fixed_rate(
    port: u16,
    qs: Arc<Vec<Question>>,
    rate: u64,
    secs: u64,
) -> anyhow::Result<(f64, f64, usize, usize)> {
    let mut pool = Vec::new();
    for _ in 0..256 {
        pool.push(Arc::new(connected(port).await?));
    }
    let total = usize::try_from(rate * secs)?;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
        tokio::time::sleep_until(due.into()).await;
        let (qs, socket) = (Arc::clone(&qs), Arc::clone(&pool[i % pool.len()]));
        // Sockets are shared by in-flight questions: ids tell answers apart.
        let id = u16::try_from(i % 65_536).unwrap_or(0);
        tasks.push(tokio::spawn(async move {
            ask(&socket, &qs[i % qs.len()], id).await
        }));
    }
    let (mut lat, mut lost, mut wrong) = (Vec::with_capacity(total), 0, 0);
    for t in tasks {
        match t.await? {
            Some((d, good)) => {
                lat.push(d.as_secs_f64() * 1000.0);
                if !good {
                    wrong += 1;
                }
            }
            None => lost += 1,
        }
    }
    lat.sort_by(f64::total_cmp);
    Ok((percentile(&lat, 0.50), percentile(&lat, 0.99), lost, wrong))
}

/// The upstream stand-in: every A question gets 192.0.2.1 at once.
async fn upstream() -> anyhow::Result<u16> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let port = socket.local_addr()?.port();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
            let Ok(req) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
            resp.metadata.recursion_available = true;
            resp.queries.clone_from(&req.queries);
            if let Some(q) = req.queries.first() {
                let rdata = RData::A(A(std::net::Ipv4Addr::new(192, 0, 2, 1)));
                resp.add_answer(Record::from_rdata(q.name().clone(), 300, rdata));
            }
            if let Ok(wire) = resp.to_vec() {
                let _ = socket.send_to(&wire, peer).await;
            }
        }
    });
    Ok(port)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CoreDNS as a child, stopped when dropped.
struct CoreDns(Child);

impl CoreDns {
    fn start(
        bin: &Path,
        dir: &Path,
        kubeconfig: &Path,
        port: u16,
        up: u16,
    ) -> anyhow::Result<Self> {
        // The kubernetes plugin as the default Corefile of a cluster has it.
        let corefile = format!(
            ".:{port} {{\n  errors\n  kubernetes cluster.local in-addr.arpa ip6.arpa {{\n    kubeconfig {}\n    pods insecure\n    fallthrough in-addr.arpa ip6.arpa\n    ttl 30\n  }}\n  forward . 127.0.0.1:{up}\n  cache 30\n}}\n",
            kubeconfig.display()
        );
        let path = dir.join("Corefile");
        std::fs::write(&path, corefile)?;
        let log = std::fs::File::create(dir.join("logs/coredns.log"))?;
        let child = Command::new(bin)
            .arg("-conf")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        Ok(Self(child))
    }
}

impl Drop for CoreDns {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until the server on `port` answers `name` with NOERROR and an
/// answer (its cache holds the last object created).
async fn wait_answers(port: u16, name: &str, timeout: Duration) -> anyhow::Result<()> {
    let q = question(name, RecordType::A, ResponseCode::NoError)?;
    let socket = connected(port).await?;
    let deadline = Instant::now() + timeout;
    let mut id = 1u16;
    loop {
        if let Some((_, true)) = ask(&socket, &q, id).await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no answer for {name} on port {port} within {timeout:?}");
        }
        id = id.wrapping_add(1);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// S Services with a named port (no endpoints), round-robin over the
/// namespaces, and the headless Services with one pod each.
async fn objects(
    virt: &Client,
    ns: &[String],
    services: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    futures::stream::iter(0..services)
        .map(Ok)
        .try_for_each_concurrent(concurrency, |i| {
            let api: Api<Service> = Api::namespaced(virt.clone(), &ns[i % ns.len()]);
            async move {
                let svc: Service = serde_json::from_value(json!({
                    "metadata": {"name": format!("svc-{i}")},
                    "spec": {"selector": {"app": "none"},
                             "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}))?;
                api.create(&PostParams::default(), &svc)
                    .await
                    .with_context(|| format!("create Service svc-{i}"))?;
                anyhow::Ok(())
            }
        })
        .await?;
    let pods: Api<Pod> = Api::namespaced(virt.clone(), &ns[0]);
    let svcs: Api<Service> = Api::namespaced(virt.clone(), &ns[0]);
    for k in 0..HEADLESS {
        let app = format!("hl-{k}");
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": app},
            "spec": {"clusterIP": "None", "selector": {"app": app},
                     "ports": [{"name": "http", "port": 80}]}}))?;
        svcs.create(&PostParams::default(), &svc).await?;
        let pod: Pod = serde_json::from_value(json!({
            // Labelled as the bench's other pods: `wait_pod_ips` counts those.
            // Without service links, as they are: with them each host copy
            // carries seven variables per Service of its namespace (7,000 at
            // 10,000 Services), and on a busy machine the host API server
            // timed out KWOK's status patches of such a pod for five minutes.
            "metadata": {"name": format!("{app}-0"), "labels": {"app": app, "bench": "1"}},
            "spec": {"enableServiceLinks": false,
                     "containers": [{"name": "c", "image": "registry.invalid/bench:1"}]}}))?;
        pods.create(&PostParams::default(), &pod).await?;
    }
    Ok(())
}

/// The host Service the syncer waits for before it creates pods (it is the
/// nameserver it writes into them), as the chart makes it.
async fn dns_service(host: &Client) -> anyhow::Result<()> {
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": vcluster::discovery::dns_service(VC)},
        "spec": {"ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}}))?;
    Api::<Service>::namespaced(host.clone(), HOST_NS)
        .create(&PostParams::default(), &svc)
        .await?;
    Ok(())
}

async fn measure(
    server: &str,
    port: u16,
    pid: u32,
    qs: &Arc<Vec<Question>>,
    dns: &DnsArgs,
) -> anyhow::Result<ServerResult> {
    // A warm-up pass fills both servers' caches alike.
    saturate(port, Arc::clone(qs), 2).await?;
    let (qps, errors) = saturate(port, Arc::clone(qs), dns.seconds).await?;
    println!("bench-dns: {server}: {qps:.0} answers/s at saturation ({errors} lost or wrong)");
    let (p50, p99, lost, wrong) = fixed_rate(port, Arc::clone(qs), dns.rate, dns.seconds).await?;
    let rss = rss_mib(pid);
    println!(
        "bench-dns: {server}: at {} q/s p50 {p50:.3} ms, p99 {p99:.3} ms ({lost} lost, {wrong} wrong); RSS {rss:.1} MiB",
        dns.rate
    );
    Ok(ServerResult {
        server: server.to_owned(),
        saturation_qps: qps,
        saturation_errors: errors,
        fixed_rate_qps: dns.rate,
        p50_ms: p50,
        p99_ms: p99,
        lost,
        wrong,
        rss_mib: rss,
    })
}

/// The DNS section's own settings.
#[derive(Debug)]
pub struct DnsArgs {
    pub coredns: PathBuf,
    pub seconds: u64,
    pub rate: u64,
}

/// Waits until `want` virtual pods have an address (their host copies run).
async fn wait_pod_ips(virt: &Client, want: usize, timeout: Duration) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::all(virt.clone());
    let deadline = Instant::now() + timeout;
    loop {
        let list = pods
            .list(&kube::api::ListParams::default().labels("bench=1"))
            .await?;
        let (ready, waiting): (Vec<&Pod>, Vec<&Pod>) = list
            .items
            .iter()
            .partition(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some());
        let ready = ready.len();
        if ready >= want {
            return Ok(());
        }
        if Instant::now() > deadline {
            let some: Vec<String> = waiting
                .iter()
                .take(10)
                .map(|p| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()))
                .collect();
            bail!(
                "{ready} of {want} pods have an address after {timeout:?} ({} listed; without one: {})",
                list.items.len(),
                some.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn one_size(args: &Args, dns: &DnsArgs, services: usize) -> anyhow::Result<DnsSize> {
    // As many pods as Services (the syncer's caches hold both), on enough
    // KWOK nodes.
    let nodes = u32::try_from(services.div_ceil(super::PODS_PER_NODE) + 1)?;
    let (mut stack, host, virt) = super::stack_with_clients(&args.vcluster, nodes).await?;
    dns_service(&host).await?;
    let up = upstream().await?;
    let port = free_port()?;
    let dns_args = [
        format!("--dns-port={port}"),
        "--dns-bind-address=127.0.0.1".to_owned(),
        format!("--dns-upstream=127.0.0.1:{up}"),
    ];
    let mut syncer = Syncer::start_with(&stack, &args.vcluster, "syncer.log", &dns_args)?;
    syncer.wait_ready(Duration::from_secs(120)).await?;
    let names = namespaces(&virt, "dns", NAMESPACES).await?;
    // Pods first, then the Services: every pod change makes the host's
    // endpoint controllers match the pod against each Service of its
    // namespace, and on the host all of them share one namespace. With
    // 10,000 Services there first, pods reached the host at about 9 a
    // second (three attempts); what is measured here is DNS over the
    // finished set, not the order it was made in.
    let started = Instant::now();
    super::create_pods(&virt, &names, services, args.concurrency).await?;
    wait_pod_ips(&virt, services, Duration::from_secs(900)).await?;
    let pods_took = started.elapsed();
    objects(&virt, &names, services, args.concurrency).await?;
    wait_pod_ips(&virt, services + HEADLESS, Duration::from_secs(300)).await?;
    println!(
        "bench-dns: {services} running pods in {:.1}s, then {services} Services (and {HEADLESS} headless with a pod each) in {:.1}s",
        pods_took.as_secs_f64(),
        (started.elapsed() - pods_took).as_secs_f64()
    );
    let last = format!(
        "svc-{}.dns-{}.svc.cluster.local.",
        services - 1,
        (services - 1) % NAMESPACES
    );
    let timeout = Duration::from_secs(300);
    wait_answers(port, &last, timeout).await?;
    wait_answers(
        port,
        &format!("hl-{}.dns-0.svc.cluster.local.", HEADLESS - 1),
        timeout,
    )
    .await?;
    let core_port = free_port()?;
    let _core = CoreDns::start(
        &dns.coredns,
        stack.dir.path(),
        &stack.state.vcluster.kubeconfig,
        core_port,
        up,
    )?;
    let core_pid = _core.0.id();
    wait_answers(core_port, &last, timeout).await?;
    wait_answers(
        core_port,
        &format!("hl-{}.dns-0.svc.cluster.local.", HEADLESS - 1),
        timeout,
    )
    .await?;
    let qs = Arc::new(mix(services)?);
    let ours = measure("vcluster syncer", port, syncer.pid(), &qs, dns).await?;
    let theirs = measure("CoreDNS", core_port, core_pid, &qs, dns).await?;
    // The same objects held by a syncer without DNS.
    syncer.stop();
    // Its initial sync reconciles every pod and Service again: at 10,000 of
    // each on a busy 2-core machine that took more than 300 s (2026-12-06).
    let started = Instant::now();
    let mut plain = Syncer::start(&stack, &args.vcluster, "syncer-nodns.log")?;
    plain.wait_ready(Duration::from_secs(1800)).await?;
    let ready_after = started.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let off = plain.mem_mib("VmRSS:");
    println!(
        "bench-dns: a syncer with --dns=false holding the same objects: ready after {:.1}s, RSS {off:.1} MiB",
        ready_after.as_secs_f64()
    );
    plain.stop();
    // And one with DNS started the same way, after the same load: the first
    // syncer made every object (its heap keeps what the burst used), so its
    // RSS is no measure of what DNS adds to one that starts onto them.
    let started = Instant::now();
    let mut again = Syncer::start_with(&stack, &args.vcluster, "syncer-dns-again.log", &dns_args)?;
    again.wait_ready(Duration::from_secs(1800)).await?;
    wait_answers(port, &last, timeout).await?;
    let ready_after = started.elapsed();
    let loaded = measure("vcluster syncer, restarted", port, again.pid(), &qs, dns).await?;
    // CoreDNS once more, now that the stack has settled as it had for the
    // restarted syncer: the first two were measured right after the
    // objects were made, the first syncer still resyncing them, and a tail
    // latency on this machine moves with what else runs.
    let settled = measure("CoreDNS, again", core_port, core_pid, &qs, dns).await?;
    println!(
        "bench-dns: a syncer with DNS started onto the same objects: ready after {:.1}s, RSS {:.1} MiB after the load",
        ready_after.as_secs_f64(),
        loaded.rss_mib
    );
    stack.finished = true;
    Ok(DnsSize {
        services,
        syncer_added_rss_mib: loaded.rss_mib - off,
        syncer_rss_dns_off_mib: off,
        servers: vec![ours, theirs, loaded, settled],
    })
}

fn markdown(sizes: &[DnsSize], dns: &DnsArgs, run: &str) -> String {
    let mut md = format!(
        "# DNS: the syncer against CoreDNS\n\nRun {run}; `make bench-dns`. Each size: that many Services and as many running KWOK pods. Query mix: Service A, headless A, SRV, three NXDOMAIN search-path expansions and the forwarded name (a loopback upstream stand-in). Saturation: {CLIENTS} clients, one question in flight each, {} s. Fixed load: {} q/s open-loop for {} s. Rows in the order measured: the first syncer and CoreDNS right after the objects were made (that syncer still resyncing them), then a syncer restarted onto them and CoreDNS again, the stack settled.\n\n| Services | server | answers/s at saturation | p50 ms | p99 ms | lost | wrong | RSS MiB |\n|---:|---|---:|---:|---:|---:|---:|---:|\n",
        dns.seconds, dns.rate, dns.seconds
    );
    for s in sizes {
        for r in &s.servers {
            md += &format!(
                "| {} | {} | {:.0} | {:.3} | {:.3} | {} | {} | {:.1} |\n",
                s.services,
                r.server,
                r.saturation_qps,
                r.p50_ms,
                r.p99_ms,
                r.lost,
                r.wrong,
                r.rss_mib
            );
        }
    }
    md += "\nWhat DNS adds: a syncer started with DNS onto the finished objects (RSS after the load: the \"restarted\" row), against one started with `--dns=false` onto the same objects (after it is ready). The first syncer made every object, so its RSS holds what the burst used too:\n\n| Services | DNS off MiB | added by DNS MiB |\n|---:|---:|---:|\n";
    for s in sizes {
        md += &format!(
            "| {} | {:.1} | {:.1} |\n",
            s.services, s.syncer_rss_dns_off_mib, s.syncer_added_rss_mib
        );
    }
    md
}

/// Runs the DNS section for every size in `args.sizes` (Services).
pub async fn run(args: &Args, dns: &DnsArgs) -> anyhow::Result<()> {
    if !dns.coredns.is_file() {
        bail!(
            "{} not found: build it with bench/coredns.sh (make bench-dns does)",
            dns.coredns.display()
        );
    }
    std::fs::create_dir_all(&args.out)?;
    let run = super::utc_now();
    let mut sizes = Vec::new();
    for &n in &args.sizes {
        println!("bench-dns: {n} Services");
        sizes.push(one_size(args, dns, n).await?);
    }
    std::fs::write(args.out.join("dns.md"), markdown(&sizes, dns, &run))?;
    std::fs::write(
        args.out.join("dns.json"),
        serde_json::to_string_pretty(
            &json!({"run": run, "machine": super::machine(), "sizes": sizes}),
        )?,
    )?;
    println!("bench-dns: wrote {}", args.out.join("dns.md").display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_is_what_a_pod_resolver_sends() {
        let qs = mix(1000).unwrap();
        assert_eq!(qs.len(), 7000);
        let codes: Vec<ResponseCode> = qs[..7].iter().map(|q| q.want).collect();
        use ResponseCode::{NXDomain as Nx, NoError as Ok};
        assert_eq!(codes, [Ok, Ok, Ok, Nx, Nx, Nx, Ok]);
        let names: Vec<String> = qs[3..7]
            .iter()
            .map(|q| {
                Message::from_vec(&q.wire).unwrap().queries[0]
                    .name()
                    .to_ascii()
            })
            .collect();
        assert_eq!(
            names,
            [
                "ext-0.example.com.dns-0.svc.cluster.local.",
                "ext-0.example.com.svc.cluster.local.",
                "ext-0.example.com.cluster.local.",
                "ext-0.example.com."
            ]
        );
    }
}
