// SPDX-License-Identifier: Apache-2.0
//! Guest RAM: mapped in ferry and registered with KVM as memory slots.

use ferry_boot::{layout, GuestMemory};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

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
        source: vm_memory::mmap::FromRangesError,
    },
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
pub fn map(mem_size: u64) -> Result<GuestMemory, Error> {
    let ranges: Vec<(GuestAddress, usize)> = layout::ram_regions(mem_size)
        .into_iter()
        .map(|(start, size)| (GuestAddress(start), size as usize))
        .collect();
    GuestMemory::from_ranges(&ranges).map_err(|source| Error::Map {
        mib: mem_size >> 20,
        source,
    })
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
