// SPDX-License-Identifier: Apache-2.0
//! ACPI tables: RSDP → XSDT → {FADT → DSDT, MADT}.
//!
//! The FADT describes a hardware-reduced platform whose sleep control,
//! sleep status and reset registers are one I/O port
//! ([`ACPI_SLEEP_PORT`]); the DSDT carries `_S5_` so that a guest
//! `poweroff` writes the S5 value there, and describes every MMIO device
//! the guest must discover (virtio-mmio as `LNRO0005`, pvpanic as `QEMU0001`,
//! the PCI host bridge as `PNP0A03`).
//! The MADT lists one local APIC per vCPU and the IOAPIC.

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress};

use crate::layout::{
    ACPI_END, ACPI_RESET_VALUE, ACPI_SLEEP_PORT, ACPI_START, IOAPIC_ADDR, LAPIC_ADDR,
};
use crate::GuestMemory;

const OEM_ID: [u8; 6] = *b"FERRY ";
const OEM_TABLE_ID: [u8; 8] = *b"FERRYVM ";
const OEM_REVISION: u32 = 1;

/// Errors while building or writing the ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The tables do not fit between [`ACPI_START`] and [`ACPI_END`].
    #[error("the ACPI tables ({size} bytes) do not fit in the BIOS area")]
    TooLarge {
        /// Their total size.
        size: u64,
    },
    /// More vCPUs than one MADT byte-wide APIC id can name.
    #[error("too many vCPUs for the MADT: {0}")]
    TooManyCpus(u32),
    /// Writing to guest memory failed.
    #[error("cannot write the ACPI tables to guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// Where a device's registers are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcpiRegisters {
    /// A memory-mapped window: base and size.
    Mmio(u32, u32),
    /// An I/O port range: first port and count.
    Io(u16, u8),
}

/// A device the guest finds through the DSDT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiDevice {
    /// ACPI hardware id: a string such as `LNRO0005` (virtio-mmio), or a
    /// PNP id such as `PNP0501` (16550 UART), encoded as an EISA id.
    pub hid: &'static str,
    /// Its register ranges.
    pub registers: Vec<AcpiRegisters>,
    /// Its interrupt line (GSI), if it has one.
    pub irq: Option<u32>,
}

/// The PCI host bridge the DSDT describes: bus 0, reached through the
/// configuration ports, with its devices' BARs in one memory window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciHostBridge {
    /// First configuration port (0xcf8) and how many there are.
    pub config_ports: (u16, u8),
    /// The memory window for BARs: first address and size.
    pub mmio_window: (u32, u32),
}

/// AML of the host bridge `PCI0` (`PNP0A03`).
fn pci_host_bridge_aml(bridge: &PciHostBridge, sink: &mut Vec<u8>) {
    let (port, ports) = bridge.config_ports;
    let (start, size) = bridge.mmio_window;
    let bus = aml::AddressSpace::<u16>::new_bus_number(0, 0);
    let config = aml::IO::new(port, port, 1, ports);
    let window = aml::AddressSpace::<u32>::new_memory(
        aml::AddressSpaceCacheable::NotCacheable,
        true,
        start,
        start + (size - 1),
        None,
    );
    let crs = aml::ResourceTemplate::new(vec![&bus, &config, &window]);
    aml::Device::new(
        "PCI0".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A03")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_SEG".into(), &aml::ZERO),
            &aml::Name::new("_BBN".into(), &aml::ZERO),
            &aml::Name::new("_CRS".into(), &crs),
        ],
    )
    .to_aml_bytes(sink);
}

/// Whether `hid` is a PNP id (`PNPxxxx`), which ACPI encodes as an EISA id.
fn is_pnp_id(hid: &str) -> bool {
    hid.len() == 7 && hid.starts_with("PNP")
}

/// Builds the AML of the DSDT body: `_S5_`, one device per entry, and
/// the PCI host bridge if there is one.
fn dsdt_body(devices: &[AcpiDevice], pci: Option<&PciHostBridge>) -> Vec<u8> {
    let mut body = Vec::new();
    // Sleep type 5 for S5 (soft off): what the guest writes to the sleep control register.
    aml::Name::new("_S5_".into(), &aml::Package::new(vec![&5u8])).to_aml_bytes(&mut body);

    let mut device_aml = Vec::new();
    for (index, dev) in devices.iter().enumerate() {
        let uid = index as u32;
        let ranges: Vec<Box<dyn Aml>> = dev
            .registers
            .iter()
            .map(|r| -> Box<dyn Aml> {
                match *r {
                    AcpiRegisters::Mmio(base, size) => {
                        Box::new(aml::Memory32Fixed::new(true, base, size))
                    }
                    AcpiRegisters::Io(port, count) => Box::new(aml::IO::new(port, port, 1, count)),
                }
            })
            .collect();
        let interrupt = dev
            .irq
            .map(|irq| aml::Interrupt::new(true, true, false, false, irq));
        let mut resources: Vec<&dyn Aml> = ranges.iter().map(|r| r.as_ref()).collect();
        if let Some(interrupt) = &interrupt {
            resources.push(interrupt);
        }
        let crs = aml::ResourceTemplate::new(resources);
        let hid_string: &'static str = dev.hid;
        let hid_eisa;
        let hid: &dyn Aml = if is_pnp_id(dev.hid) {
            hid_eisa = aml::EISAName::new(dev.hid);
            &hid_eisa
        } else {
            &hid_string
        };
        aml::Device::new(
            format!("D{:03X}", index).as_str().into(),
            vec![
                &aml::Name::new("_HID".into(), hid),
                &aml::Name::new("_UID".into(), &uid),
                &aml::Name::new("_CCA".into(), &aml::ONE),
                &aml::Name::new("_CRS".into(), &crs),
            ],
        )
        .to_aml_bytes(&mut device_aml);
    }
    if let Some(bridge) = pci {
        pci_host_bridge_aml(bridge, &mut device_aml);
    }
    body.extend(aml::Scope::raw("\\_SB_".into(), device_aml));
    body
}

/// Bytes of each table, in the order they are laid out after the RSDP.
fn tables(
    cpus: u32,
    devices: &[AcpiDevice],
    pci: Option<&PciHostBridge>,
    start: u64,
) -> Result<Vec<(u64, Vec<u8>)>, Error> {
    let align = |addr: u64| (addr + 15) & !15;
    let rsdp_len = Rsdp::len() as u64;

    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    dsdt.append_slice(&dsdt_body(devices, pci));
    let dsdt_addr = align(start + rsdp_len);
    let dsdt = dsdt.as_slice().to_vec();

    let sleep_port = GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        ACPI_SLEEP_PORT.into(),
    );
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.sleep_control_reg = sleep_port;
    fadt.sleep_status_reg = sleep_port;
    fadt.reset_reg = sleep_port;
    fadt.reset_value = ACPI_RESET_VALUE;
    let mut fadt_bytes = Vec::new();
    fadt.finalize().to_aml_bytes(&mut fadt_bytes);
    let fadt_addr = align(dsdt_addr + dsdt.len() as u64);

    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_ADDR),
    );
    for cpu in 0..cpus {
        let id = u8::try_from(cpu).map_err(|_| Error::TooManyCpus(cpus))?;
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(0, IOAPIC_ADDR, 0));
    let mut madt_bytes = Vec::new();
    madt.to_aml_bytes(&mut madt_bytes);
    let madt_addr = align(fadt_addr + fadt_bytes.len() as u64);

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let mut xsdt_bytes = Vec::new();
    xsdt.to_aml_bytes(&mut xsdt_bytes);
    let xsdt_addr = align(madt_addr + madt_bytes.len() as u64);

    let mut rsdp = Vec::new();
    Rsdp::new(OEM_ID, xsdt_addr).to_aml_bytes(&mut rsdp);

    Ok(vec![
        (start, rsdp),
        (dsdt_addr, dsdt),
        (fadt_addr, fadt_bytes),
        (madt_addr, madt_bytes),
        (xsdt_addr, xsdt_bytes),
    ])
}

/// Writes the ACPI tables for `cpus` vCPUs, `devices` and the PCI host
/// bridge `pci` at [`ACPI_START`]; returns the RSDP's address.
pub fn write_acpi_tables(
    mem: &GuestMemory,
    cpus: u32,
    devices: &[AcpiDevice],
    pci: Option<&PciHostBridge>,
) -> Result<GuestAddress, Error> {
    let tables = tables(cpus, devices, pci, ACPI_START)?;
    let end = tables
        .iter()
        .map(|(addr, bytes)| addr + bytes.len() as u64)
        .max()
        .unwrap_or(ACPI_START);
    if end > ACPI_END {
        return Err(Error::TooLarge {
            size: end - ACPI_START,
        });
    }
    for (addr, bytes) in &tables {
        mem.write_slice(bytes, GuestAddress(*addr))
            .map_err(Error::Write)?;
    }
    Ok(GuestAddress(ACPI_START))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(bytes: &[u8]) -> bool {
        bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b)) == 0
    }

    fn virtio(n: u32) -> AcpiDevice {
        AcpiDevice {
            hid: "LNRO0005",
            registers: vec![AcpiRegisters::Mmio(0xd001_0000 + n * 0x1000, 0x1000)],
            irq: Some(5 + n),
        }
    }

    #[test]
    fn every_table_has_a_valid_checksum_and_signature() {
        let tables = tables(4, &[virtio(0), virtio(1)], None, ACPI_START).unwrap();
        let sigs: Vec<&[u8]> = tables.iter().map(|(_, b)| &b[..4]).collect();
        assert_eq!(sigs, vec![&b"RSD "[..], b"DSDT", b"FACP", b"APIC", b"XSDT"]);
        // RSDP: the first 20 bytes and the whole structure both sum to zero.
        assert!(checksum_ok(&tables[0].1[..20]));
        assert!(checksum_ok(&tables[0].1));
        for (_, bytes) in &tables[1..] {
            let len = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
            assert_eq!(len, bytes.len());
            assert!(
                checksum_ok(bytes),
                "bad checksum in {:?}",
                std::str::from_utf8(&bytes[..4])
            );
        }
    }

    #[test]
    fn madt_has_one_local_apic_per_cpu_and_an_ioapic() {
        let tables = tables(3, &[], None, ACPI_START).unwrap();
        let madt = &tables[3].1;
        let mut entries = Vec::new();
        let mut off = 44;
        while off < madt.len() {
            entries.push((madt[off], madt[off + 1]));
            off += madt[off + 1] as usize;
        }
        assert_eq!(entries, vec![(0, 8), (0, 8), (0, 8), (1, 12)]);
        // APIC ids 0, 1, 2.
        assert_eq!([madt[44 + 3], madt[52 + 3], madt[60 + 3]], [0, 1, 2]);
    }

    #[test]
    fn dsdt_describes_devices_and_s5() {
        let tables = tables(1, &[virtio(0), virtio(1)], None, ACPI_START).unwrap();
        let dsdt = &tables[1].1;
        let find = |needle: &[u8]| dsdt.windows(needle.len()).filter(|w| *w == needle).count();
        assert_eq!(find(b"LNRO0005"), 2);
        assert_eq!(find(b"_S5_"), 1);
        assert_eq!(find(b"D000"), 1);
        assert_eq!(find(b"D001"), 1);
    }

    #[test]
    fn pnp_ids_are_eisa_encoded() {
        let com1 = AcpiDevice {
            hid: "PNP0501",
            registers: vec![AcpiRegisters::Io(0x3f8, 8)],
            irq: Some(4),
        };
        let tables = tables(1, &[com1], None, ACPI_START).unwrap();
        let dsdt = &tables[1].1;
        // EISA id of PNP0501, as a DWord constant.
        let eisa = [0x0c, 0x41, 0xd0, 0x05, 0x01];
        assert!(dsdt.windows(5).any(|w| w == eisa));
        assert!(!dsdt.windows(7).any(|w| w == b"PNP0501"));
        // The I/O port descriptor: 0x47, decode16, min 0x3f8, max 0x3f8, align 1, len 8.
        let io = [0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08];
        assert!(dsdt.windows(8).any(|w| w == io));
    }

    #[test]
    fn xsdt_points_at_fadt_and_madt_and_fadt_at_dsdt() {
        let tables = tables(2, &[], None, ACPI_START).unwrap();
        let xsdt = &tables[4].1;
        let entry = |i: usize| u64::from_le_bytes(xsdt[36 + 8 * i..44 + 8 * i].try_into().unwrap());
        assert_eq!(entry(0), tables[2].0);
        assert_eq!(entry(1), tables[3].0);
        let fadt = &tables[2].1;
        // X_DSDT at offset 140 of the FADT.
        assert_eq!(
            u64::from_le_bytes(fadt[140..148].try_into().unwrap()),
            tables[1].0
        );
        let rsdp = &tables[0].1;
        assert_eq!(
            u64::from_le_bytes(rsdp[24..32].try_into().unwrap()),
            tables[4].0
        );
    }

    #[test]
    fn dsdt_describes_the_pci_host_bridge() {
        let bridge = PciHostBridge {
            config_ports: (0xcf8, 8),
            mmio_window: (0xe000_0000, 0x1000_0000),
        };
        let with = tables(1, &[], Some(&bridge), ACPI_START).unwrap();
        let dsdt = &with[1].1;
        let has = |needle: &[u8]| dsdt.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"PCI0"));
        // EISA id of PNP0A03.
        assert!(has(&[0x0c, 0x41, 0xd0, 0x0a, 0x03]));
        // The configuration ports, and the window's first and last address.
        assert!(has(&[0x47, 0x01, 0xf8, 0x0c, 0xf8, 0x0c, 0x01, 0x08]));
        assert!(has(&[0x00, 0x00, 0x00, 0xe0, 0xff, 0xff, 0xff, 0xef]));
        let without = tables(1, &[], None, ACPI_START).unwrap();
        assert!(!without[1].1.windows(4).any(|w| w == b"PCI0"));
    }

    #[test]
    fn too_many_cpus_is_an_error() {
        assert!(matches!(
            tables(300, &[], None, ACPI_START),
            Err(Error::TooManyCpus(300))
        ));
    }
}
