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

/// What a guest's console or ferry's log shows when nested KVM under
/// emulation, not ferry, broke the run: a vCPU that reset by itself (a
/// triple fault the guest did not ask for), or a secondary vCPU the guest
/// kernel could not wake. Paired with a short reason.
const HAZARD_SIGNS: [(&str, &str); 4] = [
    (
        "triple-faulted (KVM_EXIT_SHUTDOWN)",
        "a vCPU reset by itself",
    ),
    (
        "to wakeup CPU#",
        "the guest could not wake a secondary vCPU",
    ),
    (
        "failed to report alive state",
        "the guest could not wake a secondary vCPU",
    ),
    (
        ": Not responding",
        "the guest could not wake a secondary vCPU",
    ),
];

/// Which sign of the nested-KVM hazard `text` shows, if any.
pub fn hazard_sign(text: &str) -> Option<&'static str> {
    HAZARD_SIGNS
        .iter()
        .find(|(sign, _)| text.contains(sign))
        .map(|(_, why)| *why)
}

impl TestError {
    /// A failure whose account shows a sign of the nested-KVM hazard is
    /// that hazard ([`hazard_sign`]); any other error stays as it is.
    pub fn hazard_if_signed(self) -> Self {
        match self {
            Self::Failed(account) => match hazard_sign(&account) {
                Some(why) => Self::Hazard(format!("{why}\n{account}")),
                None => Self::Failed(account),
            },
            hazard => hazard,
        }
    }

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
