// SPDX-License-Identifier: Apache-2.0
//! virtio-vsock with Firecracker's hybrid host side, against the guest
//! kernel's own vsock driver: host programs `CONNECT` to guest ports
//! through ferry's UNIX socket, guest programs reach `<socket>_<port>`,
//! data moves intact both ways, many connections at once, peers that
//! vanish or stop reading, and nothing left behind.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::common::{guest_file, readme, wait_for, FERRY};
use crate::harness::{guest_test, Boot, Scratch, TestError, TestResult, WATCHDOG};

/// The guest's vsock echo server's port.
const ECHO_PORT: u32 = 1024;

/// Byte `i` of the pattern sent (the guest tool's own, `ft vsock-connect`).
fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(2654435761) >> 13) as u8
}

/// A ferry whose guest runs `guest_cmd` with a vsock device on `uds`.
fn spawn_ferry(uds: &Path, console: &Path, guest_cmd: &str) -> TestResult<Child> {
    let out = std::fs::File::create(console).map_err(|e| format!("{e}"))?;
    let err = out.try_clone().map_err(|e| format!("{e}"))?;
    Command::new(FERRY)
        .arg("--kernel")
        .arg(guest_file("vmlinuz")?)
        .arg("--initrd")
        .arg(guest_file("initramfs.cpio.gz")?)
        .args(["--net", "none", "--log-level", "info", "--vsock"])
        .arg(format!("cid=3,uds={}", uds.display()))
        .arg("--cmdline")
        .arg(format!(
            "{} -- \"dmesg -n 1; {guest_cmd}\"",
            ferry::cli::DEFAULT_CMDLINE
        ))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start ferry: {e}").into())
}

/// Connects to guest `port` through ferry's hybrid socket: `OK <port>` or why not.
fn connect(uds: &Path, port: u32, word: &str) -> Result<UnixStream, String> {
    let mut stream =
        UnixStream::connect(uds).map_err(|e| format!("connect {}: {e}", uds.display()))?;
    // No step may hang: a stuck peer is an error after 20 s.
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| format!("{e}"))?;
    stream
        .set_write_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| format!("{e}"))?;
    stream
        .write_all(format!("{word} {port}\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    // Byte by byte, so that nothing of the stream is read with the line.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while byte[0] != b'\n' {
        match stream.read(&mut byte) {
            Ok(1) => line.push(byte[0]),
            Ok(_) => return Err(format!("closed after {:?}", String::from_utf8_lossy(&line))),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&line).into_owned();
    match line.trim_end().strip_prefix("OK ").map(str::parse::<u32>) {
        Some(Ok(host_port)) if host_port >= 1 << 30 => Ok(stream),
        _ => Err(format!("expected OK <port>, got {line:?}")),
    }
}

/// Connects once the guest's echo server listens (the guest boots meanwhile).
fn connect_when_up(uds: &Path, ferry: &mut Child, console: &Path) -> TestResult<UnixStream> {
    let deadline = Instant::now() + WATCHDOG;
    loop {
        match connect(uds, ECHO_PORT, "CONNECT") {
            Ok(stream) => return Ok(stream),
            Err(_) if Instant::now() < deadline => {
                if let Ok(Some(status)) = ferry.try_wait() {
                    return Err(format!(
                        "ferry ended early ({status})\n{}",
                        std::fs::read_to_string(console).unwrap_or_default()
                    )
                    .into());
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => {
                return Err(TestError::Hazard(format!(
                    "the guest's echo server never answered: {e}\n{}",
                    std::fs::read_to_string(console).unwrap_or_default()
                )))
            }
        }
    }
}

/// Sends `len` bytes of the pattern on `stream` while reading the echo;
/// returns the SHA-256 of what was sent and of what came back.
fn echo_transfer(stream: UnixStream, len: u64) -> Result<(String, String), String> {
    let mut reader = stream.try_clone().map_err(|e| format!("{e}"))?;
    let back = std::thread::spawn(move || {
        let mut hash = Sha256::new();
        let mut got = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        while got < len {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    hash.update(&buf[..n]);
                    got += n as u64;
                }
                Err(e) => return Err(format!("read after {got} bytes: {e}")),
            }
        }
        Ok(format!("{:x}", hash.finalize()))
    });
    let mut writer = stream;
    let mut hash = Sha256::new();
    let mut sent = 0u64;
    let mut chunk = vec![0u8; 64 * 1024];
    while sent < len {
        let n = (len - sent).min(chunk.len() as u64) as usize;
        for (k, b) in chunk[..n].iter_mut().enumerate() {
            *b = pattern(sent + k as u64);
        }
        writer
            .write_all(&chunk[..n])
            .map_err(|e| format!("write after {sent} bytes: {e}"))?;
        hash.update(&chunk[..n]);
        sent += n as u64;
    }
    let back = back
        .join()
        .map_err(|_| "the reader panicked".to_string())??;
    Ok((format!("{:x}", hash.finalize()), back))
}

/// ferry's resident memory, from /proc.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Stops ferry at once (SIGHUP) and returns its console.
fn stop(mut ferry: Child, console: &Path) -> String {
    // SAFETY: our own child's pid, not yet reaped.
    unsafe { libc::kill(ferry.id() as libc::pid_t, libc::SIGHUP) };
    let _ = ferry.wait();
    std::fs::read_to_string(console).unwrap_or_default()
}

#[guest_test]
fn vsock_host_to_guest_streams_and_faults() -> TestResult {
    let scratch = Scratch::new("vsock-host")?;
    let uds = scratch.path("v.sock");
    let console = scratch.path("console.log");
    let mut ferry = spawn_ferry(&uds, &console, &format!("ft vsock-echo {ECHO_PORT}"))?;
    wait_for(&uds, Duration::from_secs(30))?;
    let result = (|| -> TestResult {
        let first = connect_when_up(&uds, &mut ferry, &console)?;
        // 16 MiB each way, checked (throughput is the bench's).
        println!("    | vsock: 16 MiB each way, checked");
        let (sent, back) = echo_transfer(first, 16 << 20)?;
        if sent != back {
            return Err(format!("16 MiB came back different: {sent} vs {back}").into());
        }
        // Kata's runtime-rs says it in lower case.
        println!("    | vsock: Kata's runtime-rs says it in lower case");
        let lower = connect(&uds, ECHO_PORT, "connect")?;
        let (sent, back) = echo_transfer(lower, 1 << 20)?;
        if sent != back {
            return Err("a lowercase connect should work as well".into());
        }
        // Nobody listens on port 2000: closed, no OK.
        println!("    | vsock: Nobody listens on port 2000");
        if let Ok(_stream) = connect(&uds, 2000, "CONNECT") {
            return Err("a port nobody listens on should be refused".into());
        }
        // Garbage instead of a CONNECT line: that connection closes, nothing else.
        println!("    | vsock: Garbage instead of a CONNECT line");
        let mut junk = UnixStream::connect(&uds).map_err(|e| format!("{e}"))?;
        junk.set_read_timeout(Some(Duration::from_secs(10))).ok();
        junk.write_all(b"GET / HTTP/1.1\r\n\r\n")
            .map_err(|e| format!("{e}"))?;
        let mut rest = Vec::new();
        let _ = junk.read_to_end(&mut rest);
        if !rest.is_empty() {
            return Err(format!(
                "garbage got an answer: {:?}",
                String::from_utf8_lossy(&rest)
            )
            .into());
        }
        // 200 connections at once, each moving its own data.
        println!("    | vsock: 200 connections at once, each moving its own data");
        let streams: Vec<UnixStream> = (0..200)
            .map(|_| connect(&uds, ECHO_PORT, "CONNECT"))
            .collect::<Result<_, _>>()?;
        let workers: Vec<_> = streams
            .into_iter()
            .map(|s| std::thread::spawn(move || echo_transfer(s, 256 << 10)))
            .collect();
        for worker in workers {
            let (sent, back) = worker
                .join()
                .map_err(|_| "a worker panicked".to_string())??;
            if sent != back {
                return Err("one of 200 concurrent streams came back different".into());
            }
        }
        // A client killed mid-stream: the others carry on.
        println!("    | vsock: A client killed mid-stream");
        let doomed = connect(&uds, ECHO_PORT, "CONNECT")?;
        // Less than the buffers on the way hold: its echo is never read.
        (&doomed)
            .write_all(&vec![7u8; 64 << 10])
            .map_err(|e| format!("{e}"))?;
        drop(doomed);
        // A client that stops reading while the guest echoes: ferry's memory stays bounded.
        println!("    | vsock: A client that stops reading while the guest echoes");
        let before = rss_kib(ferry.id());
        let stalled = connect(&uds, ECHO_PORT, "CONNECT")?;
        stalled
            .set_write_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| format!("{e}"))?;
        let mut pushed = 0u64;
        let chunk = vec![1u8; 64 << 10];
        while pushed < 64 << 20 {
            match (&stalled).write(&chunk) {
                Ok(n) => pushed += n as u64,
                Err(_) => break,
            }
        }
        std::thread::sleep(Duration::from_secs(3));
        let during = rss_kib(ferry.id());
        println!("    | vsock: a stalled reader: {pushed} bytes taken before the writer was held back; ferry's RSS {before} KiB -> {during} KiB");
        if pushed >= 64 << 20 {
            return Err("a reader that stops should hold the writer back".into());
        }
        if during > before + 16 * 1024 {
            return Err(format!(
                "ferry's memory grew with a stalled reader: {before} -> {during} KiB"
            )
            .into());
        }
        drop(stalled);
        // And the channel still works.
        println!("    | vsock: And the channel still works");
        let last = connect(&uds, ECHO_PORT, "CONNECT")?;
        let (sent, back) = echo_transfer(last, 1 << 20)?;
        if sent != back {
            return Err("the channel should work after the faults".into());
        }
        Ok(())
    })();
    let log = stop(ferry, &console);
    result.map_err(|e| match e {
        TestError::Failed(m) => TestError::Failed(format!("{m}\n--- ferry ---\n{}", tail(&log))),
        hazard => hazard,
    })?;
    if uds.exists() {
        return Err("the vsock socket should be removed when ferry exits".into());
    }
    let stats = log
        .lines()
        .find(|l| l.contains("vsock0:") && l.contains("open"))
        .unwrap_or("");
    println!("    | {stats}");
    Ok(())
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A host echo server on `<uds>_<port>`; returns how many of its
/// connections have ended.
pub(crate) fn host_echo_server(uds: &Path, port: u32) -> TestResult<Arc<AtomicUsize>> {
    let port_path = PathBuf::from(format!("{}_{port}", uds.display()));
    let listener = UnixListener::bind(&port_path).map_err(|e| format!("bind: {e}"))?;
    let ended = Arc::new(AtomicUsize::new(0));
    let counter = ended.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let counter = counter.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut writer = stream;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if writer.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = writer.shutdown(std::net::Shutdown::Write);
                let _ = reader.fill_buf();
                counter.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    Ok(ended)
}

/// The exit log's vsock line says no connection is left open.
fn none_left_open(stderr: &str) -> bool {
    stderr
        .lines()
        .any(|l| l.starts_with("ferry: vsock0: connections") && l.contains(" 0 open"))
}

#[guest_test]
fn vsock_guest_to_host_reaches_the_port_socket() -> TestResult {
    let scratch = Scratch::new("vsock-guest")?;
    let uds = scratch.path("v.sock");
    // The host's echo server on port 5000; nothing on 5001.
    let ended = host_echo_server(&uds, 5000)?;
    // The first sender is killed mid-stream (256 MiB take longer than 3 s
    // here); then 64 MiB go and come back intact; then a refused port.
    let out = Boot::new(
        "ft vsock-connect 5000 268435456 & sleep 3; kill -9 $!; \
         ft vsock-connect 5000 67108864 && { ft vsock-connect 5001 16 || echo refused-as-expected; }",
    )
    .args(&["--net", "none", "--vsock", &format!("cid=3,uds={}", uds.display())])
    .run()?;
    let ok = out.status == Some(0)
        && out
            .stdout
            .contains("ft: vsock-connect: 67108864 bytes echoed intact")
        && out.stdout.contains("refused-as-expected")
        && !out.stdout.contains("268435456 bytes echoed");
    if !ok {
        return Err(format!(
            "the guest should reach PATH_5000 and be refused on 5001\n{}",
            out.describe()
        )
        .into());
    }
    // Both connections ended on the host too, the killed one included.
    let deadline = Instant::now() + Duration::from_secs(10);
    while ended.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if ended.load(Ordering::SeqCst) < 2 || !none_left_open(&out.stderr) {
        return Err(format!(
            "the killed sender's connection should end on both sides ({} ended on the host)\n{}",
            ended.load(Ordering::SeqCst),
            out.describe()
        )
        .into());
    }
    Ok(())
}

#[guest_test]
fn readme_vsock() -> TestResult {
    let text = readme::read()?;
    let guest =
        readme::tested_block(&text, "vsock-guest").ok_or("README.md has no vsock-guest block")?;
    let host =
        readme::tested_block(&text, "vsock-host").ok_or("README.md has no vsock-host block")?;
    let _ = std::fs::remove_file("/tmp/ferry.vsock");
    let mut ferry = crate::readme::bash(&format!("exec {guest}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the README's vsock example: {e}"))?;
    let deadline = Instant::now() + WATCHDOG;
    let mut answer = String::new();
    while Instant::now() < deadline {
        let out = crate::readme::bash(&host)
            .output()
            .map_err(|e| format!("{e}"))?;
        answer = String::from_utf8_lossy(&out.stdout).into_owned();
        if answer.contains("hello over vsock") {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // SAFETY: our own child's pid, not yet reaped.
    unsafe { libc::kill(ferry.id() as libc::pid_t, libc::SIGHUP) };
    let _ = ferry.wait();
    if !answer.contains("hello over vsock") {
        return Err(TestError::Hazard(format!(
            "the guest never echoed: {answer:?}"
        )));
    }
    if !answer.starts_with("OK ") {
        return Err(format!("ferry should answer OK <port> first: {answer:?}").into());
    }
    if Path::new("/tmp/ferry.vsock").exists() {
        return Err("the vsock socket should be removed when ferry exits".into());
    }
    Ok(())
}
