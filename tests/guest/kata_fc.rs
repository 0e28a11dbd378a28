// SPDX-License-Identifier: Apache-2.0
//! Kata's two Firecracker drivers, replayed request by request against
//! ferry, one boot each: the Go runtime's (`src/runtime/virtcontainers/
//! fc.go`) and runtime-rs's (`src/runtime-rs/crates/hypervisor/src/
//! firecracker/`). Each step names the Kata file and function it comes
//! from. The guest is Kata's: its image as osbuilder makes it with
//! `AGENT_INIT=yes` (kata-agent as /sbin/init, resources/kata/), booted as
//! Kata boots it (`root=/dev/vda1 ... ro`, no initrd) on the Kata-style
//! kernel (resources/kernel/), with a TAP in a network namespace as Kata's
//! `tcfilter` model leaves it. The runtime's side of the agent protocol is
//! resources/kata's client, through the hybrid vsock as each driver dials
//! it: `Check`, the pod's address and route (`UpdateInterface`,
//! `UpdateRoutes`, then a ping from the namespace through the TAP), and
//! after the hot-plug the agent's storage call for the container's drive
//! (`CreateSandbox` with an `mmioblk` storage on `/dev/vdb`), its mount
//! seen by `GetVolumeStats`. containerd and Kata's shim are not part of it.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::api::ext4_with;
use crate::common::FERRY;
use crate::harness::{
    guest_test, kata_agent_dir, kata_style_kernel, Scratch, TestError, TestResult,
};
use crate::kata_boot::json_string;
use crate::net::tap::{TapNamespace, GUEST, PEER, TAP};

/// Kata's agent port (`fc.go: GenerateSocket`; runtime-rs `server_port`).
const AGENT_PORT: u32 = 1024;
/// The port the agent serves its log on with `agent.log_vport=1025`
/// (runtime-rs's `LOG_VPORT`).
const AGENT_LOG_PORT: u32 = 1025;
/// The guest card's MAC, as both drivers give it (the agent finds the
/// interface by it).
const GUEST_MAC: &str = "0a:58:0a:f4:00:05";
/// Where Kata mounts a container's root filesystem in the guest
/// (`kataGuestSharedDir()/<container id>/rootfs`).
const CONTAINER_ROOTFS: &str = "/run/kata-containers/shared/containers/ferry-replay/rootfs";

/// An HTTP/1.1 answer.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP client on a UNIX socket that keeps its connection alive and
/// dials again when it breaks, as both drivers' clients do (Go's
/// `http.Transport`, hyper's pooled legacy client).
struct Client {
    sock: PathBuf,
    conn: Option<UnixStream>,
}

impl Client {
    fn new(sock: &Path) -> Self {
        Self {
            sock: sock.to_path_buf(),
            conn: None,
        }
    }

    /// Sends `request` (the bytes exactly) and reads one answer.
    fn send(&mut self, request: &[u8]) -> Result<Reply, String> {
        let result = self.exchange(request);
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    fn exchange(&mut self, request: &[u8]) -> Result<Reply, String> {
        if self.conn.is_none() {
            let conn = UnixStream::connect(&self.sock).map_err(|e| format!("connect: {e}"))?;
            conn.set_read_timeout(Some(Duration::from_secs(30)))
                .map_err(|e| e.to_string())?;
            self.conn = Some(conn);
        }
        let conn = self.conn.as_mut().expect("connected");
        conn.write_all(request).map_err(|e| format!("write: {e}"))?;
        let mut reader = BufReader::new(&*conn);
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .map_err(|e| format!("read: {e}"))?;
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {line:?}"))?;
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            reader
                .read_line(&mut line)
                .map_err(|e| format!("read: {e}"))?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| format!("bad header {line:?}"))?;
            headers.push((name.to_string(), value.trim().to_string()));
        }
        let mut reply = Reply {
            status,
            headers,
            body: String::new(),
        };
        let len: usize = reply
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        reader
            .read_exact(&mut body)
            .map_err(|e| format!("read the body: {e}"))?;
        reply.body = String::from_utf8_lossy(&body).into_owned();
        if reply
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            self.conn = None;
        }
        Ok(reply)
    }
}

/// A request as Go's `net/http` writes it for go-openapi (`fc.go:
/// newFireClient`): canonical header names in Go's order, `Host:
/// localhost`, gzip accepted, a body with a trailing newline
/// (`json.Encoder.Encode`).
fn go_request(method: &str, path: &str, body: Option<&str>) -> Vec<u8> {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: Go-http-client/1.1\r\n"
    );
    match body {
        Some(body) => {
            let body = format!("{body}\n");
            req.push_str(&format!(
                "Content-Length: {}\r\nAccept: application/json\r\nContent-Type: \
                 application/json\r\nAccept-Encoding: gzip\r\n\r\n{body}",
                body.len()
            ));
        }
        None => req.push_str("Accept: application/json\r\nAccept-Encoding: gzip\r\n\r\n"),
    }
    req.into_bytes()
}

/// A request as hyper writes it for runtime-rs (`fc_api.rs: send_request`):
/// lowercase header names, `host` the hex of the socket path and `:0`
/// (hyperlocal's URI), the body without a trailing newline.
fn rs_request(sock: &Path, method: &str, path: &str, body: &str) -> Vec<u8> {
    let host: String = sock
        .to_string_lossy()
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        "{method} {path} HTTP/1.1\r\naccept: application/json\r\ncontent-type: \
         application/json\r\nhost: {host}:0\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// runtime-rs's `fc_api.rs: request_with_retry`: up to 500 tries, 10 ms
/// apart, on any error or non-2xx answer.
fn rs_put(client: &mut Client, method: &str, path: &str, body: &str) -> Result<u32, String> {
    let request = rs_request(&client.sock.clone(), method, path, body);
    let mut last = String::new();
    for attempt in 1..=500 {
        match client.send(&request) {
            Ok(reply) if (200..300).contains(&reply.status) => return Ok(attempt),
            Ok(reply) => last = format!("{} {}", reply.status, reply.body),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(format!(
        "{method} {path} {body}: after 500 attempts, it still doesn't work (last: {last})"
    ))
}

/// Kata's guest image: kata-agent as /sbin/init in an ext4 partition from
/// 1 MiB of an MBR disk (resources/kata/build-agent-initramfs.sh).
fn kata_image() -> Result<PathBuf, String> {
    let image = kata_agent_dir()?.join("kata-containers.img");
    if image.exists() {
        Ok(image)
    } else {
        Err(format!(
            "{} is missing: scripts/setup builds it",
            image.display()
        ))
    }
}

/// Bind mounts made as Kata's `fcJailResource` makes them, undone (as
/// `cleanupJail` does, `umount2(MNT_DETACH)`) when dropped.
#[derive(Default)]
struct Binds(Vec<PathBuf>);

impl Binds {
    /// Binds `src` over `dst` (created empty if missing).
    fn bind(&mut self, src: &Path, dst: &Path) -> Result<(), String> {
        if !dst.exists() {
            std::fs::write(dst, b"").map_err(|e| format!("cannot create {dst:?}: {e}"))?;
        }
        let out = Command::new("mount")
            .arg("--bind")
            .arg(src)
            .arg(dst)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount --bind {src:?} {dst:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        self.0.push(dst.to_path_buf());
        Ok(())
    }
}

impl Drop for Binds {
    fn drop(&mut self) {
        for dst in self.0.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(dst).status();
        }
    }
}

/// Creates a FIFO with mode 0000 and opens it `O_RDONLY|O_NONBLOCK`, as
/// `fc.go: fcListenToFifo` does, and reads it line by line on a thread
/// until `stop`, into the returned text.
fn listen_to_fifo(
    path: &Path,
    stop: Arc<AtomicBool>,
) -> Result<(std::thread::JoinHandle<()>, Arc<Mutex<String>>), String> {
    let c = std::ffi::CString::new(path.to_string_lossy().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::mkfifo(c.as_ptr(), 0) } != 0 {
        return Err(format!(
            "mkfifo {path:?}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: as above; the fd is owned by the File below.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_NONBLOCK) };
    if fd < 0 {
        return Err(format!(
            "open {path:?}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: a fresh fd we own.
    let mut file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let text = Arc::new(Mutex::new(String::new()));
    let out = text.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match file.read(&mut buf) {
                Ok(n) if n > 0 => out
                    .lock()
                    .expect("the FIFO's text")
                    .push_str(&String::from_utf8_lossy(&buf[..n])),
                _ => {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    });
    Ok((reader, text))
}

/// The runtime's side of Kata's agent protocol: resources/kata's client
/// through the hybrid vsock, dialled as the driver dials it (`verb`:
/// `CONNECT`, or runtime-rs's `connect`).
struct AgentLink {
    client: PathBuf,
    hvsock: PathBuf,
    verb: &'static str,
}

impl AgentLink {
    fn new(hvsock: &Path, verb: &'static str) -> Result<Self, String> {
        Ok(Self {
            client: kata_agent_dir()?.join("kata-agent-client"),
            hvsock: hvsock.to_path_buf(),
            verb,
        })
    }

    /// Makes `calls` (`NAME` or `NAME=JSON`) on one connection, dialling
    /// for up to `wait`; the answers, in order.
    fn call(&self, calls: &[String], wait: Duration) -> Result<Vec<serde_json::Value>, String> {
        let out = Command::new(&self.client)
            .arg("--server-address")
            .arg(&self.hvsock)
            .args(["--hybrid-vsock", "--verb", self.verb, "--timeout", "30"])
            .args(["--port", &AGENT_PORT.to_string()])
            .args(["--wait", &wait.as_secs().to_string()])
            .args(calls)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.client.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!(
                "the agent's calls {calls:?} failed: {}\n{stdout}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        stdout
            .lines()
            .map(|line| {
                serde_json::from_str::<serde_json::Value>(line)
                    .map(|v| v["response"].clone())
                    .map_err(|e| format!("the client printed {line:?}: {e}"))
            })
            .collect()
    }
}

/// `Check` until the agent answers SERVING, dialling for up to `wait`.
fn agent_check(agent: &AgentLink, wait: Duration) -> Result<(), String> {
    let answers = agent.call(&["Check".into()], wait)?;
    // grpc.health.v1's SERVING is 1.
    if answers.first().map(|a| a["status"].clone()) != Some(serde_json::json!(1)) {
        return Err(format!("Check did not answer SERVING: {answers:?}"));
    }
    Ok(())
}

/// The pod's network as both runtimes set it up after boot
/// (`kata_agent.go: updateInterface, updateRoutes`; runtime-rs's
/// `network/network_with_netns.rs` through the agent): the guest's address
/// on the card with [`GUEST_MAC`] and a default route through the peer;
/// then the guest answers pings from the namespace, through the TAP.
fn agent_sets_up_the_network(agent: &AgentLink, ns: &TapNamespace) -> Result<(), String> {
    let interface = serde_json::json!({"interface": {
        "device": "eth0", "name": "eth0", "mtu": 1500, "hwAddr": GUEST_MAC,
        "IPAddresses": [{"family": 0, "address": GUEST, "mask": "24"}],
    }});
    let routes = serde_json::json!({"routes": {"Routes": [
        {"dest": "", "gateway": PEER, "device": "eth0", "source": "", "scope": 0, "family": 0},
    ]}});
    let answers = agent.call(
        &[
            format!("UpdateInterface={interface}"),
            format!("UpdateRoutes={routes}"),
            "ListRoutes".into(),
        ],
        Duration::ZERO,
    )?;
    if !answers[0].to_string().contains(GUEST) {
        return Err(format!(
            "UpdateInterface should answer with the address: {answers:?}"
        ));
    }
    if !answers[2]
        .to_string()
        .contains(&format!("\"gateway\":\"{PEER}\""))
    {
        return Err(format!(
            "the agent's routes should hold the default route: {answers:?}"
        ));
    }
    let in_ns = |args: &[&str]| {
        Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .args(args)
            .output()
            .map(|out| {
                let text = String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr);
                (out.status.success(), text)
            })
            .unwrap_or_else(|e| (false, format!("cannot run {args:?}: {e}")))
    };
    // busybox's ping: scripts/setup installs busybox-static, not iputils.
    let (pinged, answer) = in_ns(&["busybox", "ping", "-c", "3", "-W", "3", GUEST]);
    if !pinged {
        let interfaces = agent.call(&["ListInterfaces".into()], Duration::ZERO);
        return Err(format!(
            "the guest should answer pings through the TAP: {answer}\n{}\n{}\nthe agent's interfaces: {interfaces:?}",
            in_ns(&["ip", "-s", "link", "show", TAP]).1,
            in_ns(&["ip", "neigh"]).1,
        ));
    }
    Ok(())
}

/// The container's drive, hot-plugged as `/dev/vdb` of `bytes`, mounted
/// by the agent as Kata asks for a block-device root filesystem on
/// virtio-mmio (`kata_agent.go: buildContainerRootfs`: driver `mmioblk`,
/// the device path, its filesystem, the container's rootfs directory);
/// `GetVolumeStats` there must see that filesystem, not the image's.
fn agent_mounts_the_drive(agent: &AgentLink, bytes: u64) -> Result<u64, String> {
    let sandbox = serde_json::json!({
        "hostname": "ferry-replay", "sandbox_id": "ferry-replay",
        "storages": [{"driver": "mmioblk", "source": "/dev/vdb", "fstype": "ext4",
                      "options": [], "mount_point": CONTAINER_ROOTFS}],
    });
    let stats = serde_json::json!({"volume_guest_path": CONTAINER_ROOTFS});
    let answers = agent.call(
        &[
            format!("CreateSandbox={sandbox}"),
            format!("GetVolumeStats={stats}"),
        ],
        Duration::ZERO,
    )?;
    // VolumeUsage's unit BYTES is 1.
    let total = answers[1]["usage"]
        .as_array()
        .and_then(|u| u.iter().find(|u| u["unit"] == serde_json::json!(1)))
        .and_then(|u| u["total"].as_u64())
        .ok_or_else(|| format!("GetVolumeStats has no byte usage: {answers:?}"))?;
    if total > bytes || total < bytes / 2 {
        return Err(format!(
            "the mount should be the {bytes}-byte drive's filesystem, not {total} bytes: {answers:?}"
        ));
    }
    Ok(total)
}

/// Processes (other than this one) whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!("{name}: {cmdline}"));
        }
    }
    found
}

/// runtime-rs's log forwarder: `connect 1025` on the hybrid vsock, then
/// the agent's log, one JSON object a line, read for the VM's whole life
/// (the agent's logger treats a reader that goes away as fatal). The first
/// line that is one comes back on the channel.
fn follow_agent_log(hvsock: &Path) -> Result<std::sync::mpsc::Receiver<String>, String> {
    let mut stream = UnixStream::connect(hvsock).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(format!("connect {AGENT_LOG_PORT}\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|e| format!("the agent's log port: {e}"))?;
    if !line.starts_with("OK ") {
        return Err(format!("`connect {AGENT_LOG_PORT}` answered {line:?}"));
    }
    let _ = reader.get_ref().set_read_timeout(None);
    let (first, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut first = Some(first);
        let mut line = String::new();
        while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
            let is_json = serde_json::from_str::<serde_json::Value>(&line)
                .is_ok_and(|v| v["msg"].is_string());
            if is_json {
                if let Some(first) = first.take() {
                    let _ = first.send(line.trim().chars().take(120).collect());
                }
            }
            line.clear();
        }
    });
    Ok(lines)
}

/// The container's root filesystem for the hot-plug: an 8 MiB ext4.
const CONTAINER_BYTES: u64 = 8 << 20;

/// A container's root filesystem in `scratch`, [`CONTAINER_BYTES`] of ext4.
fn container_rootfs(scratch: &Scratch) -> TestResult<PathBuf> {
    ext4_with(scratch, "container.ext4", "the container's root filesystem")
}

/// A loop device attached to a file, detached when dropped.
struct LoopDevice {
    path: PathBuf,
}

impl LoopDevice {
    /// Attaches `file` to the first free loop device.
    fn attach(file: &Path) -> TestResult<Self> {
        let _ = Command::new("modprobe").arg("loop").status();
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file)
            .output()
            .map_err(|e| format!("losetup: {e}"))?;
        if !out.status.success() {
            return Err(format!("losetup failed: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Ok(Self { path })
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}

/// Spawns `cmd` from a thread that entered the namespace with `setns`, as
/// both drivers start the VMM in the pod's namespace (Go: `network.Run`;
/// runtime-rs: `setns` in `pre_exec`): same mount namespace, /sys unchanged.
fn spawn_in(ns: &TapNamespace, mut cmd: Command) -> TestResult<Child> {
    ns.run(move || cmd.spawn())?
        .map_err(|e| format!("cannot start ferry: {e}").into())
}

/// Kills and reaps `child` if it still runs (a failed test's leftover).
struct Reap(Option<Child>);

impl Drop for Reap {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[guest_test]
fn kata_go_driver_replay() -> TestResult {
    let kernel = kata_style_kernel()?;
    let ns = TapNamespace::new()?;
    let scratch = Scratch::new("kata-go")?;
    let mut binds = Binds::default();

    // fc.go: CreateVM, setPaths (id truncated to 32, basename of the binary).
    let vm_path = scratch.path("vc/ferry/0123456789abcdef0123456789abcdef");
    let root = vm_path.join("root");
    let api_sock = root.join("run/firecracker.socket");
    let hvsock = root.join("kata.hvsock");
    // fc.go: fcInitConfiguration: MkdirAll(<jailerRoot>/run).
    std::fs::create_dir_all(root.join("run")).map_err(|e| format!("mkdir: {e}"))?;
    // fcSetBootSource, fcSetVMRootfs: the kernel and image bound into the root.
    binds.bind(&kernel, &root.join("vmlinux"))?;
    binds.bind(&kata_image()?, &root.join("rootfs"))?;
    // createDiskPool: eight 0-byte placeholders.
    for i in 0..8 {
        std::fs::write(root.join(format!("drive_{i}")), b"")
            .map_err(|e| format!("cannot create drive_{i}: {e}"))?;
    }
    // fcSetLogger, fcSetMetrics: fcListenToFifo (mode 0000, read by Kata),
    // bound into the root.
    let stop = Arc::new(AtomicBool::new(false));
    let (logs, log_text) = listen_to_fifo(&vm_path.join("logs.fifo"), stop.clone())?;
    let (metrics, metrics_text) = listen_to_fifo(&vm_path.join("metrics.fifo"), stop.clone())?;
    binds.bind(&vm_path.join("logs.fifo"), &root.join("logs.fifo"))?;
    binds.bind(&vm_path.join("metrics.fifo"), &root.join("metrics.fifo"))?;

    // A.6: config.KernelParams (image: systemd defaults; the agent's
    // cdh_api_timeout), GetKernelRootParams(ext4), fcKernelParams, and
    // the debug tail (console=ttyS0: the test reads the console).
    let boot_args = "systemd.unit=kata-containers.target systemd.mask=systemd-networkd.service \
         systemd.mask=systemd-networkd.socket agent.cdh_api_timeout=50 root=/dev/vda1 \
         rootflags=data=ordered,errors=remount-ro ro rootfstype=ext4 pci=off reboot=k \
         panic=1 iommu=off net.ifnames=0 random.trust_cpu=on acpi=off console=ttyS0";
    let r = |name: &str| json_string(&root.join(name).display().to_string());
    let drive = |id: &str, ro: bool| {
        format!(
            "\t\t{{\n\t\t\t\"drive_id\": \"{id}\",\n\t\t\t\"is_read_only\": {ro},\n\t\t\t\
             \"is_root_device\": false,\n\t\t\t\"path_on_host\": {}\n\t\t}}",
            r(id)
        )
    };
    let mut drives = vec![drive("rootfs", true)];
    drives.extend((0..8).map(|i| drive(&format!("drive_{i}"), false)));
    // fc.go: StartVM: json.MarshalIndent(fcConfig, "", "\t"), types.FcConfig's
    // field order, the go-swagger models' fields alphabetical.
    let config = format!(
        "{{\n\t\"boot-source\": {{\n\t\t\"boot_args\": {boot_args},\n\t\t\"kernel_image_path\": {kernel}\n\t}},\n\
         \t\"machine-config\": {{\n\t\t\"mem_size_mib\": 512,\n\t\t\"smt\": false,\n\t\t\"vcpu_count\": 1\n\t}},\n\
         \t\"vsock\": {{\n\t\t\"guest_cid\": 3,\n\t\t\"uds_path\": {hvsock},\n\t\t\"vsock_id\": \"root\"\n\t}},\n\
         \t\"logger\": {{\n\t\t\"level\": \"Debug\",\n\t\t\"log_path\": {log}\n\t}},\n\
         \t\"metrics\": {{\n\t\t\"metrics_path\": {metrics}\n\t}},\n\
         \t\"drives\": [\n{drives}\n\t],\n\
         \t\"network-interfaces\": [\n\t\t{{\n\t\t\t\"guest_mac\": \"{GUEST_MAC}\",\n\
         \t\t\t\"host_dev_name\": \"{TAP}\",\n\t\t\t\"iface_id\": \"eth0\",\n\
         \t\t\t\"rx_rate_limiter\": {{}},\n\t\t\t\"tx_rate_limiter\": {{}}\n\t\t}}\n\t]\n}}",
        boot_args = json_string(boot_args),
        kernel = r("vmlinux"),
        hvsock = json_string(&hvsock.display().to_string()),
        log = r("logs.fifo"),
        metrics = r("metrics.fifo"),
        drives = drives.join(",\n"),
    );
    let config_path = vm_path.join("fcConfig.json");
    std::fs::write(&config_path, config).map_err(|e| format!("cannot write the config: {e}"))?;
    std::fs::set_permissions(&config_path, std::fs::Permissions::from_mode(0o640))
        .map_err(|e| e.to_string())?;
    // fcInit: fcJailResource(fcConfigPath, "fcConfig.json").
    binds.bind(&config_path, &root.join("fcConfig.json"))?;

    // fcInit: getVersionNumber, parseVersion, checkVersion.
    let version = Command::new(FERRY)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run ferry --version: {e}"))?;
    let stdout = String::from_utf8_lossy(&version.stdout).into_owned();
    let first = stdout.lines().next().unwrap_or("");
    let field = first.split(' ').nth(1).unwrap_or("");
    let semver = field.trim().trim_start_matches('v');
    let nums: Vec<u64> = semver
        .split(['-', '+'])
        .next()
        .unwrap_or("")
        .split('.')
        .filter_map(|p| p.parse().ok())
        .collect();
    if !version.status.success() || nums.len() != 3 || (nums[0], nums[1], nums[2]) < (0, 21, 1) {
        return Err(format!("Kata's version check refuses ferry --version: {stdout:?}").into());
    }

    // fcInit: the unjailed argv, in the pod's namespace; with debug on,
    // stdout and stderr go to the console (here a file).
    let console = scratch.path("console.log");
    let console_file =
        std::fs::File::create(&console).map_err(|e| format!("cannot create the console: {e}"))?;
    let mut cmd = Command::new(FERRY);
    cmd.arg("--api-sock")
        .arg(&api_sock)
        .arg("--config-file")
        .arg(root.join("fcConfig.json"))
        .stdin(Stdio::null())
        .stdout(console_file.try_clone().map_err(|e| e.to_string())?)
        .stderr(console_file);
    let started = Instant::now();
    let mut ferry = Reap(Some(spawn_in(&ns, cmd)?));
    let console_text = || std::fs::read_to_string(&console).unwrap_or_default();
    let fail = |what: String| -> TestResult {
        let text = console_text();
        let lines: Vec<&str> = text.lines().collect();
        Err(format!(
            "{what}\n--- console and ferry's stderr (end) ---\n{}\n--- logs.fifo ---\n{}",
            lines[lines.len().saturating_sub(25)..].join("\n"),
            log_text.lock().expect("the log").clone()
        )
        .into())
    };

    // fcInit: waitVMMRunning: GET / every 10 ms until "Running" (within
    // int(seconds) > 10); one kept-alive connection.
    let mut client = Client::new(&api_sock);
    let mut polls = 0;
    loop {
        polls += 1;
        if let Ok(reply) = client.send(&go_request("GET", "/", None)) {
            if reply.status == 200 {
                if reply.header("content-encoding").is_some() {
                    return fail(format!("GET / came back encoded: {:?}", reply.headers));
                }
                if reply
                    .header("content-type")
                    .is_some_and(|t| t != "application/json")
                {
                    return fail(format!(
                        "go-openapi has no consumer for {:?}",
                        reply.headers
                    ));
                }
                let info: serde_json::Value = serde_json::from_str(&reply.body)
                    .map_err(|e| format!("GET / body {:?}: {e}", reply.body))?;
                // vmRunning dereferences state without a nil check.
                match info["state"].as_str() {
                    Some("Running") => break,
                    Some(_) => {}
                    None => return fail(format!("GET / has no state: {}", reply.body)),
                }
            }
        }
        if started.elapsed().as_secs() > 10 {
            return fail(format!(
                "Failed to connect to firecrackerinstance (timeout 10s) after {polls} polls"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let running_after = started.elapsed();
    // StartVM: os.Chmod(hybridSocketPath, 0640): the socket must exist.
    if let Err(e) = std::fs::set_permissions(&hvsock, std::fs::Permissions::from_mode(0o640)) {
        return fail(format!("Could not change socket permissions: {e}"));
    }

    // kata_agent.go: check → HybridVSockDialer: CONNECT 1024 in a loop,
    // within the agent's dial_timeout (45 s); then startSandbox's network.
    let agent = AgentLink::new(&hvsock, "CONNECT")?;
    if let Err(e) = agent_check(&agent, Duration::from_secs(45)) {
        if !console_text().contains("Run /sbin/init") {
            // The guest never got to its init: the emulated host's hazard.
            return Err(TestError::Hazard(format!(
                "the guest never started its agent: {e}\n{}",
                console_text()
            )));
        }
        return fail(e);
    }
    let agent_after = started.elapsed();
    if let Err(e) = agent_sets_up_the_network(&agent, &ns) {
        return fail(e);
    }

    // fc.go: hotplugBlockDevice → fcJailResource(drive.File, "drive_0")
    // binds the container's rootfs over the placeholder; fcUpdateBlockDrive
    // PATCHes the placeholder's path. kata_agent.go: the container's
    // storage, mounted by the agent.
    let container = container_rootfs(&scratch)?;
    binds.bind(&container, &root.join("drive_0"))?;
    let body = format!(
        "{{\"drive_id\":\"drive_0\",\"path_on_host\":{}}}",
        r("drive_0")
    );
    match client.send(&go_request("PATCH", "/drives/drive_0", Some(&body))) {
        Ok(reply) if reply.status == 204 => {}
        Ok(reply) => return fail(format!("PATCH: {} {}", reply.status, reply.body)),
        Err(e) => return fail(format!("PATCH: {e}")),
    }
    let mounted = match agent_mounts_the_drive(&agent, CONTAINER_BYTES) {
        Ok(bytes) => bytes,
        Err(e) => return fail(e),
    };

    // fc.go: StopVM → fcEnd → WaitLocalProcess(pid, 15, SIGTERM).
    let child = ferry.0.as_mut().expect("ferry runs");
    // SAFETY: our own child, not yet reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let term = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if term.elapsed() > Duration::from_secs(15) {
            return fail("ferry should end within 15 s of SIGTERM (Kata kills it then)".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stopped_in = term.elapsed();
    ferry.0 = None;
    stop.store(true, Ordering::SeqCst);
    logs.join().map_err(|_| "the log reader panicked")?;
    metrics.join().map_err(|_| "the metrics reader panicked")?;
    let log_text = log_text.lock().expect("the log").clone();
    let metrics_text = metrics_text.lock().expect("the metrics").clone();
    let left: Vec<&Path> = [api_sock.as_path(), hvsock.as_path()]
        .into_iter()
        .filter(|p| p.exists())
        .collect();
    let procs = processes_mentioning(&vm_path.display().to_string());
    if !left.is_empty() || !procs.is_empty() {
        return fail(format!(
            "ferry should leave nothing behind: files {left:?}, processes {procs:?}"
        ));
    }
    if log_text.trim().is_empty() {
        return fail("ferry's log should reach Kata's logs.fifo".into());
    }
    for line in metrics_text.lines() {
        // fc_metrics.go: each line json.Unmarshal'd.
        if serde_json::from_str::<serde_json::Value>(line).is_err() {
            return fail(format!("a metrics line is not JSON: {line:?}"));
        }
    }
    // Cleanup → cleanupJail: umount, RemoveAll(vmPath).
    drop(binds);
    std::fs::remove_dir_all(&vm_path).map_err(|e| format!("RemoveAll(vmPath): {e}"))?;
    eprintln!(
        "kata go replay: Running after {:.2} s ({polls} polls), the agent after {:.2} s, \
         the hot-plugged drive mounted ({mounted} bytes), SIGTERM → exit {:?} in {:.2} s; \
         {} log lines, {} metrics lines",
        running_after.as_secs_f64(),
        agent_after.as_secs_f64(),
        status.code(),
        stopped_in.as_secs_f64(),
        log_text.lines().count(),
        metrics_text.lines().count()
    );
    Ok(())
}

#[guest_test]
fn kata_runtime_rs_driver_replay() -> TestResult {
    let kernel = kata_style_kernel()?;
    let ns = TapNamespace::new()?;
    let scratch = Scratch::new("kata-rs")?;
    let image = kata_image()?;

    // inner_hypervisor.rs: prepare_vm, unjailed: vm_path = /run/kata/<sid>
    // (the full 64-character sandbox id), run_dir, asock_path.
    let vm_path = scratch.path("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
    let api_sock = vm_path.join("run/fc.sock");
    let hvsock = vm_path.join("kata.hvsock");
    std::fs::create_dir_all(vm_path.join("run")).map_err(|e| format!("mkdir: {e}"))?;

    // inner.rs: prepare_vmm: `--api-sock` only, in the pod's namespace,
    // stderr piped (its EOF is how runtime-rs learns the VMM is gone);
    // stdout inherited (here the console file: console=ttyS0).
    let console = scratch.path("console.log");
    let console_file =
        std::fs::File::create(&console).map_err(|e| format!("cannot create the console: {e}"))?;
    let mut cmd = Command::new(FERRY);
    cmd.arg("--api-sock")
        .arg(&api_sock)
        .stdout(console_file)
        .stderr(Stdio::piped());
    let mut child = spawn_in(&ns, cmd)?;
    let mut stderr = child.stderr.take().expect("piped stderr");
    let stderr_text = Arc::new(Mutex::new(String::new()));
    let stderr_out = stderr_text.clone();
    let stderr_eof = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            stderr_out
                .lock()
                .expect("stderr")
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let mut ferry = Reap(Some(child));
    let fail = |what: String| -> TestResult {
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        Err(format!(
            "{what}\n--- console (end) ---\n{}\n--- ferry's stderr ---\n{}",
            lines[lines.len().saturating_sub(25)..].join("\n"),
            stderr_text.lock().expect("stderr")
        )
        .into())
    };

    // fc_api.rs: prepare_vmm_resources, every request through
    // request_with_retry (the socket may not exist yet), serde_json's
    // json! bodies: compact, keys sorted.
    let mut client = Client::new(&api_sock);
    let boot_args = format!(
        "reboot=k panic=1 systemd.unit=kata-containers.target \
         systemd.mask=systemd-networkd.service systemd.mask=systemd-networkd.socket pci=off \
         iommu=off root=/dev/vda1 rootflags=data=ordered,errors=remount-ro ro rootfstype=ext4 \
         agent.cdh_api_timeout=50 console=ttyS0 agent.log_vport={AGENT_LOG_PORT}"
    );
    let mut steps: Vec<(&str, String, String)> = vec![
        (
            "PUT",
            "/boot-source".into(),
            serde_json::json!({"boot_args": boot_args,
                               "kernel_image_path": kernel.display().to_string()})
            .to_string(),
        ),
        (
            "PUT",
            "/machine-config".into(),
            serde_json::json!({"mem_size_mib": 512, "vcpu_count": 1}).to_string(),
        ),
        (
            "PUT",
            "/drives/rootfs".into(),
            serde_json::json!({"drive_id": "rootfs", "is_read_only": true,
                               "is_root_device": false,
                               "path_on_host": image.display().to_string()})
            .to_string(),
        ),
    ];
    // DISK_POOL_SIZE: drive1..drive5, 0-byte files under <vm_path>/root.
    std::fs::create_dir_all(vm_path.join("root")).map_err(|e| format!("mkdir: {e}"))?;
    for i in 1..6 {
        let path = vm_path.join(format!("root/drive{i}"));
        std::fs::write(&path, b"").map_err(|e| format!("cannot create {path:?}: {e}"))?;
        steps.push((
            "PUT",
            format!("/drives/drive{i}"),
            serde_json::json!({"drive_id": format!("drive{i}"), "is_read_only": false,
                               "is_root_device": false,
                               "path_on_host": path.display().to_string()})
            .to_string(),
        ));
    }
    let uds = hvsock.display().to_string();
    // fc_api.rs: prepare_hvsock; then inner_device.rs: add_vsock from the
    // resource manager's VsockConfig (guest_cid VMADDR_CID_ANY), replacing it.
    steps.push((
        "PUT",
        "/vsock".into(),
        serde_json::json!({"guest_cid": 3, "uds_path": uds, "vsock_id": "root"}).to_string(),
    ));
    steps.push((
        "PUT",
        "/vsock".into(),
        serde_json::json!({"guest_cid": 4294967295u32, "uds_path": uds, "vsock_id": "root"})
            .to_string(),
    ));
    // inner_device.rs: add_net_device; the id is 8 random bytes as {:x}.
    let iface_id = "3f5a9c0b12de4471";
    steps.push((
        "PUT",
        format!("/network-interfaces/{iface_id}"),
        serde_json::json!({"guest_mac": GUEST_MAC, "host_dev_name": TAP,
                           "iface_id": iface_id})
        .to_string(),
    ));
    // inner_hypervisor.rs: start_vm.
    steps.push((
        "PUT",
        "/actions".into(),
        serde_json::json!({"action_type": "InstanceStart"}).to_string(),
    ));
    let started = Instant::now();
    let mut first_tries = 0;
    for (n, (method, path, body)) in steps.iter().enumerate() {
        match rs_put(&mut client, method, path, body) {
            Ok(tries) if n == 0 => first_tries = tries,
            Ok(1) => {}
            Ok(tries) => return fail(format!("{method} {path} needed {tries} tries")),
            Err(e) => return fail(e),
        }
    }
    let configured_in = started.elapsed();

    // crates/agent/src/sock/hybrid_vsock.rs: connect_helper, `connect 1024`
    // in lowercase (dial_timeout_ms between tries); then the sandbox's
    // network through the agent.
    let agent = AgentLink::new(&hvsock, "connect")?;
    if let Err(e) = agent_check(&agent, Duration::from_secs(45)) {
        if !std::fs::read_to_string(&console)
            .unwrap_or_default()
            .contains("Run /sbin/init")
        {
            return Err(TestError::Hazard(format!(
                "the guest never started its agent: {e}"
            )));
        }
        return fail(e);
    }
    let agent_after = started.elapsed();
    // crates/agent/src/log_forwarder.rs: `connect 1025`, the agent's log
    // line by line.
    let log_line = match follow_agent_log(&hvsock).and_then(|lines| {
        lines
            .recv_timeout(Duration::from_secs(20))
            .map_err(|_| format!("no JSON log line from the agent's port {AGENT_LOG_PORT}"))
    }) {
        Ok(line) => line,
        Err(e) => return fail(e),
    };
    if let Err(e) = agent_sets_up_the_network(&agent, &ns) {
        return fail(e);
    }

    // inner_device.rs: hotplug_block_device → fc_api.rs:
    // patch_container_rootfs, unjailed: the host path itself, rate_limiter
    // null; then the agent mounts it. The path is a host block device, as
    // a snapshotter's (devmapper's /dev/dm-N) would be: a loop device here
    // (beneath /dev, where ferry's Landlock rules let a drive come from).
    let container = container_rootfs(&scratch)?;
    let loop_device = match LoopDevice::attach(&container) {
        Ok(device) => device,
        Err(e) => return fail(e.to_string()),
    };
    let body = serde_json::json!({"drive_id": "drive1",
                                  "path_on_host": loop_device.path.display().to_string(),
                                  "rate_limiter": null})
    .to_string();
    if let Err(e) = rs_put(&mut client, "PATCH", "/drives/drive1", &body) {
        return fail(e);
    }
    let mounted = match agent_mounts_the_drive(&agent, CONTAINER_BYTES) {
        Ok(bytes) => bytes,
        Err(e) => return fail(e),
    };

    // inner_hypervisor.rs: stop_vm: fc_process.kill() (SIGKILL, reaped);
    // wait_vm learns it from stderr's EOF.
    let child = ferry.0.as_mut().expect("ferry runs");
    child.kill().map_err(|e| format!("kill: {e}"))?;
    child.wait().map_err(|e| format!("wait: {e}"))?;
    ferry.0 = None;
    let killed = Instant::now();
    while !stderr_eof.is_finished() {
        if killed.elapsed() > Duration::from_secs(5) {
            return fail("ferry's stderr should reach EOF when it dies (no child holds it)".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let procs = processes_mentioning(&vm_path.display().to_string());
    if !procs.is_empty() {
        return fail(format!("nothing should outlive ferry: {procs:?}"));
    }
    // What a SIGKILL leaves and runtime-rs's cleanup removes
    // (remove_dir_all(vm_path)): the API socket and the hybrid vsock's
    // socket files.
    let left: Vec<&Path> = [api_sock.as_path(), hvsock.as_path()]
        .into_iter()
        .filter(|p| p.exists())
        .collect();
    std::fs::remove_dir_all(&vm_path).map_err(|e| format!("remove_dir_all(vm_path): {e}"))?;
    eprintln!(
        "kata runtime-rs replay: first PUT after {first_tries} tries, configured and started in \
         {:.2} s, the agent after {:.2} s (its log: {log_line}), the hot-plugged drive mounted \
         ({mounted} bytes); left by SIGKILL and removed by the cleanup: {left:?}",
        configured_in.as_secs_f64(),
        agent_after.as_secs_f64()
    );
    Ok(())
}
