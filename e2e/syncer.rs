//! End-to-end tests of the syncer: tenants create workloads in the virtual
//! cluster, the host runs them (KWOK), the tenant sees them run. One dev stack
//! and one `vcluster syncer` process are shared by the first group (each test
//! works in its own virtual namespace); the second group stops and restarts
//! the syncer.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use libtest_mimic::Arguments;
use serde_json::json;
use vcluster::translate::pod::TOKEN_SECRET_ANNOTATION;

const T: Duration = Duration::from_secs(60);
const VC: &str = "e2e";
const HOST_NS: &str = "team-e2e";

type Env = SyncedEnv;

async fn clients_of(env: &Env) -> (kube::Client, kube::Client) {
    clients(&env.stack).await
}

fn deployment(name: &str, replicas: i32) -> serde_json::Value {
    json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {
                "containers": [{"name": "main", "image": "nginx:1.27",
                    "env": [
                        {"name": "COLOUR", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "colour"}}},
                        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}}
                    ],
                    "envFrom": [{"configMapRef": {"name": "settings"}}],
                    "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}, {"name": "sec", "mountPath": "/sec"}]}],
                "volumes": [
                    {"name": "cfg", "configMap": {"name": "settings"}},
                    {"name": "sec", "secret": {"secretName": "creds"}}
                ]
            }}
        }
    })
}

/// The `settings` ConfigMap, the `creds` Secret and a Deployment using both.
async fn deploy_with_config(c: &kube::Client, ns: &str, name: &str, replicas: i32) {
    config_objects(c, ns).await;
    create(
        &Api::<Deployment>::namespaced(c.clone(), ns),
        deployment(name, replicas),
    )
    .await;
}

async fn config_objects(c: &kube::Client, ns: &str) {
    create(
        &Api::<ConfigMap>::namespaced(c.clone(), ns),
        json!({
            "metadata": {"name": "settings"}, "data": {"colour": "blue"}
        }),
    )
    .await;
    create(
        &Api::<Secret>::namespaced(c.clone(), ns),
        json!({
            "metadata": {"name": "creds"}, "stringData": {"token": "s3cret"}
        }),
    )
    .await;
}

fn deployment_with_config_runs_on_the_host(env: &Env) {
    let ns = "dep";
    block_on(async {
        let (v, h) = clients_of(env).await;
        namespace(&v, ns).await;
        deploy_with_config(&v, ns, "web", 3).await;
        let vpods: Api<Pod> = Api::namespaced(v.clone(), ns);
        let pods = running(&vpods, "web", 3, T).await;

        let hpods: Api<Pod> = Api::namespaced(h.clone(), HOST_NS);
        let hcms: Api<ConfigMap> = Api::namespaced(h.clone(), HOST_NS);
        let hsecrets: Api<Secret> = Api::namespaced(h.clone(), HOST_NS);
        let host_cm = env.host_name(ns, "settings");
        let host_secret = env.host_name(ns, "creds");
        assert_eq!(
            hcms.get(&host_cm).await.unwrap().data.unwrap()["colour"],
            "blue"
        );
        assert!(
            hsecrets
                .get(&host_secret)
                .await
                .unwrap()
                .data
                .unwrap()
                .contains_key("token")
        );
        let mut token_secrets = std::collections::BTreeSet::new();
        for p in &pods {
            let vname = p.metadata.name.clone().unwrap();
            let hp = hpods.get(&env.host_name(ns, &vname)).await.unwrap();
            let hspec = hp.spec.clone().unwrap();
            // The host pod refers to the translated objects and the host placed it.
            let vols = hspec.volumes.unwrap();
            assert_eq!(vols[0].config_map.as_ref().unwrap().name, host_cm);
            assert_eq!(
                vols[1].secret.as_ref().unwrap().secret_name.as_deref(),
                Some(host_secret.as_str())
            );
            let env_vars = hspec.containers[0].env.clone().unwrap();
            assert_eq!(
                env_vars[0]
                    .value_from
                    .as_ref()
                    .unwrap()
                    .config_map_key_ref
                    .as_ref()
                    .unwrap()
                    .name,
                host_cm
            );
            assert_eq!(hspec.automount_service_account_token, Some(false));
            let api_host = env_vars
                .iter()
                .find(|e| e.name == "KUBERNETES_SERVICE_HOST")
                .unwrap();
            assert_eq!(
                api_host.value.as_deref(),
                Some(format!("{VC}.{HOST_NS}.svc").as_str())
            );
            // The virtual service-account token, mounted from a host Secret
            // the pods of the service account share (named on the host pod),
            // is accepted by the virtual API as this pod's service account.
            let token_secret = hp.annotations()[TOKEN_SECRET_ANNOTATION].clone();
            assert!(
                token_secret.starts_with(&format!("{}.sa-token-", env.host_name(ns, "default"))),
                "{token_secret}"
            );
            token_secrets.insert(token_secret.clone());
            let mounted = vols.iter().any(|vol| {
                vol.projected.as_ref().is_some_and(|p| {
                    p.sources
                        .iter()
                        .flatten()
                        .any(|s| s.secret.as_ref().is_some_and(|s| s.name == token_secret))
                })
            });
            assert!(mounted, "host pod mounts {token_secret}");
            let sec = eventually("the token secret", T, || async {
                hsecrets
                    .get_opt(&token_secret)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| "missing".to_owned())
            })
            .await;
            let token = String::from_utf8(sec.data.unwrap()["token"].0.clone()).unwrap();
            let review: k8s_openapi::api::authentication::v1::TokenReview =
                serde_json::from_value(json!({
                    "spec": {"token": token}
                }))
                .unwrap();
            let out = Api::<k8s_openapi::api::authentication::v1::TokenReview>::all(v.clone())
                .create(&PostParams::default(), &review)
                .await
                .unwrap();
            let st = out.status.unwrap();
            assert_eq!(st.authenticated, Some(true), "{st:?}");
            let user = st.user.unwrap();
            assert_eq!(
                user.username.as_deref(),
                Some(format!("system:serviceaccount:{ns}:default").as_str())
            );
            // Shared by the service account's pods: bound to no pod (see the
            // README's security section for what that trades).
            let extra = user.extra.unwrap_or_default();
            assert_eq!(extra.get("authentication.kubernetes.io/pod-name"), None);
            // What the tenant sees is what the host did.
            let vst = p.status.clone().unwrap();
            let hst = hp.status.unwrap();
            assert_eq!(vst.pod_ip, hst.pod_ip);
            assert_eq!(p.spec.as_ref().unwrap().node_name, hspec.node_name);
        }
        assert_eq!(
            token_secrets.len(),
            1,
            "one token Secret for the three pods"
        );
        // A virtual Node stands for each host node in use.
        let vnodes = Api::<Node>::all(v.clone())
            .list(&ListParams::default())
            .await
            .unwrap();
        for p in &pods {
            let node = p.spec.as_ref().unwrap().node_name.clone().unwrap();
            let vn = vnodes
                .items
                .iter()
                .find(|n| n.metadata.name.as_deref() == Some(&node))
                .unwrap();
            let ready = vn
                .status
                .as_ref()
                .unwrap()
                .conditions
                .as_ref()
                .unwrap()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            assert!(ready, "virtual node {node} Ready");
        }
        // kubectl through the virtual kubeconfig shows them running with IPs and nodes.
        let wide = kubectl_ok(
            &env.stack.vcluster_kubeconfig(),
            &["-n", ns, "get", "pods", "-o", "wide"],
            None,
        );
        for p in &pods {
            let line = wide
                .lines()
                .find(|l| l.starts_with(p.metadata.name.as_deref().unwrap()))
                .unwrap();
            assert!(line.contains("Running"), "{line}");
            assert!(
                line.contains(p.status.as_ref().unwrap().pod_ip.as_deref().unwrap()),
                "{line}"
            );
            assert!(
                line.contains(p.spec.as_ref().unwrap().node_name.as_deref().unwrap()),
                "{line}"
            );
        }

        // A token that is due is renewed: mark one due, touch its pod, see a new token.
        {
            let vname = pods[0].metadata.name.clone().unwrap();
            let token_secret = hpods
                .get(&env.host_name(ns, &vname))
                .await
                .unwrap()
                .annotations()[TOKEN_SECRET_ANNOTATION]
                .clone();
            let old = hsecrets.get(&token_secret).await.unwrap().data.unwrap()["token"].clone();
            let due = json!({"metadata": {"annotations": {"vcluster.dev/token-renew-at": "0"}}});
            hsecrets
                .patch(
                    &token_secret,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&due),
                )
                .await
                .unwrap();
            let touch = json!({"metadata": {"labels": {"touched": "yes"}}});
            vpods
                .patch(
                    &vname,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&touch),
                )
                .await
                .unwrap();
            eventually("a renewed token", T, || async {
                let s = hsecrets
                    .get(&token_secret)
                    .await
                    .map_err(|e| e.to_string())?;
                let renew =
                    s.metadata.annotations.unwrap_or_default()["vcluster.dev/token-renew-at"]
                        .clone();
                if s.data.unwrap()["token"] != old && renew != "0" {
                    Ok(())
                } else {
                    Err("not yet".into())
                }
            })
            .await;
        }

        // The host's events about them appear on the virtual pods, in virtual names.
        let vevents: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(v.clone(), ns);
        for p in &pods {
            let vname = p.metadata.name.clone().unwrap();
            let ev = eventually("the Scheduled event on the virtual pod", T, || async {
                let l = vevents
                    .list(&ListParams::default().fields(&format!("involvedObject.name={vname}")))
                    .await
                    .map_err(|e| e.to_string())?;
                l.items
                    .into_iter()
                    .find(|e| e.reason.as_deref() == Some("Scheduled"))
                    .ok_or_else(|| "none yet".to_owned())
            })
            .await;
            let msg = ev.message.unwrap();
            assert!(
                msg.contains(&format!("{ns}/{vname}")) && !msg.contains("-x-"),
                "{msg}"
            );
            assert_eq!(ev.involved_object.uid, p.metadata.uid);
        }

        // Deleting the Deployment cleans the host: pods, and the no longer referenced config.
        Api::<Deployment>::namespaced(v.clone(), ns)
            .delete("web", &DeleteParams::foreground())
            .await
            .unwrap();
        eventually(
            "host copies of the deployment's pods and config gone",
            T,
            || async {
                let left: Vec<String> = hpods
                    .list(&ListParams::default().labels(&format!("vcluster.dev/namespace={ns}")))
                    .await
                    .map_err(|e| e.to_string())?
                    .items
                    .into_iter()
                    .filter_map(|p| p.metadata.name)
                    .collect();
                let cm = hcms.get_opt(&host_cm).await.map_err(|e| e.to_string())?;
                let sec = hsecrets
                    .get_opt(&host_secret)
                    .await
                    .map_err(|e| e.to_string())?;
                if left.is_empty() && cm.is_none() && sec.is_none() {
                    Ok(())
                } else {
                    Err(format!(
                        "pods {left:?}, cm {}, secret {}",
                        cm.is_some(),
                        sec.is_some()
                    ))
                }
            },
        )
        .await;
        none_left("virtual pods gone", &vpods, "app=web").await;
        // The service account's shared token Secret goes once no host pod
        // reads it (at the syncer's second look: within two resync periods).
        let shared = token_secrets.into_iter().next().unwrap();
        eventually(
            "the shared token Secret gone",
            Duration::from_secs(150),
            || async {
                match hsecrets.get_opt(&shared).await.map_err(|e| e.to_string())? {
                    None => Ok(()),
                    Some(_) => Err(format!("{shared} still there")),
                }
            },
        )
        .await;
    });
}

fn pod_created_before_its_configmap_still_starts(env: &Env) {
    let ns = "late";
    block_on(async {
        let (v, h) = clients_of(env).await;
        namespace(&v, ns).await;
        let vpods: Api<Pod> = Api::namespaced(v.clone(), ns);
        create(
            &vpods,
            json!({
                "metadata": {"name": "early", "labels": {"app": "early"}},
                "spec": {"containers": [{"name": "main", "image": "busybox",
                    "envFrom": [{"configMapRef": {"name": "arrives-later"}}]}]}
            }),
        )
        .await;
        let hpods: Api<Pod> = Api::namespaced(h.clone(), HOST_NS);
        // Waits while its ConfigMap is missing: not on the host, not running.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            hpods
                .get_opt(&env.host_name(ns, "early"))
                .await
                .unwrap()
                .is_none()
        );
        create(
            &Api::<ConfigMap>::namespaced(v.clone(), ns),
            json!({
                "metadata": {"name": "arrives-later"}, "data": {"k": "v"}
            }),
        )
        .await;
        running(&vpods, "early", 1, T).await;
    });
}

fn host_pod_deleted_by_hand_is_replaced(env: &Env) {
    let ns = "replace";
    block_on(async {
        let (v, h) = clients_of(env).await;
        namespace(&v, ns).await;
        deploy_with_config(&v, ns, "solo", 1).await;
        let vpods: Api<Pod> = Api::namespaced(v.clone(), ns);
        let first = running(&vpods, "solo", 1, T).await.remove(0);
        let first_name = first.metadata.name.clone().unwrap();
        let hpods: Api<Pod> = Api::namespaced(h.clone(), HOST_NS);
        hpods
            .delete(&env.host_name(ns, &first_name), &DeleteParams::default())
            .await
            .unwrap();
        eventually("the virtual pod to end", T, || async {
            match vpods
                .get_opt(&first_name)
                .await
                .map_err(|e| e.to_string())?
            {
                None => Ok(()),
                Some(p) => Err(format!("still {}", phase(&p))),
            }
        })
        .await;
        let next = running(&vpods, "solo", 1, T).await.remove(0);
        assert_ne!(
            next.metadata.name.unwrap(),
            first_name,
            "the ReplicaSet made a new pod"
        );
    });
}

fn job_runs_to_completion(env: &Env) {
    let ns = "batch";
    block_on(async {
        let (v, _) = clients_of(env).await;
        namespace(&v, ns).await;
        let jobs: Api<Job> = Api::namespaced(v.clone(), ns);
        create(
            &jobs,
            json!({
                "metadata": {"name": "once"},
                "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never",
                    "containers": [{"name": "main", "image": "busybox", "command": ["true"]}]}}}
            }),
        )
        .await;
        eventually("job Complete", T, || async {
            let j = jobs.get("once").await.map_err(|e| e.to_string())?;
            let st = j.status.unwrap_or_default();
            let done = st
                .conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Complete" && c.status == "True");
            if done {
                Ok(())
            } else {
                Err(format!("succeeded {:?}", st.succeeded))
            }
        })
        .await;
    });
}

/// Creates virtual ConfigMap `name` with `data` and a pod "user" that uses
/// it (ConfigMaps go to the host when a pod uses them).
async fn configmap_in_use(v: &kube::Client, ns: &str, name: &str, data: serde_json::Value) {
    create(
        &Api::<ConfigMap>::namespaced(v.clone(), ns),
        json!({"metadata": {"name": name}, "data": data}),
    )
    .await;
    create(
        &Api::<Pod>::namespaced(v.clone(), ns),
        json!({
            "metadata": {"name": "user"},
            "spec": {"containers": [{"name": "main", "image": "busybox",
                "envFrom": [{"configMapRef": {"name": name}}]}]}
        }),
    )
    .await;
}

fn foreign_host_object_is_untouched_and_reported(env: &Env) {
    let ns = "clash";
    block_on(async {
        let (v, h) = clients_of(env).await;
        namespace(&v, ns).await;
        let taken = env.host_name(ns, "taken");
        let hcms: Api<ConfigMap> = Api::namespaced(h.clone(), HOST_NS);
        create(
            &hcms,
            json!({"metadata": {"name": taken}, "data": {"owner": "someone else"}}),
        )
        .await;
        configmap_in_use(&v, ns, "taken", json!({"owner": "tenant"})).await;
        let events: Api<Event> = Api::namespaced(v.clone(), ns);
        let ev = eventually(
            "a SyncNameCollision warning on the virtual ConfigMap",
            T,
            || async {
                let l = events
                    .list(&ListParams::default())
                    .await
                    .map_err(|e| e.to_string())?;
                l.items
                    .into_iter()
                    .find(|e| {
                        e.reason.as_deref() == Some("SyncNameCollision")
                            && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("taken")
                    })
                    .ok_or_else(|| "no event yet".to_owned())
            },
        )
        .await;
        assert_eq!(ev.type_.as_deref(), Some("Warning"));
        assert!(ev.note.unwrap().contains(&taken));
        let host = hcms.get(&taken).await.unwrap();
        assert_eq!(
            host.data.unwrap()["owner"],
            "someone else",
            "foreign object untouched"
        );
        assert!(host.metadata.labels.unwrap_or_default().is_empty());
    });
}

/// A host copy the syncer's cache does not show (here: its namespace label
/// removed by hand, so the cache's selector misses it) but that carries the
/// owner label is the syncer's own: the create-only write finds the name
/// taken, looks, and writes over it instead of reporting a collision.
fn owned_host_object_missing_from_the_cache_is_written_over(env: &Env) {
    let ns = "adopt";
    block_on(async {
        let (v, h) = clients_of(env).await;
        namespace(&v, ns).await;
        let host = env.host_name(ns, "cfg");
        let hcms: Api<ConfigMap> = Api::namespaced(h.clone(), HOST_NS);
        create(
            &hcms,
            json!({"metadata": {"name": host, "labels": {"vcluster.dev/owner": VC}},
                "data": {"v": "stale"}}),
        )
        .await;
        configmap_in_use(&v, ns, "cfg", json!({"v": "tenant"})).await;
        eventually(
            "the host copy written over with the tenant's data",
            T,
            || async {
                let cm = hcms.get(&host).await.map_err(|e| e.to_string())?;
                let labels = cm.metadata.labels.unwrap_or_default();
                match (
                    cm.data.unwrap_or_default().get("v"),
                    labels.get("vcluster.dev/namespace"),
                ) {
                    (Some(d), Some(n)) if d == "tenant" && n == ns => Ok(()),
                    other => Err(format!("not yet: {other:?}")),
                }
            },
        )
        .await;
        let events: Api<Event> = Api::namespaced(v.clone(), ns);
        let l = events.list(&ListParams::default()).await.unwrap();
        assert!(
            !l.items
                .iter()
                .any(|e| e.reason.as_deref() == Some("SyncNameCollision")),
            "an owned object is not a collision"
        );
    });
}

fn service_links_of_virtual_services_reach_host_pods(env: &Env) {
    let ns = "links";
    block_on(async {
        let (v, h) = clients_of(env).await;
        namespace(&v, ns).await;
        create(
            &Api::<k8s_openapi::api::core::v1::Service>::namespaced(v.clone(), ns),
            json!({
                "metadata": {"name": "backend"},
                "spec": {"selector": {"app": "backend"}, "ports": [{"name": "http", "port": 8080}]}
            }),
        )
        .await;
        let svc = Api::<k8s_openapi::api::core::v1::Service>::namespaced(v.clone(), ns)
            .get("backend")
            .await
            .unwrap();
        let ip = svc.spec.unwrap().cluster_ip.unwrap();
        let vpods: Api<Pod> = Api::namespaced(v.clone(), ns);
        create(
            &vpods,
            json!({
                "metadata": {"name": "client", "labels": {"app": "client"}},
                "spec": {"containers": [{"name": "main", "image": "busybox"}]}
            }),
        )
        .await;
        running(&vpods, "client", 1, T).await;
        let hp = Api::<Pod>::namespaced(h, HOST_NS)
            .get(&env.host_name(ns, "client"))
            .await
            .unwrap();
        let env_vars = hp.spec.unwrap().containers[0].env.clone().unwrap();
        let get = |k: &str| {
            env_vars
                .iter()
                .find(|e| e.name == k)
                .and_then(|e| e.value.clone())
        };
        assert_eq!(get("BACKEND_SERVICE_HOST"), Some(ip.clone()));
        assert_eq!(get("BACKEND_SERVICE_PORT_HTTP").as_deref(), Some("8080"));
        assert_eq!(
            get("BACKEND_PORT").as_deref(),
            Some(format!("tcp://{ip}:8080").as_str())
        );
    });
}

fn pod_the_host_rejects_gets_a_warning_event(env: &Env) {
    let ns = "rejected";
    block_on(async {
        let (v, h) = clients_of(env).await;
        namespace(&v, ns).await;
        // Host policy the virtual cluster does not have: no container above 1Ti of memory.
        let limits: Api<k8s_openapi::api::core::v1::LimitRange> =
            Api::namespaced(h.clone(), HOST_NS);
        create(
            &limits,
            json!({
                "metadata": {"name": "cap-memory"},
                // Explicit small defaults: with only `max`, every other test's pod
            // would default to requesting 1Ti and fit no node.
            "spec": {"limits": [{"type": "Container", "max": {"memory": "1Ti"},
                "default": {"memory": "64Mi"}, "defaultRequest": {"memory": "64Mi"}}]}
            }),
        )
        .await;
        create(
            &Api::<Pod>::namespaced(v.clone(), ns),
            json!({
                "metadata": {"name": "greedy"},
                "spec": {"containers": [{"name": "main", "image": "busybox",
                    "resources": {"limits": {"memory": "2Ti"}, "requests": {"memory": "2Ti"}}}]}
            }),
        )
        .await;
        let events: Api<Event> = Api::namespaced(v.clone(), ns);
        let ev = eventually("a SyncRejected warning on the virtual pod", T, || async {
            let l = events
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            l.items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("SyncRejected"))
                .ok_or_else(|| "no event yet".to_owned())
        })
        .await;
        limits
            .delete("cap-memory", &DeleteParams::default())
            .await
            .unwrap();
        assert_eq!(ev.type_.as_deref(), Some("Warning"));
        assert_eq!(ev.regarding.and_then(|r| r.name).as_deref(), Some("greedy"));
        let note = ev.note.unwrap();
        assert!(
            note.contains("maximum memory usage per Container is 1Ti"),
            "{note}"
        );
        let hpods: Api<Pod> = Api::namespaced(h, HOST_NS);
        assert!(
            hpods
                .get_opt(&env.host_name(ns, "greedy"))
                .await
                .unwrap()
                .is_none()
        );
        let vpod = Api::<Pod>::namespaced(v, ns).get("greedy").await.unwrap();
        assert_eq!(phase(&vpod), "Pending");
    });
}

// ---- restart group ----------------------------------------------------------

fn deleted_while_stopped_is_collected_after_restart(env: &Env) {
    let ns = "restart";
    block_on(async {
        let (v, h) = clients_of(env).await;
        namespace(&v, ns).await;
        namespace(&v, "bystander").await;
        for n in [ns, "bystander"] {
            config_objects(&v, n).await;
            create(
                &Api::<Deployment>::namespaced(v.clone(), n),
                deployment("app", 2),
            )
            .await;
            running(&Api::<Pod>::namespaced(v.clone(), n), "app", 2, T).await;
        }
        let hpods: Api<Pod> = Api::namespaced(h.clone(), HOST_NS);
        let hcms: Api<ConfigMap> = Api::namespaced(h.clone(), HOST_NS);
        // Objects the syncer must never touch: unlabelled, and another vcluster's.
        create(
            &hcms,
            json!({"metadata": {"name": "foreign-plain"}, "data": {"k": "v"}}),
        )
        .await;
        create(
            &hcms,
            json!({"metadata": {"name": "foreign-other-vc",
            "labels": {"vcluster.dev/owner": "other"},
            "annotations": {"vcluster.dev/name": "settings", "vcluster.dev/namespace": ns}},
            "data": {"k": "v"}}),
        )
        .await;
        let listed = |hp: &Api<Pod>, label: String| {
            let hp = hp.clone();
            async move {
                hp.list(&ListParams::default().labels(&label))
                    .await
                    .map(|l| l.items.len())
                    .map_err(|e| e.to_string())
            }
        };
        let before_bystander = listed(&hpods, "vcluster.dev/namespace=bystander".into())
            .await
            .unwrap();
        assert_eq!(before_bystander, 2);

        env.syncer.lock().unwrap().as_mut().unwrap().kill();
        Api::<Deployment>::namespaced(v.clone(), ns)
            .delete("app", &DeleteParams::background())
            .await
            .unwrap();
        Api::<ConfigMap>::namespaced(v.clone(), ns)
            .delete("settings", &DeleteParams::default())
            .await
            .unwrap();
        Api::<Secret>::namespaced(v.clone(), ns)
            .delete("creds", &DeleteParams::default())
            .await
            .unwrap();
        // Host copies are still there while nobody syncs.
        assert_eq!(
            listed(&hpods, format!("vcluster.dev/namespace={ns}"))
                .await
                .unwrap(),
            2
        );

        *env.syncer.lock().unwrap() = Some(SyncerProcess::start(&env.stack, VC, HOST_NS));
        eventually("host copies of what was deleted to go", T, || async {
            let pods = listed(&hpods, format!("vcluster.dev/namespace={ns}")).await?;
            let cm = hcms
                .get_opt(&env.host_name(ns, "settings"))
                .await
                .map_err(|e| e.to_string())?;
            if pods == 0 && cm.is_none() {
                Ok(())
            } else {
                Err(format!("{pods} pods, cm {}", cm.is_some()))
            }
        })
        .await;
        // Nothing else was touched.
        assert_eq!(
            listed(&hpods, "vcluster.dev/namespace=bystander".into())
                .await
                .unwrap(),
            2
        );
        for name in ["foreign-plain", "foreign-other-vc"] {
            let cm = hcms.get(name).await.unwrap();
            assert_eq!(cm.data.unwrap()["k"], "v");
        }
        let other: BTreeMap<String, String> = hcms
            .get("foreign-other-vc")
            .await
            .unwrap()
            .metadata
            .labels
            .unwrap();
        assert_eq!(other["vcluster.dev/owner"], "other");
    });
}

fn watch_expiry_by_etcd_compaction_is_survived(_: &Env) {
    // A stack without the API servers' watch cache, so a re-watch from a
    // compacted revision reaches etcd and gets 410 Gone; and a syncer whose
    // watches end every 2 s, so it re-watches soon, without bookmarks (which
    // would keep its resource versions fresh), listing in pages (as with a
    // server without streamed lists, Kubernetes 1.33; every other test runs
    // with streamed lists).
    let stack = DevStack::up(&[
        "--no-syncer",
        "--nodes",
        "1",
        "--apiserver-arg=--watch-cache=false",
    ]);
    let syncer = SyncerProcess::start_with(
        &stack,
        "compact",
        "team-compact",
        &[
            "--watch-timeout-seconds",
            "2",
            "--watch-bookmarks=false",
            "--stream-lists=false",
        ],
    );
    let ns = "compaction";
    block_on(async {
        let v = client(&stack.vcluster_kubeconfig()).await;
        namespace(&v, ns).await;
        deploy_with_config(&v, ns, "before", 1).await;
        let vpods: Api<Pod> = Api::namespaced(v.clone(), ns);
        running(&vpods, "before", 1, T).await;
        // Writes the syncer does not watch move etcd past every revision it
        // has seen; compaction then expires them all.
        let h = client(&stack.host_kubeconfig()).await;
        for (c, tag) in [(&v, "v"), (&h, "h")] {
            for i in 0..3 {
                namespace(c, &format!("unwatched-{tag}-{i}")).await;
            }
        }
        for plane in [&stack.state.host, &stack.state.vcluster] {
            etcd_compact(plane.ports.unwrap().etcd_client);
        }
        // Condition, not a sleep: the syncer reports that its watch expired.
        eventually_sync("the syncer to see a watch expire (410)", T, || {
            let log = std::fs::read_to_string(&syncer.log).unwrap_or_default();
            let expired = log.lines().any(|l| {
                l.contains("watch error") && (l.contains("Expired") || l.contains("too old"))
            });
            if expired {
                Ok(())
            } else {
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                Err(format!("no 410 yet; log ends {tail:?}"))
            }
        });
        // It relisted and goes on syncing both ways.
        create(
            &Api::<Deployment>::namespaced(v.clone(), ns),
            deployment("after", 2),
        )
        .await;
        running(&vpods, "after", 2, T).await;
        let hpods: Api<Pod> = Api::namespaced(h, "team-compact");
        Api::<Deployment>::namespaced(v.clone(), ns)
            .delete("before", &DeleteParams::background())
            .await
            .unwrap();
        none_left("the old deployment's host pod to go", &hpods, "app=before").await;
    });
    drop(syncer);
}

/// One pod per Pod Security Standards baseline control, each with the
/// control its Warning event must name (shared with the unit tests).
fn baseline_offenders() -> Vec<(String, serde_json::Value, String)> {
    let list: Vec<serde_json::Value> =
        serde_json::from_str(include_str!("../src/policy/pss-baseline-offenders.json")).unwrap();
    list.into_iter()
        .map(|e| {
            let name = e["pod"]["metadata"]["name"].as_str().unwrap().to_owned();
            (
                name,
                e["pod"].clone(),
                e["control"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pods_violating_baseline_never_reach_the_host(env: &Env) {
    block_on(async {
        let (v, h) = clients_of(env).await;
        let ns = "pss";
        namespace(&v, ns).await;
        let pods: Api<Pod> = Api::namespaced(v.clone(), ns);
        let offenders = baseline_offenders();
        for (_, pod, _) in &offenders {
            create(&pods, pod.clone()).await;
        }
        create(
            &pods,
            json!({"metadata": {"name": "fine", "labels": {"app": "fine"}},
                "spec": {"containers": [{"name": "app", "image": "x", "securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE"]}}}]}}),
        )
        .await;
        running(&pods, "fine", 1, T).await;
        let events: Api<Event> = Api::namespaced(v.clone(), ns);
        let notes = eventually(
            "a PodSecurityViolation warning on every offender",
            T,
            || async {
                let l = events
                    .list(&ListParams::default())
                    .await
                    .map_err(|e| e.to_string())?;
                let mut notes = BTreeMap::new();
                for e in l.items {
                    if e.reason.as_deref() == Some("PodSecurityViolation")
                        && e.type_.as_deref() == Some("Warning")
                    {
                        let name = e.regarding.and_then(|r| r.name).unwrap_or_default();
                        notes.insert(name, e.note.unwrap_or_default());
                    }
                }
                if notes.len() == offenders.len() {
                    Ok(notes)
                } else {
                    Err(format!(
                        "{} of {}: {:?}",
                        notes.len(),
                        offenders.len(),
                        notes.keys()
                    ))
                }
            },
        )
        .await;
        let hpods: Api<Pod> = Api::namespaced(h, HOST_NS);
        for (name, _, control) in &offenders {
            let control = control.as_str();
            let note = &notes[name];
            assert!(
                note.contains("violates PodSecurity \"baseline:latest\""),
                "{name}: {note}"
            );
            assert!(
                note.contains(control),
                "{name}: {note} should name {control}"
            );
            assert!(
                hpods
                    .get_opt(&env.host_name(ns, name))
                    .await
                    .unwrap()
                    .is_none(),
                "{name} reached the host"
            );
            let vpod = pods.get(name).await.unwrap();
            assert_eq!(phase(&vpod), "Pending", "{name}");
        }
    });
}

const SHARED: &[Test<Env>] = &[
    (
        "deployment_with_config_runs_on_the_host",
        deployment_with_config_runs_on_the_host,
    ),
    (
        "pod_created_before_its_configmap_still_starts",
        pod_created_before_its_configmap_still_starts,
    ),
    (
        "host_pod_deleted_by_hand_is_replaced",
        host_pod_deleted_by_hand_is_replaced,
    ),
    ("job_runs_to_completion", job_runs_to_completion),
    (
        "foreign_host_object_is_untouched_and_reported",
        foreign_host_object_is_untouched_and_reported,
    ),
    (
        "owned_host_object_missing_from_the_cache_is_written_over",
        owned_host_object_missing_from_the_cache_is_written_over,
    ),
    (
        "pod_the_host_rejects_gets_a_warning_event",
        pod_the_host_rejects_gets_a_warning_event,
    ),
    (
        "service_links_of_virtual_services_reach_host_pods",
        service_links_of_virtual_services_reach_host_pods,
    ),
    (
        "pods_violating_baseline_never_reach_the_host",
        pods_violating_baseline_never_reach_the_host,
    ),
];

const SERIAL: &[Test<Env>] = &[
    (
        "deleted_while_stopped_is_collected_after_restart",
        deleted_while_stopped_is_collected_after_restart,
    ),
    (
        "watch_expiry_by_etcd_compaction_is_survived",
        watch_expiry_by_etcd_compaction_is_survived,
    ),
];

fn main() {
    let args = Arguments::from_args();
    list_or_check(&args, &[SHARED, SERIAL]);
    SyncedEnv::up(&["--nodes", "3"], VC, HOST_NS, &[])
        .run(&args, &[(SHARED, None), (SERIAL, Some(1))]);
}
