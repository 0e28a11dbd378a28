// SPDX-License-Identifier: Apache-2.0
//! The lines a run prints about each test, on stdout:
//!
//! ```text
//! test NAME ... started
//! test NAME ... ok (12.3 s)
//! test NAME ... FAILED (12.3 s)      and the failure's account after it
//! ```
//!
//! and, inside kvm-host only, a heartbeat every [`HEARTBEAT_EVERY`]. The
//! watch outside kvm-host ([`super::kvm_host`]) reads them: which test is
//! running, which have finished, and whether kvm-host still lives.

use std::time::Duration;

use super::{registry, TestError, TestResult};

/// What the run inside kvm-host prints every [`HEARTBEAT_EVERY`]; read outside, not shown.
pub const HEARTBEAT: &str = "guest tests: heartbeat";
/// How often the run inside kvm-host prints [`HEARTBEAT`].
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);

/// Prints [`HEARTBEAT`] every [`HEARTBEAT_EVERY`], from a thread of its own, for good.
pub fn start_heartbeat() {
    std::thread::spawn(|| loop {
        std::thread::sleep(HEARTBEAT_EVERY);
        println!("{HEARTBEAT}");
    });
}

/// Says that test `name` starts.
pub fn started(name: &str) {
    println!("test {name} ... started");
}

/// Says how test `name` ended, after `secs` seconds.
pub fn finished(name: &str, secs: f64, result: &TestResult) {
    match result {
        Ok(()) => println!("test {name} ... ok ({secs:.1} s)"),
        Err(e) => {
            println!("test {name} ... FAILED ({secs:.1} s)\n{e}");
            if let TestError::Hazard(_) = e {
                println!("(the known hazard of nested KVM, a second time: a failure)");
            }
            println!();
        }
    }
}

/// What a line says about a test.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// The test started.
    Started(&'static str),
    /// The test ended, and passed or not.
    Finished {
        /// Its name.
        name: &'static str,
        /// Whether it passed.
        passed: bool,
    },
}

/// What `line` says about a test, if it is one of [`started`]'s or [`finished`]'s.
pub fn parse(line: &str) -> Option<Progress> {
    let (name, what) = line.strip_prefix("test ")?.split_once(" ... ")?;
    let name = registry::find(name)?.name;
    if what == "started" {
        Some(Progress::Started(name))
    } else if what.starts_with("ok (") {
        Some(Progress::Finished { name, passed: true })
    } else if what.starts_with("FAILED (") {
        Some(Progress::Finished {
            name,
            passed: false,
        })
    } else {
        None
    }
}
