//! Starts each sandbox's ferry from one long-lived thread, so that the
//! kernel's parent-death signal (which fires when the *thread* that forked
//! a child ends) kills ferry only when the service itself dies, never when
//! a ttrpc worker thread retires. The child gets its own process group
//! (passt joins it, so a stop can reach both) and, where the sandbox has
//! one, enters the pod's network namespace before ferry runs: ferry, and
//! the passt it starts, live there.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread;

/// A request to the launcher thread.
struct Launch {
    command: Command,
    netns: Option<File>,
    reply: mpsc::Sender<std::io::Result<Child>>,
}

/// The launcher thread's handle.
#[derive(Debug)]
pub struct Launcher {
    requests: Mutex<mpsc::Sender<Launch>>,
}

impl Launcher {
    /// Starts the launcher thread (it lives as long as the process).
    pub fn start() -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Launch>();
        thread::Builder::new()
            .name("launcher".into())
            .spawn(move || {
                for launch in rx {
                    let result = spawn(launch.command, launch.netns);
                    // The asker may have given up; then the child is
                    // dropped, not waited for: it is killed below.
                    if let Err(mpsc::SendError(Ok(mut child))) = launch.reply.send(result) {
                        let _ = child.kill();
                        let _ = child.wait();
                    }
                }
            })?;
        Ok(Launcher {
            requests: Mutex::new(tx),
        })
    }

    /// Starts `command` in its own process group, in the network namespace
    /// `netns` (an open namespace file) if given; the child is killed if
    /// the service dies.
    pub fn spawn(&self, command: Command, netns: Option<File>) -> std::io::Result<Child> {
        let (reply, answer) = mpsc::channel();
        let gone = || std::io::Error::other("the launcher thread is gone");
        self.requests
            .lock()
            .map_err(|_| gone())?
            .send(Launch {
                command,
                netns,
                reply,
            })
            .map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    }
}

/// Forks and execs `command` with the child's set-up (runs on the
/// launcher thread).
fn spawn(mut command: Command, netns: Option<File>) -> std::io::Result<Child> {
    let netns: Option<OwnedFd> = netns.map(OwnedFd::from);
    let netns_fd = netns.as_ref().map(AsRawFd::as_raw_fd);
    // SAFETY: getpid has no preconditions.
    let service = unsafe { libc::getpid() };
    // SAFETY: the closure runs in the forked child before exec and calls
    // only async-signal-safe functions (setpgid, prctl, getppid, setns) on
    // values copied in before the fork; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The service may have died between fork and prctl.
            if libc::getppid() != service {
                return Err(std::io::Error::other("the service is gone"));
            }
            if let Some(fd) = netns_fd {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = command.spawn();
    drop(netns);
    child
}
