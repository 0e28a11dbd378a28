// SPDX-License-Identifier: Apache-2.0
//! The exit-status register: a byte the guest writes at offset 0 ends the
//! VM, and ferry exits with that byte as its status. From a guest shell:
//! `devmem 0xd0000000 8 STATUS`.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::vm_end::{ExitReason, VmEnd};

/// The exit-status register on the MMIO bus.
#[derive(Debug)]
pub struct ExitStatus {
    vm_end: Arc<VmEnd>,
}

impl ExitStatus {
    /// A register that ends `vm_end`.
    pub fn new(vm_end: Arc<VmEnd>) -> Self {
        Self { vm_end }
    }
}

impl BusDevice for ExitStatus {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Any access width: the low byte at offset 0 is the status.
        if let (0, [status, ..]) = (offset, data) {
            self.vm_end.request(ExitReason::GuestStatus(*status));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_ends_the_vm_with_its_status() {
        let end = Arc::new(VmEnd::new().unwrap());
        let mut reg = ExitStatus::new(end.clone());
        reg.write(8, &[1]);
        assert!(!end.has_ended());
        reg.write(0, &[7, 0, 0, 0]);
        assert_eq!(end.reason(), Some(ExitReason::GuestStatus(7)));
    }
}
