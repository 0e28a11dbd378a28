// SPDX-License-Identifier: Apache-2.0
//! The basics: the guest boots, its exit status is ferry's, its vCPUs are
//! online, each way it can end (poweroff, reboot, panic) ends the VM, and
//! its console can go to a file.

use crate::harness::{check, guest_test, Boot, TestResult, GUEST_RESET};

use ferry::exit_status::GUEST_PANIC;

/// One boot for what every boot shows (boot guests are what CI pays for):
/// userspace starts, the boot-time marker is logged, both vCPUs are online,
/// and the guest's exit status becomes ferry's.
#[guest_test]
fn boots_to_userspace_with_two_vcpus_and_its_status_is_ferrys() -> TestResult {
    let out = Boot::new("echo nproc=$(nproc); exit 7")
        .args(&["--cpus", "2"])
        .run()?;
    check(
        out.stdout.contains("Linux version"),
        "the kernel log should be on the console",
        &out,
    )?;
    check(
        out.stdout.contains("init: userspace started"),
        "init should have run",
        &out,
    )?;
    check(
        out.stderr.contains("guest userspace started")
            && out.stderr.contains("ms after ferry started"),
        "ferry should log the boot-time marker",
        &out,
    )?;
    check(
        out.stdout.contains("nproc=2"),
        "the guest should see 2 CPUs",
        &out,
    )?;
    check(
        out.status == Some(7),
        "ferry should exit with the guest's status 7",
        &out,
    )?;
    check(
        out.stderr.contains("exited with status 7"),
        "ferry should say so",
        &out,
    )
}

#[guest_test]
fn guest_poweroff_ends_the_vm() -> TestResult {
    // poweroff -f does not return: only ACPI S5 ends the VM (else the watchdog fires).
    let out = Boot::new("poweroff -f; exit 9").run()?;
    check(
        out.status == Some(0),
        "a guest poweroff should end ferry with 0",
        &out,
    )?;
    check(
        out.stderr.contains("powered off"),
        "ferry should say the guest powered off",
        &out,
    )
}

#[guest_test]
fn guest_reboot_ends_the_vm() -> TestResult {
    let out = Boot::new("reboot -f; exit 9").expect_reset().run()?;
    check(
        out.status == Some(GUEST_RESET),
        "a guest reboot should end ferry with 80",
        &out,
    )?;
    check(
        out.stderr.contains("reset or rebooted"),
        "ferry should say the guest rebooted",
        &out,
    )
}

#[guest_test]
fn kernel_panic_ends_the_vm() -> TestResult {
    let out = Boot::new("echo c > /proc/sysrq-trigger; exit 9").run()?;
    check(
        out.stdout.contains("Kernel panic"),
        "the guest kernel should have panicked",
        &out,
    )?;
    check(
        out.status == Some(GUEST_PANIC),
        "a guest panic should end ferry with 81",
        &out,
    )
}

#[guest_test]
fn console_to_file_holds_the_kernel_log() -> TestResult {
    let path = std::env::temp_dir().join(format!("ferry-console-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let spec = format!("file:{}", path.display());
    let out = Boot::new("echo console-check")
        .args(&["--console", &spec])
        .run()?;
    let log = std::fs::read_to_string(&path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    check(out.status == Some(0), "the guest should exit 0", &out)?;
    check(
        log.contains("Linux version") && log.contains("console-check"),
        &format!(
            "the console file should hold the kernel log and the guest's output; it has {} bytes",
            log.len()
        ),
        &out,
    )?;
    check(
        !out.stdout.contains("Linux version"),
        "nothing should reach stdout",
        &out,
    )
}
