// SPDX-License-Identifier: Apache-2.0
//! The virtio-mmio transport, version 2 (virtio 1.2, 4.2.2): the register
//! file and the device status state machine, in front of a [`VirtioDevice`].

use std::sync::Arc;

use virtio_queue::QueueT;
use vmm_sys_util::eventfd::EventFd;

use super::core::{Ring, VirtioCore};
use super::{Interrupt, VirtioDevice};
use crate::bus::BusDevice;
use crate::GuestMemory;

/// Register offsets.
mod reg {
    use virtio_bindings::virtio_mmio;

    pub const MAGIC: u64 = virtio_mmio::VIRTIO_MMIO_MAGIC_VALUE as u64;
    pub const VERSION: u64 = virtio_mmio::VIRTIO_MMIO_VERSION as u64;
    pub const DEVICE_ID: u64 = virtio_mmio::VIRTIO_MMIO_DEVICE_ID as u64;
    pub const VENDOR_ID: u64 = virtio_mmio::VIRTIO_MMIO_VENDOR_ID as u64;
    pub const DEVICE_FEATURES: u64 = virtio_mmio::VIRTIO_MMIO_DEVICE_FEATURES as u64;
    pub const DEVICE_FEATURES_SEL: u64 = virtio_mmio::VIRTIO_MMIO_DEVICE_FEATURES_SEL as u64;
    pub const DRIVER_FEATURES: u64 = virtio_mmio::VIRTIO_MMIO_DRIVER_FEATURES as u64;
    pub const DRIVER_FEATURES_SEL: u64 = virtio_mmio::VIRTIO_MMIO_DRIVER_FEATURES_SEL as u64;
    pub const QUEUE_SEL: u64 = virtio_mmio::VIRTIO_MMIO_QUEUE_SEL as u64;
    pub const QUEUE_NUM_MAX: u64 = virtio_mmio::VIRTIO_MMIO_QUEUE_NUM_MAX as u64;
    pub const QUEUE_NUM: u64 = virtio_mmio::VIRTIO_MMIO_QUEUE_NUM as u64;
    pub const QUEUE_READY: u64 = virtio_mmio::VIRTIO_MMIO_QUEUE_READY as u64;
    pub const QUEUE_NOTIFY: u64 = virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY as u64;
    pub const INTERRUPT_STATUS: u64 = virtio_mmio::VIRTIO_MMIO_INTERRUPT_STATUS as u64;
    pub const INTERRUPT_ACK: u64 = virtio_mmio::VIRTIO_MMIO_INTERRUPT_ACK as u64;
    pub const STATUS: u64 = virtio_mmio::VIRTIO_MMIO_STATUS as u64;
    pub const QUEUE_DESC_LOW: u64 = virtio_mmio::VIRTIO_MMIO_QUEUE_DESC_LOW as u64;
    pub const QUEUE_DESC_HIGH: u64 = virtio_mmio::VIRTIO_MMIO_QUEUE_DESC_HIGH as u64;
    pub const QUEUE_DRIVER_LOW: u64 = virtio_mmio::VIRTIO_MMIO_QUEUE_AVAIL_LOW as u64;
    pub const QUEUE_DRIVER_HIGH: u64 = virtio_mmio::VIRTIO_MMIO_QUEUE_AVAIL_HIGH as u64;
    pub const QUEUE_DEVICE_LOW: u64 = virtio_mmio::VIRTIO_MMIO_QUEUE_USED_LOW as u64;
    pub const QUEUE_DEVICE_HIGH: u64 = virtio_mmio::VIRTIO_MMIO_QUEUE_USED_HIGH as u64;
    pub const CONFIG_GENERATION: u64 = virtio_mmio::VIRTIO_MMIO_CONFIG_GENERATION as u64;
    pub const CONFIG: u64 = virtio_mmio::VIRTIO_MMIO_CONFIG as u64;
}

/// Offset of the queue-notify register, where the VMM puts its ioeventfds.
pub const QUEUE_NOTIFY_OFFSET: u64 = reg::QUEUE_NOTIFY;
/// "virt", little endian.
const MAGIC_VALUE: u32 = 0x7472_6976;
/// "FRRY".
const VENDOR_ID: u32 = 0x5952_5246;

/// A virtio device on the MMIO bus.
#[derive(Debug)]
pub struct MmioTransport {
    core: VirtioCore,
}

impl MmioTransport {
    /// Puts `device` behind an MMIO register file.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
    ) -> std::io::Result<Self> {
        Ok(Self {
            core: VirtioCore::new(device, mem, interrupt)?,
        })
    }

    /// One eventfd per queue: the VMM registers each as an ioeventfd on
    /// [`QUEUE_NOTIFY_OFFSET`] with the queue's index as datamatch.
    pub fn queue_kicks(&self) -> &[EventFd] {
        self.core.queue_kicks()
    }

    /// The device's interrupt.
    pub fn interrupt(&self) -> &Arc<Interrupt> {
        self.core.interrupt()
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        let core = &self.core;
        match offset {
            reg::MAGIC => MAGIC_VALUE,
            reg::VERSION => 2,
            reg::DEVICE_ID => core.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => core.device_features_word(),
            reg::QUEUE_NUM_MAX => core.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => core.selected_queue().map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => core.interrupt().status(),
            reg::STATUS => core.status(),
            reg::CONFIG_GENERATION => core.config_generation(),
            _ => {
                log::debug!("virtio: read of unknown register 0x{offset:x}");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        let core = &mut self.core;
        match offset {
            reg::DEVICE_FEATURES_SEL => core.device_features_select = value,
            reg::DRIVER_FEATURES_SEL => core.driver_features_select = value,
            reg::DRIVER_FEATURES => core.set_driver_features_word(value),
            reg::QUEUE_SEL => core.queue_select = value,
            reg::QUEUE_NUM => {
                if let Some(q) = core.configurable_queue() {
                    q.set_size(value as u16);
                }
            }
            reg::QUEUE_READY => {
                if let Some(q) = core.configurable_queue() {
                    q.set_ready(value == 1);
                }
            }
            reg::QUEUE_DESC_LOW | reg::QUEUE_DESC_HIGH => {
                core.set_queue_address(Ring::Descriptors, offset == reg::QUEUE_DESC_HIGH, value)
            }
            reg::QUEUE_DRIVER_LOW | reg::QUEUE_DRIVER_HIGH => {
                core.set_queue_address(Ring::Driver, offset == reg::QUEUE_DRIVER_HIGH, value)
            }
            reg::QUEUE_DEVICE_LOW | reg::QUEUE_DEVICE_HIGH => {
                core.set_queue_address(Ring::Device, offset == reg::QUEUE_DEVICE_HIGH, value)
            }
            // Reached only when no ioeventfd took the write.
            reg::QUEUE_NOTIFY => core.notify(value),
            reg::INTERRUPT_ACK => core.interrupt().ack(value),
            reg::STATUS => core.write_status(value),
            _ => log::debug!("virtio: ignored write of 0x{value:x} to register 0x{offset:x}"),
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.core.read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            log::debug!(
                "virtio: {}-byte read at 0x{offset:x} is not a register access",
                data.len()
            );
            data.fill(0);
            return;
        }
        let value = self.read_register(offset);
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            self.core.write_config(offset - reg::CONFIG, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            log::debug!(
                "virtio: {}-byte write at 0x{offset:x} is not a register access",
                data.len()
            );
            return;
        };
        if offset % 4 == 0 {
            self.write_register(offset, u32::from_le_bytes(bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::IrqLine;
    use crate::virtio::status;
    use crate::virtio::test_device::{Probe, Record};
    use vm_memory::GuestAddress;

    fn transport() -> (MmioTransport, Record) {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let probe = Probe::default();
        let (acts, resets) = (probe.activations.clone(), probe.resets.clone());
        let irq = Arc::new(Interrupt::new(IrqLine::new(5).unwrap()));
        let t = MmioTransport::new(Box::new(probe), mem, irq).unwrap();
        (t, (acts, resets))
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn set_up_queues(t: &mut MmioTransport) {
        for (i, base) in [(0u32, 0x1_0000u32), (1, 0x2_0000)] {
            w(t, reg::QUEUE_SEL, i);
            assert_eq!(r(t, reg::QUEUE_NUM_MAX), 16);
            w(t, reg::QUEUE_NUM, 16);
            w(t, reg::QUEUE_DESC_LOW, base);
            w(t, reg::QUEUE_DRIVER_LOW, base + 0x1000);
            w(t, reg::QUEUE_DEVICE_LOW, base + 0x2000);
            w(t, reg::QUEUE_READY, 1);
        }
    }

    #[test]
    fn identification_registers() {
        let (mut t, _) = transport();
        assert_eq!(r(&mut t, reg::MAGIC), MAGIC_VALUE);
        assert_eq!(r(&mut t, reg::VERSION), 2);
        assert_eq!(r(&mut t, reg::DEVICE_ID), 1);
        w(&mut t, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 1);
        w(&mut t, reg::DEVICE_FEATURES_SEL, 0);
        assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 1 << 5);
        let mut cfg = [0u8; 2];
        t.read(reg::CONFIG + 6, &mut cfg);
        assert_eq!(cfg, [6, 6]);
    }

    #[test]
    fn full_handshake_activates_once_and_reset_stops() {
        let (mut t, (acts, resets)) = transport();
        w(&mut t, reg::STATUS, status::ACKNOWLEDGE);
        w(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(&mut t, reg::DRIVER_FEATURES_SEL, 1);
        w(&mut t, reg::DRIVER_FEATURES, 1);
        w(&mut t, reg::DRIVER_FEATURES_SEL, 0);
        w(&mut t, reg::DRIVER_FEATURES, 1 << 5);
        let fok = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        w(&mut t, reg::STATUS, fok);
        assert_eq!(r(&mut t, reg::STATUS), fok);
        set_up_queues(&mut t);
        w(&mut t, reg::STATUS, fok | status::DRIVER_OK);
        assert_eq!(*acts.lock().unwrap(), vec![(1u64 << 32) | (1 << 5)]);
        // Queue set-up is frozen while running.
        w(&mut t, reg::QUEUE_SEL, 0);
        w(&mut t, reg::QUEUE_READY, 0);
        assert_eq!(r(&mut t, reg::QUEUE_READY), 1);
        w(&mut t, reg::STATUS, 0);
        assert_eq!(*resets.lock().unwrap(), 1);
        assert_eq!(r(&mut t, reg::STATUS), 0);
        assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
    }

    #[test]
    fn features_not_offered_or_legacy_are_refused() {
        let (mut t, (acts, _)) = transport();
        w(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        // Legacy: no VERSION_1.
        w(&mut t, reg::DRIVER_FEATURES, 1 << 5);
        w(
            &mut t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        assert_eq!(r(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
        // A feature never offered.
        w(&mut t, reg::STATUS, 0);
        w(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(&mut t, reg::DRIVER_FEATURES_SEL, 1);
        w(&mut t, reg::DRIVER_FEATURES, 1);
        w(&mut t, reg::DRIVER_FEATURES_SEL, 0);
        w(&mut t, reg::DRIVER_FEATURES, 1 << 6);
        w(
            &mut t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        assert_eq!(r(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
        w(
            &mut t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
        );
        assert!(
            acts.lock().unwrap().is_empty(),
            "no activation without FEATURES_OK"
        );
    }

    #[test]
    fn driver_ok_without_ready_queues_needs_reset() {
        let (mut t, (acts, _)) = transport();
        w(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(&mut t, reg::DRIVER_FEATURES_SEL, 1);
        w(&mut t, reg::DRIVER_FEATURES, 1);
        let fok = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        w(&mut t, reg::STATUS, fok);
        w(&mut t, reg::STATUS, fok | status::DRIVER_OK);
        assert!(acts.lock().unwrap().is_empty());
        assert_ne!(r(&mut t, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn the_config_generation_is_the_devices() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let probe = Probe::default();
        let generation = probe.generation.clone();
        let irq = Arc::new(Interrupt::new(IrqLine::new(5).unwrap()));
        let mut t = MmioTransport::new(Box::new(probe), mem, irq).unwrap();
        assert_eq!(r(&mut t, reg::CONFIG_GENERATION), 0);
        generation.store(0x1_0003, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(r(&mut t, reg::CONFIG_GENERATION), 0x1_0003);
    }

    #[test]
    fn odd_accesses_are_contained() {
        let (mut t, _) = transport();
        let mut b = [0xffu8; 2];
        t.read(reg::MAGIC, &mut b);
        assert_eq!(b, [0, 0]);
        t.write(reg::STATUS, &[1, 2]);
        assert_eq!(r(&mut t, reg::STATUS), 0);
        w(&mut t, reg::QUEUE_SEL, 99);
        assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 0);
        w(&mut t, reg::QUEUE_NUM, 8);
        w(&mut t, reg::QUEUE_NOTIFY, 7);
    }
}
