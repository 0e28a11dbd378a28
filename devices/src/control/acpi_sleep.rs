// SPDX-License-Identifier: Apache-2.0
//! The hardware-reduced ACPI sleep control/status and reset register (one
//! I/O port, described in the FADT): the guest writes the S5 sleep type
//! with SLP_EN to power off, and the reset value to reset.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::vm_end::{ExitReason, VmEnd};

/// SLP_EN: the sleep control write takes effect.
const SLP_EN: u8 = 1 << 5;
/// SLP_TYP field of the sleep control register.
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;
/// Sleep type of S5 (soft off), as the DSDT's `_S5_` says.
const S5_SLEEP_TYPE: u8 = 5;
/// WAK_STS in the sleep status register.
const WAK_STS: u8 = 1 << 7;

/// The ACPI sleep and reset register on the I/O bus.
#[derive(Debug)]
pub struct AcpiSleep {
    vm_end: Arc<VmEnd>,
    reset_value: u8,
}

impl AcpiSleep {
    /// A register that ends `vm_end`; `reset_value` is the FADT's reset value.
    pub fn new(vm_end: Arc<VmEnd>, reset_value: u8) -> Self {
        Self {
            vm_end,
            reset_value,
        }
    }
}

impl BusDevice for AcpiSleep {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let [first, ..] = data {
            *first = WAK_STS;
        }
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        if value == self.reset_value {
            log::info!("ACPI: the guest wrote the reset value");
            self.vm_end.request(ExitReason::Reset);
        } else if value & SLP_EN != 0 {
            match (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK {
                S5_SLEEP_TYPE => self.vm_end.request(ExitReason::PowerOff),
                other => {
                    log::warn!("guest asked for sleep type {other}, which ferry does not support")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_powers_off() {
        let end = Arc::new(VmEnd::new().unwrap());
        let mut dev = AcpiSleep::new(end.clone(), 1);
        dev.write(0, &[(3 << 2) | SLP_EN]);
        assert!(!end.has_ended(), "S3 is not supported and not an end");
        dev.write(0, &[5 << 2]);
        assert!(!end.has_ended(), "without SLP_EN nothing happens");
        dev.write(0, &[(5 << 2) | SLP_EN]);
        assert_eq!(end.reason(), Some(ExitReason::PowerOff));
    }

    #[test]
    fn reset_value_resets() {
        let end = Arc::new(VmEnd::new().unwrap());
        AcpiSleep::new(end.clone(), 1).write(0, &[1]);
        assert_eq!(end.reason(), Some(ExitReason::Reset));
    }
}
