// SPDX-License-Identifier: Apache-2.0
//! What a card's frames travel over on the host. The data path
//! ([`super::worker`]) takes chains from the rings, tells the guest about
//! used ones and waits on the backend's descriptor; a backend only turns
//! TX chains into frames and moves frames in and out of its descriptor.
//!
//! - [`passt`]: a stream socket to passt, each frame behind a 4-byte length
//!   (no room for a virtio-net header: checksums are completed on the way).
//! - [`tap`]: a TAP device opened with `IFF_VNET_HDR`, the virtio-net header
//!   passed through both ways (checksum and segmentation offloads).
//!
//! The data path is generic over the backend, so each backend's data path
//! is compiled for it alone: no dynamic dispatch per frame.

pub mod passt;
pub mod tap;

use std::fmt::Debug;
use std::io;
use std::os::fd::AsRawFd;

use virtio_queue::DescriptorChain;

use super::tx::TxError;
use super::worker::RxSide;
use crate::GuestMemory;

pub use passt::Passt;
pub use tap::{Tap, TapError};

/// A TX chain as the data path pops it.
pub type TxChain<'a> = DescriptorChain<&'a GuestMemory>;

/// What one [`Backend::send`] did with the frames it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sent {
    /// How many frames, from the first, are done with (sent, or refused by
    /// the host for their content and so dropped): their chains are used.
    pub whole: usize,
    /// Whether the frame after those went out in part: the backend holds
    /// it until [`Backend::flush`] returns true, and its chain waits.
    pub started: bool,
}

/// Why a [`Backend::receive`] stopped.
#[derive(Debug)]
pub enum RxStop {
    /// Nothing more to read now.
    Drained,
    /// The guest has no room for the next frame: it stays with the backend.
    NoBuffers,
    /// The backend is broken (its peer left, its stream is garbled).
    Lost(String),
}

/// A card's host side.
pub trait Backend: AsRawFd + Debug + Send + 'static {
    /// A frame made from a TX chain, ready to be sent.
    type Frame;

    /// What the backend is, for log lines ("passt", "TAP tap0").
    fn describe(&self) -> String;

    /// The virtio-net feature bits the card offers with this backend.
    fn features(&self) -> u64;

    /// Prepares the descriptor for the data path (non-blocking; offloads
    /// for the feature bits the driver accepted).
    fn activate(&mut self, acked: u64) -> io::Result<()>;

    /// The frame a TX chain carries, and its length without the virtio-net header.
    fn frame_of_chain(
        &self,
        mem: &GuestMemory,
        chain: TxChain,
    ) -> Result<(Self::Frame, usize), TxError>;

    /// Sends what it can of `frames`, in order; those not taken are dropped untouched.
    fn send(&mut self, frames: Vec<Self::Frame>) -> io::Result<Sent>;

    /// Sends the rest of a started frame; true once nothing is pending.
    fn flush(&mut self) -> io::Result<bool>;

    /// Moves frames into the guest's RX buffers (through `rx`) until there
    /// is nothing to read, the guest has no room, or the backend breaks;
    /// true in the first field if a frame was delivered.
    fn receive(&mut self, mem: &GuestMemory, rx: &mut RxSide) -> (bool, RxStop);

    /// Before the backend is handed on (a device reset): whether it is
    /// still fit to use (passt's stream must not be left inside a frame).
    fn finish(&mut self) -> bool {
        true
    }

    /// A backend over a stream to a restarted passt ([`super::Relink`]);
    /// none for a backend that passt is not behind.
    fn relinked(_stream: std::os::unix::net::UnixStream) -> Option<Self>
    where
        Self: Sized,
    {
        None
    }
}
