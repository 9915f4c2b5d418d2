//! Tearing the real node down: every process in its namespaces and
//! cgroups (shims and containers are not the stack's children), then the
//! cgroups; and the check that nothing of it is left.

use std::path::Path;
use std::time::{Duration, Instant};

use super::node::{NodeRecord, cgroup_hierarchies, id_of, node_dir, ns_inode};

/// Every process in the node's namespaces or cgroups.
fn node_processes(rec: &NodeRecord) -> Vec<u32> {
    let me = std::process::id();
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            ns_inode(*pid, "net") == Some(rec.netns) || ns_inode(*pid, "mnt") == Some(rec.mntns)
        })
        .collect();
    for h in cgroup_hierarchies() {
        collect_cgroup_pids(&h.join(&rec.cgroup_root), &mut pids);
    }
    pids.sort_unstable();
    pids.dedup();
    pids.retain(|p| super::process::alive(*p));
    pids
}

fn collect_cgroup_pids(dir: &Path, out: &mut Vec<u32>) {
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            collect_cgroup_pids(&e.path(), out);
        }
    }
}

fn remove_cgroup(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup(&e.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Removes what a real node leaves outside the stack's own children: the
/// processes in its namespaces and cgroups (containerd's shims, containers,
/// the holder), then its cgroups. With them go the namespaces and every
/// mount made in them. Does nothing for a stack without a real node.
pub fn teardown(state_dir: &Path) {
    let file = node_dir(state_dir).join("node.json");
    let Some(rec) = std::fs::read_to_string(&file)
        .ok()
        .and_then(|t| serde_json::from_str::<NodeRecord>(&t).ok())
    else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pids = node_processes(&rec);
        if pids.is_empty() || Instant::now() > deadline {
            if !pids.is_empty() {
                tracing::warn!(?pids, "real node processes still alive after teardown");
            }
            break;
        }
        for pid in pids {
            super::process::signal(pid, rustix::process::Signal::KILL);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for h in cgroup_hierarchies() {
        remove_cgroup(&h.join(&rec.cgroup_root));
    }
    let _ = std::fs::remove_file(&file);
}

/// What of a real node is still on the machine (for tests and `dev status`):
/// live processes, cgroup directories, and mounts naming the state directory.
pub fn leftovers(state_dir: &Path, cgroup_root: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    let root = cgroup_root
        .map(str::to_owned)
        .unwrap_or_else(|| format!("vcluster-node-{}", id_of(state_dir)));
    for h in cgroup_hierarchies() {
        let d = h.join(&root);
        if d.exists() {
            out.push(format!("cgroup {}", d.display()));
        }
    }
    let dir = state_dir.display().to_string();
    if let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") {
        out.extend(
            info.lines()
                .filter(|l| l.contains(&dir))
                .map(|l| format!("mount {l}")),
        );
    }
    let shim_marker = node_dir(state_dir).join("containerd").display().to_string();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if super::process::alive(pid)
            && super::process::cmdline(pid).is_some_and(|c| c.contains(&shim_marker))
        {
            out.push(format!("process {pid}"));
        }
    }
    out
}
