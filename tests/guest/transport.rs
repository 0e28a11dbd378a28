// SPDX-License-Identifier: Apache-2.0
//! The virtio transports: by default the disk and the card are PCI
//! functions interrupting with MSI-X, one vector per queue; `--virtio mmio`
//! puts them on virtio-mmio for kernels without PCI. Either way the guest
//! reads the disk and reaches passt's gateway (and, on mmio, its vsock
//! reaches the host).

use crate::common::Outcome;
use crate::harness::{check, guest_test, Boot, Scratch, TestResult};
use crate::vsock::host_echo_server;

/// What the guest reports: its interrupts, where its virtio devices sit,
/// the disk's first 4 KiB, and a ping of passt's gateway.
const REPORT: &str = "grep virtio /proc/interrupts; ls -l /sys/bus/virtio/devices/; \
    echo disk-bytes=$(head -c 4096 /dev/vda | wc -c); \
    ping -c 1 -W 5 192.0.2.254 >/dev/null && echo ping-ok";

/// Boots with a 1 MiB disk and the default card, ferry's `args` and the
/// kernel's `kernel_args`; checks that disk and network work.
fn boot_and_report(boot: Boot, args: &[&str], kernel_args: &str) -> TestResult<Outcome> {
    let scratch = Scratch::new("transport")?;
    let disk = scratch.raw_disk("d.img", 1 << 20, 3)?;
    let disk = format!("{},ro", disk.display());
    let out = boot
        .args(&["--disk", &disk])
        .args(args)
        .kernel_args(kernel_args)
        .run()?;
    check(
        out.status == Some(0),
        "the guest's checks should pass",
        &out,
    )?;
    check(
        out.stdout.contains("disk-bytes=4096"),
        "the guest should read its disk",
        &out,
    )?;
    check(
        out.stdout.contains("ping-ok"),
        "the guest should reach passt's gateway",
        &out,
    )?;
    Ok(out)
}

/// Whether an interrupt line of `/proc/interrupts` for `name` is an MSI.
fn msi_line(stdout: &str, name: &str) -> bool {
    stdout
        .lines()
        .any(|l| l.contains("PCI-MSI") && l.trim_end().ends_with(name))
}

#[guest_test]
fn virtio_on_pci_with_msix() -> TestResult {
    // Debian's kernel: its virtio-pci driver is a module.
    let out = boot_and_report(Boot::new(REPORT).debian_kernel(), &[], "")?;
    // The disk comes first (virtio0), then the card (virtio1).
    for name in ["virtio0-req.0", "virtio1-input.0", "virtio1-output.0"] {
        check(
            msi_line(&out.stdout, name),
            &format!("{name} should have an MSI-X vector of its own"),
            &out,
        )?;
    }
    check(
        out.stdout.contains("/pci0000:00/0000:00:01.0/virtio0")
            && out.stdout.contains("/pci0000:00/0000:00:02.0/virtio1"),
        "the disk and the card should be functions 00:01.0 and 00:02.0",
        &out,
    )
}

/// `--virtio mmio`: the disk, the card and the vsock device on virtio-mmio
/// (8 MiB through the vsock to a host echo server and back).
#[guest_test]
fn virtio_mmio_on_request() -> TestResult {
    let scratch = Scratch::new("transport-mmio")?;
    let uds = scratch.path("v.sock");
    host_echo_server(&uds, 5000)?;
    let vsock = format!("cid=3,uds={}", uds.display());
    let out = boot_and_report(
        Boot::new(&format!("{REPORT}; ft vsock-connect 5000 8388608")),
        &["--virtio", "mmio", "--vsock", &vsock],
        "pci=off",
    )?;
    check(
        !out.stdout.contains("PCI-MSI") && out.stdout.contains("LNRO0005"),
        "the devices should be virtio-mmio, found through the DSDT",
        &out,
    )?;
    check(
        out.stdout.contains("8388608 bytes echoed intact"),
        "vsock should work on virtio-mmio too",
        &out,
    )
}
