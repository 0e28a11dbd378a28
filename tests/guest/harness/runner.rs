// SPDX-License-Identifier: Apache-2.0
//! Runs the selected tests here, one after the other, each retried once
//! after a hazard (a stalled or unasked-reset guest), and sums them up.

use std::time::Instant;

use super::{host, progress, registry, Test, TestError, TestResult};

/// Runs the tests `filter` selects (see [`registry::selected`]); returns the exit status.
pub fn run(filter: &[String]) -> i32 {
    if let Err(why) = host::prepare() {
        println!("guest tests cannot run: {why}");
        println!("guest: 0 passed, 1 failed");
        return 1;
    }
    if host::inside_kvm_host() {
        // The watch outside kvm-host tells a hung kvm-host by its silence.
        progress::start_heartbeat();
    }
    let selected = registry::selected(filter);
    println!("running {} guest tests", selected.len());
    let (mut passed, mut failed) = (0, Vec::new());
    for test in selected {
        progress::started(test.name);
        let started = Instant::now();
        let result = run_retrying_a_hazard(test);
        progress::finished(test.name, started.elapsed().as_secs_f64(), &result);
        match result {
            Ok(()) => passed += 1,
            Err(_) => failed.push(test.name),
        }
    }
    if !failed.is_empty() {
        println!("failed guest tests: {}", failed.join(", "));
    }
    println!("guest: {passed} passed, {} failed", failed.len());
    i32::from(!failed.is_empty())
}

/// Lists the tests `filter` selects, in the order they run, as libtest's `--list` does.
pub fn list(filter: &[String]) {
    for test in registry::selected(filter) {
        println!("{}: test", test.name);
    }
}

/// Runs `test`, and once more if it met the hazard of nested KVM, logged as `RETRY`.
fn run_retrying_a_hazard(test: &Test) -> TestResult {
    let first = (test.run)().map_err(TestError::hazard_if_signed);
    let Err(TestError::Hazard(account)) = &first else {
        return first;
    };
    let lines: Vec<&str> = account.lines().collect();
    println!(
        "    RETRY {}: {} (a known hazard of nested KVM); retrying once",
        test.name,
        lines.first().unwrap_or(&"")
    );
    // The card's counters say whether the data path moved, and the end of
    // the console which hazard it was.
    for line in lines.iter().filter(|l| l.contains("net0: tx ")) {
        println!("    | {line}");
    }
    for line in &lines[lines.len().saturating_sub(6)..] {
        println!("    | {line}");
    }
    (test.run)()
}
