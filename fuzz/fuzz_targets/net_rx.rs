// SPDX-License-Identifier: Apache-2.0
//! virtio-net's receive path: frames delivered into the buffers the
//! guest's RX ring offers, with and without mergeable buffers, by copy
//! (`RxSide::deliver`, passt) or by a read straight into them
//! (`RxSide::read_into`, a TAP).
//!
//! Input: see `ferry_fuzz` (queue and memory). Flags (config byte 1):
//! bit 1 mergeable buffers, bit 2 `data_valid`. Params: `p[0] % 4 + 1`
//! frames; the first is `p[1..3]` (u16 LE) bytes long, each next one
//! that times its number; bit i of `p[3]` sends frame i by a read, whose
//! reader writes at most `p[3] >> 4` fewer bytes than it has room for.
//!
//! Checked against a model built from the buffers the RX side took (head,
//! segments): every buffer it takes lies in guest memory and holds a
//! header; the outcome (delivered, dropped, no buffers) follows from the
//! buffers' sizes; the header, `num_buffers` and frame land in the
//! buffers in order and nothing else in memory changes (the used ring
//! aside); the used ring gets each buffer's head and the bytes written.

#![no_main]

use std::num::Wrapping;

use ferry_devices::virtio::net::fuzzing::{Delivery, RxSide};
use ferry_devices::virtio::net::{RxBuffer, NET_HDR_LEN};
use ferry_fuzz::{pattern, used_entry, used_idx, Guest, Shadow};
use libfuzzer_sys::fuzz_target;
use virtio_queue::QueueT;
use vm_memory::GuestMemoryBackend;

/// `VIRTIO_NET_HDR_F_DATA_VALID`.
const F_DATA_VALID: u8 = 2;
/// Offset of `num_buffers` in the header.
const NUM_BUFFERS: usize = 10;

/// A buffer as the model sees it.
struct Buf {
    head: u16,
    segments: Vec<(u64, usize)>,
    capacity: usize,
}

fn model_of(buf: &RxBuffer) -> Buf {
    Buf {
        head: buf.head,
        segments: buf.segments().iter().map(|&(a, l)| (a.0, l)).collect(),
        capacity: buf.capacity,
    }
}

/// Writes `bytes` into `buf` from offset `at`, as the device does: what
/// fits; returns how many.
fn write_at(shadow: &mut Shadow, buf: &Buf, mut at: usize, bytes: &[u8]) -> usize {
    let mut written = 0;
    for &(addr, len) in &buf.segments {
        if written == bytes.len() {
            break;
        }
        if at >= len {
            at -= len;
            continue;
        }
        let n = (len - at).min(bytes.len() - written);
        shadow.write(addr + at as u64, &bytes[written..written + n]);
        written += n;
        at = 0;
    }
    written
}

/// How many buffers from the first hold `need` bytes.
fn buffers_for(stash: &[Buf], need: usize, mrg: bool) -> usize {
    if !mrg {
        return 1;
    }
    let mut room = 0;
    let mut count = 0;
    while room < need && count < stash.len() {
        room += stash[count].capacity;
        count += 1;
    }
    count
}

fuzz_target!(|data: &[u8]| {
    let guest = Guest::new(data);
    let config = guest.config;
    let mrg = config.flags & 2 != 0;
    let data_valid = config.flags & 4 != 0;
    let p = config.params;
    let mut rx = RxSide::for_fuzzing(guest.queue(), mrg, data_valid);
    let used_range = config.used_ring_range();
    let used_ring_ok = guest.range_in_memory(used_range);
    // Turning notifications back on writes the used ring; if the available
    // ring lies there, that may offer chains the model has not seen.
    let avail_end = config.avail_ring + 6 + 2 * u64::from(config.size);
    let rings_overlap = config.avail_ring < used_range.1 && used_range.0 < avail_end;

    let frames = usize::from(p[0] % 4) + 1;
    let base_len = usize::from(u16::from_le_bytes([p[1], p[2]]));
    for i in 0..frames {
        let frame = pattern(i as u8, (base_len * (i + 1)) % 65536);
        let by_read = p[3] & (1 << i) != 0;
        let short_by = usize::from(p[3] >> 4);
        let need = NET_HDR_LEN + frame.len();

        // The buffers the RX side takes for this frame (deliver stocks
        // the same way first; stocking twice takes nothing more).
        let stocked = rx.stock_for_fuzzing(&guest.mem, need);
        let stash: Vec<Buf> = rx.stash_for_fuzzing().iter().map(model_of).collect();
        for b in &stash {
            assert!(
                b.capacity >= NET_HDR_LEN,
                "a buffer without room for a header"
            );
            assert_eq!(b.capacity, b.segments.iter().map(|s| s.1).sum::<usize>());
            for &(addr, len) in &b.segments {
                assert!(
                    guest
                        .mem
                        .get_slice(vm_memory::GuestAddress(addr), len)
                        .is_ok(),
                    "a segment outside guest memory: 0x{addr:x}+{len}"
                );
            }
        }
        let stash_capacity: usize = stash.iter().map(|b| b.capacity).sum();
        assert_eq!(rx.stash_capacity_for_fuzzing(), stash_capacity);
        if stocked {
            if mrg {
                assert!(stash_capacity >= need);
            } else {
                assert!(!stash.is_empty());
            }
        }
        if !stocked && rings_overlap {
            let _ = rx.deliver(&guest.mem, &frame);
            return;
        }
        let next_used = Wrapping(rx.queue_for_fuzzing().next_used());
        let mut shadow = Shadow(guest.snapshot());
        let count = buffers_for(&stash, need, mrg);

        let (outcome, used): (Delivery, Vec<(u16, u32)>) = if by_read {
            let mut read_bytes = Vec::new();
            let result = rx.read_into(&guest.mem, need, |iov| {
                let room: usize = iov.iter().map(|v| v.iov_len).sum();
                let n = room.min(need).saturating_sub(short_by);
                let mut packet = vec![0x5a; NET_HDR_LEN];
                packet.extend_from_slice(&frame);
                let mut done = 0;
                for v in iov {
                    let k = v.iov_len.min(n - done);
                    // SAFETY: the RX side hands out iovecs into guest memory
                    // that it checked when it took the buffers; they stay
                    // mapped for the call.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            packet[done..].as_ptr(),
                            v.iov_base.cast::<u8>(),
                            k,
                        )
                    };
                    done += k;
                }
                read_bytes = packet[..n].to_vec();
                Ok(n)
            });
            let outcome = result.expect("the reader does not fail");
            if !stocked {
                assert_eq!(outcome, Delivery::NoBuffers);
                (outcome, Vec::new())
            } else {
                let n = read_bytes.len();
                let mut all: Vec<(u64, usize)> = Vec::new();
                for b in &stash[..count] {
                    all.extend_from_slice(&b.segments);
                }
                assert_eq!(shadow.write_segments(&all, &read_bytes), n);
                let mut used = Vec::new();
                let mut left = n;
                for b in &stash[..count] {
                    if left == 0 && !used.is_empty() {
                        break;
                    }
                    let len = left.min(b.capacity);
                    used.push((b.head, len as u32));
                    left -= len;
                }
                if n < NET_HDR_LEN {
                    assert_eq!(outcome, Delivery::Dropped);
                    used.truncate(1);
                    used[0].1 = 0;
                } else {
                    assert_eq!(outcome, Delivery::Delivered);
                    let filled = (used.len() as u16).to_le_bytes();
                    write_at(&mut shadow, &stash[0], NUM_BUFFERS, &filled);
                }
                (outcome, used)
            }
        } else {
            let outcome = rx.deliver(&guest.mem, &frame);
            if !stocked {
                assert_eq!(outcome, Delivery::NoBuffers);
                (outcome, Vec::new())
            } else if !mrg && stash[0].capacity < need {
                assert_eq!(outcome, Delivery::Dropped);
                (outcome, vec![(stash[0].head, 0)])
            } else {
                assert_eq!(outcome, Delivery::Delivered);
                let mut header = [0u8; NET_HDR_LEN];
                if data_valid {
                    header[0] = F_DATA_VALID;
                }
                header[NUM_BUFFERS..].copy_from_slice(&(count as u16).to_le_bytes());
                let mut rest = frame.as_slice();
                let mut used = Vec::new();
                for (j, b) in stash[..count].iter().enumerate() {
                    let n = if j == 0 {
                        write_at(&mut shadow, b, 0, &header)
                    } else {
                        0
                    };
                    let m = write_at(&mut shadow, b, n, rest);
                    rest = &rest[m..];
                    used.push((b.head, (n + m) as u32));
                }
                assert!(rest.is_empty(), "the buffers did not hold the frame");
                (outcome, used)
            }
        };

        // Memory: the model's writes, nothing else (the used ring aside).
        shadow.assert_matches(&guest.snapshot(), Some(used_range), "RX delivery");

        // The used ring: one entry per buffer used, in order.
        let after = Wrapping(rx.queue_for_fuzzing().next_used());
        if used_ring_ok {
            assert_eq!((after - next_used).0 as usize, used.len());
        }
        if used_ring_ok && !used.is_empty() {
            // The device writes the index after each entry.
            assert_eq!(used_idx(&guest), Some(after.0));
            if used.len() <= usize::from(config.size) {
                for (j, &(head, len)) in used.iter().enumerate() {
                    let at = next_used + Wrapping(j as u16);
                    assert_eq!(used_entry(&guest, at), Some((u32::from(head), len)));
                }
            }
        }
        if matches!(outcome, Delivery::Delivered) {
            let total: u32 = used.iter().map(|u| u.1).sum();
            if !by_read {
                assert_eq!(total as usize, need);
            }
        }
        // The buffers used are gone from the stash, the others wait.
        let left: Vec<u16> = rx.stash_for_fuzzing().iter().map(|b| b.head).collect();
        let expect_left: Vec<u16> = stash[used.len()..].iter().map(|b| b.head).collect();
        if stocked {
            assert_eq!(left, expect_left);
        }
    }
});
