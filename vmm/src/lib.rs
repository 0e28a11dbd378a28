// SPDX-License-Identifier: Apache-2.0
//! ferry: boot a Linux guest on KVM, networked through passt.
//!
//! The `ferry` binary is a thin `main` over this library: the command line
//! ([`cli`]) becomes a checked configuration ([`config`]), which [`vm`]
//! builds and runs; [`exit_status`] turns how the VM ended into ferry's
//! exit status. The integration tests use the same definitions.

pub mod cli;
pub mod config;
mod console;
mod event_loop;
pub mod exit_status;
mod kvm;
pub mod logger;
mod memory;
pub mod resources;
mod vcpu;
pub mod vm;
