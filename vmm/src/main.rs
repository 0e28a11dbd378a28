// SPDX-License-Identifier: Apache-2.0
//! ferry: boot a Linux guest on KVM, networked through passt.

mod cli;
mod config;
mod console;
mod event_loop;
mod kvm;
mod logger;
mod memory;
mod vcpu;
mod vm;

use std::time::Instant;

use clap::Parser;
use ferry_devices::vm_end::ExitReason;

/// Exit statuses of ferry itself (the guest's own status passes through).
mod status {
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
    /// `--timeout` ran out (as coreutils `timeout` reports it).
    pub const TIMEOUT: i32 = 124;
}

/// Prints `err` and its causes on one line.
fn report(err: &dyn std::error::Error) {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    log::error!("{line}");
}

/// ferry's exit status for the way the VM ended.
fn exit_status(reason: &ExitReason) -> i32 {
    match reason {
        ExitReason::PowerOff => {
            log::info!("the guest powered off");
            0
        }
        ExitReason::Halt => {
            log::info!("the guest halted");
            0
        }
        ExitReason::GuestStatus(status) => {
            log::info!("the guest exited with status {status}");
            i32::from(*status)
        }
        ExitReason::Reset => {
            log::warn!("the guest reset or rebooted; the VM is stopped");
            status::GUEST_RESET
        }
        ExitReason::Panic => {
            log::error!("the guest kernel panicked");
            status::GUEST_PANIC
        }
        ExitReason::Failure(msg) => {
            log::error!("{msg}");
            status::VMM_FAILURE
        }
        ExitReason::HostSignal(sig) => 128 + sig,
        ExitReason::Timeout => {
            log::warn!("the time allowed ran out; the VM was stopped");
            status::TIMEOUT
        }
    }
}

fn main() {
    let start = Instant::now();
    let cli = cli::Cli::parse();
    logger::init(cli.log_level);
    let code = match config::VmConfig::from_cli(&cli) {
        Err(e) => {
            report(&e);
            status::BAD_CONFIG
        }
        Ok(config) => match vm::run(config, start) {
            Ok(reason) => exit_status(&reason),
            Err(e) => {
                report(&e);
                if e.is_bad_input() {
                    status::BAD_CONFIG
                } else if e.is_kvm_unavailable() {
                    status::KVM_UNAVAILABLE
                } else {
                    status::VMM_FAILURE
                }
            }
        },
    };
    std::process::exit(code);
}
