// SPDX-License-Identifier: Apache-2.0
//! virtio-net: the device model (features, configuration space, link
//! state) here, the data path on its own thread in [`worker`], written once
//! over the host side a card has, its [`backend`]: passt's stream or a TAP.

pub mod backend;
mod checksum;
mod relink;
mod rx;
mod tx;
mod worker;

use ferry_confine::seccomp::ThreadKind;
use std::mem::{offset_of, size_of};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_ids;
use virtio_bindings::virtio_net::{self, virtio_net_config, virtio_net_hdr_v1};

use super::device_thread::DeviceThread;
use super::{read_config_bytes, ConfigLayout};
use super::{ActivateError, Activation, VirtioDevice};

use backend::Backend;
pub use backend::{Passt, Tap, TapError};
pub use relink::Relink;
pub use rx::{RxBuffer, RxError};
pub use tx::TxError;
pub use worker::NetStats;

/// Entry points for the fuzz targets in `fuzz/` (built with `--cfg fuzzing` only).
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing {
    pub use super::tx::frame_of_chain;
    pub use super::worker::{Delivery, RxSide};
}

/// virtio device id of a network card.
pub const VIRTIO_ID_NET: u32 = virtio_ids::VIRTIO_ID_NET;
/// Size of `struct virtio_net_hdr_v1` (with `num_buffers`), always present with VERSION_1.
pub const NET_HDR_LEN: usize = size_of::<virtio_net_hdr_v1>();

/// Where the fields ferry reads or writes lie in `struct virtio_net_hdr_v1`.
mod hdr {
    use std::mem::offset_of;

    use virtio_bindings::virtio_net::{self, virtio_net_hdr_v1};

    /// `flags`.
    pub const FLAGS: usize = offset_of!(virtio_net_hdr_v1, flags);
    /// `gso_type`.
    pub const GSO_TYPE: usize = offset_of!(virtio_net_hdr_v1, gso_type);
    /// `csum_start`: where the partial checksum's range starts.
    pub const CSUM_START: usize = offset_of!(virtio_net_hdr_v1, __bindgen_anon_1.csum.start);
    /// `csum_offset`: where the checksum goes, from `csum_start`.
    pub const CSUM_OFFSET: usize = offset_of!(virtio_net_hdr_v1, __bindgen_anon_1.csum.offset);
    /// `num_buffers`: how many RX buffers a received frame spans.
    pub const NUM_BUFFERS: usize = offset_of!(virtio_net_hdr_v1, num_buffers);

    /// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum from `csum_start` on is
    /// partial (the pseudo-header sum) and the device completes it.
    pub const F_NEEDS_CSUM: u8 = virtio_net::VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    /// `VIRTIO_NET_HDR_F_DATA_VALID`: the frame's checksums need no checking.
    pub const F_DATA_VALID: u8 = virtio_net::VIRTIO_NET_HDR_F_DATA_VALID as u8;
    /// `VIRTIO_NET_HDR_GSO_NONE`: no segmentation asked.
    pub const GSO_NONE: u8 = virtio_net::VIRTIO_NET_HDR_GSO_NONE as u8;
}

/// Entries in each queue.
pub const QUEUE_SIZE: u16 = 256;
/// passt's default MTU, which ferry offers the guest.
pub const DEFAULT_MTU: u16 = 65520;

/// Feature bits (virtio 1.2, 5.1.3).
mod feature {
    use virtio_bindings::virtio_net;

    /// The guest may leave TX checksums partial: on passt ferry completes
    /// them on its own thread (passt's framing has no header to carry a
    /// partial checksum), which takes that work off the vCPU; a TAP takes
    /// them as they are.
    pub const CSUM: u32 = virtio_net::VIRTIO_NET_F_CSUM;
    /// The guest takes frames with partial or unchecked checksums: frames
    /// from passt carry valid ones (passt builds them, and a UNIX socket
    /// does not corrupt them); a TAP's header says which.
    pub const GUEST_CSUM: u32 = virtio_net::VIRTIO_NET_F_GUEST_CSUM;
    /// The guest takes TCP/IPv4 segments of up to 64 KiB.
    pub const GUEST_TSO4: u32 = virtio_net::VIRTIO_NET_F_GUEST_TSO4;
    /// The guest takes TCP/IPv6 segments of up to 64 KiB.
    pub const GUEST_TSO6: u32 = virtio_net::VIRTIO_NET_F_GUEST_TSO6;
    /// The guest takes segments with ECN.
    pub const GUEST_ECN: u32 = virtio_net::VIRTIO_NET_F_GUEST_ECN;
    /// The guest takes UDP datagrams to fragment.
    pub const GUEST_UFO: u32 = virtio_net::VIRTIO_NET_F_GUEST_UFO;
    /// The device takes TCP/IPv4 segments of up to 64 KiB.
    pub const HOST_TSO4: u32 = virtio_net::VIRTIO_NET_F_HOST_TSO4;
    /// The device takes TCP/IPv6 segments of up to 64 KiB.
    pub const HOST_TSO6: u32 = virtio_net::VIRTIO_NET_F_HOST_TSO6;
    /// The device takes segments with ECN.
    pub const HOST_ECN: u32 = virtio_net::VIRTIO_NET_F_HOST_ECN;
    /// The device takes UDP datagrams to fragment.
    pub const HOST_UFO: u32 = virtio_net::VIRTIO_NET_F_HOST_UFO;
    /// `mtu` holds the MTU the driver should use.
    pub const MTU: u32 = virtio_net::VIRTIO_NET_F_MTU;
    /// `mac` holds the card's address.
    pub const MAC: u32 = virtio_net::VIRTIO_NET_F_MAC;
    /// A received frame may span several RX buffers (`num_buffers`).
    pub const MRG_RXBUF: u32 = virtio_net::VIRTIO_NET_F_MRG_RXBUF;
    /// `status` holds the link state, which goes down when passt is gone.
    pub const STATUS: u32 = virtio_net::VIRTIO_NET_F_STATUS;
}

/// `VIRTIO_NET_S_LINK_UP` in the status field.
const LINK_UP: u16 = virtio_net::VIRTIO_NET_S_LINK_UP as u16;
/// Bytes of the configuration space ferry fills: up to `speed`, whose
/// feature it does not offer.
const CONFIG_LEN: usize = offset_of!(virtio_net_config, speed);

/// What the guest sees of the card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    /// The MAC address.
    pub mac: [u8; 6],
    /// The MTU the driver should use.
    pub mtu: u16,
}

/// The host side of a card, as [`Net::new`] takes it.
#[derive(Debug)]
pub enum NetBackend {
    /// A stream socket to passt.
    Passt(Passt),
    /// A TAP device.
    Tap(Tap),
}

impl NetBackend {
    /// passt's end of a socket pair.
    pub fn passt(socket: UnixStream) -> Self {
        Self::Passt(Passt::new(socket))
    }

    fn features(&self) -> u64 {
        match self {
            Self::Passt(b) => b.features(),
            Self::Tap(b) => b.features(),
        }
    }
}

/// A virtio-net card over a [`NetBackend`].
#[derive(Debug)]
pub struct Net {
    id: usize,
    config: NetConfig,
    features: u64,
    link_up: Arc<AtomicBool>,
    stats: Arc<NetStats>,
    backend: Option<NetBackend>,
    relink: Option<Arc<Relink>>,
    worker: DeviceThread<Option<NetBackend>>,
}

impl Net {
    /// Card number `id` (its thread is `netID`) over `backend`.
    pub fn new(id: usize, config: NetConfig, backend: NetBackend) -> Self {
        Self {
            id,
            config,
            features: backend.features(),
            link_up: Arc::new(AtomicBool::new(true)),
            stats: Arc::new(NetStats::default()),
            backend: Some(backend),
            relink: None,
            worker: DeviceThread::new(format!("net{id}"), ThreadKind::Net),
        }
    }

    /// The card's [`Relink`]: how a restarted passt's stream reaches it
    /// and how its data path says it lost the old one.
    pub fn relink(&mut self) -> std::io::Result<Arc<Relink>> {
        if self.relink.is_none() {
            self.relink = Some(Arc::new(Relink::new()?));
        }
        Ok(self.relink.clone().expect("just made"))
    }

    /// The card's counters.
    pub fn stats(&self) -> Arc<NetStats> {
        self.stats.clone()
    }

    /// The configuration space.
    fn config_space(&self) -> virtio_net_config {
        let status = if self.link_up.load(Ordering::SeqCst) {
            LINK_UP
        } else {
            0
        };
        virtio_net_config {
            mac: self.config.mac,
            status: status.to_le(),
            max_virtqueue_pairs: 1u16.to_le(),
            mtu: self.config.mtu.to_le(),
            ..Default::default()
        }
    }
}

/// The data path over `backend`, prepared for the features the driver
/// accepted; without a backend (the link down) if that fails.
fn data_path<B: Backend>(parts: worker::Parts, mut backend: B, acked: u64) -> worker::NetWorker<B> {
    let id = parts.id;
    let backend = match backend.activate(acked) {
        Ok(()) => Some(backend),
        Err(e) => {
            log::error!("net{id}: cannot set up the {}: {e}", backend.describe());
            None
        }
    };
    worker::NetWorker::new(parts, backend)
}

// SAFETY: `virtio_net_config` is `repr(C, packed)`: no padding.
unsafe impl ConfigLayout for virtio_net_config {}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space().as_bytes()[..CONFIG_LEN], offset, data);
    }

    fn activate(&mut self, mut activation: Activation) -> Result<(), ActivateError> {
        let [(rx_queue, rx_kick), (tx_queue, tx_kick)] = activation.take_queues()?;
        let acked = activation.features;
        let id = self.id;
        let parts = worker::Parts {
            id,
            mem: activation.mem.clone(),
            rx_queue,
            tx_queue,
            rx_kick,
            tx_kick,
            interrupt: activation.interrupt.clone(),
            link_up: self.link_up.clone(),
            stats: self.stats.clone(),
            mrg_rxbuf: activation.has_feature(feature::MRG_RXBUF),
            data_valid: activation.has_feature(feature::GUEST_CSUM),
            acked,
            relink: self.relink.clone(),
        };
        match self.backend.take() {
            Some(NetBackend::Tap(tap)) => {
                let worker = data_path(parts, tap, acked);
                self.worker
                    .start(move |stop| worker.run(stop).map(NetBackend::Tap))
            }
            Some(NetBackend::Passt(passt)) => {
                let worker = data_path(parts, passt, acked);
                self.worker
                    .start(move |stop| worker.run(stop).map(NetBackend::Passt))
            }
            None => {
                let worker = worker::NetWorker::<Passt>::new(parts, None);
                self.worker
                    .start(move |stop| worker.run(stop).map(NetBackend::Passt))
            }
        }
    }

    fn reset(&mut self) {
        if let Some(backend) = self.worker.stop() {
            self.backend = backend;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::features;

    #[test]
    fn config_space_carries_mac_status_and_mtu() {
        let (a, _b) = UnixStream::pair().unwrap();
        let net = Net::new(
            0,
            NetConfig {
                mac: [2, 0, 0, 0, 0, 1],
                mtu: 65520,
            },
            NetBackend::passt(a),
        );
        // mac, status (link up), max_virtqueue_pairs (one), mtu; nothing after.
        let mut cfg = [0xffu8; 16];
        net.read_config(0, &mut cfg);
        assert_eq!(cfg, [2, 0, 0, 0, 0, 1, 1, 0, 1, 0, 0xf0, 0xff, 0, 0, 0, 0]);
        net.link_up.store(false, Ordering::SeqCst);
        let mut status = [0u8; 2];
        net.read_config(6, &mut status);
        assert_eq!(status, [0, 0]);
        let mut beyond = [0xffu8; 4];
        net.read_config(100, &mut beyond);
        assert_eq!(beyond, [0; 4]);
    }

    #[test]
    fn the_header_fields_lie_where_virtio_says() {
        assert_eq!(NET_HDR_LEN, 12);
        let at = [
            hdr::FLAGS,
            hdr::GSO_TYPE,
            hdr::CSUM_START,
            hdr::CSUM_OFFSET,
            hdr::NUM_BUFFERS,
        ];
        assert_eq!(at, [0, 1, 6, 8, 10]);
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
            NetBackend::passt(a),
        )
        .features();
        assert_ne!(f & (1 << features::VIRTIO_F_VERSION_1), 0);
        assert_ne!(f & (1 << feature::CSUM), 0);
        assert_ne!(f & (1 << feature::GUEST_CSUM), 0);
        // No segmentation offload: passt takes frames, not super-frames to cut.
        for bit in [7u32, 8, 9, 10, 11, 14] {
            assert_eq!(f & (1 << bit), 0, "feature bit {bit} must not be offered");
        }
    }
}
