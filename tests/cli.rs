// SPDX-License-Identifier: Apache-2.0
//! Command-line and bad-input tests: each mistake gives a one-line error
//! and the documented exit status, before or without any guest running.
//! They need no usable KVM, so they run on every host.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{api_call as api, guest_file, readme, run, wait_for, Outcome, FERRY};

const TIMEOUT: Duration = Duration::from_secs(30);
use ferry::exit_status::{BAD_CONFIG, KVM_UNAVAILABLE};

fn ferry(args: &[&str]) -> Outcome {
    let mut cmd = Command::new(FERRY);
    cmd.args(args);
    run(cmd, TIMEOUT)
}

/// A scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferry-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Asserts a clean failure: the status, one error line naming `needle`, no panic.
fn assert_error(out: &Outcome, status: i32, needle: &str) {
    assert_eq!(out.status, Some(status), "{}", out.describe());
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("ferry: error:"))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "expected one error line: {}",
        out.describe()
    );
    assert!(
        errors[0].contains(needle),
        "error should mention {needle:?}: {}",
        out.describe()
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.describe());
}

/// Asserts a command-line error as the parser reports it: status 2, the
/// error and the valid values named, no panic.
fn assert_usage_error(out: &Outcome, needle: &str) {
    assert_eq!(out.status, Some(BAD_CONFIG), "{}", out.describe());
    assert!(
        out.stderr.contains(&format!("error: {needle}")),
        "error should say {needle:?}: {}",
        out.describe()
    );
    assert!(out.stderr.contains("possible values"), "{}", out.describe());
    assert!(!out.stderr.contains("panicked"), "{}", out.describe());
}

fn kernel() -> String {
    guest_file("vmlinuz").unwrap().display().to_string()
}

/// The `--option` words of `text`.
fn long_options(text: &str) -> std::collections::BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(str::to_string)
        .collect()
}

#[test]
fn the_readme_synopsis_lists_every_option_of_help() {
    let text = readme::read().unwrap();
    let synopsis = readme::blocks(&text)
        .into_iter()
        .find(|(_, script)| script.starts_with("ferry --kernel PATH"))
        .expect("README.md has a synopsis")
        .1;
    let help = ferry(&["--help"]).stdout;
    let usage: String = help
        .lines()
        .filter(|l| {
            l.trim_start().starts_with("--")
                || l.trim_start().starts_with("-h,")
                || l.trim_start().starts_with("-V,")
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut in_help = long_options(&usage);
    in_help.remove("--help");
    in_help.remove("--version");
    assert_eq!(
        long_options(&synopsis),
        in_help,
        "README.md's synopsis and --help differ"
    );
}

/// `--version` as Kata's Go driver reads it (`fc.go: getVersionNumber`,
/// `parseVersion`, `checkVersion`): the first line, split on spaces, the
/// second field, a leading `v` trimmed, parsed as a strict semantic version
/// (`MAJOR.MINOR.PATCH[-pre][+build]`), not below 0.21.1.
#[test]
fn version_passes_kata_go_drivers_check() {
    let out = ferry(&["--version"]);
    assert_eq!(out.status, Some(0), "{}", out.describe());
    let first = out.stdout.lines().next().unwrap_or("");
    let fields: Vec<&str> = first.split(' ').collect();
    assert!(fields.len() > 1, "no second field in {first:?}");
    let version = fields[1].trim().trim_start_matches('v');
    let core = version.split(['-', '+']).next().unwrap();
    let parts: Vec<u64> = core
        .split('.')
        .map(|p| {
            assert!(
                !p.is_empty()
                    && p.bytes().all(|b| b.is_ascii_digit())
                    && (p == "0" || !p.starts_with('0')),
                "{version:?} is not strict semver"
            );
            p.parse().unwrap()
        })
        .collect();
    assert_eq!(parts.len(), 3, "{version:?} is not MAJOR.MINOR.PATCH");
    assert!(
        (parts[0], parts[1], parts[2]) >= (0, 21, 1),
        "Kata refuses {version} (below 0.21.1)"
    );
    assert_eq!(version, ferry::cli::FIRECRACKER_API_VERSION);
    assert!(
        first.contains(&format!("ferry {}", env!("CARGO_PKG_VERSION"))),
        "the first line should still say ferry's own version: {first:?}"
    );
    // -V stays ferry's own version.
    let short = ferry(&["-V"]);
    assert_eq!(
        short.stdout.trim(),
        format!("ferry {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_documents_every_option_and_the_exit_statuses() {
    let out = ferry(&["--help"]);
    assert_eq!(out.status, Some(0));
    for option in [
        "--kernel",
        "--initrd",
        "--cmdline",
        "--cpus",
        "--memory",
        "--console",
        "--log-level",
        "--disk",
        "--timeout",
        "--console-log",
        "--shutdown-grace",
        "--virtio",
    ] {
        assert!(out.stdout.contains(option), "--help lacks {option}");
    }
    assert!(out.stdout.contains("Exit status:"));
}

/// The statuses in the first column of the README's "Exit status" table.
fn readme_exit_statuses() -> Vec<String> {
    let text = readme::read().unwrap();
    let section = text
        .split("\n## Exit status\n")
        .nth(1)
        .expect("README.md has an Exit status section");
    section
        .lines()
        .take_while(|l| !l.starts_with("## "))
        .filter_map(|l| l.strip_prefix("| "))
        .filter_map(|l| l.split(" |").next())
        .filter(|status| !status.starts_with("status") && !status.starts_with("---"))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_exit_statuses_are_the_same_in_ferry_the_help_and_the_readme() {
    let ours: Vec<String> = ferry::exit_status::TABLE
        .iter()
        .map(|(status, _)| status.to_string())
        .collect();
    let mut readme = readme_exit_statuses();
    let mut sorted = ours.clone();
    readme.sort();
    sorted.sort();
    assert_eq!(
        readme, sorted,
        "README.md's exit status table differs from ferry's"
    );
    let help = ferry(&["--help"]).stdout;
    for (status, meaning) in ferry::exit_status::TABLE {
        assert!(
            help.contains(&format!("  {status:<8} {meaning}")),
            "--help lacks status {status}"
        );
    }
}

#[test]
fn the_default_command_line_is_ferrys_to_print() {
    let out = ferry(&["--print-cmdline"]);
    assert_eq!(out.status, Some(0), "{}", out.describe());
    assert_eq!(out.stdout.trim_end(), ferry::cli::DEFAULT_CMDLINE);
    let out = ferry(&["--print-cmdline", "--virtio", "mmio"]);
    assert_eq!(
        out.stdout.trim_end(),
        format!("{} pci=off", ferry::cli::DEFAULT_CMDLINE)
    );
    let out = ferry(&["--print-cmdline", "--cmdline", "console=ttyS0 quiet"]);
    assert_eq!(out.stdout.trim_end(), "console=ttyS0 quiet");
}

#[test]
fn every_readme_example_is_tested_or_says_why_not() {
    let text = readme::read().unwrap();
    let blocks = readme::blocks(&text);
    assert!(blocks.len() >= 8, "found only {} code blocks", blocks.len());
    for (marker, script) in &blocks {
        let marked = marker
            .is_some_and(|m| m.starts_with("<!-- test: ") || m.starts_with("<!-- untested: "));
        assert!(
            marked,
            "README.md's block {script:?} needs a <!-- test: NAME --> line (and a test that runs it) \
             or <!-- untested: WHY -->"
        );
    }
    // Each tested block's name is run by a test in this tree.
    fn sources(dir: &std::path::Path, all: &mut String) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                sources(&path, all);
            } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("cli.rs") {
                all.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut tests = String::new();
    sources(&common::repo_root().join("tests"), &mut tests);
    for (marker, _) in &blocks {
        if let Some(name) = marker
            .and_then(|m| m.strip_prefix("<!-- test: "))
            .and_then(|m| m.strip_suffix(" -->"))
        {
            assert!(
                tests.contains(&format!("\"{name}\"")),
                "no test runs README.md's block {name:?}"
            );
        }
    }
}

#[test]
fn missing_kernel_is_a_clear_error() {
    let out = ferry(&["--kernel", "/nonexistent/vmlinuz"]);
    assert_error(
        &out,
        BAD_CONFIG,
        "cannot open the kernel /nonexistent/vmlinuz",
    );
}

#[test]
fn a_directory_is_not_a_kernel() {
    let out = ferry(&["--kernel", "/"]);
    assert_error(&out, BAD_CONFIG, "not a regular file");
}

#[test]
fn a_file_that_is_not_a_kernel_is_refused() {
    let dir = scratch("notakernel");
    let path = dir.join("vmlinuz");
    std::fs::write(&path, vec![0x42u8; 64 * 1024]).unwrap();
    let out = ferry(&["--kernel", path.to_str().unwrap()]);
    assert_error(&out, BAD_CONFIG, "not a Linux kernel");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn an_initrd_too_large_for_memory_is_refused() {
    let dir = scratch("biginitrd");
    let path = dir.join("initrd");
    // Sparse: 64 MiB that take no disk space, for a 32 MiB guest.
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(64 << 20).unwrap();
    let out = ferry(&[
        "--kernel",
        &kernel(),
        "--initrd",
        path.to_str().unwrap(),
        "--memory",
        "32",
    ]);
    assert_error(&out, BAD_CONFIG, "does not fit in guest memory");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn zero_or_too_many_vcpus_are_refused() {
    let k = kernel();
    assert_error(
        &ferry(&["--kernel", &k, "--cpus", "0"]),
        BAD_CONFIG,
        "--cpus 0",
    );
    assert_error(
        &ferry(&["--kernel", &k, "--cpus", "255"]),
        BAD_CONFIG,
        "--cpus 255",
    );
}

#[test]
fn absurd_memory_sizes_are_refused() {
    let k = kernel();
    assert_error(
        &ferry(&["--kernel", &k, "--memory", "0"]),
        BAD_CONFIG,
        "--memory 0",
    );
    assert_error(
        &ferry(&["--kernel", &k, "--memory", "1"]),
        BAD_CONFIG,
        "--memory 1",
    );
    assert_error(
        &ferry(&["--kernel", &k, "--memory", "1000000000"]),
        BAD_CONFIG,
        "--memory 1000000000",
    );
    // Not a number: clap's own usage error, status 2 as well.
    let out = ferry(&["--kernel", &k, "--memory", "lots"]);
    assert_eq!(out.status, Some(BAD_CONFIG));
    assert!(out.stderr.contains("--memory"), "{}", out.describe());
}

#[test]
fn a_bad_console_spec_is_refused() {
    let out = ferry(&["--kernel", &kernel(), "--console", "tty"]);
    assert_error(&out, BAD_CONFIG, "--console tty");
}

#[test]
fn an_overlong_command_line_is_refused() {
    let long = "x".repeat(5000);
    let out = ferry(&["--kernel", &kernel(), "--cmdline", &long]);
    assert_error(&out, BAD_CONFIG, "command line");
}

#[test]
fn a_pvm_dev_kvm_is_named_as_such() {
    let out = ferry(&[
        "--kernel",
        &kernel(),
        "--console",
        "none",
        "--cmdline",
        "panic=-1",
    ]);
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        assert_error(&out, KVM_UNAVAILABLE, "PVM");
    } else {
        assert!(!out.stderr.contains("PVM"), "{}", out.describe());
    }
}

/// Whether this test runs as root (needed to take /dev/kvm away or drop to nobody).
fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() == 0 }
}

#[test]
fn no_permission_on_dev_kvm_is_a_clear_error() {
    if !is_root() {
        // As an ordinary user, /dev/kvm's own permissions decide; check the message if they deny.
        let out = ferry(&["--kernel", &kernel(), "--console", "none"]);
        if out.stderr.contains("permission") {
            assert_error(&out, KVM_UNAVAILABLE, "no permission to open /dev/kvm");
        }
        return;
    }
    let dir = scratch("perm");
    // A copy of the kernel that nobody may read too.
    let k = dir.join("vmlinuz");
    std::fs::copy(kernel(), &k).unwrap();
    Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&dir)
        .status()
        .unwrap();
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        FERRY,
        "--kernel",
    ])
    .arg(&k)
    .args(["--console", "none"]);
    let out = run(cmd, TIMEOUT);
    std::fs::remove_dir_all(dir).unwrap();
    let mode = std::fs::metadata("/dev/kvm")
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
    if mode.map(|m| m & 0o006 == 0).unwrap_or(false) {
        assert_error(&out, KVM_UNAVAILABLE, "no permission to open /dev/kvm");
    } else {
        assert!(!out.stderr.contains("no permission"), "{}", out.describe());
    }
}

#[test]
fn a_missing_dev_kvm_is_a_clear_error() {
    if !is_root() {
        eprintln!("a_missing_dev_kvm_is_a_clear_error: needs root to hide /dev/kvm; checked in CI");
        return;
    }
    // A private mount namespace with an empty /dev: no /dev/kvm there.
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "sh",
        "-c",
        "mount -t tmpfs none /dev && exec \"$0\" \"$@\"",
        FERRY,
        "--kernel",
    ])
    .arg(kernel())
    .args(["--console", "none"]);
    let out = run(cmd, TIMEOUT);
    assert_error(&out, KVM_UNAVAILABLE, "/dev/kvm does not exist");
}

#[test]
fn a_missing_passt_is_named_with_its_package() {
    let out = ferry(&["--kernel", &kernel(), "--passt", "/nonexistent/passt"]);
    assert_error(&out, BAD_CONFIG, "apt-get install passt");
}

#[test]
fn a_tap_that_does_not_exist_or_is_no_tap_is_a_configuration_error() {
    let k = kernel();
    assert_error(
        &ferry(&["--kernel", &k, "--net", "tap:nosuchtap"]),
        BAD_CONFIG,
        "no TAP device nosuchtap (ferry opens an existing TAP",
    );
    assert_error(
        &ferry(&["--kernel", &k, "--net", "tap:lo"]),
        BAD_CONFIG,
        "lo is a network interface but no TAP device",
    );
}

#[test]
fn bad_network_options_are_refused() {
    let k = kernel();
    let out = ferry(&["--kernel", &k, "--net", "tap"]);
    assert_eq!(out.status, Some(BAD_CONFIG), "{}", out.describe());
    assert!(
        out.stderr.contains(
            "error: invalid value 'tap' for '--net <passt|tap:NAME|none>': expected passt, tap:NAME or none"
        ),
        "{}",
        out.describe()
    );
    assert_error(
        &ferry(&["--kernel", &k, "--mac", "01:00:00:00:00:01"]),
        BAD_CONFIG,
        "--mac",
    );
    assert_error(
        &ferry(&["--kernel", &k, "--publish", "80"]),
        BAD_CONFIG,
        "--publish 80",
    );
}

#[test]
fn an_unknown_virtio_transport_is_refused() {
    assert_usage_error(
        &ferry(&["--kernel", &kernel(), "--net", "none", "--virtio", "ccw"]),
        "invalid value 'ccw' for '--virtio <pci|mmio>'",
    );
}

#[test]
fn malformed_disk_options_are_refused() {
    let k = kernel();
    for (spec, needle) in [
        ("img,rw", "--disk img,rw"),
        (",ro", "--disk ,ro"),
        ("img,id=way-too-long-for-a-serial", "serial"),
    ] {
        let out = ferry(&["--kernel", &k, "--net", "none", "--disk", spec]);
        assert_error(&out, BAD_CONFIG, needle);
    }
    let out = ferry(&[
        "--kernel",
        &k,
        "--net",
        "none",
        "--disk",
        "/nonexistent/disk.img",
    ]);
    assert_error(
        &out,
        BAD_CONFIG,
        "cannot open the disk /nonexistent/disk.img",
    );
    let out = ferry(&["--kernel", &k, "--net", "none", "--timeout=-3"]);
    assert_error(&out, BAD_CONFIG, "--timeout -3");
}

#[test]
fn more_devices_than_the_transport_holds_are_refused() {
    let dir = scratch("many");
    let image = dir.join("disk.img");
    std::fs::write(&image, vec![0u8; 4096]).unwrap();
    let spec = format!("{},ro", image.display());
    let k = kernel();
    let mut args = vec!["--kernel", &k, "--net", "none"];
    for _ in 0..32 {
        args.extend(["--disk", &spec]);
    }
    assert_error(&ferry(&args), BAD_CONFIG, "32 virtio devices");
    args.extend(["--virtio", "mmio"]);
    assert_error(&ferry(&args), BAD_CONFIG, "--virtio mmio has room for 19");
}

#[test]
fn a_disk_in_use_is_refused_unless_both_share_it_read_only() {
    use std::os::fd::AsRawFd;
    let dir = scratch("locked");
    let image = dir.join("disk.img");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let path = image.display().to_string();
    // Another VM's lock, as ferry takes it: exclusive for a writer.
    let holder = std::fs::File::open(&image).unwrap();
    // SAFETY: flock on a descriptor this test owns.
    let locked = unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(locked, 0);
    for spec in [path.clone(), format!("{path},ro")] {
        let out = ferry(&["--kernel", &kernel(), "--net", "none", "--disk", &spec]);
        assert_error(&out, BAD_CONFIG, "in use by another process");
    }
    // A reader's shared lock: another reader gets past the disk (to KVM or
    // the guest), a writer does not.
    // SAFETY: as above.
    unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    let out = ferry(&["--kernel", &kernel(), "--net", "none", "--disk", &path]);
    assert_error(&out, BAD_CONFIG, "in use by another process");
    let out = ferry(&[
        "--kernel",
        &kernel(),
        "--net",
        "none",
        "--disk",
        &format!("{path},ro"),
        "--timeout",
        "0",
    ]);
    assert!(
        !out.stderr.contains("in use"),
        "read-only users share an image: {}",
        out.describe()
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_api_answers_before_boot_and_sigterm_ends_ferry_and_its_socket() {
    let dir = scratch("api");
    let sock = dir.join("api.sock");
    let mut child = Command::new(FERRY)
        .arg("--api-sock")
        .arg(&sock)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&sock, TIMEOUT).unwrap();
    let (status, body) = api(&sock, "GET", "/", None);
    assert_eq!(status, 200, "{body}");
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["state"], "Not started");
    assert_eq!(info["id"], "anonymous-instance");
    // What ferry cannot honour is refused, never ignored.
    let (status, body) = api(
        &sock,
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 2, "mem_size_mib": 256, "smt": true}"#),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("smt"), "{body}");
    let (status, body) = api(
        &sock,
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 0, "mem_size_mib": 256}"#),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("vcpu_count 0"), "{body}");
    let (status, body) = api(
        &sock,
        "PUT",
        "/boot-source",
        Some(r#"{"kernel_image_path": "/nonexistent/vmlinuz"}"#),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("/nonexistent/vmlinuz"), "{body}");
    let (status, body) = api(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("no kernel to boot"), "{body}");
    let (status, body) = api(
        &sock,
        "PUT",
        "/network-interfaces/eth0",
        Some(r#"{"iface_id": "eth0", "host_dev_name": "nosuchtap"}"#),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("no TAP device nosuchtap"), "{body}");
    let (status, _) = api(&sock, "GET", "/nowhere", None);
    assert_eq!(status, 404);
    let (status, _) = api(&sock, "DELETE", "/", None);
    assert_eq!(status, 405);
    // Still not started, and still serving.
    let (_, body) = api(&sock, "GET", "/machine-config", None);
    assert!(body.contains(r#""vcpu_count":1"#), "{body}");
    // SAFETY: our own child's pid, not yet reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    assert!(!sock.exists(), "the API socket should be removed at exit");
}

#[test]
fn an_api_socket_path_in_use_is_refused_and_left_alone() {
    let dir = scratch("api-in-use");
    let sock = dir.join("api.sock");
    std::fs::write(&sock, "not a socket").unwrap();
    let out = ferry(&["--api-sock", sock.to_str().unwrap()]);
    assert_error(&out, BAD_CONFIG, "already in use");
    assert_eq!(std::fs::read_to_string(&sock).unwrap(), "not a socket");
}

#[test]
fn bad_configuration_files_are_refused_with_the_reason() {
    let dir = scratch("config-file");
    let file = dir.join("vm.json");
    let path = file.to_str().unwrap();
    let k = kernel();
    for (text, needle) in [
        ("{", "invalid VM configuration"),
        (
            r#"{"boot-source": {"kernel": "/k"}}"#,
            "unknown field `kernel`",
        ),
        (
            r#"{"balloon": {"amount_mib": 1}}"#,
            "not supported by ferry: balloon",
        ),
        (
            r#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": 256, "cpu_template": "T2"}}"#,
            "cpu_template",
        ),
        ("{}", "no kernel to boot"),
        (
            &format!(
                r#"{{"boot-source": {{"kernel_image_path": "{k}"}}, "vsock": {{"guest_cid": 2, "uds_path": "/tmp/v.sock"}}}}"#
            ),
            "guest_cid 2",
        ),
        (
            &format!(
                r#"{{"boot-source": {{"kernel_image_path": "{k}"}}, "network-interfaces": [{{"iface_id": "eth0", "host_dev_name": "nosuchtap"}}]}}"#
            ),
            "no TAP device nosuchtap",
        ),
    ] {
        std::fs::write(&file, text).unwrap();
        assert_error(&ferry(&["--config-file", path]), BAD_CONFIG, needle);
    }
    assert_error(
        &ferry(&["--config-file", "/nonexistent/vm.json"]),
        BAD_CONFIG,
        "cannot read the configuration file",
    );
    let out = ferry(&["--config-file", path, "--kernel", &k]);
    assert_eq!(out.status, Some(BAD_CONFIG), "{}", out.describe());
    assert!(
        out.stderr.contains("cannot be used with"),
        "{}",
        out.describe()
    );
}
