// SPDX-License-Identifier: Apache-2.0
//! The virtio-pci transport, modern interface only (virtio 1.2, 4.1): a PCI
//! function whose vendor capabilities point into one memory BAR holding the
//! common configuration, the ISR byte, the device configuration, the queue
//! notification registers and the MSI-X table. Interrupts are MSI-X
//! messages, one vector per queue, so the guest never reads or acks an
//! interrupt status in the hot path. There is no INTx: a driver that does
//! not enable MSI-X gets no interrupts.

use std::sync::Arc;

use virtio_queue::QueueT;
use vmm_sys_util::eventfd::EventFd;

use super::block::VIRTIO_ID_BLOCK;
use super::core::{Ring, VirtioCore};
use super::net::VIRTIO_ID_NET;
use super::{Interrupt, VirtioDevice};
use crate::bus::BusDevice;
use crate::pci::config::{self, ConfigSpace, Identity};
use crate::pci::msix::{self, MsiSink, Msix};
use crate::pci::{PciFunction, CAP_MSIX, CAP_VENDOR};
use crate::GuestMemory;

/// Size of the BAR (a power of two, so the guest can size it).
pub const BAR_SIZE: u64 = 0x8000;
/// Offsets of the structures inside the BAR.
pub(super) mod bar {
    pub const COMMON: u64 = 0x0000;
    pub const COMMON_LEN: u64 = 0x40;
    pub const ISR: u64 = 0x1000;
    pub const ISR_LEN: u64 = 4;
    pub const DEVICE: u64 = 0x2000;
    pub const DEVICE_LEN: u64 = 0x1000;
    pub const NOTIFY: u64 = 0x3000;
    pub const NOTIFY_LEN: u64 = 0x1000;
    pub const MSIX_TABLE: u64 = 0x4000;
    pub const MSIX_TABLE_LEN: u64 = 0x1000;
    pub const MSIX_PBA: u64 = 0x5000;
    pub const MSIX_PBA_LEN: u64 = 0x1000;
}

/// Offset in the BAR of queue `queue`'s notification register: the VMM
/// puts an ioeventfd there.
pub fn notify_offset(queue: usize) -> u64 {
    bar::NOTIFY + queue as u64 * u64::from(NOTIFY_MULTIPLIER)
}

/// Bytes between two queues' notification registers.
const NOTIFY_MULTIPLIER: u32 = 4;
/// Red Hat's vendor id, which virtio devices use.
const VIRTIO_VENDOR: u16 = 0x1af4;
/// Modern device ids are 0x1040 plus the virtio device id.
const DEVICE_ID_BASE: u16 = 0x1040;

/// `cfg_type` of the virtio capabilities (virtio 1.2, 4.1.4).
mod cfg_type {
    pub const COMMON: u8 = 1;
    pub const NOTIFY: u8 = 2;
    pub const ISR: u8 = 3;
    pub const DEVICE: u8 = 4;
    pub const PCI: u8 = 5;
}

/// Offsets in the common configuration structure (virtio 1.2, 4.1.4.3).
pub(super) mod common {
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    pub const DEVICE_FEATURE: u64 = 0x04;
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    pub const DRIVER_FEATURE: u64 = 0x0c;
    pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
    pub const NUM_QUEUES: u64 = 0x12;
    pub const DEVICE_STATUS: u64 = 0x14;
    pub const CONFIG_GENERATION: u64 = 0x15;
    pub const QUEUE_SELECT: u64 = 0x16;
    pub const QUEUE_SIZE: u64 = 0x18;
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    pub const QUEUE_ENABLE: u64 = 0x1c;
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    pub const QUEUE_DESC_LO: u64 = 0x20;
    pub const QUEUE_DESC_HI: u64 = 0x24;
    pub const QUEUE_DRIVER_LO: u64 = 0x28;
    pub const QUEUE_DRIVER_HI: u64 = 0x2c;
    pub const QUEUE_DEVICE_LO: u64 = 0x30;
    pub const QUEUE_DEVICE_HI: u64 = 0x34;
}

/// The PCI class of a virtio device type.
fn class_of(device_type: u32) -> u32 {
    match device_type {
        VIRTIO_ID_NET => 0x02_0000,   // network controller, Ethernet
        VIRTIO_ID_BLOCK => 0x01_8000, // mass storage, other
        _ => 0xff_0000,
    }
}

/// Body of a virtio capability (after id and next): the structure of
/// `cfg_type` at `offset`, `length` bytes long, in BAR 0.
fn virtio_cap(cfg_type: u8, offset: u64, length: u64, extra: &[u8]) -> Vec<u8> {
    let cap_len = 16 + extra.len() as u8;
    let mut body = vec![cap_len, cfg_type, 0, 0, 0, 0];
    body.extend_from_slice(&(offset as u32).to_le_bytes());
    body.extend_from_slice(&(length as u32).to_le_bytes());
    body.extend_from_slice(extra);
    body
}

/// A virtio device as a PCI function.
pub struct VirtioPci {
    core: VirtioCore,
    config: ConfigSpace,
    msix: Arc<Msix>,
    bar_address: u32,
    msix_control: usize,
    pci_cfg: usize,
}

impl std::fmt::Debug for VirtioPci {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioPci")
            .field("core", &self.core)
            .field("bar_address", &self.bar_address)
            .finish()
    }
}

impl VirtioPci {
    /// Puts `device` behind a PCI function whose BAR 0 is at `bar_address`
    /// ([`BAR_SIZE`] bytes); its MSI messages go to `sink`.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        bar_address: u32,
        sink: Arc<dyn MsiSink>,
    ) -> std::io::Result<Self> {
        let device_type = device.device_type();
        let queues = device.queue_max_sizes().len();
        // One vector per queue and one for configuration changes.
        let msix = Arc::new(Msix::new(queues as u16 + 1, sink));
        let interrupt = Arc::new(Interrupt::msix(msix.clone(), queues));
        let core = VirtioCore::new(device, mem, interrupt)?;

        let mut config = ConfigSpace::new(Identity {
            vendor: VIRTIO_VENDOR,
            device: DEVICE_ID_BASE + device_type as u16,
            revision: 1,
            class: class_of(device_type),
            subsystem_vendor: VIRTIO_VENDOR,
            subsystem: 0x40,
        });
        config.set_memory_bar(0, bar_address, BAR_SIZE as u32);
        let full = || std::io::Error::other("PCI configuration space full");
        let caps = [
            virtio_cap(cfg_type::COMMON, bar::COMMON, bar::COMMON_LEN, &[]),
            virtio_cap(cfg_type::ISR, bar::ISR, bar::ISR_LEN, &[]),
            virtio_cap(cfg_type::DEVICE, bar::DEVICE, bar::DEVICE_LEN, &[]),
            virtio_cap(
                cfg_type::NOTIFY,
                bar::NOTIFY,
                bar::NOTIFY_LEN,
                &NOTIFY_MULTIPLIER.to_le_bytes(),
            ),
        ];
        for body in caps {
            config
                .add_capability(CAP_VENDOR, &body, &[])
                .ok_or_else(full)?;
        }
        // The PCI configuration access capability: the driver writes bar,
        // offset and length, then reaches the BAR through pci_cfg_data.
        let pci_cfg_body = virtio_cap(cfg_type::PCI, 0, 0, &[0; 4]);
        let mut writable = vec![0u8; pci_cfg_body.len()];
        writable[2] = 0xff; // bar
        writable[6..18].fill(0xff); // offset, length, data
        let pci_cfg = config
            .add_capability(CAP_VENDOR, &pci_cfg_body, &writable)
            .ok_or_else(full)?;
        let table_size = msix.vectors() - 1;
        let mut msix_body = table_size.to_le_bytes().to_vec();
        msix_body.extend_from_slice(&(bar::MSIX_TABLE as u32).to_le_bytes());
        msix_body.extend_from_slice(&(bar::MSIX_PBA as u32).to_le_bytes());
        let control_writable = (msix::CONTROL_ENABLE | msix::CONTROL_FUNCTION_MASK).to_le_bytes();
        let msix_cap = config
            .add_capability(CAP_MSIX, &msix_body, &control_writable)
            .ok_or_else(full)?;
        Ok(Self {
            core,
            config,
            msix,
            bar_address,
            msix_control: msix_cap + 2,
            pci_cfg,
        })
    }

    /// One eventfd per queue: the VMM registers each as an ioeventfd at
    /// the BAR's address plus [`notify_offset`].
    pub fn queue_kicks(&self) -> &[EventFd] {
        self.core.queue_kicks()
    }

    /// The common configuration structure as the driver reads it now.
    fn common_snapshot(&self) -> [u8; bar::COMMON_LEN as usize] {
        let core = &self.core;
        let mut s = [0u8; bar::COMMON_LEN as usize];
        let mut put = |offset: u64, bytes: &[u8]| {
            s[offset as usize..offset as usize + bytes.len()].copy_from_slice(bytes)
        };
        put(
            common::DEVICE_FEATURE_SELECT,
            &core.device_features_select.to_le_bytes(),
        );
        put(
            common::DEVICE_FEATURE,
            &core.device_features_word().to_le_bytes(),
        );
        put(
            common::DRIVER_FEATURE_SELECT,
            &core.driver_features_select.to_le_bytes(),
        );
        put(
            common::DRIVER_FEATURE,
            &core.driver_features_word().to_le_bytes(),
        );
        put(
            common::CONFIG_MSIX_VECTOR,
            &core.interrupt().config_vector().to_le_bytes(),
        );
        put(
            common::NUM_QUEUES,
            &(core.queue_count() as u16).to_le_bytes(),
        );
        put(common::DEVICE_STATUS, &[core.status() as u8]);
        // The field is 8 bits wide: the generation's low byte.
        put(common::CONFIG_GENERATION, &[core.config_generation() as u8]);
        put(
            common::QUEUE_SELECT,
            &(core.queue_select as u16).to_le_bytes(),
        );
        let selected = core.queue_select as usize;
        if let Some(q) = core.selected_queue() {
            put(common::QUEUE_SIZE, &q.size().to_le_bytes());
            put(
                common::QUEUE_MSIX_VECTOR,
                &core.interrupt().queue_vector(selected).to_le_bytes(),
            );
            put(common::QUEUE_ENABLE, &u16::from(q.ready()).to_le_bytes());
            put(common::QUEUE_NOTIFY_OFF, &(selected as u16).to_le_bytes());
            put(common::QUEUE_DESC_LO, &q.desc_table().to_le_bytes());
            put(common::QUEUE_DRIVER_LO, &q.avail_ring().to_le_bytes());
            put(common::QUEUE_DEVICE_LO, &q.used_ring().to_le_bytes());
        }
        s
    }

    fn write_common(&mut self, offset: u64, data: &[u8]) {
        let mut bytes = [0u8; 4];
        let n = data.len().min(4);
        bytes[..n].copy_from_slice(&data[..n]);
        let value = u32::from_le_bytes(bytes);
        let core = &mut self.core;
        match (offset, data.len()) {
            (common::DEVICE_FEATURE_SELECT, 4) => core.device_features_select = value,
            (common::DRIVER_FEATURE_SELECT, 4) => core.driver_features_select = value,
            (common::DRIVER_FEATURE, 4) => core.set_driver_features_word(value),
            (common::CONFIG_MSIX_VECTOR, 2) => {
                core.interrupt().set_config_vector(value as u16);
            }
            (common::DEVICE_STATUS, 1) => core.write_status(value),
            (common::QUEUE_SELECT, 2) => core.queue_select = value,
            (common::QUEUE_MSIX_VECTOR, 2) => {
                let queue = core.queue_select as usize;
                if core.configurable() {
                    core.interrupt().set_queue_vector(queue, value as u16);
                }
            }
            (common::QUEUE_SIZE, 2) => {
                if let Some(q) = core.configurable_queue() {
                    q.set_size(value as u16);
                }
            }
            (common::QUEUE_ENABLE, 2) => {
                if let Some(q) = core.configurable_queue() {
                    // Only enabling is defined; 0 is ignored (4.1.4.3.2).
                    if value == 1 {
                        q.set_ready(true);
                    }
                }
            }
            (common::QUEUE_DESC_LO | common::QUEUE_DESC_HI, 4) => {
                core.set_queue_address(Ring::Descriptors, offset == common::QUEUE_DESC_HI, value)
            }
            (common::QUEUE_DRIVER_LO | common::QUEUE_DRIVER_HI, 4) => {
                core.set_queue_address(Ring::Driver, offset == common::QUEUE_DRIVER_HI, value)
            }
            (common::QUEUE_DEVICE_LO | common::QUEUE_DEVICE_HI, 4) => {
                core.set_queue_address(Ring::Device, offset == common::QUEUE_DEVICE_HI, value)
            }
            _ => log::debug!(
                "virtio-pci: ignored {}-byte write at common 0x{offset:x}",
                data.len()
            ),
        }
    }

    /// A read of BAR 0 at `offset`.
    fn read_bar(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        match offset {
            o if o < bar::COMMON + bar::COMMON_LEN => {
                let snapshot = self.common_snapshot();
                let o = o as usize;
                if let Some(bytes) = snapshot.get(o..o + data.len()) {
                    data.copy_from_slice(bytes);
                }
            }
            bar::ISR => {
                if let Some(byte) = data.first_mut() {
                    *byte = self.core.interrupt().take_status() as u8;
                }
            }
            o if (bar::DEVICE..bar::DEVICE + bar::DEVICE_LEN).contains(&o) => {
                self.core.read_config(o - bar::DEVICE, data)
            }
            o if (bar::MSIX_TABLE..bar::MSIX_TABLE + bar::MSIX_TABLE_LEN).contains(&o) => {
                self.msix.read_table(o - bar::MSIX_TABLE, data)
            }
            o if (bar::MSIX_PBA..bar::MSIX_PBA + bar::MSIX_PBA_LEN).contains(&o) => {
                self.msix.read_pba(o - bar::MSIX_PBA, data)
            }
            _ => {}
        }
    }

    /// A write to BAR 0 at `offset`.
    fn write_bar(&mut self, offset: u64, data: &[u8]) {
        match offset {
            o if o < bar::COMMON + bar::COMMON_LEN => self.write_common(o, data),
            o if (bar::DEVICE..bar::DEVICE + bar::DEVICE_LEN).contains(&o) => {
                self.core.write_config(o - bar::DEVICE, data)
            }
            // Reached only when no ioeventfd took the write.
            o if (bar::NOTIFY..bar::NOTIFY + bar::NOTIFY_LEN).contains(&o) => {
                let queue = (o - bar::NOTIFY) / u64::from(NOTIFY_MULTIPLIER);
                self.core.notify(queue as u32);
            }
            o if (bar::MSIX_TABLE..bar::MSIX_TABLE + bar::MSIX_TABLE_LEN).contains(&o) => {
                self.msix.write_table(o - bar::MSIX_TABLE, data)
            }
            _ => log::debug!("virtio-pci: ignored write at BAR offset 0x{offset:x}"),
        }
    }

    /// An access through the PCI configuration access capability's window:
    /// the BAR access that its bar, offset and length fields describe.
    fn pci_cfg_window(&self) -> Option<(u64, usize)> {
        let mut bar = [0u8];
        self.config.read(self.pci_cfg + 4, &mut bar);
        let offset = u64::from(self.config.dword(self.pci_cfg + 8));
        let length = self.config.dword(self.pci_cfg + 12) as usize;
        (bar[0] == 0 && matches!(length, 1 | 2 | 4) && offset + length as u64 <= BAR_SIZE)
            .then_some((offset, length))
    }

    fn touches(offset: usize, len: usize, field: usize, field_len: usize) -> bool {
        offset < field + field_len && field < offset + len
    }
}

impl PciFunction for VirtioPci {
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        let data_field = self.pci_cfg + 16;
        if Self::touches(offset, data.len(), data_field, 4) {
            if let Some((bar_offset, length)) = self.pci_cfg_window() {
                let mut value = [0u8; 4];
                self.read_bar(bar_offset, &mut value[..length]);
                self.config.set(data_field, &value);
            }
        }
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
        if Self::touches(offset, data.len(), self.msix_control, 2) {
            self.msix.set_control(self.config.word(self.msix_control));
        }
        if Self::touches(offset, data.len(), config::BAR0, 4) {
            let address = self.config.bar_address(0);
            let sizing = address == !(BAR_SIZE as u32 - 1);
            if address != self.bar_address && !sizing {
                log::warn!(
                    "virtio-pci: the guest moved BAR 0 to 0x{address:x}; it stays at 0x{:x}",
                    self.bar_address
                );
            }
        }
        let data_field = self.pci_cfg + 16;
        if Self::touches(offset, data.len(), data_field, 4) {
            if let Some((bar_offset, length)) = self.pci_cfg_window() {
                let value = self.config.dword(data_field).to_le_bytes();
                self.write_bar(bar_offset, &value[..length]);
            }
        }
    }
}

impl BusDevice for VirtioPci {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.read_bar(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.write_bar(offset, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::msix::Recorder;
    use crate::virtio::status;
    use crate::virtio::test_device::{Probe, Record};
    use vm_memory::GuestAddress;

    const BAR: u32 = 0xe000_8000;

    fn function() -> (VirtioPci, Record, Arc<Recorder>) {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let probe = Probe::default();
        let record = (probe.activations.clone(), probe.resets.clone());
        let sink = Arc::new(Recorder::default());
        let f = VirtioPci::new(Box::new(probe), mem, BAR, sink.clone()).unwrap();
        (f, record, sink)
    }

    fn cfg32(f: &mut VirtioPci, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        f.config_read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn read(f: &mut VirtioPci, offset: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        f.read(offset, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    fn write(f: &mut VirtioPci, offset: u64, len: usize, value: u64) {
        f.write(offset, &value.to_le_bytes()[..len]);
    }

    /// The capabilities, as (id, offset in config space), in list order.
    fn capabilities(f: &mut VirtioPci) -> Vec<(u8, usize)> {
        let mut caps = Vec::new();
        let mut next = cfg32(f, 0x34) as u8 as usize;
        while next != 0 {
            let head = cfg32(f, next);
            caps.push((head as u8, next));
            next = (head >> 8) as u8 as usize;
        }
        caps
    }

    #[test]
    fn the_function_says_it_is_a_modern_virtio_device() {
        let (mut f, _, _) = function();
        assert_eq!(cfg32(&mut f, 0), 0x1041_1af4);
        assert_eq!(cfg32(&mut f, 8) >> 8, 0x02_0000);
        assert_eq!(cfg32(&mut f, 8) & 0xff, 1);
        assert_eq!(cfg32(&mut f, 0x2c), 0x0040_1af4);
        // Interrupt pin: none.
        assert_eq!(cfg32(&mut f, 0x3c) >> 8 & 0xff, 0);
        // BAR 0: sized, then back where it was.
        f.config_write(0x10, &u32::MAX.to_le_bytes());
        assert_eq!(cfg32(&mut f, 0x10), !(BAR_SIZE as u32 - 1));
        f.config_write(0x10, &BAR.to_le_bytes());
        assert_eq!(cfg32(&mut f, 0x10), BAR);
        // Common, ISR, device, notify, PCI access, then MSI-X.
        let caps = capabilities(&mut f);
        let types: Vec<(u8, u8)> = caps
            .iter()
            .map(|&(id, at)| (id, (cfg32(&mut f, at) >> 24) as u8))
            .collect();
        assert_eq!(types[..5], [(9, 1), (9, 3), (9, 4), (9, 2), (9, 5)]);
        assert_eq!(types[5].0, CAP_MSIX);
        let notify = caps[3].1;
        assert_eq!(cfg32(&mut f, notify + 8), bar::NOTIFY as u32);
        assert_eq!(cfg32(&mut f, notify + 16), NOTIFY_MULTIPLIER);
        // MSI-X: three vectors (two queues and the configuration), table and PBA in BAR 0.
        let msix = caps[5].1;
        assert_eq!(cfg32(&mut f, msix) >> 16 & 0x7ff, 2);
        assert_eq!(cfg32(&mut f, msix + 4), bar::MSIX_TABLE as u32);
        assert_eq!(cfg32(&mut f, msix + 8), bar::MSIX_PBA as u32);
    }

    /// Drives the handshake a Linux driver does; returns the MSI-X capability offset.
    fn bring_up(f: &mut VirtioPci) -> usize {
        let msix = capabilities(f)[5].1;
        f.config_write(msix + 2, &msix::CONTROL_ENABLE.to_le_bytes());
        for vector in 0..3u64 {
            write(f, bar::MSIX_TABLE + 16 * vector, 8, 0xfee0_0000);
            write(f, bar::MSIX_TABLE + 16 * vector + 8, 4, 0x30 + vector);
            write(f, bar::MSIX_TABLE + 16 * vector + 12, 4, 0);
        }
        write(
            f,
            common::DEVICE_STATUS,
            1,
            u64::from(status::ACKNOWLEDGE | status::DRIVER),
        );
        write(f, common::DEVICE_FEATURE_SELECT, 4, 1);
        assert_eq!(read(f, common::DEVICE_FEATURE, 4), 1);
        write(f, common::DRIVER_FEATURE_SELECT, 4, 1);
        write(f, common::DRIVER_FEATURE, 4, 1);
        write(f, common::DRIVER_FEATURE_SELECT, 4, 0);
        write(f, common::DRIVER_FEATURE, 4, 1 << 5);
        let fok = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        write(f, common::DEVICE_STATUS, 1, u64::from(fok));
        assert_eq!(read(f, common::DEVICE_STATUS, 1), u64::from(fok));
        write(f, common::CONFIG_MSIX_VECTOR, 2, 0);
        assert_eq!(read(f, common::CONFIG_MSIX_VECTOR, 2), 0);
        assert_eq!(read(f, common::NUM_QUEUES, 2), 2);
        for (queue, base) in [(0u64, 0x1_0000u64), (1, 0x2_0000)] {
            write(f, common::QUEUE_SELECT, 2, queue);
            assert_eq!(read(f, common::QUEUE_SIZE, 2), 16);
            assert_eq!(read(f, common::QUEUE_NOTIFY_OFF, 2), queue);
            write(f, common::QUEUE_MSIX_VECTOR, 2, queue + 1);
            assert_eq!(read(f, common::QUEUE_MSIX_VECTOR, 2), queue + 1);
            write(f, common::QUEUE_DESC_LO, 4, base);
            write(f, common::QUEUE_DESC_HI, 4, 0);
            write(f, common::QUEUE_DRIVER_LO, 4, base + 0x1000);
            write(f, common::QUEUE_DEVICE_LO, 4, base + 0x2000);
            write(f, common::QUEUE_ENABLE, 2, 1);
            assert_eq!(read(f, common::QUEUE_DESC_LO, 8), base);
        }
        write(
            f,
            common::DEVICE_STATUS,
            1,
            u64::from(fok | status::DRIVER_OK),
        );
        msix
    }

    #[test]
    fn a_driver_brings_the_device_up_and_each_queue_has_its_vector() {
        let (mut f, (acts, resets), sink) = function();
        bring_up(&mut f);
        assert_eq!(*acts.lock().unwrap(), vec![(1u64 << 32) | (1 << 5)]);
        let interrupt = f.core.interrupt().clone();
        interrupt.signal_used_queue(1);
        interrupt.signal_used_queue(0);
        interrupt.signal_config_change();
        assert_eq!(
            *sink.0.lock().unwrap(),
            vec![
                (0xfee0_0000, 0x32),
                (0xfee0_0000, 0x31),
                (0xfee0_0000, 0x30)
            ]
        );
        // The ISR byte reads the causes once.
        assert_eq!(read(&mut f, bar::ISR, 1), 3);
        assert_eq!(read(&mut f, bar::ISR, 1), 0);
        // Device configuration space.
        assert_eq!(read(&mut f, bar::DEVICE + 4, 2), 0x0404);
        // A reset stops the device and forgets the vectors.
        write(&mut f, common::DEVICE_STATUS, 1, 0);
        assert_eq!(read(&mut f, common::DEVICE_STATUS, 1), 0);
        assert_eq!(*resets.lock().unwrap(), 1);
        assert_eq!(read(&mut f, common::CONFIG_MSIX_VECTOR, 2), 0xffff);
    }

    #[test]
    fn vectors_outside_the_table_are_refused() {
        let (mut f, _, _) = function();
        write(&mut f, common::CONFIG_MSIX_VECTOR, 2, 3);
        assert_eq!(read(&mut f, common::CONFIG_MSIX_VECTOR, 2), 0xffff);
        write(&mut f, common::QUEUE_SELECT, 2, 7);
        write(&mut f, common::QUEUE_MSIX_VECTOR, 2, 1);
        assert_eq!(read(&mut f, common::QUEUE_MSIX_VECTOR, 2), 0);
        assert_eq!(read(&mut f, common::QUEUE_SIZE, 2), 0);
    }

    #[test]
    fn masked_vectors_wait_and_the_pci_access_window_reaches_the_bar() {
        let (mut f, _, sink) = function();
        let msix = bring_up(&mut f);
        let control = msix::CONTROL_ENABLE | msix::CONTROL_FUNCTION_MASK;
        f.config_write(msix + 2, &control.to_le_bytes());
        f.core.interrupt().signal_used_queue(0);
        assert!(sink.0.lock().unwrap().is_empty());
        assert_eq!(read(&mut f, bar::MSIX_PBA, 1), 0b10);
        f.config_write(msix + 2, &msix::CONTROL_ENABLE.to_le_bytes());
        assert_eq!(*sink.0.lock().unwrap(), vec![(0xfee0_0000, 0x31)]);
        // The PCI configuration access capability: read num_queues through it.
        let window = capabilities(&mut f)[4].1;
        f.config_write(window + 4, &[0]);
        f.config_write(window + 8, &(common::NUM_QUEUES as u32).to_le_bytes());
        f.config_write(window + 12, &2u32.to_le_bytes());
        assert_eq!(cfg32(&mut f, window + 16) & 0xffff, 2);
        // A length the window cannot do reads nothing new.
        f.config_write(window + 12, &3u32.to_le_bytes());
        f.config_read(window + 16, &mut [0u8; 4]);
    }

    #[test]
    fn the_config_generation_is_the_devices_low_byte() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let probe = Probe::default();
        let generation = probe.generation.clone();
        let sink = Arc::new(Recorder::default());
        let mut f = VirtioPci::new(Box::new(probe), mem, BAR, sink).unwrap();
        assert_eq!(read(&mut f, common::CONFIG_GENERATION, 1), 0);
        generation.store(0x1_0203, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(read(&mut f, common::CONFIG_GENERATION, 1), 3);
        // Next to the status byte, in one 4-byte read.
        assert_eq!(read(&mut f, common::DEVICE_STATUS, 4) >> 8 & 0xff, 3);
    }

    #[test]
    fn odd_bar_accesses_are_contained() {
        let (mut f, _, _) = function();
        write(&mut f, common::DEVICE_STATUS, 4, 0xff);
        assert_eq!(read(&mut f, common::DEVICE_STATUS, 1), 0);
        write(&mut f, common::QUEUE_SELECT, 2, 0xffff);
        write(&mut f, common::QUEUE_ENABLE, 2, 1);
        write(&mut f, bar::NOTIFY + 4 * 100, 2, 0);
        write(&mut f, BAR_SIZE - 1, 1, 0);
        assert_eq!(read(&mut f, bar::COMMON_LEN - 4, 8), 0);
        assert_eq!(read(&mut f, BAR_SIZE - 4, 4), 0);
    }
}
