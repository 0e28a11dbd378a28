// SPDX-License-Identifier: Apache-2.0
//! The API socket and the server thread.
//!
//! One thread, `ferry_api`, accepts connections; each connection is served
//! by a thread of its own (`ferry_api_conn`), at most [`MAX_CONNECTIONS`] at
//! once, so a slow or stuck client never holds up another. A connection
//! thread reads a request, routes it, hands the typed request to the VMM on
//! the `requests` channel, writes the `wake` eventfd so the VMM's epoll loop
//! notices, waits for the VMM's answer and writes it back.

use ferry_confine::seccomp::ThreadKind;
use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::net::Shutdown;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Sender, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::http::{encode, Connection, REQUEST_TIMEOUT};
use crate::request::fault_body;
use crate::{route, Error, Request, Response};

/// The most connections served at once; one more is answered 503 and
/// closed (Firecracker's limit is 10).
pub const MAX_CONNECTIONS: usize = 16;

/// The epoll tokens of the accept loop.
const LISTENER: u64 = 0;
const STOP: u64 = 1;

/// One typed request from a client, waiting for the VMM's answer.
///
/// Dropping it without [`ApiRequest::respond`] answers the client with a 500
/// and closes its connection.
#[derive(Debug)]
pub struct ApiRequest {
    request: Request,
    reply: SyncSender<Response>,
}

impl ApiRequest {
    /// The request.
    pub fn request(&self) -> &Request {
        &self.request
    }

    /// Sends the answer to the client. A client that has gone away is not an
    /// error: the answer is dropped.
    pub fn respond(self, response: Response) {
        // The connection thread may have gone (its client hung up, or the
        // server stopped): nobody is left to answer.
        let _ = self.reply.send(response);
    }
}

/// The API's listening UNIX socket.
///
/// Binding refuses a path where anything exists already, as Firecracker
/// does; dropping the socket removes its file (if it is still the one bound
/// here).
#[derive(Debug)]
pub struct ApiSocket {
    listener: UnixListener,
    path: PathBuf,
    /// The socket file's (device, inode), so that drop removes only it.
    file_id: Option<(u64, u64)>,
}

impl ApiSocket {
    /// Binds and listens on `path`.
    pub fn bind(path: &Path) -> Result<Self, Error> {
        if path.symlink_metadata().is_ok() {
            return Err(Error::SocketInUse(path.to_path_buf()));
        }
        let listener = UnixListener::bind(path).map_err(|source| {
            if source.kind() == io::ErrorKind::AddrInUse {
                Error::SocketInUse(path.to_path_buf())
            } else {
                Error::Bind {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        let file_id = fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()));
        Ok(ApiSocket {
            listener,
            path: path.to_path_buf(),
            file_id,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ApiSocket {
    fn drop(&mut self) {
        let current = fs::symlink_metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if current.is_some() && current == self.file_id {
            if let Err(e) = fs::remove_file(&self.path) {
                log::warn!("cannot remove the API socket {}: {e}", self.path.display());
            }
        }
    }
}

/// The running server. Dropping it, or [`ServerHandle::stop`], stops
/// accepting connections, shuts down the open ones, waits for the server
/// thread and removes the socket file. Connection threads waiting for the
/// VMM's answer are left to finish on their own (detached).
#[derive(Debug)]
pub struct ServerHandle {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl ServerHandle {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops the server; the same as dropping the handle.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        if let Err(e) = self.stop.write(1) {
            // Without the event the thread would never end: leave it.
            log::error!("cannot stop the API server thread: {e}");
            return;
        }
        if thread.join().is_err() {
            log::error!("the API server thread panicked");
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The open connections, so that stopping can shut them down.
#[derive(Debug, Default)]
struct Registry {
    next_id: u64,
    streams: HashMap<u64, UnixStream>,
}

type SharedRegistry = Arc<Mutex<Registry>>;

fn lock(registry: &SharedRegistry) -> MutexGuard<'_, Registry> {
    registry
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Removes its connection from the registry when the connection's thread
/// ends (or never starts).
struct Registered {
    registry: SharedRegistry,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.registry).streams.remove(&self.id);
    }
}

/// Starts the server thread, `ferry_api`, on `socket`.
///
/// Each typed request is sent on `requests`, after which `wake` is written
/// so that the VMM's epoll loop notices; the connection then waits for the
/// VMM to [`ApiRequest::respond`]. If the VMM has gone (`requests`'
/// receiver is dropped) the client gets a 503 and its connection is closed.
///
/// Signals: the server's threads must not take the process's SIGTERM,
/// SIGINT or SIGHUP. The caller blocks these signals in the calling thread
/// before calling `spawn`, so that every thread started here inherits the
/// mask; the server thread also blocks them itself as it starts. Writing to
/// a client that has gone relies on SIGPIPE being ignored, as Rust's runtime
/// sets it up before `main`.
pub fn spawn(
    socket: ApiSocket,
    requests: Sender<ApiRequest>,
    wake: Arc<EventFd>,
) -> Result<ServerHandle, Error> {
    socket
        .listener
        .set_nonblocking(true)
        .map_err(Error::Setup)?;
    let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::Setup)?;
    let epoll = Epoll::new().map_err(Error::Setup)?;
    epoll
        .ctl(
            ControlOperation::Add,
            socket.listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER),
        )
        .map_err(Error::Setup)?;
    epoll
        .ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP),
        )
        .map_err(Error::Setup)?;
    let path = socket.path.clone();
    let server = Server {
        socket,
        epoll,
        requests,
        wake,
        registry: SharedRegistry::default(),
    };
    let thread = thread::Builder::new()
        .name("ferry_api".into())
        .spawn(move || {
            if let Err(e) = ferry_confine::seccomp::enter(ThreadKind::Api) {
                log::error!("API server: {e}");
                return;
            }
            server.run()
        })
        .map_err(Error::Spawn)?;
    Ok(ServerHandle {
        stop,
        thread: Some(thread),
        path,
    })
}

/// Blocks the signals the VMM's main thread handles, in this thread and
/// the threads it starts.
/// Blocking a signal already blocked (the VMM blocks them before it
/// spawns this thread, as it should) is no error.
fn block_signals() {
    // SAFETY: sigset_t is plain data, which sigemptyset initialises.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t for each call.
    unsafe {
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, signal);
        }
    }
    // SAFETY: `set` is valid; the old mask is not asked for.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        log::warn!(
            "API server: cannot block the stop signals: {}",
            std::io::Error::from_raw_os_error(rc)
        );
    }
}

/// The accept loop's state.
struct Server {
    socket: ApiSocket,
    epoll: Epoll,
    requests: Sender<ApiRequest>,
    wake: Arc<EventFd>,
    registry: SharedRegistry,
}

impl Server {
    fn run(self) {
        block_signals();
        let mut events = [EpollEvent::default(); 2];
        'serve: loop {
            let count = match self.epoll.wait(-1, &mut events) {
                Ok(count) => count,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("API server: epoll_wait failed, stopping: {e}");
                    break;
                }
            };
            for event in events.iter().take(count) {
                match event.data() {
                    STOP => break 'serve,
                    _ => self.accept_all(),
                }
            }
        }
        // Wake every connection thread blocked reading its client.
        for stream in lock(&self.registry).streams.values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        // The socket file goes with `self.socket`.
    }

    /// Accepts every pending connection.
    fn accept_all(&self) {
        loop {
            match self.socket.listener.accept() {
                Ok((stream, _)) => self.admit(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of file descriptors, say: don't spin on it.
                    log::warn!("API server: accept failed: {e}");
                    thread::sleep(Duration::from_millis(100));
                    return;
                }
            }
        }
    }

    /// Starts a thread for `stream`, or turns it away if too many are open.
    fn admit(&self, stream: UnixStream) {
        let registered = {
            let mut registry = lock(&self.registry);
            if registry.streams.len() >= MAX_CONNECTIONS {
                None
            } else {
                match stream.try_clone() {
                    Ok(clone) => {
                        let id = registry.next_id;
                        registry.next_id = registry.next_id.wrapping_add(1);
                        registry.streams.insert(id, clone);
                        Some(Registered {
                            registry: Arc::clone(&self.registry),
                            id,
                        })
                    }
                    Err(e) => {
                        log::warn!("API server: cannot register a connection: {e}");
                        None
                    }
                }
            }
        };
        let Some(registered) = registered else {
            refuse(stream, "Too many open API connections.");
            return;
        };
        let requests = self.requests.clone();
        let wake = Arc::clone(&self.wake);
        let spawned = thread::Builder::new()
            .name("ferry_api_conn".into())
            .spawn(move || {
                let _registered = registered;
                if let Err(e) = ferry_confine::seccomp::enter(ThreadKind::Api) {
                    log::error!("API server: {e}");
                    return;
                }
                serve_connection(stream, &requests, &wake);
            });
        if let Err(e) = spawned {
            // The closure, with the stream and its registration, is dropped:
            // the client sees the connection closed.
            log::warn!("API server: cannot start a connection thread: {e}");
        }
    }
}

/// Answers a connection that will not be served with a 503, without
/// blocking the accept loop, and closes it.
fn refuse(mut stream: UnixStream, message: &str) {
    if stream.set_nonblocking(true).is_ok() {
        let _ = stream.write_all(&encode(503, Some(&fault_body(message)), false));
    }
}

/// Why a request could not be answered by the VMM.
enum Unanswered {
    /// The VMM's end of the channel is gone.
    VmmGone,
    /// The VMM dropped the request without answering.
    Dropped,
}

/// Hands `request` to the VMM and waits for its answer.
fn dispatch(
    request: Request,
    requests: &Sender<ApiRequest>,
    wake: &EventFd,
) -> Result<Response, Unanswered> {
    let (reply, answer) = mpsc::sync_channel(1);
    requests
        .send(ApiRequest { request, reply })
        .map_err(|_| Unanswered::VmmGone)?;
    if let Err(e) = wake.write(1) {
        log::warn!("API server: cannot wake the VMM: {e}");
    }
    answer.recv().map_err(|_| Unanswered::Dropped)
}

/// Serves one client until it closes, sends something malformed, or asks
/// to close.
fn serve_connection(stream: UnixStream, requests: &Sender<ApiRequest>, wake: &EventFd) {
    let mut conn = match Connection::new(stream, REQUEST_TIMEOUT) {
        Ok(conn) => conn,
        Err(e) => {
            log::warn!("API server: cannot set up a connection: {e}");
            return;
        }
    };
    loop {
        let http_request = match conn.next_request() {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(Error::Io(e)) => {
                log::debug!("API connection closed: {e}");
                return;
            }
            Err(e) => {
                log::debug!("API server: bad request: {e}");
                let _ = conn.write_fault(400, &e.to_string(), false);
                return;
            }
        };
        let typed = route(&http_request.method, &http_request.path, &http_request.body);
        let (response, vmm_ok) = match typed {
            Err(response) => (response, true),
            Ok(request) => match dispatch(request, requests, wake) {
                Ok(response) => (response, true),
                Err(Unanswered::VmmGone) => {
                    let _ = conn.write_fault(
                        503,
                        "The VMM has stopped and no longer answers API requests.",
                        false,
                    );
                    return;
                }
                Err(Unanswered::Dropped) => (
                    Response::InternalError(
                        "The VMM dropped the request without answering.".into(),
                    ),
                    false,
                ),
            },
        };
        let keep_alive = http_request.keep_alive && vmm_ok;
        if conn.respond(&response, keep_alive).is_err() || !keep_alive {
            return;
        }
    }
}
