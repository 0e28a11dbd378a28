// SPDX-License-Identifier: Apache-2.0
//! Confining ferry once its VM is built, before the vCPUs run: the passt
//! spawner is sealed (it starts only the passt configurations already
//! used), Landlock limits the files ferry may open to those it was given,
//! no-new-privileges is set, and the main thread takes its seccomp filter.
//! The other threads install their own filters as they start.

use std::path::PathBuf;

use ferry_confine::landlock::{self, parent_dir, Allowed, Enforced};
use ferry_confine::seccomp::{self, ThreadKind};

use crate::config::Launch;
use crate::resources::VmResources;

/// Errors while confining ferry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The main thread's seccomp filter could not be installed.
    #[error(transparent)]
    Seccomp(#[from] seccomp::Error),
    /// Landlock or no-new-privileges could not be set.
    #[error(transparent)]
    Landlock(#[from] landlock::Error),
}

/// Where block devices swapped in after boot live: Kata's runtime-rs
/// hands ferry host devices (`/dev/dm-*`, `/dev/loop*`).
const HOST_BLOCK_DEVICES: &str = "/dev";

/// Confines ferry as the module says; called on the main thread.
pub fn confine(resources: &VmResources, launch: &Launch) -> Result<(), Error> {
    if let Err(e) = ferry_net_passt::spawner::seal() {
        log::warn!("{e}");
    }
    if launch.landlock {
        let allowed = allowed(resources, launch);
        match landlock::restrict(&allowed)? {
            Enforced::Fully => log::info!("Landlock on: {}", describe(&allowed)),
            Enforced::Partly => log::info!(
                "Landlock on (the rights this kernel knows): {}",
                describe(&allowed)
            ),
            Enforced::Not => log::info!("Landlock off: this kernel has none"),
        }
    } else {
        landlock::no_new_privs()?;
        log::info!("Landlock off (--no-landlock)");
    }
    seccomp::enter(ThreadKind::Main)?;
    Ok(())
}

/// What ferry may still open or remove once its VM is built: its drives;
/// with an API, whatever lies beneath its drives' directories, the API
/// socket's and /dev (a drive swapped after boot: Kata's Go runtime
/// bind-mounts the new one over the old one's path, its runtime-rs names
/// a host block device); the directories of the socket files it removes
/// at the end.
fn allowed(resources: &VmResources, launch: &Launch) -> Allowed {
    let mut allowed = Allowed::default();
    for drive in &resources.drives {
        match drive.read_only {
            true => allowed.read.push(drive.path.clone()),
            false => allowed.read_write.push(drive.path.clone()),
        }
    }
    let mut sockets: Vec<PathBuf> = Vec::new();
    if let Some(vsock) = &resources.vsock {
        sockets.push(vsock.uds_path.clone());
        sockets.extend(vsock.port_listeners.iter().map(|(_, path)| path.clone()));
    }
    if let Some(api) = &launch.api_sock {
        sockets.push(api.clone());
        let mut dirs: Vec<PathBuf> = resources
            .drives
            .iter()
            .map(|d| parent_dir(&d.path))
            .collect();
        dirs.push(parent_dir(api));
        dirs.push(PathBuf::from(HOST_BLOCK_DEVICES));
        allowed.dirs_read_write = dedup(dirs);
    }
    allowed.dirs_remove = dedup(sockets.iter().map(|s| parent_dir(s)).collect());
    allowed
}

/// `paths` without repeats, in their first order.
fn dedup(paths: Vec<PathBuf>) -> Vec<PathBuf> {
    let mut seen = Vec::new();
    for path in paths {
        if !seen.contains(&path) {
            seen.push(path);
        }
    }
    seen
}

/// The log's summary of `allowed`.
fn describe(allowed: &Allowed) -> String {
    let list = |paths: &[PathBuf]| {
        paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut parts = Vec::new();
    for (what, paths) in [
        ("read", &allowed.read),
        ("read-write", &allowed.read_write),
        ("read-write beneath", &allowed.dirs_read_write),
        ("remove files in", &allowed.dirs_remove),
    ] {
        if !paths.is_empty() {
            parts.push(format!("{what} {}", list(paths)));
        }
    }
    if parts.is_empty() {
        "no file may be opened".into()
    } else {
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{DriveSpec, VsockSpec};

    fn drive(path: &str, read_only: bool) -> DriveSpec {
        DriveSpec {
            id: "d".into(),
            path: path.into(),
            read_only,
            root: false,
            partuuid: None,
            serial: String::new(),
        }
    }

    fn launch(api_sock: Option<&str>) -> Launch {
        Launch {
            console: crate::config::Console::Stdio,
            console_log: None,
            timeout: None,
            shutdown_grace: std::time::Duration::from_secs(1),
            transport: None,
            allow_pvm: false,
            landlock: true,
            api_sock: api_sock.map(PathBuf::from),
        }
    }

    #[test]
    fn the_command_line_allows_its_drives_and_socket_directories_only() {
        let resources = VmResources {
            drives: vec![
                drive("/images/root.img", false),
                drive("/images/data.img", true),
            ],
            vsock: Some(VsockSpec {
                cid: 3,
                uds_path: "/run/vm/vsock".into(),
                port_listeners: vec![(1024, "/run/vm/agent.sock".into())],
            }),
            ..VmResources::default()
        };
        let allowed = allowed(&resources, &launch(None));
        assert_eq!(allowed.read, [PathBuf::from("/images/data.img")]);
        assert_eq!(allowed.read_write, [PathBuf::from("/images/root.img")]);
        assert!(allowed.dirs_read_write.is_empty());
        assert_eq!(allowed.dirs_remove, [PathBuf::from("/run/vm")]);
    }

    #[test]
    fn the_api_allows_drives_swapped_after_boot() {
        let resources = VmResources {
            drives: vec![drive("/run/vc/fc/id/root/rootfs.img", false)],
            ..VmResources::default()
        };
        let allowed = allowed(&resources, &launch(Some("/run/vc/fc/id/api.sock")));
        assert_eq!(
            allowed.dirs_read_write,
            [
                PathBuf::from("/run/vc/fc/id/root"),
                PathBuf::from("/run/vc/fc/id"),
                PathBuf::from("/dev")
            ]
        );
        assert_eq!(allowed.dirs_remove, [PathBuf::from("/run/vc/fc/id")]);
    }
}
