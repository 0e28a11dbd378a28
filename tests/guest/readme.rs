// SPDX-License-Identifier: Apache-2.0
//! The README's examples, run as written: each test reads the code block
//! that follows a `<!-- test: NAME -->` line in README.md and runs it with
//! bash from the repository root, with the ferry under test first in
//! `PATH` (the README's `export PATH=$PWD/target/release:$PATH`).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{self, readme, repo_root, Outcome, FERRY};
use crate::harness::{check, guest_test, hazard_sign, TestError, TestResult, WATCHDOG};

/// The README's block NAME.
fn block(name: &str) -> Result<String, String> {
    readme::tested_block(&readme::read()?, name)
        .ok_or_else(|| format!("README.md has no block marked {name:?}"))
}

/// `bash -c SCRIPT` from the repository root, the ferry under test first in PATH.
pub fn bash(script: &str) -> Command {
    let bin_dir = PathBuf::from(FERRY)
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("bash");
    cmd.args(["-euo", "pipefail", "-c", script])
        .current_dir(repo_root())
        .env("PATH", path);
    cmd
}

/// Runs the README's block NAME; a stalled or reset guest is a hazard.
fn run_block(name: &str) -> TestResult<Outcome> {
    let out = common::run(bash(&block(name)?), WATCHDOG);
    let sign = hazard_sign(&out.stdout);
    if out.timed_out || out.status == Some(ferry::exit_status::GUEST_RESET) || sign.is_some() {
        return Err(TestError::Hazard(format!(
            "the README's {name} example stalled or reset ({})\n{}",
            sign.unwrap_or("a known hazard"),
            out.describe()
        )));
    }
    Ok(out)
}

#[guest_test]
fn readme_guest_command() -> TestResult {
    let out = run_block("guest-command")?;
    check(
        out.status == Some(3),
        "the guest's status 3 should be ferry's",
        &out,
    )?;
    check(
        out.stdout.lines().any(|l| l.trim() == "2"),
        "nproc should print 2 (--cpus 2)",
        &out,
    )
}

#[guest_test]
fn readme_disk_from_directory() -> TestResult {
    let out = run_block("disk-from-directory")?;
    check(out.status == Some(0), "the job should succeed", &out)?;
    check(
        out.stdout.contains("build-rootfs: built target/job.ext4"),
        "build-rootfs.sh should say what it built",
        &out,
    )?;
    check(
        out.stdout.contains("hello from a disk"),
        "the guest should print the file from the directory's image",
        &out,
    )
}

#[guest_test]
fn readme_root_disk() -> TestResult {
    let out = run_block("root-disk")?;
    check(
        out.status == Some(3),
        "the job's status 3 should be ferry's",
        &out,
    )?;
    check(
        out.stdout
            .lines()
            .any(|l| l.starts_with("/dev/vda") && l.trim_end().ends_with(" /")),
        "df should show /dev/vda mounted on /",
        &out,
    )
}

#[guest_test]
fn readme_publish() -> TestResult {
    // `exec`, so that the child is ferry itself and Ctrl-C can be sent to it.
    let script = format!("exec {}", block("publish")?);
    let fetch = block("publish-fetch")?;
    let log = std::env::temp_dir().join(format!("ferry-readme-publish-{}.log", std::process::id()));
    let log_file =
        std::fs::File::create(&log).map_err(|e| format!("cannot create {log:?}: {e}"))?;
    let err_file = log_file
        .try_clone()
        .map_err(|e| format!("cannot share {log:?}: {e}"))?;
    let mut ferry = bash(&script)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(err_file)
        .spawn()
        .map_err(|e| format!("cannot start the README's publish example: {e}"))?;
    let started = Instant::now();
    let mut fetched = None;
    while started.elapsed() < WATCHDOG && fetched.is_none() {
        if let Ok(Some(status)) = ferry.try_wait() {
            let console = std::fs::read_to_string(&log).unwrap_or_default();
            let _ = std::fs::remove_file(&log);
            return Err(format!("ferry ended early ({status}):\n{console}").into());
        }
        let out = common::run(bash(&fetch), Duration::from_secs(10));
        if out.status == Some(0) {
            fetched = Some(out);
        } else {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    // Ctrl-C: ferry asks the guest to shut down.
    // SAFETY: our own child's pid, not yet reaped.
    unsafe { libc::kill(ferry.id() as libc::pid_t, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        match ferry.try_wait() {
            Ok(Some(status)) => break Some(status),
            _ if Instant::now() > deadline => {
                let _ = ferry.kill();
                let _ = ferry.wait();
                break None;
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    let Some(fetched) = fetched else {
        return Err(TestError::Hazard(format!(
            "curl never reached the guest's web server\n--- ferry ---\n{console}"
        )));
    };
    if fetched.stdout.trim() != "hello from the guest" {
        return Err(format!("curl should fetch the guest's page\n{}", fetched.describe()).into());
    }
    match status.and_then(|s| s.code()) {
        Some(130) if console.contains("init: powering off") => Ok(()),
        other => Err(format!(
            "after Ctrl-C the guest should power off and ferry exit 130, not {other:?}\n--- ferry ---\n{console}"
        )
        .into()),
    }
}

#[guest_test]
fn readme_tap_static() -> TestResult {
    // kvm-host's kernel has tun as a module (a host running ferry has it loaded).
    let _ = std::process::Command::new("modprobe").arg("tun").output();
    let out = run_block("tap-static");
    // The block makes tap0; it goes whatever happened.
    let _ = std::process::Command::new("ip")
        .args(["link", "del", "tap0"])
        .output();
    let out = out?;
    check(
        out.status == Some(0),
        "the guest's ping should succeed",
        &out,
    )?;
    check(
        out.stdout
            .contains("3 packets transmitted, 3 packets received"),
        "the guest should reach the TAP's address three times",
        &out,
    )
}

#[guest_test]
fn readme_kata_boot() -> TestResult {
    let out = run_block("kata-boot")?;
    check(
        out.status == Some(0),
        "the guest's nproc should succeed",
        &out,
    )?;
    check(
        out.stdout.lines().any(|l| l.trim() == "4"),
        "nproc should print 4 (vcpu_count 4, found through the MP table with acpi=off)",
        &out,
    )
}
