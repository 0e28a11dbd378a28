// SPDX-License-Identifier: Apache-2.0
//! ferry-kata, Kata's remote-hypervisor service, driven as Kata's runtimes
//! drive it (the Go runtime's `remote.go`: a new connection per call,
//! every annotation filled; runtime-rs's `remote/inner.rs`: one
//! connection, StopVM with a 1 s deadline), against real guests in network
//! namespaces this test makes: each pod's guest gets its namespace's
//! address from passt, reaches a server beyond the pod's veth, is reached
//! from there, answers on the agent socket; faults (StartVM twice, ferry
//! killed under a sandbox, the service killed and restarted) end clean.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_kata::protocol::hypervisor::{CreateVMRequest, StartVMRequest, StopVMRequest};
use ferry_kata::protocol::hypervisor_ttrpc::HypervisorClient;

use crate::common::{guest_file, FERRY};
use crate::harness::{
    guest_test, kata_agent_dir, kata_style_kernel, Scratch, TestError, TestResult,
};

/// The prefix of Kata's hypervisor annotations.
const HYP: &str = "io.katacontainers.config.hypervisor.";

/// The server beyond each pod's veth (on the far side's loopback).
const SERVER: &str = "203.0.113.1";
/// Its port.
const SERVER_PORT: u16 = 8000;
/// The port the guest serves its address on.
const GUEST_HTTP_PORT: u16 = 8080;

/// ferry-kata, built next to ferry.
fn ferry_kata_binary() -> TestResult<PathBuf> {
    let path = Path::new(FERRY).with_file_name("ferry-kata");
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} is missing: build it (cargo build -p ferry-kata; cargo test --workspace does)",
            path.display()
        )
        .into())
    }
}

/// Runs a command (`ip ...`) and fails with its stderr.
fn sh(args: &[&str]) -> TestResult<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A pod's network namespace, joined by a veth pair to a "far" namespace
/// that holds the default gateway and a server; removed on drop.
struct Pod {
    name: String,
    far: String,
    address: String,
    address6: String,
    server_log: PathBuf,
    server: Option<Child>,
}

impl Pod {
    /// Pod `n`: addresses 198.51.100.(10+n)/24 and 2001:db8:1::(10+n)/64,
    /// gateways 198.51.100.1 and 2001:db8:1::1, a server on
    /// SERVER:SERVER_PORT beyond them.
    fn new(n: u8, scratch: &Scratch) -> TestResult<Self> {
        let name = format!("ferry-pod{n}");
        let far = format!("ferry-far{n}");
        for ns in [&name, &far] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            sh(&["ip", "netns", "add", ns])?;
        }
        let mut pod = Pod {
            address: format!("198.51.100.{}", 10 + n),
            address6: format!("2001:db8:1::{}", 10 + n),
            server_log: scratch.path(&format!("server{n}.log")),
            name,
            far,
            server: None,
        };
        let (p, f) = (pod.name.clone(), pod.far.clone());
        // Made under names free here, then moved (kvm-host has an eth0).
        let (a, b) = (format!("ferry-p{n}"), format!("ferry-f{n}"));
        sh(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &b])?;
        sh(&["ip", "link", "set", &a, "netns", &p])?;
        sh(&["ip", "link", "set", &b, "netns", &f])?;
        sh(&["ip", "-n", &p, "link", "set", &a, "name", "eth0"])?;
        sh(&["ip", "-n", &f, "link", "set", &b, "name", "veth0"])?;
        let ip = |ns: &str, args: &str| -> TestResult {
            let mut argv = vec!["ip", "-n", ns];
            argv.extend(args.split_whitespace());
            sh(&argv).map(drop)
        };
        let (v4, v6) = (&pod.address, &pod.address6);
        for (ns, args) in [
            (&p, format!("addr add {v4}/24 dev eth0")),
            (&p, format!("addr add {v6}/64 dev eth0 nodad")),
            (&p, "link set eth0 up".into()),
            (&p, "link set lo up".into()),
            (&p, "route add default via 198.51.100.1".into()),
            (&p, "-6 route add default via 2001:db8:1::1".into()),
            (&f, "addr add 198.51.100.1/24 dev veth0".into()),
            (&f, "addr add 2001:db8:1::1/64 dev veth0 nodad".into()),
            (&f, format!("addr add {SERVER}/32 dev lo")),
            (&f, "link set veth0 up".into()),
            (&f, "link set lo up".into()),
        ] {
            ip(ns, &args)?;
        }
        let www = scratch.path(&format!("www{n}"));
        std::fs::create_dir_all(&www).map_err(|e| e.to_string())?;
        std::fs::write(www.join("hello"), "hello from beyond the pod\n")
            .map_err(|e| e.to_string())?;
        let log = std::fs::File::create(&pod.server_log).map_err(|e| e.to_string())?;
        pod.server = Some(
            Command::new("ip")
                .args(["netns", "exec", &f, "python3", "-m", "http.server"])
                .args(["--bind", SERVER, &SERVER_PORT.to_string(), "--directory"])
                .arg(&www)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("start the server in {f}: {e}"))?,
        );
        Ok(pod)
    }

    /// The namespace's path, as CreateVM takes it.
    fn netns_path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// Fetches `http://<host>:<port>/<path>` from the far side (`host`: the
    /// pod's IPv4 address, or its IPv6 one in brackets).
    fn fetch_from_far_side(&self, host: &str, port: u16, path: &str) -> TestResult<String> {
        sh(&[
            "ip",
            "netns",
            "exec",
            &self.far,
            "curl",
            "-gsS",
            "--max-time",
            "20",
            &format!("http://{host}:{port}/{path}"),
        ])
    }

    /// Waits until the far server's log shows a request for `path` from the
    /// pod's address.
    fn server_saw(&self, path: &str, timeout: Duration) -> TestResult {
        let deadline = Instant::now() + timeout;
        loop {
            let log = std::fs::read_to_string(&self.server_log).unwrap_or_default();
            if log
                .lines()
                .any(|l| l.starts_with(&format!("{} ", self.address)) && l.contains(path))
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the server beyond {} saw no request for {path} from {}; its log:\n{log}",
                    self.name, self.address
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
        for ns in [&self.name, &self.far] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// A ferry-kata process with its socket and runtime directory (under /tmp:
/// sockets cannot live on kvm-host's shared directories).
struct PluginService {
    child: Option<Child>,
    socket: PathBuf,
    runtime_dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
}

impl PluginService {
    /// Writes the configuration (`lines`) and starts the service.
    fn start(name: &str, scratch: &Scratch, lines: &str) -> TestResult<Self> {
        let base = PathBuf::from(format!("/tmp/{name}"));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).map_err(|e| e.to_string())?;
        let config = scratch.path(&format!("{name}.toml"));
        std::fs::write(&config, format!("ferry = {FERRY:?}\n{lines}"))
            .map_err(|e| e.to_string())?;
        let mut service = PluginService {
            child: None,
            socket: base.join("hypervisor.sock"),
            runtime_dir: base.join("run"),
            config,
            log: scratch.path(&format!("{name}.log")),
        };
        service.spawn()?;
        Ok(service)
    }

    /// Starts (or restarts) the process, its log appended to `self.log`.
    fn spawn(&mut self) -> TestResult {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| e.to_string())?;
        let child = Command::new(ferry_kata_binary()?)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--config")
            .arg(&self.config)
            .arg("--runtime-dir")
            .arg(&self.runtime_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start ferry-kata: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&self.socket).is_err() {
            if Instant::now() > deadline {
                return Err(
                    format!("ferry-kata did not listen; its log:\n{}", self.log_text()).into(),
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn client(&self) -> TestResult<HypervisorClient> {
        let c = ttrpc::Client::connect(&format!("unix://{}", self.socket.display()))
            .map_err(|e| format!("connect to ferry-kata: {e}"))?;
        Ok(HypervisorClient::new(c))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the service with SIGKILL (no clean-up of its own).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and its exit.
    fn terminate(&mut self) -> TestResult {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let status = child.wait().map_err(|e| e.to_string())?;
            if !status.success() {
                return Err(format!(
                    "ferry-kata ended with {status}; its log:\n{}",
                    self.log_text()
                )
                .into());
            }
        }
        Ok(())
    }
}

impl Drop for PluginService {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The annotations Kata's Go runtime sends (remote.go fills every one).
fn go_annotations(pod: &str, memory: &str) -> HashMap<String, String> {
    let mut a: HashMap<String, String> = [
        ("machine_type", ""),
        ("image", ""),
        ("default_vcpus", "1"),
        ("default_memory", memory),
        ("cc_init_data", ""),
        ("default_gpus", "0"),
        ("default_gpu_model", ""),
    ]
    .into_iter()
    .map(|(k, v)| (format!("{HYP}{k}"), v.to_string()))
    .collect();
    a.insert("io.kubernetes.cri.sandbox-name".into(), pod.into());
    a.insert(
        "io.kubernetes.cri.sandbox-namespace".into(),
        "default".into(),
    );
    a
}

fn with_timeout(d: Duration) -> ttrpc::context::Context {
    ttrpc::context::with_timeout(d.as_nanos() as i64)
}

fn rpc_error(what: &str, e: ttrpc::Error) -> TestError {
    TestError::Failed(format!("{what}: {e:?}"))
}

fn create_vm(c: &HypervisorClient, id: &str, pod: &Pod, memory: &str) -> TestResult<PathBuf> {
    let req = CreateVMRequest {
        id: id.into(),
        annotations: go_annotations(&pod.name, memory),
        networkNamespacePath: pod.netns_path(),
        ..Default::default()
    };
    let res = c
        .create_vm(with_timeout(Duration::from_secs(30)), &req)
        .map_err(|e| rpc_error(&format!("CreateVM {id}"), e))?;
    Ok(PathBuf::from(res.agentSocketPath))
}

fn start_vm(c: &HypervisorClient, id: &str) -> Result<(), ttrpc::Error> {
    // remote.go: at least remote_hypervisor_timeout (600 s in Kata's file).
    start_vm_within(c, id, Duration::from_secs(600))
}

fn start_vm_within(c: &HypervisorClient, id: &str, deadline: Duration) -> Result<(), ttrpc::Error> {
    let req = StartVMRequest {
        id: id.into(),
        ..Default::default()
    };
    c.start_vm(with_timeout(deadline), &req).map(drop)
}

fn stop_vm(c: &HypervisorClient, id: &str, deadline: Duration) -> Result<(), ttrpc::Error> {
    let req = StopVMRequest {
        id: id.into(),
        ..Default::default()
    };
    c.stop_vm(with_timeout(deadline), &req).map(drop)
}

/// Sends a line through the agent socket (the guest echoes port 1024).
fn agent_echo(socket: &Path, line: &str) -> TestResult {
    let mut s =
        UnixStream::connect(socket).map_err(|e| format!("connect {}: {e}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    s.write_all(format!("{line}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut back = String::new();
    BufReader::new(&mut s)
        .read_line(&mut back)
        .map_err(|e| e.to_string())?;
    if back.trim_end() != line {
        return Err(format!("the agent socket echoed {back:?}, not {line:?}").into());
    }
    Ok(())
}

/// The pids of processes whose command line holds `word`.
fn pids_with(word: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let mut cmdline = Vec::new();
        if std::fs::File::open(entry.path().join("cmdline"))
            .and_then(|mut f| f.read_to_end(&mut cmdline))
            .is_ok()
            && String::from_utf8_lossy(&cmdline)
                .replace('\0', " ")
                .contains(word)
            && pid != std::process::id()
        {
            pids.push(pid);
        }
    }
    pids
}

/// Prints each running passt's open files and resident memory (what
/// forwarding every port of a pod costs).
fn report_passt_footprint() {
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let path = entry.path();
        if std::fs::read_to_string(path.join("comm")).is_ok_and(|c| c.trim().starts_with("passt")) {
            let fds = std::fs::read_dir(path.join("fd"))
                .map(|d| d.count())
                .unwrap_or(0);
            let rss = std::fs::read_to_string(path.join("status"))
                .unwrap_or_default()
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .unwrap_or("VmRSS: ?")
                .split_whitespace()
                .skip(1)
                .collect::<Vec<_>>()
                .join(" ");
            eprintln!(
                "passt {:?}: {fds} open files, {rss} resident",
                entry.file_name()
            );
        }
    }
}

/// Waits until no passt runs (not even as a zombie).
fn no_passt(timeout: Duration) -> TestResult {
    let started = Instant::now();
    let deadline = started + timeout;
    loop {
        let passts: Vec<String> = std::fs::read_dir("/proc")
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        std::fs::read_to_string(e.path().join("comm"))
                            .is_ok_and(|c| c.trim().starts_with("passt"))
                    })
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if passts.is_empty() {
            eprintln!("no passt left ({:.2} s)", started.elapsed().as_secs_f64());
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("passt still runs: pids {passts:?}").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until no process's command line holds `word`.
fn gone(word: &str, timeout: Duration) -> TestResult {
    let deadline = Instant::now() + timeout;
    while !pids_with(word).is_empty() {
        if Instant::now() > deadline {
            return Err(format!(
                "processes still running with {word:?}: {:?}",
                pids_with(word)
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Whether `dir` is empty (or gone).
fn empty_dir(dir: &Path) -> TestResult {
    let left: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path().display().to_string())
                .collect()
        })
        .unwrap_or_default();
    if left.is_empty() {
        Ok(())
    } else {
        Err(format!("left behind: {left:?}").into())
    }
}

/// The guest's job for the network test: its lease (retried for a minute:
/// a passt forwarding every port opens ~98k sockets first, which takes
/// tens of seconds under kvm-host's emulation while the guest boots on),
/// then serve its own address over HTTP,
/// fetch a page from beyond the pod, then echo vsock port 1024 (the
/// "agent" StartVM waits for).
fn guest_job() -> String {
    format!(
        "quiet -- \"dmesg -n 1; \
         ip -4 addr show eth0 | grep -q inet || udhcpc -i eth0 -s /etc/udhcpc.script -q -n -t 60 -T 1; \
         mkdir -p /tmp/www; ip -o addr show eth0 > /tmp/www/addr; \
         (while sleep 1; do ip -o addr show eth0 > /tmp/www/addr.new; mv /tmp/www/addr.new /tmp/www/addr; done) & \
         httpd -p {GUEST_HTTP_PORT} -h /tmp/www; \
         wget -q -O /dev/null http://{SERVER}:{SERVER_PORT}/hello-from-guest; \
         ft vsock-echo 1024\""
    )
}

#[guest_test]
fn kata_plugin_runs_three_pods_each_in_its_own_network_namespace() -> TestResult {
    let scratch = Scratch::new("kata-pods")?;
    let pods = (1..=3)
        .map(|n| Pod::new(n, &scratch))
        .collect::<TestResult<Vec<_>>>()?;
    let mut service = PluginService::start(
        "ferry-kata-pods",
        &scratch,
        &format!(
            "kernel = {:?}\ninitrd = {:?}\ndefault_memory = 256\nstart_timeout = 240\n\
             tcp_ports = \"{GUEST_HTTP_PORT}\"\nudp_ports = \"none\"\nkernel_params = {:?}\n",
            kata_style_kernel()?,
            guest_file("initramfs.cpio.gz")?,
            guest_job()
        ),
    )?;
    let fail = |e: TestError, service: &PluginService| -> TestError {
        TestError::Failed(format!("{e}\nferry-kata's log:\n{}", service.log_text()))
    };
    let run = |service: &mut PluginService| -> TestResult {
        // Pods 1 and 2 as the Go runtime: a new connection for each call.
        // Pod 3 as runtime-rs: one connection for everything.
        let rs_client = service.client()?;
        let mut sockets = Vec::new();
        for (i, pod) in pods.iter().enumerate() {
            let client = if i < 2 {
                service.client()?
            } else {
                rs_client.clone()
            };
            let memory = if i == 0 { "2048" } else { "512" };
            sockets.push(create_vm(
                &client,
                &format!("sandbox{}", i + 1),
                pod,
                memory,
            )?);
        }
        // Three boots at once.
        let started = Instant::now();
        let results: Vec<Result<(), ttrpc::Error>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..3)
                .map(|i| {
                    let client = if i < 2 {
                        service.client()
                    } else {
                        Ok(rs_client.clone())
                    };
                    s.spawn(move || {
                        start_vm(&client.expect("a client"), &format!("sandbox{}", i + 1))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("StartVM thread"))
                .collect()
        });
        for (i, r) in results.into_iter().enumerate() {
            r.map_err(|e| rpc_error(&format!("StartVM sandbox{}", i + 1), e))?;
        }
        eprintln!(
            "three StartVMs answered in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        report_passt_footprint();

        for (i, (pod, socket)) in pods.iter().zip(&sockets).enumerate() {
            agent_echo(socket, &format!("hello agent {}", i + 1))?;
            let addr = pod.fetch_from_far_side(&pod.address, GUEST_HTTP_PORT, "addr")?;
            if !addr.contains(&format!(" inet {}/24 ", pod.address)) {
                return Err(format!(
                    "{}: the guest's address is {addr:?}, not the pod's {}/24",
                    pod.name, pod.address
                )
                .into());
            }
            // IPv6: passt's router advertisement gives the guest the pod's
            // prefix (SLAAC; this guest has no DHCPv6 client, so not the
            // pod's own IPv6 address, which passt hands out by DHCPv6).
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let addr = pod.fetch_from_far_side(&pod.address, GUEST_HTTP_PORT, "addr")?;
                if addr.contains(" inet6 2001:db8:1:") && addr.contains("scope global") {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "{}: no IPv6 address in the pod's prefix in the guest: {addr:?}",
                        pod.name
                    )
                    .into());
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            pod.server_saw("/hello-from-guest", Duration::from_secs(30))?;
        }

        // StartVM twice.
        match start_vm(&service.client()?, "sandbox1") {
            Err(ttrpc::Error::RpcStatus(s))
                if s.code() == ttrpc::Code::FAILED_PRECONDITION
                    && s.message() == "sandbox sandbox1: sandbox sandbox1 is running: StartVM is not possible now" => {}
            other => return Err(format!("a second StartVM answered {other:?}").into()),
        }

        // ferry killed under sandbox2: StopVM still succeeds and cleans up.
        // (Its passt spawner, a fork of it, has the same command line.)
        let victims: Vec<u32> = pids_with("--id sandbox2 ")
            .into_iter()
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "ferry")
            })
            .collect();
        if victims.len() != 1 {
            return Err(format!("expected one ferry for sandbox2, found {victims:?}").into());
        }
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(victims[0] as i32, libc::SIGKILL) };
        stop_vm(&service.client()?, "sandbox2", Duration::from_secs(10))
            .map_err(|e| rpc_error("StopVM sandbox2 after its ferry was killed", e))?;

        // A guest whose agent does not answer within the runtime's deadline
        // (3 s: this guest boots slower than that here): StartVM says so,
        // with the console's tail, and the VM is gone.
        create_vm(&service.client()?, "sandbox5", &pods[1], "")?;
        let t = Instant::now();
        match start_vm_within(&service.client()?, "sandbox5", Duration::from_secs(3)) {
            Err(ttrpc::Error::RpcStatus(s))
                if s.code() == ttrpc::Code::DEADLINE_EXCEEDED
                    && s.message()
                        .contains("the agent did not answer on vsock port 1024 within")
                    && s.message()
                        .contains("the VM was stopped; the console's last lines:") => {}
            other => return Err(format!("StartVM with a 3 s deadline answered {other:?}").into()),
        }
        if t.elapsed() > Duration::from_secs(4) {
            return Err(format!(
                "StartVM overran the runtime's 3 s deadline: {:?}",
                t.elapsed()
            )
            .into());
        }
        gone("--id sandbox5 ", Duration::from_secs(5))?;
        stop_vm(&service.client()?, "sandbox5", Duration::from_secs(10))
            .map_err(|e| rpc_error("StopVM sandbox5 after its failed start", e))?;

        // sandbox3 stopped as runtime-rs does, with its 1 s deadline.
        let t = Instant::now();
        stop_vm(&rs_client, "sandbox3", Duration::from_secs(1))
            .map_err(|e| rpc_error("StopVM sandbox3 within runtime-rs's 1 s", e))?;
        eprintln!(
            "StopVM with runtime-rs's deadline: {:.2} s",
            t.elapsed().as_secs_f64()
        );

        for id in ["sandbox2", "sandbox3", "sandbox5"] {
            gone(&format!("--id {id} "), Duration::from_secs(5))?;
        }
        if !service.runtime_dir.join("sandbox1").exists()
            || ["sandbox2", "sandbox3", "sandbox5"]
                .iter()
                .any(|id| service.runtime_dir.join(id).exists())
        {
            return Err("only sandbox1's directory should be left".into());
        }

        // The service killed while sandbox1 runs: its ferry and passt go
        // with it; restarted, the service removes what was left and serves
        // again.
        agent_echo(&sockets[0], "before the service dies")?;
        service.kill();
        gone("--id sandbox", Duration::from_secs(5))?;
        no_passt(Duration::from_secs(5))?;
        service.spawn()?;
        empty_dir(&service.runtime_dir)?;
        // The same id again: its old directory is gone. (Not booted again:
        // the boots above show the rest.)
        create_vm(&service.client()?, "sandbox4", &pods[0], "")?;
        service.terminate()?;
        gone("--id sandbox4", Duration::from_secs(5))?;
        no_passt(Duration::from_secs(5))?;
        empty_dir(&service.runtime_dir)?;
        if service.socket.exists() {
            return Err("the service's socket is left after SIGTERM".into());
        }
        Ok(())
    };
    run(&mut service).map_err(|e| fail(e, &service))
}

#[guest_test]
fn kata_agent_answers_through_the_plugin_and_sees_the_pods_address() -> TestResult {
    let scratch = Scratch::new("kata-agent")?;
    let agent = kata_agent_dir()?;
    let pod = Pod::new(4, &scratch)?;
    let service = PluginService::start(
        "ferry-kata-agent",
        &scratch,
        &format!(
            "kernel = {:?}\ninitrd = {:?}\ndefault_memory = 512\nstart_timeout = 240\nkernel_params = \"quiet agent.log=debug\"\n",
            kata_style_kernel()?,
            agent.join("initramfs.cpio.gz"),
        ),
    )?;
    let run = || -> TestResult {
        let socket = create_vm(&service.client()?, "kata1", &pod, "512")?;
        start_vm(&service.client()?, "kata1").map_err(|e| rpc_error("StartVM kata1", e))?;
        // The runtime's own calls, through the agent socket as it is.
        let out = Command::new(agent.join("kata-agent-client"))
            .arg("--server-address")
            .arg(format!("unix://{}", socket.display()))
            .args([
                "--wait",
                "30",
                "Check",
                "GetGuestDetails",
                "ListInterfaces",
                "ListRoutes",
            ])
            .output()
            .map_err(|e| format!("kata-agent-client: {e}"))?;
        let answers = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(format!(
                "kata-agent-client failed: {}\n{answers}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        let answer = |call: &str| {
            answers
                .lines()
                .find(|l| l.starts_with(&format!("{{\"call\":\"{call}\"")))
                .unwrap_or_default()
                .to_string()
        };
        // grpc.health.v1's SERVING is 1.
        if !answer("Check").contains("\"status\":1") {
            return Err(format!("Check did not answer SERVING:\n{answers}").into());
        }
        if !answer("GetGuestDetails").contains("\"agent_details\"") {
            return Err(format!("GetGuestDetails has no agent details:\n{answers}").into());
        }
        if !answer("ListInterfaces").contains(&format!("\"{}\"", pod.address)) {
            return Err(format!(
                "the agent does not see the pod's address {}:\n{answers}",
                pod.address
            )
            .into());
        }
        if !answer("ListRoutes").contains("\"198.51.100.1\"") {
            return Err(format!("the agent has no route via the pod's gateway:\n{answers}").into());
        }
        // The agent's own log (vsock port 1025) is in the service's.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !service.log_text().contains("sandbox kata1 agent: ") {
            if Instant::now() > deadline {
                return Err("no line of the agent's log reached the service's log".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        stop_vm(&service.client()?, "kata1", Duration::from_secs(1))
            .map_err(|e| rpc_error("StopVM kata1", e))?;
        gone("--id kata1", Duration::from_secs(5))?;
        no_passt(Duration::from_secs(60))?;
        empty_dir(&service.runtime_dir)
    };
    run().map_err(|e| TestError::Failed(format!("{e}\nferry-kata's log:\n{}", service.log_text())))
}
