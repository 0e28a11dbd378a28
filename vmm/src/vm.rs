// SPDX-License-Identifier: Apache-2.0
//! Building and running the VM, one small step after another:
//! KVM → memory → devices → kernel and boot tables → vCPUs → event loop.

use std::io::stdin;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_boot::acpi::{self, AcpiDevice, AcpiRegisters, PciHostBridge};
use ferry_boot::layout::{
    ACPI_RESET_VALUE, ACPI_SLEEP_PORT, BOOT_MARKER_ADDR, CONTROL_DEVICE_SIZE, EXIT_DEVICE_ADDR,
    IRQ_MAX, KVM_TSS_ADDR, PCI_MMIO_SIZE, PCI_MMIO_START, PVPANIC_ADDR, VIRTIO_IRQ_START,
    VIRTIO_MMIO_SIZE, VIRTIO_MMIO_START,
};
use ferry_boot::{bootparams, kernel, mptable, regs, GuestMemory};
use ferry_devices::bus::{self, Bus};
use ferry_devices::control::{AcpiSleep, BootMarker, ExitStatus, PvPanic};
use ferry_devices::irq::IrqLine;
use ferry_devices::legacy::{i8042, serial, Serial, I8042};
use ferry_devices::pci::{self, msix::MsiSink, PciRoot};
use ferry_devices::virtio::block::{BackingHandle, Block, BlockStats, SwapError};
use ferry_devices::virtio::mmio::{self, MmioTransport};
use ferry_devices::virtio::net::{
    self as virtio_net, Net as VirtioNet, NetBackend, NetConfig, NetStats,
};
use ferry_devices::virtio::pci::{self as virtio_pci, VirtioPci};
use ferry_devices::virtio::vsock::{Vsock as VirtioVsock, VsockError, VsockStats};
use ferry_devices::virtio::{Interrupt, VirtioDevice};
use ferry_devices::vm_end::{ExitReason, VmEnd};
use ferry_net_passt::Passt;
use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, NoDatamatch};
use kvm_ioctls::{Kvm, VmFd};
use std::os::unix::thread::JoinHandleExt;

use crate::config::{Console, Disk, Net, Transport, VmConfig};
use crate::console::{self, ConsoleInput, RawTerminal};
use crate::event_loop::{self, EventLoop, HaltWatch};
use crate::passt_keeper::PasstKeeper;
use crate::{kvm, memory, vcpu};

/// Errors while building or running the VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// KVM is not usable.
    #[error(transparent)]
    Kvm(#[from] kvm::Error),
    /// More vCPUs than KVM allows.
    #[error("--cpus {asked}: KVM on this host allows at most {max} vCPUs")]
    TooManyCpus {
        /// What was asked for.
        asked: u32,
        /// KVM's limit.
        max: usize,
    },
    /// A VM-wide KVM call failed.
    #[error("{0} failed")]
    VmSetup(&'static str, #[source] kvm_ioctls::Error),
    /// Guest memory could not be set up.
    #[error(transparent)]
    Memory(#[from] memory::Error),
    /// The kernel or initramfs could not be loaded.
    #[error("cannot load the {0}")]
    Load(&'static str, #[source] kernel::Error),
    /// The boot parameters could not be written.
    #[error(transparent)]
    BootParams(#[from] bootparams::Error),
    /// The ACPI tables could not be written.
    #[error(transparent)]
    Acpi(#[from] acpi::Error),
    /// The MP table could not be written.
    #[error(transparent)]
    MpTable(#[from] mptable::Error),
    /// The boot page tables could not be written.
    #[error(transparent)]
    BootTables(#[from] regs::Error),
    /// A device could not be placed on its bus.
    #[error(transparent)]
    Bus(#[from] bus::Error),
    /// An eventfd or other descriptor could not be created.
    #[error("cannot create {0}")]
    Resource(&'static str, #[source] std::io::Error),
    /// The console output could not be opened.
    #[error("cannot open the console output")]
    ConsoleOutput(#[source] std::io::Error),
    /// A vCPU could not be set up or started.
    #[error(transparent)]
    Vcpu(#[from] vcpu::Error),
    /// The event loop failed.
    #[error(transparent)]
    EventLoop(#[from] event_loop::Error),
    /// passt could not be started.
    #[error(transparent)]
    Passt(#[from] ferry_net_passt::launcher::Error),
    /// No interrupt line is left for another device.
    #[error("no interrupt line left for device {0}")]
    NoIrq(usize),
    /// No PCI slot is left for another device.
    #[error(transparent)]
    Pci(#[from] pci::Error),
    /// No disk has this id.
    #[error("no drive {0}")]
    NoSuchDrive(String),
    /// The vsock device could not be made (its socket, mostly).
    #[error("cannot set up the vsock device")]
    Vsock(#[source] VsockError),
    /// A disk's backing could not be swapped.
    #[error("cannot swap the drive's backing file")]
    DriveSwap(#[source] SwapError),
}

impl Error {
    /// Whether the user's input (kernel, initrd, sizes) is at fault rather than the host.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Error::TooManyCpus { .. }
                | Error::Load(..)
                | Error::BootParams(
                    bootparams::Error::CmdlineTooLong { .. } | bootparams::Error::CmdlineInvalid
                )
                | Error::Acpi(acpi::Error::TooManyCpus(_))
                | Error::MpTable(mptable::Error::Cpus(_))
                | Error::ConsoleOutput(_)
                | Error::Vsock(_)
                | Error::Passt(
                    ferry_net_passt::launcher::Error::NotFound(_)
                        | ferry_net_passt::launcher::Error::EarlyExit(_)
                )
        )
    }

    /// Whether KVM itself is missing or unusable.
    pub fn is_kvm_unavailable(&self) -> bool {
        matches!(self, Error::Kvm(_))
    }
}

/// How long vCPU threads get to leave KVM_RUN once the VM has ended.
const VCPU_STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// Creates the VM with its in-kernel interrupt controllers and timer.
fn create_vm(kvm: &Kvm, cpus: u32) -> Result<VmFd, Error> {
    let max = kvm.get_max_vcpus();
    if cpus as usize > max {
        return Err(Error::TooManyCpus { asked: cpus, max });
    }
    let vm = kvm
        .create_vm()
        .map_err(|e| Error::VmSetup("KVM_CREATE_VM", e))?;
    vm.set_tss_address(KVM_TSS_ADDR as usize)
        .map_err(|e| Error::VmSetup("KVM_SET_TSS_ADDR", e))?;
    vm.create_irq_chip()
        .map_err(|e| Error::VmSetup("KVM_CREATE_IRQCHIP", e))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit)
        .map_err(|e| Error::VmSetup("KVM_CREATE_PIT2", e))?;
    Ok(vm)
}

/// The devices of a VM, on their buses.
struct Devices {
    io_bus: Bus,
    mmio_bus: Bus,
    serial: Arc<Mutex<Serial>>,
    keyboard: Arc<Mutex<I8042>>,
    acpi: Vec<AcpiDevice>,
    transport: VirtioTransport,
}

/// Where virtio devices go.
enum VirtioTransport {
    /// One virtio-mmio window and interrupt line each.
    Mmio { count: usize },
    /// A function each on PCI bus 0, interrupting with MSI-X.
    Pci {
        root: Arc<Mutex<PciRoot>>,
        msi: Arc<dyn MsiSink>,
    },
}

impl Devices {
    /// Puts a virtio device on its transport, with its interrupts and
    /// queue notifications wired to KVM.
    fn add_virtio(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemory,
        device: Box<dyn VirtioDevice>,
    ) -> Result<(), Error> {
        match &mut self.transport {
            VirtioTransport::Mmio { count } => {
                let index = *count;
                let acpi = add_virtio_mmio(vm, mem, &mut self.mmio_bus, index, device)?;
                self.acpi.push(acpi);
                *count += 1;
            }
            VirtioTransport::Pci { root, msi } => {
                let mut root = root.lock().unwrap_or_else(|p| p.into_inner());
                add_virtio_pci(vm, mem, &mut self.mmio_bus, &mut root, msi, device)?;
            }
        }
        Ok(())
    }

    /// The PCI host bridge for the DSDT, if devices are on PCI.
    fn pci_host_bridge(&self) -> Option<PciHostBridge> {
        matches!(self.transport, VirtioTransport::Pci { .. }).then_some(PciHostBridge {
            config_ports: (pci::CONFIG_PORT, pci::CONFIG_PORT_LEN as u8),
            mmio_window: (PCI_MMIO_START as u32, PCI_MMIO_SIZE as u32),
        })
    }
}

/// Puts a virtio device in the next slot of PCI bus 0, its BAR in the PCI
/// window; its MSI messages go to `msi`.
fn add_virtio_pci(
    vm: &VmFd,
    mem: &GuestMemory,
    mmio_bus: &mut Bus,
    root: &mut PciRoot,
    msi: &Arc<dyn MsiSink>,
    device: Box<dyn VirtioDevice>,
) -> Result<(), Error> {
    let slot = root.next_slot()?;
    let base = PCI_MMIO_START + slot as u64 * virtio_pci::BAR_SIZE;
    let function = VirtioPci::new(device, mem.clone(), base as u32, msi.clone())
        .map_err(|e| Error::Resource("a virtio-pci function", e))?;
    for (queue, kick) in function.queue_kicks().iter().enumerate() {
        let addr = IoEventAddress::Mmio(base + virtio_pci::notify_offset(queue));
        vm.register_ioevent(kick, &addr, NoDatamatch)
            .map_err(|e| Error::VmSetup("KVM_IOEVENTFD (virtio)", e))?;
    }
    let function = Arc::new(Mutex::new(function));
    mmio_bus.insert(base, virtio_pci::BAR_SIZE, function.clone())?;
    root.add(function)?;
    Ok(())
}

/// The register window and interrupt line of virtio-mmio device `index`.
fn virtio_mmio_slot(index: usize) -> Result<(u64, u32), Error> {
    let gsi = u32::try_from(index)
        .ok()
        .and_then(|i| VIRTIO_IRQ_START.checked_add(i))
        .filter(|gsi| *gsi <= IRQ_MAX)
        .ok_or(Error::NoIrq(index))?;
    Ok((VIRTIO_MMIO_START + index as u64 * VIRTIO_MMIO_SIZE, gsi))
}

/// The kernel parameters that describe the first `count` virtio-mmio
/// devices, `virtio_mmio.device=<size>@<base>:<irq>` each: how a guest
/// that does not read the DSDT (`acpi=off`, or no ACPI in the kernel)
/// finds them, as Firecracker passes its devices. The guest kernel needs
/// `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`; others ignore them.
fn virtio_mmio_kernel_args(count: usize) -> Result<String, Error> {
    let args = (0..count)
        .map(|index| {
            let (base, gsi) = virtio_mmio_slot(index)?;
            Ok(format!(
                "virtio_mmio.device={}K@{base:#x}:{gsi}",
                VIRTIO_MMIO_SIZE >> 10
            ))
        })
        .collect::<Result<Vec<_>, Error>>()?;
    Ok(args.join(" "))
}

/// Puts a virtio device on virtio-mmio window `index`; returns its DSDT entry.
fn add_virtio_mmio(
    vm: &VmFd,
    mem: &GuestMemory,
    mmio_bus: &mut Bus,
    index: usize,
    device: Box<dyn VirtioDevice>,
) -> Result<AcpiDevice, Error> {
    let (base, gsi) = virtio_mmio_slot(index)?;
    let line = IrqLine::new(gsi).map_err(|e| Error::Resource("a virtio interrupt", e))?;
    vm.register_irqfd(line.event(), gsi)
        .map_err(|e| Error::VmSetup("KVM_IRQFD (virtio)", e))?;
    let interrupt = Arc::new(Interrupt::new(line));
    let transport = MmioTransport::new(device, mem.clone(), interrupt)
        .map_err(|e| Error::Resource("a virtio transport", e))?;
    for (queue, kick) in transport.queue_kicks().iter().enumerate() {
        let addr = IoEventAddress::Mmio(base + mmio::QUEUE_NOTIFY_OFFSET);
        vm.register_ioevent(kick, &addr, queue as u32)
            .map_err(|e| Error::VmSetup("KVM_IOEVENTFD (virtio)", e))?;
    }
    mmio_bus.insert(base, VIRTIO_MMIO_SIZE, Arc::new(Mutex::new(transport)))?;
    Ok(AcpiDevice {
        hid: "LNRO0005",
        registers: vec![AcpiRegisters::Mmio(base as u32, VIRTIO_MMIO_SIZE as u32)],
        irq: Some(gsi),
    })
}

/// The network card's counters and, on passt, the keeper of its passt.
struct NetLink {
    passt: Option<PasstKeeper>,
    stats: Arc<NetStats>,
}

impl NetLink {
    /// Logs the counters; on passt, stops its keeper, which closes the link
    /// so that passt leaves on its own, then makes sure it has.
    fn stop(self) {
        log::info!("net0: {}", self.stats);
        if let Some(keeper) = self.passt {
            keeper.stop();
        }
    }
}

/// Adds a virtio-net card: wired to a passt it starts (and restarts when
/// it dies, see [`PasstKeeper`]), or on the TAP the configuration attached.
fn add_network(
    vm: &VmFd,
    mem: &GuestMemory,
    devices: &mut Devices,
    net: Net,
) -> Result<Option<NetLink>, Error> {
    let config = |mac| NetConfig {
        mac,
        mtu: virtio_net::DEFAULT_MTU,
    };
    let (card, passt) = match net {
        Net::None => return Ok(None),
        Net::Tap { mac, tap } => {
            log::info!("net0 on TAP {}", tap.name());
            (VirtioNet::new(0, config(mac), NetBackend::Tap(tap)), None)
        }
        Net::Passt {
            mac,
            passt: passt_config,
        } => {
            let (passt, stream) = Passt::start(&passt_config)?;
            log::info!("passt started (pid {})", passt.pid());
            let socket = stream
                .try_clone()
                .map_err(|e| Error::Resource("a handle on the passt socket", e))?;
            let mut card = VirtioNet::new(0, config(mac), NetBackend::passt(stream));
            let relink = card
                .relink()
                .map_err(|e| Error::Resource("the card's relink eventfds", e))?;
            let keeper = PasstKeeper::start(0, passt_config, passt, socket, relink)
                .map_err(|e| Error::Resource("passt's keeper thread", e))?;
            (card, Some(keeper))
        }
    };
    let link = NetLink {
        passt,
        stats: card.stats(),
    };
    devices.add_virtio(vm, mem, Box::new(card))?;
    Ok(Some(link))
}

/// A disk of the running VM: its names, counters and backing.
struct DiskHandle {
    /// The API's name for it.
    id: String,
    /// Its device's name in logs (`blk0`, ...).
    name: String,
    stats: Arc<BlockStats>,
    backing: BackingHandle,
}

/// Adds a virtio-blk device per disk, in order (vda, vdb, ...); returns
/// a handle on each.
fn add_disks(
    vm: &VmFd,
    mem: &GuestMemory,
    devices: &mut Devices,
    disks: Vec<Disk>,
) -> Result<Vec<DiskHandle>, Error> {
    let mut all = Vec::new();
    for (index, disk) in disks.into_iter().enumerate() {
        let name = format!("blk{index}");
        log::info!(
            "{name}: {} ({} sectors{})",
            disk.image.path().display(),
            disk.image.sectors(),
            if disk.image.read_only() {
                ", read-only"
            } else {
                ""
            }
        );
        let block = Block::new(name.clone(), disk.image, &disk.serial);
        all.push(DiskHandle {
            id: disk.id,
            name,
            stats: block.stats(),
            backing: block.backing_handle(),
        });
        devices.add_virtio(vm, mem, Box::new(block))?;
    }
    Ok(all)
}

/// Creates the legacy and control devices and wires their interrupts to
/// KVM; virtio devices will go on `transport`.
fn create_devices(
    vm: &Arc<VmFd>,
    transport: Transport,
    console: &Console,
    console_log: Option<std::fs::File>,
    vm_end: &Arc<VmEnd>,
    start: Instant,
) -> Result<Devices, Error> {
    let mut io_bus = Bus::new();
    let mut mmio_bus = Bus::new();

    let irq =
        IrqLine::new(serial::COM1_IRQ).map_err(|e| Error::Resource("the serial interrupt", e))?;
    vm.register_irqfd(irq.event(), irq.gsi())
        .map_err(|e| Error::VmSetup("KVM_IRQFD (serial)", e))?;
    let output = console::output(console, console_log).map_err(Error::ConsoleOutput)?;
    let serial = Arc::new(Mutex::new(Serial::new(irq, output)));
    io_bus.insert(serial::COM1_PORT.into(), serial::COM1_LEN, serial.clone())?;
    let kbd_irq =
        IrqLine::new(i8042::KBD_IRQ).map_err(|e| Error::Resource("the keyboard interrupt", e))?;
    vm.register_irqfd(kbd_irq.event(), kbd_irq.gsi())
        .map_err(|e| Error::VmSetup("KVM_IRQFD (keyboard)", e))?;
    let keyboard = Arc::new(Mutex::new(I8042::new(vm_end.clone(), kbd_irq)));
    io_bus.insert(i8042::I8042_PORT.into(), i8042::I8042_LEN, keyboard.clone())?;
    io_bus.insert(
        ACPI_SLEEP_PORT.into(),
        1,
        Arc::new(Mutex::new(AcpiSleep::new(vm_end.clone(), ACPI_RESET_VALUE))),
    )?;

    mmio_bus.insert(
        EXIT_DEVICE_ADDR,
        CONTROL_DEVICE_SIZE,
        Arc::new(Mutex::new(ExitStatus::new(vm_end.clone()))),
    )?;
    mmio_bus.insert(
        BOOT_MARKER_ADDR,
        CONTROL_DEVICE_SIZE,
        Arc::new(Mutex::new(BootMarker::new(start))),
    )?;
    mmio_bus.insert(
        PVPANIC_ADDR,
        CONTROL_DEVICE_SIZE,
        Arc::new(Mutex::new(PvPanic::new(vm_end.clone()))),
    )?;
    let acpi = vec![
        // Hardware-reduced ACPI has no legacy PIC, so the guest maps COM1's
        // interrupt only if the DSDT describes the port.
        AcpiDevice {
            hid: "PNP0501",
            registers: vec![AcpiRegisters::Io(serial::COM1_PORT, serial::COM1_LEN as u8)],
            irq: Some(serial::COM1_IRQ),
        },
        // The keyboard controller: data and command ports, and IRQ 1.
        AcpiDevice {
            hid: "PNP0303",
            registers: vec![
                AcpiRegisters::Io(i8042::I8042_PORT, 1),
                AcpiRegisters::Io(i8042::I8042_PORT + 4, 1),
            ],
            irq: Some(i8042::KBD_IRQ),
        },
        AcpiDevice {
            hid: "QEMU0001",
            registers: vec![AcpiRegisters::Mmio(PVPANIC_ADDR as u32, 2)],
            irq: None,
        },
    ];
    let transport = match transport {
        Transport::Mmio => VirtioTransport::Mmio { count: 0 },
        Transport::Pci => {
            let root = Arc::new(Mutex::new(PciRoot::new()));
            io_bus.insert(pci::CONFIG_PORT.into(), pci::CONFIG_PORT_LEN, root.clone())?;
            VirtioTransport::Pci {
                root,
                msi: Arc::new(kvm::KvmMsi::new(vm.clone())),
            }
        }
    };
    Ok(Devices {
        io_bus,
        mmio_bus,
        serial,
        keyboard,
        acpi,
        transport,
    })
}

/// Loads the kernel and initramfs and writes the zero page; returns the entry point.
fn load_guest(mem: &GuestMemory, config: &mut VmConfig) -> Result<vm_memory::GuestAddress, Error> {
    let kernel =
        kernel::load_kernel(mem, &mut config.kernel).map_err(|e| Error::Load("kernel", e))?;
    let initrd = match config.initrd.as_mut() {
        Some(file) => Some(
            kernel::load_initrd(mem, config.mem_size, &kernel, file)
                .map_err(|e| Error::Load("initrd", e))?,
        ),
        None => None,
    };
    bootparams::write_boot_params(
        mem,
        config.mem_size,
        &kernel,
        initrd.as_ref(),
        &config.cmdline,
    )?;
    Ok(kernel.entry)
}

/// A VM, built and ready to start: guest memory with the kernel in it,
/// KVM's VM and vCPUs, the devices on their buses, passt running.
/// [`Vm::start`] runs the vCPUs; [`Vm::stop`] tears everything down in
/// order, whatever state the vCPUs are in.
pub struct Vm {
    vm_end: Arc<VmEnd>,
    vcpus: Vec<vcpu::Vcpu>,
    vcpu_stats: Vec<Arc<vcpu::VcpuStats>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    io_bus: Arc<Bus>,
    mmio_bus: Arc<Bus>,
    transport: VirtioTransport,
    keyboard: Arc<Mutex<I8042>>,
    net: Option<NetLink>,
    disks: Vec<DiskHandle>,
    vsock: Option<Arc<VsockStats>>,
    _raw_terminal: Option<RawTerminal>,
    /// KVM's VM: closing it would drop every irqfd and ioeventfd, so it
    /// lives as long as the VM runs.
    vm_fd: Arc<VmFd>,
    _kvm: Kvm,
    /// Dropped last: every vCPU and device thread is gone by then.
    mem: GuestMemory,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("vcpus", &(self.vcpus.len() + self.threads.len()))
            .field("disks", &self.disks.len())
            .field("net", &self.net.is_some())
            .finish()
    }
}

impl Vm {
    /// Builds the VM `config` describes, its end reported on `vm_end`;
    /// its console input and stop handling join `event_loop`. `start` is
    /// ferry's start, for the boot-time marker.
    pub fn build(
        mut config: VmConfig,
        start: Instant,
        vm_end: Arc<VmEnd>,
        event_loop: &mut EventLoop,
    ) -> Result<Self, Error> {
        // virtio-mmio devices are also named on the kernel command line;
        // they are added below in the order of their windows.
        if config.transport == Transport::Mmio {
            let args = virtio_mmio_kernel_args(config.virtio_devices())?;
            config.cmdline = crate::config::with_kernel_args(&config.cmdline, &args);
        }
        // The guest first, so that a bad kernel or initrd is reported whatever the host's KVM.
        let mem = memory::map(config.mem_size)?;
        let entry = load_guest(&mem, &mut config)?;

        let kvm = kvm::open(config.allow_pvm)?;
        let vm = Arc::new(create_vm(&kvm, config.cpus)?);
        memory::register(&vm, &mem)?;
        let mut devices = create_devices(
            &vm,
            config.transport,
            &config.console,
            config.console_log.take(),
            &vm_end,
            start,
        )?;
        event_loop.set_keyboard(devices.keyboard.clone());
        let disks = add_disks(&vm, &mem, &mut devices, std::mem::take(&mut config.disks))?;
        let net = add_network(
            &vm,
            &mem,
            &mut devices,
            std::mem::replace(&mut config.net, Net::None),
        )?;
        let vsock = match &config.vsock {
            Some(spec) => {
                let mut device =
                    VirtioVsock::new("vsock0".into(), u64::from(spec.cid), &spec.uds_path)
                        .map_err(Error::Vsock)?;
                for (port, path) in &spec.port_listeners {
                    device
                        .add_port_listener(path, *port)
                        .map_err(Error::Vsock)?;
                    log::info!("vsock0: {} joined to guest port {port}", path.display());
                }
                log::info!(
                    "vsock0: guest cid {}, host side {}",
                    spec.cid,
                    spec.uds_path.display()
                );
                let stats = device.stats();
                devices.add_virtio(&vm, &mem, Box::new(device))?;
                Some(stats)
            }
            None => None,
        };
        acpi::write_acpi_tables(
            &mem,
            config.cpus,
            &devices.acpi,
            devices.pci_host_bridge().as_ref(),
        )?;
        // The MP table on every boot, next to the ACPI tables: a guest
        // booted with acpi=off (as Kata boots Firecracker guests) finds its
        // CPUs and IOAPIC there; one reading ACPI ignores it.
        mptable::write_mptable(&mem, config.cpus)?;
        regs::write_boot_tables(&mem)?;

        let raw_terminal = if config.console == Console::Stdio {
            let input = ConsoleInput::new(devices.serial.clone())
                .map_err(|e| Error::Resource("the console timer", e))?;
            event_loop.add(Arc::new(Mutex::new(input)));
            RawTerminal::enter(stdin().as_raw_fd())
        } else {
            None
        };

        vcpu::install_kick_handler()?;
        let io_bus = Arc::new(devices.io_bus);
        let mmio_bus = Arc::new(devices.mmio_bus);
        let halt = Arc::new(vcpu::HaltProbe::new(config.cpus));
        let mut vcpus: Vec<vcpu::Vcpu> = Vec::new();
        for id in 0..config.cpus {
            vcpus.push(vcpu::Vcpu::new(
                &kvm,
                &vm,
                id,
                config.cpus,
                entry,
                io_bus.clone(),
                mmio_bus.clone(),
                vm_end.clone(),
                halt.clone(),
            )?);
        }
        log::debug!(
            "guest set up {} ms after launch",
            start.elapsed().as_millis()
        );
        let vcpu_stats = vcpus.iter().map(vcpu::Vcpu::stats).collect();
        Ok(Self {
            vm_end,
            vcpu_stats,
            vcpus,
            threads: Vec::new(),
            io_bus,
            mmio_bus,
            transport: devices.transport,
            keyboard: devices.keyboard,
            net,
            disks,
            vsock,
            _raw_terminal: raw_terminal,
            vm_fd: vm,
            _kvm: kvm,
            mem,
        })
    }

    /// Starts the vCPUs; a halted guest is then noticed through `event_loop`.
    pub fn start(&mut self, event_loop: &mut EventLoop) {
        for vcpu in self.vcpus.drain(..) {
            match vcpu.start() {
                Ok(thread) => self.threads.push(thread),
                Err(e) => {
                    self.vm_end.request(ExitReason::Failure(e.to_string()));
                    break;
                }
            }
        }
        let thread_ids = self.threads.iter().map(|t| t.as_pthread_t()).collect();
        match HaltWatch::new(thread_ids) {
            Ok(watch) => event_loop.add(Arc::new(Mutex::new(watch))),
            Err(e) => log::warn!("cannot watch for a halted guest: {e}"),
        }
    }

    /// Presses Ctrl-Alt-Del on the guest's keyboard if a driver listens
    /// (keys pressed before would only fill its buffer); false if none does.
    pub fn send_ctrl_alt_del(&self) -> bool {
        let mut keyboard = self.keyboard.lock().unwrap_or_else(|p| p.into_inner());
        keyboard.keyboard_listening() && keyboard.press_ctrl_alt_del()
    }

    /// The devices' counters, Firecracker's names where the meaning is
    /// the same: `net` for the card, `block` for all disks together and
    /// `block_<drive id>` for each.
    pub fn metrics(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut map = serde_json::Map::new();
        let sum = |counter: fn(&vcpu::VcpuStats) -> &std::sync::atomic::AtomicU64| -> u64 {
            self.vcpu_stats
                .iter()
                .map(|s| counter(s).load(Relaxed))
                .sum()
        };
        map.insert(
            "vcpu".into(),
            serde_json::json!({
                "exit_io_in": sum(|s| &s.exit_io_in),
                "exit_io_out": sum(|s| &s.exit_io_out),
                "exit_mmio_read": sum(|s| &s.exit_mmio_read),
                "exit_mmio_write": sum(|s| &s.exit_mmio_write),
                "exit_other": sum(|s| &s.exit_other),
            }),
        );
        if let Some(link) = &self.net {
            let s = &link.stats;
            map.insert(
                "net".into(),
                serde_json::json!({
                    "rx_bytes_count": s.rx_bytes.load(Relaxed),
                    "rx_packets_count": s.rx_frames.load(Relaxed),
                    "rx_fails": s.rx_errors.load(Relaxed),
                    "rx_dropped": s.rx_dropped.load(Relaxed),
                    "tx_bytes_count": s.tx_bytes.load(Relaxed),
                    "tx_packets_count": s.tx_frames.load(Relaxed),
                    "tx_fails": s.tx_errors.load(Relaxed),
                    "tx_malformed_frames": s.tx_dropped.load(Relaxed),
                    "passt_restarts": s.relinks.load(Relaxed),
                }),
            );
        }
        let (mut requests, mut invalid) = (0, 0);
        for disk in &self.disks {
            let (r, i) = (
                disk.stats.requests.load(Relaxed),
                disk.stats.bad_chains.load(Relaxed),
            );
            requests += r;
            invalid += i;
            map.insert(
                format!("block_{}", disk.id),
                serde_json::json!({ "requests_count": r, "invalid_reqs_count": i }),
            );
        }
        if !self.disks.is_empty() {
            map.insert(
                "block".into(),
                serde_json::json!({ "requests_count": requests, "invalid_reqs_count": invalid }),
            );
        }
        map
    }

    /// Serves the disk `id` from the file at `path` from now on (opened
    /// again, or re-measured if it is the file the disk has open), in the
    /// disk's mode: the guest is told its new size through a
    /// configuration change.
    pub fn swap_drive(&self, id: &str, path: &std::path::Path) -> Result<(), Error> {
        let disk = self
            .disks
            .iter()
            .find(|d| d.id == id)
            .ok_or_else(|| Error::NoSuchDrive(id.to_string()))?;
        disk.backing.swap_path(path).map_err(Error::DriveSwap)
    }

    /// Stops the VM: the vCPUs, then the devices (their threads joined),
    /// then passt; guest memory goes last. Logs the devices' counters.
    pub fn stop(self) {
        if self.vm_end.reason().is_none() {
            self.vm_end
                .request(ExitReason::Failure("the VM was stopped".into()));
        }
        vcpu::stop_all(self.threads, VCPU_STOP_TIMEOUT);
        // Unstarted vCPUs hold bus references too.
        drop(self.vcpus);
        // The buses and the PCI root hold the last references to the devices:
        // dropping them stops the device threads (a card's data path before
        // passt is stopped, so that it does not see its link go) and closes
        // passt's socket, so passt leaves on its own.
        drop(self.io_bus);
        drop(self.mmio_bus);
        drop(self.transport);
        if let Some(net) = self.net {
            net.stop();
        }
        for disk in self.disks {
            log::info!(
                "{}: {} requests ({} malformed chains)",
                disk.name,
                disk.stats.requests.load(Relaxed),
                disk.stats.bad_chains.load(Relaxed)
            );
        }
        if let Some(stats) = self.vsock {
            log::info!("vsock0: {stats}");
        }
        drop(self.keyboard);
        drop(self._raw_terminal);
        drop(self.vm_fd);
        drop(self._kvm);
        // Guest memory outlives every vCPU: it is dropped only here.
        drop(self.mem);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtio_mmio_devices_are_named_on_the_kernel_command_line() {
        assert_eq!(virtio_mmio_kernel_args(0).unwrap(), "");
        assert_eq!(
            virtio_mmio_kernel_args(3).unwrap(),
            "virtio_mmio.device=4K@0xd0010000:5 virtio_mmio.device=4K@0xd0011000:6 \
             virtio_mmio.device=4K@0xd0012000:7"
        );
        let max = (IRQ_MAX - VIRTIO_IRQ_START + 1) as usize;
        assert!(virtio_mmio_kernel_args(max).is_ok());
        assert!(matches!(
            virtio_mmio_kernel_args(max + 1),
            Err(Error::NoIrq(i)) if i == max
        ));
    }
}
