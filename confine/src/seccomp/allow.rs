// SPDX-License-Identifier: Apache-2.0
//! The allow-lists: for each kind of thread, the system calls it makes
//! once the guest runs, each with who needs it, and argument filters
//! where a call's arguments tell a harmless use from a dangerous one
//! (`ioctl` requests, signals sent, `clone` flags, sockets' families).
//! Everything else is forbidden. Built from what each thread was seen to
//! make across the guest tests (run with `FERRY_SECCOMP=log`, the kernel
//! logging every call a filter would refuse).

use std::collections::BTreeMap;

use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

use super::ThreadKind;

/// A filter's rules: a system call allowed with no condition has none.
pub(super) type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// `ioctl` request types (the request's bits 8-15): KVM's, block devices'.
const KVM_IOCTL_TYPE: u64 = 0xAE;
const BLOCK_IOCTL_TYPE: u64 = 0x12;
/// The terminal's state read and put back (the console's raw mode); no
/// other terminal request (TIOCSTI would type into it).
const TERMINAL_IOCTLS: [u64; 4] = [libc::TCGETS, libc::TCSETS, libc::TCSETSW, libc::TCSETSF];
/// `KVM_SIGNAL_MSI` (`_IOW(KVMIO, 0xa5, struct kvm_msi)`): how a device
/// on PCI interrupts the guest, from whichever thread completes its work.
const KVM_SIGNAL_MSI: u64 = 0x4020_aea5;

/// The rules of `kind`'s filter; `pid` is ferry's process id and
/// `kick_signal` the signal that kicks a vCPU out of `KVM_RUN`.
pub(super) fn rules(kind: ThreadKind, pid: u32, kick_signal: i32) -> Rules {
    let mut rules = Rules::new();
    every_thread(&mut rules, pid, kick_signal);
    match kind {
        ThreadKind::Main => main_thread(&mut rules),
        ThreadKind::Vcpu => vcpu(&mut rules),
        ThreadKind::Api => api(&mut rules),
        ThreadKind::Block => block(&mut rules),
        ThreadKind::Net => net(&mut rules),
        ThreadKind::Vsock => vsock(&mut rules),
        ThreadKind::PasstKeeper => passt_keeper(&mut rules),
        ThreadKind::PasstLog => {}
    }
    rules
}

/// What every thread needs: memory, locks, time, its log, its own end,
/// and the way out when its filter refuses a call.
fn every_thread(rules: &mut Rules, pid: u32, kick_signal: i32) {
    allow(
        rules,
        &[
            // Reading and writing descriptors it holds: eventfds, the log
            // (stderr or a file), pipes, sockets.
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_writev,
            libc::SYS_close,
            // Descriptors duplicated (try_clone), their flags read and set.
            libc::SYS_fcntl,
            // The allocator and thread stacks.
            libc::SYS_mmap,
            libc::SYS_munmap,
            libc::SYS_mprotect,
            libc::SYS_madvise,
            libc::SYS_brk,
            libc::SYS_mremap,
            // Locks, channels, joins, parking.
            libc::SYS_futex,
            libc::SYS_sched_yield,
            // Sleeps and clocks (the vDSO's fallbacks).
            libc::SYS_nanosleep,
            libc::SYS_clock_nanosleep,
            libc::SYS_clock_gettime,
            libc::SYS_gettimeofday,
            // Signal delivery (the vCPU kick's handler, SIGSYS's).
            libc::SYS_rt_sigreturn,
            libc::SYS_rt_sigprocmask,
            // A thread's end: its alternate signal stack is freed, then it exits.
            libc::SYS_sigaltstack,
            libc::SYS_exit,
            libc::SYS_exit_group,
            // Raising SIGSYS again after its handler logged the refused call.
            libc::SYS_getpid,
            libc::SYS_gettid,
            // A new thread reads its own stack's bounds (glibc's
            // pthread_getattr_np, for Rust's stack-overflow guard).
            libc::SYS_sched_getaffinity,
            // Hash maps' random keys.
            libc::SYS_getrandom,
        ],
    );
    // Rust's set_nonblocking on its sockets, pipes and eventfds.
    allow_if(rules, libc::SYS_ioctl, &[arg_eq(1, libc::FIONBIO)]);
    // Its own name, for the line SIGSYS's handler logs.
    allow_if(
        rules,
        libc::SYS_prctl,
        &[arg_eq(0, libc::PR_GET_NAME as u64)],
    );
    // SIGSYS's handler puts back the default action before raising it again.
    allow_if(
        rules,
        libc::SYS_rt_sigaction,
        &[arg_eq(0, libc::SIGSYS as u64)],
    );
    // Signals only to ferry's own threads: SIGSYS raised again, and the
    // vCPU kick (sent by the main thread and by a vCPU stopping the VM).
    for signal in [libc::SIGSYS, kick_signal] {
        allow_if(
            rules,
            libc::SYS_tgkill,
            &[arg_eq(0, u64::from(pid)), arg_eq(2, signal as u64)],
        );
    }
    // glibc tries clone3 first; its arguments are out of a filter's reach,
    // so it gets ENOSYS (see `super::refuse_clone3`) and glibc uses clone.
}

/// Starting threads (`clone` with `CLONE_THREAD`; never a process).
fn thread_starts(rules: &mut Rules) {
    allow_if(
        rules,
        libc::SYS_clone,
        &[arg_masked(
            0,
            libc::CLONE_THREAD as u64,
            libc::CLONE_THREAD as u64,
        )],
    );
    // The new thread's name.
    allow_if(
        rules,
        libc::SYS_prctl,
        &[arg_eq(0, libc::PR_SET_NAME as u64)],
    );
    // The new thread runs under its starter's filter until it installs
    // its own, which only narrows what it may do: no-new-privileges
    // (asked again) and a filter added.
    allow_if(
        rules,
        libc::SYS_prctl,
        &[arg_eq(0, libc::PR_SET_NO_NEW_PRIVS as u64), arg_eq(1, 1)],
    );
    allow_if(
        rules,
        libc::SYS_seccomp,
        &[arg_eq(0, libc::SECCOMP_SET_MODE_FILTER as u64)],
    );
    allow(
        rules,
        &[
            // The new thread sets itself up.
            libc::SYS_set_robust_list,
            libc::SYS_rseq,
            // glibc reads the stack guard size.
            libc::SYS_getrlimit,
            libc::SYS_prlimit64,
        ],
    );
}

/// An event loop of its own (event-manager's epoll, eventfds).
fn event_loop(rules: &mut Rules) {
    allow(
        rules,
        &[
            libc::SYS_epoll_create1,
            libc::SYS_epoll_ctl,
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_eventfd2,
            libc::SYS_poll,
            libc::SYS_ppoll,
        ],
    );
    timers(rules);
}

/// Timers (a data path's retry and deadline timers, made when its
/// device is activated).
fn timers(rules: &mut Rules) {
    allow(
        rules,
        &[
            libc::SYS_timerfd_create,
            libc::SYS_timerfd_settime,
            libc::SYS_timerfd_gettime,
        ],
    );
}

/// Removing the socket files it made as it ends, once it has checked
/// that they are still its own (Landlock limits where).
fn socket_file_removal(rules: &mut Rules) {
    allow(
        rules,
        &[
            libc::SYS_statx,
            libc::SYS_newfstatat,
            libc::SYS_unlink,
            libc::SYS_unlinkat,
        ],
    );
}

/// A TAP's offloads set to what the guest's driver acked (on activation).
fn tap_offloads(rules: &mut Rules) {
    allow_if(rules, libc::SYS_ioctl, &[arg_eq(1, libc::TUNSETOFFLOAD)]);
}

/// A device's interrupts: MSI messages injected with `KVM_SIGNAL_MSI`
/// (the other interrupts go through eventfds KVM watches).
fn msi_interrupts(rules: &mut Rules) {
    allow_if(rules, libc::SYS_ioctl, &[arg_eq(1, KVM_SIGNAL_MSI)]);
}

/// `ioctl` with a request of `ioctl_type` only.
fn ioctls_of(rules: &mut Rules, ioctl_type: u64) {
    allow_if(
        rules,
        libc::SYS_ioctl,
        &[arg_masked(1, 0xff00, ioctl_type << 8)],
    );
}

/// The main thread: the main loop (timeouts, stop signals, the VM's end),
/// the API's requests once the VM runs (drives swapped, metrics written,
/// Ctrl-Alt-Del), and stopping the VM.
fn main_thread(rules: &mut Rules) {
    event_loop(rules);
    // vCPU threads start here, under this filter and then their own.
    thread_starts(rules);
    // KVM: interrupt lines, the VM's state when it ends.
    ioctls_of(rules, KVM_IOCTL_TYPE);
    // A drive swapped after boot (Kata's hot-plug): opened, sized, and the
    // old one's descriptor closed.
    ioctls_of(rules, BLOCK_IOCTL_TYPE);
    // The terminal put back as it was (stdin in raw mode for the console).
    for request in TERMINAL_IOCTLS {
        allow_if(rules, libc::SYS_ioctl, &[arg_eq(1, request)]);
    }
    // vCPUs start under this filter and set a TAP's offloads.
    tap_offloads(rules);
    allow(
        rules,
        &[
            libc::SYS_openat,
            libc::SYS_fstat,
            libc::SYS_newfstatat,
            libc::SYS_statx,
            libc::SYS_lseek,
            // The swapped-in drive locked as the first one was.
            libc::SYS_flock,
            // The timeout and the signals that stop the VM.
            libc::SYS_timerfd_create,
            libc::SYS_timerfd_settime,
            libc::SYS_signalfd4,
            libc::SYS_rt_sigtimedwait,
            // Socket files removed when the VM ends (vsock's listeners).
            libc::SYS_unlink,
            libc::SYS_unlinkat,
            // Sockets shut down when the VM ends.
            libc::SYS_shutdown,
            // Asking the passt spawner to stop passt.
            libc::SYS_sendmsg,
            libc::SYS_recvmsg,
            libc::SYS_sendto,
            libc::SYS_recvfrom,
        ],
    );
}

/// A vCPU: `KVM_RUN` and the devices it emulates on exits, which hand
/// their data-path threads (started with the devices) a body to run when
/// the guest's driver activates them, and stop it on reset. vCPUs start
/// under the main thread's filter, whose list holds all of this one's.
fn vcpu(rules: &mut Rules) {
    ioctls_of(rules, KVM_IOCTL_TYPE);
    // A device's data path started on activation: its events and timers.
    allow(rules, &[libc::SYS_eventfd2]);
    timers(rules);
    tap_offloads(rules);
}

/// The API's threads: the one accepting connections, and one per connection.
fn api(rules: &mut Rules) {
    thread_starts(rules);
    event_loop(rules);
    socket_file_removal(rules);
    allow(
        rules,
        &[
            libc::SYS_accept4,
            libc::SYS_recvfrom,
            libc::SYS_sendto,
            libc::SYS_shutdown,
            libc::SYS_setsockopt,
        ],
    );
}

/// A block device's data path: reads, writes and flushes of its file.
fn block(rules: &mut Rules) {
    event_loop(rules);
    msi_interrupts(rules);
    allow(
        rules,
        &[
            libc::SYS_pread64,
            libc::SYS_pwrite64,
            libc::SYS_preadv,
            libc::SYS_pwritev,
            libc::SYS_preadv2,
            libc::SYS_pwritev2,
            libc::SYS_fsync,
            libc::SYS_fdatasync,
            libc::SYS_lseek,
            libc::SYS_fstat,
            libc::SYS_fallocate,
        ],
    );
}

/// A network card's data path: passt's stream or a TAP.
fn net(rules: &mut Rules) {
    event_loop(rules);
    msi_interrupts(rules);
    allow(
        rules,
        &[
            libc::SYS_readv,
            libc::SYS_recvfrom,
            libc::SYS_sendto,
            libc::SYS_recvmsg,
            libc::SYS_sendmsg,
            libc::SYS_shutdown,
        ],
    );
}

/// vsock's muxer: the guest's connections joined to UNIX sockets, both ways.
fn vsock(rules: &mut Rules) {
    event_loop(rules);
    msi_interrupts(rules);
    socket_file_removal(rules);
    // Connections the guest opens go to UNIX sockets only.
    allow_if(rules, libc::SYS_socket, &[arg_eq(0, libc::AF_UNIX as u64)]);
    allow(
        rules,
        &[
            libc::SYS_connect,
            libc::SYS_accept4,
            libc::SYS_recvfrom,
            libc::SYS_sendto,
            libc::SYS_shutdown,
            libc::SYS_getsockopt,
        ],
    );
}

/// The keeper of a card's passt: asks the passt spawner for a new passt
/// and hands its stream to the card.
fn passt_keeper(rules: &mut Rules) {
    event_loop(rules);
    allow(
        rules,
        &[libc::SYS_sendmsg, libc::SYS_recvmsg, libc::SYS_shutdown],
    );
    thread_starts(rules);
}

/// Allows each of `syscalls` whatever its arguments.
fn allow(rules: &mut Rules, syscalls: &[i64]) {
    for &syscall in syscalls {
        rules.insert(syscall, Vec::new());
    }
}

/// Allows `syscall` when all of `conditions` hold (or when an earlier
/// rule for it does; a call already allowed unconditionally stays so).
fn allow_if(rules: &mut Rules, syscall: i64, conditions: &[SeccompCondition]) {
    if rules.get(&syscall).is_some_and(Vec::is_empty) {
        return;
    }
    // Conditions built here are valid: argument indexes are below 6.
    if let Ok(rule) = SeccompRule::new(conditions.to_vec()) {
        rules.entry(syscall).or_default().push(rule);
    }
}

/// Argument `index` equals `value`.
fn arg_eq(index: u8, value: u64) -> SeccompCondition {
    condition(index, SeccompCmpOp::Eq, value)
}

/// Argument `index`'s bits in `mask` equal `value`.
fn arg_masked(index: u8, mask: u64, value: u64) -> SeccompCondition {
    condition(index, SeccompCmpOp::MaskedEq(mask), value)
}

fn condition(index: u8, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    // The argument's low 32 bits: requests, signals, flags and families
    // are ints.
    SeccompCondition::new(index, SeccompCmpArgLen::Dword, op, value)
        .unwrap_or_else(|_| unreachable!("argument index {index} is below 6"))
}
