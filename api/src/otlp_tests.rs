use super::*;
use tokio::net::TcpListener;

fn span(name: &'static str, error: Option<&str>) -> Span {
    Span {
        name,
        start: SystemTime::now(),
        duration: Duration::from_millis(3),
        attributes: vec![("cvm_id", "abc".into())],
        error: error.map(str::to_string),
    }
}

#[test]
fn collector_urls() {
    let ep = endpoint("http://localhost:4318").unwrap();
    assert_eq!(ep.addr, "localhost:4318");
    assert_eq!(ep.path, "/v1/traces");
    let ep = endpoint("http://jaeger").unwrap();
    assert_eq!(ep.addr, "jaeger:4318");
    assert_eq!(ep.host, "jaeger");
    let ep = endpoint("http://10.1.2.3:9999/otlp/").unwrap();
    assert_eq!(
        (ep.addr.as_str(), ep.path.as_str()),
        ("10.1.2.3:9999", "/otlp/v1/traces")
    );
    let ep = endpoint("http://c:1/v1/traces").unwrap();
    assert_eq!(ep.path, "/v1/traces");
    for bad in [
        "https://c:4318",
        "localhost:4318",
        "http://",
        "http://a b:1",
        "http://a\r\nX: y",
    ] {
        let e = endpoint(bad).unwrap_err().to_string();
        assert!(e.contains("COCOS_JAEGER_URL"), "{bad}: {e}");
    }
}

#[test]
fn sampling_ratio_bounds() {
    assert!((0..1000).all(|_| sampled(1.0)));
    assert!((0..1000).all(|_| !sampled(0.0)));
    let picked = (0..4000).filter(|_| sampled(0.5)).count();
    assert!((1000..3000).contains(&picked), "{picked} of 4000 at 0.5");
}

#[test]
fn encoding_is_otlp_json() {
    let body = encode(&[span("run", None), span("stop", Some("no such VM"))]);
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let rs = &doc["resourceSpans"][0];
    assert_eq!(
        rs["resource"]["attributes"][0]["value"]["stringValue"],
        "cvmm-manager"
    );
    let spans = rs["scopeSpans"][0]["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 2);
    assert_eq!(spans[0]["name"], "run");
    assert_eq!(spans[0]["status"]["code"], 1);
    assert_eq!(spans[1]["status"]["code"], 2);
    assert_eq!(spans[1]["status"]["message"], "no such VM");
    assert_eq!(spans[0]["traceId"].as_str().unwrap().len(), 32);
    assert_eq!(spans[0]["spanId"].as_str().unwrap().len(), 16);
    assert_ne!(spans[0]["traceId"], spans[1]["traceId"]);
    let start: u128 = spans[0]["startTimeUnixNano"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let end: u128 = spans[0]["endTimeUnixNano"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(end - start, 3_000_000);
    assert_eq!(spans[0]["attributes"][0]["key"], "cvm_id");
}

/// Reads one HTTP request (head + Content-Length body), answers `status`, returns head and body.
async fn serve_one(l: &TcpListener, status: &str) -> (String, Vec<u8>) {
    let (mut s, _) = l.accept().await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "client closed before the request ended");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
    }
    let reply = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
    s.write_all(reply.as_bytes()).await.unwrap();
    (head, buf[head_end..head_end + len].to_vec())
}

async fn wait_for(what: &str, f: impl Fn() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what} never happened");
}

#[tokio::test]
async fn spans_reach_the_collector_in_one_batch() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let t = Tracer::start(&url, 1.0).unwrap().0;
    t.record(span("run", None));
    t.record(span("stop", Some("gone")));
    let (head, body) = serve_one(&l, "200 OK").await;
    assert!(head.starts_with("POST /v1/traces HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("Content-Type: application/json"), "{head}");
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let names: Vec<&str> = doc["resourceSpans"][0]["scopeSpans"][0]["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["run", "stop"]);
    wait_for("export counted", || {
        t.stats().exported.load(Ordering::Relaxed) == 2
    })
    .await;
}

#[tokio::test]
async fn unreachable_or_refusing_collector_drops_and_counts() {
    // Nothing listens on this port once the listener is gone.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t = Tracer::start(&format!("http://127.0.0.1:{port}"), 1.0)
        .unwrap()
        .0;
    t.record(span("run", None));
    wait_for("drop counted", || {
        t.stats().dropped.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(t.stats().exported.load(Ordering::Relaxed), 0);

    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let t = Tracer::start(&format!("http://{}", l.local_addr().unwrap()), 1.0)
        .unwrap()
        .0;
    t.record(span("shutdown", None));
    serve_one(&l, "500 Internal Server Error").await;
    wait_for("refusal counted", || {
        t.stats().dropped.load(Ordering::Relaxed) == 1
    })
    .await;
}

#[tokio::test]
async fn a_full_queue_drops_instead_of_waiting() {
    // A collector that accepts but never answers: the exporter is stuck on its first batch.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let t = Tracer::start(&format!("http://{}", l.local_addr().unwrap()), 1.0)
        .unwrap()
        .0;
    for _ in 0..QUEUE + BATCH + 10 {
        t.record(span("run", None));
    }
    assert!(t.stats().dropped.load(Ordering::Relaxed) >= 10);
}

#[tokio::test]
async fn dropping_the_tracer_flushes_the_queue() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (t, task) = Tracer::start(&format!("http://{}", l.local_addr().unwrap()), 1.0).unwrap();
    t.record(span("shutdown", None));
    drop(t);
    let (_, body) = serve_one(&l, "200 OK").await;
    assert!(String::from_utf8_lossy(&body).contains("\"shutdown\""));
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}
