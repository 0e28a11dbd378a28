// SPDX-License-Identifier: Apache-2.0
//! Loading the kernel (bzImage or ELF vmlinux) and the initramfs into guest memory.

use std::fs::File;
use std::io::{Seek, SeekFrom};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{self, bzimage::BzImage, elf::Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress};

use crate::layout::{self, HIMEM_START};
use crate::GuestMemory;

/// Errors while loading the kernel or the initramfs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file is neither a bzImage nor an x86_64 ELF kernel.
    #[error("not a Linux kernel: neither a bzImage nor an x86_64 ELF vmlinux")]
    NotAKernel,
    /// The kernel is a valid image that could not be placed in guest memory.
    #[error("cannot load the kernel into guest memory")]
    LoadKernel(#[source] loader::Error),
    /// Reading the kernel or initramfs file failed.
    #[error("cannot read the file")]
    Read(#[source] std::io::Error),
    /// The initramfs does not fit in guest RAM below the kernel's limit.
    #[error("the initramfs ({size} bytes) does not fit in guest memory between the kernel's end (0x{kernel_end:x}) and 0x{limit:x}; give the guest more memory")]
    InitrdTooLarge {
        /// Size of the initramfs.
        size: u64,
        /// First free byte after the kernel.
        kernel_end: u64,
        /// Highest address the initramfs may end at.
        limit: u64,
    },
    /// Copying the initramfs into guest memory failed.
    #[error("cannot write the initramfs to guest memory")]
    WriteInitrd(#[source] vm_memory::GuestMemoryError),
}

/// Where a kernel landed and how to enter it.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// The 64-bit entry point.
    pub entry: GuestAddress,
    /// First byte after the loaded kernel image.
    pub end: u64,
    /// The bzImage setup header, `None` for an ELF vmlinux.
    pub setup_header: Option<setup_header>,
}

/// Where the initramfs landed.
#[derive(Debug, Clone, Copy)]
pub struct LoadedInitrd {
    /// Guest physical address of its first byte.
    pub addr: GuestAddress,
    /// Its size in bytes.
    pub size: u64,
}

/// Offset of the 64-bit entry point from a bzImage's load address
/// (`startup_64`, boot protocol 2.12 and later).
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// Loads `kernel` (a bzImage, else an ELF vmlinux) into `mem`.
pub fn load_kernel(mem: &GuestMemory, kernel: &mut File) -> Result<LoadedKernel, Error> {
    let highmem = Some(GuestAddress(HIMEM_START));
    match BzImage::load(mem, None, kernel, highmem) {
        Ok(result) => {
            return Ok(LoadedKernel {
                entry: GuestAddress(result.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET),
                end: result.kernel_end,
                setup_header: result.setup_header,
            })
        }
        Err(loader::Error::Bzimage(loader::bzimage::Error::InvalidBzImage)) => {}
        Err(e) => return Err(LoadKernel(e)),
    }
    kernel.seek(SeekFrom::Start(0)).map_err(Error::Read)?;
    match Elf::load(mem, None, kernel, highmem) {
        Ok(result) => Ok(LoadedKernel {
            entry: result.kernel_load,
            end: result.kernel_end,
            setup_header: None,
        }),
        Err(loader::Error::Elf(
            loader::elf::Error::InvalidElfMagicNumber
            | loader::elf::Error::BigEndianElfOnLittle
            | loader::elf::Error::ReadElfHeader,
        )) => Err(Error::NotAKernel),
        Err(e) => Err(LoadKernel(e)),
    }
}

use Error::LoadKernel;

/// Highest address an initramfs may end at when the kernel does not say
/// (`initrd_addr_max` default of boot protocol 2.02 and earlier).
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

/// Copies the initramfs in `initrd` to the top of low RAM, page aligned,
/// below the kernel's `initrd_addr_max` and above the kernel.
pub fn load_initrd(
    mem: &GuestMemory,
    mem_size: u64,
    kernel: &LoadedKernel,
    initrd: &mut File,
) -> Result<LoadedInitrd, Error> {
    let size = initrd.metadata().map_err(Error::Read)?.len();
    let addr_max = match kernel.setup_header {
        Some(hdr) if hdr.initrd_addr_max != 0 => u64::from(hdr.initrd_addr_max),
        Some(_) => DEFAULT_INITRD_ADDR_MAX,
        None => u64::from(u32::MAX),
    };
    let limit = layout::low_ram_end(mem_size).min(addr_max.saturating_add(1));
    let addr = initrd_address(size, kernel.end, limit).ok_or(Error::InitrdTooLarge {
        size,
        kernel_end: kernel.end,
        limit,
    })?;
    let len = usize::try_from(size).map_err(|_| Error::InitrdTooLarge {
        size,
        kernel_end: kernel.end,
        limit,
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), initrd, len)
        .map_err(Error::WriteInitrd)?;
    Ok(LoadedInitrd {
        addr: GuestAddress(addr),
        size,
    })
}

/// The page-aligned start for an initramfs of `size` bytes that ends at or
/// below `limit` and starts at or above `kernel_end`, if there is room.
fn initrd_address(size: u64, kernel_end: u64, limit: u64) -> Option<u64> {
    const PAGE: u64 = 4096;
    let start = limit.checked_sub(size)? & !(PAGE - 1);
    (start >= kernel_end).then_some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initrd_goes_to_the_top_page_aligned() {
        assert_eq!(
            initrd_address(5000, 0x20_0000, 0x1000_0000),
            Some(0x1000_0000 - 8192)
        );
    }

    #[test]
    fn initrd_that_would_overlap_the_kernel_is_refused() {
        assert_eq!(initrd_address(0x100, 0x1000_0000, 0x1000_0000), None);
        assert_eq!(initrd_address(0x2000_0000, 0x20_0000, 0x1000_0000), None);
    }

    #[test]
    fn garbage_is_not_a_kernel() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let dir = std::env::temp_dir().join(format!("ferry-boot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("garbage");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let mut file = File::open(&path).unwrap();
        assert!(matches!(
            load_kernel(&mem, &mut file),
            Err(Error::NotAKernel)
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
