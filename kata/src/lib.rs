//! ferry-kata: Kata Containers' remote-hypervisor service
//! (`hypervisor.Hypervisor` over ttrpc), each sandbox a ferry VM of its own
//! with passt in the pod's network namespace.
//!
//! Reading order: [`config`] (the service's file), [`plan`] (one sandbox's
//! VM from the file and Kata's annotations), [`sandbox`] (its directory and
//! its ferry process), [`launcher`] (how ferry is started), [`output`]
//! (console, ferry's and the agent's log), [`service`] (the ttrpc methods),
//! [`server`] (the socket, start-up clean-up, signals).

pub mod config;
pub mod launcher;
pub mod logger;
pub mod output;
pub mod plan;
pub mod protocol;
pub mod sandbox;
pub mod server;
pub mod service;
