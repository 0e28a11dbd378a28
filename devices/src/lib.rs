// SPDX-License-Identifier: Apache-2.0
//! ferry's device models. A device knows guest memory and its backend,
//! never KVM: the VMM wires its registers to a [`bus::Bus`] and its
//! interrupts (eventfds) to KVM.

#![deny(missing_docs)]

pub mod bus;
pub mod control;
pub mod irq;
pub mod legacy;
pub mod pci;
pub mod virtio;
pub mod vm_end;

pub use virtio::device_thread::THREAD_STACK;

/// Guest memory as the devices see it.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;
