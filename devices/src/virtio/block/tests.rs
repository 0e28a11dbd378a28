// SPDX-License-Identifier: Apache-2.0
//! Requests driven through a mock queue against a real image file, and
//! the image swapped under them.

use std::io::Write;
use std::path::PathBuf;

use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backing::Backing;
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

/// An image file, removed on drop.
struct Image(PathBuf);

impl Image {
    /// [`IMAGE`] bytes of 0xee.
    fn new() -> Self {
        Self::filled(IMAGE / 512, 0xee)
    }

    /// `sectors` sectors of `byte`.
    fn filled(sectors: usize, byte: u8) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let path =
            std::env::temp_dir().join(format!("ferry-blk-test-{}-{n}.img", std::process::id()));
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&vec![byte; sectors * 512])
            .unwrap();
        Image(path)
    }

    fn open(&self, read_only: bool) -> DiskImage {
        DiskImage::open(&self.0, read_only).unwrap()
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
        backing: Arc::new(Backing::new("blk-test".into(), image.open(read_only))),
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

/// Reads `sectors` sectors at `sector` through the rig: the status, and
/// the bytes if it succeeded.
fn read_sectors(rig: &mut Rig, sector: u64, sectors: u32) -> (u8, Vec<u8>) {
    let len = sectors * 512;
    rig.mem
        .write_slice(&vec![0u8; len as usize], GuestAddress(DATA))
        .unwrap();
    let (status, _) = rig.data_request(0, sector, len, true);
    let mut back = vec![0u8; len as usize];
    rig.mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
    (status, back)
}

#[test]
fn a_swap_while_running_serves_the_new_image_from_the_next_request() {
    let (mem, old, new) = (memory(), Image::new(), Image::filled(16, 0x5a));
    let mut rig = rig(&mem, &old, false);
    let interrupt = rig.worker.interrupt.clone();
    rig.worker.backing.attach(interrupt.clone());
    let handle = BackingHandle::new(rig.worker.backing.clone());
    assert_eq!(read_sectors(&mut rig, 0, 1), (status::OK, vec![0xee; 512]));
    assert_eq!(interrupt.take_status(), 1, "used buffers");

    handle.swap(new.open(false)).unwrap();
    assert_eq!(interrupt.take_status(), 2, "a configuration change");
    assert_eq!(rig.irq.read().unwrap(), 1, "on the device's line");
    assert_eq!((handle.path(), handle.sectors()), (new.0.clone(), 16));
    DiskImage::open(&old.0, false).expect("the old image is closed and unlocked");

    assert_eq!(read_sectors(&mut rig, 0, 2), (status::OK, vec![0x5a; 1024]));
    assert_eq!(read_sectors(&mut rig, 15, 1), (status::OK, vec![0x5a; 512]));
    // Sectors the old image had, past the new one's end.
    assert_eq!(read_sectors(&mut rig, 15, 2).0, status::IOERR);
    assert_eq!(read_sectors(&mut rig, 40, 1).0, status::IOERR);
    // Writes go to the new image only.
    mem.write_slice(&[7u8; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(rig.data_request(1, 3, 512, false).0, status::OK);
    assert!(new.bytes()[3 * 512..4 * 512].iter().all(|&b| b == 7));
    assert!(old.bytes().iter().all(|&b| b == 0xee));
    assert_eq!(interrupt.status(), 1, "used buffers only since the swap");
}

#[test]
fn an_empty_placeholder_disk_refuses_io_until_an_image_is_swapped_in() {
    let (mem, empty, rootfs) = (memory(), Image::filled(0, 0), Image::filled(8, 0x33));
    let mut rig = rig(&mem, &empty, true);
    rig.worker.backing.attach(rig.worker.interrupt.clone());
    assert_eq!(read_sectors(&mut rig, 0, 1).0, status::IOERR);
    BackingHandle::new(rig.worker.backing.clone())
        .swap_path(&rootfs.0)
        .unwrap();
    assert_eq!(rig.irq.read().unwrap(), 1);
    assert_eq!(read_sectors(&mut rig, 7, 1), (status::OK, vec![0x33; 512]));
}

#[test]
fn a_swap_before_activation_changes_the_capacity_and_the_generation() {
    let (old, new) = (Image::new(), Image::filled(16, 0x5a));
    let blk = Block::new("vda".into(), old.open(false), "");
    let handle = blk.backing_handle();
    let capacity = |blk: &Block| {
        let mut bytes = [0u8; 8];
        blk.read_config(0, &mut bytes);
        u64::from_le_bytes(bytes)
    };
    assert_eq!((capacity(&blk), blk.config_generation()), (64, 0));
    let features = blk.features();

    handle.swap(new.open(false)).unwrap();
    assert_eq!((capacity(&blk), blk.config_generation()), (16, 1));
    assert_eq!(blk.features(), features);
    assert_eq!(handle.path(), new.0);
    DiskImage::open(&old.0, false).expect("the old image is closed and unlocked");

    // The other mode is refused, and nothing changes.
    let read_only = Image::filled(4, 0);
    assert!(matches!(
        handle.swap(read_only.open(true)),
        Err(SwapError::Mode {
            disk_read_only: false,
            ..
        })
    ));
    assert_eq!((capacity(&blk), blk.config_generation()), (16, 1));
    assert!(!handle.read_only());
}

/// A block device behind virtio-mmio, driven as a Linux driver does, with
/// its I/O thread running.
mod over_mmio {
    use std::time::{Duration, Instant};

    use virtio_bindings::virtio_mmio as reg;

    use super::*;
    use crate::bus::BusDevice;
    use crate::virtio::mmio::MmioTransport;
    use crate::virtio::status as dev;

    const CONFIG: u64 = reg::VIRTIO_MMIO_CONFIG as u64;

    fn r(t: &mut MmioTransport, offset: u32) -> u32 {
        let mut b = [0u8; 4];
        t.read(u64::from(offset), &mut b);
        u32::from_le_bytes(b)
    }

    fn w(t: &mut MmioTransport, offset: u32, value: u32) {
        t.write(u64::from(offset), &value.to_le_bytes());
    }

    fn capacity(t: &mut MmioTransport) -> u64 {
        let mut b = [0u8; 8];
        t.read(CONFIG, &mut b);
        u64::from_le_bytes(b)
    }

    /// Status, features, the one queue at `queue`'s addresses, DRIVER_OK.
    fn start(t: &mut MmioTransport, queue: &MockSplitQueue<GuestMemory>) {
        let split = |a: GuestAddress| (a.0 as u32, (a.0 >> 32) as u32);
        w(t, reg::VIRTIO_MMIO_STATUS, dev::ACKNOWLEDGE | dev::DRIVER);
        w(t, reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        w(t, reg::VIRTIO_MMIO_DRIVER_FEATURES, 1);
        w(t, reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        w(t, reg::VIRTIO_MMIO_DRIVER_FEATURES, 0);
        let fok = dev::ACKNOWLEDGE | dev::DRIVER | dev::FEATURES_OK;
        w(t, reg::VIRTIO_MMIO_STATUS, fok);
        w(t, reg::VIRTIO_MMIO_QUEUE_SEL, 0);
        w(t, reg::VIRTIO_MMIO_QUEUE_NUM, 16);
        for (addr, low, high) in [
            (
                queue.desc_table_addr(),
                reg::VIRTIO_MMIO_QUEUE_DESC_LOW,
                reg::VIRTIO_MMIO_QUEUE_DESC_HIGH,
            ),
            (
                queue.avail_addr(),
                reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW,
                reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
            ),
            (
                queue.used_addr(),
                reg::VIRTIO_MMIO_QUEUE_USED_LOW,
                reg::VIRTIO_MMIO_QUEUE_USED_HIGH,
            ),
        ] {
            let (lo, hi) = split(addr);
            w(t, low, lo);
            w(t, high, hi);
        }
        w(t, reg::VIRTIO_MMIO_QUEUE_READY, 1);
        w(t, reg::VIRTIO_MMIO_STATUS, fok | dev::DRIVER_OK);
        assert_eq!(r(t, reg::VIRTIO_MMIO_STATUS), fok | dev::DRIVER_OK);
    }

    /// Reads sector `sector` through the running device: its status and bytes.
    fn read_sector(
        t: &mut MmioTransport,
        mem: &GuestMemory,
        queue: &MockSplitQueue<GuestMemory>,
        sector: u64,
    ) -> (u8, Vec<u8>) {
        let used_idx = GuestAddress(queue.used_addr().0 + 2);
        let before: u16 = mem.read_obj(used_idx).unwrap();
        let mut h = [0u8; 16];
        h[8..].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(HEADER)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        mem.write_slice(&[0u8; 512], GuestAddress(DATA)).unwrap();
        queue
            .add_desc_chains(
                &[
                    desc(HEADER, 16, NEXT, 1),
                    desc(DATA, 512, WRITE | NEXT, 2),
                    desc(STATUS, 1, WRITE, 0),
                ],
                0,
            )
            .unwrap();
        w(t, reg::VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while mem.read_obj::<u16>(used_idx).unwrap() == before {
            assert!(Instant::now() < deadline, "the I/O thread answers");
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut back = vec![0u8; 512];
        mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
        (mem.read_obj(GuestAddress(STATUS)).unwrap(), back)
    }

    #[test]
    fn a_running_disk_sees_a_swap_through_its_registers_and_requests() {
        let mem = memory();
        let (old, new, third) = (
            Image::new(),
            Image::filled(16, 0x5a),
            Image::filled(4, 0x11),
        );
        let blk = Block::new("vda".into(), old.open(false), "");
        let handle = blk.backing_handle();
        let line = IrqLine::new(5).unwrap();
        let irq = line.event().try_clone().unwrap();
        let interrupt = Arc::new(Interrupt::new(line));
        let mut t = MmioTransport::new(Box::new(blk), mem.clone(), interrupt.clone()).unwrap();
        let queue = MockSplitQueue::create(&mem, RING, 16);
        start(&mut t, &queue);
        assert_eq!(irq.read().ok(), None, "nothing to tell at the start");
        assert_eq!(
            read_sector(&mut t, &mem, &queue, 0),
            (status::OK, vec![0xee; 512])
        );
        w(&mut t, reg::VIRTIO_MMIO_INTERRUPT_ACK, 1);
        let _ = irq.read();

        handle.swap(new.open(false)).unwrap();
        assert_eq!(r(&mut t, reg::VIRTIO_MMIO_INTERRUPT_STATUS), 2);
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(r(&mut t, reg::VIRTIO_MMIO_CONFIG_GENERATION), 1);
        assert_eq!(capacity(&mut t), 16);
        w(&mut t, reg::VIRTIO_MMIO_INTERRUPT_ACK, 2);
        DiskImage::open(&old.0, false).expect("the old image is closed and unlocked");
        assert_eq!(
            read_sector(&mut t, &mem, &queue, 2),
            (status::OK, vec![0x5a; 512])
        );
        assert_eq!(read_sector(&mut t, &mem, &queue, 16).0, status::IOERR);

        // Reset: the driver hears of a swap when it starts the device again.
        w(&mut t, reg::VIRTIO_MMIO_STATUS, 0);
        let _ = irq.read();
        handle.swap(third.open(false)).unwrap();
        assert_eq!(r(&mut t, reg::VIRTIO_MMIO_INTERRUPT_STATUS), 0);
        assert_eq!(irq.read().ok(), None);
        assert_eq!(r(&mut t, reg::VIRTIO_MMIO_CONFIG_GENERATION), 2);
        assert_eq!(capacity(&mut t), 4);
        let queue = MockSplitQueue::create(&mem, RING, 16);
        start(&mut t, &queue);
        assert_eq!(r(&mut t, reg::VIRTIO_MMIO_INTERRUPT_STATUS), 2);
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(
            read_sector(&mut t, &mem, &queue, 3),
            (status::OK, vec![0x11; 512])
        );
        interrupt.take_status();
        let _ = irq.read();
        drop(t);
        handle.swap(new.open(false)).unwrap();
        assert_eq!(interrupt.status(), 0, "a dropped device interrupts no one");
        assert_eq!(irq.read().ok(), None);
    }
}

/// A block device behind virtio-pci: a swap reaches the driver on the
/// configuration vector it chose.
mod over_pci {
    use super::*;
    use crate::bus::BusDevice;
    use crate::pci::msix::{self, Recorder};
    use crate::pci::{PciFunction, CAP_MSIX};
    use crate::virtio::pci::{bar, common, VirtioPci};
    use crate::virtio::status as dev;

    fn write(f: &mut VirtioPci, offset: u64, len: usize, value: u64) {
        f.write(offset, &value.to_le_bytes()[..len]);
    }

    fn read(f: &mut VirtioPci, offset: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        f.read(offset, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    /// The offset of the MSI-X capability in the PCI configuration space.
    fn msix_capability(f: &mut VirtioPci) -> usize {
        let mut byte = [0u8; 2];
        f.config_read(0x34, &mut byte[..1]);
        let mut next = usize::from(byte[0]);
        while next != 0 {
            f.config_read(next, &mut byte);
            if byte[0] == CAP_MSIX {
                return next;
            }
            next = usize::from(byte[1]);
        }
        panic!("no MSI-X capability");
    }

    #[test]
    fn a_swap_raises_the_configuration_vector_and_changes_the_generation() {
        let mem = memory();
        let (old, new, third) = (
            Image::new(),
            Image::filled(16, 0x5a),
            Image::filled(4, 0x11),
        );
        let blk = Block::new("vda".into(), old.open(true), "");
        let handle = blk.backing_handle();
        let sink = Arc::new(Recorder::default());
        let mut f = VirtioPci::new(Box::new(blk), mem.clone(), 0xe000_0000, sink.clone()).unwrap();
        let msix = msix_capability(&mut f);
        f.config_write(msix + 2, &msix::CONTROL_ENABLE.to_le_bytes());
        for vector in 0..2u64 {
            write(&mut f, bar::MSIX_TABLE + 16 * vector, 8, 0xfee0_0000);
            write(&mut f, bar::MSIX_TABLE + 16 * vector + 8, 4, 0x30 + vector);
            write(&mut f, bar::MSIX_TABLE + 16 * vector + 12, 4, 0);
        }
        let status = |s: u32| u64::from(s);
        write(
            &mut f,
            common::DEVICE_STATUS,
            1,
            status(dev::ACKNOWLEDGE | dev::DRIVER),
        );
        write(&mut f, common::DRIVER_FEATURE_SELECT, 4, 1);
        write(&mut f, common::DRIVER_FEATURE, 4, 1);
        let fok = dev::ACKNOWLEDGE | dev::DRIVER | dev::FEATURES_OK;
        write(&mut f, common::DEVICE_STATUS, 1, status(fok));
        write(&mut f, common::CONFIG_MSIX_VECTOR, 2, 0);
        let queue = MockSplitQueue::create(&mem, RING, 16);
        write(&mut f, common::QUEUE_SELECT, 2, 0);
        write(&mut f, common::QUEUE_SIZE, 2, 16);
        write(&mut f, common::QUEUE_MSIX_VECTOR, 2, 1);
        write(&mut f, common::QUEUE_DESC_LO, 4, queue.desc_table_addr().0);
        write(&mut f, common::QUEUE_DRIVER_LO, 4, queue.avail_addr().0);
        write(&mut f, common::QUEUE_DEVICE_LO, 4, queue.used_addr().0);
        write(&mut f, common::QUEUE_ENABLE, 2, 1);
        assert_eq!(read(&mut f, bar::DEVICE, 8), 64);

        // While the driver sets the device up: it hears of it at DRIVER_OK.
        handle.swap(new.open(true)).unwrap();
        assert_eq!(read(&mut f, bar::DEVICE, 8), 16);
        assert_eq!(read(&mut f, common::CONFIG_GENERATION, 1), 1);
        assert!(sink.0.lock().unwrap().is_empty());
        write(
            &mut f,
            common::DEVICE_STATUS,
            1,
            status(fok | dev::DRIVER_OK),
        );
        assert_eq!(*sink.0.lock().unwrap(), [(0xfee0_0000, 0x30)]);
        assert_eq!(read(&mut f, bar::ISR, 1), 2);

        // While it runs the device.
        handle.swap(third.open(true)).unwrap();
        assert_eq!(sink.0.lock().unwrap()[1..], [(0xfee0_0000, 0x30)]);
        assert_eq!(read(&mut f, bar::ISR, 1), 2);
        assert_eq!(read(&mut f, common::CONFIG_GENERATION, 1), 2);
        assert_eq!(read(&mut f, bar::DEVICE, 8), 4);
    }
}
