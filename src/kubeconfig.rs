//! Building kubeconfig files.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use kube::config::{
    AuthInfo, Cluster, Context, ExecConfig, ExecInteractiveMode, Kubeconfig, NamedAuthInfo,
    NamedCluster, NamedContext,
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

/// How the user of a tenant's kubeconfig signs in, instead of the admin
/// certificate of the `vc-<name>` Secret (single sign-on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignIn {
    /// An exec credential plugin that gets an ID token from the organisation's
    /// OpenID provider, as `kubectl oidc-login get-token` does.
    Oidc(OidcLogin),
    /// A bearer token (an ID token) read from a file, which kubectl reads
    /// again when it changes.
    TokenFile(String),
}

/// The exec credential plugin's settings ([`SignIn::Oidc`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcLogin {
    /// The provider's issuer URL (https).
    pub issuer_url: String,
    /// The client id the provider knows the cluster's tenants' logins by
    /// (one of the API server's audiences).
    pub client_id: String,
    /// The client's secret, for providers that require one.
    pub client_secret: Option<String>,
    /// Scopes asked for besides `openid` (`groups`, `email`, ...).
    pub extra_scopes: Vec<String>,
    /// The plugin: `kubectl` (runs `kubectl oidc-login get-token`) or a
    /// standalone binary such as `kubelogin` (runs `<command> get-token`).
    pub command: String,
}

impl SignIn {
    /// The kubeconfig user: only this way of signing in, no other credential.
    pub fn auth_info(&self) -> AuthInfo {
        match self {
            Self::TokenFile(path) => AuthInfo {
                token_file: Some(path.clone()),
                ..AuthInfo::default()
            },
            Self::Oidc(o) => AuthInfo {
                exec: Some(ExecConfig {
                    api_version: Some("client.authentication.k8s.io/v1".to_owned()),
                    command: Some(o.command.clone()),
                    args: Some(o.args()),
                    env: None,
                    drop_env: None,
                    install_hint: Some(
                        "the kubelogin plugin (kubectl oidc-login) signs you in through your organisation's OpenID provider: https://github.com/int128/kubelogin".to_owned(),
                    ),
                    interactive_mode: Some(ExecInteractiveMode::IfAvailable),
                    provide_cluster_info: false,
                    cluster: None,
                    other: Default::default(),
                }),
                ..AuthInfo::default()
            },
        }
    }
}

impl OidcLogin {
    /// The plugin's arguments, in the form `kubectl oidc-login get-token` takes them.
    pub fn args(&self) -> Vec<String> {
        let standalone = std::path::Path::new(&self.command)
            .file_name()
            .is_some_and(|n| n != "kubectl");
        let mut args: Vec<String> = if standalone {
            vec!["get-token".to_owned()]
        } else {
            vec!["oidc-login".to_owned(), "get-token".to_owned()]
        };
        args.push(format!("--oidc-issuer-url={}", self.issuer_url));
        args.push(format!("--oidc-client-id={}", self.client_id));
        args.extend(
            self.client_secret
                .iter()
                .map(|s| format!("--oidc-client-secret={s}")),
        );
        args.extend(
            self.extra_scopes
                .iter()
                .map(|s| format!("--oidc-extra-scope={s}")),
        );
        args
    }
}

/// Replaces the credential of every user of `config` with `sign_in`.
pub fn sign_in_with(config: &mut Kubeconfig, sign_in: &SignIn) {
    for user in &mut config.auth_infos {
        user.auth_info = Some(sign_in.auth_info());
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

/// The client configuration for the cluster and user of the kubeconfig's
/// current context.
pub async fn config(config: Kubeconfig) -> Result<kube::Config, kube::Error> {
    Ok(
        kube::Config::from_custom_kubeconfig(config, &kube::config::KubeConfigOptions::default())
            .await?,
    )
}

/// A client for the cluster and user of the kubeconfig's current context.
pub async fn client(config: Kubeconfig) -> Result<kube::Client, kube::Error> {
    kube::Client::try_from(self::config(config).await?)
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

    fn oidc(command: &str) -> OidcLogin {
        OidcLogin {
            issuer_url: "https://login.example.com/dex".to_owned(),
            client_id: "vcluster".to_owned(),
            client_secret: None,
            extra_scopes: vec!["groups".to_owned(), "email".to_owned()],
            command: command.to_owned(),
        }
    }

    #[test]
    fn oidc_sign_in_replaces_the_admin_certificate_with_the_plugin() {
        let mut cfg = client_cert("vc", "https://127.0.0.1:6443", "CA", "CERT", "KEY");
        sign_in_with(&mut cfg, &SignIn::Oidc(oidc("kubectl")));
        let yaml = to_yaml(&cfg).unwrap();
        assert!(!yaml.contains("client-key-data"), "{yaml}");
        assert!(!yaml.contains("client-certificate-data"), "{yaml}");
        let back = Kubeconfig::from_yaml(&yaml).unwrap();
        let exec = back.auth_infos[0]
            .auth_info
            .as_ref()
            .unwrap()
            .exec
            .as_ref()
            .unwrap();
        assert_eq!(exec.command.as_deref(), Some("kubectl"));
        assert_eq!(
            exec.api_version.as_deref(),
            Some("client.authentication.k8s.io/v1")
        );
        assert_eq!(
            exec.args.as_deref().unwrap(),
            [
                "oidc-login",
                "get-token",
                "--oidc-issuer-url=https://login.example.com/dex",
                "--oidc-client-id=vcluster",
                "--oidc-extra-scope=groups",
                "--oidc-extra-scope=email",
            ]
        );
        assert!(yaml.contains("interactiveMode: IfAvailable"), "{yaml}");
        // The cluster and its CA stay.
        assert!(points_at(&back, "https://127.0.0.1:6443", "CA"));
    }

    #[test]
    fn a_standalone_plugin_gets_no_kubectl_subcommand() {
        let mut o = oidc("/usr/local/bin/kubelogin");
        o.client_secret = Some("s3cret".to_owned());
        let args = o.args();
        assert_eq!(args[0], "get-token");
        assert!(args.contains(&"--oidc-client-secret=s3cret".to_owned()));
        assert_eq!(oidc("/usr/bin/kubectl").args()[0], "oidc-login");
    }

    #[test]
    fn token_file_sign_in_names_only_the_file() {
        let mut cfg = client_cert("vc", "https://127.0.0.1:6443", "CA", "CERT", "KEY");
        sign_in_with(&mut cfg, &SignIn::TokenFile("/run/id-token".to_owned()));
        let back = Kubeconfig::from_yaml(&to_yaml(&cfg).unwrap()).unwrap();
        let user = back.auth_infos[0].auth_info.as_ref().unwrap();
        assert_eq!(user.token_file.as_deref(), Some("/run/id-token"));
        assert!(user.client_key_data.is_none() && user.client_certificate_data.is_none());
        assert!(user.exec.is_none());
    }
}
