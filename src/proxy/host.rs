//! The requests redirected to the host: `pods/log|exec|attach|portforward` of
//! synced pods. The caller is authorized against the virtual API first
//! (SubjectAccessReview), the virtual pod must exist and its host twin must be
//! owned by this vcluster and name it as its source; only then does the
//! request go to that host pod, in this vcluster's own host namespace.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, PostParams};

use super::authn::Identity;
use super::forward::{self, ProxyBody, Upstream, status};
use super::route::PodSubresource;
use crate::translate::markers::source_uid;
use crate::translate::{Ownership, VclusterName, VirtualKey, host_name};

/// What the redirect needs: both clients and where this vcluster lives.
#[derive(Clone)]
pub struct HostTarget {
    /// The vcluster's name.
    pub vcluster: VclusterName,
    /// Its host namespace.
    pub namespace: String,
    /// The syncer's host client.
    pub host: kube::Client,
    /// The syncer's virtual client.
    pub virt: kube::Client,
    /// The front door's HTTP/2 client for the virtual API (None: HTTP/1.1 only).
    pub virt_http2: Option<super::pool::Http2Client>,
    /// What the Secrets the front door writes on the host are owned by
    /// (see [`crate::sync::Context::owner`]).
    pub owner: Option<OwnerReference>,
}

impl std::fmt::Debug for HostTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostTarget")
            .field("vcluster", &self.vcluster)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// The message kube-apiserver gives when RBAC denies a subresource.
fn forbidden(id: &Identity, t: &PodSubresource) -> Response<ProxyBody> {
    status(
        StatusCode::FORBIDDEN,
        "Forbidden",
        &format!(
            "pods \"{}\" is forbidden: User \"{}\" cannot {} resource \"pods/{}\" in API group \"\" in the namespace \"{}\"",
            t.name,
            id.user,
            t.subresource.verb(),
            t.subresource.as_str(),
            t.namespace
        ),
    )
}

fn not_found(t: &PodSubresource) -> Response<ProxyBody> {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("pods \"{}\" not found", t.name),
    )
}

fn unavailable(what: &str, e: &kube::Error) -> Response<ProxyBody> {
    tracing::warn!(error = %e, what, "host redirect failed");
    status(
        StatusCode::SERVICE_UNAVAILABLE,
        "ServiceUnavailable",
        &format!("{what}: {e}"),
    )
}

impl HostTarget {
    async fn allowed(&self, id: &Identity, t: &PodSubresource) -> Result<bool, kube::Error> {
        let sar = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(id.user.clone()),
                uid: id.uid.clone(),
                groups: Some(id.groups.clone()),
                extra: (!id.extra.is_empty()).then(|| id.extra.clone()),
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(t.namespace.clone()),
                    verb: Some(t.subresource.verb().to_owned()),
                    resource: Some("pods".to_owned()),
                    subresource: Some(t.subresource.as_str().to_owned()),
                    name: Some(t.name.clone()),
                    group: Some(String::new()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let answer = Api::<SubjectAccessReview>::all(self.virt.clone())
            .create(&PostParams::default(), &sar)
            .await?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }

    /// The host pod's name when it is this vcluster's twin of the virtual pod.
    async fn host_pod(&self, t: &PodSubresource) -> Result<Option<String>, kube::Error> {
        let Some(vpod) = Api::<Pod>::namespaced(self.virt.clone(), &t.namespace)
            .get_opt(&t.name)
            .await?
        else {
            return Ok(None);
        };
        let name = host_name(&self.vcluster, &t.namespace, &t.name);
        let Some(hpod) = Api::<Pod>::namespaced(self.host.clone(), &self.namespace)
            .get_opt(&name)
            .await?
        else {
            return Ok(None);
        };
        let own = Ownership::new(&self.vcluster);
        let key = VirtualKey {
            namespace: t.namespace.clone(),
            name: t.name.clone(),
        };
        let same_uid =
            source_uid(&hpod.metadata).is_some_and(|u| Some(u) == vpod.metadata.uid.as_deref());
        Ok((own.virtual_key(&hpod.metadata) == Some(key) && same_uid).then_some(name))
    }

    /// Serves one redirected request.
    pub async fn serve(
        &self,
        req: Request<Incoming>,
        id: &Identity,
        t: PodSubresource,
    ) -> Response<ProxyBody> {
        match self.allowed(id, &t).await {
            Ok(true) => {}
            Ok(false) => return forbidden(id, &t),
            Err(e) => return unavailable("cannot authorize the request", &e),
        }
        let host_pod = match self.host_pod(&t).await {
            Ok(Some(n)) => n,
            Ok(None) => return not_found(&t),
            Err(e) => return unavailable("cannot look up the pod", &e),
        };
        let mut path = format!(
            "/api/v1/namespaces/{}/pods/{host_pod}/{}",
            self.namespace,
            t.subresource.as_str()
        );
        if !t.query.is_empty() {
            path.push('?');
            path.push_str(&t.query);
        }
        tracing::debug!(user = %id.user, pod = %t.name, namespace = %t.namespace, sub = t.subresource.as_str(), "redirecting to the host");
        forward::forward(
            req,
            Upstream {
                client: &self.host,
                path_and_query: path,
                extra_headers: Vec::new(),
                which: "host",
                http2: None,
            },
        )
        .await
    }
}
