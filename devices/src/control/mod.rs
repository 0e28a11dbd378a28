// SPDX-License-Identifier: Apache-2.0
//! Registers through which the guest tells ferry something: its exit
//! status, that userspace started, that it panicked, that it powers off.

pub mod acpi_sleep;
pub mod boot_marker;
pub mod exit_status;
pub mod pvpanic;

pub use acpi_sleep::AcpiSleep;
pub use boot_marker::BootMarker;
pub use exit_status::ExitStatus;
pub use pvpanic::PvPanic;
