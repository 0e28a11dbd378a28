// SPDX-License-Identifier: Apache-2.0
//! passt's stream framing, both ways.
//!
//! Input: 8 piece sizes (u16 LE each, 0 counts as 1), a flags byte, an
//! overlay byte, then the stream as passt would send it.
//!
//! - [`Decoder`] fed the stream in those pieces (by `fill_from` or by
//!   `spare`/`commit`) gives exactly the frames, and the error, of a plain
//!   reading of the format, and never stalls with input left.
//! - The frames it gave, cut into segments at those sizes (and with a
//!   two-byte overlay if the flags ask), written by [`FrameWriter`] to a
//!   sink that takes a few bytes at a time, refuses or is interrupted,
//!   decode back to the same frames; a frame passt cannot carry is refused
//!   before anything is written.

#![no_main]

use std::io;

use ferry_net_passt::frame::prefix;
use ferry_net_passt::writer::VectoredSink;
use ferry_net_passt::{
    Decoder, FrameError, FrameWriter, OutFrame, MAX_FRAME_LEN, MIN_FRAME_LEN, PREFIX_LEN,
};
use libfuzzer_sys::fuzz_target;

/// Bytes before the stream.
const HEADER_LEN: usize = 18;
/// Most segments a frame is cut into (a TX chain has at most a queue's
/// worth of descriptors, plus the overlay's split).
const MAX_SEGMENTS: usize = 200;

/// The format read plainly: the whole frames, then either the error or
/// the number of bytes left over (an incomplete frame).
fn reference(mut rest: &[u8]) -> (Vec<&[u8]>, Result<usize, FrameError>) {
    let mut frames = Vec::new();
    loop {
        if rest.len() < PREFIX_LEN {
            return (frames, Ok(rest.len()));
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        if !(MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&(len as usize)) {
            return (frames, Err(FrameError(len)));
        }
        let end = PREFIX_LEN + len as usize;
        if rest.len() < end {
            return (frames, Ok(rest.len()));
        }
        frames.push(&rest[PREFIX_LEN..end]);
        rest = &rest[end..];
    }
}

/// A reader that hands out the stream in the given piece sizes (cycled).
struct Pieces<'a> {
    data: &'a [u8],
    sizes: &'a [usize],
    next: usize,
}

impl io::Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let size = self.sizes[self.next % self.sizes.len()];
        self.next += 1;
        let n = size.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Decodes `data` fed in `sizes` pieces: the frames, then the error or
/// the bytes left buffered.
fn decode(
    data: &[u8],
    sizes: &[usize],
    capacity: usize,
    by_read: bool,
) -> (Vec<Vec<u8>>, Result<usize, FrameError>) {
    let mut dec = Decoder::new(capacity);
    let mut frames = Vec::new();
    let mut reader = Pieces {
        data,
        sizes,
        next: 0,
    };
    loop {
        // Take every whole frame before reading more, as the device does.
        loop {
            let first = dec.peek();
            assert_eq!(first, dec.peek(), "peek is not idempotent");
            match first {
                Ok(Some(frame)) => {
                    assert!((MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&frame.len()));
                    frames.push(frame.to_vec());
                    dec.consume();
                }
                Ok(None) => break,
                Err(e) => return (frames, Err(e)),
            }
        }
        if reader.data.is_empty() {
            return (frames, Ok(dec.buffered()));
        }
        let before = dec.buffered();
        if by_read {
            let n = dec
                .fill_from(&mut reader)
                .expect("a decoder without a whole frame has room");
            assert!(n > 0, "a piece of the stream was left unread");
        } else {
            let size = sizes[reader.next % sizes.len()];
            reader.next += 1;
            let spare = dec.spare();
            assert!(
                !spare.is_empty(),
                "a decoder without a whole frame has room"
            );
            let n = size.min(spare.len()).min(reader.data.len());
            spare[..n].copy_from_slice(&reader.data[..n]);
            dec.commit(n);
            reader.data = &reader.data[n..];
        }
        assert!(dec.buffered() > before);
    }
}

/// A sink that takes at most `limits[i]` bytes on its i-th call (cycled):
/// 0 is "would block", 4095 is "interrupted".
struct Choppy {
    out: Vec<u8>,
    limits: Vec<usize>,
    calls: usize,
}

impl VectoredSink for Choppy {
    fn writev(&mut self, iov: &[libc::iovec]) -> io::Result<usize> {
        let limit = self.limits[self.calls % self.limits.len()];
        self.calls += 1;
        match limit {
            0 => return Err(io::ErrorKind::WouldBlock.into()),
            4095 => return Err(io::ErrorKind::Interrupted.into()),
            _ => {}
        }
        let mut n = 0;
        for v in iov {
            // SAFETY: every iovec the writer passes points to a live buffer
            // of its length: the fuzzer's input or the writer's own prefix
            // and overlay.
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

/// `frame` as an [`OutFrame`] cut into pieces of `sizes` (cycled).
fn out_frame(frame: &[u8], sizes: &[usize], first: usize) -> OutFrame {
    let mut segments = Vec::new();
    let mut at = 0;
    let mut i = first;
    while at < frame.len() {
        let mut n = sizes[i % sizes.len()].min(frame.len() - at);
        if segments.len() + 1 == MAX_SEGMENTS {
            n = frame.len() - at;
        }
        i += 1;
        segments.push(libc::iovec {
            iov_base: frame[at..].as_ptr() as *mut libc::c_void,
            iov_len: n,
        });
        at += n;
    }
    // SAFETY: the segments point into the fuzzer's input, which outlives
    // the frame and every write of it.
    unsafe { OutFrame::new(segments) }
}

fn decode_all(bytes: &[u8]) -> Vec<Vec<u8>> {
    let (frames, end) = reference(bytes);
    assert_eq!(
        end,
        Ok(0),
        "the writer's stream must end on a frame boundary"
    );
    frames.into_iter().map(<[u8]>::to_vec).collect()
}

fuzz_target!(|data: &[u8]| {
    if data.len() < HEADER_LEN {
        return;
    }
    let sizes: Vec<usize> = data[..16]
        .chunks(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])).max(1))
        .collect();
    let flags = data[16];
    let overlay_seed = usize::from(data[17]);
    let stream = &data[HEADER_LEN..];

    // Decoding: any split gives the frames and error of the plain reading.
    let (want_frames, want_end) = reference(stream);
    let capacity = if flags & 2 != 0 { sizes[0] * 4 } else { 0 };
    let (frames, end) = decode(stream, &sizes, capacity, flags & 1 != 0);
    assert_eq!(frames.len(), want_frames.len());
    for (got, want) in frames.iter().zip(&want_frames) {
        assert_eq!(got.as_slice(), *want);
    }
    assert_eq!(end, want_end);
    for f in &want_frames {
        assert_eq!(
            &prefix(f.len()).expect("a decoded frame has a valid length")[..],
            &(f.len() as u32).to_be_bytes()
        );
    }

    // Writing: the frames go out whole and in order, however the sink chops.
    let mut limits: Vec<usize> = sizes.iter().map(|s| s % 4096).collect();
    if limits.iter().all(|&l| l == 0 || l == 4095) {
        limits[0] = usize::MAX;
    }
    let mut expected = Vec::new();
    let make = |i: usize| {
        let mut f = out_frame(want_frames[i], &sizes, i);
        let mut bytes = want_frames[i].to_vec();
        if flags & 4 != 0 {
            let at = overlay_seed.wrapping_mul(i + 1) % (bytes.len() + 2);
            let patch = [0xab, i as u8];
            let fits = at + 2 <= bytes.len();
            assert_eq!(f.overlay(at, patch), fits);
            if fits {
                assert!(!f.overlay(0, [0, 0]), "a second overlay");
                bytes[at..at + 2].copy_from_slice(&patch);
            }
        }
        assert_eq!(f.len(), bytes.len());
        (f, bytes)
    };
    for i in 0..want_frames.len() {
        expected.push(make(i).1);
    }
    let mut sink = Choppy {
        out: Vec::new(),
        limits,
        calls: 0,
    };
    let mut writer = FrameWriter::new();
    let mut next = 0;
    // Rounds in a row in which nothing went out: the sink refuses at most
    // seven calls in eight.
    let mut idle = 0;
    let mut last = None;
    while next < want_frames.len() || writer.has_pending() {
        let now = Some((next, sink.out.len()));
        if now == last {
            idle += 1;
            assert!(idle < 32, "the writer makes no progress");
        } else {
            idle = 0;
            last = now;
        }
        if !writer.flush(&mut sink).expect("flush") {
            continue;
        }
        assert!(!writer.has_pending());
        if next == want_frames.len() {
            continue;
        }
        let batch: Vec<OutFrame> = (next..want_frames.len()).map(|i| make(i).0).collect();
        let written = writer.write(&mut sink, batch).expect("write");
        assert_eq!(written.started, writer.has_pending());
        next += written.whole + usize::from(written.started);
        assert!(next <= want_frames.len());
    }
    assert_eq!(decode_all(&sink.out), expected);

    // A frame passt cannot carry: refused whole, nothing written.
    if flags & 8 != 0 {
        let short = &stream[..stream.len().min(MIN_FRAME_LEN - 1)];
        let mut batch: Vec<OutFrame> = (0..want_frames.len()).map(|i| make(i).0).collect();
        batch.push(out_frame(short, &sizes, 0));
        let before = sink.out.len();
        let mut writer = FrameWriter::new();
        assert!(writer.write(&mut sink, batch).is_err());
        assert!(!writer.has_pending());
        assert_eq!(sink.out.len(), before);
    }
});
