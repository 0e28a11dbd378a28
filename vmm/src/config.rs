// SPDX-License-Identifier: Apache-2.0
//! The VM's configuration, checked: what the command line asked for, with
//! every file opened and every size within bounds.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::cli::Cli;

/// Smallest guest memory ferry accepts, in MiB.
pub const MIN_MEMORY_MIB: u64 = 32;
/// Most vCPUs: APIC ids are one byte and 255 is the broadcast id.
pub const MAX_CPUS: u32 = 254;

/// Errors in the configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file named on the command line cannot be opened.
    #[error("cannot open the {what} {path}")]
    Open {
        /// Which file (kernel, initrd).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The path names a directory or something else that is not a file.
    #[error("the {what} {path} is not a regular file")]
    NotAFile {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
    },
    /// The vCPU count is out of range.
    #[error("--cpus {0}: the guest needs 1 to {MAX_CPUS} vCPUs")]
    Cpus(u32),
    /// The memory size is out of range.
    #[error("--memory {mib}: the guest needs {MIN_MEMORY_MIB} MiB to {max} MiB (this host's RAM)")]
    Memory {
        /// What was asked for.
        mib: u64,
        /// The most this host allows.
        max: u64,
    },
    /// The console option is malformed.
    #[error("--console {0}: expected stdio, file:PATH or none")]
    Console(String),
}

/// Where the guest's serial console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Console {
    /// Output to stdout, input from stdin.
    Stdio,
    /// Output appended to a file.
    File(PathBuf),
    /// Discarded.
    None,
}

impl Console {
    /// Parses `stdio`, `file:PATH` or `none`.
    pub fn parse(spec: &str) -> Result<Self, Error> {
        match spec {
            "stdio" => Ok(Console::Stdio),
            "none" => Ok(Console::None),
            _ => match spec.strip_prefix("file:") {
                Some(path) if !path.is_empty() => Ok(Console::File(PathBuf::from(path))),
                _ => Err(Error::Console(spec.to_string())),
            },
        }
    }
}

/// A checked VM configuration.
#[derive(Debug)]
pub struct VmConfig {
    /// The kernel image, open.
    pub kernel: File,
    /// The initramfs, open.
    pub initrd: Option<File>,
    /// The kernel command line.
    pub cmdline: String,
    /// Number of vCPUs.
    pub cpus: u32,
    /// Guest memory in bytes.
    pub mem_size: u64,
    /// Where the console goes.
    pub console: Console,
    /// Whether to run on a PVM /dev/kvm.
    pub allow_pvm: bool,
}

/// Opens `path` as a regular file.
fn open_file(what: &'static str, path: &Path) -> Result<File, Error> {
    let file = File::open(path).map_err(|source| Error::Open {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    let is_file = file.metadata().map(|m| m.is_file()).unwrap_or(false);
    if !is_file {
        return Err(Error::NotAFile {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(file)
}

/// This host's RAM in MiB, from /proc/meminfo.
fn host_memory_mib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Checks the sizes given on the command line; `host_mib` bounds the memory.
fn check_sizes(cpus: u32, memory_mib: u64, host_mib: u64) -> Result<(), Error> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(Error::Cpus(cpus));
    }
    if !(MIN_MEMORY_MIB..=host_mib).contains(&memory_mib) {
        return Err(Error::Memory {
            mib: memory_mib,
            max: host_mib,
        });
    }
    Ok(())
}

impl VmConfig {
    /// Checks `cli` and opens the files it names.
    pub fn from_cli(cli: &Cli) -> Result<Self, Error> {
        check_sizes(
            cli.cpus,
            cli.memory,
            host_memory_mib().unwrap_or(u64::MAX >> 20),
        )?;
        let console = Console::parse(&cli.console)?;
        let kernel = open_file("kernel", &cli.kernel)?;
        let initrd = cli
            .initrd
            .as_deref()
            .map(|p| open_file("initrd", p))
            .transpose()?;
        Ok(VmConfig {
            kernel,
            initrd,
            cmdline: cli.cmdline.clone(),
            cpus: cli.cpus,
            mem_size: cli.memory << 20,
            console,
            allow_pvm: cli.allow_pvm,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_specs() {
        assert_eq!(Console::parse("stdio").unwrap(), Console::Stdio);
        assert_eq!(Console::parse("none").unwrap(), Console::None);
        assert_eq!(
            Console::parse("file:/tmp/log").unwrap(),
            Console::File("/tmp/log".into())
        );
        assert!(Console::parse("file:").is_err());
        assert!(Console::parse("tty").is_err());
    }

    #[test]
    fn sizes_out_of_range_are_refused() {
        assert!(matches!(check_sizes(0, 256, 1024), Err(Error::Cpus(0))));
        assert!(matches!(check_sizes(255, 256, 1024), Err(Error::Cpus(255))));
        assert!(matches!(check_sizes(1, 0, 1024), Err(Error::Memory { .. })));
        assert!(matches!(
            check_sizes(1, 4096, 1024),
            Err(Error::Memory { .. })
        ));
        check_sizes(1, 256, 1024).unwrap();
        check_sizes(254, 32, 1024).unwrap();
    }

    #[test]
    fn a_directory_is_not_a_kernel_file() {
        assert!(matches!(
            open_file("kernel", Path::new("/")),
            Err(Error::NotAFile { .. })
        ));
        assert!(matches!(
            open_file("kernel", Path::new("/nonexistent/vmlinuz")),
            Err(Error::Open { .. })
        ));
    }
}
