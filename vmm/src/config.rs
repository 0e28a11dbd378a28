// SPDX-License-Identifier: Apache-2.0
//! The VM's configuration, checked: the machine's description
//! ([`VmResources`]) with every file opened, every disk locked and every
//! size within bounds, and the options of the ferry process ([`Launch`]).
//! Also the command line's own spellings (`--disk`, `--publish`, ...)
//! turned into that description.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::cli::Transport;
use crate::cli::{Cli, NetKind, DEFAULT_CMDLINE};
use crate::resources::{
    BootSource, DriveSpec, MachineSpec, NetBackendSpec, NetSpec, VmResources, VsockSpec,
};

/// Errors in the configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file named on the command line cannot be opened.
    #[error("cannot open the {what} {path}")]
    Open {
        /// Which file (kernel, initrd).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The path names a directory or something else that is not a file.
    #[error("the {what} {path} is not a regular file")]
    NotAFile {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
    },
    /// No kernel to boot.
    #[error("no kernel to boot: the boot source is not set")]
    NoBootSource,
    /// A size is out of range: what was asked (as its asker spells it) and why not.
    #[error("{asked}: {why}")]
    Size {
        /// The option or field and its value, e.g. `--cpus 0`.
        asked: String,
        /// The bounds.
        why: String,
    },
    /// The console option is malformed.
    #[error("--console {0}: expected stdio, file:PATH or none")]
    Console(String),
    /// The MAC address is malformed.
    #[error(
        "--mac {0}: expected six hex bytes separated by colons, unicast (e.g. 02:00:00:00:00:01)"
    )]
    Mac(String),
    /// A port forward is malformed.
    #[error("--publish {0}: expected [IP:]HOST_PORT:GUEST_PORT[/tcp|/udp] with ports 1-65535")]
    Publish(String),
    /// A disk option is malformed.
    #[error("--disk {0}: expected PATH[,ro][,id=SERIAL] with a serial of 1-20 printable ASCII characters")]
    DiskSpec(String),
    /// A disk image cannot be used.
    #[error(transparent)]
    Disk(#[from] ferry_devices::virtio::block::DiskError),
    /// A duration is negative or not a number.
    #[error("--{0} {1}: expected a number of seconds, 0 or more")]
    Seconds(&'static str, f64),
    /// The console log cannot be created.
    #[error("cannot create the console log {path}")]
    ConsoleLog {
        /// Its path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// More virtio devices than the transport has room for.
    #[error("{devices} virtio devices (disks and network card): --virtio {transport} has room for {max}")]
    TooManyDevices {
        /// Devices asked for.
        devices: usize,
        /// The transport's name.
        transport: &'static str,
        /// Its room.
        max: usize,
    },
    /// passt is not installed (or not where the configuration says).
    #[error(transparent)]
    PasstMissing(ferry_net_passt::launcher::Error),
    /// passt is not installed (or not where --passt says): the launcher's
    /// error, with the options that avoid it.
    #[error("{0}, pass --passt PATH, or use --net none")]
    PasstMissingCli(ferry_net_passt::launcher::Error),
    /// The TAP device cannot back the card.
    #[error(transparent)]
    Tap(#[from] ferry_devices::virtio::net::TapError),
    /// A vsock option is malformed.
    #[error(
        "--vsock {0}: expected cid=N,uds=PATH[,listen=PORT:PATH]... with a context id of 3 or more"
    )]
    VsockSpec(String),
    /// A serial number is not 1-20 printable ASCII characters.
    #[error("disk serial {0:?}: expected 1-20 printable ASCII characters")]
    Serial(String),
}

/// The guest's network.
#[derive(Debug)]
pub enum Net {
    /// No network card.
    None,
    /// A virtio-net card wired to passt.
    Passt {
        /// The card's MAC address.
        mac: [u8; 6],
        /// How to run passt.
        passt: ferry_net_passt::PasstConfig,
    },
    /// A virtio-net card on a TAP device.
    Tap {
        /// The card's MAC address.
        mac: [u8; 6],
        /// The TAP, attached.
        tap: ferry_devices::virtio::net::Tap,
    },
}

/// Parses `aa:bb:cc:dd:ee:ff` into a unicast MAC address.
pub fn parse_mac(spec: &str) -> Result<[u8; 6], Error> {
    let err = || Error::Mac(spec.to_string());
    let parts: Vec<&str> = spec.split(':').collect();
    if parts.len() != 6 {
        return Err(err());
    }
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(parts) {
        if part.len() != 2 {
            return Err(err());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
    }
    // Multicast addresses cannot be a card's.
    if mac[0] & 1 != 0 {
        return Err(err());
    }
    Ok(mac)
}

/// Translates a `--publish` spec into passt's arguments (`-t`/`-u` and their spec).
pub fn publish_to_passt(spec: &str) -> Result<[String; 2], Error> {
    let err = || Error::Publish(spec.to_string());
    let (ports, proto) = match spec.rsplit_once('/') {
        Some((ports, "tcp")) => (ports, "-t"),
        Some((ports, "udp")) => (ports, "-u"),
        Some(_) => return Err(err()),
        None => (spec, "-t"),
    };
    // The address, if any, is everything before the last two colon-separated fields.
    let (addr, ports) = if let Some(rest) = ports.strip_prefix('[') {
        let (addr, after) = rest.split_once(']').ok_or_else(err)?;
        let ports = after.strip_prefix(':').ok_or_else(err)?;
        addr.parse::<std::net::Ipv6Addr>().map_err(|_| err())?;
        (Some(addr.to_string()), ports)
    } else {
        let fields: Vec<&str> = ports.split(':').collect();
        match fields.len() {
            2 => (None, ports),
            3 => {
                fields[0].parse::<std::net::Ipv4Addr>().map_err(|_| err())?;
                (Some(fields[0].to_string()), &ports[fields[0].len() + 1..])
            }
            _ => return Err(err()),
        }
    };
    let (host, guest) = ports.split_once(':').ok_or_else(err)?;
    let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(err);
    let (host, guest) = (port(host)?, port(guest)?);
    let passt_spec = match addr {
        Some(addr) => format!("{addr}/{host}:{guest}"),
        None => format!("{host}:{guest}"),
    };
    Ok([proto.to_string(), passt_spec])
}

impl Transport {
    /// How many virtio devices fit: PCI slots after the host bridge, or
    /// interrupt lines after the legacy devices'.
    pub fn max_devices(self) -> usize {
        use ferry_boot::layout::{IRQ_MAX, VIRTIO_IRQ_START};
        match self {
            Transport::Pci => ferry_devices::pci::SLOTS - 1,
            Transport::Mmio => (IRQ_MAX - VIRTIO_IRQ_START + 1) as usize,
        }
    }

    /// The transport a boot without `--virtio` gets: virtio-mmio when the
    /// kernel command line turns PCI off (`pci=off`, as Firecracker's users
    /// and Kata's Firecracker driver write it: Firecracker has only
    /// virtio-mmio), else PCI.
    pub fn for_cmdline(cmdline: &str) -> Self {
        if kernel_words(cmdline).any(|word| word == "pci=off") {
            Transport::Mmio
        } else {
            Transport::Pci
        }
    }

    /// Its `--virtio` name.
    fn name(self) -> &'static str {
        match self {
            Transport::Pci => "pci",
            Transport::Mmio => "mmio",
        }
    }
}

/// The words of `cmdline` that are the kernel's: those before `--` (the
/// rest goes to init).
fn kernel_words(cmdline: &str) -> impl Iterator<Item = &str> {
    cmdline.split_whitespace().take_while(|word| *word != "--")
}

/// `cmdline` with `args` added to the kernel's part, before the guest's
/// command (`--`) if there is one.
pub fn with_kernel_args(cmdline: &str, args: &str) -> String {
    if args.is_empty() {
        return cmdline.to_string();
    }
    if let Some((kernel, guest)) = cmdline.split_once(" -- ") {
        return format!("{kernel} {args} -- {guest}");
    }
    if let Some(kernel) = cmdline.strip_suffix(" --") {
        return format!("{kernel} {args} --");
    }
    if cmdline.is_empty() {
        return args.to_string();
    }
    format!("{cmdline} {args}")
}

/// The kernel command line for `transport`: the default one gets `pci=off`
/// without a PCI bus; a given one that turns PCI off while the devices are
/// on it gets a warning.
pub fn cmdline_for(cmdline: &str, transport: Transport) -> String {
    let pci_off = kernel_words(cmdline).any(|word| word == "pci=off");
    match transport {
        Transport::Mmio if cmdline == DEFAULT_CMDLINE => format!("{cmdline} pci=off"),
        Transport::Pci if pci_off => {
            log::warn!(
                "the kernel command line has pci=off, but the virtio devices are on PCI: \
                 the guest will not see them (drop pci=off, or use --virtio mmio)"
            );
            cmdline.to_string()
        }
        _ => cmdline.to_string(),
    }
}

/// Where the guest's serial console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Console {
    /// Output to stdout, input from stdin.
    Stdio,
    /// Output appended to a file.
    File(PathBuf),
    /// Discarded.
    None,
}

impl Console {
    /// Parses `stdio`, `file:PATH` or `none`.
    pub fn parse(spec: &str) -> Result<Self, Error> {
        match spec {
            "stdio" => Ok(Console::Stdio),
            "none" => Ok(Console::None),
            _ => match spec.strip_prefix("file:") {
                Some(path) if !path.is_empty() => Ok(Console::File(PathBuf::from(path))),
                _ => Err(Error::Console(spec.to_string())),
            },
        }
    }
}

/// Whether `serial` can be a disk's serial number: 1-20 printable ASCII characters.
pub fn valid_serial(serial: &str) -> bool {
    (1..=ferry_devices::virtio::block::ID_LEN).contains(&serial.len())
        && serial.bytes().all(|b| b.is_ascii_graphic())
}

/// Parses `--disk PATH[,ro][,id=SERIAL]`, the `index`th: its id is
/// `drive<index>` (the API's name for it), its serial the `id=`.
pub fn parse_disk(spec: &str, index: usize) -> Result<DriveSpec, Error> {
    let err = || Error::DiskSpec(spec.to_string());
    let mut fields = spec.split(',');
    let path = fields.next().filter(|p| !p.is_empty()).ok_or_else(err)?;
    let mut disk = DriveSpec {
        id: format!("drive{index}"),
        path: PathBuf::from(path),
        read_only: false,
        root: false,
        partuuid: None,
        serial: String::new(),
    };
    for field in fields {
        match field.split_once('=') {
            None if field == "ro" => disk.read_only = true,
            Some(("id", id)) if valid_serial(id) => disk.serial = id.to_string(),
            _ => return Err(err()),
        }
    }
    Ok(disk)
}

/// Parses `--vsock cid=N,uds=PATH[,listen=PORT:PATH]...`.
pub fn parse_vsock(spec: &str) -> Result<VsockSpec, Error> {
    let err = || Error::VsockSpec(spec.to_string());
    let (mut cid, mut uds, mut port_listeners) = (None, None, Vec::new());
    for field in spec.split(',') {
        match field.split_once('=') {
            Some(("cid", n)) => cid = Some(n.parse::<u32>().map_err(|_| err())?),
            Some(("uds", path)) if !path.is_empty() => uds = Some(PathBuf::from(path)),
            Some(("listen", listener)) => {
                let (port, path) = listener.split_once(':').ok_or_else(err)?;
                let port = port.parse::<u32>().map_err(|_| err())?;
                if path.is_empty() {
                    return Err(err());
                }
                port_listeners.push((port, PathBuf::from(path)));
            }
            _ => return Err(err()),
        }
    }
    let (Some(cid), Some(uds_path)) = (cid, uds) else {
        return Err(err());
    };
    VsockSpec::check_cid(cid).map_err(|_| err())?;
    Ok(VsockSpec {
        cid,
        uds_path,
        port_listeners,
    })
}

/// A disk, open and locked.
#[derive(Debug)]
pub struct Disk {
    /// The name it is known by (the API's `drive_id`).
    pub id: String,
    /// The image.
    pub image: ferry_devices::virtio::block::DiskImage,
    /// The serial number the guest reads.
    pub serial: String,
}

/// Checks a duration in seconds.
fn seconds(option: &'static str, secs: f64) -> Result<Duration, Error> {
    Duration::try_from_secs_f64(secs).map_err(|_| Error::Seconds(option, secs))
}

/// Options of the ferry process rather than of the machine: where the
/// console goes, time limits, the transport, what KVM to accept.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    /// Where the console goes.
    pub console: Console,
    /// A copy of the console output.
    pub console_log: Option<PathBuf>,
    /// When to stop the VM, counted from ferry's start.
    pub timeout: Option<Duration>,
    /// How long the guest gets to shut down when ferry is asked to stop.
    pub shutdown_grace: Duration,
    /// Where the virtio devices sit: `None` lets the kernel command line
    /// decide ([`Transport::for_cmdline`]).
    pub transport: Option<Transport>,
    /// Whether to run on a PVM /dev/kvm.
    pub allow_pvm: bool,
    /// Whether Landlock restricts ferry's file access once the VM is built.
    pub landlock: bool,
    /// The API's socket, when ferry serves one (drives may be swapped
    /// after boot: [`crate::confinement`]).
    pub api_sock: Option<PathBuf>,
}

impl Launch {
    /// The process options the command line asks for.
    pub fn from_cli(cli: &Cli) -> Result<Self, Error> {
        Ok(Self {
            console: Console::parse(&cli.console)?,
            console_log: cli.console_log.clone(),
            timeout: cli
                .timeout
                .map(|secs| seconds("timeout", secs))
                .transpose()?,
            shutdown_grace: seconds("shutdown-grace", cli.shutdown_grace)?,
            transport: cli.virtio,
            allow_pvm: cli.allow_pvm,
            landlock: !cli.no_landlock,
            api_sock: cli.api_sock.clone(),
        })
    }
}

/// The machine the command line describes (none of its files opened yet).
pub fn resources_from_cli(cli: &Cli) -> Result<VmResources, Error> {
    let size =
        |asked: String, check: Result<(), String>| check.map_err(|why| Error::Size { asked, why });
    size(
        format!("--cpus {}", cli.cpus),
        MachineSpec::check_cpus(cli.cpus),
    )?;
    size(
        format!("--memory {}", cli.memory),
        MachineSpec::check_memory(cli.memory, host_memory_mib()),
    )?;
    let drives = cli
        .disk
        .iter()
        .enumerate()
        .map(|(index, spec)| parse_disk(spec, index))
        .collect::<Result<Vec<_>, _>>()?;
    let net = match &cli.net {
        NetKind::None => None,
        NetKind::Tap(name) => Some(NetSpec {
            id: "eth0".into(),
            mac: parse_mac(&cli.mac)?,
            backend: NetBackendSpec::Tap(name.clone()),
        }),
        NetKind::Passt => {
            let mac = parse_mac(&cli.mac)?;
            let mut args = Vec::new();
            for spec in &cli.publish {
                args.extend(publish_to_passt(spec)?);
            }
            args.extend(cli.passt_args.iter().cloned());
            // Checked here, so that a missing passt is reported before anything starts.
            let binary = ferry_net_passt::launcher::resolve(&cli.passt).ok_or_else(|| {
                Error::PasstMissingCli(ferry_net_passt::launcher::Error::NotFound(
                    cli.passt.display().to_string(),
                ))
            })?;
            Some(NetSpec {
                id: "eth0".into(),
                mac,
                backend: NetBackendSpec::Passt(ferry_net_passt::PasstConfig { binary, args }),
            })
        }
    };
    let vsock = cli.vsock.as_deref().map(parse_vsock).transpose()?;
    Ok(VmResources {
        vsock,
        boot: cli.kernel.as_ref().map(|kernel| BootSource {
            kernel: kernel.clone(),
            initrd: cli.initrd.clone(),
            cmdline: cli.cmdline.clone(),
        }),
        machine: MachineSpec {
            cpus: cli.cpus,
            memory_mib: cli.memory,
        },
        drives,
        net,
    })
}

/// A checked VM configuration.
#[derive(Debug)]
pub struct VmConfig {
    /// The kernel image, open.
    pub kernel: File,
    /// The initramfs, open.
    pub initrd: Option<File>,
    /// The kernel command line.
    pub cmdline: String,
    /// Number of vCPUs.
    pub cpus: u32,
    /// Guest memory in bytes.
    pub mem_size: u64,
    /// Where the console goes.
    pub console: Console,
    /// Whether to run on a PVM /dev/kvm.
    pub allow_pvm: bool,
    /// The guest's network.
    pub net: Net,
    /// The disks, in the order the guest sees them.
    pub disks: Vec<Disk>,
    /// A copy of the console output.
    pub console_log: Option<File>,
    /// When to stop the VM.
    pub timeout: Option<Duration>,
    /// How long the guest gets to shut down when ferry is asked to stop.
    pub shutdown_grace: Duration,
    /// Where the virtio devices sit.
    pub transport: Transport,
    /// The vsock device, if any.
    pub vsock: Option<VsockSpec>,
}

/// `cmdline` with the root device's parameters added before the guest's
/// command (`--`), unless it names a root already.
fn with_root(cmdline: String, root: Option<String>) -> String {
    let Some(root) = root else {
        return cmdline;
    };
    if kernel_words(&cmdline).any(|w| w.starts_with("root=")) {
        return cmdline;
    }
    with_kernel_args(&cmdline, &root)
}

/// Opens `path` as a regular file.
fn open_file(what: &'static str, path: &Path) -> Result<File, Error> {
    let file = File::open(path).map_err(|source| Error::Open {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    let is_file = file.metadata().map(|m| m.is_file()).unwrap_or(false);
    if !is_file {
        return Err(Error::NotAFile {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(file)
}

/// This host's RAM in MiB, from /proc/meminfo (no bound if unreadable).
pub fn host_memory_mib() -> u64 {
    let read = || -> Option<u64> {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024)
    };
    read().unwrap_or(u64::MAX >> 20)
}

impl VmConfig {
    /// How many virtio devices the guest gets: disks, the network card, vsock.
    pub fn virtio_devices(&self) -> usize {
        self.disks.len()
            + usize::from(!matches!(self.net, Net::None))
            + usize::from(self.vsock.is_some())
    }

    /// Checks `resources` and opens and locks the files it names; `launch`
    /// adds the process's options.
    pub fn build(resources: &VmResources, launch: &Launch) -> Result<Self, Error> {
        let boot = resources.boot.as_ref().ok_or(Error::NoBootSource)?;
        let machine = resources.machine;
        let size = |asked: String, check: Result<(), String>| {
            check.map_err(|why| Error::Size { asked, why })
        };
        size(
            format!("{} vCPUs", machine.cpus),
            MachineSpec::check_cpus(machine.cpus),
        )?;
        size(
            format!("{} MiB of memory", machine.memory_mib),
            MachineSpec::check_memory(machine.memory_mib, host_memory_mib()),
        )?;
        let transport = launch
            .transport
            .unwrap_or_else(|| Transport::for_cmdline(&boot.cmdline));
        let devices = resources.drives.len()
            + usize::from(resources.net.is_some())
            + usize::from(resources.vsock.is_some());
        if devices > transport.max_devices() {
            return Err(Error::TooManyDevices {
                devices,
                transport: transport.name(),
                max: transport.max_devices(),
            });
        }
        let net = match &resources.net {
            None => Net::None,
            Some(NetSpec {
                mac,
                backend: NetBackendSpec::Passt(passt),
                ..
            }) => {
                let binary =
                    ferry_net_passt::launcher::resolve(&passt.binary).ok_or_else(|| {
                        Error::PasstMissing(ferry_net_passt::launcher::Error::NotFound(
                            passt.binary.display().to_string(),
                        ))
                    })?;
                Net::Passt {
                    mac: *mac,
                    passt: ferry_net_passt::PasstConfig {
                        binary,
                        args: passt.args.clone(),
                    },
                }
            }
            Some(NetSpec {
                mac,
                backend: NetBackendSpec::Tap(name),
                ..
            }) => Net::Tap {
                mac: *mac,
                tap: ferry_devices::virtio::net::Tap::open(name)?,
            },
        };
        let kernel = open_file("kernel", &boot.kernel)?;
        let initrd = boot
            .initrd
            .as_deref()
            .map(|p| open_file("initrd", p))
            .transpose()?;
        // Disks last among the checks: opening one takes its lock.
        let mut disks = Vec::new();
        for spec in resources.drives_in_guest_order() {
            if !spec.serial.is_empty() && !valid_serial(&spec.serial) {
                return Err(Error::Serial(spec.serial.clone()));
            }
            let image = ferry_devices::virtio::block::DiskImage::open(&spec.path, spec.read_only)?;
            disks.push(Disk {
                id: spec.id.clone(),
                image,
                serial: spec.serial.clone(),
            });
        }
        let console_log = launch
            .console_log
            .as_ref()
            .map(|path| {
                File::create(path).map_err(|source| Error::ConsoleLog {
                    path: path.clone(),
                    source,
                })
            })
            .transpose()?;
        Ok(VmConfig {
            kernel,
            initrd,
            cmdline: with_root(cmdline_for(&boot.cmdline, transport), resources.root_args()),
            cpus: machine.cpus,
            mem_size: machine.memory_mib << 20,
            console: launch.console.clone(),
            allow_pvm: launch.allow_pvm,
            net,
            disks,
            console_log,
            timeout: launch.timeout,
            shutdown_grace: launch.shutdown_grace,
            transport,
            vsock: resources.vsock.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_command_line_fits_the_transport() {
        assert_eq!(
            cmdline_for(DEFAULT_CMDLINE, Transport::Pci),
            DEFAULT_CMDLINE
        );
        assert_eq!(
            cmdline_for(DEFAULT_CMDLINE, Transport::Mmio),
            format!("{DEFAULT_CMDLINE} pci=off")
        );
        // A given command line is the user's: never changed.
        assert_eq!(
            cmdline_for("console=ttyS0", Transport::Mmio),
            "console=ttyS0"
        );
        assert_eq!(
            cmdline_for("pci=off -- echo pci=off", Transport::Pci),
            "pci=off -- echo pci=off"
        );
    }

    #[test]
    fn mac_addresses() {
        assert_eq!(
            parse_mac("02:66:72:72:79:01").unwrap(),
            [2, 0x66, 0x72, 0x72, 0x79, 1]
        );
        assert_eq!(
            parse_mac("52:54:00:AB:cd:EF").unwrap(),
            [0x52, 0x54, 0, 0xab, 0xcd, 0xef]
        );
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "0g:00:00:00:00:00",
            "2:00:00:00:00:001",
            "01:00:5e:00:00:01",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn publish_specs_become_passt_forwards() {
        let p = |s| publish_to_passt(s).unwrap();
        assert_eq!(p("8080:80"), ["-t".to_string(), "8080:80".into()]);
        assert_eq!(p("8080:80/tcp"), ["-t".to_string(), "8080:80".into()]);
        assert_eq!(p("5353:53/udp"), ["-u".to_string(), "5353:53".into()]);
        assert_eq!(
            p("127.0.0.1:2222:22"),
            ["-t".to_string(), "127.0.0.1/2222:22".into()]
        );
        assert_eq!(
            p("[::1]:2222:22/tcp"),
            ["-t".to_string(), "::1/2222:22".into()]
        );
        for bad in [
            "80",
            "0:80",
            "80:70000",
            "a:b",
            "1.2.3:80:80",
            "80:80/sctp",
            "[::1:80:80",
            "[zz]:1:2",
            "1:2:3:4",
        ] {
            assert!(publish_to_passt(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn disk_specs() {
        assert_eq!(
            parse_disk("/img", 0).unwrap(),
            DriveSpec {
                id: "drive0".into(),
                path: "/img".into(),
                read_only: false,
                root: false,
                partuuid: None,
                serial: String::new()
            }
        );
        let d = parse_disk("a.img,ro,id=build-cache", 1).unwrap();
        assert!(d.read_only);
        assert_eq!(d.serial, "build-cache");
        for bad in [
            "",
            ",ro",
            "a.img,rw",
            "a.img,id=",
            "a.img,id=has space",
            "a.img,id=123456789012345678901",
        ] {
            assert!(parse_disk(bad, 0).is_err(), "{bad}");
        }
    }

    #[test]
    fn vsock_specs() {
        assert_eq!(
            parse_vsock("cid=3,uds=/tmp/v.sock").unwrap(),
            VsockSpec {
                cid: 3,
                uds_path: "/tmp/v.sock".into(),
                port_listeners: vec![],
            }
        );
        assert_eq!(
            parse_vsock("cid=3,uds=/tmp/v.sock,listen=1024:/tmp/agent.sock")
                .unwrap()
                .port_listeners,
            vec![(1024, PathBuf::from("/tmp/agent.sock"))]
        );
        for bad in [
            "",
            "cid=3",
            "uds=/x",
            "cid=2,uds=/x",
            "cid=x,uds=/x",
            "cid=3,uds=",
            "cid=3,uds=/x,ro",
            "cid=3,uds=/x,listen=1024",
            "cid=3,uds=/x,listen=x:/a",
            "cid=3,uds=/x,listen=1024:",
        ] {
            assert!(parse_vsock(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(seconds("timeout", 1.5).unwrap().as_millis(), 1500);
        assert!(seconds("timeout", -1.0).is_err());
        assert!(seconds("timeout", f64::NAN).is_err());
    }

    #[test]
    fn console_specs() {
        assert_eq!(Console::parse("stdio").unwrap(), Console::Stdio);
        assert_eq!(Console::parse("none").unwrap(), Console::None);
        assert_eq!(
            Console::parse("file:/tmp/log").unwrap(),
            Console::File("/tmp/log".into())
        );
        assert!(Console::parse("file:").is_err());
        assert!(Console::parse("tty").is_err());
    }

    #[test]
    fn the_root_device_joins_the_kernel_command_line() {
        assert_eq!(with_root("a b".into(), None), "a b");
        assert_eq!(
            with_root("a b".into(), Some("root=/dev/vda rw".into())),
            "a b root=/dev/vda rw"
        );
        assert_eq!(
            with_root("a -- echo x".into(), Some("root=/dev/vda ro".into())),
            "a root=/dev/vda ro -- echo x"
        );
        assert_eq!(
            with_root("root=/dev/vdb rw".into(), Some("root=/dev/vda rw".into())),
            "root=/dev/vdb rw"
        );
    }

    #[test]
    fn pci_off_among_the_kernel_words_picks_virtio_mmio() {
        let kata = "console=ttyS0 pci=off reboot=k panic=1 iommu=off net.ifnames=0 \
                    random.trust_cpu=on acpi=off";
        assert_eq!(Transport::for_cmdline(kata), Transport::Mmio);
        assert_eq!(Transport::for_cmdline(DEFAULT_CMDLINE), Transport::Pci);
        // After `--` the words are the guest command's, not the kernel's.
        assert_eq!(
            Transport::for_cmdline("console=ttyS0 -- echo pci=off"),
            Transport::Pci
        );
        assert_eq!(Transport::for_cmdline("pci=offx"), Transport::Pci);
    }

    #[test]
    fn kernel_args_go_before_the_guest_command() {
        assert_eq!(with_kernel_args("a b", "x=1"), "a b x=1");
        assert_eq!(with_kernel_args("a -- echo b", "x=1"), "a x=1 -- echo b");
        assert_eq!(with_kernel_args("a --", "x=1"), "a x=1 --");
        assert_eq!(with_kernel_args("", "x=1"), "x=1");
        assert_eq!(with_kernel_args("a b", ""), "a b");
    }

    #[test]
    fn a_directory_is_not_a_kernel_file() {
        assert!(matches!(
            open_file("kernel", Path::new("/")),
            Err(Error::NotAFile { .. })
        ));
        assert!(matches!(
            open_file("kernel", Path::new("/nonexistent/vmlinuz")),
            Err(Error::Open { .. })
        ));
    }
}
