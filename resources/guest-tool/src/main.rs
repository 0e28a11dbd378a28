// SPDX-License-Identifier: Apache-2.0
//! `ft`: network checks the test guest's busybox cannot do.
//!
//!   ft udp-echo PORT COUNT        echo COUNT datagrams back to their senders
//!   ft udp-ping HOST PORT COUNT   send COUNT datagrams, count the echoes
//!   ft tcp-rr HOST PORT COUNT     COUNT 1-byte request/responses on one connection;
//!                                 prints the median round trip in microseconds
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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("udp-echo") => udp_echo(arg(&args, 2, "PORT"), arg(&args, 3, "COUNT")),
        Some("udp-ping") => udp_ping(&arg::<String>(&args, 2, "HOST"), arg(&args, 3, "PORT"), arg(&args, 4, "COUNT")),
        Some("tcp-rr") => tcp_rr(&arg::<String>(&args, 2, "HOST"), arg(&args, 3, "PORT"), arg(&args, 4, "COUNT")),
        _ => fail("usage: ft udp-echo PORT COUNT | udp-ping HOST PORT COUNT | tcp-rr HOST PORT COUNT"),
    }
}
