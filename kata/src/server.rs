//! Running the service: the runtime directory cleaned of a previous run's
//! leftovers, the socket bound (a stale one replaced, a live one refused),
//! ttrpc served until SIGTERM or SIGINT, then every sandbox stopped and
//! the socket removed.

use std::os::fd::IntoRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::Config;
use crate::launcher::Launcher;
use crate::protocol::hypervisor_ttrpc::create_hypervisor;
use crate::service::Service;

/// Where the service listens unless told otherwise (the default of Kata's
/// `remote_hypervisor_socket`).
pub const DEFAULT_SOCKET: &str = "/run/peerpod/hypervisor.sock";
/// Where sandboxes' directories go unless told otherwise.
pub const DEFAULT_RUNTIME_DIR: &str = "/run/ferry-kata";

/// Why the service cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another service answers on the socket.
    #[error("{0} is in use by a running service")]
    SocketInUse(PathBuf),
    /// The socket or its directory cannot be made.
    #[error("cannot listen on {path}")]
    Bind {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The runtime directory cannot be made or cleaned.
    #[error("runtime directory {path}")]
    RuntimeDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The signal handling or the launcher thread cannot be set up.
    #[error("cannot set up the service: {0}")]
    Setup(#[source] std::io::Error),
    /// ttrpc failed.
    #[error("ttrpc: {0}")]
    Ttrpc(String),
}

/// Makes `dir` (mode 0700) and removes what a previous run left in it:
/// that run's sandboxes died with it (their ferry had the service as
/// parent-death signal), their directories and sockets did not. Only
/// entries that look like sandbox directories (an id for a name, nothing
/// but the sockets a sandbox makes inside) are removed; anything else is
/// left and logged.
pub fn clean_runtime_dir(dir: &Path) -> Result<(), ServerError> {
    let err = |source| ServerError::RuntimeDir {
        path: dir.to_owned(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)?;
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let path = entry.map_err(err)?.path();
        if is_sandbox_dir(&path) {
            log::warn!("removing {}, left by a previous run", path.display());
            std::fs::remove_dir_all(&path).map_err(err)?;
        } else {
            log::warn!("leaving {}: not a sandbox directory", path.display());
        }
    }
    Ok(())
}

/// Whether `path` is a directory a sandbox made: named by a valid id,
/// holding only `agent.sock` and `vsock.sock`.
fn is_sandbox_dir(path: &Path) -> bool {
    let named_by_id = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| crate::sandbox::check_id(n).is_ok());
    let Ok(entries) = std::fs::read_dir(path) else {
        return false;
    };
    named_by_id
        && entries.into_iter().all(|e| {
            e.ok()
                .and_then(|e| e.file_name().into_string().ok())
                .is_some_and(|n| crate::sandbox::is_sandbox_file(&n))
        })
}

/// Makes sure the socket path is free for this service: a socket file
/// nobody answers on (a killed service's) is removed; one a live service
/// answers on is refused.
pub fn claim_socket(path: &Path) -> Result<(), ServerError> {
    let err = |source| ServerError::Bind {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(ServerError::SocketInUse(path.to_owned()));
        }
        log::warn!("replacing the stale socket {}", path.display());
        std::fs::remove_file(path).map_err(err)?;
    }
    Ok(())
}

/// Binds the service's socket at `path` (claimed first).
pub fn bind_socket(path: &Path) -> Result<UnixListener, ServerError> {
    UnixListener::bind(path).map_err(|source| ServerError::Bind {
        path: path.to_owned(),
        source,
    })
}

/// Blocks SIGTERM and SIGINT in this thread (and so in every thread it
/// starts afterwards) and returns the set, for [`wait_for_signal`].
fn block_stop_signals() -> Result<libc::sigset_t, ServerError> {
    // SAFETY: a zeroed sigset_t is valid storage; sigemptyset/sigaddset
    // initialise it and pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(ServerError::Setup(std::io::Error::from_raw_os_error(rc)));
        }
        Ok(set)
    }
}

/// Waits for one of the blocked stop signals.
fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut signal = 0;
    // SAFETY: set is an initialised sigset_t and signal a valid out-pointer.
    unsafe { libc::sigwait(set, &mut signal) };
    signal
}

/// Raises the open-file limit as far as this process may (the kernel's
/// `nr_open` for root, else the hard limit): the sandboxes' passt inherit
/// it, and passt forwarding every port of a pod (`-t all -u all`) holds a
/// socket per port and family.
fn raise_file_limit() {
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<libc::rlim_t>().ok());
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the valid struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    let hard = limit.rlim_max.max(nr_open.unwrap_or(0));
    for max in [hard, limit.rlim_max] {
        let wanted = libc::rlimit {
            rlim_cur: max,
            rlim_max: max,
        };
        // SAFETY: setrlimit only reads the valid struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } == 0 {
            log::info!("open-file limit {max} (passt forwards each port with its own sockets)");
            return;
        }
    }
}

/// Runs the service until SIGTERM or SIGINT.
pub fn run(config: Config, socket: &Path, runtime_dir: &Path) -> Result<(), ServerError> {
    let signals = block_stop_signals()?;
    raise_file_limit();
    // Orphaned passt processes (their ferry killed) come back to this
    // process, which reaps them when it stops their sandbox.
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) } != 0 {
        return Err(ServerError::Setup(std::io::Error::last_os_error()));
    }
    // Leftovers go before the socket appears: a client that can connect
    // finds a clean service.
    claim_socket(socket)?;
    clean_runtime_dir(runtime_dir)?;
    let listener = bind_socket(socket)?;
    let guard = SocketFile(socket.to_owned());
    let launcher = Launcher::start().map_err(ServerError::Setup)?;
    let service = Arc::new(Service::new(config, runtime_dir.to_owned(), launcher));
    let mut server = ttrpc::Server::new()
        .add_listener(listener.into_raw_fd())
        .map(|s| s.register_service(create_hypervisor(service.clone())))
        .map_err(|e| ServerError::Ttrpc(e.to_string()))?;
    server
        .start()
        .map_err(|e| ServerError::Ttrpc(e.to_string()))?;
    log::info!(
        "serving hypervisor.Hypervisor {} on {} (sandboxes in {})",
        crate::service::VERSION,
        socket.display(),
        runtime_dir.display()
    );
    let signal = wait_for_signal(&signals);
    log::info!("signal {signal}: stopping every sandbox");
    service.stop_all();
    server.shutdown();
    drop(guard);
    Ok(())
}

/// Removes the service's socket file when dropped.
#[derive(Debug)]
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
