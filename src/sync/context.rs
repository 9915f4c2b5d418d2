//! What every kind's engine shares: the names that place a vcluster on the
//! host ([`Names`], all a rule's decision reads of the syncer) and the
//! [`Context`] with both API clients and the event recorder (for the work
//! that talks to the APIs).

use std::fmt::Debug;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};

use super::outage::Outage;
use crate::translate::{Ownership, VclusterName, VirtualKey, host_name};

/// Kubernetes keeps an event's note to 1 KiB.
pub const EVENT_NOTE_MAX: usize = 1024;

/// Which vcluster this is and where it lives on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// This vcluster.
    pub vc: VclusterName,
    /// The host namespace the vcluster lives in.
    pub host_namespace: String,
}

impl Names {
    /// Names of vcluster `vc` in host namespace `host_namespace`.
    pub fn new(vc: VclusterName, host_namespace: impl Into<String>) -> Self {
        Self {
            vc,
            host_namespace: host_namespace.into(),
        }
    }

    /// Ownership markers of this vcluster.
    pub fn ownership(&self) -> Ownership<'_> {
        Ownership::new(&self.vc)
    }

    /// The host name of a virtual object.
    pub fn host_name(&self, key: &VirtualKey) -> String {
        host_name(&self.vc, &key.namespace, &key.name)
    }
}

/// What is shared by every kind's engine.
#[derive(Clone)]
pub struct Context {
    /// This vcluster and its host namespace.
    pub names: Names,
    /// Client for the host API (namespaced permissions suffice).
    pub host: kube::Client,
    /// Client for the virtual API.
    pub virt: kube::Client,
    /// Publishes events on virtual objects.
    pub recorder: Recorder,
    /// The host object every host copy is owned by (the vcluster's
    /// StatefulSet), so that the host's garbage collector removes the copies
    /// when it goes (`helm uninstall`); `None` in the dev stack.
    pub owner: Option<OwnerReference>,
    /// Noticed API server outages, and the recoveries that follow.
    pub outage: Arc<Outage>,
}

impl Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("names", &self.names)
            .field("owner", &self.owner.as_ref().map(|o| &o.name))
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context; events are reported as `vcluster-syncer`.
    pub fn new(names: Names, host: kube::Client, virt: kube::Client) -> Self {
        let recorder = Recorder::new(
            virt.clone(),
            Reporter {
                controller: "vcluster-syncer".into(),
                instance: None,
            },
        );
        Self {
            names,
            host,
            virt,
            recorder,
            owner: None,
            outage: Arc::default(),
        }
    }

    /// This context with host copies owned by `owner`.
    #[must_use]
    pub fn with_owner(mut self, owner: Option<OwnerReference>) -> Self {
        self.owner = owner;
        self
    }

    /// The owner references every host object the syncer writes carries.
    pub fn owner_references(&self) -> Option<Vec<OwnerReference>> {
        self.owner.clone().map(|o| vec![o])
    }

    /// Ownership markers of this vcluster.
    pub fn ownership(&self) -> Ownership<'_> {
        self.names.ownership()
    }

    /// The host name of a virtual object.
    pub fn host_name(&self, key: &VirtualKey) -> String {
        self.names.host_name(key)
    }

    /// Publishes an event on a virtual object (best effort: a failure is
    /// logged). The note is cut to [`EVENT_NOTE_MAX`] bytes, as the API
    /// expects.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let ev = KubeEvent {
            type_,
            reason: reason.to_owned(),
            note: Some(truncate_note(note)),
            action: "Sync".to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::warn!(reason, error = %e, "cannot publish event");
        }
    }
}

/// `note` cut to at most [`EVENT_NOTE_MAX`] bytes at a character boundary,
/// ending in `…` when cut.
pub fn truncate_note(mut note: String) -> String {
    if note.len() <= EVENT_NOTE_MAX {
        return note;
    }
    let ellipsis = '…';
    let mut end = EVENT_NOTE_MAX - ellipsis.len_utf8();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    note.truncate(end);
    note.push(ellipsis);
    note
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_cut_to_the_api_limit_at_a_character_boundary() {
        assert_eq!(truncate_note("short".into()), "short");
        let exact = "a".repeat(EVENT_NOTE_MAX);
        assert_eq!(truncate_note(exact.clone()), exact);
        let long = "é".repeat(EVENT_NOTE_MAX);
        let cut = truncate_note(long);
        assert!(cut.len() <= EVENT_NOTE_MAX, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert!(cut.trim_end_matches('…').chars().all(|c| c == 'é'));
    }

    #[test]
    fn names_place_objects_on_the_host() {
        let names = Names::new(VclusterName::new("vc").unwrap(), "team-a");
        let key = VirtualKey {
            namespace: "default".into(),
            name: "web".into(),
        };
        assert_eq!(names.host_name(&key), "web-x-default-x-vc");
    }
}
