// SPDX-License-Identifier: Apache-2.0
//! MSI-X (PCI Local Bus 3.0, 6.8.2): the vector table and pending bits a
//! function exposes in a BAR, and delivery of its messages through an
//! [`MsiSink`] that the VMM provides (KVM stays out of this crate).

use std::sync::{Arc, Mutex};

/// Bytes per table entry: address low, address high, data, vector control.
pub const ENTRY_SIZE: u64 = 16;
/// Vector control bit 0: the vector is masked.
const ENTRY_MASKED: u32 = 1;
/// Message control bit 14: every vector of the function is masked.
pub const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// Message control bit 15: MSI-X is enabled.
pub const CONTROL_ENABLE: u16 = 1 << 15;

/// Where a function's MSI messages go: the VMM injects them into the guest.
pub trait MsiSink: Send + Sync {
    /// Delivers the message `data` written at `address`.
    fn send(&self, address: u64, data: u32) -> std::io::Result<()>;
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    address: u64,
    data: u32,
    control: u32,
}

impl Default for Entry {
    /// After reset every vector is masked (6.8.2.9).
    fn default() -> Self {
        Self {
            address: 0,
            data: 0,
            control: ENTRY_MASKED,
        }
    }
}

#[derive(Debug)]
struct State {
    enabled: bool,
    function_masked: bool,
    table: Vec<Entry>,
    pending: Vec<bool>,
}

impl State {
    /// The message of `vector` if it may be sent now.
    fn deliverable(&self, vector: usize) -> Option<(u64, u32)> {
        let entry = self.table.get(vector)?;
        let masked = self.function_masked || entry.control & ENTRY_MASKED != 0;
        (self.enabled && !masked).then_some((entry.address, entry.data))
    }

    /// Takes the pending vectors that may now be sent.
    fn take_unmasked_pending(&mut self) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        for vector in 0..self.table.len() {
            if self.pending[vector] {
                if let Some(message) = self.deliverable(vector) {
                    self.pending[vector] = false;
                    out.push(message);
                }
            }
        }
        out
    }
}

/// A function's MSI-X vectors, shared by the register side (vCPU threads)
/// and the device's worker, which signals them.
pub struct Msix {
    state: Mutex<State>,
    sink: Arc<dyn MsiSink>,
}

impl std::fmt::Debug for Msix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Msix").field("state", &self.state).finish()
    }
}

impl Msix {
    /// `vectors` vectors, all masked, MSI-X disabled.
    pub fn new(vectors: u16, sink: Arc<dyn MsiSink>) -> Self {
        let n = usize::from(vectors);
        Self {
            state: Mutex::new(State {
                enabled: false,
                function_masked: false,
                table: vec![Entry::default(); n],
                pending: vec![false; n],
            }),
            sink,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many vectors the table has.
    pub fn vectors(&self) -> u16 {
        self.state().table.len() as u16
    }

    /// Whether MSI-X is enabled.
    pub fn enabled(&self) -> bool {
        self.state().enabled
    }

    fn send_all(&self, messages: Vec<(u64, u32)>) {
        for (address, data) in messages {
            if let Err(e) = self.sink.send(address, data) {
                log::warn!("cannot deliver an MSI to 0x{address:x}: {e}");
            }
        }
    }

    /// Signals `vector`: sent now, or left pending while it is masked.
    pub fn signal(&self, vector: u16) {
        let message = {
            let mut state = self.state();
            let vector = usize::from(vector);
            if vector >= state.table.len() {
                return;
            }
            let message = state.deliverable(vector);
            if message.is_none() && state.enabled {
                state.pending[vector] = true;
            }
            message
        };
        if let Some(message) = message {
            self.send_all(vec![message]);
        }
    }

    /// The function's message control bits ([`CONTROL_ENABLE`],
    /// [`CONTROL_FUNCTION_MASK`]) as the driver wrote them.
    pub fn set_control(&self, control: u16) {
        let messages = {
            let mut state = self.state();
            state.enabled = control & CONTROL_ENABLE != 0;
            state.function_masked = control & CONTROL_FUNCTION_MASK != 0;
            if !state.enabled {
                state.pending.fill(false);
            }
            state.take_unmasked_pending()
        };
        self.send_all(messages);
    }

    /// Back to the state after reset: disabled, every vector masked.
    pub fn reset(&self) {
        let mut state = self.state();
        state.enabled = false;
        state.function_masked = false;
        state.table.fill(Entry::default());
        state.pending.fill(false);
    }

    /// A read of the vector table at `offset`; dword and qword reads only.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let state = self.state();
        let Some(entry) = state.table.get((offset / ENTRY_SIZE) as usize) else {
            return;
        };
        let words = [
            entry.address as u32,
            (entry.address >> 32) as u32,
            entry.data,
            entry.control,
        ];
        let first = (offset % ENTRY_SIZE / 4) as usize;
        for (i, chunk) in data.chunks_mut(4).enumerate() {
            if let Some(word) = words.get(first + i) {
                let bytes = word.to_le_bytes();
                chunk.copy_from_slice(&bytes[..chunk.len()]);
            }
        }
    }

    /// A write to the vector table at `offset`; dword and qword writes only.
    pub fn write_table(&self, offset: u64, data: &[u8]) {
        if offset % 4 != 0 || (data.len() != 4 && data.len() != 8) {
            log::debug!("MSI-X: {}-byte table write at 0x{offset:x}", data.len());
            return;
        }
        let messages = {
            let mut state = self.state();
            let index = (offset / ENTRY_SIZE) as usize;
            let Some(entry) = state.table.get_mut(index) else {
                return;
            };
            let first = (offset % ENTRY_SIZE / 4) as usize;
            for (i, chunk) in data.chunks(4).enumerate() {
                let mut bytes = [0u8; 4];
                bytes.copy_from_slice(chunk);
                let word = u32::from_le_bytes(bytes);
                match first + i {
                    0 => entry.address = (entry.address & !0xffff_ffff) | u64::from(word),
                    1 => entry.address = (entry.address & 0xffff_ffff) | (u64::from(word) << 32),
                    2 => entry.data = word,
                    3 => entry.control = word & ENTRY_MASKED,
                    _ => {}
                }
            }
            state.take_unmasked_pending()
        };
        self.send_all(messages);
    }

    /// A read of the pending bit array at `offset`.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        let state = self.state();
        for (i, byte) in data.iter_mut().enumerate() {
            let first = (offset as usize + i) * 8;
            *byte = (0..8)
                .filter(|bit| state.pending.get(first + bit).copied().unwrap_or(false))
                .fold(0u8, |acc, bit| acc | 1 << bit);
        }
    }
}

/// An [`MsiSink`] for tests: it keeps every message, in order.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct Recorder(pub(crate) Mutex<Vec<(u64, u32)>>);

#[cfg(test)]
impl MsiSink for Recorder {
    fn send(&self, address: u64, data: u32) -> std::io::Result<()> {
        self.0.lock().unwrap().push((address, data));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(msix: &Msix, vector: u64, address: u64, data: u32) {
        msix.write_table(vector * ENTRY_SIZE, &address.to_le_bytes());
        msix.write_table(vector * ENTRY_SIZE + 8, &data.to_le_bytes());
        msix.write_table(vector * ENTRY_SIZE + 12, &0u32.to_le_bytes());
    }

    #[test]
    fn an_unmasked_vector_sends_its_message() {
        let sink = Arc::new(Recorder::default());
        let msix = Msix::new(3, sink.clone());
        msix.set_control(CONTROL_ENABLE);
        program(&msix, 1, 0xfee0_1000, 0x41);
        msix.signal(1);
        assert_eq!(*sink.0.lock().unwrap(), vec![(0xfee0_1000, 0x41)]);
        let mut entry = [0u8; 16];
        msix.read_table(ENTRY_SIZE, &mut entry);
        assert_eq!(&entry[..8], &0xfee0_1000u64.to_le_bytes());
        assert_eq!(&entry[8..12], &0x41u32.to_le_bytes());
    }

    #[test]
    fn a_masked_vector_is_pending_until_unmasked() {
        let sink = Arc::new(Recorder::default());
        let msix = Msix::new(2, sink.clone());
        msix.set_control(CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
        program(&msix, 0, 0xfee0_0000, 7);
        msix.signal(0);
        assert!(sink.0.lock().unwrap().is_empty());
        let mut pba = [0u8; 8];
        msix.read_pba(0, &mut pba);
        assert_eq!(pba[0], 1);
        msix.set_control(CONTROL_ENABLE);
        assert_eq!(*sink.0.lock().unwrap(), vec![(0xfee0_0000, 7)]);
        msix.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0);
        // The entry's own mask works the same way.
        msix.write_table(12, &1u32.to_le_bytes());
        msix.signal(0);
        assert_eq!(sink.0.lock().unwrap().len(), 1);
        msix.write_table(12, &0u32.to_le_bytes());
        assert_eq!(sink.0.lock().unwrap().len(), 2);
    }

    #[test]
    fn disabled_or_unknown_vectors_send_nothing() {
        let sink = Arc::new(Recorder::default());
        let msix = Msix::new(1, sink.clone());
        program(&msix, 0, 0xfee0_0000, 1);
        msix.signal(0);
        msix.set_control(CONTROL_ENABLE);
        msix.signal(5);
        msix.write_table(5 * ENTRY_SIZE, &[1, 2, 3, 4]);
        msix.write_table(2, &[1, 2]);
        assert!(sink.0.lock().unwrap().is_empty());
        msix.reset();
        assert!(!msix.enabled());
    }
}
