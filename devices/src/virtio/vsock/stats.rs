// SPDX-License-Identifier: Apache-2.0
//! The counters of one vsock device, readable from any thread.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one vsock device.
#[derive(Debug, Default)]
pub struct VsockStats {
    /// Connections a host client opened (a CONNECT line, or a port listener).
    pub host_connections: AtomicU64,
    /// Connections the guest opened to a host socket.
    pub guest_connections: AtomicU64,
    /// Connections ended and forgotten, however they ended.
    pub closed: AtomicU64,
    /// Connections open now.
    pub open: AtomicU64,
    /// Established connections ended by an RST (either side's).
    pub reset: AtomicU64,
    /// Connections refused: the guest or the host side not listening, a
    /// bad CONNECT line, the connection limit.
    pub refused: AtomicU64,
    /// Packets put on the guest's RX queue.
    pub rx_packets: AtomicU64,
    /// Data bytes of those packets.
    pub rx_bytes: AtomicU64,
    /// Packets taken from the guest's TX queue.
    pub tx_packets: AtomicU64,
    /// Data bytes of those packets.
    pub tx_bytes: AtomicU64,
    /// Malformed packets or buffers from the guest (consumed, ignored).
    pub malformed: AtomicU64,
}

impl VsockStats {
    /// Connections open now.
    pub fn open_connections(&self) -> u64 {
        self.open.load(Ordering::SeqCst)
    }

    pub(super) fn bump(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }
}

impl std::fmt::Display for VsockStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        write!(
            f,
            "connections {} from host {} from guest ({} closed, {} open, {} reset, {} refused), \
             rx {} packets {} bytes, tx {} packets {} bytes, {} malformed",
            g(&self.host_connections),
            g(&self.guest_connections),
            g(&self.closed),
            g(&self.open),
            g(&self.reset),
            g(&self.refused),
            g(&self.rx_packets),
            g(&self.rx_bytes),
            g(&self.tx_packets),
            g(&self.tx_bytes),
            g(&self.malformed),
        )
    }
}
