//! Building blocks for calls to a Kubernetes API: one error for "what failed
//! and the API's answer", create parameters with the project's field manager,
//! and "create unless it already exists".

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A failed API call: what was attempted, and the API's error.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct ApiError {
    /// What was attempted, as the message's prefix (for example
    /// `create node kwok-node-0`).
    pub what: Cow<'static, str>,
    /// The API's error.
    #[source]
    pub source: Box<kube::Error>,
}

impl ApiError {
    /// The error of attempt `what`.
    pub fn new(what: impl Into<Cow<'static, str>>, source: kube::Error) -> Self {
        Self {
            what: what.into(),
            source: Box::new(source),
        }
    }

    /// A mapper for `Result::map_err`: `api.get(n).await.map_err(ApiError::of("get x"))`.
    pub fn of(what: impl Into<Cow<'static, str>>) -> impl FnOnce(kube::Error) -> Self {
        let what = what.into();
        move |source| Self::new(what, source)
    }

    /// The HTTP status the API server answered with, if it answered.
    pub fn code(&self) -> Option<u16> {
        status_code(&self.source)
    }
}

/// The HTTP status of an API server's refusal (`None` for transport errors).
pub fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// Create parameters with the project's field manager.
pub fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(crate::FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    }
}

/// Whether [`create_if_absent`] made the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// It was created.
    Yes,
    /// It existed already (409 Conflict); it was left as it is.
    AlreadyExisted,
}

/// Creates `obj` unless an object of its name exists (409 Conflict is not an
/// error: the existing object is left untouched).
pub async fn create_if_absent<K>(api: &Api<K>, obj: &K) -> Result<Created, kube::Error>
where
    K: Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    match api.create(&post_params(), obj).await {
        Ok(_) => Ok(Created::Yes),
        Err(e) if status_code(&e) == Some(409) => Ok(Created::AlreadyExisted),
        Err(e) => Err(e),
    }
}

/// Writes `obj` as `name` by server-side apply under the project's field
/// manager, taking over fields another manager holds.
pub async fn apply<K>(api: &Api<K>, name: &str, obj: &K) -> Result<K, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let mut value = serde_json::to_value(obj).map_err(kube::Error::SerdeError)?;
    value["apiVersion"] = K::api_version(&()).into();
    value["kind"] = K::kind(&()).into();
    api.patch(
        name,
        &PatchParams::apply(crate::FIELD_MANAGER).force(),
        &Patch::Apply(&value),
    )
    .await
}

/// True when `refs` hold `owner` (by uid) or there is no owner to hold.
pub fn has_owner(refs: Option<&[OwnerReference]>, owner: Option<&OwnerReference>) -> bool {
    owner.is_none_or(|o| refs.into_iter().flatten().any(|r| r.uid == o.uid))
}

/// Gives object `name` owner reference `owner` unless it has it already
/// (`refs`: its current references): a server-side apply of that one field.
pub async fn adopt<K>(
    api: &Api<K>,
    name: &str,
    refs: Option<&[OwnerReference]>,
    owner: Option<&OwnerReference>,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let Some(owner) = owner.filter(|_| !has_owner(refs, owner)) else {
        return Ok(());
    };
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": {"name": name, "ownerReferences": [owner]},
    });
    let params = PatchParams::apply(crate::FIELD_MANAGER).force();
    api.patch(name, &params, &Patch::Apply(&patch)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_status(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("nope", "Reason")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn message_is_what_then_the_cause() {
        let e = ApiError::of("create node n")(api_status(500));
        assert_eq!(e.code(), Some(500));
        assert!(e.to_string().starts_with("create node n: "), "{e}");
        assert!(e.to_string().contains("nope"), "{e}");
    }
}
