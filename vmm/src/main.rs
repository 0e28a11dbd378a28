// SPDX-License-Identifier: Apache-2.0
//! ferry: boot a Linux guest on KVM, networked through passt.

use std::time::Instant;

use clap::Parser;
use ferry::{cli, config, exit_status, logger, vm};

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
    let checked = config::Launch::from_cli(&cli).and_then(|launch| {
        let resources = config::resources_from_cli(&cli)?;
        config::VmConfig::build(&resources, &launch)
    });
    let code = match checked {
        Err(e) => {
            report(&e);
            exit_status::BAD_CONFIG
        }
        Ok(config) => match vm::run(config, start) {
            Ok(reason) => exit_status::for_reason(&reason),
            Err(e) => {
                report(&e);
                if e.is_bad_input() {
                    exit_status::BAD_CONFIG
                } else if e.is_kvm_unavailable() {
                    exit_status::KVM_UNAVAILABLE
                } else {
                    exit_status::VMM_FAILURE
                }
            }
        },
    };
    std::process::exit(code);
}
