// SPDX-License-Identifier: Apache-2.0
//! Feature bits (virtio 1.2, 2.2 and 6): those every ferry device offers
//! whatever its type, turning a list of bit numbers into the 64-bit set
//! the transports carry, and asking whether a set has a bit. The bit
//! numbers come from `virtio-bindings`; each device names its own.

use virtio_bindings::virtio_config;
use virtio_bindings::virtio_ring;

/// `VIRTIO_F_VERSION_1`: the modern interface, the only one ferry speaks.
pub const VIRTIO_F_VERSION_1: u32 = virtio_config::VIRTIO_F_VERSION_1;
/// `VIRTIO_RING_F_INDIRECT_DESC`: a chain may live in a table of its own,
/// taking one ring entry whatever its length.
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
/// `VIRTIO_RING_F_EVENT_IDX`: notification suppression by ring index.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// What every ferry device offers: the modern interface, notification
/// suppression by ring index, and indirect chains.
pub const COMMON: u64 = set(&[
    VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
]);

/// The set of the feature bits numbered `bits` (each below 64).
pub const fn set(bits: &[u32]) -> u64 {
    let mut features = 0;
    let mut i = 0;
    while i < bits.len() {
        features |= 1 << bits[i];
        i += 1;
    }
    features
}

/// Whether `features` has bit number `bit`.
pub const fn has(features: u64, bit: u32) -> bool {
    features & (1 << bit) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_has_its_bits_and_no_other() {
        let f = set(&[0, 5, 32, 63]);
        assert_eq!(f, 1 | 1 << 5 | 1 << 32 | 1 << 63);
        assert!(has(f, 32));
        assert!(!has(f, 1));
        assert_eq!(set(&[]), 0);
        assert_eq!(COMMON, 1 << 32 | 1 << 29 | 1 << 28);
    }
}
