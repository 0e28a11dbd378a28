// SPDX-License-Identifier: Apache-2.0
//! No new privileges, and Landlock: once the VM is built, the main thread
//! (and every thread it starts afterwards: vCPUs, device data paths) may
//! open only what ferry was given — its drives (read-only ones for
//! reading), and the directories named for files it may still have to
//! open or remove (a drive swapped in after boot, its sockets' files).
//! Threads started before (the API server, passt's keeper and log
//! readers) have seccomp filters that let them open nothing at all.
//!
//! Landlock needs Linux 5.13 with Landlock among its LSMs; where the
//! kernel has none, ferry says so and runs on (best effort, as Cloud
//! Hypervisor's `--landlock`).

use std::path::{Path, PathBuf};

use landlock::{
    Access, AccessFs, PathBeneath, PathFd, RestrictionStatus, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, ABI,
};

/// Errors while restricting ferry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `PR_SET_NO_NEW_PRIVS` failed.
    #[error("cannot set no-new-privileges")]
    NoNewPrivs(#[source] std::io::Error),
    /// A path to allow could not be opened.
    #[error("Landlock: cannot open {0} to allow it")]
    Path(PathBuf, #[source] landlock::PathFdError),
    /// The kernel refused the ruleset.
    #[error("Landlock: cannot restrict ferry")]
    Ruleset(#[source] landlock::RulesetError),
}

/// The newest Landlock ABI ferry asks for; older kernels enforce what they know.
const ABI_WANTED: ABI = ABI::V6;

/// What ferry may still open or remove once restricted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Allowed {
    /// Files to read.
    pub read: Vec<PathBuf>,
    /// Files to read and write.
    pub read_write: Vec<PathBuf>,
    /// Directories beneath which files may be read and written (drives
    /// swapped in after boot).
    pub dirs_read_write: Vec<PathBuf>,
    /// Directories whose files may be removed (socket files at the end).
    pub dirs_remove: Vec<PathBuf>,
}

/// Sets no-new-privileges on the calling thread (and the threads and
/// processes it starts from now on): no program it could run would gain
/// privileges.
pub fn no_new_privs() -> Result<(), Error> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(Error::NoNewPrivs(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// How far the restriction went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforced {
    /// Every right ferry asked to handle.
    Fully,
    /// Those an older kernel knows.
    Partly,
    /// None: the kernel has no Landlock.
    Not,
}

/// Restricts the calling thread, and those it starts from now on, to
/// `allowed` (sets no-new-privileges too).
pub fn restrict(allowed: &Allowed) -> Result<Enforced, Error> {
    let all = AccessFs::from_all(ABI_WANTED);
    let read_file: landlock::BitFlags<AccessFs> = AccessFs::ReadFile.into();
    let read_write_file = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate;
    let mut ruleset = Ruleset::default()
        .handle_access(all)
        .map_err(Error::Ruleset)?
        .create()
        .map_err(Error::Ruleset)?;
    let rules: [(&[PathBuf], _); 4] = [
        (&allowed.read, read_file),
        (&allowed.read_write, read_write_file),
        (
            &allowed.dirs_read_write,
            read_write_file | AccessFs::ReadDir,
        ),
        (&allowed.dirs_remove, AccessFs::RemoveFile.into()),
    ];
    for (paths, access) in rules {
        for path in paths {
            let fd = PathFd::new(path).map_err(|e| Error::Path(path.clone(), e))?;
            ruleset = ruleset
                .add_rule(PathBeneath::new(fd, access))
                .map_err(Error::Ruleset)?;
        }
    }
    let status: RestrictionStatus = ruleset.restrict_self().map_err(Error::Ruleset)?;
    if !status.no_new_privs {
        no_new_privs()?;
    }
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => Enforced::Fully,
        RulesetStatus::PartiallyEnforced => Enforced::Partly,
        RulesetStatus::NotEnforced => Enforced::Not,
    })
}

/// The directory holding `path` (`.` for a bare name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// The child's side of [`only_what_was_given_opens`]: restricts
    /// itself to one file and one directory, then tries each path in
    /// `FERRY_LANDLOCK_CASE` (`dir|file|other`) and prints what happened.
    #[test]
    fn landlock_child() {
        let Ok(dir) = std::env::var("FERRY_LANDLOCK_CASE") else {
            return;
        };
        let dir = PathBuf::from(dir);
        let allowed = Allowed {
            read: vec![dir.join("ro.img")],
            read_write: vec![dir.join("rw.img")],
            dirs_read_write: vec![dir.join("hotplug")],
            dirs_remove: vec![dir.join("sockets")],
        };
        let enforced = restrict(&allowed).unwrap();
        println!("enforced={enforced:?}");
        let try_open = |path: &str, write: bool| {
            let result = std::fs::OpenOptions::new()
                .read(true)
                .write(write)
                .open(dir.join(path));
            println!(
                "{path} write={write}: {}",
                if result.is_ok() { "ok" } else { "refused" }
            );
        };
        try_open("ro.img", false);
        try_open("ro.img", true);
        try_open("rw.img", true);
        try_open("hotplug/new.img", true);
        try_open("other.img", false);
        let removed = std::fs::remove_file(dir.join("sockets/s"));
        println!(
            "remove sockets/s: {}",
            if removed.is_ok() { "ok" } else { "refused" }
        );
        let removed = std::fs::remove_file(dir.join("hotplug/new.img"));
        println!(
            "remove hotplug/new.img: {}",
            if removed.is_ok() { "ok" } else { "refused" }
        );
        // SAFETY: a plain prctl query.
        let nnp = unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) };
        println!("no_new_privs={nnp}");
    }

    #[test]
    fn only_what_was_given_opens() {
        let dir = std::env::temp_dir().join(format!("ferry-landlock-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("hotplug")).unwrap();
        std::fs::create_dir_all(dir.join("sockets")).unwrap();
        for file in [
            "ro.img",
            "rw.img",
            "other.img",
            "hotplug/new.img",
            "sockets/s",
        ] {
            std::fs::write(dir.join(file), b"x").unwrap();
        }
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "landlock::tests::landlock_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("FERRY_LANDLOCK_CASE", &dir)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(out.status.success(), "{stdout}");
        assert!(stdout.contains("no_new_privs=1"), "{stdout}");
        if stdout.contains("enforced=Not") {
            // No Landlock in this kernel: said, and nothing refused.
            assert!(stdout.contains("other.img write=false: ok"), "{stdout}");
            eprintln!("this kernel has no Landlock: only no-new-privileges checked");
            return;
        }
        for expected in [
            "ro.img write=false: ok",
            "ro.img write=true: refused",
            "rw.img write=true: ok",
            "hotplug/new.img write=true: ok",
            "other.img write=false: refused",
            "remove sockets/s: ok",
            "remove hotplug/new.img: refused",
        ] {
            assert!(stdout.contains(expected), "{expected}: {stdout}");
        }
    }
}
