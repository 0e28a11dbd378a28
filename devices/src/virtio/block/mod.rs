// SPDX-License-Identifier: Apache-2.0
//! virtio-blk over a raw image: the device model (features, configuration
//! space, cache mode) here, requests in [`request`], the image in
//! [`disk`], the I/O thread in [`worker`].

pub mod disk;
pub mod request;
mod worker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device_thread::DeviceThread;
use super::read_config_bytes;
use super::{
    ActivateError, Activation, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
};
pub use disk::{DiskError, DiskImage};
pub use request::ID_LEN;
pub use worker::BlockStats;

/// virtio device id of a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;
/// Entries in the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Largest data segment the driver may use.
const SIZE_MAX: u32 = 1 << 20;
/// Most data segments in one request (the header and status take two descriptors).
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Most sectors in one discard or write-zeroes range (2 GiB).
const MAX_ZEROES_SECTORS: u32 = 1 << 22;
/// Discard granularity in sectors (the host's page).
const DISCARD_ALIGNMENT: u32 = 8;
/// Offset of `writeback` in the configuration space.
const WRITEBACK_OFFSET: u64 = 32;

/// Feature bits (virtio 1.2, 5.2.3).
mod feature {
    pub const SIZE_MAX: u32 = 1;
    pub const SEG_MAX: u32 = 2;
    pub const RO: u32 = 5;
    pub const BLK_SIZE: u32 = 6;
    pub const FLUSH: u32 = 9;
    pub const CONFIG_WCE: u32 = 11;
    pub const DISCARD: u32 = 13;
    pub const WRITE_ZEROES: u32 = 14;
}

/// A virtio-blk disk backed by an image file.
#[derive(Debug)]
pub struct Block {
    name: String,
    disk: Arc<DiskImage>,
    serial: [u8; ID_LEN],
    writeback: Arc<AtomicBool>,
    stats: Arc<BlockStats>,
    worker: Option<DeviceThread<()>>,
}

impl Block {
    /// A disk whose I/O thread is called `name`, with a serial number
    /// (GET_ID) of at most [`ID_LEN`] bytes; longer ones are cut.
    pub fn new(name: String, disk: DiskImage, serial: &str) -> Self {
        let mut id = [0u8; ID_LEN];
        let n = serial.len().min(ID_LEN);
        id[..n].copy_from_slice(&serial.as_bytes()[..n]);
        Self {
            name,
            disk: Arc::new(disk),
            serial: id,
            writeback: Arc::new(AtomicBool::new(true)),
            stats: Arc::new(BlockStats::default()),
            worker: None,
        }
    }

    /// The disk's counters.
    pub fn stats(&self) -> Arc<BlockStats> {
        self.stats.clone()
    }

    /// The configuration space (`struct virtio_blk_config`, 60 bytes).
    fn config_bytes(&self) -> [u8; 60] {
        let mut c = [0u8; 60];
        let mut put = |offset: usize, bytes: &[u8]| {
            c[offset..offset + bytes.len()].copy_from_slice(bytes);
        };
        put(0, &self.disk.sectors().to_le_bytes());
        put(8, &SIZE_MAX.to_le_bytes());
        put(12, &SEG_MAX.to_le_bytes());
        put(20, &512u32.to_le_bytes());
        put(32, &[u8::from(self.writeback.load(Ordering::Relaxed))]);
        put(34, &1u16.to_le_bytes());
        put(36, &MAX_ZEROES_SECTORS.to_le_bytes());
        put(40, &request::MAX_RANGES.to_le_bytes());
        put(44, &DISCARD_ALIGNMENT.to_le_bytes());
        put(48, &MAX_ZEROES_SECTORS.to_le_bytes());
        put(52, &request::MAX_RANGES.to_le_bytes());
        put(56, &[1]);
        c
    }

    fn stop_worker(&mut self) {
        if let Some(worker) = self.worker.take() {
            if worker.stop().is_none() {
                log::error!("{}: the I/O thread panicked", self.name);
            }
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let mut bits = vec![
            VIRTIO_F_VERSION_1,
            VIRTIO_RING_F_EVENT_IDX,
            VIRTIO_RING_F_INDIRECT_DESC,
            feature::SIZE_MAX,
            feature::SEG_MAX,
            feature::BLK_SIZE,
            feature::FLUSH,
            feature::CONFIG_WCE,
        ];
        if self.disk.read_only() {
            bits.push(feature::RO);
        } else {
            bits.extend([feature::DISCARD, feature::WRITE_ZEROES]);
        }
        bits.iter().fold(0, |acc, bit| acc | (1u64 << bit))
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only the cache mode is writable (CONFIG_WCE).
        if offset == WRITEBACK_OFFSET && data.len() == 1 {
            let writeback = data[0] != 0;
            log::debug!(
                "{}: the guest chose a {} cache",
                self.name,
                if writeback {
                    "writeback"
                } else {
                    "write-through"
                }
            );
            self.writeback.store(writeback, Ordering::Relaxed);
        }
    }

    fn activate(&mut self, mut activation: Activation) -> Result<(), ActivateError> {
        let (Some(queue), Some(kick)) = (activation.queues.pop(), activation.kicks.pop()) else {
            return Err(ActivateError::Queues { got: 0, need: 1 });
        };
        let stop = EventFd::new(EFD_NONBLOCK).map_err(ActivateError::Worker)?;
        // Without CONFIG_WCE the driver assumes writeback when FLUSH is there.
        if activation.features & (1 << feature::CONFIG_WCE) == 0 {
            self.writeback.store(true, Ordering::Relaxed);
        }
        let worker = worker::BlockWorker {
            name: self.name.clone(),
            mem: activation.mem,
            queue,
            kick,
            stop: stop.try_clone().map_err(ActivateError::Worker)?,
            interrupt: activation.interrupt,
            disk: self.disk.clone(),
            serial: self.serial,
            writeback: self.writeback.clone(),
            stats: self.stats.clone(),
            stopped: false,
        };
        let thread = DeviceThread::spawn(self.name.clone(), stop, move || worker.run())
            .map_err(ActivateError::Worker)?;
        self.worker = Some(thread);
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_worker();
        self.writeback.store(true, Ordering::Relaxed);
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

#[cfg(test)]
mod tests;
