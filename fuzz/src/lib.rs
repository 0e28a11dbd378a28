// SPDX-License-Identifier: Apache-2.0
//! What the virtqueue fuzz targets share: guest memory and a split
//! virtqueue built from the fuzzer's bytes, and plain readings of guest
//! memory to check the devices against.
//!
//! An input is a 16-byte [`Config`] then the memory image:
//!
//! | bytes  | meaning                                                     |
//! |--------|-------------------------------------------------------------|
//! | 0      | queue size, `1 << (b % 9)` (1 to 256)                       |
//! | 1      | bit 0: `VIRTIO_F_EVENT_IDX`; the rest is the target's       |
//! | 2..4   | descriptor table address / 16 (little endian)               |
//! | 4..6   | available ring address / 2                                  |
//! | 6..8   | used ring address / 4                                       |
//! | 8..10  | the device's next available index                           |
//! | 10..12 | the device's next used index                                |
//! | 12..16 | the target's own parameters                                 |
//!
//! The image fills [`REGION_A`] from its start, then [`REGION_B`]; the
//! rest of memory is zero. Between and past the regions there is no
//! memory, so the addresses the rings and descriptors name (up to 1 MiB
//! for the rings, anything for descriptors) may lie outside it.

use std::num::Wrapping;

use ferry_devices::GuestMemory;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

/// The first region: four pages at address 0.
pub const REGION_A: (u64, usize) = (0, 0x4000);
/// The second region: one page after a one-page hole.
pub const REGION_B: (u64, usize) = (0x5000, 0x1000);
/// Bytes of the configuration before the memory image.
pub const CONFIG_LEN: usize = 16;
/// Largest queue the targets build.
pub const MAX_QUEUE_SIZE: u16 = 256;

/// Bytes of a used ring entry (`struct virtq_used_elem`).
const USED_ELEM_LEN: u64 = 8;

/// The queue set-up an input asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Entries in the queue (a power of two).
    pub size: u16,
    /// The target's flag bits (byte 1 without bit 0).
    pub flags: u8,
    /// `VIRTIO_F_EVENT_IDX` negotiated.
    pub event_idx: bool,
    /// Guest address of the descriptor table.
    pub desc_table: u64,
    /// Guest address of the available ring.
    pub avail_ring: u64,
    /// Guest address of the used ring.
    pub used_ring: u64,
    /// Where the device starts on the available ring.
    pub next_avail: u16,
    /// Where the device starts on the used ring.
    pub next_used: u16,
    /// The target's own four bytes.
    pub params: [u8; 4],
}

impl Config {
    /// Decodes the first [`CONFIG_LEN`] bytes (missing ones read as zero).
    pub fn parse(data: &[u8]) -> Self {
        let mut b = [0u8; CONFIG_LEN];
        let n = data.len().min(CONFIG_LEN);
        b[..n].copy_from_slice(&data[..n]);
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Self {
            size: 1 << (b[0] % 9),
            flags: b[1] & !1,
            event_idx: b[1] & 1 != 0,
            desc_table: u64::from(u16_at(2)) * 16,
            avail_ring: u64::from(u16_at(4)) * 2,
            used_ring: u64::from(u16_at(6)) * 4,
            next_avail: u16_at(8),
            next_used: u16_at(10),
            params: [b[12], b[13], b[14], b[15]],
        }
    }

    /// The used ring's bytes: flags, index, the entries and `avail_event`.
    pub fn used_ring_range(&self) -> (u64, u64) {
        (
            self.used_ring,
            self.used_ring + 4 + USED_ELEM_LEN * u64::from(self.size) + 2,
        )
    }
}

/// Guest memory and the queue an input describes.
#[derive(Debug)]
pub struct Guest {
    /// The guest's memory, filled from the input.
    pub mem: GuestMemory,
    /// What the input asked for.
    pub config: Config,
}

impl Guest {
    /// Memory filled from `data` after its configuration.
    pub fn new(data: &[u8]) -> Self {
        let config = Config::parse(data);
        let mem = GuestMemory::from_ranges(&[
            (GuestAddress(REGION_A.0), REGION_A.1),
            (GuestAddress(REGION_B.0), REGION_B.1),
        ])
        .expect("guest memory");
        let image = data.get(CONFIG_LEN..).unwrap_or(&[]);
        let (a, b) = image.split_at(image.len().min(REGION_A.1));
        let b = &b[..b.len().min(REGION_B.1)];
        mem.write_slice(a, GuestAddress(REGION_A.0))
            .expect("image in region A");
        mem.write_slice(b, GuestAddress(REGION_B.0))
            .expect("image in region B");
        Self { mem, config }
    }

    /// A ready queue as the configuration says.
    pub fn queue(&self) -> Queue {
        let c = &self.config;
        let mut q = Queue::new(MAX_QUEUE_SIZE).expect("queue");
        q.set_size(c.size);
        q.try_set_desc_table_address(GuestAddress(c.desc_table))
            .expect("aligned descriptor table");
        q.try_set_avail_ring_address(GuestAddress(c.avail_ring))
            .expect("aligned available ring");
        q.try_set_used_ring_address(GuestAddress(c.used_ring))
            .expect("aligned used ring");
        q.set_event_idx(c.event_idx);
        q.set_next_avail(c.next_avail);
        q.set_next_used(c.next_used);
        q.set_ready(true);
        q
    }

    /// A copy of all of guest memory, region after region.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(REGION_A.1 + REGION_B.1);
        for region in self.mem.iter() {
            let mut buf = vec![0u8; region.len() as usize];
            self.mem
                .read_slice(&mut buf, region.start_addr())
                .expect("a region reads whole");
            out.extend_from_slice(&buf);
        }
        out
    }

    /// Whether `len` bytes at `addr` lie inside one region.
    pub fn in_one_region(&self, addr: u64, len: u64) -> bool {
        [REGION_A, REGION_B].iter().any(|&(start, size)| {
            addr >= start
                && addr
                    .checked_add(len)
                    .is_some_and(|end| end <= start + size as u64)
        })
    }

    /// Whether `[start, end)` lies inside one region.
    pub fn range_in_memory(&self, (start, end): (u64, u64)) -> bool {
        end >= start && self.in_one_region(start, end - start)
    }

    /// The `len` bytes at `addr`, if they lie in one region.
    pub fn read(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        if !self.in_one_region(addr, len as u64) {
            return None;
        }
        let mut buf = vec![0u8; len];
        self.mem.read_slice(&mut buf, GuestAddress(addr)).ok()?;
        Some(buf)
    }
}

/// Offset of guest address `addr` in a [`Guest::snapshot`], if it is memory.
pub fn snapshot_offset(addr: u64) -> Option<usize> {
    if addr < REGION_A.0 + REGION_A.1 as u64 {
        Some((addr - REGION_A.0) as usize)
    } else if (REGION_B.0..REGION_B.0 + REGION_B.1 as u64).contains(&addr) {
        Some(REGION_A.1 + (addr - REGION_B.0) as usize)
    } else {
        None
    }
}

/// A model of guest memory: a snapshot that the expected writes are
/// applied to, compared with memory afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shadow(pub Vec<u8>);

impl Shadow {
    /// Writes `bytes` at `addr` (which must lie in one region).
    pub fn write(&mut self, addr: u64, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let at = snapshot_offset(addr).expect("a checked guest range");
        let last = snapshot_offset(addr + bytes.len() as u64 - 1).expect("a checked guest range");
        assert_eq!(last - at + 1, bytes.len(), "a range across regions");
        self.0[at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// Writes `bytes` across `segments` (guest address, length) in order,
    /// from the start; returns how many fitted.
    pub fn write_segments(&mut self, segments: &[(u64, usize)], bytes: &[u8]) -> usize {
        let mut done = 0;
        for &(addr, len) in segments {
            let n = len.min(bytes.len() - done);
            self.write(addr, &bytes[done..done + n]);
            done += n;
            if done == bytes.len() {
                break;
            }
        }
        done
    }

    /// Asserts that `actual` (a later snapshot) equals this model outside
    /// the byte range `skip` (guest addresses, end excluded).
    pub fn assert_matches(&self, actual: &[u8], skip: Option<(u64, u64)>, what: &str) {
        assert_eq!(self.0.len(), actual.len());
        for (i, (want, got)) in self.0.iter().zip(actual).enumerate() {
            if want == got {
                continue;
            }
            let addr = if i < REGION_A.1 {
                REGION_A.0 + i as u64
            } else {
                REGION_B.0 + (i - REGION_A.1) as u64
            };
            if skip.is_some_and(|(start, end)| (start..end).contains(&addr)) {
                continue;
            }
            panic!("{what}: guest byte 0x{addr:x} is 0x{got:02x}, expected 0x{want:02x}");
        }
    }
}

/// The descriptors of a chain, as the device walks them (the chain itself
/// is left for the device).
pub fn descriptors<M>(chain: &DescriptorChain<M>) -> Vec<Descriptor>
where
    M: std::ops::Deref + Clone,
    M::Target: vm_memory::GuestMemory,
{
    chain.clone().collect()
}

/// Pops every chain the ring offers (at most `limit`), hands each to
/// `consume`, and puts it on the used ring with the length `consume`
/// returns, as the devices' drain loop does.
pub fn for_each_chain<'m>(
    mem: &'m GuestMemory,
    queue: &mut Queue,
    limit: usize,
    mut consume: impl FnMut(DescriptorChain<&'m GuestMemory>) -> u32,
) -> usize {
    let mut count = 0;
    while count < limit {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            break;
        };
        count += 1;
        let head = chain.head_index();
        let len = consume(chain);
        let _ = queue.add_used(mem, head, len);
    }
    count
}

/// The used ring entry at `index` (wrapping) of a queue of `size`: the
/// head and length the device put there.
pub fn used_entry(guest: &Guest, index: Wrapping<u16>) -> Option<(u32, u32)> {
    let c = &guest.config;
    let at = c.used_ring + 4 + USED_ELEM_LEN * u64::from(index.0 % c.size);
    let bytes = guest.read(at, 8)?;
    Some((
        u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
    ))
}

/// The used ring's `idx`.
pub fn used_idx(guest: &Guest) -> Option<u16> {
    let bytes = guest.read(guest.config.used_ring + 2, 2)?;
    Some(u16::from_le_bytes([bytes[0], bytes[1]]))
}

/// The Internet checksum (RFC 1071) of `bytes`, big-endian words, done the
/// plain way.
pub fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut acc = 0u64;
    for pair in bytes.chunks(2) {
        let hi = u64::from(pair[0]) << 8;
        let lo = pair.get(1).map_or(0, |&b| u64::from(b));
        acc += hi | lo;
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// A cheap deterministic byte stream for filling frames and payloads.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    let mut x = u32::from(seed) | 0x100;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}
