//! The sleep decision and the sleeping pod's status.

use super::*;
use crate::sync::tests::obj;

const MIN: Option<Duration> = Some(Duration::from_secs(60));

#[test]
fn idle_past_the_threshold_sleeps_and_a_later_request_wakes() {
    let awake = Recorded {
        last_activity: Some(1_000),
        ..Recorded::default()
    };
    assert_eq!(decide(&awake, 1_000, 1_030, MIN), Step::Stay);
    assert_eq!(decide(&awake, 1_000, 1_060, MIN), Step::Sleep);
    assert_eq!(
        decide(&awake, 1_000, 9_999, None),
        Step::Stay,
        "off by default"
    );
    assert_eq!(decide(&awake, 1_061, 1_070, MIN), Step::Record(1_061));
    assert_eq!(
        decide(&awake, 1_059, 1_070, MIN),
        Step::Stay,
        "at most once a minute"
    );
    let never = Recorded::default();
    assert_eq!(decide(&never, 500, 500, MIN), Step::Record(500));
    let asleep = Recorded {
        last_activity: Some(1_000),
        sleeping_since: Some(1_060),
        ..Recorded::default()
    };
    assert_eq!(decide(&asleep, 1_000, 5_000, MIN), Step::Stay);
    assert_eq!(decide(&asleep, 1_060, 5_000, MIN), Step::Stay);
    assert_eq!(decide(&asleep, 1_061, 5_000, MIN), Step::Wake(1_061));
    // Asked to sleep (`vcluster sleep`) with no threshold: stays asleep.
    assert_eq!(decide(&asleep, 1_000, 5_000, None), Step::Stay);
}

#[test]
fn the_state_reads_back_from_the_annotations() {
    let svc: Service = obj(json!({"metadata": {"name": "vc", "annotations": {
        LAST_ACTIVITY_ANNOTATION: "2026-12-01T10:00:00Z",
        SLEEPING_SINCE_ANNOTATION: "2026-12-01T10:30:00Z",
        SLEEP_AFTER_ANNOTATION: "1800",
    }}}));
    let r = Recorded::of(&svc);
    assert_eq!(r.sleeping_since.unwrap() - r.last_activity.unwrap(), 1_800);
    assert_eq!(r.sleep_after, Some(1_800));
    assert_eq!(
        format_time(r.last_activity.unwrap()),
        "2026-12-01T10:00:00Z"
    );
    let patch = annotations_patch(&wake_now(r.last_activity.unwrap()));
    assert_eq!(
        patch,
        json!({"metadata": {"annotations": {
            SLEEPING_SINCE_ANNOTATION: null,
            LAST_ACTIVITY_ANNOTATION: "2026-12-01T10:00:00Z",
        }}})
    );
}

#[test]
fn a_sleeping_pod_is_not_ready_and_says_why() {
    let running: Pod = obj(json!({
        "metadata": {"name": "web", "namespace": "shop"},
        "status": {"phase": "Running", "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "True"},
            {"type": "ContainersReady", "status": "True"},
        ], "containerStatuses": [{"name": "app", "image": "nginx", "imageID": "", "ready": true,
            "restartCount": 2, "state": {"running": {}}}]}
    }));
    assert!(!slept(&running));
    let patch = sleeping_status(&running).unwrap();
    let marked: Pod = obj(crate::sync::tests::merged(
        serde_json::to_value(&running).unwrap(),
        patch,
    ));
    assert!(slept(&marked));
    let conds = marked.status.as_ref().unwrap().conditions.as_ref().unwrap();
    let get = |t: &str| conds.iter().find(|c| c.type_ == t).unwrap();
    assert_eq!(get("PodScheduled").status, "True");
    for t in ["Ready", "ContainersReady"] {
        assert_eq!(get(t).status, "False");
        assert_eq!(get(t).reason.as_deref(), Some(SLEEPING_REASON));
    }
    let c = &marked
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0];
    assert!(!c.ready);
    assert_eq!(c.restart_count, 2);
    assert_eq!(
        c.state
            .as_ref()
            .unwrap()
            .waiting
            .as_ref()
            .unwrap()
            .reason
            .as_deref(),
        Some(SLEEPING_REASON)
    );
    assert_eq!(sleeping_status(&marked), None, "marked once");
    assert_eq!(
        still_asleep(&crate::sync::cache::filled(vec![running, marked])),
        1
    );
}

#[test]
fn labelled_pods_and_namespaces_stay_awake() {
    let sleep = Sleep::default();
    let pod = |ns: &str, labels: Value| -> Pod {
        obj(json!({"metadata": {"name": "p", "namespace": ns, "labels": labels}}))
    };
    assert!(sleep.exempt(&pod("a", json!({STAY_AWAKE_LABEL: "true"}))));
    assert!(!sleep.exempt(&pod("a", json!({STAY_AWAKE_LABEL: "no"}))));
    sleep
        .exempt_namespaces
        .write()
        .unwrap()
        .insert("ops".to_owned());
    assert!(sleep.exempt(&pod("ops", json!({}))));
    assert!(!sleep.exempt(&pod("a", json!({}))));
}
