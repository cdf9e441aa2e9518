//! The HTTP side server on `MANAGER_HTTP_HOST:MANAGER_HTTP_PORT`: `GET /health` (JSON health
//! document) and `GET /metrics` (Prometheus text). Anything else is 404.

use crate::manager::Manager;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

fn respond(mgr: &Manager, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/health") => {
            let doc = serde_json::json!({
                "status": "pass",
                "version": env!("CARGO_PKG_VERSION"),
                "commit": option_env!("CVMM_COMMIT").unwrap_or("unknown"),
                "description": "manager service (cvmm)",
                "build_time": option_env!("CVMM_BUILD_TIME").unwrap_or("unknown"),
                "instance_id": mgr.config().instance_id,
            });
            (StatusCode::OK, "application/health+json", doc.to_string())
        }
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            mgr.metrics.render(mgr.running()),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_string(),
        ),
    };
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    if let Ok(v) = ctype.parse() {
        res.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    res
}

/// Serves HTTP/1 on `listener` until `shutdown` resolves; open connections are then dropped.
pub async fn serve_http(
    listener: TcpListener,
    mgr: Arc<Manager>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "HTTP accept failed");
                        continue;
                    }
                };
                let mgr = Arc::clone(&mgr);
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let res = respond(&mgr, &req);
                        async move { Ok::<_, Infallible>(res) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.shutdown().await;
}
