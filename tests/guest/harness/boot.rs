// SPDX-License-Identifier: Apache-2.0
//! One boot of the test guest, under its watchdog.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::built::kata_style_kernel;
use super::error::hazard_sign;
use super::{TestError, TestResult};
use crate::common::{self, guest_file, Outcome, FERRY};

/// How long one boot of the test guest may take before it counts as
/// stalled: 4-5 times the slowest test's boot and transfer inside kvm-host.
pub const WATCHDOG: Duration = Duration::from_secs(90);

pub use ferry::exit_status::GUEST_RESET;

/// The default kernel command line, ferry's own.
const BASE_CMDLINE: &str = ferry::cli::DEFAULT_CMDLINE;

/// Run before each guest command: from then on only emergencies (a panic)
/// reach the console, so that a kernel message cannot land in the middle of
/// a line the test reads (the serial line carries both, byte by byte).
const QUIET_CONSOLE: &str = "dmesg -n 1; ";

/// Which kernel a [`Boot`] runs; the initramfs is the test guest's either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GuestKernel {
    /// [`kata_style_kernel`]: no modules to load, so it reaches userspace
    /// about a third sooner under emulation than Debian's.
    KataStyle,
    /// Debian's cloud kernel (`resources/out/vmlinuz`), its drivers loaded
    /// as modules by the guest's init: the kernel users boot from a distro.
    Debian,
}

/// One guest boot: ferry's arguments, the command the guest's init runs.
#[derive(Debug)]
pub struct Boot {
    kernel: GuestKernel,
    args: Vec<String>,
    kernel_args: String,
    guest_cmd: String,
    timeout: Duration,
    expect_reset: bool,
    as_nobody: bool,
    netns: Option<String>,
    env: Vec<(String, String)>,
}

impl Boot {
    /// A boot of the test guest that runs `guest_cmd` (a shell command) and
    /// ends the VM with its status.
    pub fn new(guest_cmd: &str) -> Self {
        Self {
            kernel: GuestKernel::KataStyle,
            args: Vec::new(),
            kernel_args: String::new(),
            guest_cmd: guest_cmd.to_string(),
            timeout: WATCHDOG,
            expect_reset: false,
            as_nobody: false,
            netns: None,
            env: Vec::new(),
        }
    }

    /// Boots Debian's kernel instead of the Kata-style one.
    pub fn debian_kernel(mut self) -> Self {
        self.kernel = GuestKernel::Debian;
        self
    }

    /// Runs ferry as user and group nobody (65534), with no other group:
    /// its only privilege is /dev/kvm's permissions.
    // A builder step, not a conversion: "as" is who ferry runs as.
    #[allow(clippy::wrong_self_convention)]
    pub fn as_nobody(mut self) -> Self {
        self.as_nobody = true;
        self
    }

    /// Runs ferry in the network namespace `name` (`ip netns exec`).
    pub fn in_netns(mut self, name: &str) -> Self {
        self.netns = Some(name.to_string());
        self
    }

    /// Gives the boot `timeout` instead of [`WATCHDOG`] (a long transfer).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
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

    /// The test expects the guest to reset (status 80 is no hazard then).
    pub fn expect_reset(mut self) -> Self {
        self.expect_reset = true;
        self
    }

    /// Boots once and waits for ferry, killing it after the watchdog's
    /// time. A run that stalled, or reset when the test did not ask for
    /// it, is a [`TestError::Hazard`]: the runner retries the whole test once.
    pub fn run(&self) -> TestResult<Outcome> {
        let out = common::run(self.command()?, self.timeout);
        let hazard = if out.timed_out {
            "stalled"
        } else if !self.expect_reset && out.status == Some(GUEST_RESET) {
            "reset unasked"
        } else if let Some(why) = hazard_sign(&out.stdout) {
            why
        } else {
            return Ok(out);
        };
        Err(TestError::Hazard(format!(
            "the guest {hazard}\n{}",
            out.describe()
        )))
    }

    /// Starts ferry and hands back the child, output discarded: the test
    /// keeps the watch itself.
    pub fn spawn(&self) -> TestResult<Child> {
        self.command()?
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start ferry: {e}").into())
    }

    /// Starts ferry with its console and its log both going to `file`,
    /// which the test reads while the guest runs.
    pub fn spawn_logged(&self, file: &std::path::Path) -> TestResult<Child> {
        let out =
            std::fs::File::create(file).map_err(|e| format!("cannot create {file:?}: {e}"))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("cannot share {file:?}: {e}"))?;
        self.command()?
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start ferry: {e}").into())
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
        } else if let Some(netns) = &self.netns {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", netns, FERRY]);
            c
        } else {
            Command::new(FERRY)
        };
        let kernel = match self.kernel {
            GuestKernel::KataStyle => kata_style_kernel()?,
            GuestKernel::Debian => guest_file("vmlinuz")?,
        };
        cmd.arg("--kernel")
            .arg(kernel)
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
}
