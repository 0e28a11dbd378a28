// SPDX-License-Identifier: Apache-2.0
//! Interrupt lines as eventfds: the VMM registers each as a KVM irqfd.

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// One edge-triggered interrupt line, raised by writing to an eventfd.
#[derive(Debug)]
pub struct IrqLine {
    gsi: u32,
    event: EventFd,
}

impl IrqLine {
    /// A line for interrupt `gsi`.
    pub fn new(gsi: u32) -> std::io::Result<Self> {
        Ok(Self {
            gsi,
            event: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// The interrupt number this line raises.
    pub fn gsi(&self) -> u32 {
        self.gsi
    }

    /// The eventfd to register with KVM as an irqfd.
    pub fn event(&self) -> &EventFd {
        &self.event
    }

    /// Raises the interrupt.
    pub fn trigger(&self) -> std::io::Result<()> {
        self.event.write(1)
    }

    /// Another handle on the same line.
    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(Self {
            gsi: self.gsi,
            event: self.event.try_clone()?,
        })
    }
}

impl vm_superio::Trigger for IrqLine {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        IrqLine::trigger(self)
    }
}
