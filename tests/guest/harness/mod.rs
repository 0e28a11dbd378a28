// SPDX-License-Identifier: Apache-2.0
//! The machinery under the guest tests; the test modules need only what
//! this re-exports.
//!
//! - [`registry`]: every function marked `#[guest_test]`, in the order they
//!   run, and the name filters.
//! - [`error`]: what a test returns: [`TestResult`], failed or a hazard.
//! - [`boot`]: [`Boot`], one boot of the test guest under its watchdog.
//! - [`built`]: what scripts build outside the repository (the Kata-style
//!   kernel, Kata's agent), asked once per run.
//! - [`runner`]: runs the tests here, retrying a hazard once.
//! - [`host`]: whether this machine's /dev/kvm can boot the test guest.
//! - [`kvm_host`]: where it cannot, runs them inside kvm-host and watches it.
//! - [`progress`]: the lines a run prints per test, which that watch reads.
//! - [`scratch`]: a scratch directory for images and logs.

pub mod boot;
pub mod built;
pub mod error;
pub mod host;
pub mod kvm_host;
pub mod progress;
pub mod registry;
pub mod runner;
pub mod scratch;

pub use boot::{Boot, GUEST_RESET, WATCHDOG};
pub use built::{kata_agent_dir, kata_style_kernel};
pub use error::{check, hazard_sign, TestError, TestResult};
pub use ferry_guest_test_macro::guest_test;
pub(crate) use registry::register_test;
pub use registry::Test;
pub use scratch::Scratch;
