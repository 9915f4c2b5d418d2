//! Pod Security Standards, enforced by the syncer before a pod reaches the
//! host: `privileged` (nothing checked), `baseline` (the default: no known
//! privilege escalation) and `restricted` (baseline plus hardening), with
//! the controls of the Kubernetes Pod Security Standards as of v1.36. A pod
//! that fails is never created on the host; the tenant sees a Warning event
//! naming each violated control, in the form the API server's PodSecurity
//! admission uses.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EphemeralContainer, LifecycleHandler, Pod, PodSpec, Probe,
    SecurityContext,
};

/// A Pod Security Standards level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Unrestricted.
    Privileged,
    /// Prevents known privilege escalations (default).
    Baseline,
    /// Current pod hardening best practice.
    Restricted,
}

impl FromStr for Level {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "privileged" => Ok(Level::Privileged),
            "baseline" => Ok(Level::Baseline),
            "restricted" => Ok(Level::Restricted),
            other => Err(format!(
                "unknown pod security level {other:?} (privileged, baseline or restricted)"
            )),
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        })
    }
}

/// One failed control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The control, as the standard names it ("host namespaces").
    pub control: &'static str,
    /// What in the pod fails it.
    pub detail: String,
}

/// Capabilities baseline allows to add.
const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];
/// Sysctls baseline allows.
const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];
/// SELinux types baseline allows.
const SELINUX_TYPES: &[&str] = &[
    "",
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];
/// Volume types restricted allows.
const RESTRICTED_VOLUMES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];
const APPARMOR_ANNOTATION_PREFIX: &str = "container.apparmor.security.beta.kubernetes.io/";

/// A container of any sort, as far as the controls look.
struct C<'a> {
    name: &'a str,
    sc: Option<&'a SecurityContext>,
    ports: Vec<i32>,
    probes: Vec<&'a Probe>,
    hooks: Vec<&'a LifecycleHandler>,
}

fn host_ports(ports: Option<&Vec<k8s_openapi::api::core::v1::ContainerPort>>) -> Vec<i32> {
    ports
        .into_iter()
        .flatten()
        .filter_map(|p| p.host_port)
        .collect()
}

fn plain(c: &Container) -> C<'_> {
    C {
        name: &c.name,
        sc: c.security_context.as_ref(),
        ports: host_ports(c.ports.as_ref()),
        probes: [&c.liveness_probe, &c.readiness_probe, &c.startup_probe]
            .into_iter()
            .flatten()
            .collect(),
        hooks: c
            .lifecycle
            .iter()
            .flat_map(|l| [&l.post_start, &l.pre_stop])
            .flatten()
            .collect(),
    }
}

fn ephemeral(c: &EphemeralContainer) -> C<'_> {
    C {
        name: &c.name,
        sc: c.security_context.as_ref(),
        ports: host_ports(c.ports.as_ref()),
        probes: Vec::new(),
        hooks: Vec::new(),
    }
}

fn containers(spec: &PodSpec) -> Vec<C<'_>> {
    spec.init_containers
        .iter()
        .flatten()
        .map(plain)
        .chain(spec.containers.iter().map(plain))
        .chain(spec.ephemeral_containers.iter().flatten().map(ephemeral))
        .collect()
}

fn seccomp(p: Option<&k8s_openapi::api::core::v1::SeccompProfile>) -> Option<&str> {
    p.map(|p| p.type_.as_str())
}

/// Collects offenders for one control and records it when any.
struct Report(Vec<Violation>);

impl Report {
    fn add(&mut self, control: &'static str, offenders: impl IntoIterator<Item = String>) {
        let list: BTreeSet<String> = offenders.into_iter().collect();
        if !list.is_empty() {
            self.0.push(Violation {
                control,
                detail: list.into_iter().collect::<Vec<_>>().join(", "),
            });
        }
    }
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The controls `pod` fails at `level` (empty: allowed).
pub fn check(pod: &Pod, level: Level) -> Vec<Violation> {
    let mut r = Report(Vec::new());
    let Some(spec) = pod.spec.as_ref() else {
        return r.0;
    };
    if level == Level::Privileged {
        return r.0;
    }
    let cs = containers(spec);
    let psc = spec.security_context.as_ref();

    // Baseline.
    let host_process = psc
        .and_then(|s| s.windows_options.as_ref())
        .and_then(|w| w.host_process)
        == Some(true);
    r.add(
        "hostProcess",
        host_process
            .then(|| "pod has hostProcess=true".to_owned())
            .into_iter()
            .chain(
                cs.iter()
                    .filter(|c| {
                        c.sc.and_then(|s| s.windows_options.as_ref())
                            .and_then(|w| w.host_process)
                            == Some(true)
                    })
                    .map(|c| format!("container {:?} has hostProcess=true", c.name)),
            ),
    );
    r.add(
        "host namespaces",
        [
            (spec.host_network, "hostNetwork=true"),
            (spec.host_pid, "hostPID=true"),
            (spec.host_ipc, "hostIPC=true"),
        ]
        .into_iter()
        .filter(|(on, _)| *on == Some(true))
        .map(|(_, what)| what.to_owned()),
    );
    r.add(
        "privileged",
        cs.iter()
            .filter(|c| c.sc.and_then(|s| s.privileged) == Some(true))
            .map(|c| {
                format!(
                    "container {:?} must not set securityContext.privileged=true",
                    c.name
                )
            }),
    );
    r.add(
        "non-default capabilities",
        cs.iter().filter_map(|c| {
            let bad: Vec<&str> = added(c.sc)
                .into_iter()
                .filter(|cap| !BASELINE_CAPABILITIES.contains(cap))
                .collect();
            (!bad.is_empty()).then(|| {
                format!(
                    "container {:?} must not include {} in securityContext.capabilities.add",
                    c.name,
                    quoted(&bad)
                )
            })
        }),
    );
    r.add(
        "hostPath volumes",
        spec.volumes
            .iter()
            .flatten()
            .filter(|v| v.host_path.is_some())
            .map(|v| format!("volume {:?} uses hostPath", v.name)),
    );
    r.add(
        "hostPort",
        cs.iter()
            .filter(|c| c.ports.iter().any(|p| *p != 0))
            .map(|c| {
                format!(
                    "container {:?} uses hostPort {}",
                    c.name,
                    c.ports
                        .iter()
                        .map(i32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }),
    );
    let bad_apparmor = |t: Option<&str>| t == Some("Unconfined");
    r.add(
        "forbidden AppArmor profile",
        psc.and_then(|s| s.app_armor_profile.as_ref())
            .filter(|p| bad_apparmor(Some(p.type_.as_str())))
            .map(|_| "pod must not set appArmorProfile.type=Unconfined".to_owned())
            .into_iter()
            .chain(
                cs.iter()
                    .filter(|c| {
                        bad_apparmor(
                            c.sc.and_then(|s| s.app_armor_profile.as_ref())
                                .map(|p| p.type_.as_str()),
                        )
                    })
                    .map(|c| {
                        format!(
                            "container {:?} must not set appArmorProfile.type=Unconfined",
                            c.name
                        )
                    }),
            )
            .chain(
                pod.metadata
                    .annotations
                    .iter()
                    .flatten()
                    .filter(|(k, v)| {
                        k.starts_with(APPARMOR_ANNOTATION_PREFIX)
                            && v.as_str() != "runtime/default"
                            && !v.starts_with("localhost/")
                    })
                    .map(|(k, v)| format!("annotation {k}={v:?}")),
            ),
    );
    let bad_selinux = |o: Option<&k8s_openapi::api::core::v1::SELinuxOptions>| {
        o.is_some_and(|o| {
            !SELINUX_TYPES.contains(&o.type_.as_deref().unwrap_or(""))
                || o.user.as_deref().is_some_and(|u| !u.is_empty())
                || o.role.as_deref().is_some_and(|u| !u.is_empty())
        })
    };
    r.add(
        "seLinuxOptions",
        bad_selinux(psc.and_then(|s| s.se_linux_options.as_ref()))
            .then(|| "pod sets a forbidden seLinuxOptions type, user or role".to_owned())
            .into_iter()
            .chain(
                cs.iter()
                    .filter(|c| bad_selinux(c.sc.and_then(|s| s.se_linux_options.as_ref())))
                    .map(|c| {
                        format!(
                            "container {:?} sets a forbidden seLinuxOptions type, user or role",
                            c.name
                        )
                    }),
            ),
    );
    r.add(
        "procMount",
        cs.iter()
            .filter(|c| {
                c.sc.and_then(|s| s.proc_mount.as_deref())
                    .is_some_and(|m| m != "Default")
            })
            .map(|c| {
                format!(
                    "container {:?} must not set securityContext.procMount",
                    c.name
                )
            }),
    );
    let pod_seccomp = seccomp(psc.and_then(|s| s.seccomp_profile.as_ref()));
    r.add(
        "seccompProfile",
        (pod_seccomp == Some("Unconfined"))
            .then(|| "pod must not set securityContext.seccompProfile.type=Unconfined".to_owned())
            .into_iter()
            .chain(
                cs.iter()
                    .filter(|c| seccomp(c.sc.and_then(|s| s.seccomp_profile.as_ref())) == Some("Unconfined"))
                    .map(|c| format!("container {:?} must not set securityContext.seccompProfile.type=Unconfined", c.name)),
            ),
    );
    r.add(
        "forbidden sysctls",
        psc.and_then(|s| s.sysctls.as_ref())
            .into_iter()
            .flatten()
            .filter(|s| !SAFE_SYSCTLS.contains(&s.name.as_str()))
            .map(|s| s.name.clone()),
    );
    r.add(
        "host probes / lifecycle hooks",
        cs.iter()
            .filter(|c| {
                c.probes.iter().any(|p| probe_host(p)) || c.hooks.iter().any(|h| hook_host(h))
            })
            .map(|c| format!("container {:?} uses probe or lifecycle host", c.name)),
    );
    if level == Level::Baseline {
        return r.0;
    }

    // Restricted.
    r.add(
        "restricted volume types",
        spec.volumes.iter().flatten().filter_map(|v| {
            let j = serde_json::to_value(v).ok()?;
            let kind = j
                .as_object()?
                .keys()
                .find(|k| k.as_str() != "name")
                .cloned()?;
            (!RESTRICTED_VOLUMES.contains(&kind.as_str()))
                .then(|| format!("volume {:?} uses restricted volume type {kind:?}", v.name))
        }),
    );
    r.add(
        "allowPrivilegeEscalation != false",
        cs.iter()
            .filter(|c| c.sc.and_then(|s| s.allow_privilege_escalation) != Some(false))
            .map(|c| {
                format!(
                    "container {:?} must set securityContext.allowPrivilegeEscalation=false",
                    c.name
                )
            }),
    );
    let pod_non_root = psc.and_then(|s| s.run_as_non_root);
    r.add(
        "runAsNonRoot != true",
        (pod_non_root == Some(false))
            .then(|| "pod must not set securityContext.runAsNonRoot=false".to_owned())
            .into_iter()
            .chain(
                cs.iter()
                    .filter(|c| match c.sc.and_then(|s| s.run_as_non_root) {
                        Some(v) => !v,
                        None => pod_non_root != Some(true),
                    })
                    .map(|c| {
                        format!(
                            "container {:?} must set securityContext.runAsNonRoot=true",
                            c.name
                        )
                    }),
            ),
    );
    r.add(
        "runAsUser=0",
        (psc.and_then(|s| s.run_as_user) == Some(0))
            .then(|| "pod must not set runAsUser=0".to_owned())
            .into_iter()
            .chain(
                cs.iter()
                    .filter(|c| c.sc.and_then(|s| s.run_as_user) == Some(0))
                    .map(|c| format!("container {:?} must not set runAsUser=0", c.name)),
            ),
    );
    let good_seccomp = |t: Option<&str>| matches!(t, Some("RuntimeDefault" | "Localhost"));
    r.add(
        "seccompProfile (restricted)",
        cs.iter()
            .filter(|c| match seccomp(c.sc.and_then(|s| s.seccomp_profile.as_ref())) {
                Some(t) => !good_seccomp(Some(t)),
                None => !good_seccomp(pod_seccomp),
            })
            .map(|c| format!("container {:?} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"", c.name)),
    );
    r.add(
        "unrestricted capabilities",
        cs.iter().filter_map(|c| {
            let caps = c.sc.and_then(|s| s.capabilities.as_ref());
            let drops_all = caps
                .and_then(|c| c.drop.as_ref())
                .is_some_and(|d| d.iter().any(|x| x == "ALL"));
            let bad: Vec<&str> = added(c.sc)
                .into_iter()
                .filter(|cap| *cap != "NET_BIND_SERVICE")
                .collect();
            (!drops_all || !bad.is_empty()).then(|| {
                format!(
                    "container {:?} must set securityContext.capabilities.drop=[\"ALL\"] and add only \"NET_BIND_SERVICE\"",
                    c.name
                )
            })
        }),
    );
    r.0
}

fn added(sc: Option<&SecurityContext>) -> Vec<&str> {
    sc.and_then(|s| s.capabilities.as_ref())
        .and_then(|c: &Capabilities| c.add.as_ref())
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect()
}

fn nonempty(h: Option<&String>) -> bool {
    h.is_some_and(|h| !h.is_empty())
}

fn probe_host(p: &Probe) -> bool {
    nonempty(p.http_get.as_ref().and_then(|g| g.host.as_ref()))
        || nonempty(p.tcp_socket.as_ref().and_then(|t| t.host.as_ref()))
}

fn hook_host(h: &LifecycleHandler) -> bool {
    nonempty(h.http_get.as_ref().and_then(|g| g.host.as_ref()))
        || nonempty(h.tcp_socket.as_ref().and_then(|t| t.host.as_ref()))
}

/// The event message for `violations` at `level`, as PodSecurity admission
/// words it.
pub fn message(level: Level, violations: &[Violation]) -> String {
    let parts: Vec<String> = violations
        .iter()
        .map(|v| format!("{} ({})", v.control, v.detail))
        .collect();
    format!(
        "violates PodSecurity \"{level}:latest\": {}; the pod is not created on the host",
        parts.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn pod(spec: Value) -> Pod {
        let mut p = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "app", "image": "x"}]}});
        merge(&mut p["spec"], spec);
        serde_json::from_value(p).unwrap()
    }

    fn merge(a: &mut Value, b: Value) {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    fn container(sc: Value) -> Value {
        json!({"containers": [{"name": "app", "image": "x", "securityContext": sc}]})
    }

    /// One bad pod per baseline control, with the control it must fail
    /// (shared with the end-to-end test).
    fn baseline_offenders() -> Vec<(Pod, String)> {
        let list: Vec<Value> =
            serde_json::from_str(include_str!("pss-baseline-offenders.json")).unwrap();
        list.into_iter()
            .map(|e| {
                (
                    serde_json::from_value(e["pod"].clone()).unwrap(),
                    e["control"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn each_baseline_control_is_enforced() {
        let offenders = baseline_offenders();
        assert!(offenders.len() >= 14);
        for (p, control) in offenders {
            let name = p.metadata.name.clone().unwrap();
            let v = check(&p, Level::Baseline);
            assert!(v.iter().any(|v| v.control == control), "{name}: {v:?}");
            assert!(check(&p, Level::Privileged).is_empty(), "{name}");
            assert!(!check(&p, Level::Restricted).is_empty(), "{name}");
        }
    }

    #[test]
    fn ordinary_pods_pass_baseline_and_hardened_pods_pass_restricted() {
        let plain = pod(
            json!({"volumes": [{"name": "c", "configMap": {"name": "x"}}],
            "securityContext": {"sysctls": [{"name": "net.ipv4.tcp_syncookies", "value": "1"}]}}),
        );
        assert_eq!(check(&plain, Level::Baseline), vec![]);
        assert!(
            check(
                &pod(container(
                    json!({"capabilities": {"add": ["NET_BIND_SERVICE", "CHOWN"]}})
                )),
                Level::Baseline
            )
            .is_empty()
        );
        let hardened = pod(json!({
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "app", "image": "x", "securityContext": {
                "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}]}));
        assert_eq!(check(&hardened, Level::Restricted), vec![]);
        let controls: Vec<&str> = check(&plain, Level::Restricted)
            .iter()
            .map(|v| v.control)
            .collect();
        assert_eq!(
            controls,
            vec![
                "allowPrivilegeEscalation != false",
                "runAsNonRoot != true",
                "seccompProfile (restricted)",
                "unrestricted capabilities"
            ]
        );
        let nfs = pod(json!({"volumes": [{"name": "n", "nfs": {"server": "s", "path": "/"}}]}));
        assert!(
            check(&nfs, Level::Restricted)
                .iter()
                .any(|v| v.control == "restricted volume types" && v.detail.contains("nfs"))
        );
    }

    #[test]
    fn the_message_names_the_level_and_every_control() {
        let p = pod(
            json!({"hostNetwork": true, "volumes": [{"name": "h", "hostPath": {"path": "/"}}]}),
        );
        let m = message(Level::Baseline, &check(&p, Level::Baseline));
        assert!(
            m.starts_with("violates PodSecurity \"baseline:latest\": "),
            "{m}"
        );
        assert!(
            m.contains("host namespaces (hostNetwork=true)")
                && m.contains("hostPath volumes (volume \"h\" uses hostPath)"),
            "{m}"
        );
        assert_eq!("restricted".parse::<Level>(), Ok(Level::Restricted));
        assert!(
            "strict"
                .parse::<Level>()
                .unwrap_err()
                .contains("privileged, baseline or restricted")
        );
    }
}
