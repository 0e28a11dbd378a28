// SPDX-License-Identifier: Apache-2.0
//! The zero page: boot parameters, the e820 memory map and the command line.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{Bytes, GuestAddress};

use crate::kernel::{LoadedInitrd, LoadedKernel};
use crate::layout::{
    self, ACPI_START, CMDLINE_MAX_SIZE, CMDLINE_START, EBDA_START, HIMEM_START, ZERO_PAGE_START,
};
use crate::GuestMemory;

/// Errors while writing the boot parameters.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line is longer than the kernel accepts.
    #[error("the kernel command line is {len} bytes; at most {max} fit")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The most the kernel takes.
        max: usize,
    },
    /// The command line holds a NUL or a non-ASCII byte.
    #[error("the kernel command line must be printable ASCII")]
    CmdlineInvalid,
    /// Writing to guest memory failed.
    #[error("cannot write the boot parameters to guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// e820 entry type for usable RAM.
const E820_RAM: u32 = 1;
/// e820 entry type for reserved memory.
const E820_RESERVED: u32 = 2;
/// `setup_header.boot_flag` magic.
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// `setup_header.header` magic ("HdrS").
const HDRS_MAGIC: u32 = 0x5372_6448;
/// `type_of_loader`: a boot loader without an assigned id.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// `kernel_alignment` to report for an ELF kernel (16 MiB, the x86_64 default).
const KERNEL_ALIGNMENT: u32 = 0x100_0000;

/// The e820 map for a guest with `mem_size` bytes of RAM: low RAM up to the
/// EBDA, the BIOS area (EBDA, ACPI tables) reserved, RAM from 1 MiB to the
/// MMIO gap, and RAM above 4 GiB for larger guests.
pub fn e820_map(mem_size: u64) -> Vec<boot_e820_entry> {
    let entry = |addr, size, r#type| boot_e820_entry { addr, size, r#type };
    let mut map = vec![
        entry(0, EBDA_START, E820_RAM),
        entry(EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
    ];
    for (start, size) in layout::ram_regions(mem_size) {
        let start_ram = start.max(HIMEM_START);
        let end = start + size;
        if end > start_ram {
            map.push(entry(start_ram, end - start_ram, E820_RAM));
        }
    }
    map
}

/// Largest command line (NUL excluded) the kernel with this header accepts.
fn cmdline_limit(hdr: Option<&setup_header>) -> usize {
    match hdr {
        // cmdline_size exists from boot protocol 2.06 on.
        Some(h) if h.version >= 0x0206 && h.cmdline_size > 0 => {
            (h.cmdline_size as usize).min(CMDLINE_MAX_SIZE - 1)
        }
        Some(h) if h.version < 0x0206 => 255,
        _ => CMDLINE_MAX_SIZE - 1,
    }
}

/// Writes the command line and the zero page for `kernel` into `mem`.
pub fn write_boot_params(
    mem: &GuestMemory,
    mem_size: u64,
    kernel: &LoadedKernel,
    initrd: Option<&LoadedInitrd>,
    cmdline: &str,
) -> Result<(), Error> {
    let max = cmdline_limit(kernel.setup_header.as_ref());
    if cmdline.len() > max {
        return Err(Error::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    if !cmdline.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(Error::CmdlineInvalid);
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_START))
        .map_err(Error::Write)?;

    let hdr = kernel.setup_header.unwrap_or_else(|| setup_header {
        boot_flag: BOOT_FLAG_MAGIC,
        header: HDRS_MAGIC,
        kernel_alignment: KERNEL_ALIGNMENT,
        ..Default::default()
    });
    let mut params = boot_params {
        hdr,
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline.len() as u32;
    if let Some(initrd) = initrd {
        // The loader keeps the initramfs below 4 GiB (initrd_addr_max).
        params.hdr.ramdisk_image = initrd.addr.0 as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    params.acpi_rsdp_addr = ACPI_START;
    let map = e820_map(mem_size);
    params.e820_entries = map.len() as u8;
    params.e820_table[..map.len()].copy_from_slice(&map);
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(Error::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{MMIO_GAP_END, MMIO_GAP_START};

    fn kernel() -> LoadedKernel {
        LoadedKernel {
            entry: GuestAddress(0x100_0000),
            end: 0x200_0000,
            setup_header: None,
        }
    }

    #[test]
    fn e820_small_guest() {
        let map = e820_map(256 << 20);
        let got: Vec<_> = map.iter().map(|e| (e.addr, e.size, e.r#type)).collect();
        assert_eq!(
            got,
            vec![
                (0, EBDA_START, E820_RAM),
                (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
                (HIMEM_START, (256 << 20) - HIMEM_START, E820_RAM),
            ]
        );
    }

    #[test]
    fn e820_large_guest_skips_the_gap() {
        let map = e820_map(6 << 30);
        let ram: u64 = map
            .iter()
            .filter(|e| e.r#type == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, (6 << 30) - (HIMEM_START - EBDA_START));
        let last = map.last().unwrap();
        assert_eq!(
            (last.addr, last.size),
            (MMIO_GAP_END, (6 << 30) - MMIO_GAP_START)
        );
        assert!(map
            .iter()
            .all(|e| e.addr + e.size <= MMIO_GAP_START || e.addr >= MMIO_GAP_END));
    }

    #[test]
    fn zero_page_carries_cmdline_initrd_and_rsdp() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let initrd = LoadedInitrd {
            addr: GuestAddress(0x300_0000),
            size: 1234,
        };
        write_boot_params(&mem, 64 << 20, &kernel(), Some(&initrd), "console=ttyS0").unwrap();
        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        let hdr = params.hdr;
        assert_eq!({ hdr.boot_flag }, BOOT_FLAG_MAGIC);
        assert_eq!({ hdr.header }, HDRS_MAGIC);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ hdr.ramdisk_image }, 0x300_0000);
        assert_eq!({ hdr.ramdisk_size }, 1234);
        assert_eq!({ params.acpi_rsdp_addr }, ACPI_START);
        assert_eq!(params.e820_entries, 3);
        let mut cmdline = [0u8; 14];
        mem.read_slice(&mut cmdline, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&cmdline, b"console=ttyS0\0");
    }

    #[test]
    fn long_or_binary_cmdline_is_refused() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let long = "a".repeat(CMDLINE_MAX_SIZE);
        assert!(matches!(
            write_boot_params(&mem, 64 << 20, &kernel(), None, &long),
            Err(Error::CmdlineTooLong { .. })
        ));
        assert!(matches!(
            write_boot_params(&mem, 64 << 20, &kernel(), None, "a\u{1}b"),
            Err(Error::CmdlineInvalid)
        ));
    }
}
