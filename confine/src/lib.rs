// SPDX-License-Identifier: Apache-2.0
//! What a ferry process may still do once its guest runs. A guest that
//! breaks out of a device model lands in one of ferry's threads; there:
//!
//! - [`seccomp`]: each kind of thread has an allow-list of system calls
//!   (a vCPU cannot open a file, a block device's thread cannot make a
//!   socket, no thread can run a program);
//! - [`landlock`]: the process can open only the files and sockets it
//!   was given, and no new privileges can be gained by running a program.

#![deny(missing_docs)]

pub mod landlock;
pub mod seccomp;
