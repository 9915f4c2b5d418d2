//! Host events about synced objects, translated into events on the matching
//! virtual objects.

use k8s_openapi::api::core::v1::{Event, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::markers::VirtualKey;

/// The virtual object a host event is about.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    /// Its kind (`Pod`, ...).
    pub kind: &'a str,
    /// Its virtual key.
    pub key: &'a VirtualKey,
    /// Its virtual uid.
    pub uid: &'a str,
    /// The host object's name.
    pub host_name: &'a str,
    /// The host namespace.
    pub host_namespace: &'a str,
}

/// Replaces the host object's names in `text` with the virtual ones.
pub fn translate_text(text: &str, t: &Target<'_>) -> String {
    let qualified_host = format!("{}/{}", t.host_namespace, t.host_name);
    let qualified_virtual = format!("{}/{}", t.key.namespace, t.key.name);
    text.replace(&qualified_host, &qualified_virtual)
        .replace(t.host_name, &t.key.name)
}

/// The virtual event for `host` about `t`. Its name is derived from the host
/// event's uid, so re-applying updates one virtual event (deduplicated) as
/// the host event's count grows.
pub fn virtual_event(host: &Event, t: &Target<'_>) -> Event {
    let host_uid = host.metadata.uid.as_deref().unwrap_or_default();
    let suffix = super::sha256_hex(host_uid.as_bytes(), 8);
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{}.{suffix}", t.key.name)),
            namespace: Some(t.key.namespace.clone()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some(t.kind.to_owned()),
            name: Some(t.key.name.clone()),
            namespace: Some(t.key.namespace.clone()),
            uid: Some(t.uid.to_owned()),
            field_path: host.involved_object.field_path.clone(),
            ..ObjectReference::default()
        },
        reason: host.reason.clone(),
        message: host.message.as_deref().map(|m| translate_text(m, t)),
        type_: host.type_.clone(),
        count: host.count,
        first_timestamp: host.first_timestamp.clone(),
        last_timestamp: host.last_timestamp.clone(),
        event_time: host.event_time.clone(),
        reporting_component: host.reporting_component.clone(),
        reporting_instance: host.reporting_instance.clone(),
        action: host.action.clone(),
        source: host.source.clone(),
        series: host.series.clone(),
        ..Event::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn host_names_become_virtual_names() {
        let key = VirtualKey {
            namespace: "default".into(),
            name: "web-1".into(),
        };
        let t = Target {
            kind: "Pod",
            key: &key,
            uid: "vuid",
            host_name: "web-1-x-default-x-vc",
            host_namespace: "team-a",
        };
        let host: Event = serde_json::from_value(json!({
            "metadata": {"name": "web-1-x-default-x-vc.123", "namespace": "team-a", "uid": "huid"},
            "involvedObject": {"kind": "Pod", "name": "web-1-x-default-x-vc", "namespace": "team-a", "uid": "hpuid"},
            "reason": "Scheduled", "type": "Normal", "count": 2,
            "message": "Successfully assigned team-a/web-1-x-default-x-vc to kwok-node-0"
        }))
        .unwrap();
        let v = virtual_event(&host, &t);
        assert_eq!(
            v.message.as_deref(),
            Some("Successfully assigned default/web-1 to kwok-node-0")
        );
        assert_eq!(v.involved_object.name.as_deref(), Some("web-1"));
        assert_eq!(v.involved_object.namespace.as_deref(), Some("default"));
        assert_eq!(v.involved_object.uid.as_deref(), Some("vuid"));
        assert_eq!(v.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(v.count, Some(2));
        // Same host event, same virtual event name: updates deduplicate.
        assert_eq!(v.metadata.name, virtual_event(&host, &t).metadata.name);
        assert!(v.metadata.name.unwrap().starts_with("web-1."));
    }
}
