// SPDX-License-Identifier: Apache-2.0
//! The passt spawner: a small process forked from ferry as it starts,
//! while ferry has one thread and nothing of a guest's, that starts and
//! stops passt on ferry's behalf. ferry's own threads run under seccomp
//! filters that forbid starting processes (and a process ferry started
//! would inherit its filters), yet passt must be started again when it
//! dies. The spawner starts only configurations ferry used before it
//! [`seal`]ed them (as it confines itself): a guest that took over a
//! ferry thread can at most restart passt as it was.
//!
//! It talks over a `SOCK_SEQPACKET` pair, one request per message, fields
//! separated by NUL: `start BINARY ARGS…` (answered `ready PID` with
//! ferry's end of passt's stream, passt's stdout and stderr attached, or
//! `failed …`), `status PID`, `stop PID` (answered `running`, `exited
//! STATUS` or `gone`) and `seal`. It leaves, stopping its passt
//! processes, when ferry's end closes or ferry dies.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Mutex, OnceLock};

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::launcher::{ChildPasst, Error, PasstConfig, StartFailure};

/// The longest message either side sends (passt's arguments included).
const MAX_MESSAGE: usize = 64 * 1024;
/// The most descriptors a message carries: passt's stream, stdout, stderr.
const MAX_FDS: usize = 3;

/// ferry's handle on its spawner.
#[derive(Debug)]
pub struct Spawner {
    control: Mutex<UnixDatagram>,
}

static SPAWNER: OnceLock<Spawner> = OnceLock::new();

/// Forks the spawner. Call while ferry has a single thread (first thing
/// in `main`, after its log is set up): the child goes on running ferry's
/// code. From then on [`crate::Passt::start`] goes through it.
pub fn start() -> io::Result<()> {
    let (ours, theirs) = seqpacket_pair()?;
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: ferry has a single thread here (the caller's promise), so
    // the child may go on running ordinary code.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            drop(ours);
            become_spawner(parent);
            serve(&theirs);
            // SAFETY: leaving without running ferry's exit handlers (they
            // are the parent's).
            unsafe { libc::_exit(0) }
        }
        pid => {
            drop(theirs);
            let _ = SPAWNER.set(Spawner {
                control: Mutex::new(ours),
            });
            log::debug!("passt spawner started (pid {pid})");
            Ok(())
        }
    }
}

/// ferry's spawner, if it started one.
pub(crate) fn get() -> Option<&'static Spawner> {
    SPAWNER.get()
}

/// From now on the spawner starts only the configurations it has started
/// before. Without a spawner, nothing to do.
pub fn seal() -> Result<(), Error> {
    match get() {
        Some(spawner) => spawner.ask(&[b"seal"], &[]).map(|_| ()),
        None => Ok(()),
    }
}

impl Spawner {
    /// Asks for a passt run as `config` says.
    pub(crate) fn start(
        &'static self,
        config: &PasstConfig,
    ) -> Result<(SpawnedPasst, UnixStream, Vec<OwnedFd>), StartFailure> {
        let mut request: Vec<&[u8]> = vec![b"start", config.binary.as_os_str().as_bytes()];
        request.extend(config.args.iter().map(|a| a.as_bytes()));
        let (reply, mut fds) = self
            .ask(&request, &[])
            .map_err(|e| StartFailure(e, Vec::new()))?;
        let fields = fields(&reply);
        match fields.first().copied() {
            Some(b"ready") if fds.len() == MAX_FDS => {
                let pid = number(fields.get(1)).unwrap_or(0) as u32;
                let outputs = fds.split_off(1);
                let stream = UnixStream::from(fds.remove(0));
                let passt = SpawnedPasst {
                    pid,
                    status: None,
                    spawner: self,
                };
                Ok((passt, stream, outputs))
            }
            Some(b"failed") => Err(StartFailure(failure(&fields[1..]), fds)),
            _ => Err(StartFailure(bad_reply(&reply), fds)),
        }
    }

    /// Sends `request` and waits for the reply, with the descriptors it carries.
    fn ask(&self, request: &[&[u8]], fds: &[RawFd]) -> Result<(Vec<u8>, Vec<OwnedFd>), Error> {
        let control = self.control.lock().unwrap_or_else(|e| e.into_inner());
        send(&control, request, fds).map_err(Error::Spawner)?;
        match receive(&control).map_err(Error::Spawner)? {
            Some(reply) => Ok(reply),
            None => Err(Error::Spawner(io::ErrorKind::UnexpectedEof.into())),
        }
    }
}

/// A passt the spawner started.
#[derive(Debug)]
pub(crate) struct SpawnedPasst {
    pid: u32,
    status: Option<ExitStatus>,
    spawner: &'static Spawner,
}

impl SpawnedPasst {
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.ask(b"status");
        }
        self.status
    }

    pub(crate) fn stop(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.ask(b"stop");
        }
        self.status
    }

    /// Asks `what` (status or stop) about this passt; its exit status if
    /// it has gone (a spawner that went counts as gone: it stops its passt
    /// processes as it leaves).
    fn ask(&self, what: &[u8]) -> Option<ExitStatus> {
        let pid = self.pid.to_string();
        let reply = match self.spawner.ask(&[what, pid.as_bytes()], &[]) {
            Ok((reply, _)) => reply,
            Err(e) => {
                log::warn!("passt (pid {}): {e}", self.pid);
                return Some(ExitStatus::from_raw(libc::SIGKILL));
            }
        };
        let fields = fields(&reply);
        match fields.first().copied() {
            Some(b"running") => None,
            Some(b"exited") => Some(ExitStatus::from_raw(
                number(fields.get(1)).unwrap_or(0) as i32
            )),
            _ => Some(ExitStatus::from_raw(libc::SIGKILL)),
        }
    }
}

impl Drop for SpawnedPasst {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The forked child becomes the spawner: gone when ferry (`parent`) goes,
/// even by SIGKILL; out of ferry's process group, whose terminal signals
/// are ferry's to handle; named `ferry-spawner`.
fn become_spawner(parent: libc::pid_t) {
    // SAFETY: prctl, getppid, setpgid and _exit on this process with
    // valid arguments.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != parent {
            libc::_exit(0);
        }
        libc::setpgid(0, 0);
        libc::prctl(libc::PR_SET_NAME, c"ferry-spawner".as_ptr());
    }
}

/// The spawner's side: serves ferry's requests until ferry's end closes,
/// then stops its passt processes.
fn serve(control: &UnixDatagram) {
    let mut children: HashMap<u32, ChildPasst> = HashMap::new();
    let mut started: Vec<PasstConfig> = Vec::new();
    let mut sealed = false;
    while let Ok(Some((request, _))) = receive(control) {
        let fields = fields(&request);
        let reply = match fields.first().copied() {
            Some(b"start") if fields.len() >= 2 => {
                let config = PasstConfig {
                    binary: OsStr::from_bytes(fields[1]).into(),
                    args: fields[2..]
                        .iter()
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect(),
                };
                if sealed && !started.contains(&config) {
                    send(control, &[b"failed", b"refused"], &[])
                } else {
                    if !started.contains(&config) {
                        started.push(config.clone());
                    }
                    start_child(control, &config, &mut children)
                }
            }
            Some(what @ (b"status" | b"stop")) => {
                let pid = number(fields.get(1)).unwrap_or(0) as u32;
                let status = children.get_mut(&pid).map(|child| match what {
                    b"stop" => child.stop(),
                    _ => child.exited(),
                });
                match status {
                    None => send(control, &[b"gone"], &[]),
                    Some(None) => send(control, &[b"running"], &[]),
                    Some(Some(status)) => {
                        children.remove(&pid);
                        let raw = status.into_raw().to_string();
                        send(control, &[b"exited", raw.as_bytes()], &[])
                    }
                }
            }
            Some(b"seal") => {
                sealed = true;
                send(control, &[b"ok"], &[])
            }
            _ => send(control, &[b"failed", b"bad-request"], &[]),
        };
        if reply.is_err() {
            break;
        }
    }
    for (_, mut child) in children {
        child.stop();
    }
}

/// Starts a passt for ferry and sends it the answer.
fn start_child(
    control: &UnixDatagram,
    config: &PasstConfig,
    children: &mut HashMap<u32, ChildPasst>,
) -> io::Result<usize> {
    match ChildPasst::start(config) {
        Ok((child, stream, outputs)) => {
            let pid = child.pid().to_string();
            let mut fds = vec![stream.as_raw_fd()];
            fds.extend(outputs.iter().map(AsRawFd::as_raw_fd));
            let sent = send(control, &[b"ready", pid.as_bytes()], &fds);
            children.insert(child.pid(), child);
            // Our copies close here: passt's end of the stream is ferry's alone.
            sent
        }
        Err(StartFailure(e, outputs)) => {
            let fds: Vec<RawFd> = outputs.iter().map(AsRawFd::as_raw_fd).collect();
            let encoded = encode_failure(&e);
            let fields: Vec<&[u8]> = std::iter::once(&b"failed"[..])
                .chain(encoded.iter().map(|f| f.as_bytes()))
                .collect();
            send(control, &fields, &fds)
        }
    }
}

/// A start's error as reply fields.
fn encode_failure(e: &Error) -> Vec<String> {
    let errno = |e: &io::Error| e.raw_os_error().unwrap_or(libc::EIO).to_string();
    match e {
        Error::NotFound(name) => vec!["not-found".into(), name.clone()],
        Error::SocketPair(e) => vec!["socket-pair".into(), errno(e)],
        Error::Spawn(name, e) => vec!["spawn".into(), name.clone(), errno(e)],
        Error::EarlyExit(status) => vec!["early-exit".into(), status.into_raw().to_string()],
        Error::Spawner(e) => vec!["spawner".into(), errno(e)],
        Error::Refused => vec!["refused".into()],
    }
}

/// A start's error from reply fields.
fn failure(fields: &[&[u8]]) -> Error {
    let text =
        |i: usize| String::from_utf8_lossy(fields.get(i).copied().unwrap_or(b"")).into_owned();
    let errno = |i: usize| {
        io::Error::from_raw_os_error(number(fields.get(i)).unwrap_or(libc::EIO as u64) as i32)
    };
    match fields.first().copied() {
        Some(b"not-found") => Error::NotFound(text(1)),
        Some(b"socket-pair") => Error::SocketPair(errno(1)),
        Some(b"spawn") => Error::Spawn(text(1), errno(2)),
        Some(b"early-exit") => Error::EarlyExit(ExitStatus::from_raw(
            number(fields.get(1)).unwrap_or(0) as i32,
        )),
        Some(b"spawner") => Error::Spawner(errno(1)),
        Some(b"refused") => Error::Refused,
        _ => bad_reply(b"failed"),
    }
}

fn bad_reply(reply: &[u8]) -> Error {
    Error::Spawner(io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unexpected reply {:?}", String::from_utf8_lossy(reply)),
    ))
}

/// A message's NUL-separated fields.
fn fields(message: &[u8]) -> Vec<&[u8]> {
    message.split(|&b| b == 0).collect()
}

/// A decimal field.
fn number(field: Option<&&[u8]>) -> Option<u64> {
    std::str::from_utf8(field?).ok()?.parse().ok()
}

/// A connected `SOCK_SEQPACKET` pair, close-on-exec.
fn seqpacket_pair() -> io::Result<(UnixDatagram, UnixDatagram)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: socketpair writes two descriptors into the array.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are new and ours; std's datagram calls
    // (send, recv) work on a connected seqpacket socket.
    Ok(unsafe {
        (
            UnixDatagram::from_raw_fd(fds[0]),
            UnixDatagram::from_raw_fd(fds[1]),
        )
    })
}

/// Sends one message of `fields` with `fds` attached.
fn send(socket: &UnixDatagram, fields: &[&[u8]], fds: &[RawFd]) -> io::Result<usize> {
    let message = fields.join(&0u8);
    if message.len() > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "message too long",
        ));
    }
    socket
        .send_with_fds(&[&message[..]], fds)
        .map_err(io::Error::from)
}

/// Receives one message and the descriptors it carries; `None` when the
/// other side has closed.
fn receive(socket: &UnixDatagram) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut raw_fds = [-1 as RawFd; MAX_FDS];
    let mut iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    // SAFETY: the iovec points into `buf`, which outlives the call and
    // may take any bytes.
    let (len, nfds) =
        unsafe { socket.recv_with_fds(&mut iov, &mut raw_fds) }.map_err(io::Error::from)?;
    // SAFETY: the first `nfds` descriptors were just received: ours to own.
    let fds = raw_fds[..nfds]
        .iter()
        .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    if len == 0 {
        return Ok(None);
    }
    buf.truncate(len);
    Ok(Some((buf, fds)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A spawner served by a thread of this process, and a stand-in passt
    /// ([`crate::launcher::echo_peer`]) as its configuration.
    fn spawner_on_a_thread(
        name: &str,
    ) -> (&'static Spawner, std::thread::JoinHandle<()>, PasstConfig) {
        let (ours, theirs) = seqpacket_pair().unwrap();
        let server = std::thread::spawn(move || serve(&theirs));
        let spawner = Box::leak(Box::new(Spawner {
            control: Mutex::new(ours),
        }));
        let config = crate::launcher::echo_peer(name);
        (spawner, server, config)
    }

    #[test]
    fn the_spawner_starts_stops_and_after_sealing_refuses_new_configurations() {
        let (spawner, server, config) = spawner_on_a_thread("spawner-seal");
        let (mut passt, mut stream, outputs) = spawner.start(&config).unwrap();
        // ferry's end of the stream reaches the stand-in, and its stdout comes along.
        stream.write_all(b"ping").unwrap();
        let mut echoed = [0u8; 4];
        stream.read_exact(&mut echoed).unwrap();
        assert_eq!(&echoed, b"ping");
        let mut said = String::new();
        let mut stdout = std::fs::File::from(outputs.into_iter().next().unwrap());
        let mut byte = [0u8; 1];
        while stdout.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
            said.push(byte[0] as char);
        }
        assert_eq!(said, "started");
        assert_eq!(passt.exited(), None, "still running");
        // Sealed: the same configuration again is fine, another is refused.
        seal_with(spawner);
        let (mut again, _stream2, _) = spawner.start(&config).unwrap();
        let other = PasstConfig {
            binary: config.binary.clone(),
            args: vec!["--other".into()],
        };
        let refused = spawner.start(&other).unwrap_err();
        assert!(matches!(refused.0, Error::Refused), "{:?}", refused.0);
        // Stopped: the status comes back, and the spawner forgets the pid.
        drop(stream);
        assert!(passt.stop().is_some());
        assert!(again.stop().is_some());
        // ferry's end closed: the spawner ends.
        drop(std::mem::replace(
            &mut *spawner.control.lock().unwrap(),
            seqpacket_pair().unwrap().0,
        ));
        server.join().unwrap();
        std::fs::remove_dir_all(config.binary.parent().unwrap()).unwrap();
    }

    fn seal_with(spawner: &Spawner) {
        let (reply, _) = spawner.ask(&[b"seal"], &[]).unwrap();
        assert_eq!(reply, b"ok");
    }

    #[test]
    fn garbled_requests_are_answered_not_obeyed() {
        let (spawner, server, config) = spawner_on_a_thread("spawner-garbled");
        for request in [
            &[b"what" as &[u8]][..],
            &[b"start"],
            &[b"stop", b"x"],
            &[b"status", b"99999999"],
        ] {
            let (reply, fds) = spawner.ask(request, &[]).unwrap();
            assert!(fds.is_empty());
            assert!(
                reply.starts_with(b"failed") || reply == b"gone",
                "{:?}",
                String::from_utf8_lossy(&reply)
            );
        }
        drop(std::mem::replace(
            &mut *spawner.control.lock().unwrap(),
            seqpacket_pair().unwrap().0,
        ));
        server.join().unwrap();
        std::fs::remove_dir_all(config.binary.parent().unwrap()).unwrap();
    }

    #[test]
    fn every_start_failure_crosses_the_socket() {
        let errors = [
            Error::NotFound("/no/passt".into()),
            Error::SocketPair(io::Error::from_raw_os_error(libc::EMFILE)),
            Error::Spawn(
                "/bin/passt".into(),
                io::Error::from_raw_os_error(libc::EACCES),
            ),
            Error::EarlyExit(ExitStatus::from_raw(1 << 8)),
            Error::Spawner(io::Error::from_raw_os_error(libc::EPIPE)),
            Error::Refused,
        ];
        for e in errors {
            let encoded = encode_failure(&e);
            let fields: Vec<&[u8]> = encoded.iter().map(|f| f.as_bytes()).collect();
            assert_eq!(failure(&fields).to_string(), e.to_string());
        }
    }

    #[test]
    fn a_garbled_failure_is_an_error_not_a_panic() {
        assert!(matches!(failure(&[b"what"]), Error::Spawner(_)));
        assert!(matches!(failure(&[]), Error::Spawner(_)));
        assert!(matches!(
            failure(&[b"early-exit", b"x"]),
            Error::EarlyExit(_)
        ));
    }
}
