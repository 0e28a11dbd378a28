// SPDX-License-Identifier: Apache-2.0
//! virtio-net wired to passt: the device model (features, configuration
//! space, link state) here, the data path on its own thread in [`worker`].

mod checksum;
mod rx;
mod tx;
mod worker;

use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device_thread::DeviceThread;
use super::read_config_bytes;
use super::{
    ActivateError, Activation, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
};

pub use rx::{RxBuffer, RxError};
pub use tx::TxError;
use worker::Backend;
pub use worker::NetStats;

/// virtio device id of a network card.
pub const VIRTIO_ID_NET: u32 = 1;
/// Size of `struct virtio_net_hdr_v1` (with `num_buffers`), always present with VERSION_1.
pub const NET_HDR_LEN: usize = 12;
/// Entries in each queue.
pub const QUEUE_SIZE: u16 = 256;
/// passt's default MTU, which ferry offers the guest.
pub const DEFAULT_MTU: u16 = 65520;

/// Feature bits (virtio 1.2, 5.1.3).
mod feature {
    pub const CSUM: u32 = 0;
    pub const GUEST_CSUM: u32 = 1;
    pub const MTU: u32 = 3;
    pub const MAC: u32 = 5;
    pub const MRG_RXBUF: u32 = 15;
    pub const STATUS: u32 = 16;
}

/// `VIRTIO_NET_S_LINK_UP` in the status field.
const LINK_UP: u16 = 1;

/// What the guest sees of the card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    /// The MAC address.
    pub mac: [u8; 6],
    /// The MTU the driver should use.
    pub mtu: u16,
}

/// A virtio-net card whose backend is a stream socket to passt.
#[derive(Debug)]
pub struct Net {
    id: usize,
    config: NetConfig,
    link_up: Arc<AtomicBool>,
    stats: Arc<NetStats>,
    backend: Option<Backend>,
    worker: Option<DeviceThread<Option<Backend>>>,
}

impl Net {
    /// Card number `id` (its thread is `netID`) talking to passt over `backend`.
    pub fn new(id: usize, config: NetConfig, backend: UnixStream) -> Self {
        Self {
            id,
            config,
            link_up: Arc::new(AtomicBool::new(true)),
            stats: Arc::new(NetStats::default()),
            backend: Some(Backend::new(backend)),
            worker: None,
        }
    }

    /// The card's counters.
    pub fn stats(&self) -> Arc<NetStats> {
        self.stats.clone()
    }

    fn config_bytes(&self) -> [u8; 12] {
        let mut bytes = [0u8; 12];
        bytes[..6].copy_from_slice(&self.config.mac);
        let status = if self.link_up.load(Ordering::SeqCst) {
            LINK_UP
        } else {
            0
        };
        bytes[6..8].copy_from_slice(&status.to_le_bytes());
        // max_virtqueue_pairs: one.
        bytes[8..10].copy_from_slice(&1u16.to_le_bytes());
        bytes[10..12].copy_from_slice(&self.config.mtu.to_le_bytes());
        bytes
    }

    fn stop_worker(&mut self) {
        if let Some(worker) = self.worker.take() {
            match worker.stop() {
                Some(backend) => self.backend = backend,
                None => log::error!("net{}: the data-path thread panicked", self.id),
            }
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        [
            VIRTIO_F_VERSION_1,
            VIRTIO_RING_F_EVENT_IDX,
            // A large frame spans many pages: without indirect chains a few
            // frames would fill the TX ring.
            VIRTIO_RING_F_INDIRECT_DESC,
            // The guest may leave TX checksums partial: ferry completes them
            // on its own thread (passt's framing has no header to carry a
            // partial checksum), which takes that work off the vCPU.
            feature::CSUM,
            // Frames from passt carry valid checksums (passt builds them, and
            // a UNIX socket does not corrupt them): the guest need not check.
            feature::GUEST_CSUM,
            feature::MAC,
            feature::MTU,
            feature::STATUS,
            feature::MRG_RXBUF,
        ]
        .iter()
        .fold(0, |acc, bit| acc | (1u64 << bit))
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_bytes(), offset, data);
    }

    fn activate(&mut self, mut activation: Activation) -> Result<(), ActivateError> {
        if activation.queues.len() != 2 || activation.kicks.len() != 2 {
            return Err(ActivateError::Queues {
                got: activation.queues.len(),
                need: 2,
            });
        }
        let stop = EventFd::new(EFD_NONBLOCK).map_err(ActivateError::Worker)?;
        let tx_queue = activation.queues.pop().expect("two queues");
        let rx_queue = activation.queues.pop().expect("two queues");
        let tx_kick = activation.kicks.pop().expect("two kicks");
        let rx_kick = activation.kicks.pop().expect("two kicks");
        let worker = worker::NetWorker::new(worker::Parts {
            id: self.id,
            mem: activation.mem,
            rx_queue,
            tx_queue,
            rx_kick,
            tx_kick,
            stop: stop.try_clone().map_err(ActivateError::Worker)?,
            backend: self.backend.take(),
            interrupt: activation.interrupt,
            link_up: self.link_up.clone(),
            stats: self.stats.clone(),
            mrg_rxbuf: activation.features & (1 << feature::MRG_RXBUF) != 0,
            data_valid: activation.features & (1 << feature::GUEST_CSUM) != 0,
        });
        let thread = DeviceThread::spawn(format!("net{}", self.id), stop, move || worker.run())
            .map_err(ActivateError::Worker)?;
        self.worker = Some(thread);
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_worker();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_carries_mac_status_and_mtu() {
        let (a, _b) = UnixStream::pair().unwrap();
        let net = Net::new(
            0,
            NetConfig {
                mac: [2, 0, 0, 0, 0, 1],
                mtu: 65520,
            },
            a,
        );
        let mut cfg = [0u8; 12];
        net.read_config(0, &mut cfg);
        assert_eq!(&cfg[..6], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(u16::from_le_bytes([cfg[6], cfg[7]]), LINK_UP);
        assert_eq!(u16::from_le_bytes([cfg[10], cfg[11]]), 65520);
        net.link_up.store(false, Ordering::SeqCst);
        let mut status = [0u8; 2];
        net.read_config(6, &mut status);
        assert_eq!(status, [0, 0]);
        let mut beyond = [0xffu8; 4];
        net.read_config(100, &mut beyond);
        assert_eq!(beyond, [0; 4]);
    }

    #[test]
    fn features_are_modern_with_checksums_but_no_segmentation() {
        let (a, _b) = UnixStream::pair().unwrap();
        let f = Net::new(
            0,
            NetConfig {
                mac: [0; 6],
                mtu: 1500,
            },
            a,
        )
        .features();
        assert_ne!(f & (1 << VIRTIO_F_VERSION_1), 0);
        assert_ne!(f & (1 << feature::CSUM), 0);
        assert_ne!(f & (1 << feature::GUEST_CSUM), 0);
        // No segmentation offload: passt takes frames, not super-frames to cut.
        for bit in [7u32, 8, 9, 10, 11, 14] {
            assert_eq!(f & (1 << bit), 0, "feature bit {bit} must not be offered");
        }
    }
}
