// SPDX-License-Identifier: Apache-2.0
//! A seccomp filter per kind of thread. [`enable`] compiles every kind's
//! filter once, before the VM is built; each thread then calls [`enter`]
//! with its kind as the first thing it does (the main thread once the VM
//! is built, before its vCPUs start), so that no thread runs guest-driven
//! code unfiltered. A call outside a thread's list is trapped: ferry logs
//! the thread and the call, then dies of SIGSYS.

mod allow;
mod names;
mod sigsys;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

pub use names::name as syscall_name;
pub use sigsys::report_to;

/// Errors while building or installing filters.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filter could not be compiled.
    #[error("cannot compile the seccomp filter of the {0} threads")]
    Compile(ThreadKind, #[source] seccompiler::BackendError),
    /// The kernel refused a filter.
    #[error("cannot install the seccomp filter of the {0} threads")]
    Install(ThreadKind, #[source] seccompiler::Error),
    /// The SIGSYS handler could not be installed.
    #[error("cannot install the SIGSYS handler")]
    Handler(#[source] std::io::Error),
}

/// The kinds of ferry's threads; each has a filter of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ThreadKind {
    /// The main thread: the main loop, the API's requests, the VM's end.
    Main,
    /// A vCPU, and the devices it emulates.
    Vcpu,
    /// The API server's threads.
    Api,
    /// A block device's data path.
    Block,
    /// A network card's data path.
    Net,
    /// vsock's muxer.
    Vsock,
    /// The keeper that restarts a card's passt.
    PasstKeeper,
    /// A reader of passt's messages.
    PasstLog,
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 8] = [
        ThreadKind::Main,
        ThreadKind::Vcpu,
        ThreadKind::Api,
        ThreadKind::Block,
        ThreadKind::Net,
        ThreadKind::Vsock,
        ThreadKind::PasstKeeper,
        ThreadKind::PasstLog,
    ];

    /// The kind's name, as logs say it.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Api => "api",
            ThreadKind::Block => "block",
            ThreadKind::Net => "net",
            ThreadKind::Vsock => "vsock",
            ThreadKind::PasstKeeper => "passt-keeper",
            ThreadKind::PasstLog => "passt-log",
        }
    }
}

impl std::fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a filter does with a call outside its list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Trap it: ferry logs it and dies of SIGSYS (the default).
    Enforce,
    /// Let it through; the kernel logs it (its audit log, `dmesg`): for
    /// finding what a changed thread needs.
    Log,
}

/// The filters of every kind, once [`enable`]d.
#[derive(Debug)]
struct Filters {
    programs: BTreeMap<ThreadKind, BpfProgram>,
}

static FILTERS: OnceLock<Filters> = OnceLock::new();

/// Compiles the filters of every kind of thread and installs the SIGSYS
/// handler; from now on [`enter`] installs a thread's filter. `kick_signal`
/// is the signal that kicks vCPUs out of `KVM_RUN`. Call before the
/// threads that will call [`enter`] start.
pub fn enable(mode: Mode, kick_signal: i32) -> Result<(), Error> {
    let pid = std::process::id();
    let mut programs = BTreeMap::new();
    for kind in ThreadKind::ALL {
        programs.insert(kind, compile(kind, mode, pid, kick_signal)?);
    }
    if mode == Mode::Enforce {
        sigsys::install().map_err(Error::Handler)?;
    }
    // A second call keeps the first's filters.
    let _ = FILTERS.set(Filters { programs });
    Ok(())
}

/// Whether filters are enabled.
pub fn enabled() -> bool {
    FILTERS.get().is_some()
}

/// Installs `kind`'s filter on the calling thread, if filters are
/// enabled; sets no-new-privileges on it first (the kernel asks for it).
pub fn enter(kind: ThreadKind) -> Result<(), Error> {
    let Some(filters) = FILTERS.get() else {
        return Ok(());
    };
    let Some(program) = filters.programs.get(&kind) else {
        return Ok(());
    };
    sigsys::set_thread_kind(kind);
    seccompiler::apply_filter(program).map_err(|e| Error::Install(kind, e))
}

/// The compiled filter of `kind`.
fn compile(kind: ThreadKind, mode: Mode, pid: u32, kick_signal: i32) -> Result<BpfProgram, Error> {
    let refused = match mode {
        Mode::Enforce => SeccompAction::Trap,
        Mode::Log => SeccompAction::Log,
    };
    let rules = allow::rules(kind, pid, kick_signal);
    let filter = SeccompFilter::new(
        rules.clone(),
        refused,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| Error::Compile(kind, e))?;
    let program: BpfProgram = filter.try_into().map_err(|e| Error::Compile(kind, e))?;
    let opens_files = rules.contains_key(&libc::SYS_openat);
    let mut soft = vec![(libc::SYS_clone3, libc::ENOSYS)];
    if !opens_files {
        for open in [libc::SYS_open, libc::SYS_openat, libc::SYS_openat2] {
            soft.push((open, libc::EACCES));
        }
    }
    Ok(with_soft_refusals(&soft, program))
}

/// Puts in front of `program` checks that answer each of `refusals`'
/// calls with its errno instead of the trap:
/// - `clone3` with ENOSYS: its arguments are in memory, out of a filter's
///   reach, and glibc falls back to `clone`, whose flags the rules check;
/// - opening a file, in a thread whose list has no `openat`, with EACCES:
///   glibc opens its message catalogs the first time a thread formats an
///   error (`strerror`), and does without them when it may not.
///
/// (BPF jumps are relative, so the program's own stay right.)
fn with_soft_refusals(refusals: &[(i64, i32)], program: BpfProgram) -> BpfProgram {
    use seccompiler::sock_filter;
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JEQ_K: u16 = 0x15;
    const BPF_RET_K: u16 = 0x06;
    const SECCOMP_DATA_NR: u32 = 0;
    const SECCOMP_DATA_ARCH: u32 = 4;
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    let op = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    // Only for x86-64 calls (the program proper checks the arch too).
    let skip_all = 1 + 2 * refusals.len() as u8;
    let mut prefix = vec![
        op(BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_ARCH),
        op(BPF_JEQ_K, 0, skip_all, AUDIT_ARCH_X86_64),
        op(BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_NR),
    ];
    for &(syscall, errno) in refusals {
        prefix.push(op(BPF_JEQ_K, 0, 1, syscall as u32));
        prefix.push(op(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno as u32));
    }
    prefix.extend(program);
    prefix
}

#[cfg(test)]
mod tests;
