//! Kata's `hypervisor.Hypervisor` ttrpc service, generated at build time
//! from `proto/hypervisor.proto` (a copy of Kata Containers'
//! `src/runtime/protocols/hypervisor/hypervisor.proto`, unchanged):
//! [`hypervisor`] holds the messages (`CreateVMRequest`, ...),
//! [`hypervisor_ttrpc`] the service trait (`Hypervisor`), its method table
//! (`create_hypervisor`) and a client (`HypervisorClient`).

pub use generated::{hypervisor, hypervisor_ttrpc};

/// The generated code, under the lints it was not written for.
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    unused_imports,
    unused_mut
)]
#[allow(
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    dead_code
)]
#[allow(clippy::undocumented_unsafe_blocks)]
mod generated {
    pub mod hypervisor {
        include!(concat!(env!("OUT_DIR"), "/hypervisor.rs"));
    }
    pub mod hypervisor_ttrpc {
        include!(concat!(env!("OUT_DIR"), "/hypervisor_ttrpc.rs"));
    }
}
