//! `manager_client`: a minimal gRPC client for `cvmm manager`, used by the nested rig
//! (`tests/rig/cases/cvmm-manager.sh`).
//!
//! `manager_client create --addr URL [--ttl D] [--certs DIR]` prints `cvm_id=<id>` and
//! `forwarded_port=<port>` on two lines; `manager_client remove --addr URL --id ID` removes a VM.
//! Errors go to stderr with exit status 1.

use anyhow::Context;
use api::pb::manager_service_client::ManagerServiceClient;
use api::pb::{CreateReq, RemoveReq};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "manager_client",
    about = "Create and remove VMs on a cvmm manager"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a VM; prints `cvm_id=` and `forwarded_port=` lines.
    Create {
        /// Manager gRPC address, e.g. http://127.0.0.1:7001.
        #[arg(long)]
        addr: String,
        /// VM time to live, Go duration syntax (e.g. 10m); none when empty.
        #[arg(long, default_value = "")]
        ttl: String,
        /// Directory with cert.pem, key.pem and ca.pem to send as the agent's TLS files.
        #[arg(long)]
        certs: Option<PathBuf>,
        /// Value of AGENT_CVM_GRPC_URL in the guest's environment file.
        #[arg(long, default_value = "10.0.2.2:7001")]
        server_url: String,
    },
    /// Remove a VM by id.
    Remove {
        /// Manager gRPC address, e.g. http://127.0.0.1:7001.
        #[arg(long)]
        addr: String,
        /// The `cvm_id` returned by create.
        #[arg(long)]
        id: String,
    },
}

/// Reads `dir/name`, naming the file on failure.
fn read_cert(dir: &Path, name: &str) -> anyhow::Result<Vec<u8>> {
    let path = dir.join(name);
    std::fs::read(&path).with_context(|| format!("cannot read '{}'", path.display()))
}

async fn connect(addr: &str) -> anyhow::Result<ManagerServiceClient<tonic::transport::Channel>> {
    ManagerServiceClient::connect(addr.to_string())
        .await
        .with_context(|| format!("cannot connect to manager at '{addr}'"))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Create {
            addr,
            ttl,
            certs,
            server_url,
        } => {
            let mut req = CreateReq {
                agent_log_level: "info".into(),
                agent_cvm_server_url: server_url,
                ttl,
                ..Default::default()
            };
            if let Some(dir) = certs {
                req.agent_cvm_client_cert = read_cert(&dir, "cert.pem")?;
                req.agent_cvm_client_key = read_cert(&dir, "key.pem")?;
                req.agent_cvm_server_ca_cert = read_cert(&dir, "ca.pem")?;
            }
            let res = connect(&addr)
                .await?
                .create_vm(req)
                .await
                .context("CreateVm failed")?
                .into_inner();
            println!("cvm_id={}", res.cvm_id);
            println!("forwarded_port={}", res.forwarded_port);
        }
        Cmd::Remove { addr, id } => {
            connect(&addr)
                .await?
                .remove_vm(RemoveReq { cvm_id: id.clone() })
                .await
                .with_context(|| format!("RemoveVm of '{id}' failed"))?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("manager_client: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("manager_client: {e:#}");
            ExitCode::FAILURE
        }
    }
}
