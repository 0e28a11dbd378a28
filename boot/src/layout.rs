// SPDX-License-Identifier: Apache-2.0
//! The guest physical address map.
//!
//! ```text
//! 0x0000_0500  GDT, then IDT              0x0009_fc00  EBDA (reserved): MP table
//! 0x0000_7000  zero page (boot_params)    0x000e_0000  ACPI tables (RSDP first)
//! 0x0000_8ff0  boot stack (grows down)    0x0010_0000  kernel, then RAM
//! 0x0000_9000  page tables (PML4,PDPT,PD) 0xd000_0000  MMIO gap: ferry's devices
//! 0x0002_0000  kernel command line        0xe000_0000  PCI BARs
//!                                         0xfec0_0000  IOAPIC, 0xfee0_0000 LAPIC
//!                                         0x1_0000_0000 RAM above the gap
//! ```

/// Where the GDT lives.
pub const GDT_START: u64 = 0x500;
/// Where the (empty) IDT lives.
pub const IDT_START: u64 = 0x520;
/// Where the zero page (`struct boot_params`) lives.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot CPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Level-4 page map of the boot page tables.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table of the boot page tables.
pub const PDPT_START: u64 = 0xa000;
/// Page directory of the boot page tables (2 MiB pages).
pub const PD_START: u64 = 0xb000;
/// Where the kernel command line is written.
pub const CMDLINE_START: u64 = 0x2_0000;
/// Largest command line, terminating NUL included (x86 `COMMAND_LINE_SIZE`).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area: low RAM ends here.
pub const EBDA_START: u64 = 0x9_fc00;
/// Where the MP table is written, its floating pointer first: the last KiB
/// of base memory, where Linux looks for it (inside the reserved EBDA).
pub const MPTABLE_START: u64 = EBDA_START;
/// Where the ACPI tables are written, RSDP first.
pub const ACPI_START: u64 = 0xe_0000;
/// End (exclusive) of the window the ACPI tables must fit in.
pub const ACPI_END: u64 = 0x10_0000;
/// Start of high memory: the kernel is loaded here or above.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the hole below 4 GiB where devices live; RAM stops here.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// End of the MMIO hole; RAM resumes here.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Physical address of the IOAPIC.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Physical address of the local APICs.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// KVM's TSS needs three pages below 4 GiB, outside RAM.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;

/// ferry's exit-status register: a byte written here ends the VM with that status.
pub const EXIT_DEVICE_ADDR: u64 = MMIO_GAP_START;
/// ferry's boot-time marker: a write here marks the start of guest userspace.
pub const BOOT_MARKER_ADDR: u64 = MMIO_GAP_START + 0x1000;
/// The pvpanic register: the guest kernel writes here when it panics.
pub const PVPANIC_ADDR: u64 = MMIO_GAP_START + 0x2000;
/// Size of each of ferry's single-register devices above.
pub const CONTROL_DEVICE_SIZE: u64 = 0x1000;
/// First virtio-mmio device window; the next ones follow every [`VIRTIO_MMIO_SIZE`].
pub const VIRTIO_MMIO_START: u64 = MMIO_GAP_START + 0x1_0000;
/// Size of one virtio-mmio window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// Start of the memory window for PCI BARs.
pub const PCI_MMIO_START: u64 = 0xe000_0000;
/// Size of the PCI BAR window.
pub const PCI_MMIO_SIZE: u64 = 0x1000_0000;
/// First interrupt line for virtio-mmio devices (0-4 are the legacy devices').
pub const VIRTIO_IRQ_START: u32 = 5;
/// Last interrupt line the IOAPIC has.
pub const IRQ_MAX: u32 = 23;

/// I/O port of the ACPI sleep control and status registers and the reset register.
pub const ACPI_SLEEP_PORT: u16 = 0x3c0;
/// Value written to [`ACPI_SLEEP_PORT`] (the FADT reset register) to reset.
pub const ACPI_RESET_VALUE: u8 = 1;

/// The guest RAM regions, as (start, size), for `mem_size` bytes of RAM:
/// one region below the MMIO gap and, for larger guests, one above 4 GiB.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_size - MMIO_GAP_START),
        ]
    }
}

/// End (exclusive) of RAM below the MMIO gap.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_has_one_region() {
        assert_eq!(ram_regions(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(low_ram_end(256 << 20), 256 << 20);
    }

    #[test]
    fn large_guest_is_split_around_the_gap() {
        let regions = ram_regions(4 << 30);
        assert_eq!(
            regions,
            vec![
                (0, MMIO_GAP_START),
                (MMIO_GAP_END, (4 << 30) - MMIO_GAP_START)
            ]
        );
        let total: u64 = regions.iter().map(|r| r.1).sum();
        assert_eq!(total, 4 << 30);
        assert_eq!(low_ram_end(4 << 30), MMIO_GAP_START);
    }

    #[test]
    fn devices_sit_in_the_gap() {
        for addr in [
            EXIT_DEVICE_ADDR,
            BOOT_MARKER_ADDR,
            PVPANIC_ADDR,
            VIRTIO_MMIO_START,
            PCI_MMIO_START,
            PCI_MMIO_START + PCI_MMIO_SIZE - 1,
        ] {
            assert!((MMIO_GAP_START..u64::from(IOAPIC_ADDR)).contains(&addr));
        }
    }
}
