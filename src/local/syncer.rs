//! The syncer beside the stack's planes: its host namespace and API Service
//! (as the chart makes them), the syncer process, and its front door with
//! the tenant kubeconfig and a stand-in for the vcluster pod.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Instant;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Namespace, Pod, PodSpec, Secret, Service, ServicePort, ServiceSpec,
    Toleration,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ObjectMeta};

use super::ports::StackPorts;
use super::probe::http_ok;
use super::{FrontDoorRecord, LocalError, Stack, SyncerSpec, write_private};
use crate::api::{ApiError, create_if_absent};
use crate::discovery;

fn meta(name: &str, labels: Option<BTreeMap<String, String>>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        labels,
        ..ObjectMeta::default()
    }
}

impl Stack {
    /// Creates the host namespace and the vcluster's API Service, starts the
    /// syncer and waits for its `/readyz`.
    pub(super) async fn start_syncer(
        &mut self,
        spec: &SyncerSpec,
        host_client: &kube::Client,
        (host_kc, virt_kc): (&Path, &Path),
        ports: &StackPorts,
        deadline: Instant,
    ) -> Result<(), LocalError> {
        let port = ports.syncer_health;
        let ns = Namespace {
            metadata: meta(&spec.host_namespace, None),
            ..Namespace::default()
        };
        create_if_absent(&Api::all(host_client.clone()), &ns)
            .await
            .map_err(ApiError::of(format!(
                "create host namespace {}",
                spec.host_namespace
            )))?;
        self.create_host_services(spec, host_client, ports.wake)
            .await?;
        let mut args = vec![
            "syncer".to_owned(),
            format!("--name={}", spec.name),
            format!("--host-namespace={}", spec.host_namespace),
            format!("--host-kubeconfig={}", host_kc.display()),
            format!("--virtual-kubeconfig={}", virt_kc.display()),
            format!("--health-listen=127.0.0.1:{port}"),
            "--dns-bind-address=127.0.0.1".to_owned(),
            format!("--dns-port={}", ports.dns),
            // The waking page, as the chart always serves it (its Service
            // port is this port: see `create_host_services`).
            format!("--sleep-wake-listen=127.0.0.1:{}", ports.wake),
        ];
        if !spec.dns_upstreams.is_empty() {
            args.push(format!("--dns-upstream={}", spec.dns_upstreams.join(",")));
        }
        // The virtual plane's client CA, beside its admin kubeconfig.
        if let Some(pki) = virt_kc.parent().map(|d| d.join("pki")) {
            let front_door = ports.front_door;
            args.extend([
                format!("--client-ca-cert={}", pki.join("ca.crt").display()),
                format!("--client-ca-key={}", pki.join("ca.key").display()),
                format!("--front-door-listen=127.0.0.1:{front_door}"),
                format!("--kubeconfig-server=https://127.0.0.1:{front_door}"),
            ]);
        }
        self.spawn_program("syncer", &spec.exe, args, &[])?;
        self.state.syncer_port = Some(port);
        self.state.dns_port = Some(ports.dns);
        self.state.save()?;
        self.wait_for("syncer /readyz", deadline, || async move {
            http_ok(port, "/readyz").await
        })
        .await
    }

    /// The vcluster's host Services, as the chart makes them: the API
    /// Service (443 -> the syncer's 8443), whose cluster IP the virtual
    /// `default/kubernetes` Service shows and synced pods use, and the DNS
    /// Service `<name>-dns` (53 -> the syncer's DNS port, UDP and TCP), the
    /// nameserver of synced pods. The API Service's `wake` port is the
    /// waking page: the syncer points sleeping ingresses at the Service port
    /// numbered as its listen port (`wake`, on loopback), which leads to
    /// [`discovery::WAKE_PORT`] of the stand-in pod, where the real node's
    /// relay answers.
    async fn create_host_services(
        &self,
        spec: &SyncerSpec,
        host_client: &kube::Client,
        wake: u16,
    ) -> Result<(), LocalError> {
        let port = |name: &str, port: i32, target: u16, protocol: &str| ServicePort {
            name: Some(name.to_owned()),
            port,
            target_port: Some(IntOrString::Int(target.into())),
            protocol: Some(protocol.to_owned()),
            ..ServicePort::default()
        };
        let service = |name: String, component: &str, ports: Vec<ServicePort>| Service {
            metadata: meta(&name, Some(discovery::labels(&spec.name, component))),
            spec: Some(ServiceSpec {
                selector: Some(discovery::labels(
                    &spec.name,
                    discovery::COMPONENT_CONTROL_PLANE,
                )),
                ports: Some(ports),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        };
        let dns = discovery::DNS_PORT;
        let api = Api::namespaced(host_client.clone(), &spec.host_namespace);
        for svc in [
            service(
                spec.name.clone(),
                "api",
                vec![
                    port("https", 443, discovery::FRONT_DOOR_PORT, "TCP"),
                    port("wake", wake.into(), discovery::WAKE_PORT, "TCP"),
                ],
            ),
            service(
                discovery::dns_service(&spec.name),
                "dns",
                vec![port("dns", 53, dns, "UDP"), port("dns-tcp", 53, dns, "TCP")],
            ),
        ] {
            let name = svc.metadata.name.clone().unwrap_or_default();
            create_if_absent(&api, &svc)
                .await
                .map_err(ApiError::of(format!("create the vcluster Service {name}")))?;
        }
        Ok(())
    }

    /// Waits for the front door: its `vc-<name>` Secret becomes the tenant
    /// kubeconfig `vcluster.kubeconfig`, and a stand-in for the vcluster pod
    /// (labelled per the discovery contract; KWOK forwards its port 8443 to
    /// the front door) lets `vcluster list` and `vcluster connect` find it.
    pub(super) async fn open_front_door(
        &mut self,
        spec: &SyncerSpec,
        host_client: &kube::Client,
        port: u16,
        deadline: Instant,
    ) -> Result<(), LocalError> {
        let secrets: Api<Secret> = Api::namespaced(host_client.clone(), &spec.host_namespace);
        let name = discovery::kubeconfig_secret(&spec.name);
        let read = |secrets: Api<Secret>, name: String| async move {
            secrets
                .get_opt(&name)
                .await
                .ok()
                .flatten()
                .and_then(|s| s.data)
                .and_then(|d| d.get(discovery::KUBECONFIG_KEY).cloned())
                .and_then(|b| String::from_utf8(b.0).ok())
        };
        self.wait_for(&format!("Secret {name} from the syncer"), deadline, || {
            let (secrets, name) = (secrets.clone(), name.clone());
            async move {
                read(secrets, name).await.is_some()
                    && std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok()
            }
        })
        .await?;
        let kubeconfig = read(secrets.clone(), name.clone())
            .await
            .unwrap_or_default();
        let path = self.opts.state_dir.join("vcluster.kubeconfig");
        write_private(&path, &kubeconfig)?;
        let api = Api::namespaced(host_client.clone(), &spec.host_namespace);
        create_if_absent(&api, &stand_in_pod(&spec.name))
            .await
            .map_err(ApiError::of("create the control-plane stand-in pod"))?;
        self.state.front_door = Some(FrontDoorRecord {
            server: format!("https://127.0.0.1:{port}"),
            port,
            kubeconfig: path,
        });
        self.state.save()
    }
}

/// The stand-in for the vcluster pod `<name>-0`, labelled as the chart's.
fn stand_in_pod(name: &str) -> Pod {
    let labels = discovery::labels(name, discovery::COMPONENT_CONTROL_PLANE);
    Pod {
        metadata: meta(&format!("{name}-0"), Some(labels)),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "syncer".to_owned(),
                image: Some("vcluster-dev-stand-in".to_owned()),
                ports: Some(vec![ContainerPort {
                    container_port: discovery::FRONT_DOOR_PORT.into(),
                    name: Some("https".to_owned()),
                    ..ContainerPort::default()
                }]),
                ..Container::default()
            }],
            // On a KWOK node, which forwards its port 8443 to the front door
            // (tolerating the taint KWOK nodes get beside a real node).
            node_selector: Some(BTreeMap::from([("type".to_owned(), "kwok".to_owned())])),
            tolerations: Some(vec![Toleration {
                key: Some(super::node::FAKE_TAINT.to_owned()),
                operator: Some("Exists".to_owned()),
                ..Toleration::default()
            }]),
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}
