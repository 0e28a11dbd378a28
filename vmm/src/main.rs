// SPDX-License-Identifier: Apache-2.0
//! ferry: boot a Linux guest on KVM, networked through passt.

use std::time::Instant;

use clap::Parser;
use std::sync::{mpsc, Arc};

use ferry::api::chain;
use ferry::resources::VmResources;
use ferry::{api, cli, config, exit_status, logger, vmm};
use ferry_devices::vm_end::ExitReason;
use vmm_sys_util::eventfd::EventFd;

/// Why ferry stopped before the VM could end: the message and the exit status.
struct Failure(String, i32);

impl From<vmm::Error> for Failure {
    fn from(e: vmm::Error) -> Self {
        Failure(chain(&e), e.exit_status())
    }
}

impl From<config::Error> for Failure {
    fn from(e: config::Error) -> Self {
        vmm::Error::from(e).into()
    }
}

/// Boots the machine the command line (or its configuration file)
/// describes, serves the API if asked, and runs the VM to its end.
fn boot(cli: &cli::Cli, start: Instant) -> Result<ExitReason, Failure> {
    let launch = config::Launch::from_cli(cli)?;
    let resources = match cli.kernel {
        Some(_) => config::resources_from_cli(cli)?,
        None => VmResources::default(),
    };
    // Before any thread starts: the stop signals are blocked in all of them.
    let mut vmm = vmm::Vmm::new(start, launch, resources)?;
    if cli.api_sock.is_none() && cli.config_file.is_none() {
        vmm.start_vm()?;
        return Ok(vmm.run()?);
    }
    let (requests_tx, requests) = mpsc::channel();
    let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(|e| {
        Failure(
            format!("cannot create the API's event: {e}"),
            exit_status::VMM_FAILURE,
        )
    })?);
    let server = match &cli.api_sock {
        Some(path) => {
            let socket = ferry_api::ApiSocket::bind(path)
                .map_err(|e| Failure(chain(&e), exit_status::BAD_CONFIG))?;
            Some(
                ferry_api::spawn(socket, requests_tx, wake.clone())
                    .map_err(|e| Failure(chain(&e), exit_status::VMM_FAILURE))?,
            )
        }
        None => None,
    };
    let mut api = api::Api::new(cli.id.clone(), start);
    if let Some(path) = &cli.config_file {
        api::apply_config_file(&mut api, &mut vmm, path)
            .map_err(|e| Failure(e, exit_status::BAD_CONFIG))?;
    } else if cli.kernel.is_some() {
        vmm.start_vm()?;
    }
    let reason = api.serve(vmm, requests, wake);
    // Stops serving and removes the socket file.
    drop(server);
    Ok(reason?)
}

/// Forks the passt spawner while ferry has one thread, and compiles the
/// threads' seccomp filters (each thread installs its own as it starts;
/// the main thread once the VM is built) unless `--no-seccomp`.
/// `FERRY_SECCOMP=log` lets refused calls through and has the kernel log
/// them instead: for finding what a changed thread needs.
fn prepare_confinement(cli: &cli::Cli) -> Result<(), String> {
    ferry_net_passt::spawner::start()
        .map_err(|e| format!("cannot start the passt spawner: {e}"))?;
    if cli.no_seccomp {
        log::info!("seccomp filters off (--no-seccomp)");
        return Ok(());
    }
    let mode = match std::env::var("FERRY_SECCOMP").as_deref() {
        Ok("log") => ferry_confine::seccomp::Mode::Log,
        _ => ferry_confine::seccomp::Mode::Enforce,
    };
    ferry_confine::seccomp::enable(mode, ferry::kick_signal()).map_err(|e| chain(&e))?;
    log::debug!("seccomp filters on ({mode:?})");
    Ok(())
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
        let transport = cli
            .virtio
            .unwrap_or_else(|| config::Transport::for_cmdline(&cli.cmdline));
        println!("{}", config::cmdline_for(&cli.cmdline, transport));
        return;
    }
    // Before any thread is confined (a no-op unless built to capture).
    ferry_capture::init();
    if let Err(message) = prepare_confinement(&cli) {
        log::error!("{message}");
        std::process::exit(exit_status::VMM_FAILURE);
    }
    let code = match boot(&cli, start) {
        Ok(reason) => exit_status::for_reason(&reason),
        Err(Failure(message, status)) => {
            log::error!("{message}");
            status
        }
    };
    std::process::exit(code);
}
