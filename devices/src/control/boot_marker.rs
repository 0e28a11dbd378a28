// SPDX-License-Identifier: Apache-2.0
//! The boot-time marker: the guest's init writes any value here when
//! userspace starts, and ferry logs the time since its own start.
//! From a guest shell: `devmem 0xd0001000 8 1`.

use std::time::{Duration, Instant};

use crate::bus::BusDevice;

/// The boot-time marker register on the MMIO bus.
#[derive(Debug)]
pub struct BootMarker {
    start: Instant,
    marked: Option<Duration>,
}

impl BootMarker {
    /// A marker measuring from `start` (ferry's own start).
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            marked: None,
        }
    }

    /// Time from ferry's start to the guest's first mark.
    pub fn elapsed(&self) -> Option<Duration> {
        self.marked
    }
}

impl BusDevice for BootMarker {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {
        if self.marked.is_none() {
            let elapsed = self.start.elapsed();
            self.marked = Some(elapsed);
            log::info!(
                "guest userspace started {:.1} ms after ferry started",
                elapsed.as_secs_f64() * 1000.0
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_write_is_kept() {
        let mut marker = BootMarker::new(Instant::now());
        assert_eq!(marker.elapsed(), None);
        marker.write(0, &[1]);
        let first = marker.elapsed().unwrap();
        std::thread::sleep(Duration::from_millis(2));
        marker.write(0, &[1]);
        assert_eq!(marker.elapsed(), Some(first));
    }
}
