//! The endpoint address policy: parsers never panic, and nothing inside a
//! host range or special range passes, whatever the allowed CIDRs.
#![no_main]
use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use vcluster::policy::endpoints::{Cidr, EndpointPolicy, HostRange, Known};

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let (cidrs, addr) = s.split_once('\n').unwrap_or((&*s, ""));
    let Ok(policy) = EndpointPolicy::parse(cidrs) else {
        return;
    };
    let service: Cidr = "10.96.0.0/12".parse().unwrap();
    let known = Known {
        own_pods: Default::default(),
        host: vec![HostRange {
            cidr: service,
            what: "the host's service range".into(),
        }],
    };
    let verdict = policy.check(addr, &known);
    if let Ok(ip) = addr.trim().parse::<IpAddr>() {
        if service.contains(ip) || ip.is_loopback() || ip.is_multicast() || ip.is_unspecified() {
            assert!(verdict.is_err(), "{addr} passed under {cidrs}");
        }
    } else {
        assert!(verdict.is_err());
    }
});
