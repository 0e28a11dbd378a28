// SPDX-License-Identifier: Apache-2.0
//! ferry: boot a Linux guest on KVM, networked through passt.

use std::time::Instant;

use clap::Parser;
use ferry::{cli, config, exit_status, logger, vmm};
use ferry_devices::vm_end::ExitReason;

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

/// Boots the machine the command line describes and runs it to its end.
fn boot(cli: &cli::Cli, start: Instant) -> Result<ExitReason, vmm::Error> {
    let launch = config::Launch::from_cli(cli)?;
    let resources = config::resources_from_cli(cli)?;
    let mut vmm = vmm::Vmm::new(start, launch, resources)?;
    vmm.start_vm()?;
    vmm.run()
}

fn main() {
    let start = Instant::now();
    let cli = cli::Cli::try_parse().unwrap_or_else(|e| {
        // --help and --version print and succeed; a bad command line is
        // BAD_CONFIG like any other configuration error.
        let _ = e.print();
        std::process::exit(if e.use_stderr() {
            exit_status::BAD_CONFIG
        } else {
            exit_status::SUCCESS
        })
    });
    logger::init(cli.log_level);
    if cli.print_cmdline {
        println!("{}", config::cmdline_for(&cli.cmdline, cli.virtio));
        return;
    }
    let code = match boot(&cli, start) {
        Ok(reason) => exit_status::for_reason(&reason),
        Err(e) => {
            report(&e);
            e.exit_status()
        }
    };
    std::process::exit(code);
}
