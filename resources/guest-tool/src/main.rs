// SPDX-License-Identifier: Apache-2.0
//! `ft`: network and disk checks the test guest's busybox cannot do.
//!
//!   ft udp-echo PORT COUNT        echo COUNT datagrams back to their senders
//!   ft udp-ping HOST PORT COUNT   send COUNT datagrams, count the echoes
//!   ft tcp-rr HOST PORT COUNT     COUNT 1-byte request/responses on one connection;
//!                                 prints the median round trip in microseconds
//!   ft disk-seq DEV read|write MIB  sequential O_DIRECT I/O in 1 MiB blocks; prints MB/s
//!   ft disk-rand DEV SECS THREADS   4 KiB O_DIRECT random reads for SECS seconds on
//!                                 THREADS threads (queue depth); prints IOPS
//!
//! Each prints one `ft: …` line and exits 0 on success, 1 otherwise.

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::process::exit;
use std::time::{Duration, Instant};

fn fail(msg: &str) -> ! {
    println!("ft: error: {msg}");
    exit(1)
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> T {
    args.get(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| fail(&format!("missing or bad {what}")))
}

/// Datagram `i` of a run: its index, then a pattern, of a size that varies.
fn datagram(i: u32) -> Vec<u8> {
    let len = 16 + (i as usize * 397) % 1400;
    let mut d = i.to_be_bytes().to_vec();
    d.extend((0..len).map(|j| (j as u32 ^ i) as u8));
    d
}

fn udp_echo(port: u16, count: u32) {
    let sock = UdpSocket::bind(("0.0.0.0", port)).unwrap_or_else(|e| fail(&format!("bind: {e}")));
    sock.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let mut buf = [0u8; 65536];
    for n in 0..count {
        match sock.recv_from(&mut buf) {
            Ok((len, from)) => {
                let _ = sock.send_to(&buf[..len], from);
            }
            Err(e) => fail(&format!("echoed {n} of {count}: {e}")),
        }
    }
    println!("ft: udp-echo: echoed {count}");
}

fn udp_ping(host: &str, port: u16, count: u32) {
    let sock = UdpSocket::bind("0.0.0.0:0").unwrap_or_else(|e| fail(&format!("bind: {e}")));
    sock.connect((host, port)).unwrap_or_else(|e| fail(&format!("connect: {e}")));
    sock.set_read_timeout(Some(Duration::from_millis(500))).ok();
    let mut echoed = 0;
    let mut buf = [0u8; 65536];
    for i in 0..count {
        let d = datagram(i);
        // A datagram or its echo may be lost; a few tries each.
        for _ in 0..5 {
            let _ = sock.send(&d);
            match sock.recv(&mut buf) {
                Ok(len) if buf[..len] == d[..] => {
                    echoed += 1;
                    break;
                }
                _ => continue,
            }
        }
    }
    println!("ft: udp-ping: sent {count} echoed {echoed}");
    if echoed != count {
        exit(1);
    }
}

fn tcp_rr(host: &str, port: u16, count: u32) {
    let mut s = TcpStream::connect((host, port)).unwrap_or_else(|e| fail(&format!("connect: {e}")));
    s.set_nodelay(true).ok();
    let mut times = Vec::with_capacity(count as usize);
    let mut b = [0u8; 1];
    for i in 0..count {
        let t = Instant::now();
        s.write_all(&[i as u8]).unwrap_or_else(|e| fail(&format!("write: {e}")));
        s.read_exact(&mut b).unwrap_or_else(|e| fail(&format!("read: {e}")));
        if b[0] != i as u8 {
            fail("wrong response byte");
        }
        times.push(t.elapsed().as_micros() as u64);
    }
    times.sort_unstable();
    let median = times.get(times.len() / 2).copied().unwrap_or(0);
    println!("ft: tcp-rr: count {count} median_us {median}");
}

/// `O_DIRECT` on x86-64: I/O that bypasses the guest's page cache.
const O_DIRECT: i32 = 0o40000;

/// A zeroed buffer of `len` bytes aligned to 4 KiB, as O_DIRECT needs.
fn aligned(len: usize) -> (Vec<u8>, usize) {
    let buf = vec![0u8; len + 4096];
    let offset = (4096 - buf.as_ptr() as usize % 4096) % 4096;
    (buf, offset)
}

fn open_direct(dev: &str, write: bool) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(O_DIRECT)
        .open(dev)
        .unwrap_or_else(|e| fail(&format!("open {dev}: {e}")))
}

fn disk_seq(dev: &str, mode: &str, mib: u64) {
    use std::os::unix::fs::FileExt;
    let write = match mode {
        "read" => false,
        "write" => true,
        _ => fail("mode must be read or write"),
    };
    let file = open_direct(dev, write);
    let (mut buf, off) = aligned(1 << 20);
    let block = &mut buf[off..off + (1 << 20)];
    block.iter_mut().enumerate().for_each(|(i, b)| *b = (i * 7) as u8);
    let start = Instant::now();
    for i in 0..mib {
        let pos = i << 20;
        let r = if write {
            file.write_all_at(block, pos)
        } else {
            file.read_exact_at(block, pos)
        };
        r.unwrap_or_else(|e| fail(&format!("{mode} at {pos}: {e}")));
    }
    if write {
        file.sync_all().unwrap_or_else(|e| fail(&format!("sync: {e}")));
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "ft: disk-seq: {mode} {mib} MiB in {secs:.3} s: {:.1} MB/s",
        (mib << 20) as f64 / secs / 1e6
    );
}

fn disk_rand(dev: &str, seconds: u64, threads: u32) {
    use std::os::unix::fs::FileExt;
    let size = std::fs::read_to_string(format!(
        "/sys/block/{}/size",
        dev.trim_start_matches("/dev/")
    ))
    .ok()
    .and_then(|s| s.trim().parse::<u64>().ok())
    .unwrap_or_else(|| fail("cannot read the disk's size"))
        * 512;
    let blocks = size / 4096;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let file = open_direct(dev, false);
            std::thread::spawn(move || {
                let (mut buf, off) = aligned(4096);
                let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(t + 1);
                let mut done = 0u64;
                while Instant::now() < deadline {
                    for _ in 0..64 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let pos = (x % blocks) * 4096;
                        file.read_exact_at(&mut buf[off..off + 4096], pos)
                            .unwrap_or_else(|e| fail(&format!("read at {pos}: {e}")));
                        done += 1;
                    }
                }
                done
            })
        })
        .collect();
    let total: u64 = workers.into_iter().map(|w| w.join().unwrap_or(0)).sum();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "ft: disk-rand: {total} reads of 4 KiB in {secs:.3} s on {threads} threads: {:.0} IOPS",
        total as f64 / secs
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("udp-echo") => udp_echo(arg(&args, 2, "PORT"), arg(&args, 3, "COUNT")),
        Some("udp-ping") => udp_ping(&arg::<String>(&args, 2, "HOST"), arg(&args, 3, "PORT"), arg(&args, 4, "COUNT")),
        Some("tcp-rr") => tcp_rr(&arg::<String>(&args, 2, "HOST"), arg(&args, 3, "PORT"), arg(&args, 4, "COUNT")),
        Some("disk-seq") => disk_seq(&arg::<String>(&args, 2, "DEV"), &arg::<String>(&args, 3, "MODE"), arg(&args, 4, "MIB")),
        Some("disk-rand") => disk_rand(&arg::<String>(&args, 2, "DEV"), arg(&args, 3, "SECS"), arg(&args, 4, "THREADS")),
        _ => fail("usage: ft udp-echo PORT COUNT | udp-ping HOST PORT COUNT | tcp-rr HOST PORT COUNT | disk-seq DEV read|write MIB | disk-rand DEV SECS THREADS"),
    }
}
