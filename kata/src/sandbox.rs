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
    /// ferry's children (passt), noted once the VM runs: if ferry dies
    /// first, they are this process's to reap.
    children: Vec<libc::pid_t>,
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
            children: Vec::new(),
            console,
            _agent_log: agent_log,
        });
        let started = Instant::now();
        match self.wait_for_agent(config.agent_port, deadline) {
            Ok(()) => {
                if let State::Running(running) = &mut self.state {
                    running.children = children_of(running.ferry.id() as libc::pid_t);
                }
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
            if agent_answers(&vsock, port, deadline) {
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
        if let State::Running(running) = std::mem::replace(&mut self.state, State::Stopped) {
            stop_processes(&self.id, running.ferry, grace, &running.children);
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
/// the hybrid socket `vsock`, asked so as to be answered by `deadline`.
fn agent_answers(vsock: &Path, port: u32, deadline: Instant) -> bool {
    let patience = deadline
        .saturating_duration_since(Instant::now())
        .clamp(Duration::from_millis(10), Duration::from_secs(2));
    connect_port(vsock, port, patience).is_some()
}

/// Stops sandbox `id`'s processes: SIGTERM to `ferry` (it presses
/// Ctrl-Alt-Del and gives the guest its own grace), up to `grace` for it to
/// end, then SIGKILL to it and to its children (those it has now and
/// `known_children`: passt, in a process group of its own and no longer
/// under a parent-death signal once it dropped privileges). Every process
/// has been told to die when this returns; they are reaped here for a
/// moment, then by a thread of their own (a passt holding a socket for
/// every port takes a while to close them), so that StopVM stays within
/// runtime-rs's 1 s.
fn stop_processes(id: &str, mut ferry: Child, grace: Duration, known_children: &[libc::pid_t]) {
    let pid = ferry.id() as libc::pid_t;
    // ferry's children and theirs (passt is a child of ferry's spawner).
    let mut children = descendants_of(pid);
    for &child in known_children {
        if !children.contains(&child) {
            children.push(child);
        }
    }
    let signal = |pid: libc::pid_t, sig| {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, sig) }
    };
    let mut ended = false;
    if !grace.is_zero() {
        signal(pid, libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while !ended && Instant::now() < deadline {
            ended = matches!(ferry.try_wait(), Ok(Some(_)));
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    if !ended {
        signal(-pid, libc::SIGKILL);
    }
    // Only processes that are still ferry's family's or already this
    // process's: a pid reused by someone else is left alone.
    let mut family = children.clone();
    family.push(pid);
    children.retain(
        |&child| matches!(parent_of(child), Some(p) if family.contains(&p) || p == own_pid()),
    );
    for &child in &children {
        signal(child, libc::SIGKILL);
    }
    let stopped = Instant::now();
    let mut reap_all = move |deadline: Instant| -> bool {
        let ferry_done = loop {
            match ferry.try_wait() {
                Ok(Some(_)) | Err(_) => break true,
                Ok(None) if Instant::now() >= deadline => break false,
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        children.retain(|&child| !reap(child, &family, deadline));
        ferry_done && children.is_empty()
    };
    if reap_all(stopped + REAP_WAIT) {
        log::info!("sandbox {id}: ferry {pid} and its children ended");
        return;
    }
    let id = id.to_string();
    let spawned = std::thread::Builder::new()
        .name("reaper".into())
        .spawn(move || {
            while !reap_all(Instant::now() + Duration::from_secs(60)) {}
            log::info!(
                "sandbox {id}: ferry {pid} and its children ended {:.1} s after the stop",
                stopped.elapsed().as_secs_f64()
            );
        });
    if let Err(e) = spawned {
        log::warn!("sandbox: cannot start a reaper for ferry {pid}: {e}");
    }
}

/// How long StopVM itself waits for the killed processes to be reaped.
const REAP_WAIT: Duration = Duration::from_millis(100);

/// This process's pid.
fn own_pid() -> libc::pid_t {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

/// The descendants of process `pid`: its children, theirs, and so on.
fn descendants_of(pid: libc::pid_t) -> Vec<libc::pid_t> {
    let mut found: Vec<libc::pid_t> = Vec::new();
    let mut to_visit = vec![pid];
    while let Some(parent) = to_visit.pop() {
        for child in children_of(parent) {
            if !found.contains(&child) {
                found.push(child);
                to_visit.push(child);
            }
        }
    }
    found
}

/// The children of process `pid` (every thread's).
fn children_of(pid: libc::pid_t) -> Vec<libc::pid_t> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<libc::pid_t>>()
        })
        .collect()
}

/// Process `pid`'s parent, if `pid` exists.
fn parent_of(pid: libc::pid_t) -> Option<libc::pid_t> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|p| p.trim().parse().ok())
}

/// Kills and reaps `pid`, a descendant of ferry (`family`: ferry and its
/// descendants), once it is this process's child (its parent gone, the
/// service a subreaper): true once it is gone or belongs to someone else,
/// false if it is still there at `deadline`.
fn reap(pid: libc::pid_t, family: &[libc::pid_t], deadline: Instant) -> bool {
    loop {
        match parent_of(pid) {
            None => return true,
            Some(parent) if parent == own_pid() => {
                // SAFETY: kill and waitpid have no memory-safety
                // preconditions; waitpid accepts a null status pointer.
                let reaped = unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG)
                };
                if reaped == pid {
                    return true;
                }
            }
            // Still ferry's or its spawner's: on their way out.
            Some(parent) if family.contains(&parent) => {}
            Some(_) => return true,
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
