//! The tonic `ManagerService` implementation: maps each RPC onto the `Manager`, counts it in
//! the metrics, records its OTLP span (when tracing is on), and turns errors into statuses (UNKNOWN with the Go text, as upstream does;
//! INVALID_ARGUMENT for the request checks upstream lacked).

use crate::manager::{Manager, VmError};
use crate::otlp::{Span, Tracer};
use crate::pb::manager_service_server::ManagerService;
use crate::pb::{
    AttestationPolicyReq, AttestationPolicyRes, CreateReq, CreateRes, CvmInfoReq, CvmInfoRes,
    RemoveReq,
};
use crate::policy::PolicyMaker;
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tonic::{Request, Response, Status};

/// The gRPC service.
pub struct Service {
    mgr: Arc<Manager>,
    policy: Arc<PolicyMaker>,
    tracer: Option<Tracer>,
}

impl Service {
    /// Serves `mgr`, answering AttestationPolicy with `policy`.
    pub fn new(mgr: Arc<Manager>, policy: PolicyMaker) -> Self {
        Self {
            mgr,
            policy: Arc::new(policy),
            tracer: None,
        }
    }

    /// Also sends a span per RPC to `tracer`.
    pub fn with_tracer(mut self, tracer: Option<Tracer>) -> Self {
        self.tracer = tracer;
        self
    }

    /// Counts one finished RPC (`method` in the metrics, `span` in traces).
    fn finished<T, E: std::fmt::Display>(
        &self,
        method: &'static str,
        span: &'static str,
        at: (SystemTime, Instant),
        cvm_id: &str,
        res: &Result<T, E>,
    ) {
        let took = at.1.elapsed();
        self.mgr.metrics.request(method, took);
        if let Some(t) = &self.tracer {
            t.record(Span {
                name: span,
                start: at.0,
                duration: took,
                attributes: vec![("cvm_id", cvm_id.to_string())],
                error: res.as_ref().err().map(|e| e.to_string()),
            });
        }
    }
}

fn now() -> (SystemTime, Instant) {
    (SystemTime::now(), Instant::now())
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
        let at = now();
        let res = self.mgr.create(req.get_ref()).await;
        let id = res.as_ref().map(|(_, id)| id.as_str()).unwrap_or("");
        self.finished("Run", "run", at, id, &res);
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
        let at = now();
        let res = self.mgr.remove(&req.get_ref().cvm_id).await;
        self.finished("Stop", "stop", at, &req.get_ref().cvm_id, &res);
        res.map(Response::new).map_err(status)
    }

    async fn cvm_info(&self, req: Request<CvmInfoReq>) -> Result<Response<CvmInfoRes>, Status> {
        let at = now();
        let cfg = self.mgr.config();
        let res = CvmInfoRes {
            id: req.into_inner().id,
            ovmf_version: cfg.vm.ovmf_version.clone(),
            cpu_num: i32::try_from(cfg.vm.smp_count).unwrap_or(i32::MAX),
            cpu_type: cfg.vm.cpu.clone(),
            kernel_cmd: String::new(),
            eos_version: cfg.eos_version.clone(),
        };
        self.finished(
            "ReturnCVMInfo",
            "return_cvm_info",
            at,
            &res.id,
            &Ok::<(), String>(()),
        );
        Ok(Response::new(res))
    }

    async fn attestation_policy(
        &self,
        req: Request<AttestationPolicyReq>,
    ) -> Result<Response<AttestationPolicyRes>, Status> {
        let at = now();
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
        self.finished(
            "FetchAttestationPolicy",
            "fetch_attestation_policy",
            at,
            &id,
            &res,
        );
        Ok(Response::new(AttestationPolicyRes { info: res?, id }))
    }
}
