//! Tests of the server set-up: gRPC health and reflection, the HTTP side server, TLS and mTLS
//! with certificates made by rcgen, start-up errors, OTLP spans to a fake collector, and
//! re-adoption of running VMs by a restarted manager.

mod common;

use api::pb::manager_service_client::ManagerServiceClient;
use api::pb::{CreateReq, CvmInfoReq, RemoveReq};
use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tonic::codegen::tokio_stream::once as once_stream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

#[tokio::test]
async fn health_reports_manager_serving() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};
    let h = Harness::start(SLEEPER, &[]).await;
    let ch = Channel::from_shared(format!("http://{}", h.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(ch);
    for service in ["manager", ""] {
        let res = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            res.status,
            ServingStatus::Serving as i32,
            "service {service:?}"
        );
    }
    let err = health
        .check(HealthCheckRequest {
            service: "other".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn reflection_lists_the_manager_service() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let h = Harness::start(SLEEPER, &[]).await;
    let ch = Channel::from_shared(format!("http://{}", h.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut refl = ServerReflectionClient::new(ch);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl
        .server_reflection_info(once_stream(req))
        .await
        .unwrap()
        .into_inner();
    let msg = stream.message().await.unwrap().expect("one reply");
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!("unexpected reply")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"manager.ManagerService".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );

    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "manager.CreateReq".into(),
        )),
    };
    let mut stream = refl
        .server_reflection_info(once_stream(req))
        .await
        .unwrap()
        .into_inner();
    let msg = stream.message().await.unwrap().expect("one reply");
    let Some(MessageResponse::FileDescriptorResponse(files)) = msg.message_response else {
        panic!("unexpected reply")
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

#[tokio::test]
async fn http_serves_health_and_metrics_only() {
    let h = Harness::start(SLEEPER, &[("MANAGER_INSTANCE_ID", "inst-7".into())]).await;
    let (status, body) = h.http_get("/health").await;
    assert!(status.contains(" 200 "), "{status}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["status"], "pass");
    assert_eq!(doc["instance_id"], "inst-7");
    let (status, body) = h.http_get("/metrics").await;
    assert!(status.contains(" 200 "), "{status}");
    assert!(
        body.contains("# TYPE manager_api_request_count counter"),
        "{body}"
    );
    let (status, _) = h.http_get("/nope").await;
    assert!(status.contains(" 404 "), "{status}");
}

#[tokio::test]
async fn a_taken_grpc_port_stops_start_up_with_its_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let root = scratch();
    let cfg = config(
        &root,
        &root.join("state"),
        &root.join("exe"),
        &[
            ("MANAGER_GRPC_HOST", "127.0.0.1".into()),
            ("MANAGER_GRPC_PORT", port.clone()),
        ],
    );
    let err = api::serve(cfg, std::future::pending()).await.unwrap_err();
    assert!(matches!(err, api::ApiError::Bind { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
}

fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca: ca.pem(),
        server: leaf(vec!["localhost".into()]),
        client: leaf(vec!["client".into()]),
    }
}

async fn tls_client(
    h: &Harness,
    ca: &str,
    identity: Option<&(String, String)>,
) -> Result<ManagerServiceClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let ch = Channel::from_shared(format!("https://{}", h.grpc))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(ManagerServiceClient::new(ch))
}

async fn tls_harness(pki: &Pki, mtls: bool) -> Harness {
    let root = scratch();
    let write = |name: &str, text: &str| {
        let p = root.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let mut extra = vec![
        (
            "MANAGER_GRPC_SERVER_CERT",
            write("server.pem", &pki.server.0),
        ),
        (
            "MANAGER_GRPC_SERVER_KEY",
            write("server.key", &pki.server.1),
        ),
    ];
    if mtls {
        extra.push(("MANAGER_GRPC_CLIENT_CA_CERTS", write("ca.pem", &pki.ca)));
    }
    let exe = fake_vm(&root, SLEEPER);
    let cfg = config(&root, &root.join("state"), &exe, &extra);
    Harness::start_with(root, cfg).await
}

#[tokio::test]
async fn tls_serves_clients_that_trust_the_ca() {
    let pki = pki();
    let h = tls_harness(&pki, false).await;
    let mut c = tls_client(&h, &pki.ca, None).await.unwrap();
    let info = c
        .cvm_info(CvmInfoReq { id: "t".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.id, "t");
    let plain = Channel::from_shared(format!("http://{}", h.grpc))
        .unwrap()
        .connect()
        .await;
    if let Ok(ch) = plain {
        assert!(
            ManagerServiceClient::new(ch)
                .cvm_info(CvmInfoReq::default())
                .await
                .is_err(),
            "plaintext is refused"
        );
    }
}

#[tokio::test]
async fn mtls_requires_a_client_certificate() {
    let pki = pki();
    let h = tls_harness(&pki, true).await;
    let mut c = tls_client(&h, &pki.ca, Some(&pki.client)).await.unwrap();
    assert_eq!(
        c.cvm_info(CvmInfoReq { id: "m".into() })
            .await
            .unwrap()
            .into_inner()
            .id,
        "m"
    );
    let anonymous = match tls_client(&h, &pki.ca, None).await {
        Ok(mut c) => c.cvm_info(CvmInfoReq { id: "m".into() }).await.is_err(),
        Err(_) => true,
    };
    assert!(anonymous, "a client without a certificate is refused");
}

#[tokio::test]
async fn a_restarted_manager_re_adopts_running_vms_and_drops_dead_ones() {
    let mut first = Harness::start(SLEEPER, &[]).await;
    let mut c = first.client().await;
    let res = c
        .create_vm(CreateReq {
            ttl: "1h".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let port: u16 = res.forwarded_port.parse().unwrap();
    let dir = first.vm_dir(&res.cvm_id);
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("vm.json")).unwrap()).unwrap();
    let pid = rec["pid"].as_i64().unwrap() as i32;
    first.shutdown().await.unwrap();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "the VM outlives the manager"
    );

    // A record whose process is gone, and a directory without a record.
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    dead.wait().unwrap();
    let stale = first.state.join(uuid::Uuid::new_v4().to_string());
    std::fs::create_dir(&stale).unwrap();
    let stale_rec = serde_json::json!({"id": stale.file_name().unwrap().to_str().unwrap(), "pid": dead.id(), "start_time": 1, "port": 1, "ttl_deadline_ms": null});
    std::fs::write(stale.join("vm.json"), stale_rec.to_string()).unwrap();
    let empty = first.state.join(uuid::Uuid::new_v4().to_string());
    std::fs::create_dir(&empty).unwrap();

    let root = scratch();
    let cfg = config(&root, &first.state, &fake_vm(&root, SLEEPER), &[]);
    let second = Harness::start_with(root, cfg).await;
    let mut c = second.client().await;
    assert_eq!(
        second.metric("manager_vms_running").await.as_deref(),
        Some("1")
    );
    assert!(
        !stale.exists() && !empty.exists(),
        "records of dead VMs are dropped"
    );
    c.remove_vm(RemoveReq {
        cvm_id: res.cvm_id.clone(),
    })
    .await
    .expect("an adopted VM can be removed");
    assert!(!dir.exists());
    let mut status = 0;
    // SAFETY: reaping the test's own child (the first manager spawned it).
    let reaped = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(reaped, pid);
    assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGTERM);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the port is released"
    );
}

/// A fake OTLP/HTTP collector: answers 200 to every POST and sends each body's span names.
async fn fake_collector() -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            loop {
                let n = s.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    let body = &buf[end + 4..end + 4 + len];
                    let _ = tx.send(serde_json::from_slice(body).unwrap_or_default());
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                        .await;
                    break;
                }
            }
        }
    });
    (url, rx)
}

#[tokio::test]
async fn each_rpc_and_the_shutdown_send_an_otlp_span() {
    let (url, mut bodies) = fake_collector().await;
    let mut h = Harness::start("sleep 60", &[("COCOS_JAEGER_URL", url)]).await;
    let mut c = h.client().await;
    c.cvm_info(CvmInfoReq { id: "abc".into() }).await.unwrap();
    let err = c
        .remove_vm(RemoveReq {
            cvm_id: "no-such-vm".into(),
        })
        .await
        .unwrap_err();
    h.shutdown().await.unwrap();
    let mut spans = Vec::new();
    while spans.len() < 3 {
        let doc = tokio::time::timeout(std::time::Duration::from_secs(10), bodies.recv())
            .await
            .expect("the collector got fewer than 3 spans")
            .unwrap();
        let batch = doc["resourceSpans"][0]["scopeSpans"][0]["spans"].clone();
        spans.extend(batch.as_array().cloned().unwrap_or_default());
    }
    let find = |name: &str| {
        spans
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no span {name} in {spans:?}"))
            .clone()
    };
    let info = find("return_cvm_info");
    assert_eq!(info["status"]["code"], 1);
    assert_eq!(info["attributes"][0]["value"]["stringValue"], "abc");
    let stop = find("stop");
    assert_eq!(stop["status"]["code"], 2);
    assert_eq!(stop["status"]["message"], err.message());
    find("shutdown");
}

#[tokio::test]
async fn an_unreachable_collector_does_not_delay_the_api() {
    // A port nobody listens on: start-up and calls go on, the spans are dropped.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut h = Harness::start(
        "sleep 60",
        &[("COCOS_JAEGER_URL", format!("http://127.0.0.1:{port}"))],
    )
    .await;
    let mut c = h.client().await;
    let r = c.cvm_info(CvmInfoReq { id: "x".into() }).await.unwrap();
    assert_eq!(r.into_inner().id, "x");
    h.shutdown().await.unwrap();
}
