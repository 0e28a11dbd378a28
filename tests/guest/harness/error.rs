// SPDX-License-Identifier: Apache-2.0
//! What a guest test returns: [`TestResult`].

use std::fmt;

use crate::common::Outcome;

/// Why a guest test did not pass.
#[derive(Debug)]
pub enum TestError {
    /// ferry did something wrong: what was expected, then what the run
    /// showed (see [`check`]). `?` and `.into()` make one of any `String`
    /// or `&str` error.
    Failed(String),
    /// The known hazard of nested KVM under emulation, not ferry's doing:
    /// the guest stalled, or reset when the test did not ask for it ([`Boot::run`]
    /// says so). The runner retries the test once and logs it as `RETRY`;
    /// a second hazard is a failure.
    ///
    /// [`Boot::run`]: crate::harness::Boot::run
    Hazard(String),
}

/// A guest test's result.
pub type TestResult<T = ()> = Result<T, TestError>;

impl TestError {
    /// What went wrong, then what the run showed.
    pub fn account(&self) -> &str {
        match self {
            Self::Failed(account) | Self::Hazard(account) => account,
        }
    }
}

impl fmt::Display for TestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.account())
    }
}

impl From<String> for TestError {
    fn from(account: String) -> Self {
        Self::Failed(account)
    }
}

impl From<&str> for TestError {
    fn from(account: &str) -> Self {
        Self::Failed(account.to_string())
    }
}

/// Fails with `out`'s account unless `cond` holds.
pub fn check(cond: bool, what: &str, out: &Outcome) -> TestResult {
    if cond {
        Ok(())
    } else {
        Err(TestError::Failed(format!("{what}\n{}", out.describe())))
    }
}
