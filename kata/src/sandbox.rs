//! One sandbox: its runtime directory, its plan, and the ferry process that
//! runs its VM, from CreateVM (prepared, nothing running) through StartVM
//! (booted, the agent answering) to StopVM (nothing left).
//!
//! The runtime directory `<runtime dir>/<id>/` holds ferry's hybrid vsock
//! socket (`vsock.sock`), the agent socket CreateVM hands out
//! (`agent.sock`, every connection joined to the guest's agent port).

use std::fs::File;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::launcher::Launcher;
use crate::output::{connect_port, pump_lines, AgentLog, ConsoleTail};
use crate::plan::VmPlan;

/// The longest a sandbox id may be (Kata's are 64 hex digits).
pub const MAX_ID_LEN: usize = 64;

/// How often StartVM knocks on the agent's port.
const AGENT_POLL: Duration = Duration::from_millis(100);

/// A sandbox's failures, each with what the runtime needs to know.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The id cannot name a directory.
    #[error("sandbox id {0:?}: 1 to 64 characters of A-Z, a-z, 0-9, '-', '_' and '.', not starting with '.'")]
    BadId(String),
    /// The runtime directory cannot be made.
    #[error("cannot make the sandbox directory {path}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// ferry cannot be run or does not answer as ferry.
    #[error("cannot run ferry ({path}): {why}")]
    Ferry {
        /// The binary.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The network namespace cannot be opened or entered.
    #[error("cannot start ferry in network namespace {path}: {source}")]
    Netns {
        /// The namespace.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The agent log's follower cannot be started.
    #[error("cannot follow the agent's log on vsock port {port}")]
    AgentLog {
        /// The port.
        port: u32,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// ferry ended before the agent answered.
    #[error("the VM ended before the agent answered on vsock port {port} (ferry {status}); the console's last lines:\n{console}")]
    EndedEarly {
        /// The agent's port.
        port: u32,
        /// How ferry ended.
        status: ExitStatus,
        /// The console's tail.
        console: String,
    },
    /// The agent did not answer in time; the VM was stopped.
    #[error("the agent did not answer on vsock port {port} within {secs:.1} s; the VM was stopped; the console's last lines:\n{console}")]
    AgentTimeout {
        /// The agent's port.
        port: u32,
        /// How long StartVM waited.
        secs: f64,
        /// The console's tail.
        console: String,
    },
    /// The request does not fit the sandbox's state.
    #[error("sandbox {id} is {state}: {request} is not possible now")]
    State {
        /// The sandbox.
        id: String,
        /// Its state.
        state: &'static str,
        /// The request.
        request: &'static str,
    },
}

/// Checks that `id` can name a directory.
pub fn check_id(id: &str) -> Result<(), SandboxError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(SandboxError::BadId(id.to_string()))
    }
}

/// Whether `name` is one of the files a sandbox's directory holds.
pub fn is_sandbox_file(name: &str) -> bool {
    name == AGENT_SOCKET || name == VSOCK_SOCKET
}

/// The agent socket's name in a sandbox's directory.
const AGENT_SOCKET: &str = "agent.sock";
/// ferry's hybrid vsock socket's name in a sandbox's directory.
const VSOCK_SOCKET: &str = "vsock.sock";

/// Asks `ferry` for its kernel command line with `--virtio transport`:
/// proves the binary runs, and gives the line the sandbox's parameters
/// are appended to.
pub fn ferry_cmdline(ferry: &Path, transport: &str) -> Result<String, SandboxError> {
    let bad = |why: String| SandboxError::Ferry {
        path: ferry.to_owned(),
        why,
    };
    let out = Command::new(ferry)
        .args(["--print-cmdline", "--virtio", transport])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| bad(e.to_string()))?;
    if !out.status.success() {
        return Err(bad(format!(
            "--print-cmdline: {} ({})",
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A running VM.
#[derive(Debug)]
struct Running {
    ferry: Child,
    console: Arc<ConsoleTail>,
    _agent_log: Option<AgentLog>,
}

/// Where a sandbox is in its life.
#[derive(Debug)]
enum State {
    Created,
    Running(Running),
    Stopped,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Created => "created",
            State::Running(_) => "running",
            State::Stopped => "stopped",
        }
    }
}

/// One sandbox.
#[derive(Debug)]
pub struct Sandbox {
    id: String,
    dir: PathBuf,
    plan: VmPlan,
    ferry_cmdline: String,
    state: State,
}

impl Sandbox {
    /// Prepares sandbox `id` under `runtime_dir`: its directory made,
    /// nothing running. `plan` is resolved and its files checked.
    pub fn create(
        config: &Config,
        runtime_dir: &Path,
        id: &str,
        plan: VmPlan,
    ) -> Result<Self, SandboxError> {
        check_id(id)?;
        let ferry_cmdline = ferry_cmdline(&config.ferry, plan.transport.as_ferry_arg())?;
        let dir = runtime_dir.join(id);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|source| SandboxError::Directory {
                path: dir.clone(),
                source,
            })?;
        Ok(Sandbox {
            id: id.to_string(),
            dir,
            plan,
            ferry_cmdline,
            state: State::Created,
        })
    }

    /// The socket CreateVM hands to the runtime: every connection reaches
    /// the agent.
    pub fn agent_socket(&self) -> PathBuf {
        self.dir.join(AGENT_SOCKET)
    }

    fn vsock_socket(&self) -> PathBuf {
        self.dir.join(VSOCK_SOCKET)
    }

    /// The plan this sandbox runs.
    pub fn plan(&self) -> &VmPlan {
        &self.plan
    }

    /// Boots the VM and waits until the agent accepts a connection on its
    /// port, at most until `deadline`. On failure the VM is stopped again.
    pub fn start(
        &mut self,
        config: &Config,
        launcher: &Launcher,
        deadline: Instant,
    ) -> Result<(), SandboxError> {
        if !matches!(self.state, State::Created) {
            return Err(self.state_error("StartVM"));
        }
        let netns = match &self.plan.netns {
            Some(path) => Some(File::open(path).map_err(|source| SandboxError::Netns {
                path: path.clone(),
                source,
            })?),
            None => None,
        };
        let mut command = Command::new(&config.ferry);
        command
            .args(self.plan.ferry_args(
                config,
                &self.id,
                &self.ferry_cmdline,
                &self.vsock_socket(),
                &self.agent_socket(),
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut ferry =
            launcher
                .spawn(command, netns)
                .map_err(|source| match &self.plan.netns {
                    Some(path) if source.kind() != std::io::ErrorKind::NotFound => {
                        SandboxError::Netns {
                            path: path.clone(),
                            source,
                        }
                    }
                    _ => SandboxError::Ferry {
                        path: config.ferry.clone(),
                        why: source.to_string(),
                    },
                })?;
        log::info!(
            "sandbox {}{}: ferry {} started ({} vCPUs, {} MiB{})",
            self.id,
            if self.plan.pod.is_empty() {
                String::new()
            } else {
                format!(" (pod {})", self.plan.pod)
            },
            ferry.id(),
            self.plan.vcpus,
            self.plan.memory_mib,
            match &self.plan.netns {
                Some(ns) => format!(", network namespace {}", ns.display()),
                None => String::new(),
            }
        );
        let agent_log = if config.agent_log_port != 0 {
            Some(
                AgentLog::follow(&self.id, &self.vsock_socket(), config.agent_log_port).map_err(
                    |source| SandboxError::AgentLog {
                        port: config.agent_log_port,
                        source,
                    },
                )?,
            )
        } else {
            None
        };
        let console = Arc::new(ConsoleTail::default());
        if let Some(stdout) = ferry.stdout.take() {
            pump_lines(&self.id, "console", stdout, Some(console.clone()));
        }
        if let Some(stderr) = ferry.stderr.take() {
            pump_lines(&self.id, "ferry", stderr, None);
        }
        self.state = State::Running(Running {
            ferry,
            console,
            _agent_log: agent_log,
        });
        let started = Instant::now();
        match self.wait_for_agent(config.agent_port, deadline) {
            Ok(()) => {
                log::info!(
                    "sandbox {}: the agent answers ({:.2} s after ferry started)",
                    self.id,
                    started.elapsed().as_secs_f64()
                );
                Ok(())
            }
            Err(e) => {
                log::warn!("sandbox {}: StartVM failed: {e}", self.id);
                self.stop(Duration::ZERO);
                Err(e)
            }
        }
    }

    /// Knocks on the agent's port through the hybrid socket (`CONNECT`,
    /// `OK`) until it answers, ferry ends or `deadline` passes.
    fn wait_for_agent(&mut self, port: u32, deadline: Instant) -> Result<(), SandboxError> {
        let started = Instant::now();
        let vsock = self.vsock_socket();
        loop {
            let State::Running(running) = &mut self.state else {
                return Err(self.state_error("StartVM"));
            };
            if let Ok(Some(status)) = running.ferry.try_wait() {
                // Let the console's last lines arrive.
                std::thread::sleep(Duration::from_millis(100));
                return Err(SandboxError::EndedEarly {
                    port,
                    status,
                    console: running.console.text(),
                });
            }
            if agent_answers(&vsock, port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(SandboxError::AgentTimeout {
                    port,
                    secs: started.elapsed().as_secs_f64(),
                    console: running.console.text(),
                });
            }
            std::thread::sleep(AGENT_POLL.min(deadline.saturating_duration_since(Instant::now())));
        }
    }

    /// Stops the VM: ferry gets SIGTERM (it presses Ctrl-Alt-Del and gives
    /// the guest its shutdown grace), then, after `grace` and a moment more,
    /// its whole process group (ferry and passt) gets SIGKILL. Then the
    /// directory goes. Whatever state the sandbox is in, afterwards nothing
    /// of it is left.
    pub fn stop(&mut self, grace: Duration) {
        if let State::Running(mut running) = std::mem::replace(&mut self.state, State::Stopped) {
            let pid = running.ferry.id() as libc::pid_t;
            let status = stop_process_group(&mut running.ferry, pid, grace);
            log::info!("sandbox {}: ferry {pid} ended ({status})", self.id);
        }
        self.state = State::Stopped;
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log::warn!(
                "sandbox {}: cannot remove {}: {e}",
                self.id,
                self.dir.display()
            ),
        }
    }

    fn state_error(&self, request: &'static str) -> SandboxError {
        SandboxError::State {
            id: self.id.clone(),
            state: self.state.name(),
            request,
        }
    }

    /// Whether StartVM may be asked.
    pub fn is_created(&self) -> bool {
        matches!(self.state, State::Created)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop(Duration::ZERO);
    }
}

/// Whether the agent accepts a connection on `port` of the guest behind
/// the hybrid socket `vsock`.
fn agent_answers(vsock: &Path, port: u32) -> bool {
    connect_port(vsock, port).is_some()
}

/// SIGTERM to `ferry`, up to `grace` + 0.2 s for it to end, then SIGKILL to
/// its process group; waits for ferry and reaps what else of the group
/// ends up as this process's child (passt, with the service a subreaper).
fn stop_process_group(ferry: &mut Child, pgid: libc::pid_t, grace: Duration) -> String {
    let signal = |pid: libc::pid_t, sig| {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, sig) }
    };
    let mut status = None;
    if !grace.is_zero() {
        signal(pgid, libc::SIGTERM);
        let deadline = Instant::now() + grace + Duration::from_millis(200);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = ferry.try_wait() {
                status = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    signal(-pgid, libc::SIGKILL);
    let status = match status {
        Some(s) => Ok(s),
        None => ferry.wait(),
    };
    // The rest of the group (passt, this process's child once ferry is
    // gone): reaped here for a moment, then by a thread of its own (a passt
    // that holds a socket for every port takes a while to close them).
    let started = Instant::now();
    if !reap_group(pgid, started + GROUP_REAP_WAIT) {
        let spawned = std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || {
                while !reap_group(pgid, Instant::now() + Duration::from_secs(60)) {}
                log::info!(
                    "process group {pgid}: its last process ended {:.1} s after the stop",
                    started.elapsed().as_secs_f64()
                );
            });
        if let Err(e) = spawned {
            log::warn!("process group {pgid}: cannot start a reaper: {e}");
        }
    }
    match status {
        Ok(s) => s.to_string(),
        Err(e) => format!("cannot wait for it: {e}"),
    }
}

/// How long StopVM itself waits for the rest of a sandbox's process group.
const GROUP_REAP_WAIT: Duration = Duration::from_millis(300);

/// Kills and reaps what is left of process group `pgid` until none of it
/// is left (true) or `deadline` passes (false).
fn reap_group(pgid: libc::pid_t, deadline: Instant) -> bool {
    loop {
        // SAFETY: kill and waitpid have no memory-safety preconditions;
        // waitpid gets a null status pointer, which it accepts.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
            while libc::waitpid(-pgid, std::ptr::null_mut(), libc::WNOHANG) > 0 {}
            // No member left, not even a zombie.
            if libc::kill(-pgid, 0) != 0 {
                return true;
            }
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_name_a_directory() {
        for ok in ["a", "abc-123_x.y", &"f".repeat(64)] {
            assert!(check_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", &"f".repeat(65), "é"] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }
}
