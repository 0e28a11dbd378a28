// SPDX-License-Identifier: Apache-2.0
//! Everything passt: the stream framing (each Ethernet frame preceded by
//! its length as a 4-byte big-endian integer), non-blocking frame I/O on
//! the UNIX stream socket, and the passt process itself.
//!
//! No KVM and no virtio here: the network device feeds this crate frames
//! from guest memory and takes frames back.

#![deny(missing_docs)]

pub mod frame;
pub mod launcher;
pub mod spawner;
pub mod writer;

pub use frame::{Decoder, FrameError, MAX_FRAME_LEN, MIN_FRAME_LEN, PREFIX_LEN};
pub use launcher::{Passt, PasstConfig};
pub use writer::{FrameWriter, OutFrame, Written};

/// Stack of every thread ferry starts (passt's log reader here; device
/// data paths and vCPUs above, which take it from this lowest crate):
/// smaller than a 2 MiB huge page, so that with transparent huge pages
/// always on the host never backs it with one (a default 2 MiB stack
/// that lands aligned costs 2 MiB of RSS).
pub const THREAD_STACK: usize = 256 * 1024;
