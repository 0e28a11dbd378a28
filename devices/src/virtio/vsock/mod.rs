// SPDX-License-Identifier: Apache-2.0
//! virtio-vsock with Firecracker's hybrid UNIX-socket backend: the device
//! model (features, configuration space, the listening sockets) here; the
//! packet format in [`packet`], a host client's first line in
//! [`connect_line`], one connection's state and credit in [`connection`],
//! the data path on its own thread in [`muxer`].
//!
//! The host side, as Firecracker's: a host client connects to the device's
//! UNIX socket at `uds_path` and sends `CONNECT <port>\n`; once the guest
//! accepts, it reads `OK <host port>\n` and the stream is the guest
//! socket's. The guest's connections to host port P go to the UNIX socket
//! `<uds_path>_P`. [`Vsock::add_port_listener`] adds sockets whose every
//! client goes to a fixed guest port, with no line and no answer.

pub mod connect_line;
pub mod connection;
pub mod muxer;
pub mod packet;
mod stats;

use ferry_confine::seccomp::ThreadKind;
use std::io;
use std::os::linux::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_bindings::virtio_ids;

use super::device_thread::DeviceThread;
use super::{features, read_config_bytes};
use super::{ActivateError, Activation, VirtioDevice};
pub use muxer::{ListenerKind, MAX_CONNECTIONS};
pub use stats::VsockStats;

/// virtio device id of a socket device.
pub const VIRTIO_ID_VSOCK: u32 = virtio_ids::VIRTIO_ID_VSOCK;
/// Entries in each queue.
pub const QUEUE_SIZE: u16 = 256;
/// The lowest CID a guest may have (0 to 2 are the hypervisor's and the host's).
pub const MIN_GUEST_CID: u64 = 3;
/// The highest: the spec uses 32 bits. `u32::MAX` is `VMADDR_CID_ANY`, no
/// address a guest should have, but Firecracker takes it and Kata's
/// runtime-rs sends it (its second `PUT /vsock`, from the resource manager's
/// `VsockConfig { guest_cid: VMADDR_CID_ANY }`); the host reaches the guest
/// through the UNIX socket all the same, so ferry takes it too.
pub const MAX_GUEST_CID: u64 = u32::MAX as u64;

/// What the device offers: the common features only (a device offering
/// no socket-type feature has stream sockets, and only those).
const FEATURES: u64 = features::COMMON;

/// Why a vsock device cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The guest CID is reserved or beyond 32 bits.
    #[error("guest CID {0} is out of range ({MIN_GUEST_CID} to {MAX_GUEST_CID})")]
    InvalidCid(u64),
    /// A file is already at the socket's path.
    #[error("{}: a file is already there (another VM's socket?)", .0.display())]
    SocketInUse(PathBuf),
    /// The socket cannot be made.
    #[error("cannot listen on {}", path.display())]
    Bind {
        /// Its path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// A listening socket the device made, removed with it.
#[derive(Debug)]
struct BoundListener {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file, to remove only that file.
    file: (u64, u64),
    kind: ListenerKind,
}

impl BoundListener {
    /// Listens at `path`, which must not exist.
    fn bind(path: &Path, kind: ListenerKind) -> Result<Self, VsockError> {
        if path.symlink_metadata().is_ok() {
            return Err(VsockError::SocketInUse(path.to_owned()));
        }
        let listener = UnixListener::bind(path).map_err(|source| {
            if source.kind() == io::ErrorKind::AddrInUse {
                VsockError::SocketInUse(path.to_owned())
            } else {
                VsockError::Bind {
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
        let meta = path.symlink_metadata().map_err(|source| VsockError::Bind {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            listener,
            path: path.to_owned(),
            file: (meta.st_dev(), meta.st_ino()),
            kind,
        })
    }
}

impl Drop for BoundListener {
    fn drop(&mut self) {
        // Only the file bound: another one put there since stays.
        match self.path.symlink_metadata() {
            Ok(meta) if (meta.st_dev(), meta.st_ino()) == self.file => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    log::warn!("cannot remove {}: {e}", self.path.display());
                }
            }
            _ => {}
        }
    }
}

/// A virtio-vsock device whose host side is UNIX sockets (Firecracker's
/// hybrid vsock).
#[derive(Debug)]
pub struct Vsock {
    name: String,
    guest_cid: u64,
    uds_path: PathBuf,
    listeners: Vec<BoundListener>,
    max_connections: usize,
    stats: Arc<VsockStats>,
    worker: DeviceThread<()>,
}

impl Vsock {
    /// A device whose thread is called `name`, for a guest of CID
    /// `guest_cid`, listening at `uds_path` now (the socket exists before
    /// the guest boots; it is removed with the device). A file already at
    /// `uds_path` is refused.
    pub fn new(name: String, guest_cid: u64, uds_path: &Path) -> Result<Self, VsockError> {
        if !(MIN_GUEST_CID..=MAX_GUEST_CID).contains(&guest_cid) {
            return Err(VsockError::InvalidCid(guest_cid));
        }
        let listener = BoundListener::bind(uds_path, ListenerKind::Hybrid)?;
        Ok(Self {
            worker: DeviceThread::new(name.clone(), ThreadKind::Vsock),
            name,
            guest_cid,
            uds_path: uds_path.to_owned(),
            listeners: vec![listener],
            max_connections: MAX_CONNECTIONS,
            stats: Arc::new(VsockStats::default()),
        })
    }

    /// Listens at `path` too (now; removed with the device): every client
    /// there is joined to guest port `guest_port`, with no CONNECT line and
    /// no `OK` answer (Kata's remote-hypervisor agent socket). Serves from
    /// the next activation on: add listeners before the guest boots.
    pub fn add_port_listener(&mut self, path: &Path, guest_port: u32) -> Result<(), VsockError> {
        let listener = BoundListener::bind(path, ListenerKind::Port(guest_port))?;
        self.listeners.push(listener);
        Ok(())
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// The hybrid socket's path.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// The device's counters.
    pub fn stats(&self) -> Arc<VsockStats> {
        self.stats.clone()
    }

    /// Caps the connections open at once (tests; [`MAX_CONNECTIONS`] by default).
    #[cfg(test)]
    fn set_max_connections(&mut self, max: usize) {
        self.max_connections = max;
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // `struct virtio_vsock_config { le64 guest_cid; }`
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, mut activation: Activation) -> Result<(), ActivateError> {
        let queues = activation.take_queues::<3>()?;
        let listeners = self
            .listeners
            .iter()
            .map(|l| Ok((l.listener.try_clone()?, l.kind)))
            .collect::<io::Result<Vec<_>>>()
            .map_err(ActivateError::Worker)?;
        let muxer = muxer::Muxer::new(muxer::Parts {
            name: self.name.clone(),
            mem: activation.mem,
            guest_cid: self.guest_cid,
            queues,
            interrupt: activation.interrupt,
            listeners,
            uds_path: self.uds_path.clone(),
            stats: self.stats.clone(),
            max_connections: self.max_connections,
        });
        self.worker.start(move |stop| muxer.run(stop))
    }

    fn reset(&mut self) {
        // The data path ends with its connections: every host socket closes.
        self.worker.stop();
    }
}

#[cfg(test)]
mod tests;
