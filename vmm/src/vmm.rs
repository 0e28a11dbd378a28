// SPDX-License-Identifier: Apache-2.0
//! The controller: one place that holds the machine's description, builds
//! and starts the VM, and runs the main thread's loop until the VM ends.
//! The command line, a configuration file and the API all drive it.

use std::sync::Arc;
use std::time::Instant;

use ferry_devices::vm_end::{ExitReason, VmEnd};

use crate::config::{self, Launch, VmConfig};
use crate::confinement;
use crate::event_loop::{self, EventLoop, StopPolicy};
use crate::resources::VmResources;
use crate::vm::{self, Vm};

/// Errors of the controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The machine's description does not hold.
    #[error(transparent)]
    Config(#[from] config::Error),
    /// The VM could not be built.
    #[error(transparent)]
    Vm(#[from] vm::Error),
    /// The main loop could not be set up or failed.
    #[error(transparent)]
    EventLoop(#[from] event_loop::Error),
    /// The VM runs already.
    #[error("the VM has already started")]
    AlreadyStarted,
    /// ferry could not confine itself.
    #[error(transparent)]
    Confine(#[from] confinement::Error),
}

impl Error {
    /// ferry's exit status for this error.
    pub fn exit_status(&self) -> i32 {
        use crate::exit_status::{BAD_CONFIG, KVM_UNAVAILABLE, VMM_FAILURE};
        match self {
            Error::Config(_) | Error::AlreadyStarted => BAD_CONFIG,
            Error::Vm(e) if e.is_bad_input() => BAD_CONFIG,
            Error::Vm(e) if e.is_kvm_unavailable() => KVM_UNAVAILABLE,
            Error::Vm(_) | Error::EventLoop(_) | Error::Confine(_) => VMM_FAILURE,
        }
    }
}

/// Where the VM stands, as the API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Configured (or being configured), not booted.
    NotStarted,
    /// Booted.
    Running,
}

/// The controller of one VM.
#[derive(Debug)]
pub struct Vmm {
    start: Instant,
    launch: Launch,
    resources: VmResources,
    vm_end: Arc<VmEnd>,
    event_loop: EventLoop,
    vm: Option<Vm>,
}

impl Vmm {
    /// A controller for the machine `resources` describes, run with
    /// `launch`'s options; `start` is ferry's start. Blocks the stop
    /// signals in this thread: call it before starting any other thread.
    pub fn new(start: Instant, launch: Launch, resources: VmResources) -> Result<Self, Error> {
        let vm_end =
            Arc::new(VmEnd::new().map_err(|e| vm::Error::Resource("the VM end event", e))?);
        let event_loop = EventLoop::new(
            vm_end.clone(),
            StopPolicy {
                timeout: launch.timeout,
                start,
                shutdown_grace: launch.shutdown_grace,
            },
        )?;
        Ok(Self {
            start,
            launch,
            resources,
            vm_end,
            event_loop,
            vm: None,
        })
    }

    /// The machine's description.
    pub fn resources(&self) -> &VmResources {
        &self.resources
    }

    /// The description, to change before the VM starts.
    pub fn resources_mut(&mut self) -> Option<&mut VmResources> {
        (self.vm.is_none()).then_some(&mut self.resources)
    }

    /// Where the VM stands.
    pub fn state(&self) -> State {
        if self.vm.is_some() {
            State::Running
        } else {
            State::NotStarted
        }
    }

    /// Checks the description, builds the VM and starts its vCPUs.
    pub fn start_vm(&mut self) -> Result<(), Error> {
        if self.vm.is_some() {
            return Err(Error::AlreadyStarted);
        }
        let config = VmConfig::build(&self.resources, &self.launch)?;
        let mut vm = Vm::build(
            config,
            self.start,
            self.vm_end.clone(),
            &mut self.event_loop,
        )?;
        confinement::confine(&self.resources, &self.launch)?;
        vm.start(&mut self.event_loop);
        log::debug!(
            "vCPUs started {} ms after launch",
            self.start.elapsed().as_millis()
        );
        self.vm = Some(vm);
        Ok(())
    }

    /// The devices' counters, once the VM runs.
    pub fn device_metrics(&self) -> Option<serde_json::Map<String, serde_json::Value>> {
        self.vm.as_ref().map(Vm::metrics)
    }

    /// Backs drive `id` with the file at `path`: before the start, in the
    /// description; after it, live, the guest told of the new size. The
    /// drive keeps its read-only setting.
    pub fn update_drive(&mut self, id: &str, path: std::path::PathBuf) -> Result<(), Error> {
        let drive = self
            .resources
            .drives
            .iter_mut()
            .find(|d| d.id == id)
            .ok_or_else(|| vm::Error::NoSuchDrive(id.to_string()))?;
        if let Some(vm) = &self.vm {
            vm.swap_drive(id, &path)?;
        }
        drive.path = path;
        Ok(())
    }

    /// Presses Ctrl-Alt-Del in the guest; false if the VM has not started
    /// or no keyboard driver listens.
    pub fn send_ctrl_alt_del(&self) -> bool {
        self.vm.as_ref().is_some_and(Vm::send_ctrl_alt_del)
    }

    /// The main loop, for the API to join.
    pub fn event_loop(&mut self) -> &mut EventLoop {
        &mut self.event_loop
    }

    /// Runs one round of the main loop; returns why the VM ended, once it has.
    pub fn run_once(&mut self) -> Result<Option<ExitReason>, Error> {
        if let Some(reason) = self.event_loop.ended() {
            return Ok(Some(reason));
        }
        if let Err(e) = self.event_loop.run_once() {
            self.vm_end
                .request(ExitReason::Failure("the event loop failed".into()));
            return Err(e.into());
        }
        Ok(self.event_loop.ended())
    }

    /// Runs the main loop until the VM ends, then stops it.
    pub fn run(mut self) -> Result<ExitReason, Error> {
        let outcome = loop {
            match self.run_once() {
                Ok(Some(reason)) => break Ok(reason),
                Ok(None) => {}
                Err(e) => break Err(e),
            }
        };
        self.stop();
        outcome
    }

    /// Stops the VM, if one runs.
    pub fn stop(&mut self) {
        if let Some(vm) = self.vm.take() {
            vm.stop();
        }
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        self.stop();
    }
}
