//! Host names: always a DNS label ending in `-x-<vcluster>`, the same for the
//! same input, and different sources never share one.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vcluster::translate::names::is_dns_label;
use vcluster::translate::{VclusterName, host_name};

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let mut parts = s.splitn(4, '\n');
    let (ns, name, ns2, name2) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let Ok(vc) = VclusterName::new("vc1") else {
        return;
    };
    let h = host_name(&vc, ns, name);
    assert!(is_dns_label(&h), "{h:?} from {ns:?}/{name:?}");
    assert!(h.ends_with("-x-vc1"), "{h}");
    assert_eq!(h, host_name(&vc, ns, name));
    if (ns, name) != (ns2, name2) && is_dns_label(ns) && is_dns_label(ns2) {
        assert_ne!(
            h,
            host_name(&vc, ns2, name2),
            "{ns}/{name} and {ns2}/{name2}"
        );
    }
});
