// SPDX-License-Identifier: Apache-2.0
//! ferry: boot a Linux guest on KVM, networked through passt.
//!
//! The `ferry` binary is a thin `main` over this library: the command line
//! ([`cli`]) describes a machine ([`resources`]); the controller ([`vmm`])
//! checks it ([`config`]), builds and starts the VM ([`vm`]) and runs the
//! main loop until the VM ends; [`exit_status`] turns how it ended into
//! ferry's exit status. The integration tests use the same definitions.

pub mod api;
pub mod cli;
pub mod config;
pub mod confinement;
mod console;
mod event_loop;
pub mod exit_status;
mod kvm;
pub mod logger;
mod memory;
mod passt_keeper;
pub mod resources;
mod vcpu;
pub use vcpu::kick_signal;
pub mod vm;
pub mod vmm;
