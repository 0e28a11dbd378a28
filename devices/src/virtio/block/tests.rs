// SPDX-License-Identifier: Apache-2.0
//! Requests driven through a mock queue against a real image file.

use std::io::Write;
use std::path::PathBuf;

use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::request::status;
use super::worker::BlockWorker;
use super::*;
use crate::irq::IrqLine;
use crate::virtio::Interrupt;
use crate::GuestMemory;

const NEXT: u16 = 1;
const WRITE: u16 = 2;
const RING: GuestAddress = GuestAddress(0x1_0000);
const HEADER: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;
/// Image size: 64 sectors.
const IMAGE: usize = 64 * 512;

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

/// An image file of [`IMAGE`] bytes of 0xee, removed on drop.
struct Image(PathBuf);

impl Image {
    fn new() -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let path =
            std::env::temp_dir().join(format!("ferry-blk-test-{}-{n}.img", std::process::id()));
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&[0xee; IMAGE])
            .unwrap();
        Image(path)
    }

    fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.0).unwrap()
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

struct Rig<'a> {
    mem: &'a GuestMemory,
    queue: MockSplitQueue<'a, GuestMemory>,
    worker: BlockWorker,
    irq: EventFd,
    next_used: u16,
}

fn memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
}

fn rig<'a>(mem: &'a GuestMemory, image: &Image, read_only: bool) -> Rig<'a> {
    let queue = MockSplitQueue::create(mem, RING, 16);
    let line = IrqLine::new(5).unwrap();
    let irq = line.event().try_clone().unwrap();
    let worker = BlockWorker {
        name: "blk-test".into(),
        mem: mem.clone(),
        queue: queue.create_queue().unwrap(),
        kick: EventFd::new(EFD_NONBLOCK).unwrap(),
        interrupt: Arc::new(Interrupt::new(line)),
        disk: Arc::new(DiskImage::open(&image.0, read_only).unwrap()),
        serial: *b"disk-serial-0\0\0\0\0\0\0\0",
        writeback: Arc::new(AtomicBool::new(true)),
        stats: Arc::new(BlockStats::default()),
    };
    Rig {
        mem,
        queue,
        worker,
        irq,
        next_used: 0,
    }
}

impl Rig<'_> {
    fn header(&self, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(HEADER)).unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    }

    /// Makes `chain` available, runs the queue, returns (status byte, used length).
    fn submit(&mut self, chain: &[RawDescriptor]) -> (u8, u32) {
        self.queue.add_desc_chains(chain, 0).unwrap();
        self.worker.process_queue();
        let used = self.queue.used_addr().0;
        let idx: u16 = self.mem.read_obj(GuestAddress(used + 2)).unwrap();
        assert_eq!(idx, self.next_used + 1, "one chain used per request");
        let slot = u64::from(self.next_used % 16);
        self.next_used += 1;
        let len: u32 = self
            .mem
            .read_obj(GuestAddress(used + 4 + 8 * slot + 4))
            .unwrap();
        assert_eq!(self.irq.read().unwrap(), 1, "the guest is interrupted");
        (self.mem.read_obj(GuestAddress(STATUS)).unwrap(), len)
    }

    /// A request with one data descriptor (device-writable if `into_guest`).
    fn data_request(&mut self, kind: u32, sector: u64, len: u32, into_guest: bool) -> (u8, u32) {
        self.header(kind, sector);
        let flags = if into_guest { WRITE | NEXT } else { NEXT };
        self.submit(&[
            desc(HEADER, 16, NEXT, 1),
            desc(DATA, len, flags, 2),
            desc(STATUS, 1, WRITE, 0),
        ])
    }
}

#[test]
fn writes_reach_the_image_and_reads_bring_them_back() {
    let (mem, image) = (memory(), Image::new());
    let mut rig = rig(&mem, &image, false);
    let data: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
    mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    assert_eq!(rig.data_request(1, 3, 1024, false), (status::OK, 1));
    assert_eq!(&image.bytes()[3 * 512..5 * 512], &data[..]);

    mem.write_slice(&[0u8; 1024], GuestAddress(DATA)).unwrap();
    assert_eq!(rig.data_request(0, 3, 1024, true), (status::OK, 1025));
    let mut back = vec![0u8; 1024];
    mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
    assert_eq!(back, data);

    rig.header(4, 0);
    let flush = [desc(HEADER, 16, NEXT, 1), desc(STATUS, 1, WRITE, 0)];
    assert_eq!(rig.submit(&flush), (status::OK, 1));
}

#[test]
fn requests_beyond_the_end_fail_and_leave_the_image_alone() {
    let (mem, image) = (memory(), Image::new());
    let mut rig = rig(&mem, &image, false);
    mem.write_slice(&[1u8; 1024], GuestAddress(DATA)).unwrap();
    // Sector 63 is the last: two sectors from it cross the end.
    assert_eq!(rig.data_request(1, 63, 1024, false).0, status::IOERR);
    assert_eq!(rig.data_request(0, 63, 1024, true).0, status::IOERR);
    assert_eq!(rig.data_request(0, u64::MAX, 512, true).0, status::IOERR);
    // Not a whole number of sectors.
    assert_eq!(rig.data_request(1, 0, 100, false).0, status::IOERR);
    assert!(image.bytes().iter().all(|&b| b == 0xee));
    assert_eq!(rig.data_request(0, 62, 1024, true), (status::OK, 1025));
}

#[test]
fn a_read_only_disk_refuses_writes() {
    let (mem, image) = (memory(), Image::new());
    let mut rig = rig(&mem, &image, true);
    mem.write_slice(&[1u8; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(rig.data_request(1, 0, 512, false).0, status::IOERR);
    let range = [0u8; 16];
    mem.write_slice(&range, GuestAddress(DATA)).unwrap();
    assert_eq!(rig.data_request(13, 0, 16, false).0, status::IOERR);
    assert!(image.bytes().iter().all(|&b| b == 0xee));
    assert_eq!(rig.data_request(0, 0, 512, true).0, status::OK);
}

#[test]
fn malformed_chains_are_consumed_and_answered() {
    let (mem, image) = (memory(), Image::new());
    let mut rig = rig(&mem, &image, false);
    // No writable byte for the status: used with length 0, counted.
    rig.header(0, 0);
    assert_eq!(rig.submit(&[desc(HEADER, 16, 0, 0)]).1, 0);
    assert_eq!(rig.worker.stats.bad_chains.load(Ordering::Relaxed), 1);
    // A descriptor outside guest memory.
    let far = [
        desc(HEADER, 16, NEXT, 1),
        desc(1 << 40, 512, WRITE | NEXT, 2),
        desc(STATUS, 1, WRITE, 0),
    ];
    assert_eq!(rig.submit(&far).1, 0);
    assert_eq!(rig.worker.stats.bad_chains.load(Ordering::Relaxed), 2);
    // A header cut short: an I/O error.
    rig.header(0, 0);
    let short = [desc(HEADER, 8, NEXT, 1), desc(STATUS, 1, WRITE, 0)];
    assert_eq!(rig.submit(&short), (status::IOERR, 1));
    // An unknown request type.
    rig.header(99, 0);
    let odd = [desc(HEADER, 16, NEXT, 1), desc(STATUS, 1, WRITE, 0)];
    assert_eq!(rig.submit(&odd), (status::UNSUPP, 1));
    // The device still works.
    assert_eq!(rig.data_request(0, 0, 512, true).0, status::OK);
}

#[test]
fn any_layout_header_and_data_in_one_descriptor() {
    let (mem, image) = (memory(), Image::new());
    let mut rig = rig(&mem, &image, false);
    // Header and 512 bytes of data in one readable descriptor, status apart.
    let mut buf = vec![0u8; 16 + 512];
    buf[..4].copy_from_slice(&1u32.to_le_bytes());
    buf[8..16].copy_from_slice(&5u64.to_le_bytes());
    buf[16..].fill(0x42);
    mem.write_slice(&buf, GuestAddress(HEADER)).unwrap();
    let chain = [desc(HEADER, 16 + 512, NEXT, 1), desc(STATUS, 1, WRITE, 0)];
    assert_eq!(rig.submit(&chain), (status::OK, 1));
    assert!(image.bytes()[5 * 512..6 * 512].iter().all(|&b| b == 0x42));
}

#[test]
fn get_id_returns_the_serial() {
    let (mem, image) = (memory(), Image::new());
    let mut rig = rig(&mem, &image, true);
    assert_eq!(rig.data_request(8, 0, 20, true), (status::OK, 21));
    let mut id = [0u8; 20];
    mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..13], b"disk-serial-0");
}

#[test]
fn write_zeroes_and_discard_clear_their_range_only() {
    let (mem, image) = (memory(), Image::new());
    let mut rig = rig(&mem, &image, false);
    let range = |sector: u64, count: u32, flags: u32| {
        let mut r = [0u8; 16];
        r[..8].copy_from_slice(&sector.to_le_bytes());
        r[8..12].copy_from_slice(&count.to_le_bytes());
        r[12..].copy_from_slice(&flags.to_le_bytes());
        mem.write_slice(&r, GuestAddress(DATA)).unwrap();
    };
    range(8, 8, 0);
    assert_eq!(rig.data_request(13, 0, 16, false).0, status::OK);
    range(24, 8, 0);
    assert_eq!(rig.data_request(11, 0, 16, false).0, status::OK);
    let bytes = image.bytes();
    assert!(bytes[8 * 512..16 * 512].iter().all(|&b| b == 0));
    assert!(bytes[16 * 512..24 * 512].iter().all(|&b| b == 0xee));
    assert!(bytes[24 * 512..32 * 512].iter().all(|&b| b == 0));
    assert!(bytes[..8 * 512].iter().all(|&b| b == 0xee));
    assert_eq!(bytes.len(), IMAGE, "the image keeps its size");
    // Out of range, or with unknown flags.
    range(60, 8, 0);
    assert_eq!(rig.data_request(13, 0, 16, false).0, status::IOERR);
    range(0, 8, 0x80);
    assert_eq!(rig.data_request(13, 0, 16, false).0, status::IOERR);
}

#[test]
fn config_space_and_features_follow_the_disk() {
    let image = Image::new();
    let rw = Block::new(
        "vda".into(),
        DiskImage::open(&image.0, false).unwrap(),
        "a-serial-longer-than-twenty-bytes",
    );
    assert_eq!(&rw.serial, b"a-serial-longer-than");
    let mut capacity = [0u8; 8];
    rw.read_config(0, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), 64);
    let f = rw.features();
    assert_eq!(f & (1 << feature::RO), 0);
    assert_ne!(f & (1 << feature::FLUSH), 0);
    assert_ne!(f & (1 << feature::DISCARD), 0);
    let mut rw = rw;
    let mut wce = [0u8];
    rw.read_config(WRITEBACK_OFFSET, &mut wce);
    assert_eq!(wce, [1]);
    rw.write_config(WRITEBACK_OFFSET, &[0]);
    rw.read_config(WRITEBACK_OFFSET, &mut wce);
    assert_eq!(wce, [0], "the guest switched to write-through");
    drop(rw);

    let ro = Block::new("vdb".into(), DiskImage::open(&image.0, true).unwrap(), "");
    let f = ro.features();
    assert_ne!(f & (1 << feature::RO), 0);
    assert_eq!(f & (1 << feature::DISCARD), 0);
}

#[test]
fn the_config_space_is_virtio_blk_config_up_to_the_secure_erase_fields() {
    let image = Image::new();
    let blk = Block::new("vda".into(), DiskImage::open(&image.0, false).unwrap(), "");
    let mut expected = [0u8; 64];
    let mut put = |offset: usize, bytes: &[u8]| {
        expected[offset..offset + bytes.len()].copy_from_slice(bytes);
    };
    put(0, &64u64.to_le_bytes());
    put(8, &(1u32 << 20).to_le_bytes());
    put(12, &254u32.to_le_bytes());
    put(20, &512u32.to_le_bytes());
    put(32, &[1]);
    put(34, &1u16.to_le_bytes());
    put(36, &(1u32 << 22).to_le_bytes());
    put(40, &1u32.to_le_bytes());
    put(44, &8u32.to_le_bytes());
    put(48, &(1u32 << 22).to_le_bytes());
    put(52, &1u32.to_le_bytes());
    put(56, &[1]);
    let mut got = [0xffu8; 64];
    blk.read_config(0, &mut got);
    assert_eq!(got, expected);
    assert_eq!((CONFIG_LEN, WRITEBACK_OFFSET), (60, 32));
}
