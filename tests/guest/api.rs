// SPDX-License-Identifier: Apache-2.0
//! The Firecracker-compatible API, driven by a real HTTP client (curl) as
//! a runtime drives it: a boot configured request by request and polled
//! until it runs, the guest's status as ferry's, Ctrl-Alt-Del, a drive
//! hot-plugged after boot onto a 0-byte placeholder (Kata's way, a bind
//! mount over the placeholder included), the log and metrics on named
//! pipes, and a configuration file that boots the same machine as the
//! command line.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{api_call, guest_file, readme, wait_for, FERRY};
use crate::harness::{guest_test, kata_style_kernel, Scratch, TestError, TestResult, WATCHDOG};

/// Kata's Go driver polls `GET /` this often until the VM runs.
const POLL: Duration = Duration::from_millis(10);

/// A ferry serving the API on a socket in a scratch directory (sockets
/// cannot live on kvm-host's shared folders), its console and log in files.
struct ApiFerry {
    child: Child,
    sock: PathBuf,
    console: PathBuf,
    scratch: Scratch,
}

impl ApiFerry {
    /// Starts `ferry --api-sock` with `args` besides.
    fn start(what: &str, args: &[&str]) -> TestResult<Self> {
        let scratch = Scratch::new(what)?;
        let sock = scratch.path("api.sock");
        let console = scratch.path("console.log");
        let out = std::fs::File::create(&console).map_err(|e| format!("console file: {e}"))?;
        let err = out.try_clone().map_err(|e| format!("console file: {e}"))?;
        let child = Command::new(FERRY)
            .arg("--api-sock")
            .arg(&sock)
            .args(["--log-level", "info"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start ferry: {e}"))?;
        wait_for(&sock, Duration::from_secs(10))?;
        Ok(Self {
            child,
            sock,
            console,
            scratch,
        })
    }

    /// A request that must succeed with `status`; returns the body.
    fn expect(
        &self,
        status: u16,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> TestResult<String> {
        let (got, text) = api_call(&self.sock, method, path, body);
        if got == status {
            Ok(text)
        } else {
            Err(format!(
                "{method} {path} answered {got} {text}, not {status}\n{}",
                self.console_text()
            )
            .into())
        }
    }

    /// Polls `GET /` every 10 ms, as Kata's Go driver, until `state` is `Running`.
    fn wait_running(&self) -> TestResult {
        let deadline = Instant::now() + Duration::from_secs(11);
        loop {
            let (status, body) = api_call(&self.sock, "GET", "/", None);
            if status == 200 && body.contains(r#""state":"Running""#) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("GET / never said Running: {status} {body}").into());
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits for ferry to end (a stall is the nested-KVM hazard); returns
    /// its status and console.
    fn wait(mut self) -> TestResult<(Option<i32>, String)> {
        let deadline = Instant::now() + WATCHDOG;
        let status = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(TestError::Hazard(format!(
                    "the guest stalled\n{}",
                    self.console_text()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if self.sock.exists() {
            return Err(format!(
                "the API socket should be removed when ferry exits ({status})\n{}",
                self.console_text()
            )
            .into());
        }
        Ok((status.code(), self.console_text()))
    }

    /// Ends ferry at once (the test has failed already); returns its
    /// status and console.
    fn kill(mut self) -> TestResult<(Option<i32>, String)> {
        let _ = self.child.kill();
        let status = self.child.wait().map_err(|e| format!("{e}"))?;
        Ok((status.code(), self.console_text()))
    }

    fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }
}

/// The body of `PUT /boot-source` for the test guest running `guest_cmd`.
fn boot_source(guest_cmd: &str) -> TestResult<String> {
    let kernel = kata_style_kernel()?;
    let initrd = guest_file("initramfs.cpio.gz")?;
    Ok(serde_json::json!({
        "kernel_image_path": kernel,
        "initrd_path": initrd,
        "boot_args": format!("{} -- \"dmesg -n 1; {guest_cmd}\"", ferry::cli::DEFAULT_CMDLINE),
    })
    .to_string())
}

/// Makes a named pipe at `path`.
fn mkfifo(path: &Path) -> TestResult {
    let status = Command::new("mkfifo")
        .arg(path)
        .status()
        .map_err(|e| format!("mkfifo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("mkfifo {} failed", path.display()).into())
    }
}

#[guest_test]
fn api_boot_polled_until_running_ends_with_the_guests_status() -> TestResult {
    let vm = ApiFerry::start("api-boot", &[])?;
    // Kata gives named pipes for the log and the metrics, and reads them
    // only later: ferry must not wait for a reader.
    let (log, metrics) = (vm.scratch.path("log.fifo"), vm.scratch.path("metrics.fifo"));
    mkfifo(&log)?;
    mkfifo(&metrics)?;
    vm.expect(
        204,
        "PUT",
        "/logger",
        Some(&format!(
            r#"{{"log_path": "{}", "level": "Info"}}"#,
            log.display()
        )),
    )?;
    vm.expect(
        204,
        "PUT",
        "/metrics",
        Some(&format!(r#"{{"metrics_path": "{}"}}"#, metrics.display())),
    )?;
    vm.expect(
        204,
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 2, "mem_size_mib": 256, "smt": false}"#),
    )?;
    vm.expect(
        204,
        "PUT",
        "/boot-source",
        Some(&boot_source("echo nproc=$(nproc); sleep 2; exit 7")?),
    )?;
    vm.expect(
        204,
        "PUT",
        "/network-interfaces/eth0",
        Some(r#"{"iface_id": "eth0", "rx_rate_limiter": {}, "tx_rate_limiter": {}}"#),
    )?;
    let info = vm.expect(200, "GET", "/", None)?;
    if !info.contains(r#""state":"Not started""#) {
        return Err(format!("before InstanceStart GET / said {info}").into());
    }
    vm.expect(
        204,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    )?;
    vm.wait_running()?;
    // Pre-boot requests are refused once it runs.
    vm.expect(
        400,
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 1, "mem_size_mib": 256}"#),
    )?;
    vm.expect(
        204,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "FlushMetrics"}"#),
    )?;
    // Opened for reading only now, long after ferry opened them for writing.
    let metrics_line = {
        let file = std::fs::File::open(&metrics).map_err(|e| format!("metrics pipe: {e}"))?;
        let mut line = String::new();
        BufReader::new(file)
            .read_line(&mut line)
            .map_err(|e| format!("metrics pipe: {e}"))?;
        line
    };
    let parsed: serde_json::Value = serde_json::from_str(&metrics_line)
        .map_err(|e| format!("metrics line {metrics_line:?}: {e}"))?;
    if parsed["utc_timestamp_ms"].as_u64().is_none()
        || parsed["net"]["tx_packets_count"].as_u64().is_none()
    {
        return Err(format!("the metrics line lacks its counters: {metrics_line}").into());
    }
    let log_reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Ok(file) = std::fs::File::open(&log) {
            let _ = std::io::Read::read_to_string(&mut BufReader::new(file), &mut text);
        }
        text
    });
    let (status, console) = vm.wait()?;
    if status != Some(7) {
        return Err(
            format!("ferry should exit with the guest's 7, not {status:?}\n{console}").into(),
        );
    }
    if !console.contains("nproc=2") {
        return Err(format!("the guest should have 2 vCPUs\n{console}").into());
    }
    let log_text = log_reader.join().unwrap_or_default();
    if !log_text.contains("passt started") || !log_text.contains("exited with status 7") {
        return Err(format!("ferry's log should go to the logger's pipe, not:\n{log_text}").into());
    }
    Ok(())
}

/// Once the guest's init runs (before that, Linux takes Ctrl-Alt-Del as
/// a reboot: init has not asked for it as a signal yet), sends
/// `SendCtrlAltDel` until the API takes it.
fn send_ctrl_alt_del(vm: &ApiFerry) -> TestResult {
    let deadline = Instant::now() + WATCHDOG;
    while !vm.console_text().contains("init: userspace started") {
        if Instant::now() > deadline {
            return Err(TestError::Hazard(format!(
                "the guest never reached its init\n{}",
                vm.console_text()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    loop {
        let (status, _) = api_call(
            &vm.sock,
            "PUT",
            "/actions",
            Some(r#"{"action_type": "SendCtrlAltDel"}"#),
        );
        if status == 204 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(TestError::Hazard(format!(
                "the guest never took Ctrl-Alt-Del\n{}",
                vm.console_text()
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Builds an ext4 image holding `hello.txt` with `text`.
pub(crate) fn ext4_with(scratch: &Scratch, name: &str, text: &str) -> TestResult<PathBuf> {
    let dir = scratch.path(&format!("{name}.d"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{e}"))?;
    std::fs::write(dir.join("hello.txt"), text).map_err(|e| format!("{e}"))?;
    let image = scratch.path(name);
    let out = Command::new(crate::common::repo_root().join("resources/build-rootfs.sh"))
        .arg(&dir)
        .arg(&image)
        .arg("8M")
        .output()
        .map_err(|e| format!("build-rootfs.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!("build-rootfs.sh: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(image)
}

/// Kata's hot-plug: two drives on 0-byte placeholders before boot, each
/// `PATCH`ed after boot (one bind-mounted over, one a new path); the guest
/// reads both. Then `SendCtrlAltDel` shuts the guest down cleanly.
#[guest_test]
fn api_drive_patched_after_boot_is_read_then_ctrl_alt_del_shuts_down() -> TestResult {
    let vm = ApiFerry::start("api-hotplug", &["--net", "none"])?;
    // Kata's pool: drives on 0-byte placeholder files, made before boot.
    let placeholder = vm.scratch.path("drive_0");
    std::fs::write(&placeholder, b"").map_err(|e| format!("{e}"))?;
    let second = vm.scratch.path("drive_1");
    std::fs::write(&second, b"").map_err(|e| format!("{e}"))?;
    // The guest waits for its disks to get a size, then reads them; then
    // short sleeps: init takes Ctrl-Alt-Del (SIGINT) between two commands.
    let read = "for d in vda vdb; do \
        while [ $(cat /sys/block/$d/size) = 0 ]; do sleep 0.2; done; \
        mount -o ro /dev/$d /mnt && cat /mnt/hello.txt && umount /mnt; done; \
        echo disks-read-$((6*7)); while :; do sleep 0.2; done";
    vm.expect(204, "PUT", "/boot-source", Some(&boot_source(read)?))?;
    for (id, path) in [("drive_0", &placeholder), ("drive_1", &second)] {
        vm.expect(
            204,
            "PUT",
            &format!("/drives/{id}"),
            Some(&format!(
                r#"{{"drive_id": "{id}", "path_on_host": "{}", "is_root_device": false, "is_read_only": false}}"#,
                path.display()
            )),
        )?;
    }
    vm.expect(
        204,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    )?;
    vm.wait_running()?;
    // drive_0 as Kata's Go driver does it: the container's disk bind-mounted
    // over the placeholder, and the same path sent again.
    let first = ext4_with(&vm.scratch, "first.ext4", "first disk, bind-mounted")?;
    let mounted = Command::new("mount")
        .arg("--bind")
        .arg(&first)
        .arg(&placeholder)
        .status()
        .map_err(|e| format!("mount: {e}"))?;
    if !mounted.success() {
        return Err("mount --bind failed (the guest tests run as root)".into());
    }
    let patched = vm.expect(
        204,
        "PATCH",
        "/drives/drive_0",
        Some(&format!(
            r#"{{"drive_id": "drive_0", "path_on_host": "{}"}}"#,
            placeholder.display()
        )),
    );
    // Landlock: a file outside the drives' and the API socket's
    // directories is refused, though ferry (root here) could open it
    // without Landlock.
    let outside = Scratch::new("landlock-outside")?;
    let refused_file = ext4_with(&outside, "outside.ext4", "must not be read")?;
    let patched = patched.and_then(|_| {
        let body = vm.expect(
            400,
            "PATCH",
            "/drives/drive_1",
            Some(&format!(
                r#"{{"drive_id": "drive_1", "path_on_host": "{}"}}"#,
                refused_file.display()
            )),
        )?;
        if !body.contains("Permission denied") {
            return Err(
                format!("Landlock should refuse {}: {body}", refused_file.display()).into(),
            );
        }
        Ok(())
    });
    // drive_1 as a plain new path.
    let other = ext4_with(&vm.scratch, "second.ext4", "second disk, a new path")?;
    let patched = patched.and_then(|_| {
        vm.expect(
            204,
            "PATCH",
            "/drives/drive_1",
            Some(&format!(
                r#"{{"drive_id": "drive_1", "path_on_host": "{}"}}"#,
                other.display()
            )),
        )
    });
    let read_both = patched.and_then(|_| {
        let deadline = Instant::now() + WATCHDOG;
        // (The kernel echoes its command line: the marker is computed.)
        while !vm.console_text().contains("disks-read-42") {
            if Instant::now() > deadline {
                return Err(format!(
                    "the guest should read both hot-plugged disks\n{}",
                    vm.console_text()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        send_ctrl_alt_del(&vm)
    });
    let ended = if read_both.is_ok() {
        vm.wait()
    } else {
        vm.kill()
    };
    let _ = Command::new("umount").arg(&placeholder).status();
    read_both?;
    let (status, console) = ended?;
    if !console.contains("first disk, bind-mounted") || !console.contains("second disk, a new path")
    {
        return Err(format!("the guest should read both hot-plugged disks\n{console}").into());
    }
    if status != Some(0) || !console.contains("init: powering off") {
        return Err(format!(
            "Ctrl-Alt-Del should power the guest off cleanly: {status:?}\n{console}"
        )
        .into());
    }
    Ok(())
}

/// Runs `script` as the README's examples run (`readme::bash`).
fn run_script(script: &str) -> crate::common::Outcome {
    crate::common::run(crate::readme::bash(script), WATCHDOG)
}

#[guest_test]
fn readme_api() -> TestResult {
    let script =
        readme::tested_block(&readme::read()?, "api").ok_or("README.md has no api block")?;
    let out = run_script(&script);
    if out.timed_out {
        return Err(TestError::Hazard(format!(
            "the API example stalled\n{}",
            out.describe()
        )));
    }
    for (needle, what) in [
        ("hello from an API boot", "the guest should print its line"),
        (r#""state":"Running""#, "GET / should say Running"),
    ] {
        if !out.stdout.contains(needle) {
            return Err(format!("{what}\n{}", out.describe()).into());
        }
    }
    if out.status != Some(0) {
        return Err(format!("wait should give ferry's status 0\n{}", out.describe()).into());
    }
    Ok(())
}

#[guest_test]
fn readme_config_file_boots_the_same_machine_as_the_command_line() -> TestResult {
    let script = readme::tested_block(&readme::read()?, "config-file")
        .ok_or("README.md has no config-file block")?;
    let from_file = run_script(&script);
    let from_cli = run_script(
        "ferry --kernel resources/out/vmlinuz --initrd resources/out/initramfs.cpio.gz --cpus 2 \
         --disk resources/out/rootfs.ext4,ro,id=data --log-level info \
         --cmdline \"$(ferry --print-cmdline) -- nproc; cat /sys/block/vda/serial\"",
    );
    for out in [&from_file, &from_cli] {
        if out.timed_out {
            return Err(TestError::Hazard(format!(
                "a boot stalled\n{}",
                out.describe()
            )));
        }
        let lines: Vec<&str> = out.stdout.lines().map(str::trim).collect();
        if out.status != Some(0) || !lines.contains(&"2") || !lines.contains(&"data") {
            return Err(format!(
                "both boots should show 2 vCPUs and the disk serial data\n{}",
                out.describe()
            )
            .into());
        }
    }
    // The same devices: ferry's log names them alike.
    let devices = |stderr: &str| -> Vec<String> {
        stderr
            .lines()
            .filter(|l| {
                (l.starts_with("ferry: blk") && l.contains("sectors"))
                    || l.starts_with("ferry: passt started")
            })
            .map(|l| l.split(" (pid").next().unwrap_or(l).to_string())
            .collect()
    };
    if devices(&from_file.stderr).len() != 2
        || devices(&from_file.stderr) != devices(&from_cli.stderr)
    {
        return Err(format!(
            "the file and the command line should build the same devices:\n{:?}\n{:?}",
            devices(&from_file.stderr),
            devices(&from_cli.stderr)
        )
        .into());
    }
    Ok(())
}
