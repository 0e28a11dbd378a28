// SPDX-License-Identifier: Apache-2.0
//! Host-side peers for the network tests: TCP sink and source, UDP echo,
//! passt process lookups, and the frames in the recording relay's record.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, UdpSocket};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The guest's view of the host: passt's gateway address maps to the host's loopback.
pub const GATEWAY: &str = "192.0.2.254";

/// What a TCP peer received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Bytes.
    pub bytes: u64,
    /// Their sha256, in hex.
    pub sha256: String,
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Accepts one connection on 127.0.0.1 (port returned) and reads it to
/// the end, or until `expect` bytes came, then closes it (so that a guest
/// waiting for the close knows every byte arrived). `on_progress` sees the
/// running byte count after each read.
pub fn tcp_sink(
    timeout: Duration,
    expect: Option<u64>,
    on_progress: impl FnMut(u64) + Send + 'static,
) -> (u16, JoinHandle<Result<Received, String>>) {
    tcp_sink_on("127.0.0.1", timeout, expect, on_progress)
}

/// [`tcp_sink`] on address `ip` (of the calling thread's network namespace).
pub fn tcp_sink_on(
    ip: &str,
    timeout: Duration,
    expect: Option<u64>,
    mut on_progress: impl FnMut(u64) + Send + 'static,
) -> (u16, JoinHandle<Result<Received, String>>) {
    let listener = TcpListener::bind((ip, 0)).expect("bind a port");
    let port = listener.local_addr().expect("its address").port();
    let handle = std::thread::spawn(move || {
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + timeout;
        let mut conn = loop {
            match listener.accept() {
                Ok((c, _)) => break c,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => return Err(format!("no connection from the guest: {e}")),
            }
        };
        conn.set_nonblocking(false).map_err(|e| e.to_string())?;
        conn.set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match conn.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    bytes += n as u64;
                    on_progress(bytes);
                    if Some(bytes) >= expect && expect.is_some() {
                        break;
                    }
                }
                // A reset ends the transfer; the byte count tells the rest.
                Err(_) => break,
            }
        }
        Ok(Received {
            bytes,
            sha256: hex(&hasher.finalize()),
        })
    });
    (port, handle)
}

/// Deterministic data: `len` bytes of a xorshift stream.
pub fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The sha256 of `data`, in hex.
pub fn sha256(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Sends `data` to 127.0.0.1:`port` until one whole send succeeds (the
/// guest may not listen yet) or `timeout` passes; then waits for the peer to close.
pub fn tcp_source(port: u16, data: Vec<u8>, timeout: Duration) -> JoinHandle<Result<u32, String>> {
    tcp_source_paced(port, data, usize::MAX, Duration::ZERO, timeout)
}

/// [`tcp_source`] to `ip`:`port`.
pub fn tcp_source_to(
    ip: &str,
    port: u16,
    data: Vec<u8>,
    timeout: Duration,
) -> JoinHandle<Result<u32, String>> {
    source(
        ip.to_string(),
        port,
        data,
        usize::MAX,
        Duration::ZERO,
        timeout,
    )
}

/// Like [`tcp_source`], but sends `data` in pieces of `piece` bytes with a
/// `pause` after each: the transfer lasts at least that long however fast
/// the machine is.
pub fn tcp_source_paced(
    port: u16,
    data: Vec<u8>,
    piece: usize,
    pause: Duration,
    timeout: Duration,
) -> JoinHandle<Result<u32, String>> {
    source("127.0.0.1".into(), port, data, piece, pause, timeout)
}

fn source(
    ip: String,
    port: u16,
    data: Vec<u8>,
    piece: usize,
    pause: Duration,
    timeout: Duration,
) -> JoinHandle<Result<u32, String>> {
    std::thread::spawn(move || {
        let deadline = Instant::now() + timeout;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let result = (|| -> std::io::Result<()> {
                let mut s = TcpStream::connect((ip.as_str(), port))?;
                s.set_write_timeout(Some(Duration::from_secs(60)))?;
                for part in data.chunks(piece.max(1)) {
                    s.write_all(part)?;
                    std::thread::sleep(pause);
                }
                s.shutdown(Shutdown::Write)?;
                s.set_read_timeout(Some(Duration::from_secs(60)))?;
                let mut rest = Vec::new();
                s.read_to_end(&mut rest)?;
                Ok(())
            })();
            match result {
                Ok(()) => return Ok(attempts),
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("{attempts} attempts, last: {e}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    })
}

/// Echoes `count` datagrams on 127.0.0.1 (port returned).
pub fn udp_echo(count: usize, timeout: Duration) -> (u16, JoinHandle<Result<usize, String>>) {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind a loopback port");
    let port = sock.local_addr().expect("its address").port();
    let handle = std::thread::spawn(move || {
        sock.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 65536];
        for n in 0..count {
            let (len, from) = sock
                .recv_from(&mut buf)
                .map_err(|e| format!("after {n} datagrams: {e}"))?;
            sock.send_to(&buf[..len], from).map_err(|e| e.to_string())?;
        }
        Ok(count)
    });
    (port, handle)
}

/// Sends `count` datagrams to 127.0.0.1:`port` and waits for each echo,
/// resending until `timeout` (the guest may not listen yet).
pub fn udp_ping(port: u16, count: u32, timeout: Duration) -> JoinHandle<Result<u32, String>> {
    std::thread::spawn(move || {
        let sock = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        sock.connect(("127.0.0.1", port))
            .map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 65536];
        for i in 0..count {
            let d: Vec<u8> = i
                .to_be_bytes()
                .iter()
                .copied()
                .chain((0..600).map(|j| (j ^ i) as u8))
                .collect();
            loop {
                if Instant::now() > deadline {
                    return Err(format!("{i} of {count} echoed"));
                }
                let _ = sock.send(&d);
                if let Ok(len) = sock.recv(&mut buf) {
                    if buf[..len] == d[..] {
                        break;
                    }
                }
            }
        }
        Ok(count)
    })
}

/// Process ids of every running passt (Debian's `passt` runs `passt.avx2`
/// where the CPU has AVX2).
pub fn passt_pids() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        let comm = comm.trim();
        (comm == "passt" || comm.starts_with("passt.")).then_some(pid)
    })
    .collect()
}

/// Waits up to `timeout` for no passt to be left; returns those left.
pub fn wait_no_passt(timeout: Duration) -> Vec<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = passt_pids();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A TCP or UDP frame, and whether its checksum holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L4Frame {
    /// 6 (TCP) or 17 (UDP).
    pub protocol: u8,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// The checksum verifies (a UDP-over-IPv4 checksum of 0, "none", counts as valid).
    pub valid: bool,
}

/// Every IPv4/IPv6 TCP and UDP frame in a recording of passt's stream
/// (each frame after its 4-byte big-endian length), checksum checked.
pub fn recorded_l4_frames(path: &std::path::Path) -> Result<Vec<L4Frame>, String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut frames = Vec::new();
    let mut rest = &data[..];
    while rest.len() >= 4 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let Some(frame) = rest.get(4..4 + len) else {
            break;
        };
        frames.extend(l4_frame(frame));
        rest = &rest[4 + len..];
    }
    Ok(frames)
}

/// RFC 1071 sum of `bytes` (big-endian words), not folded or complemented.
fn sum16(bytes: &[u8]) -> u64 {
    bytes
        .chunks(2)
        .map(|p| u64::from(p[0]) << 8 | u64::from(*p.get(1).unwrap_or(&0)))
        .sum()
}

fn l4_frame(eth: &[u8]) -> Option<L4Frame> {
    let ethertype = u16::from_be_bytes([*eth.get(12)?, *eth.get(13)?]);
    let ip = eth.get(14..)?;
    let (protocol, segment, pseudo) = match ethertype {
        0x0800 => {
            let ihl = usize::from(ip.first()? & 0xf) * 4;
            let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
            let segment = ip.get(ihl..total)?;
            (ip[9], segment, sum16(&ip[12..20]))
        }
        0x86dd => {
            let len = usize::from(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]));
            (*ip.get(6)?, ip.get(40..40 + len)?, sum16(&ip[8..40]))
        }
        _ => return None,
    };
    if protocol != 6 && protocol != 17 {
        return None;
    }
    let ports = |i: usize| u16::from_be_bytes([segment[i], segment[i + 1]]);
    if segment.len() < 8 {
        return None;
    }
    let none = ethertype == 0x0800 && protocol == 17 && ports(6) == 0;
    let mut acc = pseudo + u64::from(protocol) + segment.len() as u64 + sum16(segment);
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    Some(L4Frame {
        protocol,
        src_port: ports(0),
        dst_port: ports(2),
        valid: none || acc == 0xffff,
    })
}
