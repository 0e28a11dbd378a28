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
//!   ft vsock-echo PORT            listen on vsock PORT; echo every connection's bytes
//!                                 back until its peer shuts down (runs until killed)
//!   ft vsock-connect PORT BYTES   connect to the host (CID 2) on vsock PORT, send BYTES
//!                                 of a pattern while reading the echo; checks it
//!   ft vsock-rr PORT COUNT        COUNT 1-byte request/responses to the host's PORT;
//!                                 prints the median round trip in microseconds
//!   ft vsock-bench PORT           listen on vsock PORT for the benchmark's host side;
//!                                 each connection's first byte says what to do:
//!                                 `s` read to the end (a sink), `g` + 8-byte big-endian
//!                                 length: send that many bytes, `e` echo (request/response)
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

/// AF_VSOCK sockets, from glibc's own symbols (the tool has no dependencies).
mod vsock {
    use std::fs::File;
    use std::io;
    use std::os::fd::FromRawFd;

    const AF_VSOCK: i32 = 40;
    const SOCK_STREAM: i32 = 1;
    /// The host's context id.
    pub const HOST_CID: u32 = 2;
    const ANY_CID: u32 = u32::MAX;

    #[repr(C)]
    struct SockaddrVm {
        family: u16,
        reserved: u16,
        port: u32,
        cid: u32,
        flags: u8,
        zero: [u8; 3],
    }

    extern "C" {
        fn socket(domain: i32, kind: i32, protocol: i32) -> i32;
        fn bind(fd: i32, addr: *const SockaddrVm, len: u32) -> i32;
        fn listen(fd: i32, backlog: i32) -> i32;
        fn accept(fd: i32, addr: *mut SockaddrVm, len: *mut u32) -> i32;
        fn connect(fd: i32, addr: *const SockaddrVm, len: u32) -> i32;
        fn shutdown(fd: i32, how: i32) -> i32;
    }

    fn addr(cid: u32, port: u32) -> SockaddrVm {
        SockaddrVm { family: AF_VSOCK as u16, reserved: 0, port, cid, flags: 0, zero: [0; 3] }
    }

    fn check(rc: i32) -> io::Result<i32> {
        if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
    }

    /// A listening socket on `port`.
    pub fn listener(port: u32) -> io::Result<i32> {
        // SAFETY: plain socket calls on a descriptor this function owns; the
        // address lives across the call.
        unsafe {
            let fd = check(socket(AF_VSOCK, SOCK_STREAM, 0))?;
            let a = addr(ANY_CID, port);
            check(bind(fd, &a, std::mem::size_of::<SockaddrVm>() as u32))?;
            check(listen(fd, 256))?;
            Ok(fd)
        }
    }

    /// The next connection on `listener`.
    pub fn accept_one(listener: i32) -> io::Result<File> {
        let mut a = addr(0, 0);
        let mut len = std::mem::size_of::<SockaddrVm>() as u32;
        // SAFETY: `a` and `len` are valid for the call; the new descriptor is owned by the File.
        unsafe {
            let fd = check(accept(listener, &mut a, &mut len))?;
            Ok(File::from_raw_fd(fd))
        }
    }

    /// A connection to `cid`:`port`.
    pub fn connect_to(cid: u32, port: u32) -> io::Result<File> {
        // SAFETY: as above; the descriptor is owned by the File.
        unsafe {
            let fd = check(socket(AF_VSOCK, SOCK_STREAM, 0))?;
            let file = File::from_raw_fd(fd);
            let a = addr(cid, port);
            check(connect(fd, &a, std::mem::size_of::<SockaddrVm>() as u32))?;
            Ok(file)
        }
    }

    /// Shuts down the writing side of `file`'s socket.
    pub fn shutdown_write(file: &File) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: a socket descriptor `file` owns; 1 is SHUT_WR.
        check(unsafe { shutdown(file.as_raw_fd(), 1) }).map(|_| ())
    }
}

fn vsock_echo(port: u32) {
    let listener = vsock::listener(port).unwrap_or_else(|e| fail(&format!("vsock listen {port}: {e}")));
    println!("ft: vsock-echo: listening on port {port}");
    loop {
        let Ok(mut conn) = vsock::accept_one(listener) else { continue };
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if conn.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = vsock::shutdown_write(&conn);
        });
    }
}

fn vsock_bench(port: u32) {
    let listener = vsock::listener(port).unwrap_or_else(|e| fail(&format!("vsock listen {port}: {e}")));
    println!("ft: vsock-bench: listening on port {port}");
    loop {
        let Ok(mut conn) = vsock::accept_one(listener) else { continue };
        std::thread::spawn(move || {
            let mut op = [0u8; 1];
            if conn.read_exact(&mut op).is_err() {
                return;
            }
            let mut buf = vec![0u8; 64 * 1024];
            match op[0] {
                b's' => while matches!(conn.read(&mut buf), Ok(n) if n > 0) {},
                b'g' => {
                    let mut len = [0u8; 8];
                    if conn.read_exact(&mut len).is_err() {
                        return;
                    }
                    let mut left = u64::from_be_bytes(len);
                    while left > 0 {
                        let n = left.min(buf.len() as u64) as usize;
                        if conn.write_all(&buf[..n]).is_err() {
                            return;
                        }
                        left -= n as u64;
                    }
                }
                _ => loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if conn.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                },
            }
            let _ = vsock::shutdown_write(&conn);
        });
    }
}

/// Byte `i` of the pattern the vsock checks send.
fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(2654435761) >> 13) as u8
}

fn vsock_connect(port: u32, bytes: u64) {
    let conn = vsock::connect_to(vsock::HOST_CID, port).unwrap_or_else(|e| fail(&format!("vsock connect {port}: {e}")));
    let mut reader = conn.try_clone().unwrap_or_else(|e| fail(&format!("{e}")));
    let check_echo = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0u64;
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return Ok(got),
                Ok(n) => {
                    for (k, b) in buf[..n].iter().enumerate() {
                        if *b != pattern(got + k as u64) {
                            return Err(format!("byte {} differs", got + k as u64));
                        }
                    }
                    got += n as u64;
                }
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    });
    let mut writer = conn;
    let mut sent = 0u64;
    let mut chunk = vec![0u8; 64 * 1024];
    while sent < bytes {
        let n = (bytes - sent).min(chunk.len() as u64) as usize;
        for (k, b) in chunk[..n].iter_mut().enumerate() {
            *b = pattern(sent + k as u64);
        }
        writer.write_all(&chunk[..n]).unwrap_or_else(|e| fail(&format!("write: {e}")));
        sent += n as u64;
    }
    let _ = vsock::shutdown_write(&writer);
    match check_echo.join() {
        Ok(Ok(got)) if got == bytes => println!("ft: vsock-connect: {bytes} bytes echoed intact"),
        Ok(Ok(got)) => fail(&format!("echoed {got} of {bytes} bytes")),
        Ok(Err(e)) => fail(&e),
        Err(_) => fail("reader panicked"),
    }
}

fn vsock_rr(port: u32, count: u32) {
    let mut conn = vsock::connect_to(vsock::HOST_CID, port).unwrap_or_else(|e| fail(&format!("vsock connect {port}: {e}")));
    let mut times = Vec::with_capacity(count as usize);
    let mut b = [0u8; 1];
    for i in 0..count {
        let start = Instant::now();
        conn.write_all(&[i as u8]).unwrap_or_else(|e| fail(&format!("write: {e}")));
        conn.read_exact(&mut b).unwrap_or_else(|e| fail(&format!("read: {e}")));
        times.push(start.elapsed().as_micros() as u64);
    }
    times.sort_unstable();
    println!("ft: vsock-rr: median {} us over {count}", times[times.len() / 2]);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("udp-echo") => udp_echo(arg(&args, 2, "PORT"), arg(&args, 3, "COUNT")),
        Some("udp-ping") => udp_ping(&arg::<String>(&args, 2, "HOST"), arg(&args, 3, "PORT"), arg(&args, 4, "COUNT")),
        Some("tcp-rr") => tcp_rr(&arg::<String>(&args, 2, "HOST"), arg(&args, 3, "PORT"), arg(&args, 4, "COUNT")),
        Some("disk-seq") => disk_seq(&arg::<String>(&args, 2, "DEV"), &arg::<String>(&args, 3, "MODE"), arg(&args, 4, "MIB")),
        Some("disk-rand") => disk_rand(&arg::<String>(&args, 2, "DEV"), arg(&args, 3, "SECS"), arg(&args, 4, "THREADS")),
        Some("vsock-echo") => vsock_echo(arg(&args, 2, "PORT")),
        Some("vsock-connect") => vsock_connect(arg(&args, 2, "PORT"), arg(&args, 3, "BYTES")),
        Some("vsock-rr") => vsock_rr(arg(&args, 2, "PORT"), arg(&args, 3, "COUNT")),
        Some("vsock-bench") => vsock_bench(arg(&args, 2, "PORT")),
        _ => fail("usage: ft udp-echo PORT COUNT | udp-ping HOST PORT COUNT | tcp-rr HOST PORT COUNT | disk-seq DEV read|write MIB | disk-rand DEV SECS THREADS | vsock-echo PORT | vsock-connect PORT BYTES | vsock-rr PORT COUNT | vsock-bench PORT"),
    }
}
