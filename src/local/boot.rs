//! Starting a stack, in order: ports and plane files, etcd and the API
//! servers, the controller-managers, the scheduler and KWOK with its fake
//! nodes, then (when asked) the syncer and its front door.

use std::path::PathBuf;
use std::time::Instant;

use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use kube::api::Api;

use super::plane::{Datastore, Plane, Role};
use super::ports::StackPorts;
use super::probe::{client_for, health_client};
use super::{LocalError, Stack, io_err, kwok, state, write_private, write_public};

/// The two planes' files, as [`Stack::write_planes`] laid them out.
struct Planes {
    host: Plane,
    virt: Plane,
    /// The host's admin kubeconfig file.
    host_kc: PathBuf,
    /// The virtual plane's admin kubeconfig file.
    virt_kc: PathBuf,
}

fn elapsed_ms(started: Instant) -> u64 {
    started.elapsed().as_millis() as u64
}

impl Stack {
    /// Starts every process and waits until the stack is ready.
    pub async fn boot(&mut self) -> Result<(), LocalError> {
        let started = Instant::now();
        let deadline = started + self.opts.timeout;
        let logs = self.opts.state_dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(io_err(format!("create {}", logs.display())))?;
        let ports = StackPorts::pick(self.opts.host_api_port, self.opts.vcluster_api_port)?;
        let planes = self.write_planes(&ports)?;
        let (host_client, virt_client) = self.start_api_servers(&planes, deadline).await?;
        tracing::info!(elapsed_ms = elapsed_ms(started), "API servers ready");
        self.start_controllers(&planes)?;
        self.start_kwok(&planes.host, &ports)?;
        kwok::create_nodes(&host_client, self.opts.nodes).await?;
        self.wait_controllers(&planes.host, &host_client, &virt_client, deadline)
            .await?;
        super::storage::install(&host_client).await?;
        let volumes = std::path::absolute(self.opts.state_dir.join("volumes"))
            .unwrap_or_else(|_| self.opts.state_dir.join("volumes"));
        self.storage = Some(tokio::spawn(super::storage::run(
            host_client.clone(),
            volumes,
        )));
        if self.opts.real_nodes > 0 {
            let syncer = self.opts.syncer.is_some().then_some(&ports);
            self.start_real_node(&planes.host, &host_client, syncer, deadline)
                .await?;
        }
        if let Some(spec) = self.opts.syncer.clone() {
            let kubeconfigs = (planes.host_kc.as_path(), planes.virt_kc.as_path());
            self.start_syncer(&spec, &host_client, kubeconfigs, &ports, deadline)
                .await?;
            self.open_front_door(&spec, &host_client, ports.front_door, deadline)
                .await?;
            if self.opts.real_nodes > 0 {
                self.open_dns_relays(
                    &host_client,
                    &spec.host_namespace,
                    &spec.name,
                    ports.dns,
                    deadline,
                )
                .await?;
            }
        }
        self.state.ready = true;
        self.state.ready_after_ms = Some(elapsed_ms(started));
        self.state.save()?;
        tracing::info!(elapsed_ms = elapsed_ms(started), "dev stack ready");
        Ok(())
    }

    /// Generates both planes' PKI and kubeconfigs and records them.
    fn write_planes(&mut self, ports: &StackPorts) -> Result<Planes, LocalError> {
        let dir = &self.opts.state_dir;
        let host = Plane::prepare(Role::Host, ports.host, dir)?;
        let virt = Plane::prepare(Role::Virtual, ports.virt, dir)?;
        let host_kc = dir.join("host.kubeconfig");
        // With a syncer, `vcluster.kubeconfig` is the front door's (written
        // once the syncer runs); the direct admin credential is the syncer's.
        let virt_kc = if self.opts.syncer.is_some() {
            virt.dir.join("admin.kubeconfig")
        } else {
            dir.join("vcluster.kubeconfig")
        };
        write_private(&host_kc, &host.admin_kubeconfig)?;
        write_private(&virt_kc, &virt.admin_kubeconfig)?;
        self.state.host = state::PlaneRecord::new(&host, &host_kc);
        self.state.vcluster = state::PlaneRecord::new(&virt, &virt_kc);
        self.state.kwok_port = Some(ports.kwok);
        Ok(Planes {
            host,
            virt,
            host_kc,
            virt_kc,
        })
    }

    /// Starts etcd and kube-apiserver on both planes and waits for `/readyz`;
    /// returns the host and virtual admin clients.
    async fn start_api_servers(
        &mut self,
        planes: &Planes,
        deadline: Instant,
    ) -> Result<(kube::Client, kube::Client), LocalError> {
        let store = self.opts.host_datastore;
        if store == Datastore::Kine {
            let dir = planes.host.dir.join("kine");
            std::fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        }
        self.spawn_per_plane([&planes.host], store.binary(), store.args(), &[])?;
        self.spawn_per_plane([&planes.virt], "etcd", Plane::etcd_args, &[])?;
        let mut apiserver_extra = self.opts.apiserver_args.clone();
        if self.opts.real_nodes > 0 {
            apiserver_extra.extend(self.prepare_real_node(deadline).await?);
        }
        // Single sign-on is the tenants' API server's alone.
        let mut virt_extra = apiserver_extra.clone();
        virt_extra.extend(
            self.opts
                .authentication_config
                .as_ref()
                .map(|p| format!("--authentication-config={}", p.display())),
        );
        self.spawn_per_plane(
            [&planes.host],
            "kube-apiserver",
            Plane::apiserver_args,
            &apiserver_extra,
        )?;
        self.spawn_per_plane(
            [&planes.virt],
            "kube-apiserver",
            Plane::apiserver_args,
            &virt_extra,
        )?;
        let host_client = client_for(&planes.host.admin_kubeconfig, "the host API").await?;
        let virt_client = client_for(&planes.virt.admin_kubeconfig, "the virtual API").await?;
        self.wait_http_ok("host API server /readyz", &host_client, "/readyz", deadline)
            .await?;
        self.wait_http_ok(
            "virtual API server /readyz",
            &virt_client,
            "/readyz",
            deadline,
        )
        .await?;
        Ok((host_client, virt_client))
    }

    /// Starts both controller-managers and the host's scheduler.
    fn start_controllers(&mut self, planes: &Planes) -> Result<(), LocalError> {
        self.spawn_per_plane(
            [&planes.host, &planes.virt],
            "kube-controller-manager",
            Plane::controller_manager_args,
            &[],
        )?;
        if let Some(port) = planes.host.ports.scheduler {
            self.spawn(
                "host-kube-scheduler",
                "kube-scheduler",
                planes.host.scheduler_args(port),
            )?;
        }
        Ok(())
    }

    /// Writes KWOK's Stages and node-API configuration and starts it.
    fn start_kwok(&mut self, host: &Plane, ports: &StackPorts) -> Result<(), LocalError> {
        let dir = self.opts.state_dir.clone();
        let stages = dir.join("kwok-stages.yaml");
        write_public(&stages, kwok::STAGES)?;
        let (kwok_crt, kwok_key) = host.kwok_tls();
        let kwok_dir = host.dir.join("kwok");
        std::fs::create_dir_all(&kwok_dir)
            .map_err(io_err(format!("create {}", kwok_dir.display())))?;
        let logs_file = kwok_dir.join("container.log");
        write_public(&logs_file, kwok::CONTAINER_LOG)?;
        let node_api = dir.join("kwok-node-api.yaml");
        let with_syncer = self.opts.syncer.is_some();
        write_public(
            &node_api,
            &kwok::node_api_config(
                &logs_file,
                &kwok_dir,
                with_syncer.then_some(ports.front_door),
                with_syncer.then_some(ports.syncer_health),
            ),
        )?;
        let mut kwok_args = kwok::args(
            &host.kwok_kubeconfig(),
            &stages,
            ports.kwok,
            (&kwok_crt, &kwok_key),
        );
        kwok_args.push(format!("--config={}", node_api.display()));
        self.spawn_with_env(
            "host-kwok",
            "kwok",
            kwok_args,
            // kwok also loads $KWOK_WORKDIR/kwok.yaml (default ~/.kwok): keep the user's out.
            &[("KWOK_WORKDIR", kwok_dir.display().to_string())],
        )
    }

    /// Waits for the fake nodes, both controller-managers (each plane's
    /// `default` ServiceAccount) and the scheduler's health endpoint.
    async fn wait_controllers(
        &mut self,
        host: &Plane,
        host_client: &kube::Client,
        virt_client: &kube::Client,
        deadline: Instant,
    ) -> Result<(), LocalError> {
        let nodes: Api<Node> = Api::all(host_client.clone());
        let want = self.opts.nodes as usize;
        self.wait_for("KWOK nodes to become Ready", deadline, || {
            let nodes = nodes.clone();
            async move { kwok::ready_nodes(&nodes).await >= want }
        })
        .await?;
        for (what, client) in [
            (
                "host controller-manager (default ServiceAccount)",
                host_client,
            ),
            (
                "virtual controller-manager (default ServiceAccount)",
                virt_client,
            ),
        ] {
            let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
            self.wait_for(what, deadline, || {
                let sas = sas.clone();
                async move { sas.get_opt("default").await.ok().flatten().is_some() }
            })
            .await?;
        }
        if let Some(port) = host.ports.scheduler {
            let c = health_client(port)?;
            self.wait_http_ok("host kube-scheduler /healthz", &c, "/healthz", deadline)
                .await?;
        }
        Ok(())
    }
}
