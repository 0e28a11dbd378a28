// SPDX-License-Identifier: Apache-2.0
//! A passt card's way back up after its passt is gone. The data path says
//! when it lost its stream ([`Relink::lost`] becomes readable); whoever
//! restarts passt hands the new stream in with [`Relink::relink`], and the
//! data path takes it up and reports the link up again. A stream handed in
//! while the card is not running (before the driver, across a reset) waits
//! for the next data path.

use std::io;
use std::os::unix::net::UnixStream;
use std::sync::Mutex;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Between a card's data path and what keeps its passt running.
#[derive(Debug)]
pub struct Relink {
    /// Written by the data path each time it loses its stream.
    lost: EventFd,
    /// Written with each new stream.
    ready: EventFd,
    /// The newest stream handed in, until the data path takes it.
    stream: Mutex<Option<UnixStream>>,
}

impl Relink {
    /// A link with nothing lost and nothing handed in.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            lost: EventFd::new(EFD_NONBLOCK)?,
            ready: EventFd::new(EFD_NONBLOCK)?,
            stream: Mutex::new(None),
        })
    }

    /// Readable once the data path has lost its stream (reading it clears it).
    pub fn lost(&self) -> &EventFd {
        &self.lost
    }

    /// Hands the data path a stream to a new passt (replacing one handed
    /// in before and not yet taken).
    pub fn relink(&self, stream: UnixStream) {
        *self.stream.lock().unwrap_or_else(|e| e.into_inner()) = Some(stream);
        if let Err(e) = self.ready.write(1) {
            log::error!("cannot wake the card's data path for its new passt: {e}");
        }
    }

    /// Readable when a stream was handed in.
    pub(crate) fn ready(&self) -> &EventFd {
        &self.ready
    }

    /// The stream handed in, if any (clears the wake-up too).
    pub(crate) fn take(&self) -> Option<UnixStream> {
        let _ = self.ready.read();
        self.stream.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Says the stream is gone.
    pub(crate) fn report_lost(&self) {
        if let Err(e) = self.lost.write(1) {
            log::error!("cannot report the card's lost passt: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_stream_waits_for_the_data_path() {
        let relink = Relink::new().unwrap();
        assert!(relink.take().is_none());
        let (a, _peer_a) = UnixStream::pair().unwrap();
        let (b, _peer_b) = UnixStream::pair().unwrap();
        let b_addr = b.local_addr().ok().map(|a| format!("{a:?}"));
        relink.relink(a);
        relink.relink(b);
        let taken = relink.take().expect("a stream");
        assert_eq!(taken.local_addr().ok().map(|a| format!("{a:?}")), b_addr);
        assert!(relink.take().is_none());
        // The wake-up was consumed with it.
        assert!(relink.ready().read().is_err());
    }

    #[test]
    fn a_loss_is_readable_until_read() {
        let relink = Relink::new().unwrap();
        assert!(relink.lost().read().is_err());
        relink.report_lost();
        relink.report_lost();
        assert_eq!(relink.lost().read().unwrap(), 2);
        assert!(relink.lost().read().is_err());
    }
}
