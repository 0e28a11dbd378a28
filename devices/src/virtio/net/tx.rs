// SPDX-License-Identifier: Apache-2.0
//! The transmit side: turning the guest's TX descriptor chains into
//! frames that point straight into guest memory (no copy), header skipped.

use ferry_net_passt::{OutFrame, MAX_FRAME_LEN, MIN_FRAME_LEN};
use virtio_queue::DescriptorChain;
use vm_memory::GuestMemoryBackend;

use super::NET_HDR_LEN;
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
}

/// The frame a TX chain carries, as segments of guest memory after the
/// virtio-net header.
pub fn frame_of_chain<M>(mem: &GuestMemory, chain: DescriptorChain<M>) -> Result<OutFrame, TxError>
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemory,
{
    let mut skip = NET_HDR_LEN;
    let mut segments = Vec::new();
    let mut len = 0usize;
    for desc in chain {
        if desc.is_write_only() {
            return Err(TxError::WriteOnly);
        }
        let bad = || TxError::BadAddress(desc.addr().0, desc.len());
        let slice = mem
            .get_slice(desc.addr(), desc.len() as usize)
            .map_err(|_| bad())?;
        let dlen = slice.len();
        if skip >= dlen {
            skip -= dlen;
            continue;
        }
        let base = slice.ptr_guard().as_ptr();
        // SAFETY: `skip < dlen`, so the offset stays inside the slice.
        let start = unsafe { base.add(skip) };
        segments.push(libc::iovec {
            iov_base: start as *mut libc::c_void,
            iov_len: dlen - skip,
        });
        len += dlen - skip;
        skip = 0;
        if len > MAX_FRAME_LEN {
            return Err(TxError::BadLength(len));
        }
    }
    if len < MIN_FRAME_LEN {
        return Err(TxError::BadLength(len));
    }
    // SAFETY: every segment lies in guest memory (get_slice checked the
    // range), which stays mapped for the VM's life.
    Ok(unsafe { OutFrame::new(segments) })
}
