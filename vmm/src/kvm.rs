// SPDX-License-Identifier: Apache-2.0
//! Opening /dev/kvm, with errors that say what to do, and spotting a PVM
//! /dev/kvm, which runs only guest kernels built for PVM.

use std::path::Path;
use std::sync::Arc;

use ferry_devices::pci::msix::MsiSink;
use kvm_bindings::kvm_msi;
use kvm_ioctls::{Kvm, VmFd};

/// Why KVM cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// /dev/kvm does not exist.
    #[error("/dev/kvm does not exist: this host has no KVM (load kvm_intel or kvm_amd, or enable virtualization)")]
    Missing,
    /// /dev/kvm exists but this user may not open it.
    #[error(
        "no permission to open /dev/kvm: add this user to the group that owns it (usually kvm)"
    )]
    Permission,
    /// Opening /dev/kvm failed otherwise.
    #[error("cannot open /dev/kvm")]
    Open(#[source] kvm_ioctls::Error),
    /// The kernel's KVM API version is not the stable one.
    #[error("KVM API version {0} is not supported (12 is)")]
    ApiVersion(i32),
    /// A capability ferry needs is missing.
    #[error("KVM lacks a capability ferry needs: {0:?}")]
    Capability(kvm_ioctls::Cap),
    /// /dev/kvm is PVM.
    #[error("/dev/kvm is provided by kvm_pvm (PVM), which runs only PVM-built guest kernels; a stock kernel fails with an emulation error. Use a host with kvm_intel or kvm_amd, or pass --allow-pvm for a PVM guest kernel")]
    Pvm,
}

/// Whether the host's /dev/kvm is PVM, judged from sysfs under `sys`.
pub fn is_pvm(sys: &Path) -> bool {
    sys.join("module/kvm_pvm").exists()
}

/// Opens /dev/kvm and checks what ferry needs; refuses PVM unless allowed.
pub fn open(allow_pvm: bool) -> Result<Kvm, Error> {
    let kvm = Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT | libc::ENODEV => Error::Missing,
        libc::EACCES | libc::EPERM => Error::Permission,
        _ => Error::Open(e),
    })?;
    if is_pvm(Path::new("/sys")) {
        if !allow_pvm {
            return Err(Error::Pvm);
        }
        log::warn!("/dev/kvm is PVM: only a PVM-built guest kernel will boot");
    }
    let version = kvm.get_api_version();
    if version != kvm_bindings::KVM_API_VERSION as i32 {
        return Err(Error::ApiVersion(version));
    }
    for cap in [
        kvm_ioctls::Cap::Irqchip,
        kvm_ioctls::Cap::Irqfd,
        kvm_ioctls::Cap::Ioeventfd,
        kvm_ioctls::Cap::UserMemory,
        kvm_ioctls::Cap::SetTssAddr,
        kvm_ioctls::Cap::Pit2,
        kvm_ioctls::Cap::ExtCpuid,
        kvm_ioctls::Cap::ImmediateExit,
        kvm_ioctls::Cap::SignalMsi,
    ] {
        if !kvm.check_extension(cap) {
            return Err(Error::Capability(cap));
        }
    }
    Ok(kvm)
}

/// Injects devices' MSI messages into the VM (`KVM_SIGNAL_MSI`).
#[derive(Debug)]
pub struct KvmMsi {
    vm: Arc<VmFd>,
}

impl KvmMsi {
    /// Messages go to `vm`.
    pub fn new(vm: Arc<VmFd>) -> Self {
        Self { vm }
    }
}

impl MsiSink for KvmMsi {
    fn send(&self, address: u64, data: u32) -> std::io::Result<()> {
        let msi = kvm_msi {
            address_lo: address as u32,
            address_hi: (address >> 32) as u32,
            data,
            ..Default::default()
        };
        self.vm
            .signal_msi(msi)
            .map(|_| ())
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvm_is_spotted_from_sysfs() {
        let dir = std::env::temp_dir().join(format!("ferry-pvm-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("module/kvm")).unwrap();
        assert!(!is_pvm(&dir));
        std::fs::create_dir_all(dir.join("module/kvm_pvm")).unwrap();
        assert!(is_pvm(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
