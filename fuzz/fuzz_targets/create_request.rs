//! The manager's CreateVm request checks: `api::request::validate` on a `CreateReq` whose fields
//! come from the input, plus `api::duration::parse_go_duration` on the raw TTL text.
//!
//! Input: records (see `cvmm_fuzz::records`); flags mod 13 picks the field (its proto field
//! number minus one), the body is its value (strings lossily decoded as UTF-8, so control
//! characters and multi-byte text both occur). A later record for a field replaces the earlier.
//!
//! When validation passes, the result must be what the manager relies on: an `environment`
//! file of exactly one `KEY=value` line per emitted variable (nothing injected), a command line
//! that starts with the base one and fits Linux's limit, a TTL that is non-zero, and the three
//! certificate files carrying the request's bytes.
#![no_main]

use api::pb::CreateReq;
use api::request::{validate, MAX_CMDLINE_BYTES};
use libfuzzer_sys::fuzz_target;

const BASE: &str = "quiet console=hvc0";

fn set(req: &mut CreateReq, field: u8, body: &[u8]) {
    let s = || String::from_utf8_lossy(body).into_owned();
    match field % 13 {
        0 => req.agent_log_level = s(),
        1 => req.agent_cvm_server_ca_cert = body.to_vec(),
        2 => req.agent_cvm_client_key = body.to_vec(),
        3 => req.agent_cvm_client_cert = body.to_vec(),
        4 => req.agent_cvm_server_url = s(),
        5 => req.agent_cvm_ca_url = s(),
        6 => req.ttl = s(),
        7 => req.agent_certs_token = s(),
        8 => req.aws_access_key_id = s(),
        9 => req.aws_secret_access_key = s(),
        10 => req.aws_endpoint_url = s(),
        11 => req.aws_region = s(),
        _ => req.aa_kbs_params = s(),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut req = CreateReq::default();
    for (flags, body) in cvmm_fuzz::records(data) {
        set(&mut req, flags, body);
    }
    let _ = api::duration::parse_go_duration(&req.ttl);
    let Ok(v) = validate(&req, "6f1e4c52-0000-4000-8000-000000000001", BASE) else {
        return;
    };

    let optional = [
        !req.agent_cvm_client_cert.is_empty(),
        !req.agent_cvm_client_key.is_empty(),
        !req.agent_cvm_server_ca_cert.is_empty(),
        !req.aws_access_key_id.is_empty(),
        !req.aws_secret_access_key.is_empty(),
        !req.aws_endpoint_url.is_empty(),
        !req.aws_region.is_empty(),
    ];
    let want_lines = 5 + optional.iter().filter(|x| **x).count();
    let env = std::str::from_utf8(&v.environment).expect("environment is UTF-8");
    assert!(env.ends_with('\n'), "environment does not end in a newline");
    let lines: Vec<&str> = env.lines().collect();
    assert_eq!(lines.len(), want_lines, "injected lines: {env:?}");
    for l in &lines {
        let (key, _) = l.split_once('=').expect("KEY=value line");
        assert!(
            !key.is_empty() && key.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'),
            "bad key in {l:?}"
        );
        assert!(!l.contains(['\r', '\0']), "control character in {l:?}");
    }

    assert!(v.cmdline.starts_with(BASE), "base command line lost");
    assert!(
        v.cmdline.len() <= MAX_CMDLINE_BYTES,
        "command line too long"
    );
    assert!(
        !v.cmdline[BASE.len()..].contains(|c: char| c.is_whitespace() && c != ' '),
        "kernel parameters split: {:?}",
        v.cmdline
    );
    assert_eq!(
        v.cmdline[BASE.len()..].matches(' ').count(),
        usize::from(!req.aa_kbs_params.is_empty()),
        "aa_kbs_params became several kernel parameters"
    );
    if let Some(ttl) = v.ttl {
        assert!(!ttl.is_zero(), "zero TTL kept");
    }
    let certs: Vec<&[u8]> = v.certs.iter().map(|(_, b)| b.as_slice()).collect();
    assert_eq!(
        certs,
        [
            req.agent_cvm_client_cert.as_slice(),
            &req.agent_cvm_client_key,
            &req.agent_cvm_server_ca_cert
        ]
    );
});
