// SPDX-License-Identifier: Apache-2.0
//! passt's framing: `[u32 big-endian length][frame]`, repeated, with
//! 14 <= length <= 65535. The [`Decoder`] takes the stream in pieces of
//! any size and hands out whole frames; a bad length means the stream is
//! garbled and the connection must be dropped.

use std::io::{self, Read};

/// Bytes of the length prefix.
pub const PREFIX_LEN: usize = 4;
/// Shortest frame: an Ethernet header.
pub const MIN_FRAME_LEN: usize = 14;
/// Longest frame passt sends or accepts.
pub const MAX_FRAME_LEN: usize = 65535;

/// A length prefix that no valid frame has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("bad frame length {0} in the passt stream (valid: {MIN_FRAME_LEN} to {MAX_FRAME_LEN})")]
pub struct FrameError(pub u32);

/// The length prefix for a frame of `len` bytes.
pub fn prefix(len: usize) -> Result<[u8; PREFIX_LEN], FrameError> {
    if (MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&len) {
        Ok((len as u32).to_be_bytes())
    } else {
        Err(FrameError(len.min(u32::MAX as usize) as u32))
    }
}

/// Incremental decoder over a fixed buffer: read into [`Decoder::spare`],
/// [`Decoder::commit`] what was read, then take frames with
/// [`Decoder::peek`] and [`Decoder::consume`]. A frame is consumed only
/// when its receiver is ready, so nothing is dropped while the guest has no
/// buffers: the decoder just stops reading.
#[derive(Debug)]
pub struct Decoder {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Decoder {
    /// A decoder whose buffer holds `capacity` bytes (at least one whole largest frame).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(PREFIX_LEN + MAX_FRAME_LEN);
        Self {
            buf: vec![0; capacity].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// Bytes buffered and not yet consumed.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Free space to read into; moves buffered bytes to the front when the
    /// tail is too short for a whole largest frame. Empty when the buffer
    /// already holds a complete frame's worth and more.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.buf.len() - self.end < PREFIX_LEN + MAX_FRAME_LEN && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were written into [`Decoder::spare`].
    pub fn commit(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Reads once from `reader` into the buffer; returns the bytes read
    /// (0 at end of stream). Reads nothing, and returns `WouldBlock`, if the buffer is full.
    pub fn fill_from<R: Read>(&mut self, reader: &mut R) -> io::Result<usize> {
        let spare = self.spare();
        if spare.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = reader.read(spare)?;
        self.commit(n);
        Ok(n)
    }

    /// The next complete frame, if the buffer holds one.
    pub fn peek(&self) -> Result<Option<&[u8]>, FrameError> {
        let data = &self.buf[self.start..self.end];
        let Some(header) = data.get(..PREFIX_LEN) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let ulen = len as usize;
        if !(MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&ulen) {
            return Err(FrameError(len));
        }
        Ok(data.get(PREFIX_LEN..PREFIX_LEN + ulen))
    }

    /// Drops the frame [`Decoder::peek`] returned.
    pub fn consume(&mut self) {
        if let Ok(Some(frame)) = self.peek() {
            self.start += PREFIX_LEN + frame.len();
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream of frames of the given lengths, each filled with its index.
    fn stream(lens: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, len) in lens.iter().enumerate() {
            out.extend_from_slice(&prefix(*len).unwrap());
            out.extend(std::iter::repeat_n(i as u8, *len));
        }
        out
    }

    /// Feeds `data` in pieces of `sizes` (cycled) and collects every frame.
    fn decode_in_pieces(data: &[u8], sizes: &[usize]) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut dec = Decoder::new(0);
        let mut frames = Vec::new();
        let mut pos = 0;
        let mut i = 0;
        while pos < data.len() {
            let n = sizes[i % sizes.len()].max(1).min(data.len() - pos);
            i += 1;
            let spare = dec.spare();
            let n = n.min(spare.len());
            spare[..n].copy_from_slice(&data[pos..pos + n]);
            dec.commit(n);
            pos += n;
            while let Some(frame) = dec.peek()? {
                frames.push(frame.to_vec());
                dec.consume();
            }
        }
        Ok(frames)
    }

    #[test]
    fn every_split_of_a_stream_gives_the_same_frames() {
        let lens = [14, 60, 1514, 14, 300];
        let data = stream(&lens);
        let whole = decode_in_pieces(&data, &[data.len()]).unwrap();
        assert_eq!(whole.iter().map(Vec::len).collect::<Vec<_>>(), lens);
        // Every single cut point, then byte by byte.
        for cut in 1..data.len() {
            let frames = decode_in_pieces(&data, &[cut, data.len()]).unwrap();
            assert_eq!(frames, whole, "cut at {cut}");
        }
        assert_eq!(decode_in_pieces(&data, &[1]).unwrap(), whole);
        assert_eq!(decode_in_pieces(&data, &[3, 7, 1, 2000]).unwrap(), whole);
    }

    #[test]
    fn largest_frames_back_to_back_fit_the_buffer() {
        let lens = [MAX_FRAME_LEN, MAX_FRAME_LEN, 14, MAX_FRAME_LEN];
        let data = stream(&lens);
        let frames = decode_in_pieces(&data, &[40_000, 70_000, 3]).unwrap();
        assert_eq!(frames.iter().map(Vec::len).collect::<Vec<_>>(), lens);
        assert!(frames[3].iter().all(|b| *b == 3));
    }

    #[test]
    fn zero_short_and_oversized_lengths_are_errors() {
        for len in [0u32, 1, 13, 65536, u32::MAX] {
            let mut data = len.to_be_bytes().to_vec();
            data.extend([0u8; 32]);
            assert_eq!(
                decode_in_pieces(&data, &[5]),
                Err(FrameError(len)),
                "length {len}"
            );
        }
        assert!(prefix(13).is_err());
        assert!(prefix(65536).is_err());
        assert_eq!(prefix(1514).unwrap(), [0, 0, 5, 0xea]);
    }

    #[test]
    fn an_unconsumed_frame_holds_the_stream_back() {
        let data = stream(&[100, 200]);
        let mut dec = Decoder::new(0);
        dec.spare()[..data.len()].copy_from_slice(&data);
        dec.commit(data.len());
        // Peeking twice without consuming gives the same frame.
        assert_eq!(dec.peek().unwrap().unwrap().len(), 100);
        assert_eq!(dec.peek().unwrap().unwrap().len(), 100);
        dec.consume();
        assert_eq!(dec.peek().unwrap().unwrap().len(), 200);
        dec.consume();
        assert_eq!(dec.peek().unwrap(), None);
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn a_full_buffer_reads_nothing() {
        let mut dec = Decoder::new(0);
        let cap = dec.spare().len();
        dec.commit(cap);
        let mut src: &[u8] = &[1, 2, 3];
        assert_eq!(
            dec.fill_from(&mut src).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }

    /// A small deterministic generator for the randomized test below.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn random_streams_and_splits_never_panic_and_round_trip() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..300 {
            let count = (rng.next() % 8) as usize;
            let lens: Vec<usize> = (0..count)
                .map(|_| MIN_FRAME_LEN + (rng.next() % 3000) as usize)
                .collect();
            let mut data = stream(&lens);
            let sizes: Vec<usize> = (0..5).map(|_| 1 + (rng.next() % 5000) as usize).collect();
            let frames = decode_in_pieces(&data, &sizes).unwrap();
            assert_eq!(frames.iter().map(Vec::len).collect::<Vec<_>>(), lens);
            // Garble one byte: the decoder may fail or misframe, but never panics.
            if !data.is_empty() {
                let at = (rng.next() as usize) % data.len();
                data[at] ^= 0xff;
                let _ = decode_in_pieces(&data, &sizes);
            }
            // Pure noise.
            let noise: Vec<u8> = (0..(rng.next() % 2000)).map(|_| rng.next() as u8).collect();
            let _ = decode_in_pieces(&noise, &sizes);
        }
    }

    proptest::proptest! {
        /// Any list of valid frames, cut at any points, decodes to the same frames.
        #[test]
        fn prop_any_split_round_trips(
            lens in proptest::collection::vec(MIN_FRAME_LEN..4000usize, 0..12),
            cuts in proptest::collection::vec(1..9000usize, 1..8),
        ) {
            let data = stream(&lens);
            let frames = decode_in_pieces(&data, &cuts).unwrap();
            proptest::prop_assert_eq!(frames.iter().map(Vec::len).collect::<Vec<_>>(), lens);
        }

        /// Arbitrary bytes never panic the decoder, and anything it returns is a valid frame.
        #[test]
        fn prop_noise_never_panics(
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20000),
            cuts in proptest::collection::vec(1..5000usize, 1..8),
        ) {
            if let Ok(frames) = decode_in_pieces(&noise, &cuts) {
                for f in frames {
                    proptest::prop_assert!((MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&f.len()));
                }
            }
        }
    }
}
