// SPDX-License-Identifier: Apache-2.0
//! pvpanic over MMIO (ACPI `QEMU0001`): the guest kernel's pvpanic driver
//! writes here when it panics, and the VM ends with the panic status.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::vm_end::{ExitReason, VmEnd};

/// Event bit: the guest panicked.
const PVPANIC_PANICKED: u8 = 1 << 0;
/// Event bit: a crash kernel was loaded (reported, not acted on).
const PVPANIC_CRASH_LOADED: u8 = 1 << 1;

/// The pvpanic register on the MMIO bus.
#[derive(Debug)]
pub struct PvPanic {
    vm_end: Arc<VmEnd>,
}

impl PvPanic {
    /// A pvpanic device that ends `vm_end`.
    pub fn new(vm_end: Arc<VmEnd>) -> Self {
        Self { vm_end }
    }
}

impl BusDevice for PvPanic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (0, [first, ..]) = (offset, data) {
            // The events this device understands.
            *first = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (0, [events, ..]) = (offset, data) {
            if events & PVPANIC_PANICKED != 0 {
                self.vm_end.request(ExitReason::Panic);
            } else if events & PVPANIC_CRASH_LOADED != 0 {
                log::warn!("guest kernel panicked; its crash kernel takes over");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panicked_event_ends_the_vm() {
        let end = Arc::new(VmEnd::new().unwrap());
        let mut dev = PvPanic::new(end.clone());
        let mut caps = [0u8];
        dev.read(0, &mut caps);
        assert_eq!(caps, [3]);
        dev.write(0, &[PVPANIC_CRASH_LOADED]);
        assert!(!end.has_ended());
        dev.write(0, &[PVPANIC_PANICKED]);
        assert_eq!(end.reason(), Some(ExitReason::Panic));
    }
}
