// SPDX-License-Identifier: Apache-2.0
//! Guest tests: boot the real test guest (resources/out/) under KVM and
//! judge ferry by its exit status, its console and its log.
//!
//! A test is one function, marked `#[guest_test]` and named for what it
//! shows, in the module below for its subject; it returns a
//! [`harness::TestResult`] and nothing else needs to know of it:
//!
//! ```ignore
//! #[guest_test]
//! fn guest_exit_status_reaches_ferry() -> TestResult {
//!     let out = Boot::new("exit 7").run()?;
//!     check(out.status == Some(7), "ferry should exit with the guest's status 7", &out)
//! }
//! ```
//!
//! They run one at a time, module by module in alphabetical order and in
//! the order written within each; words on the command line select some
//! (an exact test name that test, any other word every test whose name
//! holds it); `--list` lists them, in that order.
//!
//! Each boot has a watchdog. Nested KVM under emulation now and then
//! freezes or resets a guest: such a hazard ([`harness::TestError::Hazard`])
//! is retried once and logged as `RETRY`; a second one is a failure.
//!
//! Where /dev/kvm can run a stock guest, the tests run right here. Where it
//! cannot (a PVM /dev/kvm, as on the project's build machines), this binary
//! runs itself inside `../shared/kvm-host/run-in-kvm-host`, whose /dev/kvm
//! is ordinary KVM, and watches that run ([`harness::kvm_host`]). Any other
//! case fails with a message: the guest tests never skip.

#[path = "../common/mod.rs"]
mod common;
mod harness;

// The tests, by subject.
mod api;
mod basics;
mod disk;
mod kata;
mod kata_boot;
mod kata_fc;
mod net;
mod readme;
mod transport;
mod vsock;

use harness::host::{self, Where};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // cargo test passes its own flags; the rest are name filters.
    let filter: Vec<String> = args
        .iter()
        .filter(|a| !a.starts_with('-'))
        .cloned()
        .collect();
    if args.iter().any(|a| a == "--list") {
        harness::runner::list(&filter);
        return;
    }
    let code = match host::where_to_run() {
        Where::Here => harness::runner::run(&filter),
        Where::InKvmHost { why } => harness::kvm_host::run_tests(&why, &filter),
    };
    std::process::exit(code);
}
