// SPDX-License-Identifier: Apache-2.0
//! The Intel MultiProcessor table (MP specification 1.4): how a guest
//! booted without ACPI (`acpi=off`, as Kata boots Firecracker guests, or a
//! kernel built without ACPI) finds its CPUs, its IOAPIC and how the ISA
//! interrupt lines reach the IOAPIC's pins.
//!
//! ```text
//! MPTABLE_START      floating pointer "_MP_" (16 bytes) -> the table below
//! MPTABLE_START+16   configuration table "PCMP" (44-byte header), then:
//!                      one processor entry per vCPU (the first is the BSP)
//!                      bus 0, ISA
//!                      the IOAPIC at IOAPIC_ADDR
//!                      an interrupt entry per IOAPIC pin: ISA IRQ n -> pin n
//!                      LINT0 ExtINT and LINT1 NMI on every local APIC
//! ```
//!
//! The floating pointer sits at the start of the last KiB of base memory
//! (639 KiB), one of the places Linux scans for it; the e820 map reserves
//! that area. With ACPI tables present and not disabled, Linux takes the
//! MADT and ignores this table, so ferry writes both on every boot and the
//! guest's command line decides which one it reads.

use vm_memory::{Bytes, GuestAddress};

use crate::layout::{ACPI_START, IOAPIC_ADDR, IRQ_MAX, LAPIC_ADDR, MPTABLE_START};
use crate::GuestMemory;

/// Most vCPUs the table can list: local APIC ids are one byte, 255 is the
/// broadcast id, and the IOAPIC takes the id after the last vCPU's.
pub const MAX_CPUS: u32 = 254;

/// Errors while building or writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No vCPU, or more than [`MAX_CPUS`].
    #[error("the MP table cannot list {0} vCPUs (1 to {MAX_CPUS})")]
    Cpus(u32),
    /// The table would run into the ACPI tables.
    #[error("the MP table ({size} bytes) does not fit below the ACPI tables")]
    TooLarge {
        /// Its total size, floating pointer included.
        size: usize,
    },
    /// Writing to guest memory failed.
    #[error("cannot write the MP table to guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// Signature of the floating pointer structure.
const FLOATING_SIGNATURE: &[u8; 4] = b"_MP_";
/// Signature of the configuration table.
const TABLE_SIGNATURE: &[u8; 4] = b"PCMP";
/// MP specification revision 1.4.
const SPEC_REV: u8 = 4;
/// Size of the floating pointer structure.
const FLOATING_SIZE: usize = 16;
/// Size of the configuration table header.
const HEADER_SIZE: usize = 44;
/// Size of a processor entry; every other entry type is 8 bytes.
const PROCESSOR_SIZE: usize = 20;
/// Size of a bus, IOAPIC, interrupt or local interrupt entry.
const SMALL_ENTRY_SIZE: usize = 8;

/// Entry types (MP spec table 4-3).
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

/// Processor entry flags: enabled, and bootstrap processor.
const CPU_ENABLED: u8 = 1 << 0;
const CPU_BOOTSTRAP: u8 = 1 << 1;
/// Local APIC version of an integrated APIC.
const LAPIC_VERSION: u8 = 0x14;
/// Processor signature: family 6 (the kernel only prints it).
const CPU_SIGNATURE: u32 = 0x600;
/// Processor feature flags (CPUID.1:EDX): FPU and on-chip APIC.
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
/// IOAPIC version (82093AA), and its entry's enabled flag.
const IOAPIC_VERSION: u8 = 0x11;
const IOAPIC_ENABLED: u8 = 1;
/// The one bus: ISA, id 0.
const ISA_BUS_ID: u8 = 0;
const ISA_BUS_TYPE: &[u8; 6] = b"ISA   ";
/// Interrupt types (MP spec table 4-8).
const INT_VECTORED: u8 = 0;
const INT_NMI: u8 = 1;
const INT_EXTINT: u8 = 3;
/// Polarity and trigger mode that conform to the bus: for ISA, active
/// high and edge-triggered, which is how ferry raises its lines (irqfds)
/// and how the DSDT describes them.
const FLAGS_CONFORMING: u16 = 0;
/// A local interrupt entry for every local APIC.
const ALL_LAPICS: u8 = 0xff;

/// The byte that makes `bytes` sum to zero (mod 256), as every MP checksum
/// field requires.
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

/// The configuration table (header and entries) for `cpus` vCPUs.
fn config_table(cpus: u8) -> Vec<u8> {
    let ioapic_id = cpus;
    // Processors; the bus, the IOAPIC, one interrupt per pin, two local interrupts.
    let small_entries = 2 + (IRQ_MAX as usize + 1) + 2;
    let mut entries =
        Vec::with_capacity(usize::from(cpus) * PROCESSOR_SIZE + small_entries * SMALL_ENTRY_SIZE);
    let mut count: u16 = 0;
    for id in 0..cpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BOOTSTRAP } else { 0 };
        entries.extend([ENTRY_PROCESSOR, id, LAPIC_VERSION, flags]);
        entries.extend(CPU_SIGNATURE.to_le_bytes());
        entries.extend(CPU_FEATURES.to_le_bytes());
        entries.extend([0u8; 8]);
        count += 1;
    }
    entries.extend([ENTRY_BUS, ISA_BUS_ID]);
    entries.extend(ISA_BUS_TYPE);
    count += 1;
    entries.extend([ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, IOAPIC_ENABLED]);
    entries.extend(IOAPIC_ADDR.to_le_bytes());
    count += 1;
    // Every pin, identity-mapped from the ISA line of the same number: the
    // PIT (0), the keyboard (1), COM1 (4) and the virtio-mmio devices (5 on).
    for irq in 0..=IRQ_MAX as u8 {
        entries.extend([ENTRY_INTERRUPT, INT_VECTORED]);
        entries.extend(FLAGS_CONFORMING.to_le_bytes());
        entries.extend([ISA_BUS_ID, irq, ioapic_id, irq]);
        count += 1;
    }
    for (kind, lint) in [(INT_EXTINT, 0u8), (INT_NMI, 1)] {
        entries.extend([ENTRY_LOCAL_INTERRUPT, kind]);
        entries.extend(FLAGS_CONFORMING.to_le_bytes());
        entries.extend([ISA_BUS_ID, 0, ALL_LAPICS, lint]);
        count += 1;
    }

    let length = HEADER_SIZE + entries.len();
    let mut table = Vec::with_capacity(length);
    table.extend(TABLE_SIGNATURE);
    // At most 254 processors: far below 64 KiB.
    table.extend((length as u16).to_le_bytes());
    table.push(SPEC_REV);
    table.push(0); // checksum, below
    table.extend(b"FERRY   "); // OEM id, 8 bytes
    table.extend(b"FERRYVM     "); // product id, 12 bytes
    table.extend(0u32.to_le_bytes()); // no OEM table
    table.extend(0u16.to_le_bytes());
    table.extend(count.to_le_bytes());
    table.extend(LAPIC_ADDR.to_le_bytes());
    table.extend(0u16.to_le_bytes()); // no extended table
    table.push(0); // its checksum
    table.push(0); // reserved
    table.extend(entries);
    table[7] = checksum(&table);
    table
}

/// The floating pointer for a configuration table at `table_addr`.
fn floating_pointer(table_addr: u32) -> [u8; FLOATING_SIZE] {
    let mut mpf = [0u8; FLOATING_SIZE];
    mpf[..4].copy_from_slice(FLOATING_SIGNATURE);
    mpf[4..8].copy_from_slice(&table_addr.to_le_bytes());
    mpf[8] = (FLOATING_SIZE / 16) as u8; // length in 16-byte units
    mpf[9] = SPEC_REV;
    // mpf[11]: feature byte 1 = 0, a configuration table is present;
    // mpf[12]: feature byte 2 = 0, virtual wire mode (no IMCR).
    mpf[10] = checksum(&mpf);
    mpf
}

/// The whole MP table for `cpus` vCPUs as it lies from [`MPTABLE_START`]:
/// the floating pointer, then the configuration table.
pub fn mptable(cpus: u32) -> Result<Vec<u8>, Error> {
    let ids = u8::try_from(cpus)
        .ok()
        .filter(|n| (1..=MAX_CPUS).contains(&u32::from(*n)))
        .ok_or(Error::Cpus(cpus))?;
    let table_addr = MPTABLE_START + FLOATING_SIZE as u64;
    let mut bytes = floating_pointer(table_addr as u32).to_vec();
    bytes.extend(config_table(ids));
    if MPTABLE_START + bytes.len() as u64 > ACPI_START {
        return Err(Error::TooLarge { size: bytes.len() });
    }
    Ok(bytes)
}

/// Writes the MP table for `cpus` vCPUs at [`MPTABLE_START`].
pub fn write_mptable(mem: &GuestMemory, cpus: u32) -> Result<(), Error> {
    let bytes = mptable(cpus)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(Error::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::EBDA_START;

    /// Finds the floating pointer as Linux does (`smp_scan_config`): a
    /// 16-byte aligned "_MP_" whose 16 bytes sum to zero, in the first KiB,
    /// the last KiB of base memory or the BIOS ROM.
    fn find_floating(mem: &GuestMemory) -> Option<u64> {
        let windows = [(0u64, 0x400u64), (639 * 0x400, 0x400), (0xf_0000, 0x1_0000)];
        for (base, len) in windows {
            for addr in (base..base + len).step_by(16) {
                let mut mpf = [0u8; FLOATING_SIZE];
                if mem.read_slice(&mut mpf, GuestAddress(addr)).is_err() {
                    continue;
                }
                if &mpf[..4] == FLOATING_SIGNATURE && checksum(&mpf) == 0 {
                    return Some(addr);
                }
            }
        }
        None
    }

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    /// A parsed-back table.
    #[derive(Debug, Default)]
    struct Parsed {
        /// (APIC id, flags) of each processor entry.
        cpus: Vec<(u8, u8)>,
        /// (id, type) of each bus.
        buses: Vec<(u8, [u8; 6])>,
        /// (id, address) of each IOAPIC.
        ioapics: Vec<(u8, u32)>,
        /// (type, source bus, source IRQ, IOAPIC id, pin) of each interrupt entry.
        interrupts: Vec<(u8, u8, u8, u8, u8)>,
        /// (type, local APIC id, LINT pin) of each local interrupt entry.
        local: Vec<(u8, u8, u8)>,
        lapic_addr: u32,
    }

    /// Reads the table back from guest memory, checking both checksums,
    /// the lengths and the entry count.
    fn parse(mem: &GuestMemory) -> Parsed {
        let mpf_addr = find_floating(mem).expect("no floating pointer where Linux scans");
        let mut mpf = [0u8; FLOATING_SIZE];
        mem.read_slice(&mut mpf, GuestAddress(mpf_addr)).unwrap();
        assert_eq!(mpf[8], 1, "floating pointer length");
        assert_eq!(mpf[9], SPEC_REV);
        assert_eq!(mpf[11], 0, "feature byte 1: a configuration table follows");
        let table_addr = u64::from(u32_at(&mpf, 4));

        let mut header = [0u8; HEADER_SIZE];
        mem.read_slice(&mut header, GuestAddress(table_addr))
            .unwrap();
        assert_eq!(&header[..4], TABLE_SIGNATURE);
        assert_eq!(header[6], SPEC_REV);
        let length = usize::from(u16_at(&header, 4));
        let mut table = vec![0u8; length];
        mem.read_slice(&mut table, GuestAddress(table_addr))
            .unwrap();
        assert_eq!(checksum(&table), 0, "configuration table checksum");
        assert_eq!(u16_at(&table, 40), 0, "no extended table");

        let mut parsed = Parsed {
            lapic_addr: u32_at(&table, 36),
            ..Default::default()
        };
        let count = u16_at(&table, 34);
        let mut at = HEADER_SIZE;
        for _ in 0..count {
            let e = &table[at..];
            match e[0] {
                ENTRY_PROCESSOR => {
                    parsed.cpus.push((e[1], e[3]));
                    at += PROCESSOR_SIZE;
                    continue;
                }
                ENTRY_BUS => parsed.buses.push((e[1], e[2..8].try_into().unwrap())),
                ENTRY_IOAPIC => {
                    assert_eq!(e[3] & IOAPIC_ENABLED, IOAPIC_ENABLED);
                    parsed.ioapics.push((e[1], u32_at(e, 4)));
                }
                ENTRY_INTERRUPT => parsed.interrupts.push((e[1], e[4], e[5], e[6], e[7])),
                ENTRY_LOCAL_INTERRUPT => parsed.local.push((e[1], e[6], e[7])),
                other => panic!("unknown entry type {other}"),
            }
            at += SMALL_ENTRY_SIZE;
        }
        assert_eq!(at, length, "entries fill the table exactly");
        parsed
    }

    fn memory() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    #[test]
    fn one_processor_entry_per_vcpu_the_first_the_bsp() {
        for cpus in [1, 4, MAX_CPUS] {
            let mem = memory();
            write_mptable(&mem, cpus).unwrap();
            let parsed = parse(&mem);
            assert_eq!(parsed.cpus.len(), cpus as usize);
            for (index, (id, flags)) in parsed.cpus.iter().enumerate() {
                assert_eq!(usize::from(*id), index);
                assert_eq!(flags & CPU_ENABLED, CPU_ENABLED);
                assert_eq!(flags & CPU_BOOTSTRAP != 0, index == 0, "cpu {index}");
            }
            assert_eq!(parsed.lapic_addr, LAPIC_ADDR);
        }
    }

    #[test]
    fn the_floating_pointer_is_where_linux_scans() {
        let mem = memory();
        write_mptable(&mem, 2).unwrap();
        assert_eq!(find_floating(&mem), Some(MPTABLE_START));
        assert_eq!(MPTABLE_START, 639 * 0x400);
        assert_eq!(MPTABLE_START, EBDA_START, "the e820 map reserves it");
    }

    #[test]
    fn one_isa_bus_and_the_ioapic_at_its_address() {
        let mem = memory();
        write_mptable(&mem, 4).unwrap();
        let parsed = parse(&mem);
        assert_eq!(parsed.buses, vec![(ISA_BUS_ID, *b"ISA   ")]);
        // The IOAPIC's id follows the vCPUs' local APIC ids.
        assert_eq!(parsed.ioapics, vec![(4, IOAPIC_ADDR)]);
    }

    #[test]
    fn every_irq_ferry_uses_reaches_its_ioapic_pin() {
        let mem = memory();
        write_mptable(&mem, 4).unwrap();
        let parsed = parse(&mem);
        // PIT, keyboard, COM1, and every virtio-mmio line.
        let used = [0u8, 1, 4]
            .into_iter()
            .chain(crate::layout::VIRTIO_IRQ_START as u8..=IRQ_MAX as u8);
        for irq in used {
            assert!(
                parsed
                    .interrupts
                    .contains(&(INT_VECTORED, ISA_BUS_ID, irq, 4, irq)),
                "IRQ {irq}: {:?}",
                parsed.interrupts
            );
        }
        assert_eq!(parsed.interrupts.len(), IRQ_MAX as usize + 1);
        assert_eq!(
            parsed.local,
            vec![(INT_EXTINT, ALL_LAPICS, 0), (INT_NMI, ALL_LAPICS, 1)]
        );
    }

    #[test]
    fn a_vcpu_count_the_table_cannot_hold_is_refused() {
        let mem = memory();
        for cpus in [0, MAX_CPUS + 1, 1000] {
            assert!(
                matches!(write_mptable(&mem, cpus), Err(Error::Cpus(n)) if n == cpus),
                "{cpus}"
            );
        }
    }

    #[test]
    fn the_largest_table_stays_below_the_acpi_tables() {
        let bytes = mptable(MAX_CPUS).unwrap();
        assert!(MPTABLE_START + (bytes.len() as u64) <= ACPI_START);
    }

    #[test]
    fn memory_too_small_is_an_error_not_a_panic() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(matches!(write_mptable(&mem, 1), Err(Error::Write(_))));
    }
}
