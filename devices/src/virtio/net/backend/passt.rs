// SPDX-License-Identifier: Apache-2.0
//! passt's stream: TX chains go out in `writev`s straight from guest
//! memory, header stripped and partial checksums completed (the writer
//! decides how frames share a `writev`, and finishes a frame it started
//! before anything else); the stream is read in large chunks and each
//! frame copied into the guest's RX buffers.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use ferry_net_passt::writer::FdSink;
use ferry_net_passt::{Decoder, FrameWriter, OutFrame};

use super::{Backend, RxStop, Sent, TxChain};
use crate::virtio::features;
use crate::virtio::net::feature;
use crate::virtio::net::tx::{self, TxError};
use crate::virtio::net::worker::{Delivery, RxSide};
use crate::GuestMemory;

/// Read buffer for passt's stream: several largest frames, so that one
/// `read` brings many frames.
const RX_BUFFER: usize = 512 * 1024;

/// How long a stopping data path waits for passt to take the rest of a
/// started frame.
pub(crate) const FINISH_TIMEOUT: Duration = Duration::from_millis(500);

/// What the card offers on passt. No segmentation offload: passt takes
/// frames, not super-frames to cut. Indirect chains (in
/// [`features::COMMON`]) matter here: a large frame spans many pages, and
/// without them a few frames would fill the TX ring.
const FEATURES: u64 = features::COMMON
    | features::set(&[
        feature::CSUM,
        feature::GUEST_CSUM,
        feature::MAC,
        feature::MTU,
        feature::STATUS,
        feature::MRG_RXBUF,
    ]);

/// passt's end of a card's link, as one data path hands it to the next
/// (across a device reset): the socket, what was read from it but not yet
/// delivered (the read may have ended inside a frame), and a frame
/// started on it.
#[derive(Debug)]
pub struct Passt {
    socket: UnixStream,
    decoder: Decoder,
    writer: FrameWriter,
}

impl Passt {
    /// A link over `socket`, nothing read from it yet.
    pub fn new(socket: UnixStream) -> Self {
        Self {
            socket,
            decoder: Decoder::new(RX_BUFFER),
            writer: FrameWriter::new(),
        }
    }
}

impl AsRawFd for Passt {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl Backend for Passt {
    type Frame = OutFrame;

    fn describe(&self) -> String {
        "passt".into()
    }

    fn features(&self) -> u64 {
        FEATURES
    }

    fn activate(&mut self, _acked: u64) -> io::Result<()> {
        self.socket.set_nonblocking(true)
    }

    fn frame_of_chain(
        &self,
        mem: &GuestMemory,
        chain: TxChain,
    ) -> Result<(OutFrame, usize), TxError> {
        let frame = tx::frame_of_chain(mem, chain)?;
        let len = frame.len();
        Ok((frame, len))
    }

    fn send(&mut self, frames: Vec<OutFrame>) -> io::Result<Sent> {
        let written = self.writer.write(&mut FdSink::from(&self.socket), frames)?;
        Ok(Sent {
            whole: written.whole,
            started: written.started,
        })
    }

    fn flush(&mut self) -> io::Result<bool> {
        self.writer.flush(&mut FdSink::from(&self.socket))
    }

    fn receive(&mut self, mem: &GuestMemory, rx: &mut RxSide) -> (bool, RxStop) {
        let mut delivered = false;
        loop {
            loop {
                let frame = match self.decoder.peek() {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(e) => return (delivered, RxStop::Lost(e.to_string())),
                };
                match rx.deliver(mem, frame) {
                    Delivery::Delivered => {
                        delivered = true;
                        self.decoder.consume();
                    }
                    Delivery::Dropped => self.decoder.consume(),
                    Delivery::NoBuffers => return (delivered, RxStop::NoBuffers),
                }
            }
            match self.decoder.fill_from(&mut ferry_capture::Tee(
                &mut self.socket,
                ferry_capture::Input::PasstStream,
            )) {
                Ok(0) => {
                    return (
                        delivered,
                        RxStop::Lost("passt closed the connection".into()),
                    )
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return (delivered, RxStop::Drained)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (delivered, RxStop::Lost(format!("read: {e}"))),
            }
        }
    }

    fn relinked(stream: UnixStream) -> Option<Self> {
        Some(Self::new(stream))
    }

    /// Sends the rest of a frame started on passt's stream before the
    /// stream is handed on (after a reset, to the next data path): a torn
    /// frame would make passt lose its place. A stream that does not take
    /// the rest within [`FINISH_TIMEOUT`] is unfit.
    fn finish(&mut self) -> bool {
        let deadline = Instant::now() + FINISH_TIMEOUT;
        loop {
            match self.flush() {
                Ok(true) => return true,
                Ok(false) => {}
                Err(_) => return false,
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let mut poll = libc::pollfd {
                fd: self.socket.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: one valid pollfd, for the duration of the call.
            unsafe { libc::poll(&mut poll, 1, left.as_millis().max(1) as libc::c_int) };
        }
    }
}
