// SPDX-License-Identifier: Apache-2.0
//! vCPUs: their initial state, their run loop on a thread of their own,
//! and the handling of each exit to ferry.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ferry_boot::{cpuid, regs};
use ferry_confine::seccomp::ThreadKind;
use ferry_devices::bus::Bus;
use ferry_devices::vm_end::{ExitReason, VmEnd};
use kvm_bindings::{
    kvm_msr_entry, Msrs, KVM_MAX_CPUID_ENTRIES, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::GuestAddress;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use ferry_devices::THREAD_STACK;

/// Errors while creating or configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A KVM call on the vCPU failed.
    #[error("vCPU {id}: {what} failed")]
    Kvm {
        /// Which vCPU.
        id: u32,
        /// Which call.
        what: &'static str,
        /// Why.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
    /// The vCPU thread could not be started.
    #[error("cannot start the vCPU thread")]
    Spawn(#[source] std::io::Error),
}

/// Signal that kicks a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

/// Installs the (empty) handler of the kick signal; call before starting vCPUs.
pub fn install_kick_handler() -> Result<(), Error> {
    extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
    register_signal_handler(kick_signal(), on_kick).map_err(Error::Signal)
}

/// How often the vCPUs are checked for a guest that halted for good.
pub const HALT_PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Tells a guest that halted (`halt`, not `poweroff`) from an idle one:
/// Linux halts by stopping every CPU in HLT with interrupts off, which
/// KVM's in-kernel APIC keeps to itself. Each vCPU, when kicked out of
/// KVM_RUN, reports whether it sits in HLT with interrupts off; when all
/// do, the guest has halted and the VM ends.
#[derive(Debug)]
pub struct HaltProbe {
    halted: Vec<AtomicBool>,
}

impl HaltProbe {
    /// A probe for `count` vCPUs.
    pub fn new(count: u32) -> Self {
        Self {
            halted: (0..count).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// Records vCPU `id`'s state; true once every vCPU has halted for good.
    fn report(&self, id: u32, halted: bool) -> bool {
        if let Some(flag) = self.halted.get(id as usize) {
            flag.store(halted, Ordering::SeqCst);
        }
        halted && self.halted.iter().all(|f| f.load(Ordering::SeqCst))
    }
}

/// Kicks each vCPU thread out of KVM_RUN, so that it reports to the halt probe.
pub fn kick(threads: &[libc::pthread_t]) {
    for &thread in threads {
        // SAFETY: the threads are not joined before the event loop ends,
        // so their ids stay valid; the kick signal's handler does nothing.
        unsafe { libc::pthread_kill(thread, kick_signal()) };
    }
}

/// The interrupt flag in RFLAGS.
const RFLAGS_IF: u64 = 1 << 9;

/// A vCPU's exits to ferry, by kind (Firecracker's names).
#[derive(Debug, Default)]
pub struct VcpuStats {
    /// Port reads.
    pub exit_io_in: AtomicU64,
    /// Port writes.
    pub exit_io_out: AtomicU64,
    /// MMIO reads.
    pub exit_mmio_read: AtomicU64,
    /// MMIO writes.
    pub exit_mmio_write: AtomicU64,
    /// Every other exit (halt, shutdown, system events, failures).
    pub exit_other: AtomicU64,
}

impl VcpuStats {
    /// Counts `exit`.
    fn count(&self, exit: &VcpuExit<'_>) {
        let counter = match exit {
            VcpuExit::IoIn(..) => &self.exit_io_in,
            VcpuExit::IoOut(..) => &self.exit_io_out,
            VcpuExit::MmioRead(..) => &self.exit_mmio_read,
            VcpuExit::MmioWrite(..) => &self.exit_mmio_write,
            _ => &self.exit_other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A vCPU ready to run.
pub struct Vcpu {
    id: u32,
    fd: VcpuFd,
    io_bus: Arc<Bus>,
    mmio_bus: Arc<Bus>,
    vm_end: Arc<VmEnd>,
    halt: Arc<HaltProbe>,
    stats: Arc<VcpuStats>,
}

/// Local APIC LVT registers and delivery modes (Intel SDM vol. 3, 10.5.1).
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Sets the delivery mode of the LVT register at `offset` in `regs`.
fn set_lvt_mode(regs: &mut [libc::c_char], offset: usize, mode: u32) {
    let mut bytes = [0u8; 4];
    for (b, r) in bytes.iter_mut().zip(&regs[offset..offset + 4]) {
        *b = *r as u8;
    }
    let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
    for (r, b) in regs[offset..offset + 4].iter_mut().zip(value.to_le_bytes()) {
        *r = b as libc::c_char;
    }
}

impl Vcpu {
    /// Creates vCPU `id` of `count` and gives it its boot state; the boot
    /// CPU (id 0) starts at `entry` in long mode, the others wait for INIT/SIPI.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kvm: &Kvm,
        vm: &VmFd,
        id: u32,
        count: u32,
        entry: GuestAddress,
        io_bus: Arc<Bus>,
        mmio_bus: Arc<Bus>,
        vm_end: Arc<VmEnd>,
        halt: Arc<HaltProbe>,
    ) -> Result<Self, Error> {
        let err = |what| move |source| Error::Kvm { id, what, source };
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(err("KVM_CREATE_VCPU"))?;

        let mut cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(err("KVM_GET_SUPPORTED_CPUID"))?;
        cpuid::fix_cpuid(&mut cpuid, id, count);
        fd.set_cpuid2(&cpuid).map_err(err("KVM_SET_CPUID2"))?;

        let entries: Vec<kvm_msr_entry> = regs::boot_msrs()
            .into_iter()
            .map(|(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let msrs = Msrs::from_entries(&entries).map_err(|_| Error::Kvm {
            id,
            what: "building the MSR list",
            source: kvm_ioctls::Error::new(libc::EINVAL),
        })?;
        let set = fd.set_msrs(&msrs).map_err(err("KVM_SET_MSRS"))?;
        if set != entries.len() {
            log::debug!("vCPU {id}: KVM took {set} of {} boot MSRs", entries.len());
        }

        fd.set_fpu(&regs::boot_fpu()).map_err(err("KVM_SET_FPU"))?;
        let mut lapic = fd.get_lapic().map_err(err("KVM_GET_LAPIC"))?;
        set_lvt_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
        set_lvt_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
        fd.set_lapic(&lapic).map_err(err("KVM_SET_LAPIC"))?;

        if id == 0 {
            let sregs = fd.get_sregs().map_err(err("KVM_GET_SREGS"))?;
            fd.set_sregs(&regs::boot_sregs(sregs))
                .map_err(err("KVM_SET_SREGS"))?;
            fd.set_regs(&regs::boot_regs(entry))
                .map_err(err("KVM_SET_REGS"))?;
        }
        Ok(Self {
            id,
            fd,
            io_bus,
            mmio_bus,
            vm_end,
            halt,
            stats: Arc::default(),
        })
    }

    /// Its exit counters.
    pub fn stats(&self) -> Arc<VcpuStats> {
        self.stats.clone()
    }

    /// Starts the vCPU on a thread named `vcpuN`.
    pub fn start(self) -> Result<JoinHandle<()>, Error> {
        std::thread::Builder::new()
            .name(format!("vcpu{}", self.id))
            .stack_size(THREAD_STACK)
            .spawn(move || self.run())
            .map_err(Error::Spawn)
    }

    /// Runs the guest until the VM ends.
    fn run(mut self) {
        if let Err(e) = ferry_confine::seccomp::enter(ThreadKind::Vcpu) {
            self.vm_end
                .request(ExitReason::Failure(format!("vCPU {}: {e}", self.id)));
            return;
        }
        while !self.vm_end.has_ended() {
            let outcome = match self.fd.run() {
                Ok(exit) => {
                    self.stats.count(&exit);
                    handle_exit(exit, &self.io_bus, &self.mmio_bus)
                }
                Err(e) if e.errno() == libc::EINTR => {
                    if self.halt.report(self.id, self.halted_for_good()) {
                        self.vm_end.request(ExitReason::Halt);
                    }
                    continue;
                }
                Err(e) if e.errno() == libc::EAGAIN => continue,
                Err(e) => Err(ExitReason::Failure(format!(
                    "vCPU {}: KVM_RUN failed: {e}",
                    self.id
                ))),
            };
            if let Err(reason) = outcome {
                let reason = match reason {
                    ExitReason::Failure(msg) if msg == INTERNAL_ERROR => {
                        ExitReason::Failure(self.describe_internal_error())
                    }
                    other => other,
                };
                self.vm_end.request(reason);
            }
        }
    }

    /// Whether this vCPU sits in HLT with interrupts off (only NMI or INIT wakes it).
    fn halted_for_good(&self) -> bool {
        let halted = self
            .fd
            .get_mp_state()
            .is_ok_and(|s| s.mp_state == kvm_bindings::KVM_MP_STATE_HALTED);
        halted
            && self
                .fd
                .get_regs()
                .is_ok_and(|regs| regs.rflags & RFLAGS_IF == 0)
    }

    /// Details of a KVM internal error, from the shared run structure.
    fn describe_internal_error(&mut self) -> String {
        let run = self.fd.get_kvm_run();
        // SAFETY: the exit reason was KVM_EXIT_INTERNAL_ERROR, so `internal`
        // is the union member KVM filled in.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let kind = if internal.suberror == kvm_bindings::KVM_INTERNAL_ERROR_EMULATION {
            "emulation failure"
        } else {
            "internal error"
        };
        format!(
            "vCPU {}: KVM internal error {} ({kind}); a guest kernel KVM cannot run?",
            self.id, internal.suberror
        )
    }
}

/// Marker for an internal error whose details the vCPU adds.
const INTERNAL_ERROR: &str = "KVM internal error";

/// Handles one exit from KVM_RUN: routes port and MMIO accesses to their
/// bus; `Err` carries why the VM must end.
fn handle_exit(exit: VcpuExit<'_>, io_bus: &Bus, mmio_bus: &Bus) -> Result<(), ExitReason> {
    match exit {
        VcpuExit::IoIn(port, data) => {
            io_bus.read(u64::from(port), data);
        }
        VcpuExit::IoOut(port, data) => {
            io_bus.write(u64::from(port), data);
        }
        VcpuExit::MmioRead(addr, data) => {
            if !mmio_bus.read(addr, data) {
                log::debug!("guest read unmapped MMIO 0x{addr:x}");
            }
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !mmio_bus.write(addr, data) {
                log::debug!("guest wrote unmapped MMIO 0x{addr:x}");
            }
        }
        // With the in-kernel LAPIC, HLT stays in KVM; nothing to do if it does not.
        VcpuExit::Hlt => {}
        // A triple fault: the CPU resets. Said apart from a requested
        // reboot, since it usually means a crashed guest.
        VcpuExit::Shutdown => {
            log::warn!("the guest's CPU triple-faulted (KVM_EXIT_SHUTDOWN)");
            return Err(ExitReason::Reset);
        }
        VcpuExit::SystemEvent(kind, _) => {
            return Err(match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
                KVM_SYSTEM_EVENT_RESET => ExitReason::Reset,
                KVM_SYSTEM_EVENT_CRASH => ExitReason::Panic,
                other => ExitReason::Failure(format!("unknown KVM system event {other}")),
            })
        }
        VcpuExit::FailEntry(reason, cpu) => {
            return Err(ExitReason::Failure(format!(
                "KVM could not enter the guest on CPU {cpu} (hardware reason 0x{reason:x})"
            )))
        }
        VcpuExit::InternalError => return Err(ExitReason::Failure(INTERNAL_ERROR.into())),
        other => {
            return Err(ExitReason::Failure(format!(
                "unexpected KVM exit: {other:?}"
            )))
        }
    }
    Ok(())
}

/// Stops the vCPU threads: the VM has ended, so each leaves its loop once
/// kicked out of KVM_RUN. Gives up on a thread after `timeout`.
pub fn stop_all(threads: Vec<JoinHandle<()>>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    for thread in threads {
        while !thread.is_finished() && Instant::now() < deadline {
            // A thread between its end check and KVM_RUN misses one kick; the next one lands.
            let _ = thread.kill(kick_signal());
            std::thread::sleep(Duration::from_millis(1));
        }
        if thread.is_finished() {
            let _ = thread.join();
        } else {
            log::warn!("a vCPU thread did not stop in time");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_devices::bus::BusDevice;
    use std::sync::Mutex;

    struct Fixed(u8);
    impl BusDevice for Fixed {
        fn read(&mut self, _: u64, data: &mut [u8]) {
            data.fill(self.0);
        }
        fn write(&mut self, _: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    #[test]
    fn the_guest_halted_only_when_every_vcpu_did() {
        let probe = HaltProbe::new(2);
        assert!(!probe.report(0, true));
        assert!(!probe.report(1, false), "vCPU 1 still runs");
        assert!(probe.report(1, true));
        assert!(!probe.report(0, false));
    }

    #[test]
    fn port_and_mmio_exits_reach_their_bus() {
        let mut io = Bus::new();
        io.insert(0x3f8, 8, Arc::new(Mutex::new(Fixed(0x42))))
            .unwrap();
        let mut mmio = Bus::new();
        mmio.insert(0xd000_0000, 0x1000, Arc::new(Mutex::new(Fixed(7))))
            .unwrap();
        let mut byte = [0u8];
        handle_exit(VcpuExit::IoIn(0x3f8, &mut byte), &io, &mmio).unwrap();
        assert_eq!(byte, [0x42]);
        handle_exit(VcpuExit::MmioWrite(0xd000_0000, &[9]), &io, &mmio).unwrap();
        handle_exit(VcpuExit::MmioRead(0xd000_0000, &mut byte), &io, &mmio).unwrap();
        assert_eq!(byte, [9]);
        // Unmapped accesses are contained.
        handle_exit(VcpuExit::IoOut(0x80, &[1]), &io, &mmio).unwrap();
    }

    #[test]
    fn ending_exits_give_their_reason() {
        let (io, mmio) = (Bus::new(), Bus::new());
        assert_eq!(
            handle_exit(VcpuExit::Shutdown, &io, &mmio),
            Err(ExitReason::Reset)
        );
        assert_eq!(
            handle_exit(
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, &[]),
                &io,
                &mmio
            ),
            Err(ExitReason::PowerOff)
        );
        assert!(matches!(
            handle_exit(VcpuExit::FailEntry(3, 0), &io, &mmio),
            Err(ExitReason::Failure(_))
        ));
    }

    #[test]
    fn lvt_mode_is_set_in_place() {
        let mut regs = [0 as libc::c_char; 1024];
        // Vector 0x30, masked (bit 16), delivery mode fixed.
        regs[APIC_LVT0] = 0x30;
        regs[APIC_LVT0 + 2] = 0x01;
        set_lvt_mode(&mut regs, APIC_LVT0, APIC_MODE_EXTINT);
        let bytes: Vec<u8> = regs[APIC_LVT0..APIC_LVT0 + 4]
            .iter()
            .map(|b| *b as u8)
            .collect();
        assert_eq!(bytes, vec![0x30, 0x07, 0x01, 0x00]);
    }
}
