//! The errors of one reconcile, the category each one counts under in the
//! metrics, and the API helpers every rule file shares (exact deletes, error
//! mappers, the lock over plain data).

use std::fmt::Debug;

use kube::api::{Api, DeleteParams, Preconditions};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::cache::CacheError;
use crate::api::ApiError;
use crate::translate::VirtualKey;

/// Errors of one reconcile (retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// An API call failed (`what`: the action, kind and object).
    #[error(transparent)]
    Api(#[from] ApiError),
    /// A cached object did not parse.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The desired object could not be serialized.
    #[error("serialize {kind}: {source}")]
    Serialize {
        /// The kind.
        kind: &'static str,
        /// The cause.
        source: serde_json::Error,
    },
}

impl SyncError {
    /// A bounded label for the metrics: what kind of failure this was.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Api(ApiError { source, .. }) => match source.as_ref() {
                kube::Error::Api(s) if s.code == 409 => "conflict",
                kube::Error::Api(s) if rejected(s.code) => "rejected",
                kube::Error::Api(s) if s.code == 429 => "throttled",
                kube::Error::Api(_) => "api",
                _ => "transport",
            },
            Self::Cache(_) => "cache",
            Self::Serialize { .. } => "serialize",
        }
    }

    /// How long the API server asked the client to wait before trying
    /// again (`details.retryAfterSeconds` of a 429 or 5xx), zero if it
    /// named no time.
    pub fn retry_after(&self) -> std::time::Duration {
        let secs = match self {
            Self::Api(ApiError { source, .. }) => match source.as_ref() {
                kube::Error::Api(s) => s.details.as_ref().map_or(0, |d| d.retry_after_seconds),
                _ => 0,
            },
            _ => 0,
        };
        // Bounded: a key never waits longer than its own backoff's cap.
        std::time::Duration::from_secs(u64::from(secs)).min(super::engine::BACKOFF_MAX)
    }
}

/// Deletes exactly the object `name` with `uid` (a uid precondition), with
/// `grace` seconds if given. `Ok(false)` when it is already gone (404) or the
/// name now holds another object (409): nothing of ours is left to delete.
pub async fn delete_exact<K>(
    api: &Api<K>,
    name: &str,
    uid: Option<String>,
    grace: Option<u32>,
) -> Result<bool, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let dp = DeleteParams {
        grace_period_seconds: grace,
        preconditions: Some(Preconditions {
            uid,
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match send_unread(api, "delete", |r| r.delete(name, &dp)).await {
        Ok(()) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Sends the request `build` makes for `api`'s resource and checks the
/// answer without reading the object it returns: kube's typed calls parse a
/// delete's answer twice (as JSON, then as the kind) and a status patch's
/// once, a whole pod each time, for a result these callers drop. `verb` names
/// the call the way kube's own calls do.
pub(crate) async fn send_unread<K: Clone + Resource>(
    api: &Api<K>,
    verb: &'static str,
    build: impl FnOnce(
        &kube::core::Request,
    ) -> Result<http::Request<Vec<u8>>, kube::core::request::Error>,
) -> Result<(), kube::Error> {
    let mut req =
        build(&kube::core::Request::new(api.resource_url())).map_err(kube::Error::BuildRequest)?;
    req.extensions_mut().insert(verb);
    kube::Client::from(api.clone())
        .request_text(req)
        .await
        .map(drop)
}

/// Locks a mutex over plain data. A poisoned lock means a task panicked
/// mid-update; the maps and queues behind these locks stay consistent
/// enough to go on.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Host answers that mean "this object is not acceptable", as opposed to
/// transient failures.
pub(crate) fn rejected(code: u16) -> bool {
    matches!(code, 400 | 403 | 404 | 422)
}

/// A mapper of API errors about virtual object `v` (for rule files).
pub fn err_for<K: Resource>(
    action: &'static str,
    kind: &'static str,
    v: &K,
) -> impl FnOnce(kube::Error) -> SyncError + use<K> {
    let key = VirtualKey {
        namespace: v.namespace().unwrap_or_default(),
        name: v.name_any(),
    }
    .to_string();
    move |e| api_err(action, kind, &key, e)
}

/// The error of `action` on `kind` `key`.
pub(crate) fn api_err(
    action: &'static str,
    kind: &'static str,
    key: &str,
    e: kube::Error,
) -> SyncError {
    SyncError::Api(ApiError::new(format!("{action} {kind} {key}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("x", "Reason")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn errors_fall_into_bounded_categories() {
        let api = |code| api_err("apply", "Pod", "a/b", status(code)).category();
        assert_eq!(api(409), "conflict");
        assert_eq!(api(422), "rejected");
        assert_eq!(api(403), "rejected");
        assert_eq!(api(429), "throttled");
        assert_eq!(api(500), "api");
        let serde = serde_json::from_str::<u8>("x").unwrap_err();
        assert_eq!(
            SyncError::Serialize {
                kind: "Pod",
                source: serde
            }
            .category(),
            "serialize"
        );
    }

    #[test]
    fn a_throttled_key_waits_what_the_server_asked() {
        let mut s =
            kube::core::Status::failure("too many requests", "TooManyRequests").with_code(429);
        let waits = |s: &kube::core::Status| {
            api_err("apply", "Pod", "a/b", kube::Error::Api(s.clone().boxed())).retry_after()
        };
        assert_eq!(waits(&s), std::time::Duration::ZERO, "no time named");
        let details = |secs: u32| {
            serde_json::from_value(serde_json::json!({"retryAfterSeconds": secs})).unwrap()
        };
        s.details = Some(details(3));
        assert_eq!(waits(&s), std::time::Duration::from_secs(3));
        s.details = Some(details(3600));
        assert_eq!(waits(&s), std::time::Duration::from_secs(30), "capped");
    }
}
