// SPDX-License-Identifier: Apache-2.0
//! vsock's muxer, the device's whole data path, driven through its event
//! loop: the fuzzer plays the guest (TX packets of any shape, RX buffers
//! of any size) and the host side (clients of the hybrid socket with
//! their CONNECT lines, servers behind `<uds>_<port>`, writes, reads,
//! shutdowns and closes), on real UNIX sockets.
//!
//! Input: a script, one step after another until it runs out (see
//! [`Step`]); after each step the muxer's event loop runs until it has
//! nothing left to do, and everything it put on the guest's rings is
//! checked against a model of what the guest and the host sides did:
//!
//! - every RX packet is well formed: host CID to the guest's CID, STREAM,
//!   a known op, its length that of its data, within its buffer;
//! - data to the guest on a connection is exactly the next bytes its host
//!   socket was given (each socket writes its own pattern), never data
//!   of a connection no host socket is behind;
//! - the guest is never sent more than its credit (`buf_alloc` less what
//!   is in flight, as it last said);
//! - what a host socket reads is a prefix of the data the guest sent on
//!   that connection, in order, after `OK <port>\n` for a hybrid client;
//! - once everything is dropped, no descriptor is left open.
//!
//! `VSOCK_MUXER_TRACE=1` prints each step and each packet to the guest
//! (to read what an input does).

#![no_main]

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{fence, Ordering};
use std::sync::{Arc, OnceLock};

use event_manager::{EventManager, SubscriberOps};
use ferry_devices::irq::IrqLine;
use ferry_devices::virtio::vsock::connect_line::parse_connect_line;
use ferry_devices::virtio::vsock::muxer::{ListenerKind, Muxer, Parts};
use ferry_devices::virtio::vsock::packet::{Header, Op, HDR_LEN, HOST_CID, TYPE_STREAM};
use ferry_devices::virtio::vsock::VsockStats;
use ferry_devices::virtio::Interrupt;
use ferry_devices::GuestMemory;
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const GUEST_CID: u64 = 3;
const RING: u16 = 64;
/// Each ring's descriptor table, available and used rings in one page.
const RING_BASE: [u64; 3] = [0x0, 0x1000, 0x2000];
const SLOT: u64 = 0x12000;
const TX_SLOTS: u64 = 0x10000;
const RX_SLOTS: u64 = TX_SLOTS + SLOT * RING as u64;
const MEM_SIZE: usize = (RX_SLOTS + SLOT * RING as u64) as usize;
/// An address past the end of memory.
const NOWHERE: u64 = 1 << 40;
/// Guest ports served on the host (`<uds>_1`, `<uds>_2`); port 3 is not.
const SERVED_PORTS: [u32; 2] = [1, 2];
const MAX_CONNECTIONS: usize = 3;
const MAX_STEPS: usize = 200;
const MAX_SOCKETS: usize = 12;
/// `VIRTQ_DESC_F_NEXT`, `VIRTQ_DESC_F_WRITE`.
const NEXT: u16 = 1;
const WRITE: u16 = 2;

/// A connection's ports: (the device's port, the guest's port).
type Key = (u32, u32);

/// The fuzzer's bytes, read front to back; zeros once they run out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[usize::from(self.u8()) % from.len()]
    }
}

/// The byte at `offset` of a stream named `id`: each stream its own
/// sequence, so that a byte lost, repeated or moved shows.
fn pattern(id: u32, offset: u64) -> u8 {
    let x = (u64::from(id) << 40) ^ offset.wrapping_mul(0x9e37_79b9);
    (x ^ (x >> 13) ^ (x >> 29)) as u8
}

/// One split ring seen from the driver.
struct Ring {
    base: u64,
    size: u16,
    avail_idx: u16,
    used_seen: u16,
    free: Vec<u16>,
}

impl Ring {
    fn new(base: u64) -> Self {
        Self {
            base,
            size: RING,
            avail_idx: 0,
            used_seen: 0,
            free: (0..RING).rev().collect(),
        }
    }
    fn desc(&self) -> u64 {
        self.base
    }
    fn avail(&self) -> u64 {
        self.base + 16 * u64::from(self.size)
    }
    fn used(&self) -> u64 {
        (self.avail() + 6 + 2 * u64::from(self.size) + 3) & !3
    }
    fn queue(&self, ready: bool) -> Queue {
        let mut q = Queue::new(RING).expect("queue");
        q.set_size(self.size);
        q.try_set_desc_table_address(GuestAddress(self.desc()))
            .expect("descriptor table");
        q.try_set_avail_ring_address(GuestAddress(self.avail()))
            .expect("available ring");
        q.try_set_used_ring_address(GuestAddress(self.used()))
            .expect("used ring");
        q.set_ready(ready);
        q
    }
    /// Writes descriptors `(index, addr, len, flags)` chained in order and
    /// makes the first available.
    fn publish(&mut self, mem: &GuestMemory, chain: &[(u16, u64, u32, u16)]) {
        for (n, &(i, addr, len, flags)) in chain.iter().enumerate() {
            let next = chain.get(n + 1).map(|c| c.0);
            let at = self.desc() + 16 * u64::from(i);
            let flags = flags | if next.is_some() { NEXT } else { 0 };
            mem.write_obj(addr, GuestAddress(at)).expect("descriptor");
            mem.write_obj(len, GuestAddress(at + 8))
                .expect("descriptor");
            mem.write_obj(flags, GuestAddress(at + 12))
                .expect("descriptor");
            mem.write_obj(next.unwrap_or(0), GuestAddress(at + 14))
                .expect("descriptor");
        }
        let slot = u64::from(self.avail_idx % self.size);
        mem.write_obj(chain[0].0, GuestAddress(self.avail() + 4 + 2 * slot))
            .expect("available ring");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        fence(Ordering::SeqCst);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail() + 2))
            .expect("available index");
    }
    /// The used entries not seen yet: (head, length).
    fn take_used(&mut self, mem: &GuestMemory) -> Vec<(u16, u32)> {
        fence(Ordering::SeqCst);
        let idx: u16 = mem
            .read_obj(GuestAddress(self.used() + 2))
            .expect("used index");
        let mut out = Vec::new();
        while self.used_seen != idx {
            let at = self.used() + 4 + 8 * u64::from(self.used_seen % self.size);
            let id: u32 = mem.read_obj(GuestAddress(at)).expect("used entry");
            let len: u32 = mem.read_obj(GuestAddress(at + 4)).expect("used entry");
            assert!(
                id < u32::from(self.size),
                "used entry names descriptor {id}"
            );
            out.push((id as u16, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}

/// What a host socket is.
#[derive(Debug, PartialEq)]
enum Side {
    /// A client of the hybrid socket: the guest port its CONNECT line
    /// named (None: no valid line yet, or a bad one), and whether its
    /// `OK <port>\n` was read.
    Client {
        port: Option<u32>,
        line_sent: bool,
        ok_read: bool,
    },
    /// A server's end of a connection the guest opened.
    Server,
}

/// One host socket and what went through it.
struct HostSocket {
    stream: Option<UnixStream>,
    side: Side,
    /// Its pattern's name.
    id: u32,
    /// Pattern bytes written to it.
    written: u64,
    /// Of those, bytes the guest received.
    delivered: u64,
    /// Bytes read from it (after the OK line), to be the guest's data.
    received: Vec<u8>,
    /// The guest's data on its connection, in order.
    from_guest: Vec<u8>,
    /// Bytes read before the OK line was complete.
    line: Vec<u8>,
}

/// What the model knows of one connection key.
#[derive(Default)]
struct KeyState {
    /// The host socket behind it.
    socket: Option<usize>,
    /// Data bytes the guest received on it since it began.
    rx_cnt: Wrapping<u32>,
    /// (buf_alloc, fwd_cnt) as the guest last said, and before that if
    /// the device may not have read the newer yet.
    credit: (u32, u32),
    credit_before: Option<(u32, u32)>,
    /// Guest data bytes sent on it (the guest's pattern offset).
    guest_sent: u64,
}

struct World {
    mem: GuestMemory,
    rx: Ring,
    tx: Ring,
    kicks: [EventFd; 3],
    manager: EventManager<Muxer>,
    stats: Arc<VsockStats>,
    hybrid: PathBuf,
    servers: Vec<(u32, UnixListener)>,
    sockets: Vec<HostSocket>,
    keys: HashMap<Key, KeyState>,
    /// Keys seen in packets either way, for the guest to answer.
    seen: Vec<Key>,
    /// The key of the REQUEST the guest just sent, to bind a socket a
    /// server accepts next.
    just_requested: Option<Key>,
    /// RX buffers posted: descriptor index -> size.
    rx_sizes: HashMap<u16, u32>,
    /// TX chains posted: head -> its descriptors.
    tx_chains: HashMap<u16, Vec<u16>>,
}

/// Whether to print steps and packets (`VSOCK_MUXER_TRACE`).
fn tracing() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("VSOCK_MUXER_TRACE").is_some())
}

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("ferry-fuzz-vsock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a directory for the sockets");
        dir
    })
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn bind(path: &PathBuf) -> UnixListener {
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path).expect("listener")
}

impl World {
    fn new() -> Self {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory");
        let rings = RING_BASE.map(Ring::new);
        let [rx, tx, event] = rings;
        let kicks = [0, 1, 2].map(|_| EventFd::new(EFD_NONBLOCK).expect("eventfd"));
        let hybrid = dir().join("v.sock");
        let listener = bind(&hybrid);
        let servers = SERVED_PORTS
            .iter()
            .map(|&p| {
                let mut path = hybrid.clone().into_os_string();
                path.push(format!("_{p}"));
                let l = bind(&PathBuf::from(path));
                l.set_nonblocking(true).expect("non-blocking");
                (p, l)
            })
            .collect();
        let stats = Arc::new(VsockStats::default());
        let parts = Parts {
            name: "vsock".into(),
            mem: mem.clone(),
            guest_cid: GUEST_CID,
            queues: [
                (rx.queue(true), kicks[0].try_clone().expect("eventfd")),
                (tx.queue(true), kicks[1].try_clone().expect("eventfd")),
                (event.queue(false), kicks[2].try_clone().expect("eventfd")),
            ],
            interrupt: Arc::new(Interrupt::new(IrqLine::new(5).expect("irq line"))),
            listeners: vec![(listener, ListenerKind::Hybrid)],
            uds_path: hybrid.clone(),
            stats: stats.clone(),
            max_connections: MAX_CONNECTIONS,
        };
        let mut manager = EventManager::new().expect("event manager");
        manager.add_subscriber(Muxer::new(parts));
        Self {
            mem,
            rx,
            tx,
            kicks,
            manager,
            stats,
            hybrid,
            servers,
            sockets: Vec::new(),
            keys: HashMap::new(),
            seen: Vec::new(),
            just_requested: None,
            rx_sizes: HashMap::new(),
            tx_chains: HashMap::new(),
        }
    }

    /// Runs the muxer until nothing is ready.
    fn settle(&mut self) {
        for _ in 0..64 {
            match self.manager.run_with_timeout(0) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) => panic!("event loop: {e:?}"),
            }
        }
    }

    fn remember(&mut self, key: Key) {
        if !self.seen.contains(&key) {
            self.seen.push(key);
        }
    }

    // ---- the guest ----

    fn guest_send(&mut self, input: &mut Input) {
        let op = u16::from(input.u8() % 9);
        let (src_port, dst_port) = match input.u8() % 4 {
            0 if !self.seen.is_empty() => {
                let (local, peer) = input.pick(&self.seen);
                (peer, local)
            }
            1 => (input.pick(&[1024, 1025, 5000]), input.pick(&[1, 2, 3])),
            2 => (input.u32(), input.u32()),
            _ => (1024, input.pick(&[1, 2])),
        };
        let key = (dst_port, src_port);
        let state = self.keys.entry(key).or_default();
        let buf_alloc = match input.u8() % 6 {
            0 => 0,
            1 => 1,
            2 => 4096,
            3 => 65536,
            4 => 256 * 1024,
            _ => input.u32(),
        };
        let fwd_cnt = match input.u8() % 4 {
            0 => state.rx_cnt.0,
            1 => 0,
            2 => state.rx_cnt.0.wrapping_sub(u32::from(input.u16())),
            _ => input.u32(),
        };
        let data_len = if op == Op::Rw.to_u16() || input.u8() % 8 == 0 {
            match input.u8() % 6 {
                0 => 1,
                1 => 100,
                2 => 4096,
                3 => 64 * 1024,
                4 => 64 * 1024 + 1,
                _ => usize::from(input.u16()),
            }
        } else {
            0
        };
        let fault = input.u8();
        let mut header = Header {
            src_cid: if fault == 1 { 7 } else { GUEST_CID },
            dst_cid: if fault == 2 { 9 } else { HOST_CID },
            src_port,
            dst_port,
            len: if fault == 3 {
                input.u32()
            } else {
                data_len as u32
            },
            type_: if fault == 4 { 2 } else { TYPE_STREAM },
            op,
            flags: u32::from(input.u8() % 5),
            buf_alloc,
            fwd_cnt,
        };
        if fault == 5 {
            header.flags = input.u32();
        }
        let data: Vec<u8> = (0..data_len as u64)
            .map(|m| {
                pattern(
                    0x8000_0000 ^ src_port ^ dst_port.rotate_left(7),
                    state.guest_sent + m,
                )
            })
            .collect();
        if tracing() {
            eprintln!("  from the guest: {:?} {} -> {}, {} bytes, credit {buf_alloc}/{fwd_cnt}, fault {fault}", Op::from_u16(op), src_port, dst_port, data.len());
        }
        let shape = input.u8() % 5;
        let cut = u32::from(input.u8());
        let mut bytes = header.to_bytes().to_vec();
        bytes.extend_from_slice(&data);
        let all = bytes.len() as u32;
        let split = match shape {
            1 => Some(HDR_LEN as u32),
            2 => Some(cut.min(all)),
            _ => None,
        };
        let slots = if split.is_some() { 2 } else { 1 };
        if self.tx.free.len() < slots {
            return;
        }
        let head = self.tx.free.pop().expect("a free descriptor");
        let at = TX_SLOTS + SLOT * u64::from(head);
        self.mem
            .write_slice(&bytes, GuestAddress(at))
            .expect("TX slot");
        let chain: Vec<(u16, u64, u32, u16)> = match (shape, split) {
            (_, Some(cut)) => {
                let second = self.tx.free.pop().expect("a free descriptor");
                vec![
                    (head, at, cut, 0),
                    (second, at + u64::from(cut), all - cut, 0),
                ]
            }
            (3, _) => vec![(head, NOWHERE, all, 0)],
            (4, _) => vec![(head, at, all, WRITE)],
            _ => vec![(head, at, all, 0)],
        };
        self.tx_chains
            .insert(head, chain.iter().map(|c| c.0).collect());
        self.tx.publish(&self.mem, &chain);
        self.kicks[1].write(1).expect("TX kick");

        // What the device is to make of it.
        let well_formed = shape < 3
            && header.check_from_guest(GUEST_CID, data.len()).is_ok()
            && Op::from_u16(op).is_some();
        if !well_formed {
            return;
        }
        self.remember(key);
        if self.keys.get(&key).and_then(|k| k.socket).is_none() {
            // A connection the device opened for a client since: its OK line says.
            self.read_clients();
        }
        let state = self.keys.entry(key).or_default();
        state.credit_before = Some(state.credit);
        state.credit = (buf_alloc, fwd_cnt);
        match Op::from_u16(op) {
            Some(Op::Request) => {
                state.credit_before = None;
                state.rx_cnt = Wrapping(0);
                state.guest_sent = 0;
                self.just_requested = Some(key);
            }
            Some(Op::Rst) => self.unbind(key),
            Some(Op::Rw) => {
                // The header's length, which may be less than the chain holds.
                let data = &data[..(header.len as usize).min(data.len())];
                state.guest_sent += data.len() as u64;
                // Data for a key no host socket is behind goes nowhere.
                if let Some(s) = state.socket {
                    self.sockets[s].from_guest.extend_from_slice(data);
                }
            }
            _ => {}
        }
    }

    fn post_rx(&mut self, input: &mut Input) {
        let count = input.u8() % 8 + 1;
        let size = input.pick(&[0u32, 20, 44, 45, 60, 4096, 4096, 64 * 1024 + 44]);
        for _ in 0..count {
            let Some(i) = self.rx.free.pop() else { break };
            let at = RX_SLOTS + SLOT * u64::from(i);
            self.rx.publish(&self.mem, &[(i, at, size, WRITE)]);
            self.rx_sizes.insert(i, size);
        }
        self.kicks[0].write(1).expect("RX kick");
    }

    /// Collects what the device used and checks it.
    fn observe(&mut self) {
        for (head, _) in self.tx.take_used(&self.mem) {
            let chain = self
                .tx_chains
                .remove(&head)
                .expect("a used TX chain the guest posted");
            self.tx.free.extend(chain);
        }
        // A connection the guest just opened: the server's end.
        let requested = self.just_requested.take();
        let mut accepted = Vec::new();
        for (port, listener) in &self.servers {
            while let Ok((stream, _)) = listener.accept() {
                accepted.push((*port, stream));
            }
        }
        assert!(
            accepted.len() <= 1,
            "{} connections for one REQUEST",
            accepted.len()
        );
        for (port, stream) in accepted {
            let key =
                requested.unwrap_or_else(|| panic!("a connection to port {port} nobody asked for"));
            assert_eq!(
                port, key.0,
                "a connection to port {port} for a REQUEST to {}",
                key.0
            );
            stream.set_nonblocking(true).expect("non-blocking");
            let s = self.add_socket(stream, Side::Server);
            self.bind(key, s);
        }
        for (id, len) in self.rx.take_used(&self.mem) {
            self.rx.free.push(id);
            let size = self
                .rx_sizes
                .remove(&id)
                .expect("a used RX buffer the guest posted");
            assert!(len <= size, "{len} bytes used of a {size}-byte buffer");
            if len == 0 {
                continue;
            }
            assert!(len as usize >= HDR_LEN, "an RX packet of {len} bytes");
            let at = RX_SLOTS + SLOT * u64::from(id);
            let mut bytes = vec![0; len as usize];
            self.mem
                .read_slice(&mut bytes, GuestAddress(at))
                .expect("RX buffer");
            let header = Header::from_bytes(bytes[..HDR_LEN].try_into().expect("header"));
            self.check_rx(&header, &bytes[HDR_LEN..]);
        }
        for state in self.keys.values_mut() {
            state.credit_before = None;
        }
        assert!(self.stats.open_connections() as usize <= MAX_CONNECTIONS);
    }

    fn check_rx(&mut self, h: &Header, data: &[u8]) {
        if tracing() {
            eprintln!(
                "  to the guest: {:?} {} -> {}, flags {}, {} bytes, credit {}/{}",
                Op::from_u16(h.op),
                h.src_port,
                h.dst_port,
                h.flags,
                data.len(),
                h.buf_alloc,
                h.fwd_cnt
            );
        }
        assert_eq!(
            (h.src_cid, h.dst_cid, h.type_),
            (HOST_CID, GUEST_CID, TYPE_STREAM),
            "{h:?}"
        );
        assert_eq!(h.len as usize, data.len(), "{h:?}");
        let op = Op::from_u16(h.op).unwrap_or_else(|| panic!("unknown op in {h:?}"));
        let key = (h.src_port, h.dst_port);
        self.remember(key);
        match op {
            Op::Request => {
                let state = self.keys.entry(key).or_default();
                state.rx_cnt = Wrapping(0);
                state.guest_sent = 0;
                self.unbind(key);
            }
            // An RST may answer a packet sent before the connection now on
            // its key began: the key stays bound until a new connection
            // takes it (an accept, an OK line).
            Op::Rw => self.check_data(key, data),
            _ => assert!(data.is_empty(), "{op:?} with data"),
        }
    }

    fn check_data(&mut self, key: Key, data: &[u8]) {
        assert!(!data.is_empty(), "an empty RW packet");
        if self.keys.get(&key).and_then(|k| k.socket).is_none() {
            self.read_clients();
        }
        let state = self.keys.entry(key).or_default();
        let s = state
            .socket
            .unwrap_or_else(|| panic!("data for {key:?}, which no host socket is behind"));
        let fits = |(alloc, fwd): (u32, u32), rx: Wrapping<u32>| {
            let in_flight = u64::from((rx - Wrapping(fwd)).0);
            in_flight + data.len() as u64 <= u64::from(alloc)
        };
        assert!(
            fits(state.credit, state.rx_cnt)
                || state.credit_before.is_some_and(|c| fits(c, state.rx_cnt)),
            "{} bytes to {key:?} past the guest's credit {:?} (before {:?}), {} in flight",
            data.len(),
            state.credit,
            state.credit_before,
            (state.rx_cnt - Wrapping(state.credit.1)).0
        );
        state.rx_cnt += Wrapping(data.len() as u32);
        let sock = &mut self.sockets[s];
        assert!(
            sock.delivered + data.len() as u64 <= sock.written,
            "more data than socket {s} was given"
        );
        for (m, &b) in data.iter().enumerate() {
            assert_eq!(
                b,
                pattern(sock.id, sock.delivered + m as u64),
                "socket {s}'s byte {} garbled",
                sock.delivered + m as u64
            );
        }
        sock.delivered += data.len() as u64;
    }

    // ---- the host ----

    fn add_socket(&mut self, stream: UnixStream, side: Side) -> usize {
        let id = self.sockets.len() as u32 + 1;
        self.sockets.push(HostSocket {
            stream: Some(stream),
            side,
            id,
            written: 0,
            delivered: 0,
            received: Vec::new(),
            from_guest: Vec::new(),
            line: Vec::new(),
        });
        self.sockets.len() - 1
    }

    fn bind(&mut self, key: Key, s: usize) {
        self.keys.entry(key).or_default().socket = Some(s);
    }

    fn unbind(&mut self, key: Key) {
        if let Some(state) = self.keys.get_mut(&key) {
            state.socket = None;
            state.guest_sent = 0;
        }
    }

    fn connect(&mut self) {
        if self.sockets.len() >= MAX_SOCKETS {
            return;
        }
        if let Ok(stream) = UnixStream::connect(&self.hybrid) {
            stream.set_nonblocking(true).expect("non-blocking");
            self.add_socket(
                stream,
                Side::Client {
                    port: None,
                    line_sent: false,
                    ok_read: false,
                },
            );
        }
    }

    fn socket(&mut self, input: &mut Input) -> Option<usize> {
        if self.sockets.is_empty() {
            return None;
        }
        Some(usize::from(input.u8()) % self.sockets.len())
    }

    /// Writes up to `len` of socket `s`'s pattern; as much as it takes.
    fn write_pattern(&mut self, s: usize, len: usize) {
        let sock = &mut self.sockets[s];
        let Some(stream) = sock.stream.as_mut() else {
            return;
        };
        let bytes: Vec<u8> = (0..len as u64)
            .map(|m| pattern(sock.id, sock.written + m))
            .collect();
        if let Ok(n) = stream.write(&bytes) {
            sock.written += n as u64;
        }
    }

    fn send_line(&mut self, input: &mut Input) {
        let Some(s) = self.socket(input) else { return };
        let Side::Client {
            line_sent: false, ..
        } = self.sockets[s].side
        else {
            return;
        };
        let port = input.pick(&[1024u32, 1025, 5000, 0]);
        let port = if port == 0 { input.u32() } else { port };
        let line: Vec<u8> = match input.u8() % 6 {
            0 => format!("connect {port}\n").into_bytes(),
            1 => format!("CONNECT {port}").into_bytes(),
            2 => {
                // Any bytes but a newline, then perhaps one.
                let n = usize::from(input.u8() % 48);
                let mut garbage: Vec<u8> =
                    (0..n).map(|_| input.u8()).filter(|&b| b != b'\n').collect();
                if input.u8() % 2 == 1 {
                    garbage.push(b'\n');
                }
                garbage
            }
            _ => format!("CONNECT {port}\n").into_bytes(),
        };
        let port = if line.ends_with(b"\n") {
            parse_connect_line(&line).ok()
        } else {
            None
        };
        let Some(stream) = self.sockets[s].stream.as_mut() else {
            return;
        };
        if stream.write_all(&line).is_err() {
            return;
        }
        self.sockets[s].side = Side::Client {
            port,
            line_sent: true,
            ok_read: false,
        };
        if port.is_some() && input.u8() % 2 == 1 {
            let len = usize::from(input.u16() % 5000);
            self.write_pattern(s, len);
        }
    }

    fn host_write(&mut self, input: &mut Input) {
        let Some(s) = self.socket(input) else { return };
        let len = input.pick(&[1usize, 100, 4096, 64 * 1024, 300 * 1024]);
        match self.sockets[s].side {
            Side::Client { port: Some(_), .. } | Side::Server => self.write_pattern(s, len),
            Side::Client { .. } => {}
        }
    }

    fn host_end(&mut self, input: &mut Input) {
        let Some(s) = self.socket(input) else { return };
        let how = input.u8() % 3;
        // What it has (an OK line naming its connection) before it can read no more.
        self.read_socket(s);
        let sock = &mut self.sockets[s];
        match (how, sock.stream.as_ref()) {
            (0, Some(stream)) => {
                let _ = stream.shutdown(Shutdown::Write);
            }
            (1, Some(stream)) => {
                let _ = stream.shutdown(Shutdown::Both);
            }
            _ => sock.stream = None,
        }
    }

    /// Reads what socket `s` has: its OK line first for a hybrid client,
    /// then the guest's data, checked.
    fn read_socket(&mut self, s: usize) {
        let mut buf = vec![0u8; 128 * 1024];
        loop {
            let Some(stream) = self.sockets[s].stream.as_mut() else {
                return;
            };
            let n = match stream.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => return,
            };
            let mut bytes = &buf[..n];
            if let Side::Client {
                port,
                ok_read: false,
                ..
            } = self.sockets[s].side
            {
                let port = port.expect("a client without a valid CONNECT line was answered");
                let end = bytes.iter().position(|&b| b == b'\n');
                let take = end.map_or(bytes.len(), |e| e + 1);
                self.sockets[s].line.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                let line = &self.sockets[s].line;
                assert!(line.len() <= 32, "a reply line of {} bytes", line.len());
                if end.is_some() {
                    let text = std::str::from_utf8(line).expect("an ASCII reply");
                    let local: u32 = text
                        .strip_prefix("OK ")
                        .and_then(|t| t.strip_suffix('\n'))
                        .and_then(|t| t.parse().ok())
                        .unwrap_or_else(|| panic!("reply {text:?}"));
                    assert!((1 << 30..1 << 31).contains(&local), "local port {local}");
                    self.sockets[s].side = Side::Client {
                        port: Some(port),
                        line_sent: true,
                        ok_read: true,
                    };
                    self.bind((local, port), s);
                }
            }
            let sock = &mut self.sockets[s];
            sock.received.extend_from_slice(bytes);
            assert!(
                sock.from_guest.starts_with(&sock.received),
                "socket {s} read {} bytes that are not the guest's {}",
                sock.received.len(),
                sock.from_guest.len()
            );
        }
    }

    /// Reads the OK lines (and what follows) of the clients yet to get one.
    fn read_clients(&mut self) {
        for s in 0..self.sockets.len() {
            if let Side::Client { ok_read: false, .. } = self.sockets[s].side {
                self.read_socket(s);
            }
        }
    }

    fn host_read(&mut self, input: &mut Input) {
        if let Some(s) = self.socket(input) {
            self.read_socket(s);
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.hybrid);
    }
}

/// One step of the script (its first byte, modulo 8).
#[derive(Debug)]
enum Step {
    GuestSend,
    PostRx,
    Connect,
    SendLine,
    HostWrite,
    HostEnd,
    HostRead,
    Nothing,
}

fuzz_target!(|data: &[u8]| {
    // Whatever the first world opens for good (lazily made statics) is
    // not a leak: one empty run first.
    static WARM: std::sync::Once = std::sync::Once::new();
    WARM.call_once(|| drop(World::new()));
    let baseline = open_fds();
    let mut input = Input(data);
    {
        let mut world = World::new();
        world.settle();
        for _ in 0..MAX_STEPS {
            if input.0.is_empty() {
                break;
            }
            let step = match input.u8() % 8 {
                0 => Step::GuestSend,
                1 => Step::PostRx,
                2 => Step::Connect,
                3 => Step::SendLine,
                4 => Step::HostWrite,
                5 => Step::HostEnd,
                6 => Step::HostRead,
                _ => Step::Nothing,
            };
            if tracing() {
                eprintln!("{step:?}");
            }
            match step {
                Step::GuestSend => world.guest_send(&mut input),
                Step::PostRx => world.post_rx(&mut input),
                Step::Connect => world.connect(),
                Step::SendLine => world.send_line(&mut input),
                Step::HostWrite => world.host_write(&mut input),
                Step::HostEnd => world.host_end(&mut input),
                Step::HostRead => world.host_read(&mut input),
                Step::Nothing => {}
            }
            world.settle();
            world.observe();
        }
        for s in 0..world.sockets.len() {
            world.read_socket(s);
        }
    }
    assert_eq!(open_fds(), baseline, "descriptors left open");
});
