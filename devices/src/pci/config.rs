// SPDX-License-Identifier: Apache-2.0
//! A type 0 PCI configuration space (PCI Local Bus 3.0, 6.1): 256 bytes,
//! a mask of the bits the guest may write, BARs the guest can size, and
//! a capability list.

/// Size of a conventional configuration space.
pub const CONFIG_SIZE: usize = 256;
/// Offset of BAR 0; BAR n is 4 n bytes further.
pub const BAR0: usize = reg::BAR0;

/// Header offsets.
mod reg {
    pub const VENDOR_ID: usize = 0x00;
    pub const DEVICE_ID: usize = 0x02;
    pub const COMMAND: usize = 0x04;
    pub const STATUS: usize = 0x06;
    pub const REVISION: usize = 0x08;
    pub const CLASS: usize = 0x09;
    pub const HEADER_TYPE: usize = 0x0e;
    pub const BAR0: usize = 0x10;
    pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
    pub const SUBSYSTEM_ID: usize = 0x2e;
    pub const CAPABILITIES: usize = 0x34;
    pub const INTERRUPT_LINE: usize = 0x3c;
}

/// Status register: the function has a capability list.
const STATUS_CAPABILITIES: u16 = 1 << 4;
/// Command register bits the guest may set: I/O, memory, bus master,
/// INTx disable.
const COMMAND_WRITABLE: u16 = 0x7 | (1 << 10);
/// First byte after the header, where capabilities go.
const FIRST_CAPABILITY: usize = 0x40;

/// What a function says it is.
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    /// Vendor id.
    pub vendor: u16,
    /// Device id.
    pub device: u16,
    /// Revision id.
    pub revision: u8,
    /// Class code, subclass and programming interface (24 bits).
    pub class: u32,
    /// Subsystem vendor id.
    pub subsystem_vendor: u16,
    /// Subsystem id.
    pub subsystem: u16,
}

/// A configuration space with the guest's view and write rules.
#[derive(Debug, Clone)]
pub struct ConfigSpace {
    bytes: [u8; CONFIG_SIZE],
    writable: [u8; CONFIG_SIZE],
    /// The end of the last capability, where the next one goes.
    next_capability: usize,
    /// The byte that links to the next capability.
    last_link: usize,
}

impl ConfigSpace {
    /// A function's header with no BARs or capabilities yet.
    pub fn new(id: Identity) -> Self {
        let mut space = Self {
            bytes: [0; CONFIG_SIZE],
            writable: [0; CONFIG_SIZE],
            next_capability: FIRST_CAPABILITY,
            last_link: reg::CAPABILITIES,
        };
        space.put(reg::VENDOR_ID, &id.vendor.to_le_bytes());
        space.put(reg::DEVICE_ID, &id.device.to_le_bytes());
        space.put(reg::REVISION, &[id.revision]);
        space.put(reg::CLASS, &id.class.to_le_bytes()[..3]);
        space.put(reg::HEADER_TYPE, &[0]);
        space.put(reg::SUBSYSTEM_VENDOR_ID, &id.subsystem_vendor.to_le_bytes());
        space.put(reg::SUBSYSTEM_ID, &id.subsystem.to_le_bytes());
        space.allow(reg::COMMAND, &COMMAND_WRITABLE.to_le_bytes());
        space.allow(reg::INTERRUPT_LINE, &[0xff]);
        space
    }

    fn put(&mut self, offset: usize, value: &[u8]) {
        self.bytes[offset..offset + value.len()].copy_from_slice(value);
    }

    fn allow(&mut self, offset: usize, mask: &[u8]) {
        self.writable[offset..offset + mask.len()].copy_from_slice(mask);
    }

    /// Sets BAR `index` to a 32-bit, non-prefetchable memory window at
    /// `address` of `size` bytes (a power of two, at least 16).
    pub fn set_memory_bar(&mut self, index: usize, address: u32, size: u32) {
        let offset = reg::BAR0 + 4 * index;
        self.put(offset, &address.to_le_bytes());
        // The guest sizes the BAR by writing all ones: only the bits above
        // the size stick, and the low four (the type) never change.
        self.allow(offset, &(!(size - 1) & !0xf).to_le_bytes());
    }

    /// The address BAR `index` holds now.
    pub fn bar_address(&self, index: usize) -> u32 {
        self.dword(reg::BAR0 + 4 * index) & !0xf
    }

    /// Appends a capability: `body` is everything after the id and
    /// next-pointer bytes; `writable` masks `body`. Returns the offset of
    /// the capability, or `None` if the space is full.
    pub fn add_capability(&mut self, id: u8, body: &[u8], writable: &[u8]) -> Option<usize> {
        let offset = self.next_capability;
        let end = offset + 2 + body.len();
        if end > CONFIG_SIZE {
            return None;
        }
        self.put(offset, &[id, 0]);
        self.put(offset + 2, body);
        self.allow(offset + 2, &writable[..writable.len().min(body.len())]);
        self.bytes[self.last_link] = offset as u8;
        self.last_link = offset + 1;
        let status = self.word(reg::STATUS) | STATUS_CAPABILITIES;
        self.put(reg::STATUS, &status.to_le_bytes());
        self.next_capability = (end + 3) & !3;
        Some(offset)
    }

    /// The 16-bit value at `offset`.
    pub fn word(&self, offset: usize) -> u16 {
        u16::from_le_bytes([self.bytes[offset], self.bytes[offset + 1]])
    }

    /// The 32-bit value at `offset`.
    pub fn dword(&self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.bytes[offset..offset + 4]);
        u32::from_le_bytes(b)
    }

    /// Sets bytes the guest cannot write (device-owned fields).
    pub fn set(&mut self, offset: usize, value: &[u8]) {
        self.put(offset, value);
    }

    /// The guest reads `data.len()` bytes at `offset`; outside the space reads as ones.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        match self.bytes.get(offset..offset + data.len()) {
            Some(bytes) => data.copy_from_slice(bytes),
            None => data.fill(0xff),
        }
    }

    /// The guest writes `data` at `offset`; only writable bits change.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, &value) in data.iter().enumerate() {
            let Some(mask) = self.writable.get(offset + i).copied() else {
                return;
            };
            let byte = &mut self.bytes[offset + i];
            *byte = (*byte & !mask) | (value & mask);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space() -> ConfigSpace {
        ConfigSpace::new(Identity {
            vendor: 0x1af4,
            device: 0x1041,
            revision: 1,
            class: 0x02_0000,
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
        })
    }

    #[test]
    fn header_is_read_only_but_for_command_and_line() {
        let mut s = space();
        s.write(0, &[0; 16]);
        assert_eq!(s.dword(0), 0x1041_1af4);
        assert_eq!(s.dword(8), 0x0200_0001);
        s.write(reg::COMMAND, &0xffffu16.to_le_bytes());
        assert_eq!(s.word(reg::COMMAND), COMMAND_WRITABLE);
        s.write(reg::INTERRUPT_LINE, &[9]);
        let mut b = [0u8; 1];
        s.read(reg::INTERRUPT_LINE, &mut b);
        assert_eq!(b, [9]);
        let mut out = [0u8; 4];
        s.read(254, &mut out);
        assert_eq!(out, [0xff; 4]);
        s.write(254, &[1; 4]);
    }

    #[test]
    fn a_bar_is_sized_by_writing_ones_and_restored() {
        let mut s = space();
        s.set_memory_bar(0, 0xe000_8000, 0x8000);
        s.write(reg::BAR0, &u32::MAX.to_le_bytes());
        assert_eq!(s.dword(reg::BAR0), 0xffff_8000);
        s.write(reg::BAR0, &0xe000_8000u32.to_le_bytes());
        assert_eq!(s.bar_address(0), 0xe000_8000);
        // BARs that do not exist read as zero and stay so.
        s.write(reg::BAR0 + 4, &u32::MAX.to_le_bytes());
        assert_eq!(s.dword(reg::BAR0 + 4), 0);
    }

    #[test]
    fn capabilities_form_a_list() {
        let mut s = space();
        let a = s
            .add_capability(0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], &[0, 0xff])
            .unwrap();
        let b = s.add_capability(0x09, &[14, 1], &[]).unwrap();
        assert_eq!(a, 0x40);
        assert_eq!(b, 0x4c);
        assert_ne!(s.word(reg::STATUS) & STATUS_CAPABILITIES, 0);
        assert_eq!(s.bytes[reg::CAPABILITIES], 0x40);
        assert_eq!(s.bytes[a + 1] as usize, b);
        assert_eq!(s.bytes[b + 1], 0);
        s.write(a + 2, &[0xaa, 0xbb]);
        assert_eq!(s.word(a + 2), 0xbb01);
        assert!(s.add_capability(0x09, &[0; 200], &[]).is_none());
    }
}
