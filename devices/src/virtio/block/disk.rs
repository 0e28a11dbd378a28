// SPDX-License-Identifier: Apache-2.0
//! A raw disk image on the host: opened, locked against a second writer,
//! and read or written at byte offsets straight from and into guest memory.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// Bytes in a virtio-blk sector.
pub const SECTOR_SIZE: u64 = 512;

/// Why a disk image cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The file cannot be opened.
    #[error("cannot open the disk {path}")]
    Open {
        /// The image's path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Neither a regular file nor a block device.
    #[error("the disk {0} is not a regular file or a block device")]
    NotADisk(PathBuf),
    /// Another process holds a conflicting lock on the image.
    #[error(
        "the disk {0} is in use by another process (locked); \
         only read-only users (,ro) can share an image"
    )]
    Locked(PathBuf),
    /// Taking the lock failed for another reason.
    #[error("cannot lock the disk {path}")]
    Lock {
        /// The image's path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// An open, locked disk image.
#[derive(Debug)]
pub struct DiskImage {
    file: File,
    path: PathBuf,
    read_only: bool,
    /// Whole sectors the guest may address.
    sectors: u64,
    /// A regular file: holes can be punched and ranges zeroed with fallocate.
    sparse_ops: bool,
}

impl DiskImage {
    /// Opens `path` for the guest, read-only or read-write, and locks it:
    /// a shared lock for a read-only disk, an exclusive one otherwise, so
    /// that two VMs never write the same image (the lock goes with the file).
    /// An image shorter than a sector is a disk of no sectors, on which
    /// every read or write fails: a placeholder for a later swap.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, DiskError> {
        let open_err = |source| DiskError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(open_err)?;
        let kind = file.metadata().map_err(open_err)?.file_type();
        if !kind.is_file() && !kind.is_block_device() {
            return Err(DiskError::NotADisk(path.to_path_buf()));
        }
        let mode = if read_only {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        // SAFETY: flock only acts on the descriptor, which `file` owns.
        if unsafe { libc::flock(file.as_raw_fd(), mode | libc::LOCK_NB) } != 0 {
            let err = io::Error::last_os_error();
            return Err(if err.kind() == io::ErrorKind::WouldBlock {
                DiskError::Locked(path.to_path_buf())
            } else {
                DiskError::Lock {
                    path: path.to_path_buf(),
                    source: err,
                }
            });
        }
        let sectors = measure(&mut file, path).map_err(open_err)?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            read_only,
            sectors,
            sparse_ops: kind.is_file(),
        })
    }

    /// Whether `path` names the very file this image has open (the same
    /// inode), not another one put there since (a new file, or one
    /// bind-mounted over it).
    pub fn is_file_at(&self, path: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (self.file.metadata(), std::fs::metadata(path)) {
            (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
            _ => false,
        }
    }

    /// The same image with its size measured again (the file was resized
    /// in place), through a second descriptor of the same open file: it
    /// shares this one's lock, which a second [`DiskImage::open`] of a
    /// writable image would meet.
    pub fn remeasure(&self) -> Result<Self, DiskError> {
        let open_err = |source| DiskError::Open {
            path: self.path.clone(),
            source,
        };
        let mut file = self.file.try_clone().map_err(open_err)?;
        let sectors = measure(&mut file, &self.path).map_err(open_err)?;
        Ok(Self {
            file,
            path: self.path.clone(),
            read_only: self.read_only,
            sectors,
            sparse_ops: self.sparse_ops,
        })
    }

    /// The image's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the guest may only read.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Size in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Whether discard and write-zeroes map onto fallocate.
    pub fn sparse_ops(&self) -> bool {
        self.sparse_ops
    }

    /// Fills `segments` from the image at `offset`; the bytes past its end
    /// (none for a checked request) read as zeros.
    pub fn read_vectored_at(&self, segments: &mut [libc::iovec], offset: u64) -> io::Result<()> {
        self.transfer(segments, offset, Direction::Read)
    }

    /// Writes `segments` to the image at `offset`.
    pub fn write_vectored_at(&self, segments: &mut [libc::iovec], offset: u64) -> io::Result<()> {
        self.transfer(segments, offset, Direction::Write)
    }

    fn transfer(
        &self,
        mut segments: &mut [libc::iovec],
        mut offset: u64,
        direction: Direction,
    ) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        while !segments.is_empty() {
            let count = segments.len().min(libc::UIO_MAXIOV as usize) as libc::c_int;
            let pos = offset as libc::off_t;
            // SAFETY: every iovec points into guest memory checked by the
            // caller and stays valid for the call.
            let n = unsafe {
                match direction {
                    Direction::Read => libc::preadv(fd, segments.as_ptr(), count, pos),
                    Direction::Write => libc::pwritev(fd, segments.as_ptr(), count, pos),
                }
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            if n == 0 {
                if direction == Direction::Write {
                    return Err(io::Error::new(io::ErrorKind::WriteZero, "wrote nothing"));
                }
                // Past the end of the file: the rest reads as zeros.
                for seg in segments.iter() {
                    // SAFETY: as above, each iovec is valid guest memory.
                    unsafe { std::ptr::write_bytes(seg.iov_base.cast::<u8>(), 0, seg.iov_len) };
                }
                return Ok(());
            }
            offset += n as u64;
            segments = advance(segments, n as usize);
        }
        Ok(())
    }

    /// Makes what was written durable.
    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Lets the host free `len` bytes at `offset` (they then read as zeros).
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }

    /// Makes `len` bytes at `offset` read as zeros, freeing them if `unmap`.
    pub fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        if unmap && self.discard(offset, len).is_ok() {
            return Ok(());
        }
        match self.fallocate(
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) || !self.sparse_ops => {
                self.write_zero_buffers(offset, len)
            }
            Err(e) => Err(e),
        }
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        // An empty range: nothing to do (fallocate itself says EINVAL).
        if len == 0 {
            return Ok(());
        }
        if !self.sparse_ops {
            return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
        }
        // SAFETY: fallocate only acts on the descriptor `file` owns.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                mode,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn write_zero_buffers(&self, mut offset: u64, len: u64) -> io::Result<()> {
        let zeros = vec![0u8; (len.min(1 << 20)) as usize];
        let end = offset + len;
        while offset < end {
            let n = (end - offset).min(zeros.len() as u64) as usize;
            let mut seg = [libc::iovec {
                iov_base: zeros.as_ptr() as *mut libc::c_void,
                iov_len: n,
            }];
            self.write_vectored_at(&mut seg, offset)?;
            offset += n as u64;
        }
        Ok(())
    }
}

/// The whole sectors of `file` (`path`); a tail shorter than a sector is
/// left out, with a warning. An empty image is a disk of no sectors (a
/// placeholder that a live swap fills later).
fn measure(file: &mut File, path: &Path) -> io::Result<u64> {
    let bytes = file.seek(SeekFrom::End(0))?;
    if bytes % SECTOR_SIZE != 0 {
        log::warn!(
            "disk {}: its last {} bytes are not a whole sector; the guest cannot see them",
            path.display(),
            bytes % SECTOR_SIZE
        );
    }
    Ok(bytes / SECTOR_SIZE)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Read,
    Write,
}

/// Drops the first `n` bytes from `segments`.
fn advance(segments: &mut [libc::iovec], mut n: usize) -> &mut [libc::iovec] {
    let mut first = 0;
    while first < segments.len() && n >= segments[first].iov_len {
        n -= segments[first].iov_len;
        first += 1;
    }
    let rest = &mut segments[first..];
    if let Some(seg) = rest.first_mut() {
        // SAFETY: `n < seg.iov_len`, so the new start stays inside the segment.
        seg.iov_base = unsafe { seg.iov_base.cast::<u8>().add(n) }.cast();
        seg.iov_len -= n;
    }
    rest
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn image(bytes: usize) -> (tempdir::Dir, PathBuf) {
        let dir = tempdir::Dir::new();
        let path = dir.0.join("disk.img");
        let mut f = File::create(&path).unwrap();
        f.write_all(&vec![0xabu8; bytes]).unwrap();
        (dir, path)
    }

    /// A scratch directory removed on drop.
    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let p = std::env::temp_dir().join(format!("ferry-disk-{}-{n}", std::process::id()));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn iov(buf: &mut [u8]) -> libc::iovec {
        libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }
    }

    /// Found by the block_request fuzz target: a request for zero sectors
    /// of zeroes succeeds, as one to discard zero sectors does.
    #[test]
    fn an_empty_range_of_zeroes_or_discards_succeeds() {
        let (_dir, path) = image(4096);
        let disk = DiskImage::open(&path, false).unwrap();
        disk.write_zeroes(512, 0, false).unwrap();
        disk.write_zeroes(512, 0, true).unwrap();
        disk.discard(512, 0).unwrap();
    }

    #[test]
    fn a_writer_excludes_every_other_user_and_readers_share() {
        let (_dir, path) = image(4096);
        let rw = DiskImage::open(&path, false).unwrap();
        assert!(matches!(
            DiskImage::open(&path, false),
            Err(DiskError::Locked(_))
        ));
        assert!(matches!(
            DiskImage::open(&path, true),
            Err(DiskError::Locked(_))
        ));
        drop(rw);
        let ro1 = DiskImage::open(&path, true).unwrap();
        let _ro2 = DiskImage::open(&path, true).unwrap();
        assert!(matches!(
            DiskImage::open(&path, false),
            Err(DiskError::Locked(_))
        ));
        assert_eq!(ro1.sectors(), 8);
    }

    #[test]
    fn bad_images_are_refused_and_short_ones_are_empty_disks() {
        let (dir, path) = image(100);
        assert_eq!(DiskImage::open(&path, false).unwrap().sectors(), 0);
        let (_empty_dir, empty) = image(0);
        assert_eq!(DiskImage::open(&empty, true).unwrap().sectors(), 0);
        assert!(matches!(
            DiskImage::open(&dir.0, true),
            Err(DiskError::NotADisk(_) | DiskError::Open { .. })
        ));
        assert!(matches!(
            DiskImage::open(&dir.0.join("missing"), true),
            Err(DiskError::Open { .. })
        ));
    }

    #[test]
    fn a_remeasured_image_sees_the_new_size_and_keeps_the_lock() {
        let (_dir, path) = image(4096);
        let disk = DiskImage::open(&path, false).unwrap();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(8192 + 100)
            .unwrap();
        let again = disk.remeasure().unwrap();
        assert_eq!((disk.sectors(), again.sectors()), (8, 16));
        assert_eq!((again.path(), again.read_only()), (path.as_path(), false));
        drop(disk);
        assert!(
            matches!(DiskImage::open(&path, true), Err(DiskError::Locked(_))),
            "the lock stays with the remeasured image"
        );
        drop(again);
        DiskImage::open(&path, false).unwrap();
    }

    #[test]
    fn vectored_io_round_trips_and_zeroes() {
        let (_dir, path) = image(8192);
        let disk = DiskImage::open(&path, false).unwrap();
        let (mut a, mut b) = (vec![1u8; 100], vec![2u8; 924]);
        disk.write_vectored_at(&mut [iov(&mut a), iov(&mut b)], 512)
            .unwrap();
        let mut back = vec![0u8; 1024];
        disk.read_vectored_at(&mut [iov(&mut back)], 512).unwrap();
        assert_eq!(&back[..100], &a[..]);
        assert_eq!(&back[100..], &b[..]);

        disk.write_zeroes(512, 512, false).unwrap();
        disk.discard(1024, 512).unwrap();
        disk.read_vectored_at(&mut [iov(&mut back)], 512).unwrap();
        assert!(back.iter().all(|&x| x == 0));
        let mut after = vec![0u8; 512];
        disk.read_vectored_at(&mut [iov(&mut after)], 1536).unwrap();
        assert!(after.iter().all(|&x| x == 0xab), "only the range is zeroed");
        disk.flush().unwrap();
    }

    #[test]
    fn advance_skips_whole_and_partial_segments() {
        let (mut a, mut b) = ([0u8; 4], [0u8; 4]);
        let mut segs = [iov(&mut a), iov(&mut b)];
        let rest = advance(&mut segs, 6);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].iov_len, 2);
    }
}
