// SPDX-License-Identifier: Apache-2.0
//! Guest tests: boot the real test guest (resources/out/) under KVM and
//! judge ferry by its exit status, its console and its log.
//!
//! Where /dev/kvm can run a stock guest, the tests run right here. Where it
//! cannot (a PVM /dev/kvm, as on the project's build machines), this binary
//! runs itself once inside `../shared/kvm-host/run-in-kvm-host`, whose
//! /dev/kvm is ordinary KVM, and reports that run. Any other case fails
//! with a message: the guest tests never skip.
//!
//! Each boot has a watchdog. Nested KVM under emulation now and then
//! freezes or resets a guest, so a run that stalls, or resets when the test
//! did not ask for it, is retried once and logged as retried; a second
//! failure is a failure.

#[path = "../common/mod.rs"]
mod common;
mod disk;
mod kvm_host;
mod net;
mod readme;
mod relay;
mod tests;
mod transport;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{guest_file, Outcome, FERRY};

/// Set (to anything) in the environment of the run inside kvm-host.
const INSIDE_ENV: &str = "FERRY_GUEST_TESTS_INSIDE";

/// How long one boot of the test guest may take before it counts as
/// stalled: 4-5 times the slowest test's boot and transfer inside kvm-host.
pub const WATCHDOG: Duration = Duration::from_secs(90);

pub use ferry::exit_status::GUEST_RESET;

/// The default kernel command line, ferry's own.
pub const BASE_CMDLINE: &str = ferry::cli::DEFAULT_CMDLINE;

/// Run before each guest command: from then on only emergencies (a panic)
/// reach the console, so that a kernel message cannot land in the middle of
/// a line the test reads (the serial line carries both, byte by byte).
const QUIET_CONSOLE: &str = "dmesg -n 1; ";

/// One guest boot: ferry's arguments, the command the guest's init runs.
#[derive(Debug)]
pub struct Boot {
    args: Vec<String>,
    kernel_args: String,
    guest_cmd: String,
    timeout: Duration,
    expect_reset: bool,
    as_nobody: bool,
    env: Vec<(String, String)>,
}

impl Boot {
    /// A boot of the test guest that runs `guest_cmd` (a shell command) and
    /// ends the VM with its status.
    pub fn new(guest_cmd: &str) -> Self {
        Self {
            args: Vec::new(),
            kernel_args: String::new(),
            guest_cmd: guest_cmd.to_string(),
            timeout: WATCHDOG,
            expect_reset: false,
            as_nobody: false,
            env: Vec::new(),
        }
    }

    /// Runs ferry as user and group nobody (65534), with no other group:
    /// its only privilege is /dev/kvm's permissions.
    pub fn as_nobody(mut self) -> Self {
        self.as_nobody = true;
        self
    }

    /// Starts ferry and hands back the child, output discarded.
    pub fn spawn(&self) -> Result<Child, String> {
        self.command()?
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start ferry: {e}"))
    }

    /// Adds ferry arguments.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Sets an environment variable for ferry (and so for its passt).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Adds kernel parameters (before the guest command).
    pub fn kernel_args(mut self, args: &str) -> Self {
        self.kernel_args.push(' ');
        self.kernel_args.push_str(args);
        self
    }

    /// The test expects the guest to reset (no retry on status 80).
    pub fn expect_reset(mut self) -> Self {
        self.expect_reset = true;
        self
    }

    fn command(&self) -> Result<Command, String> {
        if self.guest_cmd.contains('"') {
            return Err(
                "a guest command cannot hold a double quote (the kernel command line quotes it)"
                    .into(),
            );
        }
        let mut cmd = if self.as_nobody {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", FERRY]);
            c
        } else {
            Command::new(FERRY)
        };
        cmd.arg("--kernel")
            .arg(guest_file("vmlinuz")?)
            .arg("--initrd")
            .arg(guest_file("initramfs.cpio.gz")?)
            .arg("--log-level")
            .arg(std::env::var("FERRY_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .arg("--cmdline")
            // One quoted argument: the kernel hands init at most 32 words.
            .arg(format!(
                "{BASE_CMDLINE}{} -- \"{QUIET_CONSOLE}{}\"",
                self.kernel_args, self.guest_cmd
            ))
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        Ok(cmd)
    }

    /// Boots once. A run that stalled, or reset when the test did not ask
    /// for it, is an error marked [`FLAKE`]: the runner retries the whole test once.
    pub fn run(&self) -> Result<Outcome, String> {
        let out = common::run(self.command()?, self.timeout);
        if out.timed_out || (!self.expect_reset && out.status == Some(GUEST_RESET)) {
            let what = if out.timed_out {
                "stalled"
            } else {
                "reset unasked"
            };
            return Err(format!("{FLAKE}the guest {what}\n{}", out.describe()));
        }
        Ok(out)
    }
}

/// Marks an error as the nested-KVM hazard (a frozen or reset guest).
pub const FLAKE: &str = "FLAKE: ";

/// Fails with `out`'s account unless `cond` holds.
pub fn check(cond: bool, what: &str, out: &Outcome) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(format!("{what}\n{}", out.describe()))
    }
}

/// A guest test.
#[derive(Debug)]
pub struct Test {
    /// Its name.
    pub name: &'static str,
    /// Its body.
    pub run: fn() -> Result<(), String>,
}

/// Why KVM here cannot boot a stock guest, if it cannot.
fn kvm_unusable_here() -> Option<String> {
    if Path::new("/sys/module/kvm_pvm").exists() {
        return Some("/dev/kvm is PVM (kvm_pvm), which boots only PVM-built kernels".into());
    }
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => None,
        Err(e) => Some(format!("/dev/kvm cannot be opened: {e}")),
    }
}

/// Checks what the network tests need, and sets up what only the throwaway
/// kvm-host VM may have changed. Returns why the tests cannot run, if they cannot.
fn prepare_host() -> Result<(), String> {
    if ferry_net_passt::launcher::resolve(Path::new("passt")).is_none() {
        return Err(
            "passt is not installed (apt-get install passt): the network tests need it".into(),
        );
    }
    if std::env::var_os(INSIDE_ENV).is_some() {
        // passt (as nobody, or as the user running ferry) answers the guest's
        // pings with ICMP echo sockets, which ping_group_range must allow.
        // Only ever inside kvm-host: never on the host itself.
        let _ = std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647");
        // kvm-host's default gateway (192.0.2.254) is a route into a dummy
        // interface: nothing answers there. passt relays the guest's pings
        // as real ICMP, so give that address to kvm-host's loopback, as a
        // real router would answer.
        let _ = Command::new("ip")
            .args(["addr", "add", "192.0.2.254/32", "dev", "lo"])
            .stderr(Stdio::null())
            .status();
    }
    Ok(())
}

/// Runs the tests `filter` selects (see [`tests::selected`]); returns the exit status.
fn run_here(filter: &[String]) -> i32 {
    if let Err(why) = prepare_host() {
        println!("guest tests cannot run: {why}");
        println!("guest: 0 passed, 1 failed");
        return 1;
    }
    if std::env::var_os(INSIDE_ENV).is_some() {
        // The runner outside kvm-host tells a hung kvm-host by its silence.
        std::thread::spawn(|| loop {
            std::thread::sleep(kvm_host::HEARTBEAT_EVERY);
            println!("{}", kvm_host::HEARTBEAT);
        });
    }
    let selected = tests::selected(filter);
    println!("running {} guest tests", selected.len());
    let (mut passed, mut failed) = (0, Vec::new());
    for test in selected {
        let started = Instant::now();
        let mut result = (test.run)();
        if let Err(msg) = &result {
            if msg.starts_with(FLAKE) {
                println!(
                    "    RETRY {}: {} (a known hazard of nested KVM); retrying once",
                    test.name,
                    msg.lines().next().unwrap_or_default()
                );
                // The card's counters say whether the data path moved, and
                // the end of the console which hazard it was.
                let lines: Vec<&str> = msg.lines().collect();
                for line in lines.iter().filter(|l| l.contains("net0: tx ")) {
                    println!("    | {line}");
                }
                for line in &lines[lines.len().saturating_sub(6)..] {
                    println!("    | {line}");
                }
                result = (test.run)();
            }
        }
        match result {
            Ok(()) => {
                passed += 1;
                println!(
                    "test {} ... ok ({:.1} s)",
                    test.name,
                    started.elapsed().as_secs_f64()
                );
            }
            Err(msg) => {
                println!(
                    "test {} ... FAILED ({:.1} s)\n{msg}\n",
                    test.name,
                    started.elapsed().as_secs_f64()
                );
                failed.push(test.name);
            }
        }
    }
    if !failed.is_empty() {
        println!("failed guest tests: {}", failed.join(", "));
    }
    println!("guest: {passed} passed, {} failed", failed.len());
    i32::from(!failed.is_empty())
}

fn main() {
    // Started by ferry as the checksum test's passt.
    if let Some(record) = std::env::var_os(relay::RECORD_ENV) {
        let args: Vec<String> = std::env::args().skip(1).collect();
        std::process::exit(relay::run(&record, &args));
    }
    // cargo test passes its own flags; the rest are name filters.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let code = if std::env::var_os(INSIDE_ENV).is_some() {
        run_here(&filter)
    } else {
        match kvm_unusable_here() {
            None => run_here(&filter),
            Some(why) => kvm_host::run_tests(&why, &filter, INSIDE_ENV),
        }
    };
    std::process::exit(code);
}
