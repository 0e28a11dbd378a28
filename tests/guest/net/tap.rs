// SPDX-License-Identifier: Apache-2.0
//! A card on a TAP device (`--net tap:NAME`): the test makes a network
//! namespace with a TAP in it and a peer address on the TAP, runs ferry in
//! that namespace, gives the guest a static address, and moves 64 MiB each
//! way between the guest and servers in the namespace, checked by sha256.
//! A missing TAP (status 2, the API's 400) is checked without a boot, in
//! tests/cli.rs.

use std::os::fd::AsRawFd;
use std::process::Command;

use std::time::Duration;

use super::{guest_sha_of, peers, TRANSFER};
use crate::common::Outcome;
use crate::harness::{check, guest_test, Boot, TestResult, WATCHDOG};

/// The namespace's end of the TAP.
pub(crate) const PEER: &str = "198.18.0.1";
/// The guest's address.
pub(crate) const GUEST: &str = "198.18.0.2";
/// The TAP's name in the namespace.
pub(crate) const TAP: &str = "tap0";
/// One boot moves 64 MiB each way (the passt tests take a boot per
/// direction): twice the usual watchdog.
const TIMEOUT: Duration = Duration::from_secs(2 * WATCHDOG.as_secs());

/// A network namespace holding a TAP with the peer address, removed (the
/// TAP with it) when dropped.
pub(crate) struct TapNamespace {
    pub(crate) name: String,
}

impl TapNamespace {
    pub(crate) fn new() -> Result<Self, String> {
        let ns = Self {
            name: format!("ferry-tap-{}", std::process::id()),
        };
        let _ = Command::new("modprobe").arg("tun").status();
        let ip = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| format!("cannot run ip: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "ip {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        };
        ip(&["netns", "add", &ns.name])?;
        let n = ns.name.as_str();
        ip(&["-n", n, "link", "set", "lo", "up"])?;
        ip(&["-n", n, "tuntap", "add", TAP, "mode", "tap"])?;
        ip(&["-n", n, "addr", "add", &format!("{PEER}/24"), "dev", TAP])?;
        ip(&["-n", n, "link", "set", TAP, "up"])?;
        Ok(ns)
    }

    /// Runs `f` on a thread of its own inside the namespace (threads it
    /// starts are inside too).
    pub(crate) fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file =
                std::fs::File::open(&path).map_err(|e| format!("cannot open {path}: {e}"))?;
            // SAFETY: setns on a namespace file we hold open; it moves only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(format!("setns: {}", std::io::Error::last_os_error()));
            }
            Ok(f())
        })
        .join()
        .map_err(|_| "the namespace thread panicked".to_string())?
    }
}

impl Drop for TapNamespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// ferry's closing count of the card's frames and bytes: (tx frames, tx
/// bytes, rx frames, rx bytes).
fn card_counters(stderr: &str) -> Option<(u64, u64, u64, u64)> {
    let line = stderr.lines().find(|l| l.contains("net0: tx "))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let after = |word: &str, skip: usize| -> Option<u64> {
        let at = words.iter().position(|w| *w == word)?;
        words.get(at + skip)?.parse().ok()
    };
    Some((
        after("tx", 1)?,
        after("tx", 3)?,
        after("rx", 1)?,
        after("rx", 3)?,
    ))
}

#[guest_test]
fn tap_static_address_ping_and_64_mib_each_way() -> TestResult {
    let ns = TapNamespace::new()?;
    let data = peers::pattern(TRANSFER);
    let expected = peers::sha256(&data);
    let (port, sink, source) = ns.run(move || {
        let (port, sink) = peers::tcp_sink_on(PEER, TIMEOUT, Some(TRANSFER as u64), |_| {});
        let source = peers::tcp_source_to(GUEST, 5000, data, TIMEOUT);
        (port, sink, source)
    })?;
    // guest -> namespace first (the guest holds the connection until the
    // sink closes it: only then has every byte arrived), then namespace ->
    // guest (the source retries until the guest listens).
    let cmd = format!(
        "ip addr add {GUEST}/24 dev eth0 && ip link set eth0 up && \
         ping -c 2 -W 5 {PEER} && echo ping-ok && \
         head -c {TRANSFER} /dev/urandom > /tmp/tx && sha256sum /tmp/tx && \
         nc {PEER} {port} -e sh -c 'cat /tmp/tx; cat > /dev/null' && rm /tmp/tx && \
         nc -l -p 5000 -e sh -c 'cat > /tmp/rx'; echo rx-bytes=$(wc -c < /tmp/rx); sha256sum /tmp/rx"
    );
    let out = Boot::new(&cmd)
        .kernel_args("ferry.dhcp=off")
        .in_netns(&ns.name)
        .args(&["--memory", "512", "--net", &format!("tap:{TAP}")])
        .timeout(TIMEOUT)
        .run()?;
    let got = sink.join().map_err(|_| "the sink panicked")??;
    let sent = source.join().map_err(|_| "the source panicked")?;
    check(
        out.status == Some(0),
        "the guest's commands should succeed",
        &out,
    )?;
    check(
        out.stdout.contains("ping-ok"),
        "the namespace's end of the TAP should answer pings",
        &out,
    )?;
    let guest_sent = guest_sha_of(&out.stdout, "/tmp/tx")
        .ok_or_else(|| format!("the guest printed no checksum\n{}", out.describe()))?;
    check(
        got.bytes == TRANSFER as u64 && got.sha256 == guest_sent,
        &format!(
            "the namespace got {} bytes with sha256 {}; the guest sent {TRANSFER} with {guest_sent}",
            got.bytes, got.sha256
        ),
        &out,
    )?;
    check(
        sent.is_ok(),
        &format!("the namespace should have sent its data: {sent:?}"),
        &out,
    )?;
    check(
        out.stdout.contains(&format!("rx-bytes={TRANSFER}"))
            && guest_sha_of(&out.stdout, "/tmp/rx").as_deref() == Some(expected.as_str()),
        "the guest should have every byte the namespace sent, unchanged",
        &out,
    )?;
    segments_of_64_kib(&out)
}

/// The card moved frames larger than the 1500-byte MTU both ways: the
/// guest's segments went to the TAP whole and the host's came whole.
fn segments_of_64_kib(out: &Outcome) -> TestResult {
    let (tx_frames, tx_bytes, rx_frames, rx_bytes) =
        card_counters(&out.stderr).ok_or("ferry did not log the card's counters")?;
    let average = |bytes: u64, frames: u64| bytes / frames.max(1);
    check(
        average(tx_bytes, tx_frames) > 8000 && average(rx_bytes, rx_frames) > 8000,
        &format!(
            "frames should average well above the MTU with segmentation offload: \
             tx {tx_frames} frames {tx_bytes} bytes, rx {rx_frames} frames {rx_bytes} bytes"
        ),
        out,
    )
}
