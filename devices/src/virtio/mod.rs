// SPDX-License-Identifier: Apache-2.0
//! virtio 1.x devices: the [`VirtioDevice`] model apart from its
//! transport ([`mmio::MmioTransport`] or [`pci::VirtioPci`]), and the
//! interrupt state they share.

pub mod block;
mod core;
pub(crate) mod device_thread;
pub mod features;
pub mod mmio;
pub mod net;
pub mod pci;
mod queue_drain;
#[cfg(test)]
mod test_device;
pub mod vsock;

use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_mmio;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::irq::IrqLine;
use crate::pci::msix::Msix;
use crate::GuestMemory;

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    use virtio_bindings::virtio_config;

    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = virtio_config::VIRTIO_CONFIG_S_ACKNOWLEDGE;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = virtio_config::VIRTIO_CONFIG_S_DRIVER;
    /// The driver is ready: the device may run.
    pub const DRIVER_OK: u32 = virtio_config::VIRTIO_CONFIG_S_DRIVER_OK;
    /// Feature negotiation is done.
    pub const FEATURES_OK: u32 = virtio_config::VIRTIO_CONFIG_S_FEATURES_OK;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;
    /// The driver gave up on the device.
    pub const FAILED: u32 = virtio_config::VIRTIO_CONFIG_S_FAILED;
}

/// Interrupt status bit (virtio 1.2, 4.2.2; the same in virtio-pci's ISR,
/// 4.1.4.5): buffers were used.
const INT_USED_RING: u32 = virtio_mmio::VIRTIO_MMIO_INT_VRING;
/// Interrupt status bit: the configuration space changed.
const INT_CONFIG_CHANGE: u32 = virtio_mmio::VIRTIO_MMIO_INT_CONFIG;

/// `VIRTIO_MSI_NO_VECTOR`: a cause that raises no MSI-X vector.
pub const NO_VECTOR: u16 = 0xffff;

/// Where a device's interrupts go.
#[derive(Debug)]
enum Delivery {
    /// One line for every cause (virtio-mmio).
    Line(IrqLine),
    /// An MSI-X vector per cause, as the driver chose (virtio-pci).
    Msix {
        msix: Arc<Msix>,
        config_vector: AtomicU16,
        queue_vectors: Vec<AtomicU16>,
    },
}

/// A device's interrupt: the causes pending (the ISR status the guest
/// reads) and how the guest is told.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    delivery: Delivery,
}

impl Interrupt {
    /// An interrupt raised on `line`, whatever the cause.
    pub fn new(line: IrqLine) -> Self {
        Self {
            status: AtomicU32::new(0),
            delivery: Delivery::Line(line),
        }
    }

    /// An interrupt delivered as MSI-X messages, one vector per cause
    /// (configuration change, each of `queues` queues), none chosen yet.
    pub fn msix(msix: Arc<Msix>, queues: usize) -> Self {
        Self {
            status: AtomicU32::new(0),
            delivery: Delivery::Msix {
                msix,
                config_vector: AtomicU16::new(NO_VECTOR),
                queue_vectors: (0..queues).map(|_| AtomicU16::new(NO_VECTOR)).collect(),
            },
        }
    }

    fn raise(&self, bit: u32, vector: impl FnOnce(&[AtomicU16], &AtomicU16) -> Option<u16>) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        match &self.delivery {
            Delivery::Line(line) => {
                if let Err(e) = line.trigger() {
                    log::warn!("cannot raise interrupt {}: {e}", line.gsi());
                }
            }
            Delivery::Msix {
                msix,
                config_vector,
                queue_vectors,
            } => {
                if let Some(vector) = vector(queue_vectors, config_vector) {
                    if vector != NO_VECTOR {
                        msix.signal(vector);
                    }
                }
            }
        }
    }

    /// Tells the guest that buffers of queue `queue` were used.
    pub fn signal_used_queue(&self, queue: usize) {
        self.raise(INT_USED_RING, |queues, _| {
            queues.get(queue).map(|v| v.load(Ordering::Relaxed))
        });
    }

    /// Tells the guest that the configuration space changed.
    pub fn signal_config_change(&self) {
        self.raise(INT_CONFIG_CHANGE, |_, config| {
            Some(config.load(Ordering::Relaxed))
        });
    }

    /// The pending interrupt causes.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Returns the pending causes and clears them (a read of virtio-pci's ISR).
    pub fn take_status(&self) -> u32 {
        self.status.swap(0, Ordering::SeqCst)
    }

    /// The guest acknowledged `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Clears every cause and forgets the vectors (device reset).
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
        if let Delivery::Msix {
            config_vector,
            queue_vectors,
            ..
        } = &self.delivery
        {
            config_vector.store(NO_VECTOR, Ordering::SeqCst);
            for v in queue_vectors {
                v.store(NO_VECTOR, Ordering::SeqCst);
            }
        }
    }

    /// Accepts `vector` if the MSI-X table has it, else [`NO_VECTOR`].
    fn valid_vector(msix: &Msix, vector: u16) -> u16 {
        if vector < msix.vectors() {
            vector
        } else {
            NO_VECTOR
        }
    }

    /// The driver picks the vector of configuration changes; returns the
    /// one kept ([`NO_VECTOR`] if refused, or without MSI-X).
    pub fn set_config_vector(&self, vector: u16) -> u16 {
        match &self.delivery {
            Delivery::Msix {
                msix,
                config_vector,
                ..
            } => {
                let kept = Self::valid_vector(msix, vector);
                config_vector.store(kept, Ordering::SeqCst);
                kept
            }
            Delivery::Line(_) => NO_VECTOR,
        }
    }

    /// The vector of configuration changes.
    pub fn config_vector(&self) -> u16 {
        match &self.delivery {
            Delivery::Msix { config_vector, .. } => config_vector.load(Ordering::SeqCst),
            Delivery::Line(_) => NO_VECTOR,
        }
    }

    /// The driver picks the vector of queue `queue`; returns the one kept.
    pub fn set_queue_vector(&self, queue: usize, vector: u16) -> u16 {
        match &self.delivery {
            Delivery::Msix {
                msix,
                queue_vectors,
                ..
            } => match queue_vectors.get(queue) {
                Some(slot) => {
                    let kept = Self::valid_vector(msix, vector);
                    slot.store(kept, Ordering::SeqCst);
                    kept
                }
                None => NO_VECTOR,
            },
            Delivery::Line(_) => NO_VECTOR,
        }
    }

    /// The vector of queue `queue`.
    pub fn queue_vector(&self, queue: usize) -> u16 {
        match &self.delivery {
            Delivery::Msix { queue_vectors, .. } => queue_vectors
                .get(queue)
                .map_or(NO_VECTOR, |v| v.load(Ordering::SeqCst)),
            Delivery::Line(_) => NO_VECTOR,
        }
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

impl Activation {
    /// Whether the driver accepted feature bit `bit`.
    pub fn has_feature(&self, bit: u32) -> bool {
        features::has(self.features, bit)
    }

    /// Takes the device's `N` queues, each with its notification eventfd,
    /// in queue order; an error unless the driver set up exactly `N`.
    pub fn take_queues<const N: usize>(&mut self) -> Result<[(Queue, EventFd); N], ActivateError> {
        let got = self.queues.len().min(self.kicks.len());
        if self.queues.len() != N || self.kicks.len() != N {
            return Err(ActivateError::Queues { got, need: N });
        }
        let pairs: Vec<(Queue, EventFd)> =
            self.queues.drain(..).zip(self.kicks.drain(..)).collect();
        pairs
            .try_into()
            .map_err(|_| ActivateError::Queues { got, need: N })
    }
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

/// A device's configuration-space layout, a `virtio-bindings` struct
/// whose fields the device fills in (little endian) and whose bytes the
/// guest reads.
///
/// # Safety
/// The type must have no padding (the bindings' configuration structs are
/// `packed`): every byte of a value is then initialized.
pub unsafe trait ConfigLayout: Copy {
    /// The value's bytes, in memory order.
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: `self` is `size_of::<Self>()` readable bytes, all of them
        // initialized since the type has no padding (the trait's contract);
        // the slice borrows `self`.
        unsafe {
            std::slice::from_raw_parts(
                (self as *const Self).cast::<u8>(),
                std::mem::size_of::<Self>(),
            )
        }
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
    /// The configuration generation (virtio 1.2, 2.5): it changes with
    /// every change of the configuration space the driver did not write
    /// itself, at once with it, so that a driver reading several fields
    /// (or one in several accesses) sees whether they belong together.
    /// Constant for a device whose configuration never changes so.
    fn config_generation(&self) -> u32 {
        0
    }
    /// Starts the device.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// Stops the device and returns it to its state before activation.
    fn reset(&mut self);
}

#[cfg(test)]
mod tests {
    use virtio_queue::QueueT;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;

    fn activation(queues: usize) -> Activation {
        Activation {
            mem: GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap(),
            queues: (0..queues).map(|_| Queue::new(16).unwrap()).collect(),
            kicks: (0..queues)
                .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
                .collect(),
            interrupt: Arc::new(Interrupt::new(IrqLine::new(5).unwrap())),
            features: features::set(&[features::VIRTIO_F_VERSION_1]),
        }
    }

    #[test]
    fn a_device_takes_exactly_its_queues_in_order() {
        let mut a = activation(2);
        a.queues[1].set_size(8);
        let [(rx, _), (tx, _)] = a.take_queues().unwrap();
        assert_eq!((rx.size(), tx.size()), (16, 8));
        assert!(a.has_feature(features::VIRTIO_F_VERSION_1));
        assert!(!a.has_feature(features::VIRTIO_RING_F_EVENT_IDX));
        assert!(matches!(
            activation(1).take_queues::<2>(),
            Err(ActivateError::Queues { got: 1, need: 2 })
        ));
        assert!(matches!(
            activation(2).take_queues::<1>(),
            Err(ActivateError::Queues { got: 2, need: 1 })
        ));
    }
}
