// SPDX-License-Identifier: Apache-2.0
//! The i8042 keyboard controller with a keyboard that has one job: its
//! CPU reset line ends the VM (the guest's `reboot` with `reboot=k`, and
//! `panic=-1`), and the host can press Ctrl-Alt-Del so that the guest
//! shuts down cleanly. Enough of the controller is there for Linux's
//! i8042 and atkbd drivers to bind (self test, command byte, port
//! enables); the keyboard sends scan code set 2, untranslated.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::bus::BusDevice;
use crate::irq::IrqLine;
use crate::vm_end::{ExitReason, VmEnd};

/// First I/O port of the i8042 (data); the command port is at +4.
pub const I8042_PORT: u16 = 0x60;
/// Ports 0x60..=0x64.
pub const I8042_LEN: u64 = 5;
/// The keyboard's interrupt line.
pub const KBD_IRQ: u32 = 1;

/// Offsets on the bus.
const DATA: u64 = 0;
const COMMAND: u64 = 4;

/// Status register bits.
const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM: u8 = 0x04;
const STATUS_LAST_WAS_COMMAND: u8 = 0x08;
const STATUS_NOT_INHIBITED: u8 = 0x10;

/// Command byte bits.
const CTR_KBD_INT: u8 = 0x01;
const CTR_SYSTEM: u8 = 0x04;
const CTR_KBD_DISABLED: u8 = 0x10;
const CTR_AUX_DISABLED: u8 = 0x20;

/// Bytes the output buffer holds at most; more are dropped.
const OUTPUT_MAX: usize = 64;

/// Keyboard replies.
const KBD_ACK: u8 = 0xfa;
const KBD_SELF_TEST_OK: u8 = 0xaa;

/// Ctrl, Alt and Delete pressed, then released (set 2).
const CTRL_ALT_DEL: [u8; 11] = [
    0x14, 0x11, 0xe0, 0x71, // make: left Ctrl, left Alt, Delete
    0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14, // break, in reverse
];

/// Who the next data-port byte is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataTarget {
    /// The keyboard: a command.
    Keyboard,
    /// The keyboard: the argument of its last command.
    KeyboardArgument,
    /// The controller: the argument of this command.
    Controller(u8),
}

/// The i8042 on the I/O bus.
#[derive(Debug)]
pub struct I8042 {
    vm_end: Arc<VmEnd>,
    irq: IrqLine,
    output: VecDeque<u8>,
    command_byte: u8,
    /// The guest wrote the command byte: a driver has set the controller up.
    configured: bool,
    last_was_command: bool,
    data_target: DataTarget,
}

impl I8042 {
    /// A controller whose reset line ends `vm_end` and whose keyboard raises `irq`.
    pub fn new(vm_end: Arc<VmEnd>, irq: IrqLine) -> Self {
        Self {
            vm_end,
            irq,
            output: VecDeque::new(),
            command_byte: CTR_KBD_INT | CTR_SYSTEM,
            configured: false,
            last_was_command: false,
            data_target: DataTarget::Keyboard,
        }
    }

    /// Whether the guest has a keyboard driver listening: one has set the
    /// controller up (the reset state has the interrupt on before any
    /// driver runs), with the keyboard's interrupt on and its port enabled.
    pub fn keyboard_listening(&self) -> bool {
        self.configured
            && self.command_byte & CTR_KBD_INT != 0
            && self.command_byte & CTR_KBD_DISABLED == 0
    }

    /// Presses and releases Ctrl-Alt-Del; returns whether a driver listens.
    pub fn press_ctrl_alt_del(&mut self) -> bool {
        for byte in CTRL_ALT_DEL {
            self.push_keyboard(byte);
        }
        self.keyboard_listening()
    }

    /// A reply from the controller itself: the driver polls for it.
    fn push_controller(&mut self, byte: u8) {
        if self.output.len() < OUTPUT_MAX {
            self.output.push_back(byte);
        }
    }

    /// A byte from the keyboard: interrupts the guest.
    fn push_keyboard(&mut self, byte: u8) {
        if self.output.len() >= OUTPUT_MAX {
            return;
        }
        self.output.push_back(byte);
        if self.output.len() == 1 {
            self.interrupt();
        }
    }

    fn interrupt(&self) {
        if self.command_byte & CTR_KBD_INT != 0 {
            if let Err(e) = self.irq.trigger() {
                log::warn!("i8042: cannot raise the keyboard interrupt: {e}");
            }
        }
    }

    fn status(&self) -> u8 {
        let mut status = STATUS_SYSTEM | STATUS_NOT_INHIBITED;
        if !self.output.is_empty() {
            status |= STATUS_OUTPUT_FULL;
        }
        if self.last_was_command {
            status |= STATUS_LAST_WAS_COMMAND;
        }
        status
    }

    fn read_data(&mut self) -> u8 {
        let byte = self.output.pop_front().unwrap_or(0);
        if !self.output.is_empty() {
            self.interrupt();
        }
        byte
    }

    fn controller_command(&mut self, command: u8) {
        match command {
            0x20 => self.push_controller(self.command_byte),
            0x60 | 0xd1 | 0xd2 | 0xd3 | 0xd4 => self.data_target = DataTarget::Controller(command),
            0xa7 => self.command_byte |= CTR_AUX_DISABLED,
            0xa8 => self.command_byte &= !CTR_AUX_DISABLED,
            // Self test passed; keyboard interface test passed.
            0xaa => self.push_controller(0x55),
            0xab => self.push_controller(0x00),
            0xad => self.command_byte |= CTR_KBD_DISABLED,
            0xae => self.command_byte &= !CTR_KBD_DISABLED,
            // Input port; output port (reset line high).
            0xc0 => self.push_controller(0x00),
            0xd0 => self.push_controller(0x01),
            // Pulse output lines: bit 0 low is the CPU reset.
            0xf0..=0xff if command & 1 == 0 => {
                log::info!("i8042: the guest pulsed the CPU reset line");
                self.vm_end.request(ExitReason::Reset);
            }
            _ => log::debug!("i8042: ignored controller command 0x{command:02x}"),
        }
    }

    fn controller_argument(&mut self, command: u8, value: u8) {
        match command {
            0x60 => {
                self.command_byte = value;
                self.configured = true;
            }
            // Output port with the reset line low.
            0xd1 if value & 1 == 0 => self.vm_end.request(ExitReason::Reset),
            // Echo as if the keyboard sent it.
            0xd2 => self.push_keyboard(value),
            _ => {}
        }
    }

    fn keyboard_command(&mut self, command: u8) {
        match command {
            // Reset: acknowledged, self test passed.
            0xff => {
                self.push_keyboard(KBD_ACK);
                self.push_keyboard(KBD_SELF_TEST_OK);
            }
            // Identify: an MF2 keyboard.
            0xf2 => {
                self.push_keyboard(KBD_ACK);
                self.push_keyboard(0xab);
                self.push_keyboard(0x83);
            }
            0xee => self.push_keyboard(0xee),
            // LEDs, scan code set, typematic rate: an argument follows.
            0xed | 0xf0 | 0xf3 => {
                self.push_keyboard(KBD_ACK);
                self.data_target = DataTarget::KeyboardArgument;
            }
            _ => self.push_keyboard(KBD_ACK),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let value = match offset {
            DATA => self.read_data(),
            COMMAND => self.status(),
            _ => return,
        };
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        match offset {
            DATA => {
                self.last_was_command = false;
                match std::mem::replace(&mut self.data_target, DataTarget::Keyboard) {
                    DataTarget::Keyboard => self.keyboard_command(value),
                    DataTarget::KeyboardArgument => self.push_keyboard(KBD_ACK),
                    DataTarget::Controller(command) => self.controller_argument(command, value),
                }
            }
            COMMAND => {
                self.last_was_command = true;
                self.data_target = DataTarget::Keyboard;
                self.controller_command(value);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn i8042() -> (I8042, Arc<VmEnd>, vmm_sys_util::eventfd::EventFd) {
        let end = Arc::new(VmEnd::new().unwrap());
        let irq = IrqLine::new(KBD_IRQ).unwrap();
        let event = irq.event().try_clone().unwrap();
        (I8042::new(end.clone(), irq), end, event)
    }

    fn inb(dev: &mut I8042, offset: u64) -> u8 {
        let mut b = [0u8];
        dev.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn reset_command_ends_the_vm_with_reset() {
        let (mut dev, end, _) = i8042();
        dev.write(DATA, &[0xfe]);
        assert!(!end.has_ended(), "a byte on the data port is not a reset");
        dev.write(COMMAND, &[0xfe]);
        assert_eq!(end.reason(), Some(ExitReason::Reset));
    }

    #[test]
    fn the_linux_probe_sees_a_working_controller() {
        let (mut dev, _, _) = i8042();
        assert_eq!(inb(&mut dev, COMMAND) & STATUS_OUTPUT_FULL, 0);
        dev.write(COMMAND, &[0xaa]);
        assert_ne!(inb(&mut dev, COMMAND) & STATUS_OUTPUT_FULL, 0);
        assert_eq!(inb(&mut dev, DATA), 0x55);
        // Read, change and read back the command byte.
        dev.write(COMMAND, &[0x20]);
        let ctr = inb(&mut dev, DATA);
        dev.write(COMMAND, &[0x60]);
        dev.write(DATA, &[ctr | CTR_KBD_DISABLED]);
        dev.write(COMMAND, &[0x20]);
        assert_eq!(inb(&mut dev, DATA), ctr | CTR_KBD_DISABLED);
        assert!(!dev.keyboard_listening());
        dev.write(COMMAND, &[0xae]);
        assert!(dev.keyboard_listening());
        // A keyboard reset is acknowledged.
        dev.write(DATA, &[0xff]);
        assert_eq!(inb(&mut dev, DATA), KBD_ACK);
        assert_eq!(inb(&mut dev, DATA), KBD_SELF_TEST_OK);
    }

    #[test]
    fn ctrl_alt_del_arrives_as_scan_codes_with_an_interrupt_each() {
        let (mut dev, end, irq) = i8042();
        // The driver sets the controller up.
        dev.write(COMMAND, &[0x60]);
        dev.write(DATA, &[CTR_KBD_INT | CTR_SYSTEM]);
        assert!(dev.press_ctrl_alt_del());
        let mut got = Vec::new();
        while inb(&mut dev, COMMAND) & STATUS_OUTPUT_FULL != 0 {
            assert_eq!(irq.read().unwrap(), 1, "one interrupt per byte");
            got.push(inb(&mut dev, DATA));
        }
        assert_eq!(got, CTRL_ALT_DEL);
        assert!(!end.has_ended());
    }

    #[test]
    fn before_a_driver_sets_the_controller_up_nobody_listens() {
        // The reset state has the keyboard interrupt on, but no driver yet.
        let (dev, _, _) = i8042();
        assert!(!dev.keyboard_listening());
    }

    #[test]
    fn without_a_driver_the_keys_go_unheard() {
        let (mut dev, _, _) = i8042();
        dev.write(COMMAND, &[0x60]);
        dev.write(DATA, &[CTR_SYSTEM]);
        assert!(!dev.press_ctrl_alt_del());
    }
}
