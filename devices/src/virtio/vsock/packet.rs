// SPDX-License-Identifier: Apache-2.0
//! The vsock packet (virtio 1.2, 5.10.6): the 44-byte header every packet
//! starts with, checking the packets the guest sends (TX), and writing the
//! ones the device sends into the guest's RX buffers.

use std::io::{Read, Write};

use virtio_queue::{DescriptorChain, Reader, Writer};

use crate::GuestMemory;

/// Size of `struct virtio_vsock_hdr`.
pub const HDR_LEN: usize = 44;
/// The host's CID: every packet the guest sends goes there.
pub const HOST_CID: u64 = 2;
/// `VIRTIO_VSOCK_TYPE_STREAM`, the only socket type ferry offers.
pub const TYPE_STREAM: u16 = 1;
/// Most data one packet from the guest may carry (the Linux driver sends
/// at most this much per packet).
pub const MAX_PKT_LEN: u32 = 64 * 1024;

/// `VIRTIO_VSOCK_SHUTDOWN_RCV`: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// `VIRTIO_VSOCK_SHUTDOWN_SEND`: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;
/// Both shutdown flags.
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// A packet's operation (`op`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Asks for a connection.
    Request,
    /// Accepts one.
    Response,
    /// Refuses or ends one at once.
    Rst,
    /// Ends one or both directions (`flags`).
    Shutdown,
    /// Carries data.
    Rw,
    /// Tells the peer the sender's credit.
    CreditUpdate,
    /// Asks the peer for its credit.
    CreditRequest,
}

impl Op {
    /// The operation numbered `op`, if there is one.
    pub fn from_u16(op: u16) -> Option<Self> {
        Some(match op {
            1 => Self::Request,
            2 => Self::Response,
            3 => Self::Rst,
            4 => Self::Shutdown,
            5 => Self::Rw,
            6 => Self::CreditUpdate,
            7 => Self::CreditRequest,
            _ => return None,
        })
    }

    /// Its number on the wire.
    pub fn to_u16(self) -> u16 {
        match self {
            Self::Request => 1,
            Self::Response => 2,
            Self::Rst => 3,
            Self::Shutdown => 4,
            Self::Rw => 5,
            Self::CreditUpdate => 6,
            Self::CreditRequest => 7,
        }
    }
}

/// `struct virtio_vsock_hdr`, decoded (every field little endian on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// Sender's CID.
    pub src_cid: u64,
    /// Receiver's CID.
    pub dst_cid: u64,
    /// Sender's port.
    pub src_port: u32,
    /// Receiver's port.
    pub dst_port: u32,
    /// Bytes of data after the header.
    pub len: u32,
    /// Socket type.
    pub type_: u16,
    /// Operation (see [`Op`]).
    pub op: u16,
    /// Shutdown flags.
    pub flags: u32,
    /// The sender's receive buffer for this connection.
    pub buf_alloc: u32,
    /// Bytes the sender has taken out of that buffer, ever (wrapping).
    pub fwd_cnt: u32,
}

impl Header {
    /// Decodes `bytes`.
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Self {
        let u64_at = |i: usize| {
            let mut v = [0u8; 8];
            v.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(v)
        };
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Encodes it.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// Checks a header the guest sent, `data_available` bytes of its chain
    /// following it: its operation, or why the packet is malformed.
    pub fn check_from_guest(
        &self,
        guest_cid: u64,
        data_available: usize,
    ) -> Result<Op, PacketError> {
        if self.src_cid != guest_cid {
            return Err(PacketError::BadSrcCid(self.src_cid));
        }
        if self.dst_cid != HOST_CID {
            return Err(PacketError::BadDstCid(self.dst_cid));
        }
        if self.type_ != TYPE_STREAM {
            return Err(PacketError::BadType(self.type_));
        }
        let op = Op::from_u16(self.op).ok_or(PacketError::BadOp(self.op))?;
        if op == Op::Rw {
            if self.len > MAX_PKT_LEN {
                return Err(PacketError::TooLong(self.len));
            }
            if self.len as usize > data_available {
                return Err(PacketError::LenBeyondChain {
                    len: self.len,
                    available: data_available,
                });
            }
        }
        Ok(op)
    }
}

/// Why a packet from the guest (or a buffer it gave) is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// The chain points outside guest memory, or its length overflows.
    #[error("descriptor chain outside guest memory: {0}")]
    Memory(String),
    /// The chain is shorter than a header.
    #[error("chain of {0} bytes cannot hold a vsock header")]
    ShortHeader(usize),
    /// The socket type is not STREAM.
    #[error("socket type {0} is not STREAM")]
    BadType(u16),
    /// The operation is unknown.
    #[error("unknown operation {0}")]
    BadOp(u16),
    /// `len` says more data than the chain holds.
    #[error("len {len} beyond the {available} data bytes of the chain")]
    LenBeyondChain {
        /// The header's `len`.
        len: u32,
        /// Bytes the chain holds after the header.
        available: usize,
    },
    /// `len` is beyond what a packet may carry.
    #[error("len {0} beyond {MAX_PKT_LEN}")]
    TooLong(u32),
    /// The source is not the guest.
    #[error("source CID {0} is not the guest's")]
    BadSrcCid(u64),
    /// The destination is not the host.
    #[error("destination CID {0} is not the host ({HOST_CID})")]
    BadDstCid(u64),
}

/// Reads a TX chain: its checked header and operation; the data of an RW
/// packet goes into `data` (emptied first).
pub fn read_tx_chain(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    guest_cid: u64,
    data: &mut Vec<u8>,
) -> Result<(Header, Op), PacketError> {
    data.clear();
    let mut reader: Reader<'_> =
        Reader::new(mem, chain).map_err(|e| PacketError::Memory(e.to_string()))?;
    let total = reader.available_bytes();
    let mut bytes = [0u8; HDR_LEN];
    if total < HDR_LEN || reader.read_exact(&mut bytes).is_err() {
        return Err(PacketError::ShortHeader(total));
    }
    let header = Header::from_bytes(&bytes);
    let op = header.check_from_guest(guest_cid, total - HDR_LEN)?;
    if op == Op::Rw {
        data.resize(header.len as usize, 0);
        reader
            .read_exact(data)
            .map_err(|e| PacketError::Memory(e.to_string()))?;
    }
    Ok((header, op))
}

/// A guest RX buffer, checked: room for a header and this much data.
pub struct RxBuffer<'a> {
    writer: Writer<'a>,
}

impl std::fmt::Debug for RxBuffer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RxBuffer")
            .field("room", &self.writer.available_bytes())
            .finish()
    }
}

impl<'a> RxBuffer<'a> {
    /// The buffer a chain describes; an error if it lies outside guest
    /// memory or cannot hold a header.
    pub fn new(
        mem: &'a GuestMemory,
        chain: DescriptorChain<&'a GuestMemory>,
    ) -> Result<Self, PacketError> {
        let writer = Writer::new(mem, chain).map_err(|e| PacketError::Memory(e.to_string()))?;
        if writer.available_bytes() < HDR_LEN {
            return Err(PacketError::ShortHeader(writer.available_bytes()));
        }
        Ok(Self { writer })
    }

    /// Data bytes it holds after the header.
    pub fn data_room(&self) -> usize {
        self.writer.available_bytes() - HDR_LEN
    }

    /// Writes the packet (`header.len` is set to the data's length); the
    /// bytes written, for the used ring. `data` must fit [`Self::data_room`].
    pub fn write(mut self, header: &Header, data: &[u8]) -> u32 {
        let header = Header {
            len: data.len() as u32,
            ..*header
        };
        // Checked against guest memory when the buffer was taken: cannot fail.
        let _ = self.writer.write_all(&header.to_bytes());
        let _ = self.writer.write_all(data);
        self.writer.bytes_written() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: u64 = 3;

    fn good() -> Header {
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port: 1234,
            dst_port: 52,
            len: 0,
            type_: TYPE_STREAM,
            op: 1,
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt: 0,
        }
    }

    #[test]
    fn a_header_round_trips_with_its_fields_where_virtio_says() {
        let h = Header {
            src_cid: 0x0102_0304_0506_0708,
            dst_cid: 2,
            src_port: 0xaabb_ccdd,
            dst_port: 7,
            len: 9,
            type_: 1,
            op: 5,
            flags: 3,
            buf_alloc: 0x1000,
            fwd_cnt: 0xffff_fffe,
        };
        let b = h.to_bytes();
        assert_eq!(b[0], 0x08, "little endian");
        assert_eq!(&b[8..16], &2u64.to_le_bytes());
        assert_eq!(&b[16..20], &0xaabb_ccddu32.to_le_bytes());
        assert_eq!(&b[24..28], &9u32.to_le_bytes());
        assert_eq!(&b[28..32], &[1, 0, 5, 0]);
        assert_eq!(&b[40..44], &0xffff_fffeu32.to_le_bytes());
        assert_eq!(Header::from_bytes(&b), h);
        for op in 1..=7 {
            assert_eq!(Op::from_u16(op).map(Op::to_u16), Some(op));
        }
        assert_eq!(Op::from_u16(0), None);
        assert_eq!(Op::from_u16(8), None);
    }

    #[test]
    fn guest_headers_are_checked() {
        let rw = |len| Header {
            op: 5,
            len,
            ..good()
        };
        let table: Vec<(Header, usize, Result<Op, PacketError>)> = vec![
            (good(), 0, Ok(Op::Request)),
            (rw(100), 100, Ok(Op::Rw)),
            (rw(100), 4000, Ok(Op::Rw)),
            (rw(MAX_PKT_LEN), MAX_PKT_LEN as usize, Ok(Op::Rw)),
            (
                rw(101),
                100,
                Err(PacketError::LenBeyondChain {
                    len: 101,
                    available: 100,
                }),
            ),
            (
                rw(MAX_PKT_LEN + 1),
                1 << 20,
                Err(PacketError::TooLong(MAX_PKT_LEN + 1)),
            ),
            // Control packets carry no data: their len is not looked at.
            (
                Header {
                    len: 5000,
                    ..good()
                },
                0,
                Ok(Op::Request),
            ),
            (
                Header { type_: 2, ..good() },
                0,
                Err(PacketError::BadType(2)),
            ),
            (
                Header { type_: 0, ..good() },
                0,
                Err(PacketError::BadType(0)),
            ),
            (Header { op: 0, ..good() }, 0, Err(PacketError::BadOp(0))),
            (Header { op: 8, ..good() }, 0, Err(PacketError::BadOp(8))),
            (
                Header {
                    op: 0xffff,
                    ..good()
                },
                0,
                Err(PacketError::BadOp(0xffff)),
            ),
            (
                Header {
                    src_cid: 4,
                    ..good()
                },
                0,
                Err(PacketError::BadSrcCid(4)),
            ),
            (
                Header {
                    src_cid: HOST_CID,
                    ..good()
                },
                0,
                Err(PacketError::BadSrcCid(HOST_CID)),
            ),
            (
                Header {
                    dst_cid: 1,
                    ..good()
                },
                0,
                Err(PacketError::BadDstCid(1)),
            ),
            (
                Header {
                    dst_cid: CID,
                    ..good()
                },
                0,
                Err(PacketError::BadDstCid(CID)),
            ),
        ];
        for (i, (h, available, want)) in table.into_iter().enumerate() {
            assert_eq!(h.check_from_guest(CID, available), want, "case {i}: {h:?}");
        }
    }
}
