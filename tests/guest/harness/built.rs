// SPDX-License-Identifier: Apache-2.0
//! What scripts build outside the repository and the tests boot: the
//! Kata-style kernel (`resources/kernel/build-kernel.sh`) and Kata's agent
//! with its initramfs (`resources/kata/build-agent-initramfs.sh`). Each
//! script is asked once per test run, and a run hands its answers to the
//! run it starts inside kvm-host ([`env_for_kvm_host`]): the scripts run
//! apt-cache, which takes seconds under kvm-host's emulation.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use crate::common::repo_root;

/// A script's answer: the path it printed, or why there is none.
type Answer = Result<PathBuf, String>;

/// Runs `script` (relative to the repository) with `arg`; the one line it
/// prints is a path. `missing` says what to do when it fails.
fn ask(script: &str, arg: &str, missing: &str) -> Answer {
    let script = repo_root().join(script);
    let out = Command::new(&script)
        .arg(arg)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || path.is_empty() {
        return Err(format!(
            "{missing}\n{} {arg}: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(PathBuf::from(path))
}

/// `env`'s value if set, else `ask`'s answer; once per process.
fn once(cell: &'static OnceLock<Answer>, env: &str, ask: impl FnOnce() -> Answer) -> Answer {
    cell.get_or_init(|| match std::env::var_os(env) {
        Some(path) => Ok(PathBuf::from(path)),
        None => ask(),
    })
    .clone()
}

const KATA_STYLE_KERNEL_ENV: &str = "FERRY_TEST_KATA_STYLE_KERNEL";
const KATA_AGENT_DIR_ENV: &str = "FERRY_TEST_KATA_AGENT_DIR";

/// The Kata-style guest kernel (everything built in, as Kata's are).
pub fn kata_style_kernel() -> Answer {
    static CELL: OnceLock<Answer> = OnceLock::new();
    once(&CELL, KATA_STYLE_KERNEL_ENV, || {
        ask(
            "resources/kernel/build-kernel.sh",
            "--check",
            "the Kata-style guest kernel is not built: run resources/kernel/build-kernel.sh \
             (scripts/setup does)",
        )
    })
}

/// The directory of Kata's agent build: `kata-agent`, `kata-agent-client`,
/// `initramfs.cpio.gz` (the agent as init) and the `vmlinuz` it boots on.
pub fn kata_agent_dir() -> Answer {
    static CELL: OnceLock<Answer> = OnceLock::new();
    once(&CELL, KATA_AGENT_DIR_ENV, || {
        ask(
            "resources/kata/build-agent-initramfs.sh",
            "--print-dir",
            "Kata's agent is not built: scripts/setup builds it",
        )
    })
}

/// The answers known here, as the environment of a run inside kvm-host
/// (one that has none asks again there, and says why it has none).
pub fn env_for_kvm_host() -> Vec<(&'static str, PathBuf)> {
    [
        (KATA_STYLE_KERNEL_ENV, kata_style_kernel()),
        (KATA_AGENT_DIR_ENV, kata_agent_dir()),
    ]
    .into_iter()
    .filter_map(|(env, answer)| answer.ok().map(|path| (env, path)))
    .collect()
}
