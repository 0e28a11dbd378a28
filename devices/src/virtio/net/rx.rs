// SPDX-License-Identifier: Apache-2.0
//! The receive side: the guest's RX buffers, and copying a frame from
//! passt into them behind a virtio-net header.

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::{hdr, NET_HDR_LEN};
use crate::GuestMemory;

/// Why an RX chain cannot take frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RxError {
    /// A descriptor the device must write is read-only.
    #[error("read-only descriptor in an RX chain")]
    ReadOnly,
    /// A descriptor points outside guest memory.
    #[error("RX descriptor outside guest memory: 0x{0:x}+{1}")]
    BadAddress(u64, u32),
    /// The chain cannot even hold the header.
    #[error("RX chain of {0} bytes cannot hold a virtio-net header")]
    TooSmall(usize),
}

/// A guest RX buffer: the chain's head and its writable segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RxBuffer {
    /// Head descriptor index, for the used ring.
    pub head: u16,
    segments: Vec<(GuestAddress, usize)>,
    /// Bytes it holds.
    pub capacity: usize,
}

impl RxBuffer {
    /// The buffer a chain describes, checked against guest memory. Its
    /// segments go into `segments` (emptied first), so that the caller can
    /// recycle the storage of used buffers (see [`RxBuffer::into_segments`]).
    pub fn from_chain<M>(
        mem: &GuestMemory,
        chain: DescriptorChain<M>,
        mut segments: Vec<(GuestAddress, usize)>,
    ) -> Result<Self, (u16, RxError)>
    where
        M: std::ops::Deref,
        M::Target: vm_memory::GuestMemory,
    {
        let head = chain.head_index();
        segments.clear();
        let mut capacity = 0usize;
        for desc in chain {
            if !desc.is_write_only() {
                return Err((head, RxError::ReadOnly));
            }
            if mem.get_slice(desc.addr(), desc.len() as usize).is_err() {
                return Err((head, RxError::BadAddress(desc.addr().0, desc.len())));
            }
            segments.push((desc.addr(), desc.len() as usize));
            capacity += desc.len() as usize;
        }
        if capacity < NET_HDR_LEN {
            return Err((head, RxError::TooSmall(capacity)));
        }
        Ok(Self {
            head,
            segments,
            capacity,
        })
    }

    /// Gives back the storage of its segments, for the next buffer.
    pub fn into_segments(self) -> Vec<(GuestAddress, usize)> {
        self.segments
    }

    /// Its writable segments: guest address and length.
    pub fn segments(&self) -> &[(GuestAddress, usize)] {
        &self.segments
    }

    /// Writes `bytes` from offset `at` of the buffer on; returns how many fit.
    pub(crate) fn write_at(&self, mem: &GuestMemory, mut at: usize, mut bytes: &[u8]) -> usize {
        let mut written = 0;
        for &(addr, len) in &self.segments {
            if bytes.is_empty() {
                break;
            }
            if at >= len {
                at -= len;
                continue;
            }
            let n = (len - at).min(bytes.len());
            // The range was checked when the buffer was taken.
            if mem
                .write_slice(&bytes[..n], GuestAddress(addr.0 + at as u64))
                .is_err()
            {
                break;
            }
            written += n;
            bytes = &bytes[n..];
            at = 0;
        }
        written
    }
}

/// The virtio-net header for a received frame spread over `num_buffers`
/// buffers; `data_valid` tells the guest the checksums need no checking.
fn rx_header(num_buffers: u16, data_valid: bool) -> [u8; NET_HDR_LEN] {
    let mut header = [0u8; NET_HDR_LEN];
    if data_valid {
        header[hdr::FLAGS] = hdr::F_DATA_VALID;
    }
    header[hdr::NUM_BUFFERS..hdr::NUM_BUFFERS + 2].copy_from_slice(&num_buffers.to_le_bytes());
    header
}

/// Copies `frame` behind a header into `buffers` (in order; their total
/// capacity must hold header and frame). Appends each buffer's head and
/// used length to `used`.
pub fn write_frame<'a>(
    mem: &GuestMemory,
    buffers: impl ExactSizeIterator<Item = &'a RxBuffer>,
    frame: &[u8],
    data_valid: bool,
    used: &mut Vec<(u16, u32)>,
) {
    let header = rx_header(buffers.len() as u16, data_valid);
    let mut rest = frame;
    for (i, buf) in buffers.enumerate() {
        let mut n = 0;
        if i == 0 {
            n += buf.write_at(mem, 0, &header);
        }
        let m = buf.write_at(mem, n, rest);
        rest = &rest[m..];
        used.push((buf.head, (n + m) as u32));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer(head: u16, segments: &[(u64, usize)]) -> RxBuffer {
        RxBuffer {
            head,
            segments: segments
                .iter()
                .map(|&(a, l)| (GuestAddress(a), l))
                .collect(),
            capacity: segments.iter().map(|s| s.1).sum(),
        }
    }

    #[test]
    fn a_frame_spans_buffers_behind_one_header() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let frame: Vec<u8> = (0..100u8).collect();
        let bufs = [
            buffer(3, &[(0x1000, 20), (0x2000, 30)]),
            buffer(7, &[(0x3000, 200)]),
        ];
        let mut used = vec![(1, 1)];
        write_frame(&mem, bufs.iter(), &frame, false, &mut used);
        assert_eq!(used, vec![(1, 1), (3, 50), (7, 62)]);
        let mut hdr = [0u8; NET_HDR_LEN];
        mem.read_slice(&mut hdr, GuestAddress(0x1000)).unwrap();
        assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 2);
        let mut got = vec![0u8; 100];
        mem.read_slice(&mut got[..8], GuestAddress(0x1000 + 12))
            .unwrap();
        mem.read_slice(&mut got[8..38], GuestAddress(0x2000))
            .unwrap();
        mem.read_slice(&mut got[38..], GuestAddress(0x3000))
            .unwrap();
        assert_eq!(got, frame);
    }

    #[test]
    fn data_valid_sets_the_header_flag() {
        assert_eq!(rx_header(1, true)[0], 2);
        assert_eq!(rx_header(1, false)[0], 0);
    }
}
