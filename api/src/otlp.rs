//! Traces of the manager's operations sent to an OTLP/HTTP collector (`COCOS_JAEGER_URL`, JSON
//! encoding, `POST {url}/v1/traces`), with the Go manager's span names (`run`, `stop`,
//! `fetch_attestation_policy`, `return_cvm_info`, `shutdown`). Recording never blocks: spans go
//! through a bounded queue to one background task that batches them; when the collector is
//! unreachable the batch is dropped and counted, and the failure is logged once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Spans waiting for export at most; more are dropped (and counted).
const QUEUE: usize = 1024;
/// Spans per POST at most.
const BATCH: usize = 128;
/// How long the exporter waits for more spans before it sends what it has.
const LINGER: Duration = Duration::from_millis(500);
/// Connect + send + response bound for one POST.
const POST_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a collector URL cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// Only `http://host[:port][/path]` is supported.
    #[error("COCOS_JAEGER_URL '{0}': expected http://HOST[:PORT][/PATH]")]
    Url(String),
}

/// One finished operation.
#[derive(Debug, Clone)]
pub struct Span {
    /// Span name (`run`, `stop`, ...).
    pub name: &'static str,
    /// Wall-clock start.
    pub start: SystemTime,
    /// Duration.
    pub duration: Duration,
    /// String attributes (e.g. `cvm_id`).
    pub attributes: Vec<(&'static str, String)>,
    /// The error text when the operation failed.
    pub error: Option<String>,
}

/// Where the collector is.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    /// `host:port` to connect to.
    addr: String,
    /// Value of the Host header.
    host: String,
    /// Request path (`.../v1/traces`).
    path: String,
}

fn endpoint(url: &str) -> Result<Endpoint, OtlpError> {
    let bad = || OtlpError::Url(url.to_string());
    let rest = url.strip_prefix("http://").ok_or_else(bad)?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    let has_port = match host.rfind(':') {
        Some(i) => !host.ends_with(']') && host[i + 1..].parse::<u16>().is_ok(),
        None => false,
    };
    let addr = if has_port {
        host.to_string()
    } else {
        format!("{host}:4318")
    };
    let path = if path.ends_with("/v1/traces") {
        path.to_string()
    } else {
        format!("{path}/v1/traces")
    };
    Ok(Endpoint {
        addr,
        host: host.to_string(),
        path,
    })
}

/// Counters of the exporter, for logs and tests.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Spans the collector accepted.
    pub exported: AtomicU64,
    /// Spans dropped: queue full or collector unreachable/refusing.
    pub dropped: AtomicU64,
}

/// Hands spans to the background exporter; cheap to clone.
#[derive(Clone)]
pub struct Tracer {
    tx: mpsc::Sender<Span>,
    ratio: f64,
    stats: Arc<ExportStats>,
}

impl Tracer {
    /// Starts the exporter task for `url` on the current tokio runtime. No I/O happens here:
    /// an unreachable collector cannot delay start-up. The task ends, after sending what is
    /// queued, once every `Tracer` clone is dropped; await its handle to flush at exit.
    pub fn start(url: &str, ratio: f64) -> Result<(Self, JoinHandle<()>), OtlpError> {
        let ep = endpoint(url)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(ExportStats::default());
        let task = tokio::spawn(export_loop(ep, rx, Arc::clone(&stats)));
        Ok((Self { tx, ratio, stats }, task))
    }

    /// The exporter's counters.
    pub fn stats(&self) -> &ExportStats {
        &self.stats
    }

    /// Queues `span` if the sampling ratio picks it; never waits.
    pub fn record(&self, span: Span) {
        if !sampled(self.ratio) {
            return;
        }
        if self.tx.try_send(span).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// True with probability `ratio`.
fn sampled(ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    // The low 53 bits of a v4 UUID are random (version and variant bits sit above them).
    let bits = uuid::Uuid::new_v4().as_u128() as u64 & ((1u64 << 53) - 1);
    let r = bits as f64 / (1u64 << 53) as f64;
    r < ratio
}

async fn export_loop(ep: Endpoint, mut rx: mpsc::Receiver<Span>, stats: Arc<ExportStats>) {
    let warned = AtomicBool::new(false);
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => batch.push(s),
                _ => break,
            }
        }
        let body = encode(&batch);
        match tokio::time::timeout(POST_TIMEOUT, post(&ep, &body)).await {
            Ok(Ok(())) => {
                stats
                    .exported
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                if warned.swap(false, Ordering::Relaxed) {
                    tracing::info!(collector = %ep.addr, "OTLP collector reachable again");
                }
            }
            failed => {
                stats
                    .dropped
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_string(),
                };
                if !warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(collector = %ep.addr, error = %why, "OTLP export failed; dropping spans until the collector answers");
                }
            }
        }
    }
}

async fn post(ep: &Endpoint, body: &[u8]) -> std::io::Result<()> {
    let mut s = tokio::net::TcpStream::connect(&ep.addr).await?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        ep.path,
        ep.host,
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut buf[n..]).await? {
            0 => break,
            k => n += k,
        }
    }
    let line = String::from_utf8_lossy(&buf[..n]);
    let code = line.split(' ').nth(1).unwrap_or("");
    if code.starts_with('2') {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "collector answered '{}'",
            line.lines().next().unwrap_or("")
        )))
    }
}

fn nanos(t: SystemTime) -> String {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
        .to_string()
}

/// The OTLP/JSON `ExportTraceServiceRequest` for `spans` (each its own trace).
fn encode(spans: &[Span]) -> Vec<u8> {
    let spans: Vec<serde_json::Value> = spans
        .iter()
        .map(|s| {
            let id = uuid::Uuid::new_v4().as_u128();
            let attributes: Vec<serde_json::Value> = s
                .attributes
                .iter()
                .map(|(k, v)| serde_json::json!({"key": k, "value": {"stringValue": v}}))
                .collect();
            let status = match &s.error {
                Some(e) => serde_json::json!({"code": 2, "message": e}),
                None => serde_json::json!({"code": 1}),
            };
            serde_json::json!({
                "traceId": format!("{id:032x}"),
                "spanId": format!("{:016x}", (id as u64) | 1),
                "name": s.name,
                "kind": 2,
                "startTimeUnixNano": nanos(s.start),
                "endTimeUnixNano": nanos(s.start + s.duration),
                "attributes": attributes,
                "status": status,
            })
        })
        .collect();
    let doc = serde_json::json!({"resourceSpans": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "cvmm-manager"}},
            {"key": "service.version", "value": {"stringValue": env!("CARGO_PKG_VERSION")}},
        ]},
        "scopeSpans": [{"scope": {"name": "cvmm.manager"}, "spans": spans}],
    }]});
    serde_json::to_vec(&doc).unwrap_or_default()
}

#[cfg(test)]
#[path = "otlp_tests.rs"]
mod tests;
