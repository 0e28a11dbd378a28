// SPDX-License-Identifier: Apache-2.0
//! The command line.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// The default kernel command line: serial console, reboot through the
/// keyboard controller, reboot at once on panic, no slow i8042 probe.
/// With `--virtio mmio`, `pci=off` is added (there is no PCI bus then).
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=-1 i8042.noaux i8042.nomux i8042.dumbkbd";

use crate::resources::{DEFAULT_CPUS, DEFAULT_MAC, DEFAULT_MEMORY_MIB};

/// The Firecracker API version ferry answers to: that of the client Kata's
/// Go driver is generated from (`src/runtime/virtcontainers/pkg/firecracker/
/// firecracker.yaml`). ferry serves the part of it that Kata's drivers use,
/// not all of it (no snapshots, balloon, MMDS, entropy device, CPU
/// templates). `GET /version` reports it as `firecracker_version`.
pub const FIRECRACKER_API_VERSION: &str = "1.4.0";

/// What `--version` prints after `ferry `. Tools that drive Firecracker
/// read the second word of the first line as a version (Kata's Go driver:
/// `fc.go: parseVersion`, which needs at least 0.21.1), so that word is the
/// Firecracker API version; ferry's own version follows in words. `-V`
/// prints ferry's own version alone.
const LONG_VERSION: &str = concat!(
    "v1.4.0 (Firecracker API version; ferry ",
    env!("CARGO_PKG_VERSION"),
    ")"
);

/// Boot a Linux guest on KVM, networked through passt.
#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version,
    long_version = LONG_VERSION,
    about,
    after_help = crate::exit_status::help())]
pub struct Cli {
    /// Guest kernel: a bzImage or an ELF vmlinux.
    #[arg(
        long,
        value_name = "PATH",
        required_unless_present_any = ["print_cmdline", "api_sock", "config_file"],
        conflicts_with = "config_file"
    )]
    pub kernel: Option<PathBuf>,

    /// Initramfs to load next to the kernel.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,

    /// Kernel command line (replaces the default).
    #[arg(long, value_name = "STR", default_value = DEFAULT_CMDLINE)]
    pub cmdline: String,

    /// Print the kernel command line the guest would get (after --cmdline
    /// and --virtio) and exit.
    #[arg(long)]
    pub print_cmdline: bool,

    /// Where virtio devices sit: `pci` (PCI bus 0, MSI-X interrupts) or
    /// `mmio` (virtio-mmio windows in the DSDT and on the kernel command
    /// line, for kernels without PCI). Default: `mmio` if the kernel
    /// command line has `pci=off` (as Firecracker's users and Kata write
    /// it), else `pci`.
    #[arg(long, value_name = "pci|mmio", value_enum, hide_possible_values = true)]
    pub virtio: Option<Transport>,

    /// Number of vCPUs (1-254).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CPUS)]
    pub cpus: u32,

    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = DEFAULT_MEMORY_MIB)]
    pub memory: u64,

    /// Where the guest's serial console goes: `stdio` (output to stdout,
    /// input from stdin), `file:PATH` (output appended to PATH), or `none`.
    #[arg(long, value_name = "stdio|file:PATH|none", default_value = "stdio")]
    pub console: String,

    /// A copy of the console output, written to FILE (created or truncated)
    /// as it comes, in addition to --console: complete even if ferry is killed.
    #[arg(long, value_name = "FILE")]
    pub console_log: Option<PathBuf>,

    /// A virtio-blk disk backed by a raw image: `PATH[,ro][,id=SERIAL]`.
    /// Repeatable: the guest sees them as vda, vdb, ... in order. An image
    /// is locked while in use; only read-only disks can share one.
    #[arg(long, value_name = "PATH[,ro][,id=SERIAL]")]
    pub disk: Vec<String>,

    /// Stop the VM after SECS seconds and exit with status 124.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,

    /// On SIGTERM or SIGINT, how long the guest gets to shut down after
    /// ferry presses Ctrl-Alt-Del before it is stopped (0: stop at once).
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub shutdown_grace: f64,

    /// Networking: `passt` (a virtio-net card wired to a passt that ferry
    /// starts and stops), `tap:NAME` (a virtio-net card on the existing TAP
    /// device NAME) or `none`.
    #[arg(long, value_name = "passt|tap:NAME|none", value_parser = parse_net, default_value = "passt")]
    pub net: NetKind,

    /// The card's MAC address.
    #[arg(long, value_name = "MAC", default_value = DEFAULT_MAC)]
    pub mac: String,

    /// A virtio-vsock device, `cid=N,uds=PATH`: the guest's context id
    /// (3 or more) and the UNIX socket where host clients reach guest ports
    /// with `CONNECT <port>` (Firecracker's hybrid vsock); the guest's
    /// connections to host port P go to `PATH_P`. Each `listen=PORT:SOCK`
    /// adds a UNIX socket at SOCK whose every connection is joined to guest
    /// port PORT with no `CONNECT` line (Kata's agent socket).
    #[arg(long, value_name = "cid=N,uds=PATH[,listen=PORT:SOCK]")]
    pub vsock: Option<String>,

    /// Forward a host port to the guest: `[IP:]HOST_PORT:GUEST_PORT[/tcp|/udp]`
    /// (as podman and docker spell it; IPv6 addresses in brackets). Repeatable.
    #[arg(long, value_name = "[IP:]HOST:GUEST[/PROTO]")]
    pub publish: Vec<String>,

    /// An argument passed to passt verbatim. Repeatable.
    #[arg(long = "passt-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub passt_args: Vec<String>,

    /// The passt binary to run.
    #[arg(long, value_name = "PATH", default_value = "passt")]
    pub passt: std::path::PathBuf,

    /// Serve Firecracker's HTTP API on a UNIX socket at PATH (refused if
    /// PATH exists; removed at exit). Without --kernel or --config-file the
    /// VM waits for the API's InstanceStart.
    #[arg(long, value_name = "PATH")]
    pub api_sock: Option<PathBuf>,

    /// Boot the machine a Firecracker JSON configuration file describes
    /// (boot-source, machine-config, drives, network-interfaces, logger,
    /// metrics) instead of the machine options here.
    #[arg(long, value_name = "PATH")]
    pub config_file: Option<PathBuf>,

    /// The instance's id, as the API's `GET /` reports it.
    #[arg(long, value_name = "ID", default_value = "anonymous-instance")]
    pub id: String,

    /// Runs every thread without its seccomp filter (Firecracker's
    /// spelling; Kata passes it when its configuration disables seccomp).
    #[arg(long)]
    pub no_seccomp: bool,

    /// Leaves ferry's file access unrestricted once the VM is built (by
    /// default Landlock limits it to the files it was given, where the
    /// kernel has Landlock).
    #[arg(long)]
    pub no_landlock: bool,

    /// Run even though /dev/kvm is PVM (only for guest kernels built for PVM).
    #[arg(long)]
    pub allow_pvm: bool,

    /// ferry's own log level on stderr: error, warn, info, debug or trace.
    #[arg(long, value_name = "LEVEL", default_value = "warn", value_parser = parse_level)]
    pub log_level: log::LevelFilter,
}

/// How virtio devices reach the guest (`--virtio`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    /// virtio-pci on PCI bus 0, with MSI-X interrupts.
    Pci,
    /// virtio-mmio windows, one interrupt line each, described in the DSDT
    /// and as `virtio_mmio.device=` on the kernel command line.
    Mmio,
}

/// What the guest's network card is wired to (`--net`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetKind {
    /// A virtio-net card wired to a passt that ferry starts and stops.
    Passt,
    /// A virtio-net card on an existing TAP device of this name.
    Tap(String),
    /// No network card.
    None,
}

/// Parses `--net`: `passt`, `tap:NAME` or `none`.
fn parse_net(s: &str) -> Result<NetKind, String> {
    match s {
        "passt" => Ok(NetKind::Passt),
        "none" => Ok(NetKind::None),
        _ => match s.strip_prefix("tap:") {
            Some(name) if !name.is_empty() => Ok(NetKind::Tap(name.to_string())),
            _ => Err("expected passt, tap:NAME or none".into()),
        },
    }
}

/// Parses a log level name.
fn parse_level(s: &str) -> Result<log::LevelFilter, String> {
    s.parse()
        .map_err(|_| format!("unknown log level {s:?}: use error, warn, info, debug or trace"))
}
