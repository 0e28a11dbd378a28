// SPDX-License-Identifier: Apache-2.0
//! One virtio-blk request: parsed from a descriptor chain (any layout:
//! the readable bytes are the header then the data to write, the
//! writable bytes the data to read then the status byte), checked against
//! the disk, and carried out with the data moving straight between guest
//! memory and the image.

use std::mem::size_of;

use virtio_bindings::virtio_blk::{
    self, virtio_blk_discard_write_zeroes, virtio_blk_outhdr, VIRTIO_BLK_ID_BYTES,
};
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::disk::{DiskImage, SECTOR_SIZE};
use crate::GuestMemory;

/// Request types (virtio 1.2, 5.2.6).
mod kind {
    use virtio_bindings::virtio_blk;

    pub const IN: u32 = virtio_blk::VIRTIO_BLK_T_IN;
    pub const OUT: u32 = virtio_blk::VIRTIO_BLK_T_OUT;
    pub const FLUSH: u32 = virtio_blk::VIRTIO_BLK_T_FLUSH;
    pub const GET_ID: u32 = virtio_blk::VIRTIO_BLK_T_GET_ID;
    pub const DISCARD: u32 = virtio_blk::VIRTIO_BLK_T_DISCARD;
    pub const WRITE_ZEROES: u32 = virtio_blk::VIRTIO_BLK_T_WRITE_ZEROES;
}

/// Status byte values.
pub mod status {
    use virtio_bindings::virtio_blk;

    /// Done.
    pub const OK: u8 = virtio_blk::VIRTIO_BLK_S_OK as u8;
    /// The request failed or was invalid.
    pub const IOERR: u8 = virtio_blk::VIRTIO_BLK_S_IOERR as u8;
    /// The device does not do this request type.
    pub const UNSUPP: u8 = virtio_blk::VIRTIO_BLK_S_UNSUPP as u8;
}

/// Bytes in the request header (`type`, `reserved`, `sector`).
const HEADER_LEN: usize = size_of::<virtio_blk_outhdr>();
/// Bytes of a serial number (GET_ID).
pub const ID_LEN: usize = VIRTIO_BLK_ID_BYTES as usize;
/// Bytes of one discard / write-zeroes range.
const RANGE_LEN: usize = size_of::<virtio_blk_discard_write_zeroes>();
/// Most ranges in one discard or write-zeroes request.
pub const MAX_RANGES: u32 = 1;
/// `VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP`.
const UNMAP: u32 = virtio_blk::VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;

/// Why a chain is not a request the device can even answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A descriptor points outside guest memory.
    #[error("descriptor outside guest memory: 0x{0:x}+{1}")]
    BadAddress(u64, u32),
    /// No writable byte for the status.
    #[error("no writable status byte")]
    NoStatus,
}

/// A request ready to run, or a status to answer at once.
#[derive(Debug)]
pub struct Request {
    /// Where the status byte goes.
    status_addr: GuestAddress,
    /// Bytes the driver wrote (after the header), as guest memory.
    readable: Vec<libc::iovec>,
    /// Bytes the device may write (before the status), as guest memory.
    writable: Vec<libc::iovec>,
    /// The header: type and sector, if the chain held one.
    header: Option<(u32, u64)>,
}

/// What the device does with a disk's requests.
#[derive(Debug)]
pub struct Settings<'a> {
    /// The disk.
    pub disk: &'a DiskImage,
    /// The serial number GET_ID returns.
    pub serial: &'a [u8; ID_LEN],
    /// Write-through cache: every write is flushed before it completes.
    pub write_through: bool,
}

/// Total bytes of `segments`.
fn total(segments: &[libc::iovec]) -> u64 {
    segments.iter().map(|s| s.iov_len as u64).sum()
}

/// Splits `n` bytes off the front of `segments`, copying them out.
fn take_front(
    mem: &GuestMemory,
    segments: &mut Vec<(GuestAddress, usize)>,
    out: &mut [u8],
) -> bool {
    let mut done = 0;
    while done < out.len() {
        let Some(&(addr, len)) = segments.first() else {
            return false;
        };
        let n = len.min(out.len() - done);
        if mem.read_slice(&mut out[done..done + n], addr).is_err() {
            return false;
        }
        done += n;
        if n == len {
            segments.remove(0);
        } else {
            segments[0] = (GuestAddress(addr.0 + n as u64), len - n);
        }
    }
    true
}

/// Turns guest ranges into iovecs.
fn to_iovecs(mem: &GuestMemory, ranges: &[(GuestAddress, usize)]) -> Option<Vec<libc::iovec>> {
    ranges
        .iter()
        .filter(|(_, len)| *len > 0)
        .map(|&(addr, len)| {
            let slice = mem.get_slice(addr, len).ok()?;
            Some(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: len,
            })
        })
        .collect()
}

impl Request {
    /// Reads the request a chain carries.
    pub fn parse<M>(mem: &GuestMemory, chain: DescriptorChain<M>) -> Result<Self, ChainError>
    where
        M: std::ops::Deref,
        M::Target: vm_memory::GuestMemory,
    {
        let mut readable = Vec::new();
        let mut writable = Vec::new();
        for desc in chain {
            let (addr, len) = (desc.addr(), desc.len());
            // Each range must lie in one memory region: get_slice checks it.
            if len > 0 && mem.get_slice(addr, len as usize).is_err() {
                return Err(ChainError::BadAddress(addr.0, len));
            }
            if desc.is_write_only() {
                writable.push((addr, len as usize));
            } else {
                readable.push((addr, len as usize));
            }
        }
        // The status is the last writable byte.
        let status_addr = loop {
            match writable.last_mut() {
                None => return Err(ChainError::NoStatus),
                Some((_, 0)) => {
                    writable.pop();
                }
                Some((addr, len)) => {
                    *len -= 1;
                    break GuestAddress(addr.0 + *len as u64);
                }
            }
        };
        let mut header = [0u8; HEADER_LEN];
        let header = take_front(mem, &mut readable, &mut header).then(|| {
            let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
            let mut sector = [0u8; 8];
            sector.copy_from_slice(&header[8..16]);
            (kind, u64::from_le_bytes(sector))
        });
        let bad = |(addr, len): (GuestAddress, usize)| ChainError::BadAddress(addr.0, len as u32);
        let readable = to_iovecs(mem, &readable).ok_or_else(|| bad(readable[0]))?;
        let writable = to_iovecs(mem, &writable).ok_or_else(|| bad(writable[0]))?;
        Ok(Self {
            status_addr,
            readable,
            writable,
            header,
        })
    }

    /// Carries the request out, writes its status byte and returns the
    /// number of bytes written into the chain (for the used ring).
    pub fn execute(mut self, mem: &GuestMemory, settings: &Settings) -> u32 {
        let (status, written) = self.run(settings);
        if mem.write_obj(status, self.status_addr).is_err() {
            log::debug!("virtio-blk: cannot write the status byte");
        }
        (written + 1).min(u64::from(u32::MAX)) as u32
    }

    /// The status and the data bytes written into the chain.
    fn run(&mut self, s: &Settings) -> (u8, u64) {
        let Some((kind, sector)) = self.header else {
            log::debug!("virtio-blk: request without a header");
            return (status::IOERR, 0);
        };
        let disk = s.disk;
        let in_range = |len: u64| {
            len % SECTOR_SIZE == 0
                && sector
                    .checked_add(len / SECTOR_SIZE)
                    .is_some_and(|end| end <= disk.sectors())
        };
        match kind {
            kind::IN => {
                let len = total(&self.writable);
                if !in_range(len) {
                    log::debug!(
                        "virtio-blk: read of {len} bytes at sector {sector} is out of range"
                    );
                    return (status::IOERR, 0);
                }
                match disk.read_vectored_at(&mut self.writable, sector * SECTOR_SIZE) {
                    Ok(()) => (status::OK, len),
                    Err(e) => {
                        log::warn!("disk {}: read failed: {e}", disk.path().display());
                        (status::IOERR, 0)
                    }
                }
            }
            kind::OUT => {
                let len = total(&self.readable);
                if disk.read_only() || !in_range(len) {
                    log::debug!("virtio-blk: write of {len} bytes at sector {sector} refused");
                    return (status::IOERR, 0);
                }
                let result = disk
                    .write_vectored_at(&mut self.readable, sector * SECTOR_SIZE)
                    .and_then(|()| {
                        if s.write_through {
                            disk.flush()
                        } else {
                            Ok(())
                        }
                    });
                match result {
                    Ok(()) => (status::OK, 0),
                    Err(e) => {
                        log::warn!("disk {}: write failed: {e}", disk.path().display());
                        (status::IOERR, 0)
                    }
                }
            }
            kind::FLUSH => {
                if disk.read_only() {
                    return (status::OK, 0);
                }
                match disk.flush() {
                    Ok(()) => (status::OK, 0),
                    Err(e) => {
                        log::warn!("disk {}: flush failed: {e}", disk.path().display());
                        (status::IOERR, 0)
                    }
                }
            }
            kind::GET_ID => {
                let mut left = ID_LEN;
                let mut from = &s.serial[..];
                for seg in &self.writable {
                    let n = seg.iov_len.min(left);
                    // SAFETY: the iovec is guest memory checked at parse time.
                    unsafe { std::ptr::copy_nonoverlapping(from.as_ptr(), seg.iov_base.cast(), n) };
                    from = &from[n..];
                    left -= n;
                }
                (status::OK, (ID_LEN - left) as u64)
            }
            kind::DISCARD | kind::WRITE_ZEROES => {
                if disk.read_only() {
                    return (status::IOERR, 0);
                }
                (self.ranges(kind == kind::DISCARD, s), 0)
            }
            other => {
                log::debug!("virtio-blk: unsupported request type {other}");
                (status::UNSUPP, 0)
            }
        }
    }

    /// Discards or zeroes each range the request lists.
    fn ranges(&self, discard: bool, s: &Settings) -> u8 {
        let mut bytes = Vec::new();
        for seg in &self.readable {
            // SAFETY: the iovec is guest memory checked at parse time.
            bytes.extend_from_slice(unsafe {
                std::slice::from_raw_parts(seg.iov_base.cast::<u8>(), seg.iov_len)
            });
            if bytes.len() > RANGE_LEN * MAX_RANGES as usize {
                return status::IOERR;
            }
        }
        if bytes.is_empty() || bytes.len() % RANGE_LEN != 0 {
            return status::IOERR;
        }
        for range in bytes.chunks_exact(RANGE_LEN) {
            let mut sector = [0u8; 8];
            sector.copy_from_slice(&range[..8]);
            let sector = u64::from_le_bytes(sector);
            let count = u32::from_le_bytes([range[8], range[9], range[10], range[11]]);
            let flags = u32::from_le_bytes([range[12], range[13], range[14], range[15]]);
            let end = sector.checked_add(u64::from(count));
            if end.is_none_or(|end| end > s.disk.sectors()) || flags & !UNMAP != 0 {
                return status::IOERR;
            }
            let (offset, len) = (sector * SECTOR_SIZE, u64::from(count) * SECTOR_SIZE);
            let result = if discard {
                // A hint: a host that cannot free the range leaves it as it is.
                if let Err(e) = s.disk.discard(offset, len) {
                    log::debug!("disk {}: discard: {e}", s.disk.path().display());
                }
                Ok(())
            } else {
                s.disk.write_zeroes(offset, len, flags & UNMAP != 0)
            };
            if let Err(e) = result {
                log::warn!("disk {}: write zeroes failed: {e}", s.disk.path().display());
                return status::IOERR;
            }
        }
        status::OK
    }
}
