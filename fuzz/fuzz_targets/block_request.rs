// SPDX-License-Identifier: Apache-2.0
//! virtio-blk requests: every chain the guest's ring offers parsed by
//! `Request::parse` and carried out by `Request::execute` against a small
//! image in a temporary file.
//!
//! Input: see `ferry_fuzz` (queue and memory). Params: `p[0] % 3` picks
//! the disk (read-write, 32 sectors; read-only, 16 sectors; read-write,
//! shorter than a sector), bit 0 of `p[1]` asks for write-through.
//!
//! Checked against a model of the request: the same parse error, or the
//! status byte, the used length, guest memory afterwards (the data read,
//! the serial, the status byte, nothing else) and the image afterwards
//! (the data written, zeros) that the virtio-blk rules give.

#![no_main]

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::OnceLock;

use ferry_devices::virtio::block::request::{status, ChainError, Request, Settings, ID_LEN};
use ferry_devices::virtio::block::DiskImage;
use ferry_fuzz::{descriptors, for_each_chain, pattern, Guest, Shadow, MAX_QUEUE_SIZE};
use libfuzzer_sys::fuzz_target;
use virtio_queue::desc::split::Descriptor;
use vm_memory::GuestMemoryBackend;

const SECTOR: u64 = 512;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;
const SERIAL: &[u8; ID_LEN] = b"ferry-fuzz-serial-01";

/// A disk image the target uses, and a second handle on its file to
/// reset and inspect it.
struct Disk {
    image: DiskImage,
    file: File,
    initial: Vec<u8>,
}

/// Makes an image of `len` bytes in a private file (removed at once: the
/// open descriptors keep it).
fn disk(name: &str, len: usize, read_only: bool) -> Disk {
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let path = dir.join(format!("ferry-fuzz-{}-{name}.img", std::process::id()));
    let initial = pattern(len as u8, len);
    std::fs::write(&path, &initial).expect("write the image");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open the image");
    let image = DiskImage::open(&path, read_only).expect("open the disk");
    std::fs::remove_file(&path).expect("remove the image's name");
    Disk {
        image,
        file,
        initial,
    }
}

fn disks() -> &'static [Disk; 3] {
    static DISKS: OnceLock<[Disk; 3]> = OnceLock::new();
    DISKS.get_or_init(|| {
        [
            disk("rw", 32 * SECTOR as usize, false),
            disk("ro", 16 * SECTOR as usize, true),
            disk("tiny", 100, false),
        ]
    })
}

impl Disk {
    fn reset(&self) {
        self.file.set_len(0).expect("truncate");
        self.file
            .write_all_at(&self.initial, 0)
            .expect("reset the image");
    }

    fn contents(&self) -> Vec<u8> {
        let mut buf = vec![0u8; self.initial.len()];
        self.file
            .read_exact_at(&mut buf, 0)
            .expect("read the image");
        buf
    }
}

/// A request as the model reads it from its chain.
struct Model {
    readable: Vec<(u64, usize)>,
    writable: Vec<(u64, usize)>,
    status_addr: u64,
    header: Option<(u32, u64)>,
    /// The readable bytes after the header.
    data: Vec<u8>,
}

fn parse_model(guest: &Guest, descs: &[Descriptor]) -> Result<Model, ChainError> {
    let mut readable = Vec::new();
    let mut writable = Vec::new();
    for d in descs {
        let (addr, len) = (d.addr().0, d.len());
        if len > 0 && guest.mem.get_slice(d.addr(), len as usize).is_err() {
            return Err(ChainError::BadAddress(addr, len));
        }
        if d.is_write_only() {
            writable.push((addr, len as usize));
        } else {
            readable.push((addr, len as usize));
        }
    }
    let status_addr = loop {
        match writable.last_mut() {
            None => return Err(ChainError::NoStatus),
            Some((_, 0)) => {
                writable.pop();
            }
            Some((addr, len)) => {
                *len -= 1;
                break *addr + *len as u64;
            }
        }
    };
    let mut bytes = Vec::new();
    for &(addr, len) in &readable {
        if len > 0 {
            bytes.extend(guest.read(addr, len).expect("a checked range reads"));
        }
    }
    let (header, data) = if bytes.len() >= 16 {
        let kind = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
        let sector = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        (Some((kind, sector)), bytes[16..].to_vec())
    } else {
        (None, Vec::new())
    };
    Ok(Model {
        readable,
        writable: writable.into_iter().filter(|s| s.1 > 0).collect(),
        status_addr,
        header,
        data,
    })
}

/// What a request must do: the statuses allowed, the data bytes written
/// into the chain, and the model's memory and image afterwards (a range
/// of the image that may read as zeros or as before).
struct Outcome {
    statuses: Vec<u8>,
    written: u64,
    either: Option<(usize, usize)>,
}

fn run_model(m: &Model, disk: &Disk, image: &mut [u8], shadow: &mut Shadow) -> Outcome {
    let sectors = disk.image.sectors();
    let read_only = disk.image.read_only();
    let ok = |written| Outcome {
        statuses: vec![status::OK],
        written,
        either: None,
    };
    let fail = |s| Outcome {
        statuses: vec![s],
        written: 0,
        either: None,
    };
    let Some((kind, sector)) = m.header else {
        return fail(status::IOERR);
    };
    let in_range = |len: u64| {
        len.is_multiple_of(SECTOR)
            && sector
                .checked_add(len / SECTOR)
                .is_some_and(|end| end <= sectors)
    };
    let writable_len: u64 = m.writable.iter().map(|s| s.1 as u64).sum();
    match kind {
        T_IN => {
            if !in_range(writable_len) {
                return fail(status::IOERR);
            }
            let at = (sector * SECTOR) as usize;
            let bytes = image[at..at + writable_len as usize].to_vec();
            shadow.write_segments(&m.writable, &bytes);
            ok(writable_len)
        }
        T_OUT => {
            let len = m.data.len() as u64;
            if read_only || !in_range(len) {
                return fail(status::IOERR);
            }
            let at = (sector * SECTOR) as usize;
            image[at..at + m.data.len()].copy_from_slice(&m.data);
            ok(0)
        }
        T_FLUSH => ok(0),
        T_GET_ID => {
            let n = shadow.write_segments(&m.writable, SERIAL);
            ok(n as u64)
        }
        T_DISCARD | T_WRITE_ZEROES => {
            if read_only || m.data.len() != 16 {
                return fail(status::IOERR);
            }
            let d = &m.data;
            let start = u64::from_le_bytes(d[0..8].try_into().expect("8 bytes"));
            let count = u32::from_le_bytes(d[8..12].try_into().expect("4 bytes"));
            let flags = u32::from_le_bytes(d[12..16].try_into().expect("4 bytes"));
            let end = start.checked_add(u64::from(count));
            if end.is_none_or(|end| end > sectors) || flags & !1 != 0 {
                return fail(status::IOERR);
            }
            let (at, len) = ((start * SECTOR) as usize, count as usize * SECTOR as usize);
            if kind == T_DISCARD {
                // A hint: the range reads as zeros or as it was.
                Outcome {
                    statuses: vec![status::OK],
                    written: 0,
                    either: Some((at, len)),
                }
            } else {
                // Zeroing nothing succeeds too (fallocate alone refuses an
                // empty range: this target found it).
                image[at..at + len].fill(0);
                ok(0)
            }
        }
        _ => fail(status::UNSUPP),
    }
}

fuzz_target!(|data: &[u8]| {
    let guest = Guest::new(data);
    let p = guest.config.params;
    let disk = &disks()[usize::from(p[0] % 3)];
    disk.reset();
    let settings = Settings {
        disk: &disk.image,
        serial: SERIAL,
        write_through: p[1] & 1 != 0,
    };
    let mut queue = guest.queue();
    let mut image = disk.initial.clone();
    for_each_chain(
        &guest.mem,
        &mut queue,
        2 * usize::from(MAX_QUEUE_SIZE),
        |chain| {
            let model = parse_model(&guest, &descriptors(&chain));
            let request = Request::parse(&guest.mem, chain);
            let (request, model) = match (request, model) {
                (Ok(r), Ok(m)) => (r, m),
                (Err(got), Err(want)) => {
                    assert_eq!(got, want);
                    return 0;
                }
                (got, want) => panic!(
                    "Request::parse: {got:?}, expected {:?}",
                    want.map(|m| (m.header, m.readable, m.writable, m.status_addr))
                ),
            };
            let mut shadow = Shadow(guest.snapshot());
            let outcome = run_model(&model, disk, &mut image, &mut shadow);
            let used = request.execute(&guest.mem, &settings);
            let status = guest
                .read(model.status_addr, 1)
                .expect("the status byte is memory")[0];
            assert!(
                outcome.statuses.contains(&status),
                "status {status}, expected one of {:?} (header {:?})",
                outcome.statuses,
                model.header
            );
            assert_eq!(u64::from(used), outcome.written + 1, "used length");
            shadow.write(model.status_addr, &[status]);
            shadow.assert_matches(&guest.snapshot(), None, "virtio-blk request");
            let actual = disk.contents();
            if let Some((at, len)) = outcome.either {
                let range = &actual[at..at + len];
                assert!(
                    range == &image[at..at + len] || range.iter().all(|&b| b == 0),
                    "a discarded range holds neither zeros nor its old data"
                );
                image[at..at + len].copy_from_slice(range);
            }
            assert!(actual == image, "the image differs from the model");
            used
        },
    );
});
