// SPDX-License-Identifier: Apache-2.0
//! Booting as Kata boots Firecracker guests: a configuration file (what
//! Kata's Go driver hands Firecracker) whose `boot_args` end with Kata's
//! `fcKernelParams` (`pci=off ... acpi=off`), on a kernel built as Kata's
//! are (virtio-mmio devices from the command line, the MP table; see
//! `resources/kernel/`). Without ACPI the guest finds its CPUs only in
//! ferry's MP table and its virtio devices only in the
//! `virtio_mmio.device=` parameters ferry adds; `pci=off` makes ferry put
//! them on virtio-mmio. One boot checks it all: four CPUs, the disk, the
//! network card (DHCP from passt, a TCP connection to the host) and the
//! vsock device (both directions of the hybrid vsock).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{self, guest_file, FERRY};
use crate::harness::{guest_test, kata_style_kernel, Scratch, TestError, TestResult, WATCHDOG};

/// What Kata's Go driver appends to a Firecracker guest's kernel command
/// line (`fcKernelParams` in `src/runtime/virtcontainers/fc.go`), word for word.
const FC_KERNEL_PARAMS: &str =
    "pci=off reboot=k panic=1 iommu=off net.ifnames=0 random.trust_cpu=on acpi=off";

/// The vsock port the guest listens on, as Kata's agent does.
const GUEST_PORT: u32 = 1024;
/// The vsock port the guest connects to on the host.
const HOST_PORT: u32 = 5000;
/// What the host sends the guest through `CONNECT`, echoed back.
const GREETING: &str = "hello from the kata-style host";
/// How many bytes the guest sends the host and expects back.
const GUEST_BYTES: u32 = 1 << 20;

/// `s` as a JSON string.
pub(crate) fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A TCP echo server on the host's loopback: the guest reaches it through
/// passt's gateway address.
fn host_tcp_echo() -> TestResult<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    let port = listener
        .local_addr()
        .map_err(|e| format!("local_addr: {e}"))?
        .port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(port)
}

/// The host's end of the hybrid vsock. One thread connects to the guest
/// (`CONNECT 1024`, as Kata's runtime reaches its agent) until the guest
/// echoes [`GREETING`]; another serves the guest's connection to
/// [`HOST_PORT`], echoing it only once the first succeeded, so the guest's
/// own check covers both directions. Returns the first's result flag.
fn host_vsock(uds: &Path) -> TestResult<Arc<AtomicBool>> {
    let reached_guest = Arc::new(AtomicBool::new(false));
    let flag = reached_guest.clone();
    let uds_path = uds.to_path_buf();
    std::thread::spawn(move || {
        let deadline = Instant::now() + WATCHDOG;
        while Instant::now() < deadline && !flag.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(300));
            let Ok(mut stream) = UnixStream::connect(&uds_path) else {
                continue;
            };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            if stream
                .write_all(format!("CONNECT {GUEST_PORT}\n{GREETING}\n").as_bytes())
                .is_err()
            {
                continue;
            }
            let mut reader = BufReader::new(stream);
            let mut ok = String::new();
            let mut echo = String::new();
            if reader.read_line(&mut ok).is_ok()
                && ok.starts_with("OK ")
                && reader.read_line(&mut echo).is_ok()
                && echo.trim_end() == GREETING
            {
                flag.store(true, Ordering::SeqCst);
            }
        }
    });

    let port_path = PathBuf::from(format!("{}_{HOST_PORT}", uds.display()));
    let listener = UnixListener::bind(&port_path).map_err(|e| format!("bind: {e}"))?;
    let flag = reached_guest.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let flag = flag.clone();
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(30);
                while !flag.load(Ordering::SeqCst) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(100));
                }
                if !flag.load(Ordering::SeqCst) {
                    return; // closes the guest's connection: its check fails
                }
                let mut reader = stream.try_clone().expect("clone a UNIX stream");
                let mut writer = stream;
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = reader.read(&mut buf) {
                    if n == 0 || writer.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = writer.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    Ok(reached_guest)
}

#[guest_test]
fn kata_firecracker_boot_sees_cpus_disk_net_and_vsock() -> TestResult {
    let kernel = kata_style_kernel()?;
    let scratch = Scratch::new("kata-boot")?;
    let marker = format!("ferry-kata-disk-{}", std::process::id());
    let disk = scratch.path("disk.img");
    let mut image = format!("{marker}\n").into_bytes();
    image.resize(1 << 20, 0);
    std::fs::write(&disk, image).map_err(|e| format!("cannot write the disk: {e}"))?;
    let uds = scratch.path("v.sock");
    let reached_guest = host_vsock(&uds)?;
    let tcp_port = host_tcp_echo()?;

    // The guest's checks, one line each; the last connects to the host's
    // vsock port, which echoes only after the host reached the guest.
    let guest_cmd = format!(
        "dmesg -n 1; ft vsock-echo {GUEST_PORT} & \
         echo cpus=$(nproc); \
         echo cmdline: $(cat /proc/cmdline); \
         echo acpi=$(ls /sys/firmware/acpi/tables 2>/dev/null | wc -l); \
         echo mmio=$(ls /sys/bus/platform/devices | grep -c virtio-mmio); \
         echo disk=$(head -n 1 /dev/vda); \
         echo addr=$(ip -4 -o addr show eth0 | awk '{{print $4}}'); \
         ft tcp-rr $(ip route | awk '/default/ {{print $3}}') {tcp_port} 3; \
         ft vsock-connect {HOST_PORT} {GUEST_BYTES}"
    );
    let boot_args = format!(
        "{} {FC_KERNEL_PARAMS} -- \"{guest_cmd}\"",
        ferry::cli::DEFAULT_CMDLINE
    );
    let config = format!(
        r#"{{
  "boot-source": {{"kernel_image_path": {kernel}, "initrd_path": {initrd},
                  "boot_args": {boot_args}}},
  "machine-config": {{"vcpu_count": 4, "mem_size_mib": 256}},
  "drives": [{{"drive_id": "rootfs", "path_on_host": {disk},
               "is_root_device": false, "is_read_only": true}}],
  "network-interfaces": [{{"iface_id": "eth0", "guest_mac": "02:66:72:72:79:02"}}],
  "vsock": {{"guest_cid": 3, "uds_path": {uds}}}
}}"#,
        kernel = json_string(&kernel.display().to_string()),
        initrd = json_string(&guest_file("initramfs.cpio.gz")?.display().to_string()),
        boot_args = json_string(&boot_args),
        disk = json_string(&disk.display().to_string()),
        uds = json_string(&uds.display().to_string()),
    );
    let config_path = scratch.path("vm.json");
    std::fs::write(&config_path, config)
        .map_err(|e| format!("cannot write {config_path:?}: {e}"))?;

    let mut cmd = Command::new(FERRY);
    cmd.arg("--config-file")
        .arg(&config_path)
        .arg("--log-level")
        .arg(std::env::var("FERRY_TEST_LOG").unwrap_or_else(|_| "info".into()));
    let out = common::run(cmd, WATCHDOG);
    if out.timed_out || out.status == Some(ferry::exit_status::GUEST_RESET) {
        return Err(TestError::Hazard(format!(
            "the guest stalled or reset\n{}",
            out.describe()
        )));
    }
    let fail = |what: &str| -> TestResult {
        Err(format!(
            "{what} (host reached the guest's vsock: {})\n{}",
            reached_guest.load(Ordering::SeqCst),
            out.describe()
        )
        .into())
    };
    let line = |key: &str| -> String {
        out.stdout
            .lines()
            .find_map(|l| l.trim_end().strip_prefix(key))
            .unwrap_or("")
            .to_string()
    };
    if line("cpus=") != "4" {
        return fail("the guest should see 4 CPUs (from the MP table)");
    }
    let cmdline = line("cmdline: ");
    if !cmdline.contains(FC_KERNEL_PARAMS)
        || cmdline.matches("virtio_mmio.device=4K@0x").count() != 3
    {
        return fail("the command line should hold Kata's parameters and 3 virtio_mmio.device=");
    }
    if line("acpi=") != "0" {
        return fail("the guest should not use ACPI (acpi=off)");
    }
    if line("mmio=") != "3" {
        return fail("the guest should find 3 virtio-mmio devices (disk, card, vsock)");
    }
    if line("disk=") != marker {
        return fail("the guest should read what the test wrote on its disk");
    }
    if !line("addr=").contains('/') {
        return fail("the guest's card should get an address by DHCP from passt");
    }
    if !out.stdout.contains("ft: tcp-rr: count 3") {
        return fail("the guest should reach a TCP server on the host through passt");
    }
    if !reached_guest.load(Ordering::SeqCst) {
        return fail("the host should reach the guest's vsock port 1024 (CONNECT)");
    }
    if !out
        .stdout
        .contains(&format!("{GUEST_BYTES} bytes echoed intact"))
    {
        return fail("the guest's vsock connection to the host should echo its bytes");
    }
    if out.status != Some(0) {
        return fail("the guest's checks should end with status 0");
    }
    Ok(())
}
