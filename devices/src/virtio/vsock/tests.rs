// SPDX-License-Identifier: Apache-2.0
//! The device driven end to end: real UNIX sockets on the host side, and a
//! "guest" played by this test through split rings in guest memory (TX
//! packets in, RX buffers read back), on the device's own data-path thread.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::packet::{Header, Op, HDR_LEN, HOST_CID, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND};
use super::*;
use crate::irq::IrqLine;
use crate::virtio::{Activation, Interrupt, VirtioDevice};
use crate::GuestMemory;

const CID: u64 = 3;
const RING_SIZE: u16 = 256;
const RX_BUF: u32 = 4096;
const RX_BUFS: u64 = 0x10_0000;
const TX_BUF: u64 = 0x11000;
const TX_BUFS: u64 = 0x40_0000;
const MEM_SIZE: usize = 32 << 20;
/// The receive buffer the test guest advertises per connection.
const GUEST_BUF: u32 = 64 * 1024;
const WAIT: Duration = Duration::from_secs(5);
const LOCAL_PORTS: std::ops::Range<u32> = 1 << 30..1 << 31;

/// A directory of its own, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("ferry-vsock-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).unwrap();
        Self(path)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A split ring, from the driver's side, whose avail index wraps.
struct Ring {
    desc: u64,
    avail: u64,
    used: u64,
    avail_idx: u16,
    used_seen: u16,
    free: Vec<u16>,
}

impl Ring {
    fn new(base: u64) -> Self {
        let size = u64::from(RING_SIZE);
        let avail = base + 16 * size;
        let used = (avail + 4 + 2 * size + 2 + 3) & !3;
        Self {
            desc: base,
            avail,
            used,
            avail_idx: 0,
            used_seen: 0,
            free: (0..RING_SIZE).rev().collect(),
        }
    }

    fn queue(&self) -> Queue {
        let mut q = Queue::new(RING_SIZE).unwrap();
        q.set_size(RING_SIZE);
        let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
        let (lo, hi) = split(self.desc);
        q.set_desc_table_address(lo, hi);
        let (lo, hi) = split(self.avail);
        q.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(self.used);
        q.set_used_ring_address(lo, hi);
        q.set_ready(true);
        q
    }

    /// Makes descriptor `i` (one-descriptor chain) available.
    fn publish(&mut self, mem: &GuestMemory, i: u16, addr: u64, len: u32, flags: u16) {
        let d = GuestAddress(self.desc + 16 * u64::from(i));
        mem.write_obj(addr, d).unwrap();
        mem.write_obj(len, GuestAddress(d.0 + 8)).unwrap();
        mem.write_obj(flags, GuestAddress(d.0 + 12)).unwrap();
        mem.write_obj(0u16, GuestAddress(d.0 + 14)).unwrap();
        let slot = u64::from(self.avail_idx % RING_SIZE);
        mem.write_obj(i, GuestAddress(self.avail + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        fence(Ordering::SeqCst);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// The used entries not seen yet.
    fn take_used(&mut self, mem: &GuestMemory) -> Vec<(u16, u32)> {
        fence(Ordering::SeqCst);
        let idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let slot = u64::from(self.used_seen % RING_SIZE);
            let at = self.used + 4 + 8 * slot;
            let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
            out.push((id as u16, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}

/// The test's guest: its rings, and the packets received not yet looked at.
struct Guest {
    mem: GuestMemory,
    rx: Ring,
    tx: Ring,
    kicks: Vec<EventFd>,
    inbox: VecDeque<(Header, Vec<u8>)>,
    /// Post RX buffers (false: the guest holds them back).
    rx_open: bool,
}

impl Guest {
    fn rx_addr(i: u16) -> u64 {
        RX_BUFS + u64::from(i) * u64::from(RX_BUF)
    }

    fn fill_rx(&mut self) {
        if !self.rx_open {
            return;
        }
        let mut any = false;
        while let Some(i) = self.rx.free.pop() {
            self.rx.publish(&self.mem, i, Self::rx_addr(i), RX_BUF, 2);
            any = true;
        }
        if any {
            self.kicks[0].write(1).unwrap();
        }
    }

    /// Collects what the device used; false if nothing.
    fn poll(&mut self) -> bool {
        let mut any = false;
        for (id, len) in self.rx.take_used(&self.mem) {
            any = true;
            let mut bytes = vec![0u8; len as usize];
            self.mem
                .read_slice(&mut bytes, GuestAddress(Self::rx_addr(id)))
                .unwrap();
            self.rx.free.push(id);
            assert!(len as usize >= HDR_LEN, "an RX packet of {len} bytes");
            let header = Header::from_bytes(bytes[..HDR_LEN].try_into().unwrap());
            assert_eq!(header.len as usize, bytes.len() - HDR_LEN, "{header:?}");
            assert_eq!((header.src_cid, header.dst_cid), (HOST_CID, CID));
            assert_eq!(header.type_, 1);
            self.inbox.push_back((header, bytes.split_off(HDR_LEN)));
        }
        for (id, _) in self.tx.take_used(&self.mem) {
            any = true;
            self.tx.free.push(id);
        }
        self.fill_rx();
        any
    }

    /// Sends a packet as one chain of `len` bytes (the header's `len` and `data` may differ).
    fn send_raw(&mut self, bytes: &[u8], addr: Option<u64>) {
        let deadline = Instant::now() + WAIT;
        let i = loop {
            if let Some(i) = self.tx.free.pop() {
                break i;
            }
            assert!(Instant::now() < deadline, "the TX ring stays full");
            if !self.poll() {
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        let at = addr.unwrap_or(TX_BUFS + u64::from(i) * TX_BUF);
        if addr.is_none() {
            self.mem.write_slice(bytes, GuestAddress(at)).unwrap();
        }
        self.tx.publish(&self.mem, i, at, bytes.len() as u32, 0);
        self.kicks[1].write(1).unwrap();
    }

    fn send(&mut self, header: Header, data: &[u8]) {
        let mut bytes = Header {
            len: data.len() as u32,
            ..header
        }
        .to_bytes()
        .to_vec();
        bytes.extend_from_slice(data);
        self.send_raw(&bytes, None);
    }

    /// The next packet, within `wait`.
    fn recv_within(&mut self, wait: Duration) -> Option<(Header, Vec<u8>)> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(p) = self.inbox.pop_front() {
                return Some(p);
            }
            if !self.poll() {
                if Instant::now() >= deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    fn recv(&mut self) -> (Header, Vec<u8>) {
        self.recv_within(WAIT).expect("a packet from the device")
    }

    /// The next packet, which must be `op`.
    fn expect(&mut self, op: Op) -> Header {
        let (h, _) = self.recv();
        assert_eq!(Op::from_u16(h.op), Some(op), "{h:?}");
        h
    }

    /// Waits until the device used every TX chain given so far.
    fn wait_tx_done(&mut self) {
        let deadline = Instant::now() + WAIT;
        while self.tx.free.len() < RING_SIZE as usize {
            assert!(Instant::now() < deadline, "TX chains not used");
            if !self.poll() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// One connection from the guest's side, with its credit both ways.
#[derive(Debug, Clone, Copy)]
struct GConn {
    /// The guest's port.
    port: u32,
    /// The host side's port.
    host_port: u32,
    /// Bytes consumed (as told the device).
    fwd_cnt: u32,
    /// Bytes received.
    rx_cnt: u32,
    tx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
}

impl GConn {
    fn new(port: u32, host_port: u32) -> Self {
        Self {
            port,
            host_port,
            fwd_cnt: 0,
            rx_cnt: 0,
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
        }
    }

    fn hdr(&self, op: Op, flags: u32) -> Header {
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port: self.port,
            dst_port: self.host_port,
            len: 0,
            type_: 1,
            op: op.to_u16(),
            flags,
            buf_alloc: GUEST_BUF,
            fwd_cnt: self.fwd_cnt,
        }
    }

    fn absorb(&mut self, h: &Header) {
        assert_eq!(
            (h.src_port, h.dst_port),
            (self.host_port, self.port),
            "{h:?}"
        );
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = h.fwd_cnt;
    }

    fn credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    /// Takes a data packet: the device must have stayed within the credit.
    fn take_data(&mut self, data: &[u8]) {
        self.rx_cnt = self.rx_cnt.wrapping_add(data.len() as u32);
        let in_flight = self.rx_cnt.wrapping_sub(self.fwd_cnt);
        assert!(
            in_flight <= GUEST_BUF,
            "the device sent {in_flight} bytes past the guest's consumption, buffer {GUEST_BUF}"
        );
    }

    fn send_data(&mut self, guest: &mut Guest, data: &[u8]) {
        assert!(data.len() as u32 <= self.credit());
        self.tx_cnt = self.tx_cnt.wrapping_add(data.len() as u32);
        guest.send(self.hdr(Op::Rw, 0), data);
    }
}

struct Rig {
    dir: TempDir,
    uds: PathBuf,
    dev: Vsock,
    guest: Guest,
    stats: Arc<VsockStats>,
}

fn rig() -> Rig {
    rig_with(|_, _| {})
}

/// A device set up by `setup`, activated over fresh rings, the RX ring full.
fn rig_with(setup: impl FnOnce(&mut Vsock, &TempDir)) -> Rig {
    let dir = TempDir::new();
    let uds = dir.path("v.sock");
    let mut dev = Vsock::new("vsock-test".into(), CID, &uds).unwrap();
    setup(&mut dev, &dir);
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let guest = activate(&mut dev, mem);
    Rig {
        stats: dev.stats(),
        dir,
        uds,
        dev,
        guest,
    }
}

fn activate(dev: &mut Vsock, mem: GuestMemory) -> Guest {
    // Rings from a previous activation are gone.
    mem.write_slice(&[0u8; 0x3_0000], GuestAddress(0x1_0000))
        .unwrap();
    let rings = [
        Ring::new(0x1_0000),
        Ring::new(0x2_0000),
        Ring::new(0x3_0000),
    ];
    let kicks: Vec<EventFd> = (0..3)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    dev.activate(Activation {
        mem: mem.clone(),
        queues: rings.iter().map(Ring::queue).collect(),
        kicks: kicks.iter().map(|k| k.try_clone().unwrap()).collect(),
        interrupt: Arc::new(Interrupt::new(IrqLine::new(5).unwrap())),
        features: dev.features(),
    })
    .unwrap();
    let [rx, tx, _event] = rings;
    let mut guest = Guest {
        mem,
        rx,
        tx,
        kicks,
        inbox: VecDeque::new(),
        rx_open: true,
    };
    guest.fill_rx();
    guest
}

fn client(uds: &std::path::Path) -> UnixStream {
    let s = UnixStream::connect(uds).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.last() != Some(&b'\n') {
        assert_eq!(s.read(&mut b).unwrap(), 1, "the client was closed");
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

/// Whether the device closed `s` (end of file or reset, within [`WAIT`]).
fn closed(s: &mut UnixStream) -> bool {
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "waited in vain for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(u32::from(seed)) as u8
                ^ seed
        })
        .collect()
}

impl Rig {
    /// A host client connects with `line`; the guest gets the REQUEST for
    /// `port` and accepts. The client has read its `OK` line.
    fn open_from_host(&mut self, line: &str, port: u32) -> (UnixStream, GConn) {
        let mut c = client(&self.uds);
        c.write_all(line.as_bytes()).unwrap();
        let req = self.guest.expect(Op::Request);
        assert_eq!(req.dst_port, port);
        assert!(LOCAL_PORTS.contains(&req.src_port), "{req:?}");
        let mut g = GConn::new(port, req.src_port);
        g.absorb(&req);
        self.guest.send(g.hdr(Op::Response, 0), &[]);
        assert_eq!(read_line(&mut c), format!("OK {}\n", req.src_port));
        (c, g)
    }

    /// Waits until every connection is gone.
    fn wait_no_connections(&self) {
        wait_for("no connection open", || self.stats.open_connections() == 0);
    }
}

#[test]
fn the_device_is_a_socket_device_with_the_guest_cid_in_its_config() {
    let dir = TempDir::new();
    let dev = Vsock::new("v".into(), 0x1234_5678, &dir.path("s")).unwrap();
    assert_eq!(dev.device_type(), 19);
    assert_eq!(dev.queue_max_sizes(), &[256, 256, 256]);
    assert_eq!(dev.features(), crate::virtio::features::COMMON);
    let mut cfg = [0xffu8; 12];
    dev.read_config(0, &mut cfg);
    assert_eq!(cfg, [0x78, 0x56, 0x34, 0x12, 0, 0, 0, 0, 0, 0, 0, 0]);
    let mut high = [0xffu8; 4];
    dev.read_config(4, &mut high);
    assert_eq!(high, [0; 4]);
    assert_eq!(dev.guest_cid(), 0x1234_5678);
}

#[test]
fn the_socket_exists_at_once_is_removed_on_drop_and_a_taken_path_is_refused() {
    let dir = TempDir::new();
    let path = dir.path("v.sock");
    let dev = Vsock::new("v".into(), 3, &path).unwrap();
    assert!(path.exists(), "the socket exists before the guest boots");
    assert!(UnixStream::connect(&path).is_ok());
    assert!(matches!(
        Vsock::new("w".into(), 4, &path),
        Err(VsockError::SocketInUse(p)) if p == path
    ));
    std::fs::write(dir.path("file"), b"x").unwrap();
    assert!(matches!(
        Vsock::new("w".into(), 4, &dir.path("file")),
        Err(VsockError::SocketInUse(_))
    ));
    drop(dev);
    assert!(!path.exists(), "removed with the device");
    assert_eq!(std::fs::read(dir.path("file")).unwrap(), b"x");

    // A file put in its place since is not the device's to remove.
    let mut dev = Vsock::new("v".into(), 3, &path).unwrap();
    let port_path = dir.path("agent.sock");
    dev.add_port_listener(&port_path, 1024).unwrap();
    assert!(port_path.exists());
    assert!(matches!(
        dev.add_port_listener(&port_path, 1),
        Err(VsockError::SocketInUse(_))
    ));
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"new").unwrap();
    drop(dev);
    assert_eq!(std::fs::read(&path).unwrap(), b"new");
    assert!(!port_path.exists());

    for cid in [0, 1, 2, u64::from(u32::MAX) + 1, 1 << 40] {
        assert!(matches!(
            Vsock::new("v".into(), cid, &dir.path("c")),
            Err(VsockError::InvalidCid(c)) if c == cid
        ));
    }
    assert!(!dir.path("c").exists());
    // VMADDR_CID_ANY, as Kata's runtime-rs sends it (Firecracker takes it).
    let any = Vsock::new("v".into(), u64::from(u32::MAX), &dir.path("any")).unwrap();
    assert_eq!(any.guest_cid(), u64::from(u32::MAX));
}

#[test]
fn a_host_connection_carries_megabytes_both_ways_intact() {
    let mut rig = rig();
    let (c, mut g) = rig.open_from_host("CONNECT 52\n", 52);
    const TOTAL: usize = 3 << 20;
    let to_guest = pattern(1, TOTAL);
    let to_host = pattern(2, TOTAL);
    let writer = {
        let mut c = c.try_clone().unwrap();
        let data = to_guest.clone();
        std::thread::spawn(move || c.write_all(&data).unwrap())
    };
    let reader = {
        let mut c = c.try_clone().unwrap();
        let want = to_host.clone();
        std::thread::spawn(move || {
            let mut got = vec![0u8; want.len()];
            c.read_exact(&mut got).unwrap();
            assert!(got == want, "host got the guest's bytes intact");
        })
    };
    let mut got = Vec::with_capacity(TOTAL);
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < TOTAL || sent < TOTAL {
        assert!(
            Instant::now() < deadline,
            "stuck at {} received, {sent} sent",
            got.len()
        );
        let mut idle = true;
        while let Some((h, data)) = rig.guest.recv_within(Duration::ZERO) {
            idle = false;
            g.absorb(&h);
            match Op::from_u16(h.op) {
                Some(Op::Rw) => {
                    g.take_data(&data);
                    got.extend_from_slice(&data);
                    // Consumed at once; the device is told as Linux does.
                    if got.len() as u32 - g.fwd_cnt >= GUEST_BUF / 2 {
                        g.fwd_cnt = got.len() as u32;
                        rig.guest.send(g.hdr(Op::CreditUpdate, 0), &[]);
                    }
                }
                Some(Op::CreditUpdate) => {}
                Some(Op::CreditRequest) => {
                    g.fwd_cnt = got.len() as u32;
                    rig.guest.send(g.hdr(Op::CreditUpdate, 0), &[]);
                }
                other => panic!("unexpected {other:?}: {h:?}"),
            }
        }
        while sent < TOTAL && g.credit() > 0 && !rig.guest.tx.free.is_empty() {
            let n = (g.credit() as usize).min(60_000).min(TOTAL - sent);
            g.send_data(&mut rig.guest, &to_host[sent..sent + n]);
            sent += n;
            idle = false;
        }
        if idle {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    assert!(got == to_guest, "the guest got the host's bytes intact");
    writer.join().unwrap();
    reader.join().unwrap();
    assert_eq!(rig.stats.rx_bytes.load(Ordering::Relaxed), TOTAL as u64);
    assert_eq!(rig.stats.tx_bytes.load(Ordering::Relaxed), TOTAL as u64);
    assert_eq!(rig.stats.host_connections.load(Ordering::Relaxed), 1);

    // The client leaves: the guest is told, answers RST, nothing is left.
    drop(c);
    loop {
        let h = rig.guest.expect(Op::Shutdown);
        if h.flags == SHUTDOWN_BOTH {
            break;
        }
    }
    rig.guest.send(g.hdr(Op::Rst, 0), &[]);
    rig.wait_no_connections();
    assert_eq!(rig.stats.closed.load(Ordering::Relaxed), 1);
    assert_eq!(rig.stats.reset.load(Ordering::Relaxed), 0);
    assert_eq!(rig.stats.malformed.load(Ordering::Relaxed), 0);
}

#[test]
fn a_lowercase_connect_works_and_bytes_after_the_line_are_the_streams() {
    let mut rig = rig();
    let mut c = client(&rig.uds);
    c.write_all(b"connect 1024\nhello").unwrap();
    let req = rig.guest.expect(Op::Request);
    assert_eq!(req.dst_port, 1024);
    let mut g = GConn::new(1024, req.src_port);
    rig.guest.send(g.hdr(Op::Response, 0), &[]);
    let (h, data) = rig.guest.recv();
    assert_eq!(Op::from_u16(h.op), Some(Op::Rw));
    g.absorb(&h);
    assert_eq!(data, b"hello");
    assert_eq!(read_line(&mut c), format!("OK {}\n", req.src_port));
    c.write_all(b" world").unwrap();
    let (h, data) = rig.guest.recv();
    assert_eq!(
        (Op::from_u16(h.op), data.as_slice()),
        (Some(Op::Rw), &b" world"[..])
    );
}

#[test]
fn a_guest_rst_closes_the_client() {
    let mut rig = rig();
    let mut c = client(&rig.uds);
    c.write_all(b"CONNECT 9\n").unwrap();
    let req = rig.guest.expect(Op::Request);
    let g = GConn::new(9, req.src_port);
    rig.guest.send(g.hdr(Op::Rst, 0), &[]);
    assert!(closed(&mut c));
    rig.wait_no_connections();
    assert_eq!(rig.stats.refused.load(Ordering::Relaxed), 1);
}

#[test]
fn a_bad_line_closes_that_client_only() {
    let mut rig = rig();
    let (mut good, mut g) = rig.open_from_host("CONNECT 5\n", 5);
    let mut bad: Vec<UnixStream> = [
        &b"HELLO\n"[..],
        b"CONNECT 4294967296\n",
        b"CONNECT x\n",
        &[b'7'; 40],
    ]
    .iter()
    .map(|line| {
        let mut c = client(&rig.uds);
        c.write_all(line).unwrap();
        c
    })
    .collect();
    for c in &mut bad {
        assert!(closed(c));
    }
    // Silent: closed after the time limit.
    let mut silent = client(&rig.uds);
    silent.write_all(b"CONN").unwrap();
    let started = Instant::now();
    assert!(closed(&mut silent));
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert_eq!(rig.stats.refused.load(Ordering::Relaxed), 5);
    // The good one goes on.
    good.write_all(b"ping").unwrap();
    let (h, data) = rig.guest.recv();
    g.absorb(&h);
    assert_eq!(data, b"ping");
    g.send_data(&mut rig.guest, b"pong");
    let mut buf = [0u8; 4];
    good.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
    assert_eq!(rig.stats.open_connections(), 1);
}

#[test]
fn the_guest_connects_to_a_listening_host_socket_or_gets_an_rst() {
    let mut rig = rig();
    let listener = UnixListener::bind(rig.dir.path("v.sock_1234")).unwrap();
    let mut g = GConn::new(5000, 1234);
    rig.guest.send(g.hdr(Op::Request, 0), &[]);
    let resp = rig.guest.expect(Op::Response);
    g.absorb(&resp);
    assert_eq!(resp.buf_alloc, connection::CONN_BUF);
    let (mut host, _) = listener.accept().unwrap();
    host.set_read_timeout(Some(WAIT)).unwrap();
    g.send_data(&mut rig.guest, b"from the guest");
    let mut buf = [0u8; 14];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"from the guest");
    host.write_all(b"from the host").unwrap();
    let (h, data) = rig.guest.recv();
    assert_eq!(Op::from_u16(h.op), Some(Op::Rw));
    assert_eq!(data, b"from the host");
    assert_eq!(rig.stats.guest_connections.load(Ordering::Relaxed), 1);

    // Nothing listens on port 999: RST.
    let other = GConn::new(5001, 999);
    rig.guest.send(other.hdr(Op::Request, 0), &[]);
    let rst = rig.guest.expect(Op::Rst);
    assert_eq!((rst.src_port, rst.dst_port), (999, 5001));
    assert_eq!(rig.stats.refused.load(Ordering::Relaxed), 1);

    // The host side closes: SHUTDOWN to the guest, then its RST ends it.
    drop(host);
    loop {
        let h = rig.guest.expect(Op::Shutdown);
        if h.flags == SHUTDOWN_BOTH {
            break;
        }
    }
    rig.guest.send(g.hdr(Op::Rst, 0), &[]);
    rig.wait_no_connections();
}

#[test]
fn the_device_sends_no_more_than_the_guests_credit_and_resumes_on_an_update() {
    let mut rig = rig();
    let (mut c, mut g) = rig.open_from_host("CONNECT 7\n", 7);
    // The client writes until its socket is full: the device stops reading
    // once the guest's credit is spent.
    c.set_nonblocking(true).unwrap();
    let chunk = vec![0x5au8; 64 * 1024];
    let mut written = 0usize;
    let deadline = Instant::now() + WAIT;
    loop {
        match c.write(&chunk) {
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                // Give the device time to read on if it would.
                std::thread::sleep(Duration::from_millis(100));
                match c.write(&chunk) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("{e}"),
                }
            }
            Err(e) => panic!("{e}"),
        }
        assert!(
            Instant::now() < deadline && written < 64 << 20,
            "the device reads without end"
        );
    }
    let mut got = 0usize;
    let mut credit_requests = 0;
    while let Some((h, data)) = rig.guest.recv_within(Duration::from_millis(300)) {
        match Op::from_u16(h.op) {
            Some(Op::Rw) => {
                g.take_data(&data);
                got += data.len();
            }
            Some(Op::CreditRequest) => credit_requests += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, GUEST_BUF as usize, "exactly the credit");
    assert_eq!(credit_requests, 1, "one request while starved");
    assert!(written > got, "the rest waits in the client's socket");
    // The guest consumed half: half the buffer more, no more.
    g.fwd_cnt = GUEST_BUF / 2;
    rig.guest.send(g.hdr(Op::CreditUpdate, 0), &[]);
    let mut more = 0usize;
    while let Some((h, data)) = rig.guest.recv_within(Duration::from_millis(300)) {
        if Op::from_u16(h.op) == Some(Op::Rw) {
            g.take_data(&data);
            more += data.len();
        }
    }
    assert_eq!(more, GUEST_BUF as usize / 2);
    // A credit request is answered with the device's credit.
    rig.guest.send(g.hdr(Op::CreditRequest, 0), &[]);
    let h = rig.guest.expect(Op::CreditUpdate);
    assert_eq!((h.buf_alloc, h.fwd_cnt), (connection::CONN_BUF, 0));
    // Everything, with the guest consuming as it goes.
    let mut total = got + more;
    c.set_nonblocking(false).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline);
        g.fwd_cnt = g.rx_cnt;
        rig.guest.send(g.hdr(Op::CreditUpdate, 0), &[]);
        let (h, data) = rig.guest.recv();
        match Op::from_u16(h.op) {
            Some(Op::Rw) => {
                g.take_data(&data);
                total += data.len();
            }
            Some(Op::Shutdown) => {
                assert_eq!(h.flags, SHUTDOWN_SEND);
                break;
            }
            Some(Op::CreditRequest) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(total, written, "all of it, then the client's end");
}

#[test]
fn guest_data_a_slow_host_reader_cannot_take_waits_and_an_overrun_is_reset() {
    let mut rig = rig();
    let (mut c, mut g) = rig.open_from_host("CONNECT 8\n", 8);
    // The client reads nothing: the guest, keeping to its credit, stops.
    let mut sent = 0usize;
    loop {
        while let Some((h, _)) = rig.guest.recv_within(Duration::ZERO) {
            g.absorb(&h);
        }
        if g.credit() == 0 {
            // Updates may still be on their way.
            match rig.guest.recv_within(Duration::from_millis(300)) {
                Some((h, _)) => {
                    g.absorb(&h);
                    continue;
                }
                None => break,
            }
        }
        let n = (g.credit() as usize).min(60_000);
        g.send_data(&mut rig.guest, &pattern(3, n));
        sent += n;
        assert!(sent < 16 << 20, "the device takes without end");
    }
    // The client's socket took some, the device holds its buffer's worth.
    assert!(sent >= connection::CONN_BUF as usize);
    // The client reads: the device tells the guest, which goes on.
    c.set_nonblocking(true).unwrap();
    let mut read = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let deadline = Instant::now() + WAIT;
    while g.credit() == 0 {
        assert!(Instant::now() < deadline, "no credit update");
        if let Ok(n) = c.read(&mut buf) {
            read += n;
        }
        while let Some((h, _)) = rig.guest.recv_within(Duration::ZERO) {
            assert_eq!(Op::from_u16(h.op), Some(Op::CreditUpdate));
            g.absorb(&h);
        }
    }
    assert!(read > 0);
    // A guest that ignores its credit is reset.
    let chunk = vec![1u8; 60_000];
    let deadline = Instant::now() + WAIT;
    let rst = loop {
        assert!(Instant::now() < deadline);
        rig.guest.send(g.hdr(Op::Rw, 0), &chunk);
        if let Some((h, _)) = rig.guest.recv_within(Duration::from_millis(1)) {
            if Op::from_u16(h.op) == Some(Op::Rst) {
                break h;
            }
        }
    };
    assert_eq!((rst.src_port, rst.dst_port), (g.host_port, g.port));
    rig.wait_no_connections();
    assert_eq!(rig.stats.malformed.load(Ordering::Relaxed), 1);
    assert_eq!(rig.stats.reset.load(Ordering::Relaxed), 1);
}

#[test]
fn the_client_shuts_its_write_side_then_the_guest() {
    let mut rig = rig();
    let (mut c, mut g) = rig.open_from_host("CONNECT 6\n", 6);
    c.write_all(b"question").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let (h, data) = rig.guest.recv();
    g.absorb(&h);
    assert_eq!(data, b"question");
    let h = rig.guest.expect(Op::Shutdown);
    assert_eq!(h.flags, SHUTDOWN_SEND, "the host side sends no more");
    g.send_data(&mut rig.guest, b"answer");
    let mut buf = [0u8; 6];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"answer");
    // The guest ends its side: the client reads the end, the device ends
    // the connection.
    rig.guest.send(g.hdr(Op::Shutdown, SHUTDOWN_SEND), &[]);
    assert!(closed(&mut c));
    rig.guest.expect(Op::Rst);
    rig.wait_no_connections();
    assert_eq!(rig.stats.reset.load(Ordering::Relaxed), 0);
}

#[test]
fn the_guest_shuts_its_send_side_then_the_client() {
    let mut rig = rig();
    let (mut c, mut g) = rig.open_from_host("CONNECT 6\n", 6);
    g.send_data(&mut rig.guest, b"request");
    rig.guest.send(g.hdr(Op::Shutdown, SHUTDOWN_SEND), &[]);
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"request", "then the end of the guest's data");
    c.write_all(b"reply").unwrap();
    let (h, data) = rig.guest.recv();
    g.absorb(&h);
    assert_eq!(data, b"reply");
    // Both sides done sending: the device ends the connection (an RST
    // says all a SHUTDOWN would).
    drop(c);
    let (h, _) = rig.guest.recv();
    let h = match Op::from_u16(h.op) {
        Some(Op::Shutdown) => rig.guest.expect(Op::Rst),
        _ => h,
    };
    assert_eq!(Op::from_u16(h.op), Some(Op::Rst));
    rig.wait_no_connections();
}

#[test]
fn a_guest_that_shuts_both_sides_has_its_data_delivered_then_an_rst() {
    let mut rig = rig();
    let (mut c, mut g) = rig.open_from_host("CONNECT 6\n", 6);
    g.send_data(&mut rig.guest, b"last words");
    rig.guest
        .send(g.hdr(Op::Shutdown, SHUTDOWN_RCV | SHUTDOWN_SEND), &[]);
    rig.guest.expect(Op::Rst);
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"last words");
    rig.wait_no_connections();
}

#[test]
fn a_guest_that_does_not_answer_the_host_sides_end_is_reset() {
    let mut rig = rig();
    let (c, _g) = rig.open_from_host("CONNECT 6\n", 6);
    drop(c);
    let h = rig.guest.expect(Op::Shutdown);
    assert_ne!(h.flags & SHUTDOWN_SEND, 0);
    let started = Instant::now();
    loop {
        let (h, _) = rig.guest.recv();
        if Op::from_u16(h.op) == Some(Op::Rst) {
            break;
        }
    }
    assert!(started.elapsed() >= Duration::from_millis(1500));
    rig.wait_no_connections();
}

#[test]
fn two_hundred_connections_move_data_at_once() {
    let mut rig = rig();
    const N: usize = 200;
    const LEN: usize = 16 * 1024;
    let uds = rig.uds.clone();
    let clients: Vec<_> = (0..N)
        .map(|i| {
            let uds = uds.clone();
            std::thread::spawn(move || {
                let mut c = client(&uds);
                c.write_all(format!("CONNECT {}\n", 100 + i).as_bytes())
                    .unwrap();
                let line = read_line(&mut c);
                assert!(line.starts_with("OK "), "{line}");
                let data = pattern(i as u8, LEN);
                c.write_all(&data).unwrap();
                let mut back = vec![0u8; LEN];
                c.read_exact(&mut back).unwrap();
                assert!(back == data, "client {i} got its bytes back");
            })
        })
        .collect();
    // The guest echoes every connection's bytes.
    let mut conns: HashMap<(u32, u32), GConn> = HashMap::new();
    let mut ended = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while ended < N {
        assert!(Instant::now() < deadline, "{ended} of {N} ended");
        let Some((h, data)) = rig.guest.recv_within(Duration::from_millis(10)) else {
            continue;
        };
        let key = (h.dst_port, h.src_port);
        match Op::from_u16(h.op) {
            Some(Op::Request) => {
                let mut g = GConn::new(h.dst_port, h.src_port);
                g.absorb(&h);
                rig.guest.send(g.hdr(Op::Response, 0), &[]);
                conns.insert(key, g);
            }
            Some(Op::Rw) => {
                let g = conns.get_mut(&key).unwrap();
                g.absorb(&h);
                g.take_data(&data);
                g.send_data(&mut rig.guest, &data);
            }
            Some(Op::Shutdown) if h.flags == SHUTDOWN_BOTH => {
                let g = conns.remove(&key).unwrap();
                rig.guest.send(g.hdr(Op::Rst, 0), &[]);
                ended += 1;
            }
            Some(Op::Shutdown | Op::CreditUpdate | Op::CreditRequest) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    for c in clients {
        c.join().unwrap();
    }
    rig.wait_no_connections();
    assert_eq!(rig.stats.host_connections.load(Ordering::Relaxed), N as u64);
    assert_eq!(rig.stats.closed.load(Ordering::Relaxed), N as u64);
    assert_eq!(rig.stats.rx_bytes.load(Ordering::Relaxed), (N * LEN) as u64);
}

#[test]
fn a_reset_drops_every_connection_and_the_device_serves_again() {
    let mut rig = rig();
    let (mut a, _) = rig.open_from_host("CONNECT 1\n", 1);
    let (mut b, _) = rig.open_from_host("CONNECT 2\n", 2);
    let mut pending = client(&rig.uds);
    pending.write_all(b"CONN").unwrap();
    assert_eq!(rig.stats.open_connections(), 2);
    rig.dev.reset();
    assert!(closed(&mut a) && closed(&mut b) && closed(&mut pending));
    assert_eq!(rig.stats.open_connections(), 0);
    assert!(rig.uds.exists(), "the socket outlives a reset");
    // A client that comes while the device is reset waits for the next activation.
    let mut early = client(&rig.uds);
    early.write_all(b"CONNECT 3\n").unwrap();
    let mem = rig.guest.mem.clone();
    rig.guest = activate(&mut rig.dev, mem);
    let req = rig.guest.expect(Op::Request);
    assert_eq!(req.dst_port, 3);
    rig.guest
        .send(GConn::new(3, req.src_port).hdr(Op::Response, 0), &[]);
    assert_eq!(read_line(&mut early), format!("OK {}\n", req.src_port));
}

#[test]
fn past_the_connection_limit_clients_are_closed_and_requests_refused() {
    let mut rig = rig_with(|dev, _| dev.set_max_connections(2));
    let (_a, _) = rig.open_from_host("CONNECT 1\n", 1);
    let (_b, _) = rig.open_from_host("CONNECT 2\n", 2);
    let mut c = client(&rig.uds);
    // The device may have closed it already.
    let _ = c.write_all(b"CONNECT 3\n");
    assert!(closed(&mut c));
    let _listener = UnixListener::bind(rig.dir.path("v.sock_80")).unwrap();
    rig.guest
        .send(GConn::new(9000, 80).hdr(Op::Request, 0), &[]);
    rig.guest.expect(Op::Rst);
    assert_eq!(rig.stats.refused.load(Ordering::Relaxed), 2);
    assert_eq!(rig.stats.open_connections(), 2);
    const { assert!(MAX_CONNECTIONS >= 1024) };
}

#[test]
fn a_port_listener_joins_its_clients_to_one_guest_port_without_a_line() {
    let mut rig = rig_with(|dev, dir| {
        dev.add_port_listener(&dir.path("agent.sock"), 1024)
            .unwrap();
    });
    let mut c = client(&rig.dir.path("agent.sock"));
    c.write_all(b"ttrpc bytes").unwrap();
    let req = rig.guest.expect(Op::Request);
    assert_eq!(req.dst_port, 1024);
    let mut g = GConn::new(1024, req.src_port);
    rig.guest.send(g.hdr(Op::Response, 0), &[]);
    let (h, data) = rig.guest.recv();
    g.absorb(&h);
    assert_eq!(data, b"ttrpc bytes");
    g.send_data(&mut rig.guest, b"reply");
    let mut buf = [0u8; 5];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"reply", "no OK line first");
}

#[test]
fn malformed_packets_are_counted_and_consumed_and_the_device_goes_on() {
    let mut rig = rig();
    let good = GConn::new(5000, 999).hdr(Op::Request, 0);
    let rw = |len: u32| Header { op: 5, len, ..good };
    let cases: Vec<Vec<u8>> = vec![
        good.to_bytes()[..20].to_vec(),
        Header { type_: 2, ..good }.to_bytes().to_vec(),
        Header { op: 0, ..good }.to_bytes().to_vec(),
        Header { op: 9, ..good }.to_bytes().to_vec(),
        rw(100).to_bytes().to_vec(),
        Header { src_cid: 4, ..good }.to_bytes().to_vec(),
        Header { dst_cid: 5, ..good }.to_bytes().to_vec(),
        rw(1 << 20).to_bytes().to_vec(),
    ];
    let n = cases.len() as u64;
    for bytes in &cases {
        rig.guest.send_raw(bytes, None);
    }
    // A chain outside guest memory.
    rig.guest
        .send_raw(&[0u8; HDR_LEN], Some(MEM_SIZE as u64 - 8));
    rig.guest.wait_tx_done();
    wait_for("every malformed packet counted", || {
        rig.stats.malformed.load(Ordering::Relaxed) == n + 1
    });
    assert!(rig.guest.recv_within(Duration::from_millis(100)).is_none());
    // A packet for no connection is answered RST; the device goes on.
    rig.guest.send(GConn::new(5000, 999).hdr(Op::Rw, 0), b"x");
    rig.guest.expect(Op::Rst);
    rig.guest.send(good, &[]);
    rig.guest.expect(Op::Rst);
    assert_eq!(rig.stats.malformed.load(Ordering::Relaxed), n + 1);
}

#[test]
fn the_host_side_waits_while_the_guest_has_no_rx_buffers() {
    let mut rig = rig();
    let (c, mut g) = rig.open_from_host("CONNECT 4\n", 4);
    // The guest holds its buffers back and the device uses up what it has.
    rig.guest.rx_open = false;
    let data = pattern(9, 4 * 1024 * 1024);
    let writer = {
        let mut c = c.try_clone().unwrap();
        let data = data.clone();
        std::thread::spawn(move || c.write_all(&data))
    };
    let mut got = Vec::new();
    while let Some((h, d)) = rig.guest.recv_within(Duration::from_millis(300)) {
        if Op::from_u16(h.op) == Some(Op::CreditRequest) {
            continue;
        }
        assert_eq!(Op::from_u16(h.op), Some(Op::Rw));
        g.take_data(&d);
        got.extend_from_slice(&d);
        // Credit is not what holds the device back here.
        if got.len() as u32 - g.fwd_cnt >= GUEST_BUF / 2 {
            g.fwd_cnt = got.len() as u32;
            rig.guest.send(g.hdr(Op::CreditUpdate, 0), &[]);
        }
    }
    assert!(got.len() > GUEST_BUF as usize, "credit was given");
    assert!(got.len() <= RING_SIZE as usize * (RX_BUF as usize - HDR_LEN));
    assert!(!writer.is_finished(), "the client is held back");
    // Buffers again, credit as it goes: everything arrives, in order.
    rig.guest.rx_open = true;
    rig.guest.fill_rx();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < data.len() {
        assert!(Instant::now() < deadline);
        if got.len() as u32 - g.fwd_cnt >= GUEST_BUF / 2 {
            g.fwd_cnt = got.len() as u32;
            rig.guest.send(g.hdr(Op::CreditUpdate, 0), &[]);
        }
        let (h, d) = rig.guest.recv();
        match Op::from_u16(h.op) {
            Some(Op::Rw) => {
                g.take_data(&d);
                got.extend_from_slice(&d);
            }
            Some(Op::CreditRequest) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(got == data);
    writer.join().unwrap().unwrap();
    c.shutdown(Shutdown::Both).unwrap();
}
