// SPDX-License-Identifier: Apache-2.0
//! ferry's exit statuses: defined once here, shown by `--help` from
//! [`TABLE`], documented in the README (a test compares the two).

use ferry_devices::vm_end::ExitReason;

/// The guest powered off or halted.
pub const SUCCESS: i32 = 0;
/// Bad command line or configuration.
pub const BAD_CONFIG: i32 = 2;
/// KVM missing or unusable.
pub const KVM_UNAVAILABLE: i32 = 3;
/// ferry or KVM failed while the guest ran.
pub const VMM_FAILURE: i32 = 4;
/// The guest reset or rebooted.
pub const GUEST_RESET: i32 = 80;
/// The guest kernel panicked.
pub const GUEST_PANIC: i32 = 81;
/// The time allowed ran out (as coreutils `timeout` reports it).
pub const TIMEOUT: i32 = 124;
/// Added to the number of the signal that stopped ferry.
pub const SIGNAL_BASE: i32 = 128;

/// Every status with its meaning, as `--help` shows them: the first column
/// is a number, or `N` / `128+N` for the families.
pub const TABLE: &[(&str, &str)] = &[
    (
        "0",
        "the guest powered off or halted (or wrote 0 to the exit-status register)",
    ),
    (
        "N",
        "the guest wrote N to the exit-status register at 0xd0000000",
    ),
    (
        "2",
        "bad command line or configuration (kernel, initrd, sizes)",
    ),
    (
        "3",
        "KVM is not usable here (/dev/kvm missing, no permission, PVM)",
    ),
    ("4", "ferry or KVM failed while the guest ran"),
    (
        "80",
        "the guest reset or rebooted (also a panic with panic=-1 and no pvpanic)",
    ),
    ("81", "the guest kernel panicked (pvpanic)"),
    ("124", "--timeout ran out; the VM was stopped"),
    (
        "128+N",
        "ferry was stopped by signal N (SIGTERM/SIGINT: after the guest shut down, \
         or after --shutdown-grace; a second signal stops it at once)",
    ),
];

/// The "Exit status" section at the end of `--help`, made from [`TABLE`].
pub fn help() -> String {
    let mut text = String::from("Exit status:");
    for (status, meaning) in TABLE {
        text.push_str(&format!("\n  {status:<8} {meaning}"));
    }
    text
}

/// ferry's exit status for the way the VM ended, logged.
pub fn for_reason(reason: &ExitReason) -> i32 {
    match reason {
        ExitReason::PowerOff => {
            log::info!("the guest powered off");
            SUCCESS
        }
        ExitReason::Halt => {
            log::info!("the guest halted");
            SUCCESS
        }
        ExitReason::GuestStatus(status) => {
            log::info!("the guest exited with status {status}");
            i32::from(*status)
        }
        ExitReason::Reset => {
            log::warn!("the guest reset or rebooted; the VM is stopped");
            GUEST_RESET
        }
        ExitReason::Panic => {
            log::error!("the guest kernel panicked");
            GUEST_PANIC
        }
        ExitReason::Failure(msg) => {
            log::error!("{msg}");
            VMM_FAILURE
        }
        ExitReason::HostSignal(sig) => SIGNAL_BASE + sig,
        ExitReason::Timeout => {
            log::warn!("the time allowed ran out; the VM was stopped");
            TIMEOUT
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fixed_status_is_in_the_table() {
        for code in [
            SUCCESS,
            BAD_CONFIG,
            KVM_UNAVAILABLE,
            VMM_FAILURE,
            GUEST_RESET,
            GUEST_PANIC,
            TIMEOUT,
        ] {
            assert!(
                TABLE.iter().any(|(s, _)| *s == code.to_string()),
                "{code} is missing from the table"
            );
        }
        assert!(help().contains("\n  124      --timeout ran out"));
    }
}
