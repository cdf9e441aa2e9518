//! `serve`: start-up (logging of ignored variables, state directory, re-adoption), the gRPC
//! server with TLS/mTLS, health and reflection, the HTTP side server, and shutdown.

use crate::config::{ManagerConfig, TlsConfig};
use crate::manager::Manager;
use crate::otlp::{Span, Tracer};
use crate::pb::manager_service_server::ManagerServiceServer;
use crate::policy::PolicyMaker;
use crate::service::Service;
use crate::{host, http, state};
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

/// Why the manager could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A configuration variable is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A listening address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A TLS file could not be read.
    #[error("cannot read TLS file {path}: {source}")]
    TlsFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A firmware file the configuration names cannot be read.
    #[error("{var}={path}: {source}")]
    Firmware {
        /// The variable naming it.
        var: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The state directory is unusable.
    #[error("state directory {path}: {source}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The gRPC server failed (including bad TLS material).
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Encoded descriptors of `manager.proto` (and its imports), for reflection.
const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/manager_descriptor.bin"));

fn read(path: &PathBuf) -> Result<Vec<u8>, ApiError> {
    std::fs::read(path).map_err(|source| ApiError::TlsFile {
        path: path.clone(),
        source,
    })
}

fn tls(cfg: &TlsConfig) -> Result<ServerTlsConfig, ApiError> {
    let mut tls =
        ServerTlsConfig::new().identity(Identity::from_pem(read(&cfg.cert)?, read(&cfg.key)?));
    if !cfg.client_ca.is_empty() {
        let mut bundle = Vec::new();
        for p in &cfg.client_ca {
            bundle.extend(read(p)?);
            bundle.push(b'\n');
        }
        tls = tls.client_ca_root(Certificate::from_pem(bundle));
    }
    Ok(tls)
}

async fn bind(host: &str, port: u16) -> Result<TcpListener, ApiError> {
    let addr = format!("{host}:{port}");
    TcpListener::bind(&addr)
        .await
        .map_err(|source| ApiError::Bind { addr, source })
}

/// Runs `cvmm manager` until `shutdown` resolves. VMs are left running at shutdown (a later
/// manager re-adopts them from the state directory).
pub async fn serve(
    config: ManagerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ApiError> {
    let grpc = bind(&config.grpc_host, config.grpc_port).await?;
    let http = bind(&config.http_host, config.http_port).await?;
    serve_on(config, grpc, http, shutdown).await
}

/// [`serve`] on listeners the caller has bound (tests bind port 0).
pub async fn serve_on(
    config: ManagerConfig,
    grpc: TcpListener,
    http: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ApiError> {
    // The signing key is checked before anything else so a bad one stops start-up at once.
    let tee = host::resolve(config.tee);
    let policy = PolicyMaker::new(&config, tee)?;
    if tee == vmm::spec::TeeMode::None && config.plain_boot == crate::config::PlainBoot::Uefi {
        for (var, path) in [
            ("MANAGER_QEMU_OVMF_CODE_FILE", &config.vm.ovmf_code_file),
            ("MANAGER_QEMU_OVMF_VARS_FILE", &config.vm.ovmf_vars_file),
        ] {
            std::fs::File::open(path).map_err(|source| ApiError::Firmware {
                var,
                path: path.clone(),
                source,
            })?;
        }
    }
    for var in &config.ignored_vars {
        tracing::info!(variable = %var, "variable has no meaning for cvmm and is ignored");
    }
    for port in config.range_overlaps() {
        tracing::warn!(port, range = ?config.vm.host_fwd_range, "a server port lies inside MANAGER_QEMU_HOST_FWD_RANGE");
    }
    let state_dir = config.state_dir.clone();
    let state_err = |source| ApiError::StateDir {
        path: state_dir.clone(),
        source,
    };
    state::ensure_dir(&state_dir).map_err(state_err)?;
    let tls = config.grpc_tls.as_ref().map(tls).transpose()?;
    tracing::info!(grpc = ?grpc.local_addr().ok(), http = ?http.local_addr().ok(), tls = tls.is_some(), "manager listening");

    let (tracer, exporter) = start_tracing(&config);

    tracing::info!(?tee, "VM launch mode");
    tracing::info!(signed = policy.signs(), "attestation policies");
    let mgr = Manager::new(config, tee);
    let adopted = mgr.adopt().map_err(state_err)?;
    tracing::info!(adopted, "re-adopted VMs from the state directory");

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status("manager", tonic_health::ServingStatus::Serving)
        .await;
    health_reporter
        .set_serving::<ManagerServiceServer<Service>>()
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(DESCRIPTORS)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ApiError::StateDir {
            path: "reflection".into(),
            source: std::io::Error::other(e),
        })?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(DESCRIPTORS)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| ApiError::StateDir {
            path: "reflection".into(),
            source: std::io::Error::other(e),
        })?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let http_task = tokio::spawn(http::serve_http(
        http,
        mgr.clone(),
        stopped(stop_rx.clone()),
    ));

    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let grpc_future = builder
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(ManagerServiceServer::new(
            Service::new(mgr.clone(), policy).with_tracer(tracer.clone()),
        ))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(grpc),
            stopped(stop_rx),
        );
    let signal = async move {
        shutdown.await;
        tracing::info!("manager shutting down");
        let _ = stop_tx.send(true);
        (SystemTime::now(), Instant::now())
    };
    let (res, stop_at) = tokio::join!(grpc_future, signal);
    let _ = http_task.await;
    mgr.forget_all();
    if let (Some(t), Some(task)) = (tracer, exporter) {
        t.record(Span {
            name: "shutdown",
            start: stop_at.0,
            duration: stop_at.1.elapsed(),
            attributes: Vec::new(),
            error: res.as_ref().err().map(|e| e.to_string()),
        });
        drop(t);
        if tokio::time::timeout(TRACE_FLUSH, task).await.is_err() {
            tracing::warn!("OTLP spans not flushed within {TRACE_FLUSH:?}");
        }
    }
    res?;
    Ok(())
}

/// How long shutdown waits for the last spans to reach the collector.
const TRACE_FLUSH: Duration = Duration::from_secs(2);

/// The OTLP tracer for `COCOS_JAEGER_URL`, unless the ratio is 0 or the URL unusable (logged).
fn start_tracing(config: &ManagerConfig) -> (Option<Tracer>, Option<JoinHandle<()>>) {
    if config.jaeger_trace_ratio <= 0.0 {
        tracing::info!("OTLP traces off (COCOS_JAEGER_TRACE_RATIO=0)");
        return (None, None);
    }
    match Tracer::start(&config.jaeger_url, config.jaeger_trace_ratio) {
        Ok((t, task)) => {
            tracing::info!(collector = %config.jaeger_url, ratio = config.jaeger_trace_ratio, "OTLP traces on");
            (Some(t), Some(task))
        }
        Err(e) => {
            tracing::warn!(error = %e, "OTLP traces off");
            (None, None)
        }
    }
}
