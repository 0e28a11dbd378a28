// SPDX-License-Identifier: Apache-2.0
//! The data path of one vsock device, on its own thread with its own
//! event loop: the RX, TX and event queue kicks, the listening sockets,
//! the clients still to send their CONNECT line, and every connection's
//! host socket.
//!
//! Guest to host: each TX packet is taken at once; its data goes straight
//! to the host socket, and what the socket cannot take waits in the
//! connection's buffer (bounded by the credit the device advertised).
//! Host to guest: a host socket is read only when the guest can take
//! data (an RX buffer at hand and credit on that connection), straight
//! into one RX buffer per read; otherwise the device stops watching it for
//! input and the client's writes back up into its socket. Control packets
//! (REQUEST, RESPONSE, SHUTDOWN, RST, credit) go before data; while too
//! many wait for RX buffers, the TX queue is left alone.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::connect_line::{LineBuffer, LineState, MAX_CONNECT_LINE};
use super::connection::{ConnKey, Connection, DataError, Origin};
use super::packet::{self, Header, Op, RxBuffer, HOST_CID, SHUTDOWN_BOTH, SHUTDOWN_SEND};
use super::stats::VsockStats;
use crate::virtio::device_thread::{run_until_stopped, STOP_TOKEN};
use crate::virtio::queue_drain::{signal_used, RecheckOnce};
use crate::virtio::Interrupt;
use crate::GuestMemory;

/// Most connections at once (open ones and clients still to send their
/// CONNECT line); past it a guest REQUEST is refused (RST) and a host
/// client closed.
pub const MAX_CONNECTIONS: usize = 1024;
/// How long a host client has to send its CONNECT line.
pub const CONNECT_LINE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the guest has to answer a REQUEST.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the guest has to send its RST once told that the host side ended.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);
/// How often deadlines are looked at while some run.
const TICK: Duration = Duration::from_millis(100);
/// Local ports for host-opened connections: from 2^30 up to 2^31 (exclusive).
const LOCAL_PORTS: std::ops::Range<u32> = 1 << 30..1 << 31;
/// Control packets that may wait for RX buffers before the TX queue is left alone.
const MAX_PENDING_CTL: usize = 2 * MAX_CONNECTIONS;
/// Largest read from a host socket: one RX buffer's worth, at most.
const READ_CHUNK: usize = 64 * 1024;

/// Index of the receive queue (virtio 1.2, 5.10.2).
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;
/// Index of the event queue.
pub const EVENT_QUEUE: usize = 2;

/// Event tokens: the queue kicks, the deadline timer, the listeners from
/// [`LISTENER_BASE`] on, and sockets from [`FIRST_SOCKET`] on.
const RX_KICK: u32 = 0;
const TX_KICK: u32 = 1;
const EVENT_KICK: u32 = 2;
const TIMER: u32 = 3;
const LISTENER_BASE: u32 = 16;
const FIRST_SOCKET: u32 = 1 << 16;

/// What a listening socket does with a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// Firecracker's hybrid socket: the client names the guest port in a
    /// `CONNECT <port>\n` line and is answered `OK <local port>\n`.
    Hybrid,
    /// Every client goes to this guest port, with no line and no answer.
    Port(u32),
}

/// What [`Muxer::new`] takes.
#[derive(Debug)]
pub struct Parts {
    /// Its name in logs and the thread's.
    pub name: String,
    /// Guest memory.
    pub mem: GuestMemory,
    /// The guest's CID.
    pub guest_cid: u64,
    /// The RX, TX and event queues with their kicks.
    pub queues: [(Queue, EventFd); 3],
    /// The device's interrupt.
    pub interrupt: Arc<Interrupt>,
    /// The listening sockets.
    pub listeners: Vec<(UnixListener, ListenerKind)>,
    /// The hybrid socket's path: the guest's connections to host port P go
    /// to `<uds_path>_P`.
    pub uds_path: PathBuf,
    /// The device's counters.
    pub stats: Arc<VsockStats>,
    /// Most connections at once ([`MAX_CONNECTIONS`]).
    pub max_connections: usize,
}

/// A host client that has not sent its whole CONNECT line yet.
#[derive(Debug)]
struct PendingClient {
    stream: UnixStream,
    line: LineBuffer,
    deadline: Instant,
}

/// A control packet waiting for an RX buffer.
#[derive(Debug, Clone, Copy)]
enum Ctl {
    /// A packet built already (an RST for a connection gone).
    Raw(Header),
    /// A packet for the connection with this key and token (if it still
    /// exists), its credit filled in when sent.
    Conn(ConnKey, u32, Op, u32),
}

/// How a connection ended, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Closed,
    Reset,
    Refused,
}

/// One vsock device's data path.
#[derive(Debug)]
pub struct Muxer {
    name: String,
    mem: GuestMemory,
    guest_cid: u64,
    rx_queue: Queue,
    tx_queue: Queue,
    kicks: [EventFd; 3],
    interrupt: Arc<Interrupt>,
    stats: Arc<VsockStats>,
    listeners: Vec<(UnixListener, ListenerKind)>,
    uds_path: PathBuf,
    max_connections: usize,
    timer: Option<TimerFd>,
    timer_armed: bool,
    conns: HashMap<ConnKey, Connection>,
    /// Connection keys by event token.
    tokens: HashMap<u32, ConnKey>,
    /// Clients yet to send their CONNECT line, by event token.
    pending: HashMap<u32, PendingClient>,
    next_token: u32,
    /// Local ports of host-opened connections.
    local_ports: HashSet<u32>,
    next_local_port: u32,
    /// Control packets for the guest, in order; before any data.
    ctl_queue: VecDeque<Ctl>,
    /// Connections with data for the guest (or to look at again when RX buffers come).
    rx_conns: VecDeque<ConnKey>,
    /// The guest has no RX buffers: host sockets are not read.
    rx_starved: bool,
    /// The TX queue is left alone until control packets drain.
    tx_held: bool,
    /// Scratch for a TX packet's data.
    tx_data: Vec<u8>,
    /// Scratch for reads from host sockets.
    rx_data: Vec<u8>,
}

/// A non-blocking timer (reading it when it has not fired must not wait).
fn deadline_timer() -> io::Result<TimerFd> {
    let timer = TimerFd::new().map_err(io::Error::from)?;
    // SAFETY: fcntl on a descriptor the timer owns; it only sets a status flag.
    if unsafe { libc::fcntl(timer.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(timer)
}

/// Connects to the UNIX socket at `path` without waiting: a listener whose
/// backlog is full refuses like one that is not there.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: all-zero bytes are a valid `sockaddr_un` (plain integers).
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "path unfit for a UNIX socket",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (to, &from) in addr.sun_path.iter_mut().zip(bytes) {
        *to = from as libc::c_char;
    }
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor just opened, owned by nothing else.
    let stream = UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    // SAFETY: `addr` is a valid `sockaddr_un` of at least `len` bytes that
    // outlives the call; `stream` owns an open socket.
    let rc = unsafe {
        libc::connect(
            stream.as_raw_fd(),
            (&raw const addr).cast::<libc::sockaddr>(),
            len as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

impl Muxer {
    /// A data path over `parts`.
    pub fn new(parts: Parts) -> Self {
        let [(rx_queue, rx_kick), (tx_queue, tx_kick), (_event_queue, event_kick)] = parts.queues;
        let timer = deadline_timer()
            .map_err(|e| log::warn!("{}: no deadline timer: {e}", parts.name))
            .ok();
        Self {
            name: parts.name,
            mem: parts.mem,
            guest_cid: parts.guest_cid,
            rx_queue,
            tx_queue,
            kicks: [rx_kick, tx_kick, event_kick],
            interrupt: parts.interrupt,
            stats: parts.stats,
            listeners: parts.listeners,
            uds_path: parts.uds_path,
            max_connections: parts.max_connections,
            timer,
            timer_armed: false,
            conns: HashMap::new(),
            tokens: HashMap::new(),
            pending: HashMap::new(),
            next_token: FIRST_SOCKET,
            local_ports: HashSet::new(),
            next_local_port: LOCAL_PORTS.start,
            ctl_queue: VecDeque::new(),
            rx_conns: VecDeque::new(),
            rx_starved: false,
            tx_held: false,
            tx_data: Vec::new(),
            rx_data: vec![0; READ_CHUNK],
        }
    }

    /// Runs until `stop` is written; every connection is closed then.
    pub fn run(self, stop: EventFd) {
        let name = self.name.clone();
        if let Some(muxer) = run_until_stopped(&name, self, stop) {
            log::debug!(
                "{name}: stopped with {} connections open",
                muxer.conns.len()
            );
            let open = muxer.conns.len() as u64;
            VsockStats::bump(&muxer.stats.closed, open);
            muxer
                .stats
                .open
                .fetch_sub(open, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// An event token for a new socket.
    fn new_token(&mut self) -> u32 {
        loop {
            let token = self.next_token;
            self.next_token = match self.next_token.wrapping_add(1) {
                STOP_TOKEN | 0 => FIRST_SOCKET,
                next => next,
            };
            if !self.tokens.contains_key(&token) && !self.pending.contains_key(&token) {
                return token;
            }
        }
    }

    /// A local port for a host-opened connection, unused by open ones.
    fn new_local_port(&mut self) -> Option<u32> {
        let span = LOCAL_PORTS.end - LOCAL_PORTS.start;
        for _ in 0..span.min(4 * self.max_connections as u32 + 16) {
            let port = self.next_local_port;
            self.next_local_port = if port + 1 >= LOCAL_PORTS.end {
                LOCAL_PORTS.start
            } else {
                port + 1
            };
            if !self.local_ports.contains(&port) {
                return Some(port);
            }
        }
        None
    }

    fn at_limit(&self) -> bool {
        self.conns.len() + self.pending.len() >= self.max_connections
    }

    fn arm_timer(&mut self) {
        if self.timer_armed {
            return;
        }
        if let Some(timer) = self.timer.as_mut() {
            match timer.reset(TICK, Some(TICK)) {
                Ok(()) => self.timer_armed = true,
                Err(e) => log::warn!("{}: deadline timer: {e}", self.name),
            }
        }
    }

    // ---- host side: listeners and clients ----

    /// Takes every client waiting on listener `index`.
    fn accept(&mut self, index: usize, ops: &mut EventOps) {
        loop {
            let Some((listener, kind)) = self.listeners.get(index) else {
                return;
            };
            let kind = *kind;
            let stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("{}: accept: {e}", self.name);
                    return;
                }
            };
            if let Err(e) = stream.set_nonblocking(true) {
                log::warn!("{}: a host client: {e}", self.name);
                continue;
            }
            if self.at_limit() {
                log::warn!(
                    "{}: {} connections open; a host client is closed",
                    self.name,
                    self.max_connections
                );
                VsockStats::bump(&self.stats.refused, 1);
                continue;
            }
            match kind {
                ListenerKind::Hybrid => {
                    let token = self.new_token();
                    if let Err(e) = ops.add(Events::with_data(&stream, token, EventSet::IN)) {
                        log::error!("{}: cannot watch a host client: {e:?}", self.name);
                        continue;
                    }
                    self.pending.insert(
                        token,
                        PendingClient {
                            stream,
                            line: LineBuffer::default(),
                            deadline: Instant::now() + CONNECT_LINE_TIMEOUT,
                        },
                    );
                    self.arm_timer();
                }
                ListenerKind::Port(port) => self.host_connect(stream, port, false, Vec::new(), ops),
            }
        }
    }

    /// Drops a client that has not sent its line (it is closed).
    fn drop_pending(&mut self, token: u32, ops: &mut EventOps) -> Option<UnixStream> {
        let client = self.pending.remove(&token)?;
        if let Err(e) = ops.remove(Events::empty(&client.stream)) {
            log::error!("{}: cannot stop watching a host client: {e:?}", self.name);
        }
        Some(client.stream)
    }

    /// Reads a client's CONNECT line.
    fn read_connect_line(&mut self, token: u32, ops: &mut EventOps) {
        let Some(client) = self.pending.get_mut(&token) else {
            return;
        };
        let mut buf = [0u8; MAX_CONNECT_LINE];
        let room = client.line.room().min(buf.len());
        let verdict = match client.stream.read(&mut buf[..room]) {
            Ok(0) => Err("closed before its CONNECT line".to_owned()),
            Ok(n) => {
                ferry_capture::bytes(ferry_capture::Input::ConnectLine, &buf[..n]);
                client.line.push(&buf[..n]).map_err(|e| e.to_string())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return,
            Err(e) => Err(e.to_string()),
        };
        match verdict {
            Ok(LineState::Incomplete) => {}
            Ok(LineState::Connect { port, rest }) => {
                if let Some(stream) = self.drop_pending(token, ops) {
                    self.host_connect(stream, port, true, rest, ops);
                }
            }
            Err(why) => {
                log::debug!("{}: a host client: {why}; closed", self.name);
                VsockStats::bump(&self.stats.refused, 1);
                self.drop_pending(token, ops);
            }
        }
    }

    /// A host client asks for guest port `guest_port`: the guest is sent a
    /// REQUEST; `prefix` is what the client sent after its line.
    fn host_connect(
        &mut self,
        stream: UnixStream,
        guest_port: u32,
        reply_ok: bool,
        prefix: Vec<u8>,
        ops: &mut EventOps,
    ) {
        if self.conns.len() >= self.max_connections {
            log::warn!(
                "{}: {} connections open; a host client is closed",
                self.name,
                self.max_connections
            );
            VsockStats::bump(&self.stats.refused, 1);
            return;
        }
        let Some(local_port) = self.new_local_port() else {
            log::warn!("{}: no local port left; a host client is closed", self.name);
            VsockStats::bump(&self.stats.refused, 1);
            return;
        };
        let key = ConnKey {
            local_port,
            peer_port: guest_port,
        };
        if self.conns.contains_key(&key) {
            // A guest-opened connection holds these ports (the guest
            // connected to a host port in the local range).
            log::warn!("{}: {key} is taken; a host client is closed", self.name);
            VsockStats::bump(&self.stats.refused, 1);
            return;
        }
        let token = self.new_token();
        let mut conn = Connection::new(stream, key, token, Origin::Host { reply_ok });
        conn.set_prefix(prefix);
        log::debug!(
            "{}: host connects to guest port {guest_port} ({key})",
            self.name
        );
        self.local_ports.insert(local_port);
        self.tokens.insert(token, key);
        self.conns.insert(key, conn);
        VsockStats::bump(&self.stats.host_connections, 1);
        VsockStats::bump(&self.stats.open, 1);
        self.ctl_queue
            .push_back(Ctl::Conn(key, token, Op::Request, 0));
        self.update_interest(key, ops);
    }

    /// Events on a connection's host socket.
    fn host_socket_event(&mut self, key: ConnKey, set: EventSet, ops: &mut EventOps) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if set.contains(EventSet::ERROR) {
            let why = conn.stream.take_error().ok().flatten();
            log::debug!("{}: {key}: host socket error {why:?}", self.name);
            self.host_gone(key, ops);
            return;
        }
        if set.contains(EventSet::OUT) {
            match conn.flush() {
                Ok(true) => {
                    if !self.after_guest_data(key) {
                        return self.forget(key, true, End::Closed, ops);
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    log::debug!("{}: {key}: host write: {e}", self.name);
                    self.host_gone(key, ops);
                    return;
                }
            }
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if set.contains(EventSet::IN) {
            if !conn.in_rx_queue {
                conn.in_rx_queue = true;
                self.rx_conns.push_back(key);
            }
        } else if set.intersects(EventSet::HANG_UP | EventSet::READ_HANG_UP)
            && (conn.reading_done() || !conn.established)
        {
            self.host_gone(key, ops);
            return;
        }
        self.update_interest(key, ops);
    }

    /// The host socket ended both ways (or failed): the guest is told to
    /// end (SHUTDOWN both) and has [`SHUTDOWN_TIMEOUT`] to answer RST; a
    /// connection not established yet, or one the guest ended too, is reset.
    fn host_gone(&mut self, key: ConnKey, ops: &mut EventOps) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if !conn.established || conn.guest_shut == SHUTDOWN_BOTH {
            let end = if conn.established {
                End::Closed
            } else {
                End::Refused
            };
            return self.forget(key, true, end, ops);
        }
        if conn.host_gone {
            return;
        }
        conn.host_gone = true;
        conn.drop_pending_tx();
        conn.deadline = Some(Instant::now() + SHUTDOWN_TIMEOUT);
        let token = conn.token;
        self.ctl_queue
            .push_back(Ctl::Conn(key, token, Op::Shutdown, SHUTDOWN_BOTH));
        self.arm_timer();
        self.update_interest(key, ops);
    }

    /// Forgets a connection, closing its host socket; `rst`: the guest is
    /// sent an RST.
    fn forget(&mut self, key: ConnKey, rst: bool, end: End, ops: &mut EventOps) {
        let Some(mut conn) = self.conns.remove(&key) else {
            return;
        };
        if conn.interest.is_some() {
            if let Err(e) = ops.remove(Events::empty(&conn.stream)) {
                log::error!("{}: {key}: cannot stop watching: {e:?}", self.name);
            }
        }
        self.tokens.remove(&conn.token);
        if matches!(conn.origin, Origin::Host { .. }) {
            self.local_ports.remove(&key.local_port);
        }
        if rst {
            let header = conn.header(self.guest_cid, Op::Rst, 0);
            self.ctl_queue.push_back(Ctl::Raw(header));
        }
        log::debug!("{}: {key}: {end:?}", self.name);
        VsockStats::bump(&self.stats.closed, 1);
        self.stats
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        match end {
            End::Closed => {}
            End::Reset => VsockStats::bump(&self.stats.reset, 1),
            End::Refused => VsockStats::bump(&self.stats.refused, 1),
        }
    }

    /// Watches a connection's host socket for what it waits on: input when
    /// the guest can take data, output while guest data waits; with neither,
    /// only a hang-up once reading is over for good (or before the
    /// handshake), or nothing (a paused socket's hang-up would be reported
    /// without end).
    fn update_interest(&mut self, key: ConnKey, ops: &mut EventOps) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let can_read = conn.wants_host_data() || conn.has_prefix();
        if can_read && self.rx_starved && !conn.in_rx_queue {
            // Looked at again when RX buffers come.
            conn.in_rx_queue = true;
            self.rx_conns.push_back(key);
        }
        if conn.has_prefix() && !conn.in_rx_queue {
            conn.in_rx_queue = true;
            self.rx_conns.push_back(key);
        }
        let want_in = conn.wants_host_data() && !self.rx_starved;
        let want_out = conn.has_pending_tx() && !conn.host_gone;
        let keep = !conn.host_gone && (conn.reading_done() || !conn.established);
        let mut set = EventSet::empty();
        if want_in {
            set |= EventSet::IN;
        }
        if want_out {
            set |= EventSet::OUT;
        }
        let desired = (want_in || want_out || keep).then_some(set);
        if desired == conn.interest {
            return;
        }
        let result = match (conn.interest, desired) {
            (None, Some(set)) => ops.add(Events::with_data(&conn.stream, conn.token, set)),
            (Some(_), Some(set)) => ops.modify(Events::with_data(&conn.stream, conn.token, set)),
            (Some(_), None) => ops.remove(Events::empty(&conn.stream)),
            (None, None) => Ok(()),
        };
        match result {
            Ok(()) => conn.interest = desired,
            Err(e) => log::error!("{}: {key}: cannot watch the host socket: {e:?}", self.name),
        }
    }

    // ---- deadlines ----

    fn check_deadlines(&mut self, ops: &mut EventOps) {
        let now = Instant::now();
        let late: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for token in late {
            log::debug!(
                "{}: a host client sent no CONNECT line within {CONNECT_LINE_TIMEOUT:?}; closed",
                self.name
            );
            VsockStats::bump(&self.stats.refused, 1);
            self.drop_pending(token, ops);
        }
        let late: Vec<(ConnKey, bool)> = self
            .conns
            .values()
            .filter(|c| c.deadline.is_some_and(|d| d <= now))
            .map(|c| (c.key, c.established))
            .collect();
        for (key, established) in late {
            if established {
                log::debug!("{}: {key}: no RST from the guest; reset", self.name);
                self.forget(key, true, End::Closed, ops);
            } else {
                log::debug!("{}: {key}: no answer from the guest; reset", self.name);
                self.forget(key, true, End::Refused, ops);
            }
        }
        let waiting = !self.pending.is_empty() || self.conns.values().any(|c| c.deadline.is_some());
        if !waiting && self.timer_armed {
            if let Some(timer) = self.timer.as_mut() {
                let _ = timer.clear();
            }
            self.timer_armed = false;
        }
    }

    // ---- guest side: TX ----

    /// Takes every packet the guest sent (unless too many control packets
    /// wait for RX buffers).
    fn process_tx(&mut self, ops: &mut EventOps) {
        let mem = self.mem.clone();
        let mut used_any = false;
        let mut recheck = RecheckOnce::default();
        let mut data = std::mem::take(&mut self.tx_data);
        loop {
            if self.ctl_queue.len() >= MAX_PENDING_CTL {
                self.tx_held = true;
                break;
            }
            let _ = self.tx_queue.disable_notification(&mem);
            let Some(chain) = self.tx_queue.pop_descriptor_chain(&mem) else {
                if recheck.look_again(&mut self.tx_queue, &mem, &self.name, "TX") {
                    continue;
                }
                break;
            };
            recheck.made_progress();
            ferry_capture::chain(ferry_capture::Input::VsockTx, &chain);
            let head = chain.head_index();
            let packet = packet::read_tx_chain(&mem, chain, self.guest_cid, &mut data);
            if let Err(e) = self.tx_queue.add_used(&mem, head, 0) {
                log::warn!("{}: TX used ring: {e}", self.name);
            }
            used_any = true;
            match packet {
                Ok((header, op)) => {
                    VsockStats::bump(&self.stats.tx_packets, 1);
                    VsockStats::bump(&self.stats.tx_bytes, data.len() as u64);
                    self.guest_packet(&header, op, &data, ops);
                }
                Err(e) => {
                    log::debug!("{}: TX chain {head}: {e}", self.name);
                    VsockStats::bump(&self.stats.malformed, 1);
                }
            }
        }
        self.tx_data = data;
        if used_any {
            signal_used(
                &mut self.tx_queue,
                &mem,
                &self.interrupt,
                TX_QUEUE,
                &self.name,
            );
        }
    }

    /// An RST for `key`, which the device does not know.
    fn rst_unknown(&mut self, key: ConnKey) {
        self.ctl_queue.push_back(Ctl::Raw(Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: key.local_port,
            dst_port: key.peer_port,
            type_: packet::TYPE_STREAM,
            op: Op::Rst.to_u16(),
            ..Header::default()
        }));
    }

    /// One well-formed packet from the guest.
    fn guest_packet(&mut self, header: &Header, op: Op, data: &[u8], ops: &mut EventOps) {
        let key = ConnKey::of_guest_packet(header);
        let Some(conn) = self.conns.get_mut(&key) else {
            match op {
                Op::Request => self.guest_connect(key, header, ops),
                Op::Rst => {}
                _ => {
                    log::debug!("{}: {key}: {op:?} for no connection; RST", self.name);
                    self.rst_unknown(key);
                }
            }
            return;
        };
        conn.update_peer_credit(header);
        let token = conn.token;
        match op {
            Op::Request => {
                log::debug!("{}: {key}: REQUEST on an open connection; reset", self.name);
                self.forget(key, true, End::Reset, ops);
            }
            Op::Response => {
                if conn.established || conn.origin == Origin::Guest {
                    log::debug!("{}: {key}: unexpected RESPONSE; reset", self.name);
                    return self.forget(key, true, End::Reset, ops);
                }
                conn.established = true;
                conn.deadline = None;
                if conn.origin == (Origin::Host { reply_ok: true }) {
                    let ok = format!("OK {}\n", key.local_port);
                    if let Err(e) = (&conn.stream).write_all(ok.as_bytes()) {
                        log::debug!("{}: {key}: cannot answer the client: {e}", self.name);
                        return self.forget(key, true, End::Closed, ops);
                    }
                }
                self.update_interest(key, ops);
            }
            Op::Rst => {
                let end = if !conn.established {
                    End::Refused
                } else if conn.host_gone {
                    End::Closed
                } else {
                    End::Reset
                };
                self.forget(key, false, end, ops);
            }
            Op::Shutdown => {
                conn.guest_shut |= header.flags & SHUTDOWN_BOTH;
                if !self.after_guest_data(key) {
                    return self.forget(key, true, End::Closed, ops);
                }
                self.update_interest(key, ops);
            }
            Op::Rw => {
                if !conn.established {
                    log::debug!("{}: {key}: data before the handshake; reset", self.name);
                    return self.forget(key, true, End::Reset, ops);
                }
                match conn.take_guest_data(data) {
                    Ok(()) => {
                        if conn.credit_update_due() && !conn.credit_update_queued {
                            conn.credit_update_queued = true;
                            self.ctl_queue
                                .push_back(Ctl::Conn(key, token, Op::CreditUpdate, 0));
                        }
                        self.update_interest(key, ops);
                    }
                    Err(DataError::Overrun { len, room }) => {
                        log::debug!(
                            "{}: {key}: the guest sent {len} bytes with {room} of credit; reset",
                            self.name
                        );
                        VsockStats::bump(&self.stats.malformed, 1);
                        self.forget(key, true, End::Reset, ops);
                    }
                    Err(DataError::Host(e)) => {
                        log::debug!("{}: {key}: host write: {e}", self.name);
                        self.host_gone(key, ops);
                    }
                }
            }
            Op::CreditUpdate => self.update_interest(key, ops),
            Op::CreditRequest => {
                if !conn.credit_update_queued {
                    conn.credit_update_queued = true;
                    self.ctl_queue
                        .push_back(Ctl::Conn(key, token, Op::CreditUpdate, 0));
                }
            }
        }
    }

    /// After guest data went out (or the guest shut a side): shuts the
    /// host socket's write side if due, tells the guest of freed credit;
    /// false when the connection is over (both sides done sending, or
    /// the guest shut both sides and its data is out): it is to be
    /// forgotten, with an RST.
    fn after_guest_data(&mut self, key: ConnKey) -> bool {
        let Some(conn) = self.conns.get_mut(&key) else {
            return true;
        };
        conn.shut_host_write_if_due();
        let flushed = !conn.has_pending_tx();
        if flushed && (conn.guest_shut == SHUTDOWN_BOTH || (conn.host_eof && conn.host_write_shut))
        {
            return false;
        }
        if conn.credit_update_due()
            && !conn.credit_update_queued
            && conn.guest_shut & SHUTDOWN_SEND == 0
        {
            conn.credit_update_queued = true;
            self.ctl_queue
                .push_back(Ctl::Conn(key, conn.token, Op::CreditUpdate, 0));
        }
        true
    }

    /// The guest asks for host port `key.local_port`: connects to
    /// `<uds_path>_<port>`.
    fn guest_connect(&mut self, key: ConnKey, header: &Header, ops: &mut EventOps) {
        if self.at_limit() {
            log::warn!(
                "{}: {} connections open; the guest's REQUEST to port {} is refused",
                self.name,
                self.max_connections,
                key.local_port
            );
            VsockStats::bump(&self.stats.refused, 1);
            return self.rst_unknown(key);
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", key.local_port));
        let stream = match connect_nonblocking(Path::new(&path)) {
            Ok(stream) => stream,
            Err(e) => {
                log::debug!(
                    "{}: {key}: cannot connect to {}: {e}; RST",
                    self.name,
                    Path::new(&path).display()
                );
                VsockStats::bump(&self.stats.refused, 1);
                return self.rst_unknown(key);
            }
        };
        let token = self.new_token();
        let mut conn = Connection::new(stream, key, token, Origin::Guest);
        conn.update_peer_credit(header);
        log::debug!(
            "{}: guest connects to host port {} ({key})",
            self.name,
            key.local_port
        );
        self.tokens.insert(token, key);
        self.conns.insert(key, conn);
        VsockStats::bump(&self.stats.guest_connections, 1);
        VsockStats::bump(&self.stats.open, 1);
        self.ctl_queue
            .push_back(Ctl::Conn(key, token, Op::Response, 0));
        self.update_interest(key, ops);
    }

    // ---- guest side: RX ----

    /// The next RX chain, or none (notifications are then on).
    fn pop_rx<'m>(&mut self, mem: &'m GuestMemory) -> Option<DescriptorChain<&'m GuestMemory>> {
        let mut recheck = RecheckOnce::default();
        loop {
            if let Some(chain) = self.rx_queue.pop_descriptor_chain(mem) {
                return Some(chain);
            }
            if !recheck.look_again(&mut self.rx_queue, mem, &self.name, "RX") {
                return None;
            }
        }
    }

    /// Fills RX buffers: control packets first, then data from the
    /// connections that have some.
    fn process_rx(&mut self, ops: &mut EventOps) {
        let mem = self.mem.clone();
        let mut used_any = false;
        if !self.ctl_queue.is_empty() || !self.rx_conns.is_empty() {
            let _ = self.rx_queue.disable_notification(&mem);
        }
        while !self.ctl_queue.is_empty() || !self.rx_conns.is_empty() {
            let Some(chain) = self.pop_rx(&mem) else {
                self.rx_starved = true;
                break;
            };
            self.rx_starved = false;
            let head = chain.head_index();
            ferry_capture::chain(ferry_capture::Input::VsockRx, &chain);
            let used = match RxBuffer::new(&mem, chain) {
                Ok(buffer) => self.fill(buffer, ops),
                Err(e) => {
                    log::debug!("{}: RX chain {head}: {e}", self.name);
                    VsockStats::bump(&self.stats.malformed, 1);
                    Some(0)
                }
            };
            match used {
                Some(len) => {
                    if let Err(e) = self.rx_queue.add_used(&mem, head, len) {
                        log::warn!("{}: RX used ring: {e}", self.name);
                    }
                    used_any = true;
                }
                None => {
                    let next = self.rx_queue.next_avail().wrapping_sub(1);
                    self.rx_queue.set_next_avail(next);
                }
            }
        }
        if used_any {
            signal_used(
                &mut self.rx_queue,
                &mem,
                &self.interrupt,
                RX_QUEUE,
                &self.name,
            );
        }
    }

    /// Puts the next packet into `buffer`: its used length, or `None` if
    /// nothing went (the buffer is given back).
    fn fill(&mut self, buffer: RxBuffer<'_>, ops: &mut EventOps) -> Option<u32> {
        if let Some(ctl) = self.ctl_queue.pop_front() {
            let header = match ctl {
                Ctl::Raw(header) => header,
                Ctl::Conn(key, token, op, flags) => {
                    let conn = self.conns.get_mut(&key).filter(|c| c.token == token)?;
                    match op {
                        Op::CreditUpdate => conn.credit_update_queued = false,
                        Op::Request => conn.deadline = Some(Instant::now() + REQUEST_TIMEOUT),
                        _ => {}
                    }
                    let header = conn.header(self.guest_cid, op, flags);
                    if op == Op::Request {
                        self.arm_timer();
                    }
                    header
                }
            };
            VsockStats::bump(&self.stats.rx_packets, 1);
            return Some(buffer.write(&header, &[]));
        }
        let key = self.rx_conns.pop_front()?;
        let conn = self.conns.get_mut(&key)?;
        conn.in_rx_queue = false;
        if !(conn.wants_host_data() || conn.has_prefix()) {
            if conn.peer_credit() == 0
                && !conn.credit_requested
                && conn.established
                && !conn.host_gone
            {
                // Starved by the guest: ask it where it stands.
                conn.credit_requested = true;
                let token = conn.token;
                self.ctl_queue
                    .push_back(Ctl::Conn(key, token, Op::CreditRequest, 0));
            }
            self.update_interest(key, ops);
            return None;
        }
        let room = buffer.data_room().min(self.rx_data.len());
        if room == 0 {
            // Too small for data: returned empty, the data waits for the next.
            VsockStats::bump(&self.stats.malformed, 1);
            conn.in_rx_queue = true;
            self.rx_conns.push_front(key);
            return Some(0);
        }
        let credit_bound = (conn.peer_credit() as usize) < room;
        match conn.read_for_guest(&mut self.rx_data[..room]) {
            Ok(0) => {
                log::debug!("{}: {key}: the host side sends no more", self.name);
                conn.host_eof = true;
                let token = conn.token;
                self.ctl_queue
                    .push_back(Ctl::Conn(key, token, Op::Shutdown, SHUTDOWN_SEND));
                if conn.host_write_shut && !conn.has_pending_tx() {
                    self.forget(key, true, End::Closed, ops);
                } else {
                    self.update_interest(key, ops);
                }
                None
            }
            Ok(n) => {
                let header = conn.header(self.guest_cid, Op::Rw, 0);
                let len = buffer.write(&header, &self.rx_data[..n]);
                VsockStats::bump(&self.stats.rx_packets, 1);
                VsockStats::bump(&self.stats.rx_bytes, n as u64);
                if n == room && !conn.in_rx_queue {
                    // Likely more: another turn, after the others.
                    conn.in_rx_queue = true;
                    self.rx_conns.push_back(key);
                }
                if credit_bound && conn.peer_credit() == 0 && !conn.credit_requested {
                    // The guest's credit, not the data, ran out: ask where it stands.
                    conn.credit_requested = true;
                    let token = conn.token;
                    self.ctl_queue
                        .push_back(Ctl::Conn(key, token, Op::CreditRequest, 0));
                }
                self.update_interest(key, ops);
                Some(len)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.update_interest(key, ops);
                None
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                conn.in_rx_queue = true;
                self.rx_conns.push_back(key);
                None
            }
            Err(e) => {
                log::debug!("{}: {key}: host read: {e}", self.name);
                self.host_gone(key, ops);
                None
            }
        }
    }

    /// Moves packets both ways until nothing more can move now.
    fn pump(&mut self, ops: &mut EventOps) {
        loop {
            self.process_rx(ops);
            if self.tx_held && self.ctl_queue.len() < MAX_PENDING_CTL {
                self.tx_held = false;
                self.process_tx(ops);
            } else {
                return;
            }
        }
    }
}

impl MutEventSubscriber for Muxer {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let token = events.data();
        match token {
            RX_KICK => {
                let _ = self.kicks[RX_QUEUE].read();
                self.rx_starved = false;
            }
            TX_KICK => {
                let _ = self.kicks[TX_QUEUE].read();
                self.process_tx(ops);
            }
            EVENT_KICK => {
                // The device sends no events; the buffers stay with it.
                let _ = self.kicks[EVENT_QUEUE].read();
            }
            TIMER => {
                if let Some(timer) = self.timer.as_mut() {
                    let _ = timer.wait();
                }
                self.check_deadlines(ops);
            }
            t if t >= LISTENER_BASE && ((t - LISTENER_BASE) as usize) < self.listeners.len() => {
                self.accept((t - LISTENER_BASE) as usize, ops);
            }
            t => {
                if self.pending.contains_key(&t) {
                    self.read_connect_line(t, ops);
                } else if let Some(&key) = self.tokens.get(&t) {
                    self.host_socket_event(key, events.event_set(), ops);
                } else {
                    log::warn!("{}: unexpected event {t}", self.name);
                }
            }
        }
        self.pump(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (i, (fd, token)) in self
            .kicks
            .iter()
            .zip([RX_KICK, TX_KICK, EVENT_KICK])
            .enumerate()
        {
            if let Err(e) = ops.add(Events::with_data(fd, token, EventSet::IN)) {
                log::error!("{}: cannot watch queue {i}'s eventfd: {e:?}", self.name);
            }
        }
        if let Some(timer) = self.timer.as_ref() {
            if let Err(e) = ops.add(Events::with_data(timer, TIMER, EventSet::IN)) {
                log::warn!("{}: cannot watch the deadline timer: {e:?}", self.name);
                self.timer = None;
            }
        }
        for (i, (listener, _)) in self.listeners.iter().enumerate() {
            if let Err(e) = listener.set_nonblocking(true) {
                log::error!("{}: listener: {e}", self.name);
            }
            if let Err(e) = ops.add(Events::with_data(
                listener,
                LISTENER_BASE + i as u32,
                EventSet::IN,
            )) {
                log::error!("{}: cannot watch a listener: {e:?}", self.name);
            }
        }
        // Packets may have been sent before the thread started.
        self.process_tx(ops);
        self.pump(ops);
    }
}
