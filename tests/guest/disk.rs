// SPDX-License-Identifier: Apache-2.0
//! Disks and the CI-runner mode: an ext4 root disk, read-only and
//! multiple disks, --timeout, a clean shutdown on SIGTERM, the console
//! log, and what the image holds after each way the VM can end.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::common::Outcome;
use crate::harness::{check, guest_test, Boot, Scratch, TestError, TestResult, WATCHDOG};

// The guest's markers are computed (`$((6*7))`) so that the kernel
// command line, echoed in the console, never holds them.

/// Kernel parameters that boot from the first disk.
const ROOT: &str = "root=/dev/vda rw";

/// An e2fsprogs tool (in /sbin, which a user's PATH may lack).
fn e2fs_tool(name: &str) -> Command {
    let sbin = Path::new("/sbin").join(name);
    Command::new(if sbin.exists() { sbin } else { name.into() })
}

/// `e2fsck -f` on `image` (`-n`: check only; else repair, replaying the
/// journal); returns its status and output.
fn fsck(image: &Path, repair: bool) -> (i32, String) {
    match e2fs_tool("e2fsck")
        .arg("-f")
        .arg(if repair { "-y" } else { "-n" })
        .arg(image)
        .output()
    {
        Ok(out) => (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        ),
        Err(e) => (
            -1,
            format!("cannot run e2fsck (apt-get install e2fsprogs): {e}"),
        ),
    }
}

/// The sha256 of file `inside` in ext4 image `image`, read with debugfs.
fn sha_in_image(image: &Path, inside: &str, scratch: &Scratch) -> Result<String, String> {
    let out = scratch.path("dumped");
    let _ = std::fs::remove_file(&out);
    e2fs_tool("debugfs")
        .arg("-R")
        .arg(format!("dump {inside} {}", out.display()))
        .arg(image)
        .output()
        .map_err(|e| format!("cannot run debugfs: {e}"))?;
    let bytes = std::fs::read(&out).map_err(|e| format!("{inside} is not in the image: {e}"))?;
    Ok(hex(&Sha256::digest(&bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hash sha256sum printed for `file` in `text`.
fn printed_sha(text: &str, file: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        let (hash, name) = (words.next()?, words.next()?);
        (hash.len() == 64 && name == file).then(|| hash.to_string())
    })
}

/// Waits until `path` holds `needle`; false after `timeout`.
fn wait_for_text(path: &Path, needle: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::fs::read_to_string(path).is_ok_and(|s| s.contains(needle)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Checks an outcome-less run (spawned ferry) with its console log.
fn check_log(cond: bool, what: &str, log: &Path) -> TestResult {
    if cond {
        Ok(())
    } else {
        Err(TestError::Failed(format!("{what}\n{}", log_tail(log))))
    }
}

/// The end of the console log, for an account.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!(
        "--- console log (end) ---\n{}",
        lines[lines.len().saturating_sub(15)..].join("\n")
    )
}

fn fsck_clean(image: &Path, out: &Outcome) -> TestResult {
    let (code, report) = fsck(image, false);
    check(
        code == 0,
        &format!("the image should be clean (e2fsck -fn: {code})\n{report}"),
        out,
    )
}

#[guest_test]
fn root_disk_data_survives_a_reboot() -> TestResult {
    let scratch = Scratch::new("rootdisk")?;
    let image = scratch.root_disk()?;
    let disk = image.display().to_string();
    let out = Boot::new(
        "head -c 8388608 /dev/urandom > /data/blob && sha256sum /data/blob | tee /data/blob.sha && \
         sync && poweroff -f",
    )
    .kernel_args(ROOT)
    .args(&["--disk", &disk])
    .run()?;
    check(out.status == Some(0), "the guest should power off", &out)?;
    check(
        out.stdout
            .contains("init: userspace started (root /dev/vda)"),
        "init should run from the root disk",
        &out,
    )?;
    let written = printed_sha(&out.stdout, "/data/blob").ok_or("the guest printed no checksum")?;
    fsck_clean(&image, &out)?;
    check(
        sha_in_image(&image, "/data/blob", &scratch)? == written,
        "the image should hold the 8 MiB the guest wrote",
        &out,
    )?;

    // Boot again from the same image: the data is there, and the job's status is ferry's.
    let out = Boot::new("sha256sum -c /data/blob.sha && exit 3")
        .kernel_args(ROOT)
        .args(&["--disk", &disk])
        .run()?;
    check(
        out.stdout.contains("/data/blob: OK"),
        "the second boot should read back the same 8 MiB",
        &out,
    )?;
    check(
        out.status == Some(3),
        "the job's status 3 should be ferry's",
        &out,
    )?;
    fsck_clean(&image, &out)
}

/// Two disks: vda and vdb in command-line order with their serials, and
/// the second one read-only: the guest sees it so, its writes fail (even
/// after `blockdev --setrw`), it reads the image's bytes, and the host
/// file stays the same byte for byte.
#[guest_test]
fn two_disks_in_order_with_serials_the_second_read_only() -> TestResult {
    let scratch = Scratch::new("twodisks")?;
    let first = scratch.raw_disk("a.img", 8 << 20, 1)?;
    let second = scratch.raw_disk("b.img", 4 << 20, 2)?;
    let before = std::fs::read(&second).map_err(|e| e.to_string())?;
    let a = format!("{},id=first-disk", first.display());
    let b = format!("{},ro,id=second-disk", second.display());
    let out = Boot::new(
        "for d in vda vdb; do echo $d serial=$(cat /sys/block/$d/serial) sectors=$(cat /sys/block/$d/size) ro=$(cat /sys/block/$d/ro); done; \
         dd if=/dev/zero of=/dev/vdb bs=4096 count=1 oflag=direct conv=notrunc; echo dd=$?; \
         blockdev --setrw /dev/vdb; dd if=/dev/zero of=/dev/vdb bs=4096 count=1 oflag=direct conv=notrunc; echo dd2=$?; \
         head -c 4194304 /dev/vdb | sha256sum",
    )
    .args(&["--disk", &a, "--disk", &b])
    .run()?;
    check(out.status == Some(0), "the guest should run", &out)?;
    check(
        out.stdout
            .contains("vda serial=first-disk sectors=16384 ro=0")
            && out
                .stdout
                .contains("vdb serial=second-disk sectors=8192 ro=1"),
        "vda and vdb should be the disks in command-line order, with their serials, vdb read-only",
        &out,
    )?;
    check(
        !out.stdout.contains("dd=0") && !out.stdout.contains("dd2=0"),
        "writes to the read-only disk should fail in the guest",
        &out,
    )?;
    let after = std::fs::read(&second).map_err(|e| e.to_string())?;
    check(
        before == after,
        "the read-only disk's host file should be unchanged, byte for byte",
        &out,
    )?;
    check(
        out.stdout.contains(&hex(&Sha256::digest(&before))),
        "the guest should read the read-only image's bytes",
        &out,
    )
}

#[guest_test]
fn timeout_stops_the_vm_and_synced_data_stays() -> TestResult {
    const LIMIT: u64 = 20;
    let scratch = Scratch::new("timeout")?;
    let image = scratch.root_disk()?;
    let disk = image.display().to_string();
    let out = Boot::new(
        "head -c 4194304 /dev/urandom > /data/t && sha256sum /data/t && sync && echo synced-$((6*7)) && sleep 100000",
    )
    .kernel_args(ROOT)
    .args(&["--disk", &disk, "--timeout", &LIMIT.to_string()])
    .run()?;
    if !out.stdout.contains("synced-42") {
        return Err(TestError::Hazard(format!(
            "the guest did not reach its job within --timeout {LIMIT}\n{}",
            out.describe()
        )));
    }
    check(
        out.status == Some(ferry::exit_status::TIMEOUT),
        "--timeout should end ferry with 124",
        &out,
    )?;
    check(
        out.elapsed < Duration::from_secs(LIMIT + 2),
        &format!("ferry should end within {} s", LIMIT + 2),
        &out,
    )?;
    let written = printed_sha(&out.stdout, "/data/t").ok_or("the guest printed no checksum")?;
    synced_data_stays(&image, "/data/t", &written, &scratch, &out)
}

/// After a stop without unmounting: the journal replays cleanly and the
/// file the guest synced is intact.
fn synced_data_stays(
    image: &Path,
    file: &str,
    written: &str,
    scratch: &Scratch,
    out: &Outcome,
) -> TestResult {
    let (code, report) = fsck(image, true);
    check(
        code <= 1,
        &format!("e2fsck should only replay the journal ({code})\n{report}"),
        out,
    )?;
    fsck_clean(image, out)?;
    check(
        sha_in_image(image, file, scratch)? == written,
        &format!("{file} should hold what the guest synced"),
        out,
    )
}

#[guest_test]
fn sigterm_shuts_the_guest_down_cleanly() -> TestResult {
    let scratch = Scratch::new("sigterm")?;
    let image = scratch.root_disk()?;
    let log = scratch.path("console.log");
    let mut child = Boot::new("echo written > /data/w; echo running-$((6*7)); sleep 100000")
        .kernel_args(ROOT)
        .args(&[
            "--disk",
            &image.display().to_string(),
            "--console-log",
            &log.display().to_string(),
            "--shutdown-grace",
            "20",
        ])
        .spawn()?;
    let running = wait_for_text(&log, "running-42", WATCHDOG);
    if !running {
        let _ = child.kill();
        let _ = child.wait();
        return Err(TestError::Hazard(format!(
            "the guest never ran its job\n{}",
            log_tail(&log)
        )));
    }
    let signalled = Instant::now();
    // SAFETY: our own child's pid, not yet reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = signalled.elapsed();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    check_log(
        status.and_then(|s| s.code()) == Some(128 + libc::SIGTERM),
        &format!("ferry should end with 143 after SIGTERM; it ended {status:?}"),
        &log,
    )?;
    check_log(
        text.contains("init: shutdown requested") && text.contains("reboot: Power down"),
        "the guest should have shut down on Ctrl-Alt-Del",
        &log,
    )?;
    check_log(
        took < Duration::from_secs(20),
        &format!(
            "the guest should be down before the grace period ends (took {:.1} s)",
            took.as_secs_f64()
        ),
        &log,
    )?;
    let (code, report) = fsck(&image, false);
    check_log(
        code == 0,
        &format!("the root disk should be clean after the shutdown ({code})\n{report}"),
        &log,
    )
}

#[guest_test]
fn sigkill_keeps_the_console_log_and_synced_data() -> TestResult {
    let scratch = Scratch::new("sigkill")?;
    let image = scratch.root_disk()?;
    let log = scratch.path("console.log");
    let mut child = Boot::new(
        "head -c 4194304 /dev/urandom > /data/k && sha256sum /data/k && sync && echo synced-$((6*7)) && sleep 100000",
    )
    .kernel_args(ROOT)
    .args(&[
        "--disk",
        &image.display().to_string(),
        "--console-log",
        &log.display().to_string(),
    ])
    .spawn()?;
    let synced = wait_for_text(&log, "synced-42", WATCHDOG);
    // SAFETY: our own child's pid, not yet reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    let _ = child.wait();
    if !synced {
        return Err(TestError::Hazard(format!(
            "the guest never synced\n{}",
            log_tail(&log)
        )));
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    check_log(
        text.contains("Linux version") && text.contains("init: userspace started"),
        "the console log should hold the whole console, kernel log included",
        &log,
    )?;
    let written = printed_sha(&text, "/data/k").ok_or("the guest printed no checksum")?;
    let out = Outcome {
        status: None,
        stdout: text,
        stderr: String::new(),
        timed_out: false,
        elapsed: Duration::ZERO,
    };
    synced_data_stays(&image, "/data/k", &written, &scratch, &out)
}

#[guest_test]
fn halted_guest_ends_the_vm() -> TestResult {
    let out = Boot::new("halt -f; sleep 100000").run()?;
    check(
        out.stdout.contains("System halted"),
        "the guest should halt",
        &out,
    )?;
    check(
        out.status == Some(0) && out.stderr.contains("the guest halted"),
        "a halted guest should end ferry with 0",
        &out,
    )
}
