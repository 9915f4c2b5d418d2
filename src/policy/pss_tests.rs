//! Table tests of the Pod Security Standards controls.

use super::*;
use serde_json::{Value, json};

fn pod(spec: Value) -> Pod {
    let mut p =
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "app", "image": "x"}]}});
    merge(&mut p["spec"], spec);
    serde_json::from_value(p).unwrap()
}

use crate::sync::tests::merge;

fn container(sc: Value) -> Value {
    json!({"containers": [{"name": "app", "image": "x", "securityContext": sc}]})
}

/// One bad pod per baseline control, with the control it must fail
/// (shared with the end-to-end test).
fn baseline_offenders() -> Vec<(Pod, String)> {
    let list: Vec<Value> =
        serde_json::from_str(include_str!("pss-baseline-offenders.json")).unwrap();
    list.into_iter()
        .map(|e| {
            (
                serde_json::from_value(e["pod"].clone()).unwrap(),
                e["control"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn each_baseline_control_is_enforced() {
    let offenders = baseline_offenders();
    assert!(offenders.len() >= 14);
    for (p, control) in offenders {
        let name = p.metadata.name.clone().unwrap();
        let v = check(&p, Level::Baseline);
        assert!(v.iter().any(|v| v.control == control), "{name}: {v:?}");
        assert!(check(&p, Level::Privileged).is_empty(), "{name}");
        assert!(!check(&p, Level::Restricted).is_empty(), "{name}");
    }
}

#[test]
fn ordinary_pods_pass_baseline_and_hardened_pods_pass_restricted() {
    let plain = pod(
        json!({"volumes": [{"name": "c", "configMap": {"name": "x"}}],
        "securityContext": {"sysctls": [{"name": "net.ipv4.tcp_syncookies", "value": "1"}]}}),
    );
    assert_eq!(check(&plain, Level::Baseline), vec![]);
    assert!(
        check(
            &pod(container(
                json!({"capabilities": {"add": ["NET_BIND_SERVICE", "CHOWN"]}})
            )),
            Level::Baseline
        )
        .is_empty()
    );
    let hardened = pod(json!({
        "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "app", "image": "x", "securityContext": {
            "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}]}));
    assert_eq!(check(&hardened, Level::Restricted), vec![]);
    let controls: Vec<&str> = check(&plain, Level::Restricted)
        .iter()
        .map(|v| v.control)
        .collect();
    assert_eq!(
        controls,
        vec![
            "allowPrivilegeEscalation != false",
            "runAsNonRoot != true",
            "seccompProfile (restricted)",
            "unrestricted capabilities"
        ]
    );
    let nfs = pod(json!({"volumes": [{"name": "n", "nfs": {"server": "s", "path": "/"}}]}));
    assert!(
        check(&nfs, Level::Restricted)
            .iter()
            .any(|v| v.control == "restricted volume types" && v.detail.contains("nfs"))
    );
}

#[test]
fn the_message_names_the_level_and_every_control() {
    let p =
        pod(json!({"hostNetwork": true, "volumes": [{"name": "h", "hostPath": {"path": "/"}}]}));
    let m = message(Level::Baseline, &check(&p, Level::Baseline));
    assert!(
        m.starts_with("violates PodSecurity \"baseline:latest\": "),
        "{m}"
    );
    assert!(
        m.contains("host namespaces (hostNetwork=true)")
            && m.contains("hostPath volumes (volume \"h\" uses hostPath)"),
        "{m}"
    );
    assert_eq!("restricted".parse::<Level>(), Ok(Level::Restricted));
    assert!(
        "strict"
            .parse::<Level>()
            .unwrap_err()
            .contains("privileged, baseline or restricted")
    );
}
