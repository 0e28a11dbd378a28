// SPDX-License-Identifier: Apache-2.0
//! Starting and stopping passt: a `socketpair`, one end inherited by
//! `passt -f -F FD` (foreground, one-off: it exits when ferry's end
//! closes), passt's messages forwarded to ferry's log, the guest held back
//! until passt is ready (it writes its `--pid` file once its sockets are
//! open and it is about to serve), and no passt left behind when ferry
//! exits or dies.

use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ferry_confine::seccomp::ThreadKind;

use crate::THREAD_STACK;

/// Errors while starting passt.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The passt binary is not there.
    #[error("passt not found ({0}): install it (apt-get install passt)")]
    NotFound(String),
    /// The socket pair could not be created.
    #[error("cannot create the socket pair for passt")]
    SocketPair(#[source] std::io::Error),
    /// The process could not be started.
    #[error("cannot start {0}")]
    Spawn(String, #[source] std::io::Error),
    /// passt exited right after it started.
    #[error("passt exited at start ({0}); its messages are above")]
    EarlyExit(ExitStatus),
    /// The passt spawner could not be reached.
    #[error("cannot reach the passt spawner")]
    Spawner(#[source] std::io::Error),
    /// The passt spawner refused a configuration ferry had not used before
    /// it confined itself.
    #[error("the passt spawner refused a passt configuration it had not started before")]
    Refused,
}

/// How to run passt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasstConfig {
    /// The binary: a path, or a name looked up in PATH.
    pub binary: PathBuf,
    /// Extra arguments, passed verbatim after ferry's own.
    pub args: Vec<String>,
}

impl Default for PasstConfig {
    fn default() -> Self {
        Self {
            binary: PathBuf::from("passt"),
            args: Vec::new(),
        }
    }
}

/// Finds `binary` as given, or in PATH when it is a bare name.
pub fn resolve(binary: &Path) -> Option<PathBuf> {
    if binary.components().count() > 1 {
        return binary.is_file().then(|| binary.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|p| p.is_file())
}

/// A running passt: a child of ferry's, or of its passt spawner
/// ([`crate::spawner`]), which starts passt for a ferry whose own threads
/// may not start processes.
#[derive(Debug)]
pub struct Passt {
    process: Process,
}

/// Where passt runs.
#[derive(Debug)]
enum Process {
    /// A child of this process.
    Child(ChildPasst),
    /// A child of the passt spawner.
    Spawned(crate::spawner::SpawnedPasst),
}

impl Passt {
    /// Starts passt on one end of a new socket pair and returns ferry's
    /// end; through the passt spawner when ferry started one. passt's
    /// messages go to ferry's log.
    pub fn start(config: &PasstConfig) -> Result<(Self, UnixStream), Error> {
        let started = match crate::spawner::get() {
            Some(spawner) => spawner
                .start(config)
                .map(|(p, s, o)| (Process::Spawned(p), s, o)),
            None => ChildPasst::start(config).map(|(p, s, o)| (Process::Child(p), s, o)),
        };
        match started {
            Ok((process, stream, outputs)) => {
                for output in outputs {
                    forward_lines(std::fs::File::from(output));
                }
                Ok((Passt { process }, stream))
            }
            Err(StartFailure(e, outputs)) => {
                // passt exited: its last words first, then the error.
                for output in outputs {
                    log_lines(std::fs::File::from(output));
                }
                Err(e)
            }
        }
    }

    /// passt's process id.
    pub fn pid(&self) -> u32 {
        match &self.process {
            Process::Child(p) => p.pid(),
            Process::Spawned(p) => p.pid(),
        }
    }

    /// passt's exit status, if it has exited (reaping it).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        match &mut self.process {
            Process::Child(p) => p.exited(),
            Process::Spawned(p) => p.exited(),
        }
    }

    /// Stops passt: waits briefly for it to leave on its own (ferry's end of
    /// the socket must be closed first), then SIGTERM, then SIGKILL. Returns its status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        match &mut self.process {
            Process::Child(p) => p.stop(),
            Process::Spawned(p) => p.stop(),
        }
    }
}

/// A start that failed: the error, and passt's stdout and stderr when it
/// ran (to log what it said).
#[derive(Debug)]
pub(crate) struct StartFailure(pub Error, pub Vec<OwnedFd>);

/// A passt that is a child of this process.
#[derive(Debug)]
pub(crate) struct ChildPasst {
    child: Child,
    status: Option<ExitStatus>,
}

/// How long passt gets to exit on its own once ferry's end of the socket closes.
const EXIT_GRACE: Duration = Duration::from_millis(500);

/// How long ferry waits for passt to be ready before it lets the guest run
/// anyway (passt forwarding every port opens ~98k sockets first: a fraction
/// of a second on a real machine, tens of seconds under emulation).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A name for passt's pid file, unique in this process.
fn pid_file_path() -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("ferry-passt-{}-{n}.pid", std::process::id()))
}

/// What a successful start hands back: passt, ferry's end of its stream,
/// passt's stdout and stderr.
pub(crate) type StartedChild = (ChildPasst, UnixStream, Vec<OwnedFd>);

impl ChildPasst {
    /// Starts passt on one end of a new socket pair; hands back ferry's
    /// end and passt's stdout and stderr (for the caller to log).
    pub(crate) fn start(config: &PasstConfig) -> Result<StartedChild, StartFailure> {
        let failed = |e| StartFailure(e, Vec::new());
        let binary = resolve(&config.binary)
            .ok_or_else(|| failed(Error::NotFound(config.binary.display().to_string())))?;
        let (ours, theirs) = socket_pair().map_err(|e| failed(Error::SocketPair(e)))?;
        let fd = theirs.as_raw_fd();
        let pid_file = pid_file_path();
        let _ = std::fs::remove_file(&pid_file);
        let mut cmd = Command::new(&binary);
        cmd.args(["-f", "-F", &fd.to_string()])
            .arg("--pid")
            .arg(&pid_file)
            .args(&config.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Terminal signals go to ferry, which then stops passt itself.
            .process_group(0);
        // SAFETY: the closure runs in the child between fork and exec and only
        // makes async-signal-safe calls (fcntl, prctl, sigprocmask).
        unsafe {
            cmd.pre_exec(move || {
                // passt's end survives exec; every other descriptor of ferry's is CLOEXEC.
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // passt goes when ferry goes (until passt drops privileges;
                // then the closed socket ends its one-off session).
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| failed(Error::Spawn(binary.display().to_string(), e)))?;
        drop(theirs);
        let mut outputs = Vec::new();
        if let Some(out) = child.stdout.take() {
            outputs.push(OwnedFd::from(out));
        }
        if let Some(err) = child.stderr.take() {
            outputs.push(OwnedFd::from(err));
        }
        log::debug!("started {} (pid {})", binary.display(), child.id());
        let mut passt = ChildPasst {
            child,
            status: None,
        };
        // The guest waits for passt: frames it sent before passt serves (a
        // DHCP request, a router solicitation) would be answered late or
        // never. A bad option makes passt exit at once: say so instead.
        let started = Instant::now();
        let ready = passt.wait_until_ready(&pid_file, started + READY_TIMEOUT);
        let _ = std::fs::remove_file(&pid_file);
        match ready {
            Err(status) => return Err(StartFailure(Error::EarlyExit(status), outputs)),
            Ok(true) => log::debug!("passt ready after {:.3} s", started.elapsed().as_secs_f64()),
            Ok(false) => log::warn!(
                "passt not ready after {} s (no pid file at {}); starting the guest anyway",
                READY_TIMEOUT.as_secs(),
                pid_file.display()
            ),
        }
        Ok((passt, ours, outputs))
    }

    /// Waits until passt has written its pid file (true), `deadline`
    /// passes (false) or passt exits (its status).
    fn wait_until_ready(&mut self, pid_file: &Path, deadline: Instant) -> Result<bool, ExitStatus> {
        loop {
            if let Some(status) = self.exited() {
                return Err(status);
            }
            if std::fs::metadata(pid_file).is_ok_and(|m| m.len() > 0) {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// passt's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// passt's exit status, if it has exited (reaping it).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Stops passt: waits briefly for it to leave on its own (ferry's end of
    /// the socket must be closed first), then SIGTERM, then SIGKILL. Returns its status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        for signal in [None, Some(libc::SIGTERM), Some(libc::SIGKILL)] {
            if let Some(sig) = signal {
                if self.exited().is_none() {
                    // SAFETY: kill on our own child's pid, not yet reaped.
                    unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
                }
            }
            let deadline = Instant::now() + EXIT_GRACE;
            while Instant::now() < deadline {
                if let Some(status) = self.exited() {
                    return Some(status);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        self.exited()
    }
}

impl Drop for ChildPasst {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A connected pair of UNIX stream sockets, both close-on-exec.
fn socket_pair() -> std::io::Result<(UnixStream, OwnedFd)> {
    let (ours, theirs) = UnixStream::pair()?;
    let theirs = OwnedFd::from(theirs);
    // ferry's own send buffer keeps the kernel's default. A deeper one buys
    // nothing: 416 KiB moved guest->host within the noise of the default
    // and cost more CPU per byte in both ferry's thread and the guest
    // (4 MiB, before `writer` kept a cut frame's rest within one chunk,
    // made this passt lose its place in the stream).
    set_send_buffer(&theirs, PASST_SEND_BUFFER)?;
    Ok((ours, theirs))
}

/// The send buffer asked for on passt's end of the pair. passt drops the
/// frames its end cannot take at once and leaves them to the guest's TCP
/// to recover (out-of-order segments, then a retransmission): with the
/// kernel's default (208 KiB, three 64 KiB frames) that happened every
/// few hundred KiB of a host->guest transfer whenever ferry's thread was
/// not scheduled at once. The kernel caps the value at `net.core.wmem_max`
/// (208 KiB by default, which it doubles), so an unprivileged ferry gets
/// between 416 KiB and 1 MiB: enough slack without a deep standing queue.
/// (416 KiB against the default, host->guest inside kvm-host: out-of-order
/// segments per 100 MB in the guest 617 -> 337, 112 -> 172 Mbit/s.)
const PASST_SEND_BUFFER: libc::c_int = 512 * 1024;

/// Asks the kernel for a send buffer of `bytes` on `socket`.
fn set_send_buffer(socket: &OwnedFd, bytes: libc::c_int) -> std::io::Result<()> {
    // SAFETY: the option value is a c_int that lives across the call, and
    // its size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Forwards each line `source` prints to ferry's log, on a thread of its own.
fn forward_lines<R: std::io::Read + Send + 'static>(source: R) {
    let spawned = std::thread::Builder::new()
        .name("passt-log".into())
        .stack_size(THREAD_STACK)
        .spawn(move || {
            if let Err(e) = ferry_confine::seccomp::enter(ThreadKind::PasstLog) {
                log::error!("{e}");
                return;
            }
            log_lines(source);
        });
    if let Err(e) = spawned {
        log::warn!("cannot forward passt's messages: {e}");
    }
}

/// Logs each line `source` prints until it ends.
fn log_lines<R: std::io::Read>(source: R) {
    for line in BufReader::new(source).lines().map_while(Result::ok) {
        // passt also tries syslog; where there is none it says so on every line.
        let noise = line.starts_with("Failed to send") && line.ends_with("to syslog");
        if !line.trim().is_empty() && !noise {
            log::info!("passt: {line}");
        }
    }
}

/// A stand-in passt for tests, in a directory of its own under the temp
/// directory (`ferry-NAME-PID`): it takes passt's arguments (`-f -F FD
/// --pid FILE`), is ready at once (the pid file), says `started` on stdout,
/// then echoes what comes in on FD back out on FD. (bash: dash refuses a
/// descriptor over 9 in a redirection, and a test process has many.)
#[cfg(test)]
pub(crate) fn echo_peer(name: &str) -> PasstConfig {
    let dir = std::env::temp_dir().join(format!("ferry-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("echo-peer");
    std::fs::write(
        &script,
        "#!/bin/bash\necho $$ > \"$5\"\necho started\nexec cat <&$3 >&$3\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    PasstConfig {
        binary: script,
        args: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn a_missing_binary_is_named() {
        let config = PasstConfig {
            binary: "/nonexistent/passt".into(),
            args: vec![],
        };
        let err = Passt::start(&config).unwrap_err();
        assert!(err.to_string().contains("apt-get install passt"), "{err}");
    }

    /// What the kernel reports for `socket`'s send buffer (twice what was
    /// asked for, capped by `net.core.wmem_max`).
    fn send_buffer(socket: &impl AsRawFd) -> usize {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: value and len are valid for writes of the sizes given.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        value as usize
    }

    #[test]
    fn passt_gets_a_deeper_send_buffer_than_ferry() {
        let wmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/wmem_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let (ours, theirs) = socket_pair().unwrap();
        let expected = 2 * wmem_max.min(PASST_SEND_BUFFER as usize);
        assert_eq!(send_buffer(&theirs), expected);
        // ferry's own end keeps the kernel's default.
        assert!(send_buffer(&theirs) > send_buffer(&ours));
    }

    #[test]
    fn bare_names_are_looked_up_in_path() {
        assert!(resolve(Path::new("sh")).is_some());
        assert!(resolve(Path::new("surely-not-a-real-binary-name")).is_none());
    }

    /// A stand-in child (cat on the inherited socket) shows the plumbing:
    /// the child gets its end as FD, and leaves once ferry's end closes.
    #[test]
    fn the_child_speaks_on_the_inherited_socket_and_is_stopped() {
        let config = echo_peer("launcher");
        let dir = config.binary.parent().unwrap().to_path_buf();
        let (mut passt, mut stream) = Passt::start(&config).unwrap();
        stream.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        drop(stream);
        let status = passt.stop().expect("the child should be gone");
        assert!(status.success() || status.code().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
