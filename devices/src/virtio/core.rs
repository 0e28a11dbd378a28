// SPDX-License-Identifier: Apache-2.0
//! What every virtio transport shares (virtio 1.2, 2 and 3): feature
//! negotiation, the device status state machine, the queues the driver
//! sets up, and starting and resetting the device. The transports
//! ([`super::mmio`], [`super::pci`]) only map their registers onto it.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::features::{self, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use super::{status, Activation, Interrupt, VirtioDevice};
use crate::GuestMemory;

/// The three parts of a queue whose guest addresses the driver writes,
/// each as two 32-bit halves.
#[derive(Debug, Clone, Copy)]
pub(super) enum Ring {
    /// The descriptor table.
    Descriptors,
    /// The driver (available) ring.
    Driver,
    /// The device (used) ring.
    Device,
}

/// A virtio device and the driver-visible state around it.
pub(super) struct VirtioCore {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    kicks: Vec<EventFd>,
    /// The queue the queue registers address.
    pub(super) queue_select: u32,
    /// Which 32 bits of the device's features the driver reads.
    pub(super) device_features_select: u32,
    /// Which 32 bits of its own features the driver writes.
    pub(super) driver_features_select: u32,
    driver_features: u64,
    status: u32,
    active: bool,
}

impl std::fmt::Debug for VirtioCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioCore")
            .field("device_type", &self.device.device_type())
            .field("status", &self.status)
            .field("active", &self.active)
            .finish()
    }
}

impl VirtioCore {
    /// Wraps `device`, with one queue and one notification eventfd per queue it has.
    pub(super) fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
    ) -> std::io::Result<Self> {
        let mut queues = Vec::new();
        let mut kicks = Vec::new();
        for &max in device.queue_max_sizes() {
            queues.push(Queue::new(max).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
            })?);
            kicks.push(EventFd::new(EFD_NONBLOCK)?);
        }
        Ok(Self {
            device,
            mem,
            interrupt,
            queues,
            kicks,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            status: 0,
            active: false,
        })
    }

    /// The virtio device id.
    pub(super) fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    /// One eventfd per queue, written when the driver notifies the queue.
    pub(super) fn queue_kicks(&self) -> &[EventFd] {
        &self.kicks
    }

    /// The device's interrupt.
    pub(super) fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    /// How many queues the device has.
    pub(super) fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// The device status.
    pub(super) fn status(&self) -> u32 {
        self.status
    }

    /// Whether the driver may still set up queues and features.
    pub(super) fn configurable(&self) -> bool {
        self.status & status::DRIVER_OK == 0
    }

    /// The selected queue, if the selector names one.
    pub(super) fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_select as usize)
    }

    /// The selected queue, for set-up; `None` once the device runs.
    pub(super) fn configurable_queue(&mut self) -> Option<&mut Queue> {
        if !self.configurable() {
            return None;
        }
        self.queues.get_mut(self.queue_select as usize)
    }

    /// The driver writes the low or `high` half of the selected queue's
    /// `ring` address (ignored once the device runs).
    pub(super) fn set_queue_address(&mut self, ring: Ring, high: bool, value: u32) {
        let Some(q) = self.configurable_queue() else {
            return;
        };
        let (low_half, high_half) = if high {
            (None, Some(value))
        } else {
            (Some(value), None)
        };
        match ring {
            Ring::Descriptors => q.set_desc_table_address(low_half, high_half),
            Ring::Driver => q.set_avail_ring_address(low_half, high_half),
            Ring::Device => q.set_used_ring_address(low_half, high_half),
        }
    }

    /// The 32 bits of the device's features that the selector picks.
    pub(super) fn device_features_word(&self) -> u32 {
        match self.device_features_select {
            0 => self.device.features() as u32,
            1 => (self.device.features() >> 32) as u32,
            _ => 0,
        }
    }

    /// The 32 bits of the driver's features that the selector picks.
    pub(super) fn driver_features_word(&self) -> u32 {
        match self.driver_features_select {
            0 => self.driver_features as u32,
            1 => (self.driver_features >> 32) as u32,
            _ => 0,
        }
    }

    /// The driver writes 32 bits of its features (ignored after FEATURES_OK).
    pub(super) fn set_driver_features_word(&mut self, value: u32) {
        if self.status & status::FEATURES_OK != 0 || !self.configurable() {
            return;
        }
        let value = u64::from(value);
        match self.driver_features_select {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | value,
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (value << 32),
            _ => {}
        }
    }

    /// A queue notification that no ioeventfd took.
    pub(super) fn notify(&self, queue: u32) {
        if let Some(kick) = self.kicks.get(queue as usize) {
            let _ = kick.write(1);
        }
    }

    /// Reads the device's configuration space.
    pub(super) fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.device.read_config(offset, data);
    }

    /// The device's configuration generation.
    pub(super) fn config_generation(&self) -> u32 {
        self.device.config_generation()
    }

    /// Writes the device's configuration space.
    pub(super) fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.device.write_config(offset, data);
    }

    fn reset(&mut self) {
        if self.active {
            self.device.reset();
            self.active = false;
        }
        for q in &mut self.queues {
            q.reset();
        }
        self.interrupt.clear();
        self.queue_select = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.status = 0;
    }

    /// Status register write: the state machine of virtio 1.2, 3.1.1.
    pub(super) fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // Bits may only be added, never removed (except by a reset).
        if value & self.status != self.status {
            log::warn!(
                "virtio: the driver cleared status bits (0x{:x} -> 0x{value:x}); ignored",
                self.status
            );
            return;
        }
        let new = value & !self.status;
        if new & status::FEATURES_OK != 0 {
            let offered = self.device.features();
            let acceptable = self.driver_features & !offered == 0
                && features::has(self.driver_features, VIRTIO_F_VERSION_1);
            if !acceptable {
                log::warn!(
                    "virtio: the driver's features 0x{:x} do not fit the offer 0x{offered:x}",
                    self.driver_features
                );
                // FEATURES_OK stays clear: the driver sees the refusal.
                self.status = value & !status::FEATURES_OK;
                return;
            }
        }
        self.status = value;
        if new & status::DRIVER_OK != 0 && self.status & status::FEATURES_OK != 0 && !self.active {
            self.activate();
        }
    }

    fn fail(&mut self) {
        self.status |= status::DEVICE_NEEDS_RESET;
        self.interrupt.signal_config_change();
    }

    fn activate(&mut self) {
        let event_idx = features::has(self.driver_features, VIRTIO_RING_F_EVENT_IDX);
        let ready = self.queues.iter().filter(|q| q.ready()).count();
        let queues: Vec<Queue> = self
            .queues
            .iter()
            .map(|q| device_copy(q, event_idx))
            .collect();
        let kicks: std::io::Result<Vec<EventFd>> =
            self.kicks.iter().map(EventFd::try_clone).collect();
        let kicks = match kicks {
            Ok(kicks) => kicks,
            Err(e) => {
                log::error!("virtio: cannot clone a queue eventfd: {e}");
                self.status |= status::DEVICE_NEEDS_RESET;
                return;
            }
        };
        if ready < queues.len() || queues.iter().any(|q| !q.is_valid(&self.mem)) {
            log::warn!(
                "virtio: the driver set DRIVER_OK with {ready} of {} queues ready or valid",
                queues.len()
            );
            self.fail();
            return;
        }
        let activation = Activation {
            mem: self.mem.clone(),
            queues,
            kicks,
            interrupt: self.interrupt.clone(),
            features: self.driver_features,
        };
        match self.device.activate(activation) {
            Ok(()) => self.active = true,
            Err(e) => {
                log::error!(
                    "virtio: cannot activate device {}: {e}",
                    self.device.device_type()
                );
                self.fail();
            }
        }
    }
}

/// The device's own copy of a queue the driver set up.
fn device_copy(src: &Queue, event_idx: bool) -> Queue {
    // The size was valid when the transport's queue was made with it.
    let mut q = Queue::new(src.max_size()).unwrap_or_default();
    q.set_size(src.size());
    q.set_desc_table_address(
        Some(src.desc_table() as u32),
        Some((src.desc_table() >> 32) as u32),
    );
    q.set_avail_ring_address(
        Some(src.avail_ring() as u32),
        Some((src.avail_ring() >> 32) as u32),
    );
    q.set_used_ring_address(
        Some(src.used_ring() as u32),
        Some((src.used_ring() >> 32) as u32),
    );
    q.set_ready(src.ready());
    q.set_event_idx(event_idx);
    q
}
