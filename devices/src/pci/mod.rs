// SPDX-License-Identifier: Apache-2.0
//! A PCI bus 0 behind the configuration mechanism #1 ports (0xcf8 address,
//! 0xcfc data), with a host bridge in slot 0 and one function per device
//! in the slots after it. Devices' BARs sit on the MMIO bus; only their
//! configuration spaces pass through here.

pub mod config;
pub mod msix;

use std::sync::{Arc, Mutex};

use crate::bus::BusDevice;
use config::{ConfigSpace, Identity};

/// First I/O port of configuration mechanism #1.
pub const CONFIG_PORT: u16 = 0xcf8;
/// Ports it takes: the address register and the data window.
pub const CONFIG_PORT_LEN: u64 = 8;
/// Devices on one bus.
pub const SLOTS: usize = 32;
/// Capability id of a vendor-specific capability.
pub const CAP_VENDOR: u8 = 0x09;
/// Capability id of MSI-X.
pub const CAP_MSIX: u8 = 0x11;

/// A PCI function's configuration space, as the bus reaches it.
pub trait PciFunction: Send {
    /// The guest reads `data.len()` (1, 2 or 4) bytes at `offset`.
    fn config_read(&mut self, offset: usize, data: &mut [u8]);
    /// The guest writes `data` at `offset`.
    fn config_write(&mut self, offset: usize, data: &[u8]);
}

/// A function shared between the configuration ports and its BAR.
pub type SharedFunction = Arc<Mutex<dyn PciFunction>>;

/// The host bridge: a function that only says what it is.
#[derive(Debug)]
struct HostBridge(ConfigSpace);

impl PciFunction for HostBridge {
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.0.read(offset, data);
    }
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.0.write(offset, data);
    }
}

/// Errors while plugging a device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Every slot of bus 0 is taken.
    #[error("no PCI slot left (bus 0 has {SLOTS})")]
    Full,
}

/// Bus 0 and the configuration ports that reach it.
pub struct PciRoot {
    address: u32,
    slots: Vec<SharedFunction>,
}

impl std::fmt::Debug for PciRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciRoot")
            .field("address", &self.address)
            .field("devices", &self.slots.len())
            .finish()
    }
}

impl Default for PciRoot {
    fn default() -> Self {
        Self::new()
    }
}

impl PciRoot {
    /// A bus with the host bridge in slot 0.
    pub fn new() -> Self {
        let bridge = HostBridge(ConfigSpace::new(Identity {
            vendor: 0x1b36,
            device: 0x0008,
            revision: 0,
            class: 0x06_0000,
            subsystem_vendor: 0x1b36,
            subsystem: 0x0008,
        }));
        Self {
            address: 0,
            slots: vec![Arc::new(Mutex::new(bridge))],
        }
    }

    /// The slot the next device will get.
    pub fn next_slot(&self) -> Result<usize, Error> {
        let slot = self.slots.len();
        if slot < SLOTS {
            Ok(slot)
        } else {
            Err(Error::Full)
        }
    }

    /// Plugs `function` into the next slot; returns the slot.
    pub fn add(&mut self, function: SharedFunction) -> Result<usize, Error> {
        let slot = self.next_slot()?;
        self.slots.push(function);
        Ok(slot)
    }

    /// The function and register offset the address register selects,
    /// when it is enabled and names a function on bus 0.
    fn selected(&self, port_offset: u64) -> Option<(&SharedFunction, usize)> {
        let enabled = self.address & (1 << 31) != 0;
        let bus = (self.address >> 16) & 0xff;
        let slot = (self.address >> 11) & 0x1f;
        let function = (self.address >> 8) & 0x7;
        if !enabled || bus != 0 || function != 0 {
            return None;
        }
        let register = (self.address & 0xfc) as usize + (port_offset - 4) as usize;
        Some((self.slots.get(slot as usize)?, register))
    }
}

/// Locks a function, recovering it if another thread panicked holding it.
fn lock(function: &SharedFunction) -> std::sync::MutexGuard<'_, dyn PciFunction + 'static> {
    function.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether a data-port access of `len` bytes at `offset` is aligned and
/// stays within the dword.
fn data_access_ok(offset: u64, len: usize) -> bool {
    matches!(len, 1 | 2 | 4) && offset >= 4 && (offset - 4) % len as u64 == 0
}

impl BusDevice for PciRoot {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset == 0 && data.len() == 4 {
            data.copy_from_slice(&self.address.to_le_bytes());
            return;
        }
        data.fill(0xff);
        if !data_access_ok(offset, data.len()) {
            return;
        }
        if let Some((function, register)) = self.selected(offset) {
            lock(function).config_read(register, data);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 {
            if let Ok(bytes) = <[u8; 4]>::try_from(data) {
                self.address = u32::from_le_bytes(bytes);
            }
            return;
        }
        if !data_access_ok(offset, data.len()) {
            return;
        }
        if let Some((function, register)) = self.selected(offset) {
            lock(function).config_write(register, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn select(root: &mut PciRoot, slot: u32, register: u32) {
        let address = (1u32 << 31) | (slot << 11) | register;
        root.write(0, &address.to_le_bytes());
    }

    fn read32(root: &mut PciRoot, slot: u32, register: u32) -> u32 {
        select(root, slot, register);
        let mut b = [0u8; 4];
        root.read(4, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn the_host_bridge_is_in_slot_0_and_empty_slots_read_ones() {
        let mut root = PciRoot::new();
        assert_eq!(read32(&mut root, 0, 0), 0x0008_1b36);
        assert_eq!(read32(&mut root, 0, 8) >> 8, 0x06_0000);
        assert_eq!(read32(&mut root, 1, 0), u32::MAX);
        // The address register reads back (the guest probes for mechanism #1 so).
        let mut b = [0u8; 4];
        root.read(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), (1 << 31) | (1 << 11));
    }

    #[test]
    fn byte_and_word_accesses_reach_their_offset() {
        let mut root = PciRoot::new();
        select(&mut root, 0, 0);
        let mut w = [0u8; 2];
        root.read(6, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x0008);
        let mut byte = [0u8; 1];
        root.read(5, &mut byte);
        assert_eq!(byte, [0x1b]);
        // Misaligned, other functions, other buses, disabled: all ones.
        root.read(5, &mut w);
        assert_eq!(w, [0xff, 0xff]);
        root.write(0, &((1u32 << 31) | (1 << 8)).to_le_bytes());
        assert_eq!(
            {
                let mut b = [0u8; 4];
                root.read(4, &mut b);
                b
            },
            [0xff; 4]
        );
        assert_eq!(read32(&mut root, 1 << 5, 0), u32::MAX);
        root.write(0, &0u32.to_le_bytes());
        let mut b = [0u8; 4];
        root.read(4, &mut b);
        assert_eq!(b, [0xff; 4]);
        // A byte written to the address port is not an address.
        root.write(3, &[1]);
    }

    #[test]
    fn a_bus_holds_31_devices() {
        let mut root = PciRoot::new();
        for slot in 1..SLOTS {
            let bridge = HostBridge(ConfigSpace::new(Identity {
                vendor: 1,
                device: slot as u16,
                revision: 0,
                class: 0,
                subsystem_vendor: 0,
                subsystem: 0,
            }));
            assert_eq!(root.add(Arc::new(Mutex::new(bridge))).unwrap(), slot);
        }
        assert!(matches!(root.next_slot(), Err(Error::Full)));
        assert_eq!(read32(&mut root, 31, 0), (31 << 16) | 1);
    }
}
