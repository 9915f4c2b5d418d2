//! The Pod Security Standards evaluator: any pod parses or not, never panics,
//! and a higher level never finds fewer violations.
#![no_main]
use k8s_openapi::api::core::v1::Pod;
use libfuzzer_sys::fuzz_target;
use vcluster::policy::pss::{Level, check, message};

fuzz_target!(|data: &[u8]| {
    let Ok(pod) = serde_json::from_slice::<Pod>(data) else {
        return;
    };
    assert!(check(&pod, Level::Privileged).is_empty());
    let b = check(&pod, Level::Baseline);
    let r = check(&pod, Level::Restricted);
    assert!(r.len() >= b.len(), "restricted {r:?} baseline {b:?}");
    let _ = message(Level::Restricted, &r);
});
