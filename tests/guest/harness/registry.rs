// SPDX-License-Identifier: Apache-2.0
//! Every guest test: each function marked `#[guest_test]`, which registers
//! itself (with `inventory`), so that a test is one function and nothing else.
//!
//! The tests run in a fixed order: module by module, alphabetically by the
//! module's path (`basics`, `disk`, `net`, ...), and within a module in the
//! order written. The order decides nothing else: a kvm-host stall is
//! charged to the test that had started and not finished (see `kvm_host`).

use std::collections::HashSet;

use super::TestResult;

/// A guest test.
#[derive(Debug)]
pub struct Test {
    /// Its name, its function's.
    pub name: &'static str,
    /// Its body.
    pub run: fn() -> TestResult,
    /// Where it is written: its module's path and its line there.
    pub module: &'static str,
    /// The line of its `#[guest_test]`.
    pub line: u32,
}

inventory::collect!(Test);

/// Registers the function NAME as the guest test NAME: what `#[guest_test]`
/// adds after the function.
macro_rules! register_test {
    ($name:ident) => {
        ::inventory::submit! {
            $crate::harness::Test {
                name: ::core::stringify!($name),
                run: $name,
                module: ::core::module_path!(),
                line: ::core::line!(),
            }
        }
    };
}
pub(crate) use register_test;

/// Every guest test, in the order they run.
pub fn all() -> Vec<&'static Test> {
    let mut tests: Vec<&'static Test> = inventory::iter::<Test>.into_iter().collect();
    tests.sort_by_key(|t| (t.module, t.line));
    let mut names = HashSet::new();
    for test in &tests {
        assert!(
            names.insert(test.name),
            "two guest tests are named {} (one in {}): a name must select one test",
            test.name,
            test.module
        );
    }
    tests
}

/// The test named `name`, if there is one.
pub fn find(name: &str) -> Option<&'static Test> {
    all().into_iter().find(|t| t.name == name)
}

/// The tests `filter` selects, in order: all if it is empty; else, for each
/// word, the test of that exact name if there is one, or every test whose
/// name contains it.
pub fn selected(filter: &[String]) -> Vec<&'static Test> {
    let all = all();
    let selects = |word: &str, name: &str| {
        if all.iter().any(|t| t.name == word) {
            name == word
        } else {
            name.contains(word)
        }
    };
    all.iter()
        .copied()
        .filter(|t| filter.is_empty() || filter.iter().any(|f| selects(f, t.name)))
        .collect()
}
