// SPDX-License-Identifier: Apache-2.0
//! A recording relay for the checksum test: ferry starts this binary as
//! its "passt" (with `RECORD_ENV` set); it starts the real passt on a
//! socket pair of its own, passes the stream both ways unchanged, and
//! appends what ferry sends (length-prefixed frames) to the record file.
//! passt's own `--pcap` would do, but passt dies under seccomp when the
//! host's clock has no vDSO (kvm-host's HPET clock source).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Names the record file; set for ferry, which passes it to its "passt".
pub const RECORD_ENV: &str = "FERRY_TEST_RELAY_RECORD";

/// Runs the relay: `args` are what ferry gives passt (`-f -F FD ...`).
/// Returns the exit status.
pub fn run(record: &std::ffi::OsStr, args: &[String]) -> i32 {
    match relay(record, args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("relay: {e}");
            1
        }
    }
}

fn relay(record: &std::ffi::OsStr, args: &[String]) -> Result<(), String> {
    let fd: i32 = match args {
        [f, big_f, fd, ..] if f == "-f" && big_f == "-F" => {
            fd.parse().map_err(|_| format!("bad descriptor {fd}"))?
        }
        _ => return Err(format!("unexpected arguments {args:?}")),
    };
    // SAFETY: ferry handed this descriptor to us, and nothing else owns it.
    let ferry = unsafe { UnixStream::from_raw_fd(fd) };
    let (ours, theirs) = UnixStream::pair().map_err(|e| e.to_string())?;
    let their_fd = theirs.as_raw_fd();
    let mut passt = Command::new("passt");
    passt
        .args(["-f", "-F", &their_fd.to_string()])
        .args(&args[3..]);
    // SAFETY: fcntl is async-signal-safe; it only keeps passt's end open across exec.
    unsafe {
        passt.pre_exec(move || {
            if libc::fcntl(their_fd, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = passt
        .spawn()
        .map_err(|e| format!("cannot start passt: {e}"))?;
    drop(theirs);
    let mut file = File::create(record).map_err(|e| e.to_string())?;
    let (mut from_passt, mut to_ferry) = (
        ours.try_clone().map_err(|e| e.to_string())?,
        ferry.try_clone().map_err(|e| e.to_string())?,
    );
    let back = std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_passt, &mut to_ferry);
        let _ = to_ferry.shutdown(std::net::Shutdown::Both);
    });
    let (mut from_ferry, mut to_passt) = (ferry, ours);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match from_ferry.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if file.write_all(&buf[..n]).is_err() || to_passt.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to_passt.shutdown(std::net::Shutdown::Both);
    let _ = back.join();
    let _ = child.wait();
    Ok(())
}
