//! What the chart's tests share: a kubeconfig of the chart's ServiceAccount
//! (the syncer's credential in a real install), and the syncer run with it
//! beside the dev stack's virtual plane as the chart's pod would run it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use super::{DevStack, SyncerProcess, client, eventually};

const T: Duration = Duration::from_secs(90);

/// A kubeconfig of the host whose user is a token of the chart's ServiceAccount
/// `vc-<release>` in `namespace` (waited for), written into the stack's directory.
pub async fn service_account_kubeconfig(
    stack: &DevStack,
    release: &str,
    namespace: &str,
) -> PathBuf {
    let h = client(&stack.host_kubeconfig()).await;
    let sas: Api<ServiceAccount> = Api::namespaced(h, namespace);
    let sa = format!("vc-{release}");
    eventually("the chart's ServiceAccount", T, || async {
        sas.get_opt(&sa)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("absent".to_owned())
    })
    .await;
    let tr: TokenRequest =
        serde_json::from_value(json!({"spec": {"expirationSeconds": 3600}})).unwrap();
    let issued = sas
        .create_token_request(&sa, &PostParams::default(), &tr)
        .await
        .unwrap();
    let token = issued.status.unwrap().token;
    let mut kc: Value =
        serde_yaml::from_str(&std::fs::read_to_string(stack.host_kubeconfig()).unwrap()).unwrap();
    kc["users"] = json!([{"name": "chart-sa", "user": {"token": token}}]);
    let ctx = &mut kc["contexts"][0]["context"];
    ctx["user"] = json!("chart-sa");
    ctx["namespace"] = json!(namespace);
    let path = stack.dir.path().join(format!("{release}-sa.kubeconfig"));
    std::fs::write(&path, serde_yaml::to_string(&kc).unwrap()).unwrap();
    path
}

/// Starts the syncer of `release` with host credential `host_kc`, its
/// front door on a free loopback port and `extra` flags; returns it with the
/// front door's kubeconfig (from the `vc-<release>` Secret it writes).
pub async fn start_syncer(
    stack: &DevStack,
    release: &str,
    namespace: &str,
    host_kc: &Path,
    extra: &[String],
) -> (SyncerProcess, PathBuf) {
    let port = super::free_port();
    let pki = stack.dir.path().join("vcluster/pki");
    let mut args = vec![
        format!("--client-ca-cert={}", pki.join("ca.crt").display()),
        format!("--client-ca-key={}", pki.join("ca.key").display()),
        format!("--front-door-listen=127.0.0.1:{port}"),
        format!("--kubeconfig-server=https://127.0.0.1:{port}"),
    ];
    args.extend_from_slice(extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let syncer = SyncerProcess::start_as(stack, release, namespace, host_kc, &args);
    let secrets: Api<Secret> = Api::namespaced(client(&stack.host_kubeconfig()).await, namespace);
    let kc = eventually(
        &format!("the vc-{release} kubeconfig Secret"),
        T,
        || async {
            let s = secrets
                .get_opt(&format!("vc-{release}"))
                .await
                .map_err(|e| e.to_string())?;
            s.and_then(|s| s.data)
                .and_then(|d| d.get("config").cloned())
                .ok_or_else(|| "absent".to_owned())
        },
    )
    .await;
    let path = stack
        .dir
        .path()
        .join(format!("{release}-front-door.kubeconfig"));
    std::fs::write(&path, kc.0).unwrap();
    (syncer, path)
}
