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
    AppArmorProfile, Capabilities, Container, EphemeralContainer, LifecycleHandler, Pod,
    PodSecurityContext, PodSpec, Probe, SELinuxOptions, SecurityContext,
    WindowsSecurityContextOptions,
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

/// What the controls look at: the pod, its spec and security context, and
/// every container of any sort.
struct Subject<'a> {
    pod: &'a Pod,
    spec: &'a PodSpec,
    psc: Option<&'a PodSecurityContext>,
    cs: Vec<C<'a>>,
}

impl Subject<'_> {
    /// `container "<name>" <says>` for each container that `fails`.
    fn containers_failing(&self, fails: impl Fn(&C<'_>) -> bool, says: &str) -> Vec<String> {
        self.cs
            .iter()
            .filter(|c| fails(c))
            .map(|c| format!("container {:?} {says}", c.name))
            .collect()
    }

    /// `pod <says>` when `pod_fails`, then [`Subject::containers_failing`].
    fn pod_and_containers_failing(
        &self,
        pod_fails: bool,
        fails: impl Fn(&C<'_>) -> bool,
        says: &str,
    ) -> Vec<String> {
        pod_fails
            .then(|| format!("pod {says}"))
            .into_iter()
            .chain(self.containers_failing(fails, says))
            .collect()
    }

    fn pod_seccomp(&self) -> Option<&str> {
        seccomp(self.psc.and_then(|s| s.seccomp_profile.as_ref()))
    }
}

/// One control of the standard: its name, the lowest level that enforces
/// it, and what in a pod fails it.
struct Control {
    name: &'static str,
    level: Level,
    offenders: fn(&Subject<'_>) -> Vec<String>,
}

const fn control(
    name: &'static str,
    level: Level,
    offenders: fn(&Subject<'_>) -> Vec<String>,
) -> Control {
    Control {
        name,
        level,
        offenders,
    }
}

/// The controls, in the order violations are reported.
const CONTROLS: &[Control] = &[
    control("hostProcess", Level::Baseline, host_process),
    control("host namespaces", Level::Baseline, host_namespaces),
    control("privileged", Level::Baseline, privileged),
    control("non-default capabilities", Level::Baseline, capabilities),
    control("hostPath volumes", Level::Baseline, host_path_volumes),
    control("hostPort", Level::Baseline, host_port),
    control("forbidden AppArmor profile", Level::Baseline, app_armor),
    control("seLinuxOptions", Level::Baseline, se_linux),
    control("procMount", Level::Baseline, proc_mount),
    control("seccompProfile", Level::Baseline, seccomp_unconfined),
    control("forbidden sysctls", Level::Baseline, sysctls),
    control(
        "host probes / lifecycle hooks",
        Level::Baseline,
        probe_hosts,
    ),
    control("restricted volume types", Level::Restricted, volume_types),
    control(
        "allowPrivilegeEscalation != false",
        Level::Restricted,
        privilege_escalation,
    ),
    control("runAsNonRoot != true", Level::Restricted, run_as_non_root),
    control("runAsUser=0", Level::Restricted, run_as_root),
    control(
        "seccompProfile (restricted)",
        Level::Restricted,
        seccomp_restricted,
    ),
    control(
        "unrestricted capabilities",
        Level::Restricted,
        capabilities_restricted,
    ),
];

/// The controls `pod` fails at `level` (empty: allowed).
pub fn check(pod: &Pod, level: Level) -> Vec<Violation> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    let subject = Subject {
        pod,
        spec,
        psc: spec.security_context.as_ref(),
        cs: containers(spec),
    };
    CONTROLS
        .iter()
        .filter(|c| level >= c.level)
        .filter_map(|c| {
            let offenders: BTreeSet<String> = (c.offenders)(&subject).into_iter().collect();
            (!offenders.is_empty()).then(|| Violation {
                control: c.name,
                detail: offenders.into_iter().collect::<Vec<_>>().join(", "),
            })
        })
        .collect()
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---- baseline --------------------------------------------------------------

fn host_process(s: &Subject<'_>) -> Vec<String> {
    let on =
        |w: Option<&WindowsSecurityContextOptions>| w.and_then(|w| w.host_process) == Some(true);
    let pod = on(s.psc.and_then(|p| p.windows_options.as_ref()));
    pod.then(|| "pod has hostProcess=true".to_owned())
        .into_iter()
        .chain(s.containers_failing(
            |c| on(c.sc.and_then(|x| x.windows_options.as_ref())),
            "has hostProcess=true",
        ))
        .collect()
}

fn host_namespaces(s: &Subject<'_>) -> Vec<String> {
    [
        (s.spec.host_network, "hostNetwork=true"),
        (s.spec.host_pid, "hostPID=true"),
        (s.spec.host_ipc, "hostIPC=true"),
    ]
    .into_iter()
    .filter(|(on, _)| *on == Some(true))
    .map(|(_, what)| what.to_owned())
    .collect()
}

fn privileged(s: &Subject<'_>) -> Vec<String> {
    s.containers_failing(
        |c| c.sc.and_then(|x| x.privileged) == Some(true),
        "must not set securityContext.privileged=true",
    )
}

fn capabilities(s: &Subject<'_>) -> Vec<String> {
    s.cs.iter()
        .filter_map(|c| {
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
        })
        .collect()
}

fn host_path_volumes(s: &Subject<'_>) -> Vec<String> {
    s.spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| v.host_path.is_some())
        .map(|v| format!("volume {:?} uses hostPath", v.name))
        .collect()
}

fn host_port(s: &Subject<'_>) -> Vec<String> {
    s.cs.iter()
        .filter(|c| c.ports.iter().any(|p| *p != 0))
        .map(|c| {
            let ports: Vec<String> = c.ports.iter().map(i32::to_string).collect();
            format!("container {:?} uses hostPort {}", c.name, ports.join(", "))
        })
        .collect()
}

fn app_armor(s: &Subject<'_>) -> Vec<String> {
    let unconfined = |p: Option<&AppArmorProfile>| p.is_some_and(|p| p.type_ == "Unconfined");
    let says = "must not set appArmorProfile.type=Unconfined";
    s.pod_and_containers_failing(
        unconfined(s.psc.and_then(|x| x.app_armor_profile.as_ref())),
        |c| unconfined(c.sc.and_then(|x| x.app_armor_profile.as_ref())),
        says,
    )
    .into_iter()
    .chain(
        s.pod
            .metadata
            .annotations
            .iter()
            .flatten()
            .filter(|(k, v)| {
                k.starts_with(APPARMOR_ANNOTATION_PREFIX)
                    && v.as_str() != "runtime/default"
                    && !v.starts_with("localhost/")
            })
            .map(|(k, v)| format!("annotation {k}={v:?}")),
    )
    .collect()
}

fn se_linux(s: &Subject<'_>) -> Vec<String> {
    let bad = |o: Option<&SELinuxOptions>| {
        o.is_some_and(|o| {
            !SELINUX_TYPES.contains(&o.type_.as_deref().unwrap_or(""))
                || o.user.as_deref().is_some_and(|u| !u.is_empty())
                || o.role.as_deref().is_some_and(|u| !u.is_empty())
        })
    };
    s.pod_and_containers_failing(
        bad(s.psc.and_then(|x| x.se_linux_options.as_ref())),
        |c| bad(c.sc.and_then(|x| x.se_linux_options.as_ref())),
        "sets a forbidden seLinuxOptions type, user or role",
    )
}

fn proc_mount(s: &Subject<'_>) -> Vec<String> {
    s.containers_failing(
        |c| {
            c.sc.and_then(|x| x.proc_mount.as_deref())
                .is_some_and(|m| m != "Default")
        },
        "must not set securityContext.procMount",
    )
}

fn seccomp_unconfined(s: &Subject<'_>) -> Vec<String> {
    s.pod_and_containers_failing(
        s.pod_seccomp() == Some("Unconfined"),
        |c| seccomp(c.sc.and_then(|x| x.seccomp_profile.as_ref())) == Some("Unconfined"),
        "must not set securityContext.seccompProfile.type=Unconfined",
    )
}

fn sysctls(s: &Subject<'_>) -> Vec<String> {
    s.psc
        .and_then(|x| x.sysctls.as_ref())
        .into_iter()
        .flatten()
        .filter(|x| !SAFE_SYSCTLS.contains(&x.name.as_str()))
        .map(|x| x.name.clone())
        .collect()
}

fn probe_hosts(s: &Subject<'_>) -> Vec<String> {
    s.containers_failing(
        |c| c.probes.iter().any(|p| probe_host(p)) || c.hooks.iter().any(|h| hook_host(h)),
        "uses probe or lifecycle host",
    )
}

// ---- restricted ------------------------------------------------------------

fn volume_types(s: &Subject<'_>) -> Vec<String> {
    s.spec
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| {
            let j = serde_json::to_value(v).ok()?;
            let kind = j
                .as_object()?
                .keys()
                .find(|k| k.as_str() != "name")
                .cloned()?;
            (!RESTRICTED_VOLUMES.contains(&kind.as_str()))
                .then(|| format!("volume {:?} uses restricted volume type {kind:?}", v.name))
        })
        .collect()
}

fn privilege_escalation(s: &Subject<'_>) -> Vec<String> {
    s.containers_failing(
        |c| c.sc.and_then(|x| x.allow_privilege_escalation) != Some(false),
        "must set securityContext.allowPrivilegeEscalation=false",
    )
}

fn run_as_non_root(s: &Subject<'_>) -> Vec<String> {
    let pod = s.psc.and_then(|x| x.run_as_non_root);
    (pod == Some(false))
        .then(|| "pod must not set securityContext.runAsNonRoot=false".to_owned())
        .into_iter()
        .chain(s.containers_failing(
            |c| match c.sc.and_then(|x| x.run_as_non_root) {
                Some(v) => !v,
                None => pod != Some(true),
            },
            "must set securityContext.runAsNonRoot=true",
        ))
        .collect()
}

fn run_as_root(s: &Subject<'_>) -> Vec<String> {
    (s.psc.and_then(|x| x.run_as_user) == Some(0))
        .then(|| "pod must not set runAsUser=0".to_owned())
        .into_iter()
        .chain(s.containers_failing(
            |c| c.sc.and_then(|x| x.run_as_user) == Some(0),
            "must not set runAsUser=0",
        ))
        .collect()
}

fn seccomp_restricted(s: &Subject<'_>) -> Vec<String> {
    let good = |t: Option<&str>| matches!(t, Some("RuntimeDefault" | "Localhost"));
    let pod = s.pod_seccomp();
    s.containers_failing(
        |c| match seccomp(c.sc.and_then(|x| x.seccomp_profile.as_ref())) {
            Some(t) => !good(Some(t)),
            None => !good(pod),
        },
        "must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
    )
}

fn capabilities_restricted(s: &Subject<'_>) -> Vec<String> {
    s.containers_failing(
        |c| {
            let caps = c.sc.and_then(|x| x.capabilities.as_ref());
            let drops_all = caps
                .and_then(|c| c.drop.as_ref())
                .is_some_and(|d| d.iter().any(|x| x == "ALL"));
            let bad = added(c.sc).into_iter().any(|cap| cap != "NET_BIND_SERVICE");
            !drops_all || bad
        },
        "must set securityContext.capabilities.drop=[\"ALL\"] and add only \"NET_BIND_SERVICE\"",
    )
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
#[path = "pss_tests.rs"]
mod tests;
