// SPDX-License-Identifier: Apache-2.0
//! The i8042 keyboard controller, for its CPU reset line: the guest's
//! `reboot` (with `reboot=k`) and `panic=-1` pulse it, and the VM ends.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::vm_end::{ExitReason, VmEnd};

/// First I/O port of the i8042 (data); the command port is at +4.
pub const I8042_PORT: u16 = 0x60;
/// Ports 0x60..=0x64.
pub const I8042_LEN: u64 = 5;

/// Reports a reset pulse as the VM's end.
#[derive(Debug)]
struct ResetLine(Arc<VmEnd>);

impl vm_superio::Trigger for ResetLine {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request(ExitReason::Reset);
        Ok(())
    }
}

/// The i8042 on the I/O bus.
#[derive(Debug)]
pub struct I8042 {
    controller: vm_superio::I8042Device<ResetLine>,
}

impl I8042 {
    /// An i8042 whose reset line ends `vm_end`.
    pub fn new(vm_end: Arc<VmEnd>) -> Self {
        Self {
            controller: vm_superio::I8042Device::new(ResetLine(vm_end)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Ok(offset), [first, ..]) = (u8::try_from(offset), data) {
            *first = self.controller.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), [value, ..]) = (u8::try_from(offset), data) {
            // The reset line's trigger cannot fail.
            let _ = self.controller.write(offset, *value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_ends_the_vm_with_reset() {
        let end = Arc::new(VmEnd::new().unwrap());
        let mut i8042 = I8042::new(end.clone());
        i8042.write(0, &[0xfe]);
        assert!(!end.has_ended(), "a byte on the data port is not a reset");
        i8042.write(4, &[0xfe]);
        assert_eq!(end.reason(), Some(ExitReason::Reset));
    }
}
