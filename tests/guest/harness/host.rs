// SPDX-License-Identifier: Apache-2.0
//! The machine the tests run on: whether its /dev/kvm can boot the test
//! guest, and what the network tests need of it.

use std::path::Path;
use std::process::{Command, Stdio};

/// Set (to anything) in the environment of the run inside kvm-host.
pub const INSIDE_ENV: &str = "FERRY_GUEST_TESTS_INSIDE";

/// Where the tests run.
#[derive(Debug)]
pub enum Where {
    /// Right here: this machine's /dev/kvm boots a stock guest, or this is
    /// the run inside kvm-host.
    Here,
    /// Inside kvm-host, because of `why`.
    InKvmHost {
        /// Why /dev/kvm here cannot boot the test guest.
        why: String,
    },
}

/// Where the tests run, from here.
pub fn where_to_run() -> Where {
    if inside_kvm_host() {
        return Where::Here;
    }
    match kvm_unusable_here() {
        None => Where::Here,
        Some(why) => Where::InKvmHost { why },
    }
}

/// Whether this is the run inside kvm-host.
pub fn inside_kvm_host() -> bool {
    std::env::var_os(INSIDE_ENV).is_some()
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
pub fn prepare() -> Result<(), String> {
    if ferry_net_passt::launcher::resolve(Path::new("passt")).is_none() {
        return Err(
            "passt is not installed (apt-get install passt): the network tests need it".into(),
        );
    }
    if inside_kvm_host() {
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
