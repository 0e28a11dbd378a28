// SPDX-License-Identifier: Apache-2.0
//! virtio-blk over a raw image: the device model (features, configuration
//! space, cache mode) here, requests in [`request`], the image in
//! [`disk`], swapping it live in [`backing`], the I/O thread in [`worker`].

pub mod backing;
pub mod disk;
pub mod request;
mod worker;

use ferry_confine::seccomp::ThreadKind;
use std::mem::offset_of;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_blk::virtio_blk_config;
use virtio_bindings::virtio_ids;

use super::device_thread::DeviceThread;
use super::{features, read_config_bytes, ConfigLayout};
use super::{ActivateError, Activation, VirtioDevice};
use backing::Backing;
pub use backing::{BackingHandle, SwapError};
pub use disk::{DiskError, DiskImage};
pub use request::ID_LEN;
pub use worker::BlockStats;

/// virtio device id of a block device.
pub const VIRTIO_ID_BLOCK: u32 = virtio_ids::VIRTIO_ID_BLOCK;
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
/// Logical block size the driver is told (BLK_SIZE): one sector.
const BLK_SIZE: u32 = 512;
/// Offset of `writeback` (`wce`) in the configuration space.
const WRITEBACK_OFFSET: u64 = offset_of!(virtio_blk_config, wce) as u64;
/// Bytes of the configuration space ferry fills: up to the secure-erase
/// and zoned fields, whose features it does not offer.
const CONFIG_LEN: usize = offset_of!(virtio_blk_config, max_secure_erase_sectors);

/// Feature bits (virtio 1.2, 5.2.3).
mod feature {
    use virtio_bindings::virtio_blk;

    /// `size_max` holds the largest data segment.
    pub const SIZE_MAX: u32 = virtio_blk::VIRTIO_BLK_F_SIZE_MAX;
    /// `seg_max` holds the most segments in a request.
    pub const SEG_MAX: u32 = virtio_blk::VIRTIO_BLK_F_SEG_MAX;
    /// The disk is read-only (its first image was opened so).
    pub const RO: u32 = virtio_blk::VIRTIO_BLK_F_RO;
    /// `blk_size` holds the logical block size.
    pub const BLK_SIZE: u32 = virtio_blk::VIRTIO_BLK_F_BLK_SIZE;
    /// The device takes flush requests.
    pub const FLUSH: u32 = virtio_blk::VIRTIO_BLK_F_FLUSH;
    /// The guest may switch the cache between writeback and write-through.
    pub const CONFIG_WCE: u32 = virtio_blk::VIRTIO_BLK_F_CONFIG_WCE;
    /// The device takes discard requests (holes punched in the image).
    pub const DISCARD: u32 = virtio_blk::VIRTIO_BLK_F_DISCARD;
    /// The device takes write-zeroes requests.
    pub const WRITE_ZEROES: u32 = virtio_blk::VIRTIO_BLK_F_WRITE_ZEROES;
}

/// What every disk offers.
const FEATURES: u64 = features::COMMON
    | features::set(&[
        feature::SIZE_MAX,
        feature::SEG_MAX,
        feature::BLK_SIZE,
        feature::FLUSH,
        feature::CONFIG_WCE,
    ]);
/// What a read-only disk offers besides.
const READ_ONLY_FEATURES: u64 = features::set(&[feature::RO]);
/// What a writable disk offers besides.
const WRITABLE_FEATURES: u64 = features::set(&[feature::DISCARD, feature::WRITE_ZEROES]);

/// A virtio-blk disk backed by an image file, which the VMM may swap
/// while the guest runs (see [`Block::backing_handle`]).
#[derive(Debug)]
pub struct Block {
    name: String,
    backing: Arc<Backing>,
    serial: [u8; ID_LEN],
    writeback: Arc<AtomicBool>,
    stats: Arc<BlockStats>,
    worker: DeviceThread<()>,
}

impl Block {
    /// A disk whose I/O thread is called `name`, with a serial number
    /// (GET_ID) of at most [`ID_LEN`] bytes; longer ones are cut. The
    /// disk is read-only for its life if `disk` was opened so.
    pub fn new(name: String, disk: DiskImage, serial: &str) -> Self {
        let mut id = [0u8; ID_LEN];
        let n = serial.len().min(ID_LEN);
        id[..n].copy_from_slice(&serial.as_bytes()[..n]);
        Self {
            backing: Arc::new(Backing::new(name.clone(), disk)),
            worker: DeviceThread::new(name.clone(), ThreadKind::Block),
            name,
            serial: id,
            writeback: Arc::new(AtomicBool::new(true)),
            stats: Arc::new(BlockStats::default()),
        }
    }

    /// The disk's counters.
    pub fn stats(&self) -> Arc<BlockStats> {
        self.stats.clone()
    }

    /// The handle with which the VMM swaps the disk's image while the
    /// guest runs, and reads which one it serves; take it before the
    /// device goes into its transport.
    pub fn backing_handle(&self) -> BackingHandle {
        BackingHandle::new(self.backing.clone())
    }

    /// The configuration space.
    fn config_space(&self) -> virtio_blk_config {
        virtio_blk_config {
            capacity: self.backing.sectors().to_le(),
            size_max: SIZE_MAX.to_le(),
            seg_max: SEG_MAX.to_le(),
            blk_size: BLK_SIZE.to_le(),
            wce: u8::from(self.writeback.load(Ordering::Relaxed)),
            num_queues: 1u16.to_le(),
            max_discard_sectors: MAX_ZEROES_SECTORS.to_le(),
            max_discard_seg: request::MAX_RANGES.to_le(),
            discard_sector_alignment: DISCARD_ALIGNMENT.to_le(),
            max_write_zeroes_sectors: MAX_ZEROES_SECTORS.to_le(),
            max_write_zeroes_seg: request::MAX_RANGES.to_le(),
            write_zeroes_may_unmap: 1,
            ..Default::default()
        }
    }
}

// SAFETY: `virtio_blk_config` is `repr(C, packed)`, and the `repr(C)`
// structs it holds (geometry, zoned characteristics) have fields that fill
// them without gaps: no padding anywhere.
unsafe impl ConfigLayout for virtio_blk_config {}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let by_mode = if self.backing.read_only() {
            READ_ONLY_FEATURES
        } else {
            WRITABLE_FEATURES
        };
        FEATURES | by_mode
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space().as_bytes()[..CONFIG_LEN], offset, data);
    }

    fn config_generation(&self) -> u32 {
        self.backing.generation()
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
        let [(queue, kick)] = activation.take_queues()?;
        // Without CONFIG_WCE the driver assumes writeback when FLUSH is there.
        if !activation.has_feature(feature::CONFIG_WCE) {
            self.writeback.store(true, Ordering::Relaxed);
        }
        let interrupt = activation.interrupt;
        let worker = worker::BlockWorker {
            name: self.name.clone(),
            mem: activation.mem,
            queue,
            kick,
            interrupt: interrupt.clone(),
            backing: self.backing.clone(),
            serial: self.serial,
            writeback: self.writeback.clone(),
            stats: self.stats.clone(),
        };
        self.worker.start(move |stop| worker.run(stop))?;
        self.backing.attach(interrupt);
        Ok(())
    }

    fn reset(&mut self) {
        self.worker.stop();
        self.backing.detach();
        self.writeback.store(true, Ordering::Relaxed);
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        // A swap through a handle that outlives the device interrupts no one.
        self.backing.detach();
    }
}

#[cfg(test)]
mod tests;
