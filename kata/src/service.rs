//! The ttrpc service `hypervisor.Hypervisor`: CreateVM, StartVM, StopVM and
//! Version over the sandboxes this process runs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ttrpc::{Code, TtrpcContext};

use crate::config::Config;
use crate::launcher::Launcher;
use crate::plan::VmPlan;
use crate::protocol::hypervisor::{
    CreateVMRequest, CreateVMResponse, StartVMRequest, StartVMResponse, StopVMRequest,
    StopVMResponse, VersionRequest, VersionResponse,
};
use crate::protocol::hypervisor_ttrpc::Hypervisor;
use crate::sandbox::{Sandbox, SandboxError};

/// The version Version answers with.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The service: its configuration, where sandboxes live, and the sandboxes.
#[derive(Debug)]
pub struct Service {
    config: Config,
    runtime_dir: PathBuf,
    launcher: Launcher,
    sandboxes: Mutex<HashMap<String, Arc<Mutex<Sandbox>>>>,
}

/// A ttrpc error with `code` and `message`.
fn status(code: Code, message: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message.into()))
}

/// The status code the runtime gets for a sandbox failure.
fn code_of(e: &SandboxError) -> Code {
    match e {
        SandboxError::BadId(_) => Code::INVALID_ARGUMENT,
        SandboxError::State { .. } => Code::FAILED_PRECONDITION,
        SandboxError::AgentTimeout { .. } => Code::DEADLINE_EXCEEDED,
        _ => Code::INTERNAL,
    }
}

impl Service {
    /// A service with no sandbox yet.
    pub fn new(config: Config, runtime_dir: PathBuf, launcher: Launcher) -> Self {
        Service {
            config,
            runtime_dir,
            launcher,
            sandboxes: Mutex::new(HashMap::new()),
        }
    }

    fn sandbox(&self, id: &str) -> ttrpc::Result<Arc<Mutex<Sandbox>>> {
        self.sandboxes
            .lock()
            .map_err(|_| status(Code::INTERNAL, "the sandbox table is poisoned"))?
            .get(id)
            .cloned()
            .ok_or_else(|| status(Code::NOT_FOUND, format!("no sandbox {id:?}")))
    }

    /// CreateVM: checks the request and the files, makes the sandbox's
    /// directory, boots nothing.
    pub fn create(&self, req: &CreateVMRequest) -> ttrpc::Result<CreateVMResponse> {
        let id = req.id.as_str();
        crate::sandbox::check_id(id).map_err(|e| status(Code::INVALID_ARGUMENT, e.to_string()))?;
        let plan = VmPlan::resolve(&self.config, &req.annotations, &req.networkNamespacePath)
            .map_err(|e| status(Code::INVALID_ARGUMENT, format!("sandbox {id}: {e}")))?;
        let mut sandboxes = self
            .sandboxes
            .lock()
            .map_err(|_| status(Code::INTERNAL, "the sandbox table is poisoned"))?;
        if sandboxes.contains_key(id) {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("sandbox {id} already exists"),
            ));
        }
        if sandboxes.len() >= self.config.max_sandboxes {
            return Err(status(
                Code::RESOURCE_EXHAUSTED,
                format!(
                    "sandbox {id}: the service runs its limit of {} sandboxes (max_sandboxes)",
                    self.config.max_sandboxes
                ),
            ));
        }
        let sandbox = Sandbox::create(&self.config, &self.runtime_dir, id, plan)
            .map_err(|e| status(code_of(&e), format!("sandbox {id}: {e}")))?;
        let agent_socket = sandbox.agent_socket();
        log::info!(
            "sandbox {id}: created ({} vCPUs, {} MiB{}), agent socket {}",
            sandbox.plan().vcpus,
            sandbox.plan().memory_mib,
            if sandbox.plan().pod.is_empty() {
                String::new()
            } else {
                format!(", pod {}", sandbox.plan().pod)
            },
            agent_socket.display()
        );
        sandboxes.insert(id.to_string(), Arc::new(Mutex::new(sandbox)));
        Ok(CreateVMResponse {
            agentSocketPath: agent_socket.display().to_string(),
            ..Default::default()
        })
    }

    /// StartVM: boots the sandbox's VM and returns once its agent answers,
    /// within the runtime's deadline (`timeout`, if it sent one) and the
    /// configuration's `start_timeout`.
    pub fn start(
        &self,
        req: &StartVMRequest,
        timeout: Option<Duration>,
    ) -> ttrpc::Result<StartVMResponse> {
        let id = req.id.as_str();
        let sandbox = self.sandbox(id)?;
        let mut sandbox = sandbox
            .lock()
            .map_err(|_| status(Code::INTERNAL, format!("sandbox {id} is poisoned")))?;
        let mut wait = Duration::from_secs_f64(self.config.start_timeout);
        if let Some(timeout) = timeout {
            // Leave time to stop the VM and for the runtime to read why.
            wait = wait.min(timeout.saturating_sub(Duration::from_secs(1)));
        }
        sandbox
            .start(&self.config, &self.launcher, Instant::now() + wait)
            .map_err(|e| status(code_of(&e), format!("sandbox {id}: {e}")))?;
        Ok(StartVMResponse::default())
    }

    /// StopVM: stops the VM (if it runs) and removes the sandbox; nothing
    /// of it is left afterwards. A sandbox created and never started is
    /// removed too.
    pub fn stop(&self, req: &StopVMRequest) -> ttrpc::Result<StopVMResponse> {
        let id = req.id.as_str();
        let sandbox = self.sandbox(id)?;
        let grace = Duration::from_secs_f64(self.config.shutdown_grace);
        match sandbox.lock() {
            Ok(mut sandbox) => sandbox.stop(grace),
            Err(poisoned) => poisoned.into_inner().stop(Duration::ZERO),
        }
        if let Ok(mut sandboxes) = self.sandboxes.lock() {
            sandboxes.remove(id);
        }
        log::info!("sandbox {id}: stopped and removed");
        Ok(StopVMResponse::default())
    }

    /// Stops every sandbox (the service is ending).
    pub fn stop_all(&self) {
        let all: Vec<String> = match self.sandboxes.lock() {
            Ok(sandboxes) => sandboxes.keys().cloned().collect(),
            Err(_) => return,
        };
        for id in all {
            let _ = self.stop(&StopVMRequest {
                id,
                ..Default::default()
            });
        }
    }
}

/// The runtime's deadline for this request, if it sent one.
fn deadline_of(ctx: &TtrpcContext) -> Option<Duration> {
    u64::try_from(ctx.timeout_nano)
        .ok()
        .filter(|&n| n > 0)
        .map(Duration::from_nanos)
}

/// Logs a request's outcome.
fn logged<T>(what: &str, id: &str, result: ttrpc::Result<T>) -> ttrpc::Result<T> {
    if let Err(ttrpc::Error::RpcStatus(s)) = &result {
        log::warn!("{what} {id}: {:?}: {}", s.code(), s.message());
    }
    result
}

impl Hypervisor for Service {
    fn create_vm(
        &self,
        _ctx: &TtrpcContext,
        req: CreateVMRequest,
    ) -> ttrpc::Result<CreateVMResponse> {
        log::info!(
            "CreateVM {} (network namespace {:?}, {} annotations)",
            req.id,
            req.networkNamespacePath,
            req.annotations.len()
        );
        logged("CreateVM", &req.id, self.create(&req))
    }

    fn start_vm(&self, ctx: &TtrpcContext, req: StartVMRequest) -> ttrpc::Result<StartVMResponse> {
        let timeout = deadline_of(ctx);
        log::info!("StartVM {} (runtime's timeout {:?})", req.id, timeout);
        logged("StartVM", &req.id, self.start(&req, timeout))
    }

    fn stop_vm(&self, _ctx: &TtrpcContext, req: StopVMRequest) -> ttrpc::Result<StopVMResponse> {
        log::info!("StopVM {}", req.id);
        logged("StopVM", &req.id, self.stop(&req))
    }

    fn version(&self, _ctx: &TtrpcContext, req: VersionRequest) -> ttrpc::Result<VersionResponse> {
        log::info!("Version (the runtime says {:?})", req.version);
        Ok(VersionResponse {
            version: VERSION.to_string(),
            ..Default::default()
        })
    }
}
