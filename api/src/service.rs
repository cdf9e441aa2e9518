//! The tonic `ManagerService` implementation: maps each RPC onto the `Manager`, counts it in
//! the metrics, and turns errors into statuses (UNKNOWN with the Go text, as upstream does;
//! INVALID_ARGUMENT for the request checks upstream lacked).

use crate::manager::{Manager, VmError};
use crate::pb::manager_service_server::ManagerService;
use crate::pb::{
    AttestationPolicyReq, AttestationPolicyRes, CreateReq, CreateRes, CvmInfoReq, CvmInfoRes,
    RemoveReq,
};
use crate::policy::PolicyMaker;
use std::sync::Arc;
use std::time::Instant;
use tonic::{Request, Response, Status};

/// The gRPC service.
pub struct Service {
    mgr: Arc<Manager>,
    policy: Arc<PolicyMaker>,
}

impl Service {
    /// Serves `mgr`, answering AttestationPolicy with `policy`.
    pub fn new(mgr: Arc<Manager>, policy: PolicyMaker) -> Self {
        Self {
            mgr,
            policy: Arc::new(policy),
        }
    }
}

fn status(e: VmError) -> Status {
    match e {
        VmError::Invalid(_) => Status::invalid_argument(e.to_string()),
        _ => Status::unknown(e.to_string()),
    }
}

#[tonic::async_trait]
impl ManagerService for Service {
    async fn create_vm(&self, req: Request<CreateReq>) -> Result<Response<CreateRes>, Status> {
        let start = Instant::now();
        let res = self.mgr.create(req.get_ref()).await;
        self.mgr.metrics.request("Run", start.elapsed());
        match res {
            Ok((port, id)) => Ok(Response::new(CreateRes {
                forwarded_port: port.to_string(),
                cvm_id: id,
            })),
            Err(e) => {
                tracing::warn!(error = %e, "CreateVm failed");
                Err(status(e))
            }
        }
    }

    async fn remove_vm(&self, req: Request<RemoveReq>) -> Result<Response<()>, Status> {
        let start = Instant::now();
        let res = self.mgr.remove(&req.get_ref().cvm_id).await;
        self.mgr.metrics.request("Stop", start.elapsed());
        res.map(Response::new).map_err(status)
    }

    async fn cvm_info(&self, req: Request<CvmInfoReq>) -> Result<Response<CvmInfoRes>, Status> {
        let start = Instant::now();
        let cfg = self.mgr.config();
        let res = CvmInfoRes {
            id: req.into_inner().id,
            ovmf_version: cfg.vm.ovmf_version.clone(),
            cpu_num: i32::try_from(cfg.vm.smp_count).unwrap_or(i32::MAX),
            cpu_type: cfg.vm.cpu.clone(),
            kernel_cmd: String::new(),
            eos_version: cfg.eos_version.clone(),
        };
        self.mgr.metrics.request("ReturnCVMInfo", start.elapsed());
        Ok(Response::new(res))
    }

    async fn attestation_policy(
        &self,
        req: Request<AttestationPolicyReq>,
    ) -> Result<Response<AttestationPolicyRes>, Status> {
        let start = Instant::now();
        let id = req.into_inner().id;
        let res = match self.mgr.check_known(&id) {
            Err(e) => Err(status(e)),
            Ok(()) => {
                let policy = Arc::clone(&self.policy);
                tokio::task::spawn_blocking(move || policy.generate())
                    .await
                    .unwrap_or_else(|e| {
                        Err(crate::policy::PolicyError::Measure(format!(
                            "measurement task failed: {e}"
                        )))
                    })
                    .map_err(|e| {
                        tracing::warn!(cvm_id = %id, error = %e, "AttestationPolicy failed");
                        Status::unknown(e.to_string())
                    })
            }
        };
        self.mgr
            .metrics
            .request("FetchAttestationPolicy", start.elapsed());
        Ok(Response::new(AttestationPolicyRes { info: res?, id }))
    }
}
