// SPDX-License-Identifier: Apache-2.0
//! The machine a VM is built from, as plain data: what the command line,
//! a configuration file or API calls describe, before any file is opened.
//! Both ways in produce this one description and go through one
//! controller ([`crate::vmm`]), so that a command-line boot and an API boot
//! of the same machine cannot differ.

use std::path::PathBuf;

/// Most vCPUs: APIC ids are one byte and 255 is the broadcast id.
pub const MAX_CPUS: u32 = 254;
/// Smallest guest memory ferry accepts, in MiB.
pub const MIN_MEMORY_MIB: u64 = 32;
/// The number of vCPUs when nobody says.
pub const DEFAULT_CPUS: u32 = 1;
/// Guest memory in MiB when nobody says.
pub const DEFAULT_MEMORY_MIB: u64 = 256;
/// The card's MAC address when nobody says: locally administered, unicast.
pub const DEFAULT_MAC: &str = "02:66:72:72:79:01";

/// What to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootSource {
    /// The kernel image (bzImage or ELF vmlinux).
    pub kernel: PathBuf,
    /// The initramfs, if any.
    pub initrd: Option<PathBuf>,
    /// The kernel command line.
    pub cmdline: String,
}

/// The machine's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineSpec {
    /// Number of vCPUs.
    pub cpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
}

impl Default for MachineSpec {
    fn default() -> Self {
        Self {
            cpus: DEFAULT_CPUS,
            memory_mib: DEFAULT_MEMORY_MIB,
        }
    }
}

impl MachineSpec {
    /// Why `cpus` vCPUs cannot be, if they cannot.
    pub fn check_cpus(cpus: u32) -> Result<(), String> {
        if (1..=MAX_CPUS).contains(&cpus) {
            Ok(())
        } else {
            Err(format!("the guest needs 1 to {MAX_CPUS} vCPUs"))
        }
    }

    /// Why `mib` MiB of guest memory cannot be on a host of `host_mib`, if they cannot.
    pub fn check_memory(mib: u64, host_mib: u64) -> Result<(), String> {
        if (MIN_MEMORY_MIB..=host_mib).contains(&mib) {
            Ok(())
        } else {
            Err(format!(
                "the guest needs {MIN_MEMORY_MIB} MiB to {host_mib} MiB (this host's RAM)"
            ))
        }
    }
}

/// A virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveSpec {
    /// The name it is known by (the API's `drive_id`).
    pub id: String,
    /// The raw image: a file or a block device.
    pub path: PathBuf,
    /// Whether the guest may only read.
    pub read_only: bool,
    /// Whether it is the root device (it then comes first: `vda`, and the
    /// kernel command line gets `root=`).
    pub root: bool,
    /// The root partition's unique id, for `root=PARTUUID=` (a root device only).
    pub partuuid: Option<String>,
    /// The serial number the guest reads (`/sys/block/vdX/serial`), at most 20 bytes.
    pub serial: String,
}

/// A network card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    /// The name it is known by (the API's `iface_id`).
    pub id: String,
    /// The card's MAC address.
    pub mac: [u8; 6],
    /// What its frames travel over on the host.
    pub backend: NetBackendSpec,
}

/// The host side of a network card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetBackendSpec {
    /// A passt that ferry starts: its forwards and arguments.
    Passt(ferry_net_passt::PasstConfig),
    /// An existing TAP device, by name (the API's `host_dev_name`).
    Tap(String),
}

/// Everything that describes the machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmResources {
    /// What to boot; a VM cannot start without it.
    pub boot: Option<BootSource>,
    /// vCPUs and memory.
    pub machine: MachineSpec,
    /// The disks, in the order given.
    pub drives: Vec<DriveSpec>,
    /// The network card, if any.
    pub net: Option<NetSpec>,
    /// The vsock device, if any.
    pub vsock: Option<VsockSpec>,
}

/// A virtio-vsock device whose host side is Firecracker's hybrid vsock: a
/// UNIX socket where host clients ask for a guest port with `CONNECT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockSpec {
    /// The guest's context id (3 or more).
    pub cid: u32,
    /// The UNIX socket ferry listens on; guest connections to host port P
    /// go to `<uds_path>_P`.
    pub uds_path: PathBuf,
    /// Plain port listeners: UNIX sockets whose every connection is joined
    /// to a guest port with no `CONNECT` line (Kata's agent socket), as
    /// `(guest port, socket path)`.
    pub port_listeners: Vec<(u32, PathBuf)>,
}

impl VsockSpec {
    /// Why `cid` cannot be a guest's context id, if it cannot (0-2 are the
    /// hypervisor's, the local and the host's).
    pub fn check_cid(cid: u32) -> Result<(), String> {
        if cid >= 3 {
            Ok(())
        } else {
            Err("a guest's context id is 3 or more".into())
        }
    }
}

impl VmResources {
    /// The disks in the order the guest sees them: the root device first
    /// (`vda`), then the others as given.
    pub fn drives_in_guest_order(&self) -> Vec<&DriveSpec> {
        let (root, others): (Vec<&DriveSpec>, Vec<&DriveSpec>) =
            self.drives.iter().partition(|d| d.root);
        root.into_iter().chain(others).collect()
    }

    /// The kernel parameters that boot from the root device, if there is
    /// one: `root=/dev/vda` (or `root=PARTUUID=…`) and `ro` or `rw`.
    pub fn root_args(&self) -> Option<String> {
        let root = self.drives.iter().find(|d| d.root)?;
        let device = match &root.partuuid {
            Some(uuid) => format!("PARTUUID={uuid}"),
            None => "/dev/vda".to_string(),
        };
        let mode = if root.read_only { "ro" } else { "rw" };
        Some(format!("root={device} {mode}"))
    }

    /// Adds a disk, or replaces the one with the same id in place.
    pub fn set_drive(&mut self, drive: DriveSpec) {
        if drive.root {
            // One root device: the new one takes the role.
            for other in &mut self.drives {
                other.root = false;
            }
        }
        match self.drives.iter_mut().find(|d| d.id == drive.id) {
            Some(slot) => *slot = drive,
            None => self.drives.push(drive),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drive(id: &str, root: bool) -> DriveSpec {
        DriveSpec {
            id: id.into(),
            path: format!("/{id}.img").into(),
            read_only: false,
            root,
            partuuid: None,
            serial: String::new(),
        }
    }

    #[test]
    fn the_root_drive_comes_first_and_only_one_is_root() {
        let mut r = VmResources::default();
        r.set_drive(drive("a", false));
        r.set_drive(drive("b", true));
        r.set_drive(drive("c", false));
        let order: Vec<&str> = r
            .drives_in_guest_order()
            .iter()
            .map(|d| d.id.as_str())
            .collect();
        assert_eq!(order, ["b", "a", "c"]);
        r.set_drive(drive("c", true));
        let roots: Vec<&str> = r
            .drives
            .iter()
            .filter(|d| d.root)
            .map(|d| d.id.as_str())
            .collect();
        assert_eq!(roots, ["c"]);
        // Replacing keeps the place.
        r.set_drive(drive("a", false));
        assert_eq!(r.drives.len(), 3);
        assert_eq!(r.drives[0].id, "a");
    }

    #[test]
    fn sizes_out_of_range_are_refused() {
        assert!(MachineSpec::check_cpus(0).is_err());
        assert!(MachineSpec::check_cpus(255).is_err());
        MachineSpec::check_cpus(1).unwrap();
        MachineSpec::check_cpus(254).unwrap();
        assert!(MachineSpec::check_memory(0, 1024).is_err());
        assert!(MachineSpec::check_memory(4096, 1024).is_err());
        MachineSpec::check_memory(32, 1024).unwrap();
    }
}
