// SPDX-License-Identifier: Apache-2.0
//! Guest RAM: mapped in ferry and registered with KVM as memory slots.

use ferry_boot::{layout, GuestMemory};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap, MemoryRegionAddress,
};

/// Guest RAM is mapped at host addresses aligned to this, so that a huge
/// page on the host backs a whole huge page of the guest and KVM can map
/// it with one 2 MiB entry.
const HUGE_PAGE: usize = 2 << 20;

/// Protection and flags of every guest RAM mapping: private anonymous
/// memory, reserved only as the guest touches it.
const PROT: i32 = libc::PROT_READ | libc::PROT_WRITE;
const FLAGS: i32 = libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_NORESERVE;

/// Errors while setting up guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Mapping the RAM in ferry failed.
    #[error("cannot map {mib} MiB of guest memory")]
    Map {
        /// How much was asked for.
        mib: u64,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// vm-memory refused a mapping (never for the mappings made here).
    #[error("cannot use the guest memory mapping")]
    Region(#[source] vm_memory::mmap::MmapRegionError),
    /// A region would end past the top of the guest address space.
    #[error("guest memory region at 0x{0:x} ends past the address space")]
    Overflow(u64),
    /// The regions overlap (never for ferry's layout).
    #[error("cannot assemble guest memory")]
    Assemble(#[source] vm_memory::GuestRegionCollectionError),
    /// KVM refused a memory slot.
    #[error("KVM refused guest memory slot {slot}")]
    Register {
        /// The slot.
        slot: u32,
        /// Why.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A region has no host mapping (never for mmap-backed memory).
    #[error("guest memory region has no host address")]
    HostAddress(#[source] vm_memory::GuestMemoryError),
}

/// Maps `mem_size` bytes of guest RAM, split around the MMIO gap.
///
/// Each region is an anonymous mapping aligned to 2 MiB and marked for
/// transparent huge pages: the guest's memory then faults in 2 MiB at a
/// time and KVM maps it with 2 MiB entries, which makes every guest page
/// walk and every first touch of guest memory cheaper. The mappings live
/// as long as the process (a ferry process runs one VM).
pub fn map(mem_size: u64) -> Result<GuestMemory, Error> {
    let mut regions = Vec::new();
    for (start, size) in layout::ram_regions(mem_size) {
        let size = size as usize;
        let host = map_aligned(size).map_err(|source| Error::Map {
            mib: mem_size >> 20,
            source,
        })?;
        // SAFETY: `host` is the start of a live anonymous mapping of
        // `size` bytes made above and never unmapped.
        let mapping = unsafe { MmapRegionBuilder::new(size).with_raw_mmap_pointer(host) }
            .with_mmap_prot(PROT)
            .with_mmap_flags(FLAGS)
            .build()
            .map_err(Error::Region)?;
        let region =
            GuestRegionMmap::new(mapping, GuestAddress(start)).ok_or(Error::Overflow(start))?;
        regions.push(region);
    }
    GuestMemory::from_regions(regions).map_err(Error::Assemble)
}

/// An anonymous read-write mapping of `size` bytes at a 2 MiB-aligned
/// address, advised for transparent huge pages.
fn map_aligned(size: usize) -> std::io::Result<*mut u8> {
    let padded = size + HUGE_PAGE;
    // SAFETY: a fresh anonymous mapping at an address the kernel picks;
    // nothing else refers to it.
    let raw = unsafe { libc::mmap(std::ptr::null_mut(), padded, PROT, FLAGS, -1, 0) };
    if raw == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let raw = raw as usize;
    let aligned = raw.next_multiple_of(HUGE_PAGE);
    let head = aligned - raw;
    let tail = padded - head - size;
    // SAFETY: the head and tail are parts of the mapping made above that
    // lie outside [aligned, aligned + size), which is all that is kept.
    unsafe {
        if head > 0 {
            libc::munmap(raw as *mut libc::c_void, head);
        }
        if tail > 0 {
            libc::munmap((aligned + size) as *mut libc::c_void, tail);
        }
    }
    // SAFETY: [aligned, aligned + size) is mapped above. The advice is a
    // hint; a kernel without transparent huge pages refuses it and the
    // memory works with small pages.
    unsafe { libc::madvise(aligned as *mut libc::c_void, size, libc::MADV_HUGEPAGE) };
    Ok(aligned as *mut u8)
}

/// Registers every region of `mem` with `vm` as a memory slot.
pub fn register(vm: &VmFd, mem: &GuestMemory) -> Result<(), Error> {
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(Error::HostAddress)?;
        let desc = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mmap of `memory_size` bytes owned by
        // `mem`, which the VM keeps until after every vCPU has stopped.
        unsafe { vm.set_user_memory_region(desc) }
            .map_err(|source| Error::Register { slot, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn regions_start_on_huge_page_boundaries_and_hold_data() {
        // 3.5 GiB + 1 MiB: split around the MMIO gap, the upper part not a
        // multiple of 2 MiB. MAP_NORESERVE: nothing is touched but two bytes.
        let size = (3584 << 20) + (1 << 20);
        let mem = map(size).unwrap();
        assert_eq!(mem.num_regions(), 2);
        let total: u64 = mem.iter().map(|r| r.len()).sum();
        assert_eq!(total, size);
        for region in mem.iter() {
            let host = region.get_host_address(MemoryRegionAddress(0)).unwrap();
            assert_eq!(host as usize % HUGE_PAGE, 0);
            let last = GuestAddress(region.start_addr().0 + region.len() - 1);
            mem.write_obj(0xa5u8, last).unwrap();
            assert_eq!(mem.read_obj::<u8>(last).unwrap(), 0xa5);
        }
    }

    #[test]
    fn an_impossible_size_is_an_error() {
        let err = map(1 << 62).unwrap_err();
        assert!(err.to_string().contains("cannot map"), "{err}");
    }
}
