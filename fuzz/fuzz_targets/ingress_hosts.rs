//! Ingress host patterns: overlap is symmetric and reflexive, the claimed
//! names of any ingress are normalised, and the allowed-host policy never
//! panics.
#![no_main]
use k8s_openapi::api::networking::v1::Ingress;
use libfuzzer_sys::fuzz_target;
use vcluster::policy::ingress_hosts::{claimed_hosts, overlaps};
use vcluster::translate::VclusterName;
use vcluster::translate::ingress::IngressPolicy;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    if let Some((a, b)) = s.split_once('\n') {
        assert_eq!(overlaps(a, b), overlaps(b, a), "{a:?} {b:?}");
        assert!(overlaps(a, a), "{a:?}");
    }
    if let Ok(ing) = serde_json::from_slice::<Ingress>(data) {
        for h in claimed_hosts(&ing) {
            assert_eq!(h, h.to_ascii_lowercase());
        }
        if let Ok(vc) = VclusterName::new("vc1") {
            let p = IngressPolicy::new(
                &vc,
                vec!["*snippet*".into()],
                vec!["*.{name}.example.com".into()],
            );
            let _ = p.check(&ing);
        }
    }
});
