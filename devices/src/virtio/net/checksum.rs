// SPDX-License-Identifier: Apache-2.0
//! Completing a checksum the guest left partial (`VIRTIO_NET_F_CSUM`):
//! the Internet checksum (RFC 1071) of a frame's bytes from `csum_start`
//! on, read from guest memory. The guest has already put the pseudo-header
//! sum in the checksum field, so summing from `csum_start` to the end
//! covers everything.

use vm_memory::VolatileSlice;

/// Bytes copied out of guest memory at a time: small enough to stay in
/// the L1 cache, a multiple of 8 so that only the last piece is short.
const PIECE: usize = 2048;

/// The Internet checksum of `segments` from byte `start` on, as the two
/// bytes to store in the frame. A result of zero is sent as 0xffff (the
/// same in ones' complement), as Linux does, since a zero UDP checksum
/// means "none".
///
/// Each segment is a slice of guest memory; the guest may change it
/// meanwhile, which only spoils its own frame.
pub fn complete(segments: &[VolatileSlice], start: usize) -> [u8; 2] {
    let mut piece = [0u8; PIECE];
    let mut fill = 0;
    let mut acc = 0u64;
    let mut skip = start;
    for seg in segments {
        let mut off = skip.min(seg.len());
        skip -= off;
        while off < seg.len() {
            let n = (seg.len() - off).min(PIECE - fill);
            // Bounds: `off + n <= seg.len()` and `fill + n <= PIECE`.
            if let Ok(sub) = seg.subslice(off, n) {
                sub.copy_to(&mut piece[fill..fill + n]);
            }
            fill += n;
            off += n;
            if fill == PIECE {
                acc = add(acc, sum(&piece));
                fill = 0;
            }
        }
    }
    acc = add(acc, sum(&piece[..fill]));
    let folded = !fold(acc);
    let value = if folded == 0 { 0xffff } else { folded };
    value.to_ne_bytes()
}

/// Ones' complement sum of `bytes` as native-endian 16-bit words (the
/// checksum's byte-order independence, RFC 1071 §2(B)), in 64 bits; an
/// odd last byte is padded with zero.
fn sum(bytes: &[u8]) -> u64 {
    let mut acc = 0u64;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let mut eight = [0u8; 8];
        eight.copy_from_slice(w);
        acc = add(acc, u64::from_ne_bytes(eight));
    }
    let rest = words.remainder();
    let mut last = [0u8; 8];
    last[..rest.len()].copy_from_slice(rest);
    add(acc, u64::from_ne_bytes(last))
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
            for start in [0, 1, 14, 34].into_iter().filter(|&s| s < len) {
                for cuts in [
                    vec![],
                    vec![len / 3],
                    vec![1.min(len), len / 2, len - len / 5],
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
