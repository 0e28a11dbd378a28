// SPDX-License-Identifier: Apache-2.0
//! The transmit side: turning the guest's TX descriptor chains into
//! frames that point straight into guest memory (no copy), header skipped;
//! a checksum the guest left to the device is completed on the way.

use ferry_net_passt::{OutFrame, MAX_FRAME_LEN, MIN_FRAME_LEN};
use virtio_queue::DescriptorChain;
use vm_memory::GuestMemoryBackend;

use super::{checksum, hdr, NET_HDR_LEN};
use crate::GuestMemory;

/// Why a TX chain was not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    /// A descriptor the device should read is device-writable.
    #[error("write-only descriptor in a TX chain")]
    WriteOnly,
    /// A descriptor points outside guest memory (or across regions).
    #[error("TX descriptor outside guest memory: 0x{0:x}+{1}")]
    BadAddress(u64, u32),
    /// The frame after the header is shorter or longer than passt carries.
    #[error("TX frame of {0} bytes (valid: {MIN_FRAME_LEN} to {MAX_FRAME_LEN})")]
    BadLength(usize),
    /// The header asks for segmentation, which ferry does not offer.
    #[error("TX header asks for segmentation (gso_type {0})")]
    Segmentation(u8),
    /// The checksum the header asks to complete lies outside the frame.
    #[error("TX checksum at {start}+{offset} outside a frame of {len} bytes")]
    ChecksumOutside {
        /// Where the summed range starts.
        start: u16,
        /// Where the checksum field is, from `start`.
        offset: u16,
        /// The frame's length.
        len: usize,
    },
}

/// The fields of a TX chain's `virtio_net_hdr_v1` that ferry acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TxHeader {
    flags: u8,
    gso_type: u8,
    csum_start: u16,
    csum_offset: u16,
}

impl TxHeader {
    fn parse(bytes: &[u8; NET_HDR_LEN]) -> Self {
        Self {
            flags: bytes[hdr::FLAGS],
            gso_type: bytes[hdr::GSO_TYPE],
            csum_start: u16::from_le_bytes([bytes[hdr::CSUM_START], bytes[hdr::CSUM_START + 1]]),
            csum_offset: u16::from_le_bytes([bytes[hdr::CSUM_OFFSET], bytes[hdr::CSUM_OFFSET + 1]]),
        }
    }
}

/// The frame a TX chain carries, as segments of guest memory after the
/// virtio-net header, with a checksum the guest left partial completed.
pub fn frame_of_chain<M>(mem: &GuestMemory, chain: DescriptorChain<M>) -> Result<OutFrame, TxError>
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemory,
{
    let mut header = [0u8; NET_HDR_LEN];
    let mut header_len = 0;
    let mut slices = Vec::new();
    let mut len = 0usize;
    for desc in chain {
        if desc.is_write_only() {
            return Err(TxError::WriteOnly);
        }
        let bad = || TxError::BadAddress(desc.addr().0, desc.len());
        let mut slice = mem
            .get_slice(desc.addr(), desc.len() as usize)
            .map_err(|_| bad())?;
        if header_len < NET_HDR_LEN {
            let n = slice.len().min(NET_HDR_LEN - header_len);
            slice.copy_to(&mut header[header_len..header_len + n]);
            header_len += n;
            slice = slice.offset(n).map_err(|_| bad())?;
        }
        if slice.is_empty() {
            continue;
        }
        len += slice.len();
        if len > MAX_FRAME_LEN {
            return Err(TxError::BadLength(len));
        }
        slices.push(slice);
    }
    if len < MIN_FRAME_LEN {
        return Err(TxError::BadLength(len));
    }
    let header = TxHeader::parse(&header);
    if header.gso_type != hdr::GSO_NONE {
        return Err(TxError::Segmentation(header.gso_type));
    }
    let segments = slices
        .iter()
        .map(|s| libc::iovec {
            iov_base: s.ptr_guard().as_ptr() as *mut libc::c_void,
            iov_len: s.len(),
        })
        .collect();
    // SAFETY: every segment lies in guest memory (get_slice checked the
    // range), which stays mapped for the VM's life.
    let mut frame = unsafe { OutFrame::new(segments) };
    if header.flags & hdr::F_NEEDS_CSUM != 0 {
        let start = usize::from(header.csum_start);
        let field = start + usize::from(header.csum_offset);
        // The bounds first, so that a bad header costs no summing.
        if field + 2 > len || !frame.overlay(field, checksum::complete(&slices, start)) {
            return Err(TxError::ChecksumOutside {
                start: header.csum_start,
                offset: header.csum_offset,
                len,
            });
        }
    }
    Ok(frame)
}
