//! Building kubeconfig files.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use kube::config::{
    AuthInfo, Cluster, Context, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext,
};
use secrecy::SecretString;

/// Failure to render a kubeconfig.
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    /// The kubeconfig could not be serialized.
    #[error("cannot serialize kubeconfig: {0}")]
    Serialize(#[from] serde_yaml::Error),
}

/// A kubeconfig with one cluster, one user and one context, all named `name`,
/// authenticating with a client certificate.
pub fn client_cert(
    name: &str,
    server: &str,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Kubeconfig {
    Kubeconfig {
        clusters: vec![NamedCluster {
            name: name.to_owned(),
            cluster: Some(Cluster {
                server: Some(server.to_owned()),
                certificate_authority_data: Some(STANDARD.encode(ca_pem)),
                ..Cluster::default()
            }),
            other: Default::default(),
        }],
        auth_infos: vec![NamedAuthInfo {
            name: name.to_owned(),
            auth_info: Some(AuthInfo {
                client_certificate_data: Some(STANDARD.encode(cert_pem)),
                client_key_data: Some(SecretString::from(STANDARD.encode(key_pem))),
                ..AuthInfo::default()
            }),
            other: Default::default(),
        }],
        contexts: vec![NamedContext {
            name: name.to_owned(),
            context: Some(Context {
                cluster: name.to_owned(),
                user: Some(name.to_owned()),
                ..Context::default()
            }),
            other: Default::default(),
        }],
        current_context: Some(name.to_owned()),
        api_version: Some("v1".to_owned()),
        kind: Some("Config".to_owned()),
        ..Kubeconfig::default()
    }
}

/// True when the kubeconfig's first cluster is `server`, trusting `ca_pem`.
pub fn points_at(config: &Kubeconfig, server: &str, ca_pem: &str) -> bool {
    config
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .is_some_and(|c| {
            c.server.as_deref() == Some(server)
                && c.certificate_authority_data.as_deref() == Some(&STANDARD.encode(ca_pem))
        })
}

/// A client for the cluster and user of the kubeconfig's current context.
pub async fn client(config: Kubeconfig) -> Result<kube::Client, kube::Error> {
    let config =
        kube::Config::from_custom_kubeconfig(config, &kube::config::KubeConfigOptions::default())
            .await?;
    kube::Client::try_from(config)
}

/// Writes a file readable only by its owner (kubeconfigs, keys).
pub fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?
        .write_all(contents.as_bytes())
}

/// Renders a kubeconfig as YAML, the form kubectl and helm read.
pub fn to_yaml(config: &Kubeconfig) -> Result<String, KubeconfigError> {
    Ok(serde_yaml::to_string(config)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn round_trips_through_kube_parser() {
        let cfg = client_cert("dev-host", "https://127.0.0.1:6443", "CA", "CERT", "KEY");
        let yaml = to_yaml(&cfg).unwrap();
        assert!(yaml.contains("current-context: dev-host"), "{yaml}");
        let back = Kubeconfig::from_yaml(&yaml).unwrap();
        let cluster = back.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:6443"));
        assert_eq!(
            STANDARD
                .decode(cluster.certificate_authority_data.as_ref().unwrap())
                .unwrap(),
            b"CA"
        );
        let user = back.auth_infos[0].auth_info.as_ref().unwrap();
        let key = user
            .client_key_data
            .as_ref()
            .unwrap()
            .expose_secret()
            .to_owned();
        assert_eq!(STANDARD.decode(key).unwrap(), b"KEY");
        assert_eq!(
            back.contexts[0].context.as_ref().unwrap().cluster,
            "dev-host"
        );
        assert!(points_at(&back, "https://127.0.0.1:6443", "CA"));
        assert!(!points_at(&back, "https://127.0.0.1:6444", "CA"));
        assert!(!points_at(&back, "https://127.0.0.1:6443", "other CA"));
    }
}
