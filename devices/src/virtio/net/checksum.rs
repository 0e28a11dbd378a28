// SPDX-License-Identifier: Apache-2.0
//! Completing a checksum the guest left partial (`VIRTIO_NET_F_CSUM`):
//! the Internet checksum (RFC 1071) of a frame's bytes from `csum_start`
//! on, read from guest memory. The guest has already put the pseudo-header
//! sum in the checksum field, so summing from `csum_start` to the end
//! covers everything.

use vm_memory::VolatileSlice;

/// The Internet checksum of `segments` from byte `start` on, as the two
/// bytes to store in the frame. A result of zero is sent as 0xffff (the
/// same in ones' complement), as Linux does, since a zero UDP checksum
/// means "none".
///
/// Each segment is a slice of guest memory, summed where it lies with
/// volatile reads (no copy); the guest may change it meanwhile, which
/// only spoils its own frame.
pub fn complete(segments: &[VolatileSlice], start: usize) -> [u8; 2] {
    let mut acc = 0u64;
    // Bytes summed so far: a block that begins at an odd position pairs its
    // bytes the other way round, so its sum is byte-swapped (RFC 1071 §2(B)).
    let mut position = 0usize;
    let mut skip = start;
    for seg in segments {
        let off = skip.min(seg.len());
        skip -= off;
        let len = seg.len() - off;
        if len == 0 {
            continue;
        }
        // SAFETY: `off + len` is the segment's length, so the bytes lie in
        // the slice, which points to mapped guest memory.
        let block = unsafe { sum_volatile(seg.ptr_guard().as_ptr().add(off), len) };
        acc = add(acc, u64::from(swapped_if_odd(block, position)));
        position += len;
    }
    let folded = !fold(acc);
    let value = if folded == 0 { 0xffff } else { folded };
    value.to_ne_bytes()
}

/// A 16-bit ones' complement sum of a block at byte `position` of the
/// summed range, as if the block began at an even position.
fn swapped_if_odd(sum: u16, position: usize) -> u16 {
    if position % 2 == 1 {
        sum.swap_bytes()
    } else {
        sum
    }
}

/// Ones' complement sum of the `len` bytes at `ptr` as native-endian
/// 16-bit words paired from `ptr` on (an odd last byte padded with zero),
/// folded to 16 bits: bytes up to an 8-byte boundary, then aligned 8-byte
/// words, then the last few bytes, all read volatile.
///
/// # Safety
/// `ptr..ptr + len` must be readable.
unsafe fn sum_volatile(ptr: *const u8, len: usize) -> u16 {
    let head = ptr.align_offset(8).min(len);
    // SAFETY: the first `head <= len` bytes of the range.
    let head_word = unsafe { partial_word(ptr, head) };
    let words = (len - head) / 8;
    let body = ptr.wrapping_add(head) as *const u64;
    let mut acc = 0u64;
    for i in 0..words {
        // SAFETY: aligned (`head` reaches an 8-byte boundary) and in range.
        acc = add(acc, unsafe { std::ptr::read_volatile(body.add(i)) });
    }
    let tail = len - head - 8 * words;
    // SAFETY: the last `tail` bytes of the range.
    let tail_word = unsafe { partial_word(ptr.add(head + 8 * words), tail) };
    acc = add(acc, tail_word);
    // The body and tail start `head` bytes in: swapped if that is odd.
    let rest = swapped_if_odd(fold(acc), head);
    fold(add(fold(head_word).into(), rest.into()))
}

/// The `n` (< 8) bytes at `ptr`, read volatile, as the first bytes of a
/// native-endian word padded with zeros.
///
/// # Safety
/// `ptr..ptr + n` must be readable.
unsafe fn partial_word(ptr: *const u8, n: usize) -> u64 {
    let mut bytes = [0u8; 8];
    for (i, b) in bytes.iter_mut().enumerate().take(n) {
        // SAFETY: the caller's contract: `i < n`.
        *b = unsafe { std::ptr::read_volatile(ptr.add(i)) };
    }
    u64::from_ne_bytes(bytes)
}

/// Ones' complement addition of two 64-bit sums.
fn add(a: u64, b: u64) -> u64 {
    let (s, carry) = a.overflowing_add(b);
    s + u64::from(carry)
}

/// A 64-bit ones' complement sum folded to 16 bits.
fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071 done the slow way: big-endian 16-bit words.
    fn reference(bytes: &[u8]) -> u16 {
        let mut acc = 0u32;
        for pair in bytes.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            let lo = pair.get(1).map_or(0, |&b| u32::from(b));
            acc += hi | lo;
            acc = (acc & 0xffff) + (acc >> 16);
        }
        !(acc as u16)
    }

    fn slices(buf: &mut [u8], cuts: &[usize]) -> Vec<VolatileSlice<'static>> {
        let mut out = Vec::new();
        let mut at = 0;
        for &cut in cuts.iter().chain([buf.len()].iter()) {
            // SAFETY: the test buffer outlives the slices (leaked below).
            out.push(unsafe { VolatileSlice::new(buf.as_mut_ptr().add(at), cut - at) });
            at = cut;
        }
        out
    }

    #[test]
    fn matches_rfc1071_for_any_split_start_and_length() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in [1usize, 2, 3, 7, 8, 9, 60, 1499, 2048, 2049, 5000, 65_535] {
            let buf: &'static mut [u8] = Box::leak(
                (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        seed as u8
                    })
                    .collect::<Vec<u8>>()
                    .into_boxed_slice(),
            );
            let copy = buf.to_vec();
            for start in [0, 1, 3, 9, 14, 34].into_iter().filter(|&s| s < len) {
                for cuts in [
                    vec![],
                    vec![len / 3],
                    vec![1.min(len), len / 2, len - len / 5],
                    vec![5, 6, 13, 22, 23],
                ] {
                    let mut cuts: Vec<usize> = cuts.into_iter().filter(|&c| c <= len).collect();
                    cuts.sort();
                    let got = u16::from_ne_bytes(complete(&slices(buf, &cuts), start));
                    let want = match reference(&copy[start..]) {
                        0 => 0xffff,
                        v => v,
                    };
                    assert_eq!(got, want.to_be(), "len {len} start {start} cuts {cuts:?}");
                }
            }
        }
    }

    #[test]
    fn a_completed_tcp_segment_verifies() {
        // IPv4 192.0.2.1 -> 192.0.2.254, TCP, 20-byte header + "ferry!".
        let mut seg = vec![0u8; 26];
        seg[0..2].copy_from_slice(&40000u16.to_be_bytes());
        seg[2..4].copy_from_slice(&5201u16.to_be_bytes());
        seg[12] = 5 << 4;
        seg[20..].copy_from_slice(b"ferry!");
        let mut pseudo = vec![192, 0, 2, 1, 192, 0, 2, 254, 0, 6];
        pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
        // What the guest leaves in the field: the folded pseudo-header sum.
        let partial = !reference(&pseudo);
        seg[16..18].copy_from_slice(&partial.to_be_bytes());
        let buf: &'static mut [u8] = Box::leak(seg.clone().into_boxed_slice());
        let value = complete(&slices(buf, &[7]), 0);
        seg[16..18].copy_from_slice(&value);
        let mut whole = pseudo.clone();
        whole.extend_from_slice(&seg);
        assert_eq!(
            reference(&whole),
            0,
            "receiver's check: the sum is all ones"
        );
    }
}
