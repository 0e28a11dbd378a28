// SPDX-License-Identifier: Apache-2.0
//! PC legacy devices: the 16550 serial port and the i8042 reset line.

pub mod i8042;
pub mod serial;

pub use i8042::I8042;
pub use serial::Serial;
