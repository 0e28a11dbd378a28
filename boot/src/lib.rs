// SPDX-License-Identifier: Apache-2.0
//! Putting a Linux guest in memory on x86_64: the guest physical layout,
//! kernel and initramfs loading, the zero page (boot parameters, e820 map,
//! command line), ACPI tables, the MP table, CPUID fix-ups and the boot CPU's initial state.
//!
//! Nothing here talks to KVM: every function fills guest memory or returns
//! plain data that the VMM hands to KVM.

#![deny(missing_docs)]

pub mod acpi;
pub mod bootparams;
pub mod cpuid;
pub mod kernel;
pub mod layout;
pub mod mptable;
pub mod regs;

/// The guest memory type every loader here writes into.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;
