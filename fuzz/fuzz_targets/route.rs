//! The front door's router: never panics, and anything it sends to the host
//! is a plain pod subresource of a DNS-label namespace and name.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vcluster::proxy::route::{Route, classify};

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let (path, query) = match s.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (&*s, None),
    };
    if let Route::Host(t) = classify(path, query) {
        for part in [&t.namespace, &t.name] {
            assert!(
                !part.is_empty() && !part.contains(['/', '%', '?']) && part != "." && part != "..",
                "{t:?} from {s:?}"
            );
        }
        let canonical = format!(
            "/api/v1/namespaces/{}/pods/{}/{}",
            t.namespace,
            t.name,
            t.subresource.as_str()
        );
        assert_eq!(path, canonical, "a host route from a non-canonical path");
    }
});
