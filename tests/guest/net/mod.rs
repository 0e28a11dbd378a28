// SPDX-License-Identifier: Apache-2.0
//! The network: DHCP, SLAAC and ping through passt, TCP and UDP both ways
//! with the data checked, a driver rebind mid-transfer, checksum offload,
//! a rootless ferry, and passt's end (killed: restarted, or given up when
//! it keeps dying; outliving ferry: never).

mod peers;
pub(crate) mod tap;

use std::time::Duration;

use crate::common::{repo_root, Outcome};
use crate::harness::{check, guest_test, Boot, TestResult, WATCHDOG};

/// Asserts that no passt outlived ferry.
fn no_passt_left(out: &Outcome) -> TestResult {
    let left = peers::wait_no_passt(Duration::from_secs(3));
    check(
        left.is_empty(),
        &format!("passt processes left after ferry exited: {left:?}"),
        out,
    )
}

/// The address passt's log says it assigns for IPv4 (`v6` false) or IPv6.
fn passt_assigns(stderr: &str, v6: bool) -> Option<String> {
    stderr
        .lines()
        .filter_map(|l| l.split("assign:").nth(1))
        .map(|a| a.trim().to_string())
        .find(|a| a.contains(':') == v6)
}

/// Bytes of the integrity transfers (throughput is the bench's).
const TRANSFER: usize = 16 << 20;

/// Pulls the sha256 the guest printed (`HEX  /tmp/blob`).
fn guest_sha(stdout: &str) -> Option<String> {
    guest_sha_of(stdout, "/tmp/blob")
}

/// Pulls the sha256 the guest printed for `file` (`HEX  FILE`).
fn guest_sha_of(stdout: &str, file: &str) -> Option<String> {
    stdout.lines().find_map(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        words.windows(2).find_map(|w| {
            let is_hash = w[0].len() == 64 && w[0].bytes().all(|b| b.is_ascii_hexdigit());
            (is_hash && w[1] == file).then(|| w[0].to_string())
        })
    })
}

/// UDP datagrams each way in [`passt_network_addresses_tcp_and_udp_both_ways`].
const UDP_COUNT: u32 = 20;

/// One boot for what passt's network gives a guest (boots are what CI pays
/// for): DHCP, SLAAC and the gateway's pings; then TCP guest to host
/// ([`TRANSFER`] bytes, the guest holding the connection until the host
/// has them all), TCP host to guest through a `--publish` forward (the
/// host's source retries until the guest listens), and UDP both ways,
/// every byte and datagram checked.
#[guest_test]
fn passt_network_addresses_tcp_and_udp_both_ways() -> TestResult {
    let (sink_port, sink) = peers::tcp_sink(WATCHDOG, Some(TRANSFER as u64), |_| {});
    let data = peers::pattern(TRANSFER);
    let expected = peers::sha256(&data);
    let tcp_fwd = free_tcp_port();
    let source = peers::tcp_source(tcp_fwd, data, WATCHDOG);
    let (echo_port, echo) = peers::udp_echo(UDP_COUNT as usize, WATCHDOG);
    let udp_fwd = free_udp_port();
    let ping = peers::udp_ping(udp_fwd, UDP_COUNT, WATCHDOG);
    let cmd = format!(
        "ip -4 -o addr show eth0; ip route; \
         i=0; while ! ip -6 addr show eth0 scope global | grep -q inet6; do i=$((i+1)); [ $i -gt 60 ] && break; sleep 0.25; done; \
         ip -6 -o addr show eth0 scope global; \
         ping -c 2 -W 5 {gw} && echo ping-ok; \
         head -c {TRANSFER} /dev/urandom > /tmp/out && sha256sum /tmp/out && \
         nc {gw} {sink_port} -e sh -c 'cat /tmp/out; cat > /dev/null'; rm -f /tmp/out; \
         nc -l -p 5000 -e sh -c 'cat > /tmp/blob'; echo rx-bytes=$(wc -c < /tmp/blob); sha256sum /tmp/blob; rm -f /tmp/blob; \
         ft udp-echo 5001 {UDP_COUNT} & ft udp-ping {gw} {echo_port} {UDP_COUNT}; r=$?; wait $!; exit $((r + $?))",
        gw = peers::GATEWAY
    );
    let tcp_publish = format!("127.0.0.1:{tcp_fwd}:5000");
    let udp_publish = format!("127.0.0.1:{udp_fwd}:5001/udp");
    let out = Boot::new(&cmd)
        .args(&[
            "--memory",
            "512",
            "--publish",
            &tcp_publish,
            "--publish",
            &udp_publish,
        ])
        .run()?;
    let got = sink.join().map_err(|_| "the sink panicked")?;
    let sent = source.join().map_err(|_| "the source panicked")?;
    let echoed = echo.join().map_err(|_| "the echo server panicked")?;
    let pinged = ping.join().map_err(|_| "the pinger panicked")?;

    // Addresses, routes, the gateway.
    let v4 = passt_assigns(&out.stderr, false).ok_or("passt did not log its IPv4 assignment")?;
    check(
        out.stdout.contains(&format!("inet {v4}/24")),
        &format!("the guest should have passt's address {v4} by DHCP"),
        &out,
    )?;
    check(
        out.stdout.contains("default via 192.0.2.254"),
        "the default route should be passt's gateway",
        &out,
    )?;
    let v6 = passt_assigns(&out.stderr, true).ok_or("passt did not log its IPv6 assignment")?;
    let prefix: String = v6.split("::").next().unwrap_or_default().to_string();
    check(
        out.stdout.contains(&format!("inet6 {prefix}:")),
        &format!("the guest should have a global IPv6 address in passt's prefix {prefix}::/64"),
        &out,
    )?;
    check(
        out.stdout.contains("ping-ok"),
        "the gateway should answer pings",
        &out,
    )?;

    // TCP, guest to host.
    let got = got?;
    let guest_sent = guest_sha_of(&out.stdout, "/tmp/out")
        .ok_or_else(|| format!("the guest printed no checksum\n{}", out.describe()))?;
    check(
        got.bytes == TRANSFER as u64 && got.sha256 == guest_sent,
        &format!(
            "TCP guest to host: the host got {} bytes with sha256 {}; the guest sent {TRANSFER} with {guest_sent}",
            got.bytes, got.sha256
        ),
        &out,
    )?;

    // TCP, host to guest.
    check(
        sent.is_ok(),
        &format!("TCP host to guest: the host should have sent the data: {sent:?}"),
        &out,
    )?;
    check(
        out.stdout.contains(&format!("rx-bytes={TRANSFER}"))
            && guest_sha(&out.stdout).as_deref() == Some(expected.as_str()),
        &format!("TCP host to guest: the guest should have every byte, with sha256 {expected}"),
        &out,
    )?;

    // UDP, both ways.
    check(
        out.stdout
            .contains(&format!("udp-ping: sent {UDP_COUNT} echoed {UDP_COUNT}")),
        "UDP guest to host: every datagram should come back",
        &out,
    )?;
    check(
        echoed.is_ok(),
        &format!("UDP: the host should have echoed: {echoed:?}"),
        &out,
    )?;
    check(
        pinged.is_ok(),
        &format!("UDP host to guest through the forward: {pinged:?}"),
        &out,
    )?;
    check(
        out.status == Some(0),
        "the guest's checks should pass",
        &out,
    )?;
    check(
        !out.stderr.contains("passt connection lost"),
        "a VM that ends should not log its link to passt as lost",
        &out,
    )?;
    no_passt_left(&out)
}

/// Bytes of the transfer a driver rebind interrupts.
const REBIND_TRANSFER: usize = 16 << 20;
/// The host sends it in pieces this large, each followed by a pause, so
/// that it lasts 64 x 50 ms = 3.2 s or more: the guest rebinds its driver
/// within a few hundred ms of the first byte, mid-transfer on a fast
/// machine too (unpaced, 16 MiB can cross in under that).
const REBIND_PIECE: usize = 256 << 10;
const REBIND_PAUSE: Duration = Duration::from_millis(50);

/// The guest's driver lets go of the card and takes it again (the device is
/// reset and set up anew) while passt streams a transfer into the guest.
/// The interface goes down first, so that the guest stops taking frames and
/// ferry holds what it read of passt's stream: the next data path goes on
/// from there (the unit tests cover a read that ended inside a frame), so
/// the link stays up and the transfer completes intact once the guest has
/// its address again.
#[guest_test]
fn network_survives_a_driver_rebind() -> TestResult {
    let data = peers::pattern(REBIND_TRANSFER);
    let expected = peers::sha256(&data);
    let port = free_tcp_port();
    let source = peers::tcp_source_paced(port, data, REBIND_PIECE, REBIND_PAUSE, WATCHDOG);
    let cmd = "nc -l -p 5000 -e sh -c 'cat > /tmp/blob' & receiver=$!; \
         for i in $(seq 600); do [ -s /tmp/blob ] && break; sleep 0.02; done; \
         card=$(basename $(readlink /sys/class/net/eth0/device)); \
         echo at-rebind=$(wc -c < /tmp/blob); \
         ip link set eth0 down; sleep 0.5; \
         echo $card > /sys/bus/virtio/drivers/virtio_net/unbind; \
         echo $card > /sys/bus/virtio/drivers/virtio_net/bind; \
         ip link set eth0 up; \
         udhcpc -i eth0 -s /etc/udhcpc.script -q -n -t 10 -T 1 >/dev/null 2>&1 && echo rebound; \
         (sleep 60; kill $receiver 2>/dev/null) & wait $receiver; echo rx-bytes=$(wc -c < /tmp/blob); sha256sum /tmp/blob";
    let publish = format!("127.0.0.1:{port}:5000");
    let out = Boot::new(cmd)
        .args(&["--memory", "512", "--publish", &publish])
        .run()?;
    let sent = source.join().map_err(|_| "the source panicked")?;
    let at_rebind = out
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("at-rebind="))
        .and_then(|n| n.trim().parse::<usize>().ok());
    check(
        at_rebind.is_some_and(|n| n > 0 && n < REBIND_TRANSFER),
        &format!("the rebind should come mid-transfer (at {at_rebind:?} bytes)"),
        &out,
    )?;
    check(
        out.stdout.contains("rebound"),
        "the guest should get its address again after the rebind",
        &out,
    )?;
    check(
        !out.stderr.contains("passt connection lost"),
        "the link to passt should survive the reset",
        &out,
    )?;
    check(
        sent.is_ok(),
        &format!("the host should have sent the data: {sent:?}"),
        &out,
    )?;
    check(
        out.stdout.contains(&format!("rx-bytes={REBIND_TRANSFER}"))
            && guest_sha(&out.stdout).as_deref() == Some(expected.as_str()),
        &format!("the guest should have every byte, with sha256 {expected}"),
        &out,
    )?;
    no_passt_left(&out)
}

/// A TCP port free on 127.0.0.1 right now.
fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A UDP port free on 127.0.0.1 right now.
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A passt that records what ferry sends it: it starts the real passt and
/// relays the stream both ways, writing ferry's side to the file named by
/// [`RECORDING_RELAY_FILE`] (see the script).
const RECORDING_RELAY: &str = "tests/guest/net/passt-recording-relay.py";
/// The environment variable that names [`RECORDING_RELAY`]'s record.
const RECORDING_RELAY_FILE: &str = "PASST_RECORDING_RELAY_FILE";

/// The guest leaves TCP and UDP checksums to the card (VIRTIO_NET_F_CSUM):
/// every frame ferry hands passt (recorded by [`RECORDING_RELAY`], which
/// ferry runs as its passt) carries a valid one.
#[guest_test]
fn guest_checksums_are_completed() -> TestResult {
    const COUNT: u32 = 5;
    let (tcp_port, sink) = peers::tcp_sink(WATCHDOG, Some(1 << 20), |_| {});
    let (udp_port, echo) = peers::udp_echo(COUNT as usize, WATCHDOG);
    let record = std::env::temp_dir().join(format!("ferry-relay-{}.frames", std::process::id()));
    // The guest tries its TCP connection up to three times: once, inside
    // kvm-host, the first was reset at once ("nc: can't connect ...:
    // Connection reset by peer") with the host sink listening; an attempt
    // that never reached the sink leaves it waiting for the next.
    let relay = repo_root().join(RECORDING_RELAY);
    let cmd = format!(
        "for d in /sys/bus/virtio/devices/*; do echo features $(cat $d/device) $(cat $d/features); done; \
         for i in 1 2 3; do head -c 1048576 /dev/urandom | nc {gw} {tcp_port} && break; sleep 1; done; \
         ft udp-ping {gw} {udp_port} {COUNT}",
        gw = peers::GATEWAY
    );
    let out = Boot::new(&cmd)
        .args(&["--passt", &relay.to_string_lossy()])
        .env(RECORDING_RELAY_FILE, &record.to_string_lossy())
        .run();
    let frames = peers::recorded_l4_frames(&record);
    let _ = std::fs::remove_file(&record);
    let out = out?;
    let got = sink.join().map_err(|_| "the sink panicked")?;
    let echoed = echo.join().map_err(|_| "the echo server panicked")?;
    check(
        matches!(&got, Ok(r) if r.bytes == 1 << 20) && echoed.is_ok(),
        &format!("1 MiB over TCP and {COUNT} UDP echoes: {got:?}, {echoed:?}"),
        &out,
    )?;
    let negotiated = out
        .stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("features 0x0001 "))
        .any(|bits| bits.starts_with('1'));
    check(
        negotiated,
        "the guest should have taken the checksum offload (feature bit 0)",
        &out,
    )?;
    let frames = frames?;
    let to = |protocol: u8, port: u16| {
        frames
            .iter()
            .filter(|f| f.protocol == protocol && f.dst_port == port)
            .count()
    };
    let (tcp, udp) = (to(6, tcp_port), to(17, udp_port));
    check(
        tcp >= 16 && udp >= COUNT as usize,
        &format!("the recording should hold the guest's frames: {tcp} TCP, {udp} UDP"),
        &out,
    )?;
    let bad: Vec<_> = frames.iter().filter(|f| !f.valid).collect();
    check(
        bad.is_empty(),
        &format!(
            "{} of {} frames with a wrong checksum, e.g. {:?}",
            bad.len(),
            frames.len(),
            bad.first()
        ),
        &out,
    )?;
    no_passt_left(&out)
}

#[guest_test]
fn rootless_network() -> TestResult {
    let (port, sink) = peers::tcp_sink(WATCHDOG, Some(1 << 20), |_| {});
    let cmd = format!(
        "head -c 1048576 /dev/urandom > /tmp/blob && sha256sum /tmp/blob && \
         nc {} {port} -e sh -c 'cat /tmp/blob; cat > /dev/null'",
        peers::GATEWAY
    );
    // Debian's kernel: nobody cannot read the Kata-style one in root's cache.
    let out = Boot::new(&cmd).debian_kernel().as_nobody().run()?;
    let got = sink.join().map_err(|_| "the sink panicked")??;
    check(
        out.status == Some(0),
        "ferry as nobody should boot and network",
        &out,
    )?;
    check(
        out.stdout
            .contains("init: network configured: 192.0.2.1/24"),
        "DHCP should work rootless",
        &out,
    )?;
    let sent = guest_sha(&out.stdout)
        .ok_or_else(|| format!("the guest printed no checksum\n{}", out.describe()))?;
    check(
        got.bytes == 1 << 20 && got.sha256 == sent,
        "the transfer should be intact",
        &out,
    )?;
    no_passt_left(&out)
}

/// Kills every passt (ferry's, in these tests) with SIGKILL; their pids.
fn kill_passt() -> Vec<i32> {
    let pids = peers::passt_pids();
    for &pid in &pids {
        // SAFETY: kill with a pid read from /proc; the worst case is a no-op.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    pids
}

/// Waits for `child` (ferry, its console and log going to `log`) to end,
/// killing passt each time the console shows the next of `marks`; its
/// status, with the log as both its stdout and its stderr. A guest that
/// stalls is the nested-KVM hazard.
fn run_killing_passt_at(
    mut child: std::process::Child,
    log: &std::path::Path,
    marks: &[&str],
) -> TestResult<Outcome> {
    let started = std::time::Instant::now();
    let deadline = std::time::Instant::now() + WATCHDOG;
    let mut next = 0;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Ok(Some(status)) = child.try_wait() {
            return Ok(Outcome {
                status: status.code(),
                stdout: text.clone(),
                stderr: text,
                timed_out: false,
                elapsed: started.elapsed(),
            });
        }
        if next < marks.len() && text.lines().any(|l| l.trim() == marks[next]) {
            eprintln!("    killing passt {:?} at {}", kill_passt(), marks[next]);
            next += 1;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(crate::harness::TestError::Hazard(format!(
                "the guest stalled\n{}",
                text.lines().rev().take(20).collect::<Vec<_>>().join("\n")
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The guest's helpers for the passt-restart tests: `w N` waits for the
/// card's carrier to be N; `x I PORT` sends 1 MiB of fresh random bytes
/// (its sha256 printed for /tmp/bI) to the host's PORT, holding the
/// connection until the host closes it.
const CARRIER_AND_SEND: &str = "w(){ for i in $(seq 240); do [ $(cat /sys/class/net/eth0/carrier) = $1 ] && return; sleep 0.25; done; echo carrier-timeout-$((4*5)); }; \
    x(){ head -c 1048576 /dev/urandom > /tmp/b$1; sha256sum /tmp/b$1; nc 192.0.2.254 $2 -e sh -c 'cat /tmp/b'$1'; cat > /dev/null'; }; ";

/// passt is killed three times during one VM's life, the first time in
/// the middle of a transfer: each time ferry reports the link down, starts
/// a new passt and reports it up again, and a fresh transfer from the
/// guest arrives intact; the VM's status is the guest's.
#[guest_test]
fn passt_killed_three_times_comes_back_each_time() -> TestResult {
    let mut killed = false;
    let (stream_port, stream) = peers::tcp_sink(WATCHDOG, None, move |bytes| {
        if !killed && bytes > 1 << 20 {
            eprintln!("    killing passt {:?} after {bytes} bytes", kill_passt());
            killed = true;
        }
    });
    let sinks: Vec<_> = (0..3)
        .map(|_| peers::tcp_sink(WATCHDOG, Some(1 << 20), |_| {}))
        .collect();
    let cmd = format!(
        "{CARRIER_AND_SEND}nc 192.0.2.254 {stream_port} -e cat /dev/zero & w 0; w 1; echo up-1; kill $!; x 1 {p1}; \
         echo ready-$((2*10)); w 0; w 1; echo up-2; x 2 {p2}; \
         echo ready-$((3*10)); w 0; w 1; echo up-3; x 3 {p3}",
        p1 = sinks[0].0,
        p2 = sinks[1].0,
        p3 = sinks[2].0,
    );
    let scratch = crate::harness::Scratch::new("passt-restart")?;
    let log = scratch.path("ferry.log");
    let child = Boot::new(&cmd).spawn_logged(&log)?;
    let out = run_killing_passt_at(child, &log, &["ready-20", "ready-30"])?;
    let (status, text) = (out.status, out.stdout.clone());
    let streamed = stream.join().map_err(|_| "the sink panicked")??;
    check(
        streamed.bytes > 1 << 20,
        "the first transfer should have been under way when passt was killed",
        &out,
    )?;
    for (i, (_, sink)) in sinks.into_iter().enumerate() {
        let got = sink
            .join()
            .map_err(|_| "the sink panicked")?
            .map_err(|e| format!("after restart {}: {e}\n{}", i + 1, out.describe()))?;
        let file = format!("/tmp/b{}", i + 1);
        let sent = guest_sha_of(&text, &file).ok_or_else(|| {
            format!(
                "the guest printed no checksum for {file}\n{}",
                out.describe()
            )
        })?;
        check(
            got.bytes == 1 << 20 && got.sha256 == sent,
            &format!(
                "after restart {}: the host got {} bytes with sha256 {}, the guest sent 1 MiB with {sent}",
                i + 1,
                got.bytes,
                got.sha256
            ),
            &out,
        )?;
    }
    let count = |needle: &str| text.matches(needle).count();
    check(
        count("passt connection lost") >= 1 && count("passt relinked; link up") == 3,
        "ferry should log the link lost, and back up three times",
        &out,
    )?;
    check(
        count("passt restarted (pid") == 3
            && text.contains("passt restarted 3 times")
            && text.contains("waits), 3 relinks"),
        "ferry should log each restart, their count, and the card's 3 relinks",
        &out,
    )?;
    check(
        // (The kernel echoes its command line: the marker is computed.)
        !text.contains("carrier-timeout-20"),
        "the guest should see its link go down and come back each time",
        &out,
    )?;
    check(
        status == Some(0),
        "the VM should run on and end with the guest's status",
        &out,
    )?;
    no_passt_left(&out)
}

/// A passt that serves once: the first start is the real passt, every
/// later one exits at once (`PASST_ONCE_MARKER` names the file that says
/// it has run).
const PASST_ONCE: &str = "tests/guest/net/passt-once.sh";

/// passt killed, and every new one dies at once: ferry gives up after a
/// few tries, the card stays down, the VM runs on and its status is the
/// guest's; no passt is left.
#[guest_test]
fn a_passt_that_keeps_dying_is_given_up_and_the_vm_runs_on() -> TestResult {
    let scratch = crate::harness::Scratch::new("passt-gives-up")?;
    let marker = scratch.path("passt-ran");
    let log = scratch.path("ferry.log");
    let cmd = format!(
        "{CARRIER_AND_SEND}echo ready-$((6*7)); w 0; sleep 5; echo carrier=$(cat /sys/class/net/eth0/carrier); exit 7"
    );
    let child = Boot::new(&cmd)
        .args(&["--passt", &repo_root().join(PASST_ONCE).to_string_lossy()])
        .env("PASST_ONCE_MARKER", &marker.to_string_lossy())
        .spawn_logged(&log)?;
    let out = run_killing_passt_at(child, &log, &["ready-42"])?;
    let (status, text) = (out.status, out.stdout.clone());
    check(
        text.contains("giving up: the card stays down"),
        "ferry should give passt up and say so",
        &out,
    )?;
    check(
        text.matches("cannot restart passt").count() == 3,
        "ferry should have tried three times",
        &out,
    )?;
    check(
        text.lines().any(|l| l.trim() == "carrier=0"),
        "the guest's link should stay down",
        &out,
    )?;
    check(
        status == Some(7),
        "the VM should run on and end with the guest's status 7",
        &out,
    )?;
    no_passt_left(&out)
}

#[guest_test]
fn sigkill_leaves_no_passt() -> TestResult {
    let mut child = Boot::new("sleep 600").spawn()?;
    let pid = child.id() as i32;
    // Wait for ferry's passt, then a little for the guest to be under way.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while peers::passt_pids().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let had_passt = !peers::passt_pids().is_empty();
    std::thread::sleep(Duration::from_secs(3));
    // SAFETY: our own child's pid.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let _ = child.wait();
    let left = peers::wait_no_passt(Duration::from_secs(5));
    if !had_passt {
        return Err("ferry never started passt".into());
    }
    if left.is_empty() {
        Ok(())
    } else {
        Err(format!("passt outlived a SIGKILLed ferry: {left:?}").into())
    }
}
