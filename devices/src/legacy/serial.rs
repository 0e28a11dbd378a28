// SPDX-License-Identifier: Apache-2.0
//! The 16550 UART at COM1 (0x3f8, IRQ 4): guest console output goes to a
//! writer, host input is queued into its receive FIFO.

use std::io::Write;

use vm_superio::serial::NoEvents;

use crate::bus::BusDevice;
use crate::irq::IrqLine;

/// I/O port base of COM1.
pub const COM1_PORT: u16 = 0x3f8;
/// Number of COM1 registers.
pub const COM1_LEN: u64 = 8;
/// Interrupt line of COM1.
pub const COM1_IRQ: u32 = 4;

/// A serial port on the I/O bus.
pub struct Serial {
    uart: vm_superio::Serial<IrqLine, NoEvents, Box<dyn Write + Send>>,
}

impl std::fmt::Debug for Serial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serial").finish_non_exhaustive()
    }
}

impl Serial {
    /// A UART that raises `irq` and writes what the guest sends to `out`.
    pub fn new(irq: IrqLine, out: Box<dyn Write + Send>) -> Self {
        Self {
            uart: vm_superio::Serial::new(irq, out),
        }
    }

    /// Room left in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Queues host input for the guest; returns how many bytes were taken.
    pub fn queue_input(&mut self, bytes: &[u8]) -> usize {
        let room = bytes.len().min(self.uart.fifo_capacity());
        match self.uart.enqueue_raw_bytes(&bytes[..room]) {
            Ok(n) => n,
            Err(e) => {
                log::warn!("serial: cannot queue input: {e:?}");
                0
            }
        }
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Ok(offset), [first, ..]) = (u8::try_from(offset), data) {
            *first = self.uart.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), [value, ..]) = (u8::try_from(offset), data) {
            if let Err(e) = self.uart.write(offset, *value) {
                log::warn!("serial: write failed: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn guest_output_reaches_the_writer_and_input_the_guest() {
        let sink = Sink::default();
        let irq = IrqLine::new(COM1_IRQ).unwrap();
        let mut serial = Serial::new(irq.try_clone().unwrap(), Box::new(sink.clone()));
        for b in b"hi" {
            serial.write(0, &[*b]);
        }
        assert_eq!(sink.0.lock().unwrap().as_slice(), b"hi");

        // Enable the received-data interrupt, then queue input.
        serial.write(1, &[0x01]);
        assert_eq!(serial.queue_input(b"ok"), 2);
        assert_eq!(irq.event().read().unwrap(), 1);
        let mut byte = [0u8];
        serial.read(0, &mut byte);
        assert_eq!(byte, [b'o']);
    }

    #[test]
    fn input_beyond_the_fifo_is_left_to_the_caller() {
        let irq = IrqLine::new(COM1_IRQ).unwrap();
        let mut serial = Serial::new(irq, Box::new(std::io::sink()));
        let big = vec![b'x'; 1000];
        let taken = serial.queue_input(&big);
        assert!(taken < big.len());
        assert_eq!(serial.input_capacity(), 0);
    }
}
