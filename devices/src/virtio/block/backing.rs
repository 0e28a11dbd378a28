// SPDX-License-Identifier: Apache-2.0
//! The image a disk serves, and swapping it while the guest runs
//! (Firecracker's `PATCH /drives/{id}`): one slot shared by the device
//! (its configuration space), its I/O thread (the requests) and the
//! VMM's [`BackingHandle`].
//!
//! A swap replaces the image, the capacity and the configuration
//! generation at once, under the slot's lock, then raises a configuration
//! change interrupt if the driver runs the device; if it does not, the
//! interrupt waits for the driver to start it (it may have read the old
//! capacity while setting the device up).
//!
//! The I/O thread takes the image at the start of each batch of requests
//! (one uncontended lock) and, before each request, compares the
//! generation with the one it took (one atomic load): a swap in the middle
//! of a batch is seen by the next request. Each request runs whole on one
//! image, the old or the new, and is checked against that image's size.
//! Between batches the thread holds no image, so the old one is closed,
//! and its lock released, when the swap returns, or, if a request was
//! running on it, as soon as that request completes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::disk::{DiskError, DiskImage};
use crate::virtio::Interrupt;

/// Why an image cannot replace a disk's.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// The image was opened read-only for a writable disk, or read-write
    /// for a read-only one: a disk keeps its mode for its life.
    #[error(
        "the disk is {}; its new image {} must be opened so too",
        mode(*.disk_read_only),
        .path.display()
    )]
    Mode {
        /// The new image's path.
        path: PathBuf,
        /// Whether the disk is read-only.
        disk_read_only: bool,
    },
    /// The new image cannot be opened.
    #[error(transparent)]
    Disk(#[from] DiskError),
}

/// How a mode reads in messages.
fn mode(read_only: bool) -> &'static str {
    if read_only {
        "read-only"
    } else {
        "read-write"
    }
}

/// The slot: the image, and what a swap must tell.
#[derive(Debug)]
pub(super) struct Backing {
    /// The disk's name, for logs.
    name: String,
    /// The disk's mode, fixed for its life: the driver negotiated the
    /// read-only feature, and the writable disk's ones, from it.
    read_only: bool,
    /// Bumped with each swap, under `state`'s lock: the configuration
    /// generation the transports show, and what tells the I/O thread to
    /// take the new image.
    generation: AtomicU32,
    state: Mutex<State>,
}

/// What a swap changes.
#[derive(Debug)]
struct State {
    disk: Arc<DiskImage>,
    /// The device's interrupt, while the driver runs the device.
    interrupt: Option<Arc<Interrupt>>,
    /// A swap came while the driver did not run the device.
    missed_change: bool,
}

/// The image the I/O thread serves, and the generation it took it at.
#[derive(Debug)]
pub(super) struct Snapshot {
    /// The image.
    pub(super) disk: Arc<DiskImage>,
    generation: u32,
}

impl Backing {
    /// The slot of disk `name`, holding `disk`, whose mode becomes the disk's.
    pub(super) fn new(name: String, disk: DiskImage) -> Self {
        Self {
            name,
            read_only: disk.read_only(),
            generation: AtomicU32::new(0),
            state: Mutex::new(State {
                disk: Arc::new(disk),
                interrupt: None,
                missed_change: false,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A swap leaves the state whole at every step: a panic elsewhere
        // while it was held does not matter.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the disk is read-only.
    pub(super) fn read_only(&self) -> bool {
        self.read_only
    }

    /// The configuration generation.
    pub(super) fn generation(&self) -> u32 {
        self.generation.load(Ordering::Acquire)
    }

    /// The image served now.
    pub(super) fn disk(&self) -> Arc<DiskImage> {
        self.lock().disk.clone()
    }

    /// The size of the image served now, in sectors (the capacity).
    pub(super) fn sectors(&self) -> u64 {
        self.lock().disk.sectors()
    }

    /// The image to serve a batch of requests from.
    pub(super) fn snapshot(&self) -> Snapshot {
        let state = self.lock();
        Snapshot {
            disk: state.disk.clone(),
            // Only changed under the lock: the generation of this image.
            generation: self.generation.load(Ordering::Relaxed),
        }
    }

    /// Takes the new image into `snapshot` if a swap came since it was
    /// taken: one atomic load, and no lock, when none did. The old image
    /// is dropped then.
    pub(super) fn refresh(&self, snapshot: &mut Snapshot) {
        if self.generation.load(Ordering::Acquire) != snapshot.generation {
            *snapshot = self.snapshot();
        }
    }

    /// The driver runs the device and is told of changes through
    /// `interrupt` (now, if a swap came while it set the device up).
    pub(super) fn attach(&self, interrupt: Arc<Interrupt>) {
        let missed = {
            let mut state = self.lock();
            state.interrupt = Some(interrupt.clone());
            std::mem::take(&mut state.missed_change)
        };
        if missed {
            interrupt.signal_config_change();
        }
    }

    /// The device was reset: the driver will read the configuration
    /// again when it sets the device up.
    pub(super) fn detach(&self) {
        let mut state = self.lock();
        state.interrupt = None;
        state.missed_change = false;
    }

    /// Serves `image` from now on (see [`BackingHandle::swap`]).
    fn swap(&self, image: DiskImage) -> Result<(), SwapError> {
        if image.read_only() != self.read_only {
            return Err(SwapError::Mode {
                path: image.path().to_path_buf(),
                disk_read_only: self.read_only,
            });
        }
        log::info!(
            "{}: now serves {} ({} sectors)",
            self.name,
            image.path().display(),
            image.sectors()
        );
        let (old, interrupt) = {
            let mut state = self.lock();
            let old = std::mem::replace(&mut state.disk, Arc::new(image));
            self.generation.fetch_add(1, Ordering::Release);
            let interrupt = state.interrupt.clone();
            state.missed_change = interrupt.is_none();
            (old, interrupt)
        };
        // Closes the old image, unless a request is running on it.
        drop(old);
        if let Some(interrupt) = interrupt {
            interrupt.signal_config_change();
        }
        Ok(())
    }
}

/// The VMM's hold on a disk's image, to swap it while the guest runs
/// (Firecracker's `PATCH /drives/{id}`, with which Kata Containers fills
/// drives made on empty placeholder files with a container's root
/// filesystem). Taken with [`super::Block::backing_handle`] before the
/// device goes into its transport; every clone acts on the same disk, from
/// any thread, whether the driver runs the device or not.
///
/// A disk keeps the mode it was made with: a new image must be opened
/// read-only for a read-only disk and read-write for a writable one
/// ([`BackingHandle::read_only`] says which), as the features the driver
/// negotiated depend on it.
#[derive(Debug, Clone)]
pub struct BackingHandle {
    backing: Arc<Backing>,
}

impl BackingHandle {
    pub(super) fn new(backing: Arc<Backing>) -> Self {
        Self { backing }
    }

    /// Serves `image` from now on, in place of the disk's image, and
    /// tells the driver: the capacity becomes the image's size, the
    /// configuration generation changes, and a configuration change
    /// interrupt is raised (on virtio-pci the configuration vector the
    /// driver chose; on virtio-mmio bit 2 of the interrupt status, on the
    /// device's line). If the driver does not run the device (before it
    /// starts it, or after a reset), the interrupt comes when it does.
    ///
    /// A request the I/O thread is running finishes on the old image;
    /// every later one runs on `image` and is checked against its size (a
    /// request beyond its end fails with an I/O error). The old image is
    /// closed, and its lock released, when this returns or, if a request
    /// was running on it, when that request completes.
    ///
    /// Fails, changing nothing, if `image` was not opened in the disk's mode.
    pub fn swap(&self, image: DiskImage) -> Result<(), SwapError> {
        self.backing.swap(image)
    }

    /// Opens the image at `path` in the disk's mode and swaps it in (see
    /// [`BackingHandle::swap`]). When `path` still names the file the disk
    /// has open, that image is re-measured instead
    /// ([`DiskImage::remeasure`]): the file was resized in place, and
    /// opening it again would meet the disk's own lock. When the same path
    /// now names another file (Kata bind-mounts a container's disk over a
    /// placeholder, and back), that file is opened.
    pub fn swap_path(&self, path: &Path) -> Result<(), SwapError> {
        let current = self.backing.disk();
        let image = if current.is_file_at(path) {
            current.remeasure()?
        } else {
            DiskImage::open(path, self.backing.read_only())?
        };
        drop(current);
        self.swap(image)
    }

    /// The path of the image served now.
    pub fn path(&self) -> PathBuf {
        self.backing.disk().path().to_path_buf()
    }

    /// The size of the image served now, in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.backing.sectors()
    }

    /// Whether the disk is read-only: the mode every new image must have.
    pub fn read_only(&self) -> bool {
        self.backing.read_only()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::irq::IrqLine;

    /// An image file of `sectors` sectors of `byte`, removed on drop.
    struct Image(PathBuf);

    impl Image {
        fn new(sectors: usize, byte: u8) -> Self {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::SeqCst);
            let path = std::env::temp_dir()
                .join(format!("ferry-backing-test-{}-{n}.img", std::process::id()));
            std::fs::File::create(&path)
                .unwrap()
                .write_all(&vec![byte; sectors * 512])
                .unwrap();
            Image(path)
        }

        fn open(&self, read_only: bool) -> DiskImage {
            DiskImage::open(&self.0, read_only).unwrap()
        }
    }

    impl Drop for Image {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn interrupt() -> (Arc<Interrupt>, vmm_sys_util::eventfd::EventFd) {
        let line = IrqLine::new(5).unwrap();
        let event = line.event().try_clone().unwrap();
        (Arc::new(Interrupt::new(line)), event)
    }

    #[test]
    fn a_snapshot_follows_a_swap_at_its_next_refresh_only() {
        let (a, b) = (Image::new(8, 1), Image::new(4, 2));
        let backing = Backing::new("blk".into(), a.open(false));
        let mut snapshot = backing.snapshot();
        let first = snapshot.disk.clone();
        backing.refresh(&mut snapshot);
        assert!(Arc::ptr_eq(&snapshot.disk, &first), "no swap, same image");
        drop(first);

        let handle = BackingHandle::new(Arc::new(backing));
        handle.swap(b.open(false)).unwrap();
        assert_eq!(
            snapshot.disk.sectors(),
            8,
            "a request in flight keeps its image"
        );
        assert!(
            matches!(DiskImage::open(&a.0, true), Err(DiskError::Locked(_))),
            "the old image stays open while a request runs on it"
        );
        handle.backing.refresh(&mut snapshot);
        assert_eq!(snapshot.disk.sectors(), 4);
        assert_eq!(snapshot.disk.path(), b.0);
        DiskImage::open(&a.0, false).expect("the old image is closed with its last request");
    }

    #[test]
    fn a_swap_into_the_other_mode_changes_nothing() {
        let (a, b) = (Image::new(8, 1), Image::new(4, 2));
        let handle = BackingHandle::new(Arc::new(Backing::new("blk".into(), a.open(true))));
        let err = handle.swap(b.open(false)).unwrap_err();
        assert!(
            matches!(&err, SwapError::Mode { path, disk_read_only: true } if *path == b.0),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "the disk is read-only; its new image {} must be opened so too",
                b.0.display()
            )
        );
        assert_eq!((handle.path(), handle.sectors()), (a.0.clone(), 8));
        assert_eq!(handle.backing.generation(), 0);
        assert!(handle.read_only());
        // swap_path opens in the disk's mode.
        handle.swap_path(&b.0).unwrap();
        assert_eq!((handle.path(), handle.sectors()), (b.0.clone(), 4));
        assert!(handle.backing.disk().read_only());
    }

    #[test]
    fn the_driver_hears_of_a_swap_at_once_or_when_it_starts_the_device() {
        let (a, b) = (Image::new(8, 1), Image::new(4, 2));
        let handle = BackingHandle::new(Arc::new(Backing::new("blk".into(), a.open(false))));
        let (irq, line) = interrupt();
        // No change missed: starting the device raises nothing.
        handle.backing.attach(irq.clone());
        assert_eq!(irq.status(), 0);
        handle.swap(b.open(false)).unwrap();
        assert_eq!(irq.take_status(), 2, "a configuration change");
        assert_eq!(line.read().unwrap(), 1);
        assert_eq!(handle.backing.generation(), 1);

        // After a reset, the driver hears of it when it starts the device again.
        handle.backing.detach();
        handle.swap(a.open(false)).unwrap();
        assert_eq!(irq.status(), 0);
        assert_eq!(handle.backing.generation(), 2);
        handle.backing.attach(irq.clone());
        assert_eq!(irq.take_status(), 2);
        assert_eq!(line.read().unwrap(), 1);
        // ... and once only.
        handle.backing.detach();
        handle.backing.attach(irq.clone());
        assert_eq!(irq.status(), 0);
    }

    #[test]
    fn swapping_in_the_same_path_remeasures_the_image() {
        let a = Image::new(8, 1);
        let handle = BackingHandle::new(Arc::new(Backing::new("blk".into(), a.open(false))));
        std::fs::File::options()
            .write(true)
            .open(&a.0)
            .unwrap()
            .set_len(32 * 512)
            .unwrap();
        handle.swap_path(&a.0).unwrap();
        assert_eq!((handle.path(), handle.sectors()), (a.0.clone(), 32));
        assert_eq!(handle.backing.generation(), 1);
        assert!(
            matches!(DiskImage::open(&a.0, true), Err(DiskError::Locked(_))),
            "the disk still holds its lock"
        );
        let missing = a.0.with_extension("missing");
        assert!(matches!(
            handle.swap_path(&missing),
            Err(SwapError::Disk(DiskError::Open { .. }))
        ));
        assert_eq!(handle.sectors(), 32);
    }

    #[test]
    fn the_same_path_naming_another_file_opens_that_file() {
        // As Kata's bind mount over a placeholder: the path stays, the file changes.
        let placeholder = Image::new(0, 0);
        let handle = BackingHandle::new(Arc::new(Backing::new(
            "blk".into(),
            placeholder.open(false),
        )));
        let container = Image::new(16, 7);
        std::fs::rename(&container.0, &placeholder.0).unwrap();
        handle.swap_path(&placeholder.0).unwrap();
        assert_eq!(
            handle.sectors(),
            16,
            "the new file's size, not the old one's"
        );
    }
}
