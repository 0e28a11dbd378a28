// SPDX-License-Identifier: Apache-2.0
//! One stream connection between a guest vsock socket and a host UNIX
//! socket: its state (handshake, which directions each side shut), the
//! credit accounting both ways, and the guest's data the host socket has
//! not taken yet.
//!
//! Credit (virtio 1.2, 5.10.6.3): the device advertises a fixed buffer of
//! [`CONN_BUF`] bytes per connection (`buf_alloc`) and counts the guest's
//! bytes it passed on to the host socket (`fwd_cnt`); the guest never has
//! more than `buf_alloc` bytes in flight, so what the device holds for a
//! slow host reader stays within that buffer. The other way, the device
//! sends the guest at most `peer_buf_alloc - (rx_cnt - peer_fwd_cnt)`
//! bytes: it reads the host socket only that far.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use super::packet::{Header, Op, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};

/// The receive buffer the device advertises per connection (`buf_alloc`).
pub const CONN_BUF: u32 = 256 * 1024;

/// The guest is sent a credit update when it believes the device has less
/// than this much room left (and the device has more).
pub const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF / 2;

/// A connection's ports: the host side's (the device's) and the guest's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// The host side's port.
    pub local_port: u32,
    /// The guest's port.
    pub peer_port: u32,
}

impl ConnKey {
    /// The connection a guest packet belongs to.
    pub fn of_guest_packet(header: &Header) -> Self {
        Self {
            local_port: header.dst_port,
            peer_port: header.src_port,
        }
    }
}

impl std::fmt::Display for ConnKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "host:{} <-> guest:{}", self.local_port, self.peer_port)
    }
}

/// Who opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A host client; the guest must answer the REQUEST. `reply_ok`: the
    /// client gets `OK <port>\n` (the hybrid socket), or nothing (a port
    /// listener).
    Host {
        /// Whether to write `OK <local port>\n` to the client.
        reply_ok: bool,
    },
    /// The guest.
    Guest,
}

/// Why guest data could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The guest sent more than its credit.
    #[error("the guest sent {len} bytes with {room} bytes of credit")]
    Overrun {
        /// Bytes sent.
        len: usize,
        /// Room left.
        room: usize,
    },
    /// The host socket failed.
    #[error("host socket: {0}")]
    Host(#[source] io::Error),
}

/// One connection.
#[derive(Debug)]
pub struct Connection {
    /// The host socket.
    pub stream: UnixStream,
    /// Its ports.
    pub key: ConnKey,
    /// Its event token.
    pub token: u32,
    /// Who opened it.
    pub origin: Origin,
    /// The handshake is done (a host-opened connection waits for the
    /// guest's RESPONSE).
    pub established: bool,
    /// Shutdown flags the guest sent (ORed).
    pub guest_shut: u32,
    /// The host socket reached end of file: the client sends no more.
    pub host_eof: bool,
    /// The host socket is gone both ways: the guest was told to end, and
    /// the device waits for its RST (until [`Connection::deadline`]).
    pub host_gone: bool,
    /// The host socket's write side is shut (the guest shut its SEND).
    pub host_write_shut: bool,
    /// When the device gives up waiting (for the guest's RESPONSE, or its
    /// RST after the host side ended) and resets the connection.
    pub deadline: Option<Instant>,
    /// Bytes the client sent after its CONNECT line, for the guest first.
    prefix: Vec<u8>,
    /// Guest data the host socket has not taken yet.
    txbuf: VecDeque<u8>,
    /// The guest's buffer (`buf_alloc`), as it last said.
    peer_buf_alloc: u32,
    /// The guest's `fwd_cnt`, as it last said.
    peer_fwd_cnt: Wrapping<u32>,
    /// Data bytes sent to the guest, ever.
    rx_cnt: Wrapping<u32>,
    /// Guest data bytes passed on to the host socket, ever.
    fwd_cnt: Wrapping<u32>,
    /// The `fwd_cnt` the guest was last told.
    last_fwd_cnt_sent: Wrapping<u32>,
    /// A CREDIT_UPDATE is queued for the guest.
    pub credit_update_queued: bool,
    /// A CREDIT_REQUEST was sent since the guest last gave credit.
    pub credit_requested: bool,
    /// The connection is in the muxer's queue of connections with data for the guest.
    pub in_rx_queue: bool,
    /// What the event loop watches on the host socket (`None`: not registered).
    pub interest: Option<event_manager::EventSet>,
}

impl Connection {
    /// A connection over `stream` (non-blocking), ports `key`, opened by `origin`.
    pub fn new(stream: UnixStream, key: ConnKey, token: u32, origin: Origin) -> Self {
        Self {
            stream,
            key,
            token,
            origin,
            established: origin == Origin::Guest,
            guest_shut: 0,
            host_eof: false,
            host_gone: false,
            host_write_shut: false,
            deadline: None,
            prefix: Vec::new(),
            txbuf: VecDeque::new(),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            credit_update_queued: false,
            credit_requested: false,
            in_rx_queue: false,
            interest: None,
        }
    }

    /// Bytes the client sent after its CONNECT line: the guest gets them first.
    pub fn set_prefix(&mut self, prefix: Vec<u8>) {
        self.prefix = prefix;
    }

    /// A header from the device to the guest on this connection, with the
    /// device's current credit (which the guest now knows).
    pub fn header(&mut self, guest_cid: u64, op: Op, flags: u32) -> Header {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.key.local_port,
            dst_port: self.key.peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op: op.to_u16(),
            flags,
            buf_alloc: CONN_BUF,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// Takes the credit in a packet from the guest.
    pub fn update_peer_credit(&mut self, header: &Header) {
        self.peer_buf_alloc = header.buf_alloc;
        self.peer_fwd_cnt = Wrapping(header.fwd_cnt);
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
    }

    /// Bytes the guest can take now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether the guest may still receive data on this connection.
    fn guest_receives(&self) -> bool {
        self.established && !self.host_gone && self.guest_shut & SHUTDOWN_RCV == 0
    }

    /// Whether the connection has bytes for the guest that need no read
    /// (the client's bytes after its CONNECT line), and credit for them.
    pub fn has_prefix(&self) -> bool {
        !self.prefix.is_empty() && self.guest_receives() && self.peer_credit() > 0
    }

    /// Whether the host socket should be read now (with RX buffers at hand):
    /// the guest takes data, has credit, and the client has not ended.
    pub fn wants_host_data(&self) -> bool {
        self.guest_receives() && !self.host_eof && self.prefix.is_empty() && self.peer_credit() > 0
    }

    /// Whether the device is done reading the host socket for good (its
    /// end of file came, or the guest receives no more): a hang-up then
    /// means the client is gone.
    pub fn reading_done(&self) -> bool {
        self.host_eof || self.guest_shut & SHUTDOWN_RCV != 0
    }

    /// Whether guest data waits for the host socket.
    pub fn has_pending_tx(&self) -> bool {
        !self.txbuf.is_empty()
    }

    /// Reads data for the guest into `buf` (at most the guest's credit):
    /// the client's prefix first, then the socket. `Ok(0)` is the socket's
    /// end of file.
    pub fn read_for_guest(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let max = buf.len().min(self.peer_credit() as usize);
        let n = if !self.prefix.is_empty() {
            let n = max.min(self.prefix.len());
            buf[..n].copy_from_slice(&self.prefix[..n]);
            self.prefix.drain(..n);
            n
        } else {
            loop {
                match self.stream.read(&mut buf[..max]) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other?,
                }
            }
        };
        self.rx_cnt += Wrapping(n as u32);
        Ok(n)
    }

    /// Room left in the device's buffer for the guest's data.
    pub fn tx_room(&self) -> usize {
        CONN_BUF as usize - self.txbuf.len()
    }

    /// Takes data the guest sent: straight to the host socket if nothing
    /// waits before it, the rest kept for later. Data for a host socket
    /// that is gone (or shut for writing) is counted and dropped.
    pub fn take_guest_data(&mut self, data: &[u8]) -> Result<(), DataError> {
        if data.len() > self.tx_room() {
            return Err(DataError::Overrun {
                len: data.len(),
                room: self.tx_room(),
            });
        }
        if self.host_gone || self.host_write_shut {
            self.fwd_cnt += Wrapping(data.len() as u32);
            return Ok(());
        }
        let mut written = 0;
        if self.txbuf.is_empty() {
            written = write_some(&mut self.stream, data).map_err(DataError::Host)?;
            self.fwd_cnt += Wrapping(written as u32);
        }
        self.txbuf.extend(&data[written..]);
        Ok(())
    }

    /// Writes what waits to the host socket; whether all of it went.
    pub fn flush(&mut self) -> io::Result<bool> {
        while !self.txbuf.is_empty() {
            let (front, _) = self.txbuf.as_slices();
            let n = write_some(&mut self.stream, front)?;
            if n == 0 {
                return Ok(false);
            }
            self.txbuf.drain(..n);
            self.fwd_cnt += Wrapping(n as u32);
        }
        // Release the memory of a buffer that filled up.
        if self.txbuf.capacity() > 64 * 1024 {
            self.txbuf.shrink_to(0);
        }
        Ok(true)
    }

    /// Whether the guest should be told the device's credit: it believes
    /// the device has little room left, and the device has more.
    pub fn credit_update_due(&self) -> bool {
        let received = self.fwd_cnt + Wrapping(self.txbuf.len() as u32);
        let believed_room = CONN_BUF.saturating_sub((received - self.last_fwd_cnt_sent).0);
        believed_room < CREDIT_UPDATE_THRESHOLD && self.fwd_cnt != self.last_fwd_cnt_sent
    }

    /// Shuts the host socket's write side once the guest's data is out,
    /// if the guest shut its SEND side.
    pub fn shut_host_write_if_due(&mut self) {
        if self.guest_shut & SHUTDOWN_SEND != 0 && self.txbuf.is_empty() && !self.host_write_shut {
            self.host_write_shut = true;
            if let Err(e) = self.stream.shutdown(Shutdown::Write) {
                log::debug!("vsock {}: shutdown: {e}", self.key);
            }
        }
    }

    /// The host socket is gone: what waited for it is dropped.
    pub fn drop_pending_tx(&mut self) {
        let n = self.txbuf.len();
        self.txbuf = VecDeque::new();
        self.fwd_cnt += Wrapping(n as u32);
    }
}

/// Writes what the socket takes now: 0 if it is full.
fn write_some(stream: &mut UnixStream, data: &[u8]) -> io::Result<usize> {
    loop {
        match stream.write(data) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection() -> (Connection, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let key = ConnKey {
            local_port: 1 << 30,
            peer_port: 52,
        };
        (Connection::new(ours, key, 7, Origin::Guest), theirs)
    }

    fn credit(buf_alloc: u32, fwd_cnt: u32) -> Header {
        Header {
            buf_alloc,
            fwd_cnt,
            ..Header::default()
        }
    }

    #[test]
    fn the_guest_gets_no_more_than_its_credit() {
        let (mut c, mut peer) = connection();
        assert_eq!(c.peer_credit(), 0, "no credit before the guest says");
        assert!(!c.wants_host_data());
        c.update_peer_credit(&credit(1000, 0));
        assert!(c.wants_host_data());
        peer.write_all(&[1; 3000]).unwrap();
        let mut buf = [0u8; 4096];
        assert_eq!(c.read_for_guest(&mut buf).unwrap(), 1000);
        assert_eq!(c.peer_credit(), 0);
        assert!(!c.wants_host_data(), "no credit: the socket is left alone");
        // The guest consumed 600 bytes.
        c.update_peer_credit(&credit(1000, 600));
        assert_eq!(c.peer_credit(), 600);
        assert_eq!(c.read_for_guest(&mut buf).unwrap(), 600);
        // A guest that shrinks its buffer below what is in flight has none.
        c.update_peer_credit(&credit(100, 600));
        assert_eq!(c.peer_credit(), 0);
        // Counters wrap.
        c.rx_cnt = Wrapping(u32::MAX - 10);
        c.update_peer_credit(&credit(1000, u32::MAX - 10));
        assert_eq!(c.peer_credit(), 1000);
        assert_eq!(c.read_for_guest(&mut buf).unwrap(), 1000);
        c.update_peer_credit(&credit(1000, (u32::MAX - 10).wrapping_add(1000)));
        assert_eq!(c.peer_credit(), 1000);
    }

    #[test]
    fn the_prefix_goes_first_within_credit() {
        let (mut c, mut peer) = connection();
        c.set_prefix(b"hello".to_vec());
        peer.write_all(b" world").unwrap();
        c.update_peer_credit(&credit(3, 0));
        assert!(c.has_prefix() && !c.wants_host_data());
        let mut buf = [0u8; 64];
        assert_eq!(c.read_for_guest(&mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"hel");
        c.update_peer_credit(&credit(100, 3));
        assert_eq!(c.read_for_guest(&mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], b"lo");
        assert!(c.wants_host_data());
        assert_eq!(c.read_for_guest(&mut buf).unwrap(), 6);
        assert_eq!(&buf[..6], b" world");
    }

    #[test]
    fn guest_data_a_full_socket_cannot_take_waits_within_the_buffer() {
        let (mut c, mut peer) = connection();
        let chunk = vec![5u8; 64 * 1024];
        let mut sent = 0;
        // Until the socket is full and the buffer holds the rest.
        while c.tx_room() >= chunk.len() {
            c.take_guest_data(&chunk).unwrap();
            sent += chunk.len();
        }
        assert!(c.has_pending_tx());
        let room = c.tx_room();
        let too_much = vec![0u8; room + 1];
        assert!(matches!(
            c.take_guest_data(&too_much),
            Err(DataError::Overrun { .. })
        ));
        // The guest believes the device full: a credit update is due once
        // the host reads.
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        peer.set_nonblocking(true).unwrap();
        loop {
            let _ = c.flush().unwrap();
            match peer.read(&mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !c.has_pending_tx() {
                        break;
                    }
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got.len(), sent);
        assert_eq!(c.fwd_cnt.0 as usize, sent);
        assert!(c.credit_update_due());
        let h = c.header(3, Op::CreditUpdate, 0);
        assert_eq!((h.buf_alloc, h.fwd_cnt), (CONN_BUF, sent as u32));
        assert!(!c.credit_update_due(), "the guest was told");
    }

    #[test]
    fn the_host_write_side_is_shut_after_the_pending_data() {
        let (mut c, mut peer) = connection();
        c.txbuf.extend(b"tail");
        c.guest_shut = SHUTDOWN_SEND;
        c.shut_host_write_if_due();
        assert!(!c.host_write_shut, "data first");
        assert!(c.flush().unwrap());
        c.shut_host_write_if_due();
        assert!(c.host_write_shut);
        let mut got = Vec::new();
        peer.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"tail");
    }
}
