// SPDX-License-Identifier: Apache-2.0
//! Writing frames to passt: each frame's length prefix and segments go
//! out in one `writev`, small frames several to a `writev`. A short write
//! never tears the stream: the writer holds the frame it started and
//! sends its rest, straight from the frame's own memory, before anything
//! else.
//!
//! Why a large frame travels alone: passt (2023 releases) finishes a frame
//! it read only in part with a single further `recv`. The kernel queues a
//! UNIX stream write in chunks of about 36 KiB, and a `recv` returns what
//! is queued when it runs, so a rest longer than one chunk can arrive in
//! pieces; passt then loses its place in the stream and drops every frame
//! until it finds a frame boundary again (the guest's TCP sees losses and
//! waits for retransmission timeouts). With at most one large frame per
//! `writev`, the rest of a frame cut short by a full socket is always
//! shorter than one chunk. A `writev` of several frames stays within one
//! chunk (`SHARED_WRITE_MAX`, 32 KiB), so the kernel takes it whole or not at all.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use crate::frame::{self, FrameError, PREFIX_LEN};

/// Most iovecs one `writev` takes (Linux `UIO_MAXIOV`).
const MAX_IOVECS: usize = 1024;

/// Most bytes (prefixes included) of a `writev` that carries more than one
/// frame: within the smallest chunk the kernel queues a UNIX stream write
/// in (32 KiB of pages plus a page of head room).
const SHARED_WRITE_MAX: usize = 32 * 1024;

/// One outgoing frame: its segments, in memory that stays readable and
/// unchanged by ferry while the frame is written (guest memory), and at
/// most one small overlay of ferry's own (a checksum ferry completed).
#[derive(Debug)]
pub struct OutFrame {
    segments: Vec<libc::iovec>,
    len: usize,
    /// The bytes an overlay segment points to; on the heap, so that the
    /// segment stays valid when the frame moves.
    overlay: Option<Box<[u8; 2]>>,
}

// SAFETY: the iovecs point into guest memory, which lives as long as the VM
// and is reachable from any thread; the constructor's contract covers validity.
unsafe impl Send for OutFrame {}

impl OutFrame {
    /// A frame made of `segments`.
    ///
    /// # Safety
    /// Every segment must point to readable memory of its length that
    /// stays mapped as long as the frame lives (a [`FrameWriter`] may hold
    /// it until its rest is out).
    pub unsafe fn new(segments: Vec<libc::iovec>) -> Self {
        let len = segments.iter().map(|s| s.iov_len).sum();
        Self {
            segments,
            len,
            overlay: None,
        }
    }

    /// Sends `bytes` in place of the frame's bytes `at..at + 2`, without
    /// writing to the memory the frame points to (the guest's, which the
    /// device must only read). False, and nothing changed, if the range
    /// is not inside the frame or the frame already has an overlay.
    pub fn overlay(&mut self, at: usize, bytes: [u8; 2]) -> bool {
        if self.overlay.is_some() || at.checked_add(2).is_none_or(|end| end > self.len) {
            return false;
        }
        let boxed = Box::new(bytes);
        let patch = libc::iovec {
            iov_base: boxed.as_ptr() as *mut libc::c_void,
            iov_len: 2,
        };
        let mut out = Vec::with_capacity(self.segments.len() + 2);
        let mut pos = 0;
        for seg in &self.segments {
            let (start, end) = (pos, pos + seg.iov_len);
            pos = end;
            // The part of this segment before the overlay, the overlay
            // itself where it begins, and the part after it.
            let keep_before = at.clamp(start, end) - start;
            let keep_after = end - (at + 2).clamp(start, end);
            if keep_before > 0 {
                out.push(libc::iovec {
                    iov_base: seg.iov_base,
                    iov_len: keep_before,
                });
            }
            if (start..end).contains(&at) {
                out.push(patch);
            }
            if keep_after > 0 {
                out.push(libc::iovec {
                    // SAFETY: the offset is inside the segment.
                    iov_base: unsafe { (seg.iov_base as *mut u8).add(seg.iov_len - keep_after) }
                        as *mut libc::c_void,
                    iov_len: keep_after,
                });
            }
        }
        self.segments = out;
        self.overlay = Some(boxed);
        true
    }

    /// The frame's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the frame has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Something frames can be written to with `writev`.
pub trait VectoredSink {
    /// Writes `iov` in order; returns how many bytes went out.
    fn writev(&mut self, iov: &[libc::iovec]) -> io::Result<usize>;
}

/// Any descriptor: a UNIX stream socket to passt.
#[derive(Debug)]
pub struct FdSink(pub RawFd);

impl<T: AsRawFd> From<&T> for FdSink {
    fn from(fd: &T) -> Self {
        FdSink(fd.as_raw_fd())
    }
}

impl VectoredSink for FdSink {
    fn writev(&mut self, iov: &[libc::iovec]) -> io::Result<usize> {
        // SAFETY: every iovec points to readable memory of its length (OutFrame's
        // contract, or buffers owned by FrameWriter); the kernel only reads them.
        let n = unsafe { libc::writev(self.0, iov.as_ptr(), iov.len() as libc::c_int) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

/// A frame the socket took only in part.
#[derive(Debug)]
struct Started {
    prefix: [u8; PREFIX_LEN],
    frame: OutFrame,
    /// Bytes of it (prefix included) already out.
    sent: usize,
}

impl Started {
    /// What is still to go out, as iovecs into the prefix and the frame.
    fn rest(&self) -> Vec<libc::iovec> {
        let prefix = libc::iovec {
            iov_base: self.prefix.as_ptr() as *mut libc::c_void,
            iov_len: PREFIX_LEN,
        };
        let mut skip = self.sent;
        let mut iov = Vec::with_capacity(self.frame.segments.len() + 1);
        for seg in std::iter::once(prefix).chain(self.frame.segments.iter().copied()) {
            if skip >= seg.iov_len {
                skip -= seg.iov_len;
                continue;
            }
            iov.push(libc::iovec {
                // SAFETY: `skip` is inside the segment.
                iov_base: unsafe { (seg.iov_base as *mut u8).add(skip) } as *mut libc::c_void,
                iov_len: seg.iov_len - skip,
            });
            skip = 0;
        }
        iov
    }

    fn is_done(&self) -> bool {
        self.sent >= PREFIX_LEN + self.frame.len
    }
}

/// What one [`FrameWriter::write`] did with the frames it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// How many frames, from the first, went out whole.
    pub whole: usize,
    /// Whether the frame after those went out in part: the writer holds it,
    /// and its memory must stay as it is, until [`FrameWriter::flush`]
    /// returns true. The frames after it were not touched.
    pub started: bool,
}

/// Frames out to passt, holding a partly written frame until its rest is out.
#[derive(Debug, Default)]
pub struct FrameWriter {
    started: Option<Started>,
}

impl FrameWriter {
    /// A writer with nothing pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether part of a frame still waits to go out.
    pub fn has_pending(&self) -> bool {
        self.started.is_some()
    }

    /// Sends the rest of a started frame; true once nothing is pending (the
    /// frame is then out whole and the writer no longer holds it).
    pub fn flush<S: VectoredSink>(&mut self, sink: &mut S) -> io::Result<bool> {
        while let Some(started) = self.started.as_mut() {
            if started.is_done() {
                self.started = None;
                break;
            }
            match sink.writev(&started.rest()) {
                Ok(n) => started.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Writes as many of `frames` as the sink takes, in order; frames it
    /// does not take are dropped untouched. Nothing is written while a
    /// started frame is pending ([`FrameWriter::flush`] first). A frame
    /// whose length passt cannot carry is an error before anything is written.
    pub fn write<S: VectoredSink>(
        &mut self,
        sink: &mut S,
        frames: Vec<OutFrame>,
    ) -> io::Result<Written> {
        let mut done = Written {
            whole: 0,
            started: false,
        };
        if self.has_pending() {
            return Ok(done);
        }
        let mut prefixes = Vec::with_capacity(frames.len());
        for f in &frames {
            let p = frame::prefix(f.len)
                .map_err(|e: FrameError| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            prefixes.push(p);
        }
        while done.whole < frames.len() {
            // One writev: a frame alone, or whole frames that share one
            // kernel chunk and the iovec limit.
            let first = done.whole;
            let mut iov = Vec::new();
            let mut bytes = 0;
            let mut batch_end = first;
            while batch_end < frames.len()
                && iov.len() + 1 + frames[batch_end].segments.len() <= MAX_IOVECS
                && (batch_end == first
                    || bytes + PREFIX_LEN + frames[batch_end].len <= SHARED_WRITE_MAX)
            {
                bytes += PREFIX_LEN + frames[batch_end].len;
                iov.push(libc::iovec {
                    iov_base: prefixes[batch_end].as_ptr() as *mut libc::c_void,
                    iov_len: PREFIX_LEN,
                });
                iov.extend_from_slice(&frames[batch_end].segments);
                batch_end += 1;
            }
            if batch_end == first {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a frame has too many segments",
                ));
            }
            let mut written = match sink.writev(&iov) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(done),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            // Walk the frames this write covered.
            for (i, prefix) in prefixes.iter().enumerate().take(batch_end).skip(first) {
                let total = PREFIX_LEN + frames[i].len;
                if written >= total {
                    written -= total;
                    done.whole += 1;
                    continue;
                }
                if written > 0 {
                    // Started, not finished: hold it; its rest goes out first.
                    let prefix = *prefix;
                    if let Some(frame) = frames.into_iter().nth(i) {
                        self.started = Some(Started {
                            prefix,
                            frame,
                            sent: written,
                        });
                        done.started = true;
                    }
                }
                return Ok(done);
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Decoder;

    /// A sink taking at most `limits[i]` bytes on its i-th call (cycled), then WouldBlock.
    struct Choppy {
        out: Vec<u8>,
        limits: Vec<usize>,
        calls: usize,
    }

    impl Choppy {
        fn new(limits: Vec<usize>) -> Self {
            Self {
                out: Vec::new(),
                limits,
                calls: 0,
            }
        }
    }

    impl VectoredSink for Choppy {
        fn writev(&mut self, iov: &[libc::iovec]) -> io::Result<usize> {
            let limit = self.limits[self.calls % self.limits.len()];
            self.calls += 1;
            if limit == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for v in iov {
                // SAFETY: test iovecs point to live test buffers.
                let bytes =
                    unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) };
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

    fn out_frame(parts: &[&[u8]]) -> OutFrame {
        let segments = parts
            .iter()
            .map(|p| libc::iovec {
                iov_base: p.as_ptr() as *mut libc::c_void,
                iov_len: p.len(),
            })
            .collect();
        // SAFETY: the parts outlive every use in these tests.
        unsafe { OutFrame::new(segments) }
    }

    fn decode(bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut dec = Decoder::new(0);
        let mut frames = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = dec.spare().len().min(rest.len());
            dec.spare()[..n].copy_from_slice(&rest[..n]);
            dec.commit(n);
            rest = &rest[n..];
            while let Some(f) = dec.peek().unwrap() {
                frames.push(f.to_vec());
                dec.consume();
            }
        }
        assert_eq!(dec.buffered(), 0, "the stream must end on a frame boundary");
        frames
    }

    #[test]
    fn short_writes_never_tear_the_stream() {
        let a: Vec<u8> = (0..100u8).collect();
        let b = vec![7u8; 1500];
        let c = vec![9u8; 20];
        let expected = vec![a.clone(), [b.clone(), c.clone()].concat(), c.clone()];
        let frames_from = |next: usize| {
            [out_frame(&[&a]), out_frame(&[&b, &c]), out_frame(&[&c])]
                .into_iter()
                .skip(next)
                .collect::<Vec<_>>()
        };
        for limits in [
            vec![1],
            vec![2, 0],
            vec![3, 0, 50],
            vec![5000],
            vec![104, 0, 1],
            vec![0, 2000],
        ] {
            let mut sink = Choppy::new(limits.clone());
            let mut writer = FrameWriter::new();
            let mut next = 0;
            let mut rounds = 0;
            while next < 3 || writer.has_pending() {
                rounds += 1;
                assert!(rounds < 10_000, "no progress with limits {limits:?}");
                if !writer.flush(&mut sink).unwrap() || next == 3 {
                    continue;
                }
                let written = writer.write(&mut sink, frames_from(next)).unwrap();
                assert_eq!(written.started, writer.has_pending());
                next += written.whole + usize::from(written.started);
            }
            assert_eq!(decode(&sink.out), expected, "limits {limits:?}");
        }
    }

    #[test]
    fn a_started_frame_is_held_and_nothing_else_goes_out_before_its_rest() {
        let a = vec![1u8; 100];
        let b = vec![2u8; 30];
        let mut sink = Choppy::new(vec![10, 0]);
        let mut writer = FrameWriter::new();
        let written = writer
            .write(&mut sink, vec![out_frame(&[&a]), out_frame(&[&b])])
            .unwrap();
        assert_eq!(
            written,
            Written {
                whole: 0,
                started: true
            }
        );
        // While the rest waits, new frames are not written at all.
        let calls = sink.calls;
        let refused = writer.write(&mut sink, vec![out_frame(&[&b])]).unwrap();
        assert_eq!(refused.whole + usize::from(refused.started), 0);
        assert_eq!(sink.calls, calls);
        sink.limits = vec![usize::MAX];
        assert!(writer.flush(&mut sink).unwrap());
        assert!(!writer.has_pending());
        assert_eq!(decode(&sink.out), vec![a]);
    }

    /// A sink that takes everything and records the size of each `writev`.
    #[derive(Default)]
    struct Recording {
        out: Vec<u8>,
        writes: Vec<usize>,
    }

    impl VectoredSink for Recording {
        fn writev(&mut self, iov: &[libc::iovec]) -> io::Result<usize> {
            let before = self.out.len();
            for v in iov {
                // SAFETY: test iovecs point to live test buffers.
                let bytes =
                    unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) };
                self.out.extend_from_slice(bytes);
            }
            self.writes.push(self.out.len() - before);
            Ok(self.out.len() - before)
        }
    }

    #[test]
    fn large_frames_travel_alone_and_small_ones_share_a_chunk() {
        let ack = vec![1u8; 66];
        let big = vec![2u8; 65_534];
        let mid = vec![3u8; 20_000];
        let parts: Vec<&[u8]> = vec![&ack, &ack, &big, &big, &ack, &mid, &mid, &ack, &ack];
        let frames: Vec<OutFrame> = parts.iter().map(|p| out_frame(&[p])).collect();
        let mut sink = Recording::default();
        let count = frames.len();
        let written = FrameWriter::new().write(&mut sink, frames).unwrap();
        assert_eq!(written.whole, count);
        let sizes: Vec<usize> = parts.iter().map(|p| PREFIX_LEN + p.len()).collect();
        assert_eq!(
            sink.writes,
            vec![
                sizes[0] + sizes[1],
                sizes[2],
                sizes[3],
                sizes[4] + sizes[5],
                sizes[6] + sizes[7] + sizes[8],
            ]
        );
        let expected: Vec<Vec<u8>> = parts.iter().map(|p| p.to_vec()).collect();
        assert_eq!(decode(&sink.out), expected);
    }

    #[test]
    fn an_overlay_replaces_two_bytes_without_touching_the_source() {
        let a: Vec<u8> = (0..12).collect();
        let b: Vec<u8> = (12..20).collect();
        let with = |at: usize| {
            let mut v: Vec<u8> = (0..20).collect();
            v[at..at + 2].copy_from_slice(&[0xaa, 0xbb]);
            v
        };
        // At a segment's start, straddling two segments, at the very end.
        for at in [0, 11, 12, 18] {
            let mut frame = out_frame(&[&a, &b]);
            assert!(frame.overlay(at, [0xaa, 0xbb]));
            assert_eq!(frame.len(), 20);
            assert!(!frame.overlay(0, [1, 1]), "one overlay per frame");
            // Six bytes a call: the frame is torn, the writer holds it
            // (overlay included) and later flushes send its rest.
            let mut sink = Choppy::new(vec![6]);
            let mut writer = FrameWriter::new();
            assert!(writer.write(&mut sink, vec![frame]).unwrap().started);
            while !writer.flush(&mut sink).unwrap() {}
            assert_eq!(decode(&sink.out), vec![with(at)], "overlay at {at}");
        }
        assert_eq!((&a, &b), (&(0..12).collect(), &(12..20).collect()));
        let mut frame = out_frame(&[&a, &b]);
        assert!(!frame.overlay(19, [0, 0]), "past the end");
        assert!(!frame.overlay(usize::MAX, [0, 0]));
    }

    #[test]
    fn frames_not_taken_are_untouched() {
        let a = vec![1u8; 60];
        let mut sink = Choppy::new(vec![0]);
        let mut writer = FrameWriter::new();
        let written = writer.write(&mut sink, vec![out_frame(&[&a])]).unwrap();
        assert_eq!(
            written,
            Written {
                whole: 0,
                started: false
            }
        );
        assert!(!writer.has_pending());
        assert!(sink.out.is_empty());
    }

    #[test]
    fn a_frame_too_long_for_passt_is_refused() {
        let big = vec![0u8; 70_000];
        let tiny = vec![0u8; 4];
        let mut sink = Choppy::new(vec![usize::MAX]);
        let mut writer = FrameWriter::new();
        assert!(writer.write(&mut sink, vec![out_frame(&[&big])]).is_err());
        assert!(writer.write(&mut sink, vec![out_frame(&[&tiny])]).is_err());
        assert!(sink.out.is_empty());
    }
}
