//! ferry-kata as Kata's runtime meets it, without booting a guest: the
//! binary serving on its socket, answered over ttrpc by the generated
//! client; every request that fails before a VM runs, with the error text
//! the runtime logs; start-up with a previous run's leftovers; the socket
//! gone after SIGTERM. (Booting sandboxes: the guest tests' `kata` module.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_kata::protocol::hypervisor::{
    CreateVMRequest, StartVMRequest, StopVMRequest, VersionRequest,
};
use ferry_kata::protocol::hypervisor_ttrpc::HypervisorClient;

/// ferry, built next to this test's binary (by `cargo test --workspace`).
fn ferry_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let ferry = dir.join("ferry");
    assert!(
        ferry.is_file(),
        "{} is missing: build it first (cargo build -p ferry, or cargo test --workspace)",
        ferry.display()
    );
    ferry
}

/// A scratch directory under /tmp (UNIX socket paths must stay short).
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = PathBuf::from(format!(
            "/tmp/ferry-kata-test-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running ferry-kata with its own socket, configuration and runtime
/// directory.
struct Service {
    child: Child,
    socket: PathBuf,
    runtime_dir: PathBuf,
    client: HypervisorClient,
}

impl Service {
    /// Starts the service on `scratch` with `extra` configuration lines.
    fn start(scratch: &Scratch, extra: &str) -> Self {
        let kernel = scratch.path("vmlinuz");
        let initrd = scratch.path("initrd");
        std::fs::write(&kernel, b"not booted here").unwrap();
        std::fs::write(&initrd, b"not booted here").unwrap();
        let config = scratch.path("kata.toml");
        std::fs::write(
            &config,
            format!(
                "ferry = {:?}\nkernel = {kernel:?}\ninitrd = {initrd:?}\n{extra}",
                ferry_binary()
            ),
        )
        .unwrap();
        let socket = scratch.path("hypervisor.sock");
        let runtime_dir = scratch.path("run");
        let child = Command::new(env!("CARGO_BIN_EXE_ferry-kata"))
            .arg("--socket")
            .arg(&socket)
            .arg("--config")
            .arg(&config)
            .arg("--runtime-dir")
            .arg(&runtime_dir)
            .stdin(Stdio::null())
            .spawn()
            .expect("start ferry-kata");
        let client = connect(&socket);
        Service {
            child,
            socket,
            runtime_dir,
            client,
        }
    }

    /// Stops it with SIGTERM and returns its exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects to the service at `socket`, waiting up to 10 s for it.
fn connect(socket: &Path) -> HypervisorClient {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if socket.exists() {
            if let Ok(c) = ttrpc::Client::connect(&format!("unix://{}", socket.display())) {
                return HypervisorClient::new(c);
            }
        }
        assert!(
            Instant::now() < deadline,
            "ferry-kata did not listen on {}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(10).as_nanos() as i64)
}

fn create(
    client: &HypervisorClient,
    id: &str,
    annotations: &[(&str, &str)],
    netns: &str,
) -> ttrpc::Result<String> {
    let req = CreateVMRequest {
        id: id.into(),
        annotations: annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
        networkNamespacePath: netns.into(),
        ..Default::default()
    };
    client.create_vm(ctx(), &req).map(|r| r.agentSocketPath)
}

fn start(client: &HypervisorClient, id: &str) -> ttrpc::Result<()> {
    let req = StartVMRequest {
        id: id.into(),
        ..Default::default()
    };
    client.start_vm(ctx(), &req).map(drop)
}

fn stop(client: &HypervisorClient, id: &str) -> ttrpc::Result<()> {
    let req = StopVMRequest {
        id: id.into(),
        ..Default::default()
    };
    client.stop_vm(ctx(), &req).map(drop)
}

/// The status code and message of a failed call.
fn failure<T: std::fmt::Debug>(result: ttrpc::Result<T>) -> (ttrpc::Code, String) {
    match result {
        Err(ttrpc::Error::RpcStatus(s)) => (s.code(), s.message().to_string()),
        other => panic!("expected an RPC error, got {other:?}"),
    }
}

const HYP: &str = "io.katacontainers.config.hypervisor.";

#[test]
fn version_is_the_services() {
    let scratch = Scratch::new("version");
    let service = Service::start(&scratch, "");
    let req = VersionRequest {
        version: "0.0.1".into(),
        ..Default::default()
    };
    let answer = service.client.version(ctx(), &req).unwrap();
    assert_eq!(answer.version, env!("CARGO_PKG_VERSION"));
}

#[test]
fn create_prepares_and_stop_removes_a_sandbox_never_started() {
    let scratch = Scratch::new("create");
    let service = Service::start(&scratch, "");
    let socket = create(
        &service.client,
        "sb1",
        &[
            (&format!("{HYP}default_vcpus"), "2"),
            (&format!("{HYP}default_memory"), "512"),
        ],
        "",
    )
    .unwrap();
    assert_eq!(
        PathBuf::from(&socket),
        service.runtime_dir.join("sb1/agent.sock")
    );
    assert!(service.runtime_dir.join("sb1").is_dir());
    // Nothing runs yet: no socket until StartVM.
    assert!(!Path::new(&socket).exists());
    let (code, message) = failure(create(&service.client, "sb1", &[], ""));
    assert_eq!(code, ttrpc::Code::ALREADY_EXISTS);
    assert_eq!(message, "sandbox sb1 already exists");
    stop(&service.client, "sb1").unwrap();
    assert!(!service.runtime_dir.join("sb1").exists());
    let (code, message) = failure(stop(&service.client, "sb1"));
    assert_eq!(
        (code, message.as_str()),
        (ttrpc::Code::NOT_FOUND, "no sandbox \"sb1\"")
    );
}

#[test]
fn requests_that_cannot_be_honoured_say_why() {
    let scratch = Scratch::new("faults");
    let service = Service::start(&scratch, "max_sandboxes = 1\n");
    let c = &service.client;
    let cases: Vec<(ttrpc::Result<String>, ttrpc::Code, String)> = vec![
        (
            create(c, "a/b", &[], ""),
            ttrpc::Code::INVALID_ARGUMENT,
            "sandbox id \"a/b\": 1 to 64 characters".into(),
        ),
        (
            create(c, "s", &[(&format!("{HYP}default_vcpus"), "64")], ""),
            ttrpc::Code::INVALID_ARGUMENT,
            format!("sandbox s: annotation {HYP}default_vcpus=\"64\": more than the service allows (8 vCPUs)"),
        ),
        (
            create(c, "s", &[(&format!("{HYP}image"), "/other.img")], ""),
            ttrpc::Code::INVALID_ARGUMENT,
            "does not let annotations choose the guest image".into(),
        ),
        (
            create(c, "s", &[(&format!("{HYP}cc_init_data"), "H4sI")], ""),
            ttrpc::Code::INVALID_ARGUMENT,
            "ferry-kata has no initdata device".into(),
        ),
        (
            create(c, "s", &[], "/var/run/netns/no-such-pod"),
            ttrpc::Code::INVALID_ARGUMENT,
            "sandbox s: network namespace /var/run/netns/no-such-pod: No such file or directory".into(),
        ),
        (
            start(c, "nobody").map(|()| String::new()),
            ttrpc::Code::NOT_FOUND,
            "no sandbox \"nobody\"".into(),
        ),
    ];
    for (result, code, text) in cases {
        let (got_code, message) = failure(result);
        assert_eq!(got_code, code, "{message}");
        assert!(message.contains(&text), "{message:?} lacks {text:?}");
    }
    // The limit: one sandbox.
    create(c, "one", &[], "").unwrap();
    let (code, message) = failure(create(c, "two", &[], ""));
    assert_eq!(code, ttrpc::Code::RESOURCE_EXHAUSTED, "{message}");
    assert!(message.contains("limit of 1 sandboxes"), "{message}");
}

#[test]
fn a_missing_kernel_fails_create() {
    let scratch = Scratch::new("kernel");
    let service = Service::start(&scratch, "");
    std::fs::remove_file(scratch.path("vmlinuz")).unwrap();
    let (code, message) = failure(create(&service.client, "s", &[], ""));
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
    assert_eq!(
        message,
        format!(
            "sandbox s: kernel {}: No such file or directory (os error 2)",
            scratch.path("vmlinuz").display()
        )
    );
    assert!(!service.runtime_dir.join("s").exists());
}

#[test]
fn a_restarted_service_starts_clean_and_sigterm_removes_its_socket() {
    let scratch = Scratch::new("restart");
    // What a killed service leaves: its socket, a sandbox's directory.
    let runtime_dir = scratch.path("run");
    let leftover = runtime_dir.join("0123abcd");
    std::fs::create_dir_all(&leftover).unwrap();
    let stale = std::os::unix::net::UnixListener::bind(leftover.join("agent.sock")).unwrap();
    drop(stale);
    let not_ours = runtime_dir.join("notes.txt");
    std::fs::write(&not_ours, "kept").unwrap();
    let stale = std::os::unix::net::UnixListener::bind(scratch.path("hypervisor.sock")).unwrap();
    drop(stale);

    let service = Service::start(&scratch, "");
    assert!(
        !leftover.exists(),
        "a previous run's sandbox directory is removed"
    );
    assert!(
        not_ours.exists(),
        "what is not a sandbox directory is left alone"
    );
    // A second service on the same socket is refused.
    let second = Command::new(env!("CARGO_BIN_EXE_ferry-kata"))
        .arg("--socket")
        .arg(&service.socket)
        .arg("--config")
        .arg(scratch.path("kata.toml"))
        .arg("--runtime-dir")
        .arg(scratch.path("run2"))
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("is in use by a running service"),
        "{stderr}"
    );

    create(&service.client, "created", &[], "").unwrap();
    let socket = service.socket.clone();
    let runtime = service.runtime_dir.clone();
    let status = service.terminate();
    assert!(status.success(), "{status}");
    assert!(!socket.exists(), "the socket is removed at exit");
    assert!(
        !runtime.join("created").exists(),
        "sandboxes are removed at exit"
    );
}

#[test]
fn a_bad_configuration_is_refused_with_its_line() {
    let scratch = Scratch::new("config");
    let config = scratch.path("kata.toml");
    std::fs::write(&config, "kernel = \"/k\"\ndefault_vcpu = 2\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferry-kata"))
        .arg("--config")
        .arg(&config)
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown field `default_vcpu`"), "{stderr}");
    assert!(stderr.contains("line 2"), "{stderr}");
}
