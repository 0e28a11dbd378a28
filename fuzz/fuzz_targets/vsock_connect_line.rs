// SPDX-License-Identifier: Apache-2.0
//! A host client's first line on the hybrid vsock socket, and one
//! connection's state and credit.
//!
//! Input: byte 0 is the line's length (`% 48`), byte 1 the sizes of the
//! pieces it arrives in, then the line, then operations on a
//! `Connection` over a socket pair (one byte each, most with a u16 LE
//! argument): credit from the guest, the host client writing, the guest
//! reading, the guest sending, flushing, the client reading, dropping what
//! waits, a header to the guest, a shutdown from the guest, a prefix, and
//! state flags.
//!
//! Checked: `parse_connect_line` against a plain reading of the format
//! (`connect` in any case, one space, decimal digits that fit a u32, a
//! newline, 32 bytes at most); `LineBuffer` gives the same verdict however
//! the line is cut, with the bytes after the newline as the stream's
//! start. On the connection: the guest never gets more than its credit,
//! the bytes each way arrive whole and in order (the client's prefix
//! first), guest data beyond the device's buffer is refused, and the
//! credit counters, room and predicates agree with a model.

#![no_main]

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

use ferry_devices::virtio::vsock::connect_line::{
    parse_connect_line, ConnectLineError, LineBuffer, LineState, MAX_CONNECT_LINE,
};
use ferry_devices::virtio::vsock::connection::{
    ConnKey, Connection, DataError, Origin, CONN_BUF, CREDIT_UPDATE_THRESHOLD,
};
use ferry_devices::virtio::vsock::packet::{Header, Op, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND};
use ferry_fuzz::pattern;
use libfuzzer_sys::fuzz_target;

/// The CONNECT line read plainly.
fn reference(line: &[u8]) -> Result<u32, ConnectLineError> {
    if line.len() > MAX_CONNECT_LINE {
        return Err(ConnectLineError::TooLong);
    }
    let Some(line) = line.strip_suffix(b"\n") else {
        return Err(ConnectLineError::NotConnect);
    };
    if line.len() < 7 || !line[..7].eq_ignore_ascii_case(b"connect") || line.get(7) != Some(&b' ') {
        return Err(ConnectLineError::NotConnect);
    }
    let digits = &line[8..];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(ConnectLineError::BadPort);
    }
    let mut value = 0u64;
    for &d in digits {
        value = value * 10 + u64::from(d - b'0');
        if value > u64::from(u32::MAX) {
            return Err(ConnectLineError::BadPort);
        }
    }
    Ok(value as u32)
}

fn check_line(line: &[u8], piece_seed: u8) {
    let verdict = parse_connect_line(line);
    assert_eq!(verdict, reference(line), "line {line:?}");

    // Pieces of 1 to 8 bytes, as the seed says, the last ones whatever is left.
    let sizes = [
        usize::from(piece_seed & 7) + 1,
        usize::from((piece_seed >> 3) & 7) + 1,
        usize::from(piece_seed >> 6) * 16 + 1,
    ];
    let newline = line.iter().position(|&b| b == b'\n');
    let mut buf = LineBuffer::default();
    let mut at = 0;
    let mut i = 0;
    let mut outcome = Ok(LineState::Incomplete);
    while at < line.len() {
        let n = sizes[i % sizes.len()].min(line.len() - at);
        i += 1;
        outcome = buf.push(&line[at..at + n]);
        at += n;
        if outcome != Ok(LineState::Incomplete) {
            break;
        }
        assert!(
            at < MAX_CONNECT_LINE,
            "no verdict after {at} bytes without a newline"
        );
    }
    match newline {
        Some(nl) => {
            let want = match reference(&line[..=nl]) {
                Ok(port) => Ok(LineState::Connect {
                    port,
                    rest: line[nl + 1..at].to_vec(),
                }),
                Err(e) => Err(e),
            };
            // A line that ran past the limit before its newline came is
            // too long, whatever follows.
            let want = if nl >= MAX_CONNECT_LINE {
                Err(ConnectLineError::TooLong)
            } else {
                want
            };
            assert_eq!(outcome, want, "line {line:?} in pieces {sizes:?}");
        }
        None if line.len() >= MAX_CONNECT_LINE => {
            assert_eq!(outcome, Err(ConnectLineError::TooLong));
        }
        None => assert_eq!(outcome, Ok(LineState::Incomplete)),
    }
}

/// What the model knows of the connection.
#[derive(Default)]
struct Model {
    prefix: VecDeque<u8>,
    /// Bytes the client wrote that the device has not read.
    from_host: VecDeque<u8>,
    /// Guest bytes the device took for the client and the client has not read.
    to_host: VecDeque<u8>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    rx_cnt: Wrapping<u32>,
    /// Guest bytes the device took (sent, waiting or dropped), ever.
    taken: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    client_shut: bool,
}

impl Model {
    fn credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub((self.rx_cnt - self.peer_fwd_cnt).0)
    }
}

fn pending(c: &Connection) -> usize {
    CONN_BUF as usize - c.tx_room()
}

fn check_state(c: &Connection, m: &Model) {
    assert!(c.tx_room() <= CONN_BUF as usize);
    assert_eq!(c.has_pending_tx(), pending(c) > 0);
    assert_eq!(c.peer_credit(), m.credit());
    let receives = c.established && !c.host_gone && c.guest_shut & SHUTDOWN_RCV == 0;
    assert_eq!(
        c.has_prefix(),
        !m.prefix.is_empty() && receives && m.credit() > 0
    );
    assert_eq!(
        c.wants_host_data(),
        receives && !c.host_eof && m.prefix.is_empty() && m.credit() > 0
    );
    assert_eq!(
        c.reading_done(),
        c.host_eof || c.guest_shut & SHUTDOWN_RCV != 0
    );
    // The device counts a byte it took once it went to the socket or was
    // dropped: everything taken but what waits.
    let fwd_cnt = m.taken - Wrapping(pending(c) as u32);
    let believed = CONN_BUF.saturating_sub((m.taken - m.last_fwd_cnt_sent).0);
    assert_eq!(
        c.credit_update_due(),
        believed < CREDIT_UPDATE_THRESHOLD && fwd_cnt != m.last_fwd_cnt_sent
    );
}

fn run_connection(ops: &[u8], origin_bits: u8) {
    let (ours, mut client) = UnixStream::pair().expect("socket pair");
    ours.set_nonblocking(true).expect("non-blocking");
    client.set_nonblocking(true).expect("non-blocking");
    let key = ConnKey {
        local_port: 1 << 30,
        peer_port: 1024,
    };
    let origin = if origin_bits & 1 != 0 {
        Origin::Host {
            reply_ok: origin_bits & 2 != 0,
        }
    } else {
        Origin::Guest
    };
    let mut c = Connection::new(ours, key, 7, origin);
    assert_eq!(c.established, origin == Origin::Guest);
    let mut m = Model::default();
    let mut buf = vec![0u8; 1 << 16];
    let mut rest = ops;
    let mut step = 0u8;
    while let Some((&op, tail)) = rest.split_first() {
        let arg = match tail {
            [a, b, ..] => u16::from_le_bytes([*a, *b]),
            [a] => u16::from(*a),
            [] => 0,
        };
        rest = tail.get(2..).unwrap_or(&[]);
        step = step.wrapping_add(1);
        match op % 12 {
            0 => {
                // Credit from the guest: its buffer, and how far it read.
                let header = Header {
                    buf_alloc: u32::from(arg) * 8,
                    fwd_cnt: (m.rx_cnt - Wrapping(u32::from(op >> 4) * 97)).0,
                    ..Header::default()
                };
                c.update_peer_credit(&header);
                m.peer_buf_alloc = header.buf_alloc;
                m.peer_fwd_cnt = Wrapping(header.fwd_cnt);
                if m.credit() > 0 {
                    assert!(!c.credit_requested);
                }
            }
            1 => {
                // The client writes.
                if m.client_shut {
                    continue;
                }
                let bytes = pattern(step, usize::from(arg % 8192));
                match client.write(&bytes) {
                    Ok(n) => m.from_host.extend(&bytes[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("client write: {e}"),
                }
            }
            2 => {
                // The guest reads, within its credit.
                let want = usize::from(arg).min(buf.len());
                let credit = m.credit() as usize;
                match c.read_for_guest(&mut buf[..want]) {
                    Ok(n) => {
                        assert!(n <= want.min(credit), "{n} bytes read with credit {credit}");
                        let source = if m.prefix.is_empty() {
                            &mut m.from_host
                        } else {
                            &mut m.prefix
                        };
                        let expect: Vec<u8> = source.drain(..n.min(source.len())).collect();
                        assert_eq!(&buf[..n], expect.as_slice(), "the guest got other bytes");
                        if n == 0 && want.min(credit) > 0 {
                            assert!(
                                m.client_shut && m.from_host.is_empty(),
                                "a false end of file"
                            );
                        }
                        m.rx_cnt += Wrapping(n as u32);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        assert!(m.prefix.is_empty() && m.from_host.is_empty() && !m.client_shut);
                    }
                    Err(e) => panic!("read_for_guest: {e}"),
                }
            }
            3 => {
                // The guest sends.
                let data = pattern(step, usize::from(arg) * 4);
                let room = c.tx_room();
                let gone = c.host_gone || c.host_write_shut;
                match c.take_guest_data(&data) {
                    Ok(()) => {
                        assert!(data.len() <= room);
                        m.taken += Wrapping(data.len() as u32);
                        if !gone {
                            m.to_host.extend(&data);
                        }
                    }
                    Err(DataError::Overrun { len, room: r }) => {
                        assert!(data.len() > room);
                        assert_eq!((len, r), (data.len(), room));
                        assert_eq!(c.tx_room(), room);
                    }
                    Err(e) => panic!("take_guest_data: {e}"),
                }
            }
            4 => {
                let before = pending(&c);
                let done = c.flush().expect("flush");
                assert_eq!(done, pending(&c) == 0);
                assert!(pending(&c) <= before);
            }
            5 => {
                // The client reads what reached the socket.
                let want = usize::from(arg).min(buf.len());
                match client.read(&mut buf[..want]) {
                    Ok(0) if want > 0 => {
                        assert!(c.host_write_shut && m.to_host.len() == pending(&c));
                    }
                    Ok(n) => {
                        let expect: Vec<u8> = m.to_host.drain(..n.min(m.to_host.len())).collect();
                        assert_eq!(&buf[..n], expect.as_slice(), "the client got other bytes");
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("client read: {e}"),
                }
            }
            6 => {
                let dropped = pending(&c);
                c.drop_pending_tx();
                assert_eq!(pending(&c), 0);
                let keep = m.to_host.len() - dropped;
                m.to_host.truncate(keep);
            }
            7 => {
                let h = c.header(u64::from(arg) + 3, Op::CreditUpdate, 0);
                let fwd = m.taken - Wrapping(pending(&c) as u32);
                assert_eq!(h.fwd_cnt, fwd.0, "fwd_cnt is not what went to the client");
                assert_eq!((h.src_cid, h.dst_cid), (HOST_CID, u64::from(arg) + 3));
                assert_eq!((h.src_port, h.dst_port), (key.local_port, key.peer_port));
                assert_eq!(h.buf_alloc, CONN_BUF);
                m.last_fwd_cnt_sent = fwd;
                assert!(!c.credit_update_due(), "due right after the guest was told");
            }
            8 => {
                c.guest_shut |= u32::from(arg) & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                let was = c.host_write_shut;
                c.shut_host_write_if_due();
                let due = c.guest_shut & SHUTDOWN_SEND != 0 && pending(&c) == 0;
                assert_eq!(c.host_write_shut, was || due);
            }
            9 => {
                let bytes = pattern(step, usize::from(arg % 64));
                c.set_prefix(bytes.clone());
                m.prefix = bytes.into();
            }
            10 => {
                c.established |= arg & 1 != 0;
                c.host_eof = arg & 2 != 0;
                c.host_gone |= arg & 4 != 0;
                c.credit_requested = arg & 8 != 0;
            }
            _ => {
                if arg & 1 != 0 && !m.client_shut {
                    client.shutdown(Shutdown::Write).expect("client shutdown");
                    m.client_shut = true;
                }
            }
        }
        check_state(&c, &m);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&len, rest)) = data.split_first() else {
        return;
    };
    let Some((&pieces, rest)) = rest.split_first() else {
        return;
    };
    let (line, ops) = rest.split_at(rest.len().min(usize::from(len % 48)));
    check_line(line, pieces);
    run_connection(ops, pieces);
});
