//! `ferry-kata`: Kata Containers' remote-hypervisor service backed by
//! ferry. See the README's "Kata Containers" section.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ferry_kata::config::{Config, DEFAULT_CONFIG_PATH};
use ferry_kata::server::{DEFAULT_RUNTIME_DIR, DEFAULT_SOCKET};

/// Kata Containers' remote-hypervisor service (hypervisor.Hypervisor over
/// ttrpc): each sandbox is a ferry VM of its own, networked by a passt in
/// the pod's network namespace.
#[derive(Debug, Parser)]
#[command(name = "ferry-kata", version)]
struct Cli {
    /// The UNIX socket to serve on (Kata's `remote_hypervisor_socket`).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// The service's configuration file.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Where each sandbox gets its directory (its sockets); what a previous
    /// run left there is removed at start.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_RUNTIME_DIR)]
    runtime_dir: PathBuf,
    /// The log's level: error, warn, info, debug or trace.
    #[arg(long, value_name = "LEVEL", default_value = "info", value_parser = parse_level)]
    log_level: log::LevelFilter,
    /// Check the configuration file and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    ferry_kata::logger::init(cli.log_level);
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(e) => {
            log::error!("{}", error_chain(&e));
            return ExitCode::from(2);
        }
    };
    if cli.check_config {
        println!("{}: ok", cli.config.display());
        return ExitCode::SUCCESS;
    }
    match ferry_kata::server::run(config, &cli.socket, &cli.runtime_dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// Parses a log level (`--log-level`).
fn parse_level(s: &str) -> Result<log::LevelFilter, String> {
    s.parse()
        .map_err(|_| format!("{s:?}: expected error, warn, info, debug or trace"))
}

/// An error and its sources, `: `-separated.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}
