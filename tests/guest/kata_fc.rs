// SPDX-License-Identifier: Apache-2.0
//! Kata's two Firecracker drivers, replayed request by request against
//! ferry, one boot each: the Go runtime's (`src/runtime/virtcontainers/
//! fc.go`) and runtime-rs's (`src/runtime-rs/crates/hypervisor/src/
//! firecracker/`). Each step names the Kata file and function it comes
//! from. The guest is the test guest's root disk (resources/out/
//! rootfs.ext4) in a partitioned image, booted as Kata boots its guest
//! image (`root=/dev/vda1`, no initrd) on the Kata-style kernel
//! (resources/kernel/), with a TAP in a network namespace as Kata's
//! `tcfilter` model leaves it. The guest serves vsock port 1024 (where
//! Kata's agent listens) with an echo and reports the drive hot-plugged
//! into it; the real kata-agent and containerd are not part of this.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{guest_file, FERRY};
use crate::harness::{guest_test, Scratch, TestError, TestResult};
use crate::kata_boot::{json_string, kata_kernel};
use crate::net::tap::{TapNamespace, GUEST, PEER, TAP};

/// What the guest echoes on the agent's port.
const GREETING: &str = "hello from the replayed kata runtime";
/// Kata's agent port (`fc.go: GenerateSocket`; runtime-rs `server_port`).
const AGENT_PORT: u32 = 1024;

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

/// A disk image with an MBR and one Linux partition from 1 MiB holding the
/// test guest's root filesystem: what Kata's guest image looks like to the
/// guest (`root=/dev/vda1`).
fn partitioned_root_image(path: &Path) -> Result<(), String> {
    let fs = std::fs::read(guest_file("rootfs.ext4")?)
        .map_err(|e| format!("cannot read the root filesystem: {e}"))?;
    let start: u32 = 2048;
    let sectors = (fs.len() / 512) as u32;
    let mut image = vec![0u8; 1 << 20];
    let entry = &mut image[446..462];
    entry[4] = 0x83; // Linux
    entry[8..12].copy_from_slice(&start.to_le_bytes());
    entry[12..16].copy_from_slice(&sectors.to_le_bytes());
    image[510] = 0x55;
    image[511] = 0xaa;
    image.extend_from_slice(&fs);
    std::fs::write(path, image).map_err(|e| format!("cannot write {path:?}: {e}"))
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

/// The agent's dialer: `CONNECT`/`connect` on the hybrid vsock until a
/// line holding `OK` comes back, then the greeting, echoed by the guest.
/// `pause` is the wait between tries (none in the Go driver's
/// `commonDialer`, `dial_timeout_ms` in runtime-rs's `connect_helper`).
fn dial_agent(uds: &Path, verb: &str, pause: Duration, budget: Duration) -> Result<u32, String> {
    let deadline = Instant::now() + budget;
    let mut tries = 0;
    let mut last = String::new();
    while Instant::now() < deadline {
        tries += 1;
        let attempt = (|| -> Result<(), String> {
            let mut stream = UnixStream::connect(uds).map_err(|e| format!("connect: {e}"))?;
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(|e| e.to_string())?;
            stream
                .write_all(format!("{verb} {AGENT_PORT}\n").as_bytes())
                .map_err(|e| format!("write: {e}"))?;
            let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
            let mut ok = String::new();
            reader
                .read_line(&mut ok)
                .map_err(|e| format!("read: {e}"))?;
            if !ok.contains("OK") {
                return Err(format!("answer {ok:?}"));
            }
            stream
                .write_all(format!("{GREETING}\n").as_bytes())
                .map_err(|e| format!("write: {e}"))?;
            let mut echo = String::new();
            reader
                .read_line(&mut echo)
                .map_err(|e| format!("read: {e}"))?;
            if echo.trim_end() != GREETING {
                return Err(format!("echo {echo:?}"));
            }
            Ok(())
        })();
        match attempt {
            Ok(()) => return Ok(tries),
            Err(e) => last = e,
        }
        std::thread::sleep(pause);
    }
    Err(format!(
        "the guest's port {AGENT_PORT} never answered ({tries} tries, last: {last})"
    ))
}

/// Waits for a line starting with `key` in the console file; its rest.
fn console_line(console: &Path, key: &str, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(console).unwrap_or_default();
        if let Some(rest) = text
            .lines()
            .find_map(|l| l.trim_end().strip_prefix(key).map(str::to_string))
        {
            return Some(rest);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
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

/// The guest's job (after `--`): the agent's port, the TAP's network, the
/// root it booted from, then the hot-plugged drive once its size is not 0.
fn guest_job(drive: &str) -> String {
    format!(
        "ft vsock-echo {AGENT_PORT} & \
         echo rootdev=$(grep -c '^/dev/root / ext4 ro' /proc/mounts); \
         ip addr add {GUEST}/24 dev eth0 && ping -c 2 -W 5 {PEER} >/dev/null && echo net=ok; \
         while [ $(cat /sys/block/{drive}/size) = 0 ]; do sleep 0.1; done; \
         echo drive-size=$(cat /sys/block/{drive}/size); \
         echo drive-data=$(head -n 1 /dev/{drive}); \
         sleep 1000"
    )
}

/// A container image for the hot-plug: a marker line, then zeros.
fn container_image(path: &Path, marker: &str, len: usize) -> Result<(), String> {
    let mut bytes = format!("{marker}\n").into_bytes();
    bytes.resize(len, 0);
    std::fs::write(path, bytes).map_err(|e| format!("cannot write {path:?}: {e}"))
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
    let kernel = kata_kernel()?;
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
    let image = scratch.path("kata-containers.img");
    partitioned_root_image(&image)?;
    binds.bind(&image, &root.join("rootfs"))?;
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
    // the debug tail (console=ttyS0: the test reads the console). Then
    // what the test guest needs: no DHCP on the TAP, its job.
    let boot_args = format!(
        "systemd.unit=kata-containers.target systemd.mask=systemd-networkd.service \
         systemd.mask=systemd-networkd.socket agent.cdh_api_timeout=50 root=/dev/vda1 \
         rootflags=data=ordered,errors=remount-ro ro rootfstype=ext4 pci=off reboot=k \
         panic=1 iommu=off net.ifnames=0 random.trust_cpu=on acpi=off console=ttyS0 \
         ferry.dhcp=off -- \"{}\"",
        guest_job("vdb")
    );
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
         \t\"network-interfaces\": [\n\t\t{{\n\t\t\t\"guest_mac\": \"0a:58:0a:f4:00:05\",\n\
         \t\t\t\"host_dev_name\": \"{TAP}\",\n\t\t\t\"iface_id\": \"eth0\",\n\
         \t\t\t\"rx_rate_limiter\": {{}},\n\t\t\t\"tx_rate_limiter\": {{}}\n\t\t}}\n\t]\n}}",
        boot_args = json_string(&boot_args),
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

    // kata_agent: HybridVSockDialer: CONNECT 1024 in a loop with no pause,
    // within the agent's dial_timeout (45 s).
    let tries = match dial_agent(&hvsock, "CONNECT", Duration::ZERO, Duration::from_secs(45)) {
        Ok(tries) => tries,
        Err(e) => return fail(e),
    };

    // fc.go: hotplugBlockDevice → fcJailResource(drive.File, "drive_0")
    // binds the container's rootfs over the placeholder; fcUpdateBlockDrive
    // PATCHes the placeholder's path.
    let marker = format!("ferry-kata-go-rootfs-{}", std::process::id());
    let container = scratch.path("container.img");
    container_image(&container, &marker, 4 << 20)?;
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
    let size = console_line(&console, "drive-size=", Duration::from_secs(60));
    let data = console_line(&console, "drive-data=", Duration::from_secs(10));
    if size.is_none() && console_line(&console, "rootdev=", Duration::ZERO).is_none() {
        // The guest never got to its job: the emulated host's hazard.
        return Err(TestError::Hazard(format!(
            "the guest never ran its job\n{}",
            console_text()
        )));
    }
    if size.as_deref() != Some(&((4 << 20) / 512).to_string()) || data.as_deref() != Some(&marker) {
        return fail(format!(
            "the guest should see the hot-plugged drive's new size and data: {size:?} {data:?}"
        ));
    }
    if console_line(&console, "rootdev=", Duration::ZERO).as_deref() != Some("1") {
        return fail("the guest should run from /dev/vda1, read-only, as Kata's image".into());
    }
    if console_line(&console, "net=", Duration::from_secs(20)).as_deref() != Some("ok") {
        return fail("the guest should reach the namespace through the TAP".into());
    }

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
        "kata go replay: Running after {:.2} s ({polls} polls), agent after {tries} tries, \
         SIGTERM → exit {:?} in {:.2} s; {} log lines, {} metrics lines",
        running_after.as_secs_f64(),
        status.code(),
        stopped_in.as_secs_f64(),
        log_text.lines().count(),
        metrics_text.lines().count()
    );
    Ok(())
}

#[guest_test]
fn kata_runtime_rs_driver_replay() -> TestResult {
    let kernel = kata_kernel()?;
    let ns = TapNamespace::new()?;
    let scratch = Scratch::new("kata-rs")?;
    let image = scratch.path("kata-containers.img");
    partitioned_root_image(&image)?;

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
         agent.cdh_api_timeout=50 console=ttyS0 agent.log_vport=1025 ferry.dhcp=off -- \"{}\"",
        guest_job("vdb")
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
        serde_json::json!({"guest_mac": "0a:58:0a:f4:00:05", "host_dev_name": TAP,
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
    // in lowercase, dial_timeout_ms (10 ms by default) between tries.
    let tries = match dial_agent(
        &hvsock,
        "connect",
        Duration::from_millis(10),
        Duration::from_secs(30),
    ) {
        Ok(tries) => tries,
        Err(e) => {
            if std::fs::read_to_string(&console)
                .unwrap_or_default()
                .contains("rootdev=")
            {
                return fail(e);
            }
            return Err(TestError::Hazard(format!(
                "the guest never ran its job: {e}"
            )));
        }
    };

    // inner_device.rs: hotplug_block_device → fc_api.rs:
    // patch_container_rootfs, unjailed: the host path itself, rate_limiter
    // null.
    let marker = format!("ferry-kata-rs-rootfs-{}", std::process::id());
    let container = scratch.path("container.img");
    container_image(&container, &marker, 8 << 20)?;
    let body = serde_json::json!({"drive_id": "drive1",
                                  "path_on_host": container.display().to_string(),
                                  "rate_limiter": null})
    .to_string();
    if let Err(e) = rs_put(&mut client, "PATCH", "/drives/drive1", &body) {
        return fail(e);
    }
    let size = console_line(&console, "drive-size=", Duration::from_secs(60));
    let data = console_line(&console, "drive-data=", Duration::from_secs(10));
    if size.as_deref() != Some(&((8 << 20) / 512).to_string()) || data.as_deref() != Some(&marker) {
        return fail(format!(
            "the guest should see the hot-plugged drive's new size and data: {size:?} {data:?}"
        ));
    }
    if console_line(&console, "net=", Duration::from_secs(20)).as_deref() != Some("ok") {
        return fail("the guest should reach the namespace through the TAP".into());
    }

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
         {:.2} s, agent after {tries} tries; left by SIGKILL and removed by the cleanup: {left:?}",
        configured_in.as_secs_f64()
    );
    Ok(())
}
