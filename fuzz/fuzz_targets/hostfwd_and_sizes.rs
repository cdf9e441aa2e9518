//! User-supplied VM options: `devices::net::parse_hostfwd` (and `ForwardSpec::parse_hostfwd`,
//! `ForwardSpec::parse_fd`), `vmm::spec::ShareSpec::parse` and `vmm::cpuid::CpuTemplate::parse`
//! on the input as a string. Accepted values must satisfy what the parsers promise.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::cpuid::CpuTemplate;
use vmm::spec::{ForwardSpec, ShareSpec};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok((_, host_port, guest_port)) = devices::net::parse_hostfwd(s) {
        let spec = ForwardSpec::parse_hostfwd(s).expect("the spec accepts what the parser does");
        assert_eq!((spec.host_port, spec.guest_port), (host_port, guest_port));
    }
    if let Ok(f) = ForwardSpec::parse_fd(s) {
        assert!(f.listen_fd.is_some_and(|fd| fd >= 3) && f.guest_port != 0);
    }
    if let Ok(share) = ShareSpec::parse(s) {
        assert!(!share.tag.is_empty() && share.tag.len() <= 255);
    }
    let _ = CpuTemplate::parse(s);
});
