// SPDX-License-Identifier: Apache-2.0
//! The basics: the guest boots, its exit status is ferry's, its vCPUs are
//! online, its console can go to a file, and each way it can end
//! (poweroff, reboot, panic) ends the VM.

use crate::harness::{check, guest_test, Boot, TestResult, GUEST_RESET};

use ferry::exit_status::GUEST_PANIC;

/// One boot for what every boot shows (boot guests are what CI pays for),
/// on Debian's kernel with its drivers as modules: userspace starts, the
/// boot-time marker is logged, both vCPUs are online, the guest's exit
/// status becomes ferry's, and `--console file:` holds the whole console
/// (the kernel log and the guest's output), none of it on stdout.
#[guest_test]
fn boots_to_userspace_with_two_vcpus_and_its_status_is_ferrys() -> TestResult {
    let path = std::env::temp_dir().join(format!("ferry-console-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let spec = format!("file:{}", path.display());
    let out = Boot::new("echo nproc=$(nproc); exit 7")
        .debian_kernel()
        .args(&["--cpus", "2", "--console", &spec])
        .run();
    let console = std::fs::read_to_string(&path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    let out = out?;
    check(
        console.contains("Linux version"),
        &format!(
            "the console file should hold the kernel log; it has {} bytes",
            console.len()
        ),
        &out,
    )?;
    check(
        console.contains("init: userspace started"),
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
        console.contains("nproc=2"),
        "the guest should see 2 CPUs",
        &out,
    )?;
    check(
        !out.stdout.contains("Linux version") && !out.stdout.contains("nproc="),
        "nothing of the console should reach stdout",
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
