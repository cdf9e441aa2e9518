//! CreateVm request checks and the share contents built from a request. Every field is checked
//! before anything starts (spec §8): no CR/LF/NUL in strings (they would inject lines into the
//! `environment` file), bounded sizes, kernel-parameter-safe `aa_kbs_params`, a valid TTL.

use crate::duration::parse_go_duration;
use crate::pb::CreateReq;
use std::time::Duration;

/// Largest accepted PEM field (certificate chains fit easily).
pub const MAX_PEM_BYTES: usize = 256 * 1024;
/// Largest accepted string field.
pub const MAX_STRING_BYTES: usize = 4096;
/// Linux x86 `COMMAND_LINE_SIZE` is 2048 including the terminating NUL.
pub const MAX_CMDLINE_BYTES: usize = 2047;

/// A request field that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// A string holds a line break or NUL.
    #[error("field {field} contains a forbidden control character (CR, LF or NUL)")]
    ControlChar {
        /// Field name.
        field: &'static str,
    },
    /// A field is larger than allowed.
    #[error("field {field} is {len} bytes, more than the limit of {max}")]
    TooLarge {
        /// Field name.
        field: &'static str,
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// `aa_kbs_params` would split into several kernel parameters.
    #[error("field aa_kbs_params must not contain whitespace or quotes: {0:?}")]
    KernelParam(String),
    /// The kernel command line would be too long.
    #[error("kernel command line would be {0} bytes, more than {MAX_CMDLINE_BYTES}")]
    CmdlineTooLong(usize),
    /// The TTL is not a Go duration (message in Go's words).
    #[error("{0}")]
    Ttl(String),
}

/// What a valid request turns into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRequest {
    /// Kernel command line including `agent.aa_kbc_params=` when given.
    pub cmdline: String,
    /// Time to live; `None` for no TTL (empty or zero).
    pub ttl: Option<Duration>,
    /// The `environment` file for `env_share`.
    pub environment: Vec<u8>,
    /// `cert.pem`, `key.pem`, `ca.pem` for `certs_share` (always all three, maybe empty).
    pub certs: Vec<(String, Vec<u8>)>,
}

fn check_str(field: &'static str, value: &str) -> Result<(), RequestError> {
    if value.len() > MAX_STRING_BYTES {
        return Err(RequestError::TooLarge {
            field,
            len: value.len(),
            max: MAX_STRING_BYTES,
        });
    }
    if value.contains(['\r', '\n', '\0']) {
        return Err(RequestError::ControlChar { field });
    }
    Ok(())
}

fn check_pem(field: &'static str, value: &[u8]) -> Result<(), RequestError> {
    if value.len() > MAX_PEM_BYTES {
        return Err(RequestError::TooLarge {
            field,
            len: value.len(),
            max: MAX_PEM_BYTES,
        });
    }
    Ok(())
}

/// Checks every field of `req` and builds the VM inputs; `base_cmdline` is `KERNEL_CMDLINE`.
pub fn validate(req: &CreateReq, id: &str, base_cmdline: &str) -> Result<VmRequest, RequestError> {
    let strings: [(&'static str, &str); 10] = [
        ("agent_log_level", &req.agent_log_level),
        ("agent_cvm_server_url", &req.agent_cvm_server_url),
        ("agent_cvm_ca_url", &req.agent_cvm_ca_url),
        ("ttl", &req.ttl),
        ("agent_certs_token", &req.agent_certs_token),
        ("aws_access_key_id", &req.aws_access_key_id),
        ("aws_secret_access_key", &req.aws_secret_access_key),
        ("aws_endpoint_url", &req.aws_endpoint_url),
        ("aws_region", &req.aws_region),
        ("aa_kbs_params", &req.aa_kbs_params),
    ];
    for (field, value) in strings {
        check_str(field, value)?;
    }
    check_pem("agent_cvm_server_ca_cert", &req.agent_cvm_server_ca_cert)?;
    check_pem("agent_cvm_client_key", &req.agent_cvm_client_key)?;
    check_pem("agent_cvm_client_cert", &req.agent_cvm_client_cert)?;

    let aa = &req.aa_kbs_params;
    if aa
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '"')
    {
        return Err(RequestError::KernelParam(aa.clone()));
    }
    let cmdline = if aa.is_empty() {
        base_cmdline.to_string()
    } else {
        format!("{base_cmdline} agent.aa_kbc_params={aa}")
    };
    if cmdline.len() > MAX_CMDLINE_BYTES {
        return Err(RequestError::CmdlineTooLong(cmdline.len()));
    }
    let ttl = if req.ttl.is_empty() {
        None
    } else {
        Some(parse_go_duration(&req.ttl).map_err(RequestError::Ttl)?).filter(|d| !d.is_zero())
    };
    Ok(VmRequest {
        cmdline,
        ttl,
        environment: environment(req, id),
        certs: certs(req),
    })
}

fn environment(req: &CreateReq, id: &str) -> Vec<u8> {
    let mut lines = vec![
        ("AGENT_LOG_LEVEL", req.agent_log_level.as_str()),
        ("AGENT_CVM_GRPC_URL", &req.agent_cvm_server_url),
        ("AGENT_CVM_ID", id),
        ("AGENT_CERTS_TOKEN", &req.agent_certs_token),
        ("AGENT_CVM_CA_URL", &req.agent_cvm_ca_url),
    ];
    if !req.agent_cvm_client_cert.is_empty() {
        lines.push(("AGENT_CVM_GRPC_CLIENT_CERT", "/etc/certs/cert.pem"));
    }
    if !req.agent_cvm_client_key.is_empty() {
        lines.push(("AGENT_CVM_GRPC_CLIENT_KEY", "/etc/certs/key.pem"));
    }
    if !req.agent_cvm_server_ca_cert.is_empty() {
        lines.push(("AGENT_CVM_GRPC_SERVER_CA_CERTS", "/etc/certs/ca.pem"));
    }
    for (key, value) in [
        ("AWS_ACCESS_KEY_ID", &req.aws_access_key_id),
        ("AWS_SECRET_ACCESS_KEY", &req.aws_secret_access_key),
        ("AWS_ENDPOINT_URL", &req.aws_endpoint_url),
        ("AWS_REGION", &req.aws_region),
    ] {
        if !value.is_empty() {
            lines.push((key, value));
        }
    }
    lines
        .iter()
        .map(|(k, v)| format!("{k}={v}\n"))
        .collect::<String>()
        .into_bytes()
}

fn certs(req: &CreateReq) -> Vec<(String, Vec<u8>)> {
    vec![
        ("cert.pem".into(), req.agent_cvm_client_cert.clone()),
        ("key.pem".into(), req.agent_cvm_client_key.clone()),
        ("ca.pem".into(), req.agent_cvm_server_ca_cert.clone()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> CreateReq {
        CreateReq {
            agent_cvm_server_url: "10.0.2.2:7001".into(),
            agent_log_level: "debug".into(),
            ..Default::default()
        }
    }

    #[test]
    fn environment_has_the_always_keys_and_only_set_optional_ones() {
        let mut r = req();
        r.agent_cvm_client_cert = b"CERT".to_vec();
        r.aws_region = "eu".into();
        let v = validate(&r, "id-1", "quiet console=null").unwrap();
        let env = String::from_utf8(v.environment).unwrap();
        let lines: Vec<&str> = env.lines().collect();
        assert_eq!(
            lines,
            [
                "AGENT_LOG_LEVEL=debug",
                "AGENT_CVM_GRPC_URL=10.0.2.2:7001",
                "AGENT_CVM_ID=id-1",
                "AGENT_CERTS_TOKEN=",
                "AGENT_CVM_CA_URL=",
                "AGENT_CVM_GRPC_CLIENT_CERT=/etc/certs/cert.pem",
                "AWS_REGION=eu",
            ]
        );
        assert_eq!(v.certs[0], ("cert.pem".to_string(), b"CERT".to_vec()));
        assert_eq!(v.certs[1], ("key.pem".to_string(), Vec::new()));
        assert_eq!(v.certs[2].0, "ca.pem");
        assert_eq!(v.cmdline, "quiet console=null");
        assert_eq!(v.ttl, None);
    }

    #[test]
    fn aa_kbs_params_is_appended_as_kbc() {
        let mut r = req();
        r.aa_kbs_params = "cc_kbc::http://10.0.2.2:8080".into();
        let v = validate(&r, "x", "quiet").unwrap();
        assert_eq!(
            v.cmdline,
            "quiet agent.aa_kbc_params=cc_kbc::http://10.0.2.2:8080"
        );
    }

    #[test]
    fn line_breaks_are_rejected_in_every_string_field() {
        let setters: [fn(&mut CreateReq); 5] = [
            |r| r.agent_log_level = "info\nEVIL=1".into(),
            |r| r.agent_cvm_server_url = "a\rb".into(),
            |r| r.aws_secret_access_key = "k\n".into(),
            |r| r.agent_certs_token = "t\0".into(),
            |r| r.aws_region = "\n".into(),
        ];
        for set in setters {
            let mut r = req();
            set(&mut r);
            assert!(matches!(
                validate(&r, "x", "q"),
                Err(RequestError::ControlChar { .. })
            ));
        }
    }

    #[test]
    fn ttl_is_checked_first_class() {
        let mut r = req();
        r.ttl = "abc".into();
        assert_eq!(
            validate(&r, "x", "q").unwrap_err().to_string(),
            "time: invalid duration \"abc\""
        );
        r.ttl = "1h0m0s".into();
        assert_eq!(
            validate(&r, "x", "q").unwrap().ttl,
            Some(Duration::from_secs(3600))
        );
        r.ttl = "0s".into();
        assert_eq!(validate(&r, "x", "q").unwrap().ttl, None);
    }

    #[test]
    fn sizes_and_kernel_params_are_bounded() {
        let mut r = req();
        r.agent_cvm_client_key = vec![b'k'; MAX_PEM_BYTES + 1];
        assert!(matches!(
            validate(&r, "x", "q"),
            Err(RequestError::TooLarge {
                field: "agent_cvm_client_key",
                ..
            })
        ));
        let mut r = req();
        r.aws_endpoint_url = "u".repeat(MAX_STRING_BYTES + 1);
        assert!(matches!(
            validate(&r, "x", "q"),
            Err(RequestError::TooLarge { .. })
        ));
        let mut r = req();
        r.aa_kbs_params = "a init=/bin/sh".into();
        assert!(matches!(
            validate(&r, "x", "q"),
            Err(RequestError::KernelParam(_))
        ));
        let mut r = req();
        r.aa_kbs_params = "p".repeat(2040);
        assert!(matches!(
            validate(&r, "x", "quiet"),
            Err(RequestError::CmdlineTooLong(_))
        ));
    }
}
