// SPDX-License-Identifier: Apache-2.0
//! virtio-net's transmit path: every chain the guest's TX ring offers
//! through `frame_of_chain` (header skipped, a partial checksum completed
//! as an overlay), then out through passt's `FrameWriter`.
//!
//! Input: see `ferry_fuzz` (queue and memory). Params: the sink takes at
//! most `p[0] + 1` bytes on odd calls and `(p[0] + 1) * 4096` on even
//! ones, and every `p[1] % 4`-th call (if more than 1) would block.
//!
//! Checked against a plain reading of each chain: the same frame bytes
//! (with the checksum RFC 1071 gives at `csum_start + csum_offset`) or the
//! same error; guest memory is never written; the frames written and
//! decoded again are those bytes.

#![no_main]

use std::io;

use ferry_devices::virtio::net::fuzzing::frame_of_chain;
use ferry_devices::virtio::net::{TxError, NET_HDR_LEN};
use ferry_fuzz::{descriptors, internet_checksum, Guest, MAX_QUEUE_SIZE};
use ferry_net_passt::writer::VectoredSink;
use ferry_net_passt::{Decoder, FrameWriter, OutFrame, MAX_FRAME_LEN, MIN_FRAME_LEN};
use libfuzzer_sys::fuzz_target;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::QueueT;
use vm_memory::GuestMemoryBackend;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`.
const F_NEEDS_CSUM: u8 = 1;

/// The frame a TX chain carries, read the plain way.
fn reference(guest: &Guest, descs: &[Descriptor]) -> Result<Vec<u8>, TxError> {
    let mut header = Vec::with_capacity(NET_HDR_LEN);
    let mut frame = Vec::new();
    for d in descs {
        if d.is_write_only() {
            return Err(TxError::WriteOnly);
        }
        if guest.mem.get_slice(d.addr(), d.len() as usize).is_err() {
            return Err(TxError::BadAddress(d.addr().0, d.len()));
        }
        let bytes = guest
            .read(d.addr().0, d.len() as usize)
            .expect("a range get_slice accepts reads");
        let take = (NET_HDR_LEN - header.len()).min(bytes.len());
        header.extend_from_slice(&bytes[..take]);
        if bytes.len() == take {
            continue;
        }
        frame.extend_from_slice(&bytes[take..]);
        if frame.len() > MAX_FRAME_LEN {
            return Err(TxError::BadLength(frame.len()));
        }
    }
    if frame.len() < MIN_FRAME_LEN {
        return Err(TxError::BadLength(frame.len()));
    }
    let (flags, gso_type) = (header[0], header[1]);
    if gso_type != 0 {
        return Err(TxError::Segmentation(gso_type));
    }
    if flags & F_NEEDS_CSUM != 0 {
        let start = u16::from_le_bytes([header[6], header[7]]);
        let offset = u16::from_le_bytes([header[8], header[9]]);
        let field = usize::from(start) + usize::from(offset);
        if field + 2 > frame.len() {
            return Err(TxError::ChecksumOutside {
                start,
                offset,
                len: frame.len(),
            });
        }
        let sum = match internet_checksum(&frame[usize::from(start)..]) {
            0 => 0xffff,
            v => v,
        };
        frame[field..field + 2].copy_from_slice(&sum.to_be_bytes());
    }
    Ok(frame)
}

/// A socket that takes at most `small` bytes on odd calls and 4096 times
/// that on even ones, and none every `block_every`-th call.
struct Sink {
    out: Vec<u8>,
    small: usize,
    block_every: usize,
    calls: usize,
}

impl VectoredSink for Sink {
    fn writev(&mut self, iov: &[libc::iovec]) -> io::Result<usize> {
        self.calls += 1;
        if self.block_every > 1 && self.calls.is_multiple_of(self.block_every) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let limit = if self.calls % 2 == 1 {
            self.small
        } else {
            self.small * 4096
        };
        let mut n = 0;
        for v in iov {
            // SAFETY: the writer's iovecs point into guest memory (alive for
            // the whole input) or into its own prefix and overlay buffers.
            let bytes = unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) };
            let take = bytes.len().min(limit - n);
            self.out.extend_from_slice(&bytes[..take]);
            n += take;
            if n == limit {
                break;
            }
        }
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    let guest = Guest::new(data);
    let mut queue = guest.queue();
    let before = guest.snapshot();
    // The chains that made frames, kept to make them again (the device
    // rewinds its ring for the frames the socket did not take).
    let mut chains = Vec::new();
    let mut expected = Vec::new();
    let mut heads = Vec::new();
    while heads.len() < 2 * usize::from(MAX_QUEUE_SIZE) {
        let Some(chain) = queue.pop_descriptor_chain(&guest.mem) else {
            break;
        };
        heads.push(chain.head_index());
        let want = reference(&guest, &descriptors(&chain));
        match (frame_of_chain(&guest.mem, chain.clone()), want) {
            (Ok(frame), Ok(bytes)) => {
                assert_eq!(frame.len(), bytes.len());
                chains.push(chain);
                expected.push(bytes);
            }
            (Err(got), Err(want)) => assert_eq!(got, want),
            (got, want) => panic!("frame_of_chain: {got:?}, expected {want:?}"),
        }
    }

    // Out to passt, however the socket chops the writes.
    let p = guest.config.params;
    let mut sink = Sink {
        out: Vec::new(),
        small: usize::from(p[0]) + 1,
        block_every: usize::from(p[1] % 4),
        calls: 0,
    };
    let mut writer = FrameWriter::new();
    // Rounds in a row in which nothing went out (the sink blocks at most
    // two calls in three).
    let mut idle = 0;
    let mut last = None;
    let mut sent = 0;
    while sent < chains.len() || writer.has_pending() {
        let now = Some((sent, sink.out.len()));
        if now == last {
            idle += 1;
            assert!(idle < 16, "the writer makes no progress");
        } else {
            idle = 0;
            last = now;
        }
        if !writer.flush(&mut sink).expect("flush") || sent == chains.len() {
            continue;
        }
        let batch: Vec<OutFrame> = chains[sent..]
            .iter()
            .map(|c| frame_of_chain(&guest.mem, c.clone()).expect("the same chain, the same frame"))
            .collect();
        let count = batch.len();
        let written = writer.write(&mut sink, batch).expect("write");
        assert_eq!(written.started, writer.has_pending());
        let taken = written.whole + usize::from(written.started);
        assert!(taken <= count);
        sent += taken;
    }
    // The device only reads guest memory.
    assert!(guest.snapshot() == before, "the TX path wrote guest memory");

    let mut dec = Decoder::new(0);
    let mut got = Vec::new();
    let mut rest = sink.out.as_slice();
    while !rest.is_empty() {
        let spare = dec.spare();
        let n = spare.len().min(rest.len());
        spare[..n].copy_from_slice(&rest[..n]);
        dec.commit(n);
        rest = &rest[n..];
        while let Some(f) = dec.peek().expect("the writer's stream is well framed") {
            got.push(f.to_vec());
            dec.consume();
        }
    }
    assert_eq!(dec.buffered(), 0);
    assert_eq!(got, expected);

    for head in heads {
        let _ = queue.add_used(&guest.mem, head, 0);
    }
});
