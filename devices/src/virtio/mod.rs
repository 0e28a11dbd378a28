// SPDX-License-Identifier: Apache-2.0
//! virtio 1.x devices: the [`VirtioDevice`] model apart from its
//! [`mmio::MmioTransport`], and the interrupt state they share.

pub mod block;
mod device_thread;
pub mod mmio;
pub mod net;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::irq::IrqLine;
use crate::GuestMemory;

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready: the device may run.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is done.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 128;
}

/// `VIRTIO_F_VERSION_1`: the modern interface, the only one ferry speaks.
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// `VIRTIO_RING_F_INDIRECT_DESC`: a chain may live in a table of its own,
/// taking one ring entry whatever its length.
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
/// `VIRTIO_RING_F_EVENT_IDX`: notification suppression by ring index.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;

/// Interrupt status bits of the MMIO transport (virtio 1.2, 4.2.2).
const INT_USED_RING: u32 = 1;
const INT_CONFIG_CHANGE: u32 = 2;

/// A device's interrupt: the status the guest reads and acks, and the line.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    line: IrqLine,
}

impl Interrupt {
    /// An interrupt raised on `line`.
    pub fn new(line: IrqLine) -> Self {
        Self {
            status: AtomicU32::new(0),
            line,
        }
    }

    /// The line (the VMM registers its eventfd with KVM).
    pub fn line(&self) -> &IrqLine {
        &self.line
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.line.trigger() {
            log::warn!("cannot raise interrupt {}: {e}", self.line.gsi());
        }
    }

    /// Tells the guest that buffers were used.
    pub fn signal_used_queue(&self) {
        self.raise(INT_USED_RING);
    }

    /// Tells the guest that the configuration space changed.
    pub fn signal_config_change(&self) {
        self.raise(INT_CONFIG_CHANGE);
    }

    /// The pending interrupt causes.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// The guest acknowledged `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Clears every cause (device reset).
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }
}

/// Everything a device needs to run once the driver is ready.
#[derive(Debug)]
pub struct Activation {
    /// Guest memory.
    pub mem: GuestMemory,
    /// The queues, as the driver set them up.
    pub queues: Vec<Queue>,
    /// One notification eventfd per queue (written by KVM on a queue kick).
    pub kicks: Vec<EventFd>,
    /// The device's interrupt.
    pub interrupt: Arc<Interrupt>,
    /// The features the driver accepted.
    pub features: u64,
}

/// Why a device could not start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up fewer queues than the device needs.
    #[error("the driver set up {got} queues; the device needs {need}")]
    Queues {
        /// Queues ready.
        got: usize,
        /// Queues needed.
        need: usize,
    },
    /// The device's worker could not be started.
    #[error("cannot start the device's worker")]
    Worker(#[source] std::io::Error),
}

/// Copies a device's configuration space `bytes` from `offset` into
/// `data`; bytes beyond the space read as zero.
pub fn read_config_bytes(bytes: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    if let Some(rest) = usize::try_from(offset).ok().and_then(|o| bytes.get(o..)) {
        let n = data.len().min(rest.len());
        data[..n].copy_from_slice(&rest[..n]);
    }
}

/// A virtio device model: features, configuration space, queues. It never
/// sees MMIO offsets: the transport owns the register file.
pub trait VirtioDevice: Send {
    /// The virtio device id (1 for network, 2 for block).
    fn device_type(&self) -> u32;
    /// The largest size of each of its queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// The features it offers.
    fn features(&self) -> u64;
    /// Reads its configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes its configuration space (ignored unless the device says otherwise).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts the device.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// Stops the device and returns it to its state before activation.
    fn reset(&mut self);
}
