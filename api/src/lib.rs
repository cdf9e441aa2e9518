//! The control plane of cvmm: the Cocos `ManagerService` gRPC API (tonic), its configuration
//! from `MANAGER_*` variables, the VM registry, the host-port allocator, the supervisor of VM
//! processes, the AttestationPolicy CoRIM, `/health` and `/metrics`.
//!
//! `cvmm manager` calls [`ManagerConfig::from_env`] and then [`serve`].

pub mod boot_watch;
pub mod config;
pub mod corim;
pub mod duration;
pub mod host;
pub mod http;
pub mod manager;
pub mod metrics;
pub mod otlp;
pub mod policy;
pub mod process;
pub mod request;
pub mod server;
pub mod service;
pub mod state;

/// Types and client/server stubs generated from `proto/manager.proto`.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("manager");
}

pub use config::{ConfigError, ManagerConfig};
pub use server::{serve, serve_on, ApiError};
