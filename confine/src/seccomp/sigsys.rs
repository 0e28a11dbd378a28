// SPDX-License-Identifier: Apache-2.0
//! What happens when a filter refuses a call: the kernel sends the thread
//! SIGSYS, whose handler writes one line naming the thread and the call
//! (to stderr, and to ferry's log file when it has one), puts SIGSYS's
//! default action back and raises it: ferry dies of SIGSYS. The handler
//! makes only async-signal-safe calls that every filter allows.

use std::cell::Cell;
use std::sync::atomic::{AtomicI32, Ordering};

use super::ThreadKind;

/// A second descriptor the line goes to (ferry's log file), or -1.
static REPORT_FD: AtomicI32 = AtomicI32::new(-1);

/// The longest thread name Linux keeps, with its NUL.
const NAME_LEN: usize = 16;

thread_local! {
    /// The calling thread's name and kind, set when its filter is installed.
    static THREAD: Cell<([u8; NAME_LEN], Option<ThreadKind>)> =
        const { Cell::new(([0; NAME_LEN], None)) };
}

/// Remembers the calling thread's name and kind for the handler.
pub(super) fn set_thread_kind(kind: ThreadKind) {
    let mut name = [0u8; NAME_LEN];
    let current = std::thread::current();
    let given = current.name().unwrap_or(kind.name()).as_bytes();
    let len = given.len().min(NAME_LEN - 1);
    name[..len].copy_from_slice(&given[..len]);
    THREAD.with(|t| t.set((name, Some(kind))));
}

/// Also writes the line to `fd` (ferry's log file, which must stay open).
pub fn report_to(fd: i32) {
    REPORT_FD.store(fd, Ordering::Relaxed);
}

/// Installs the handler, process-wide.
pub(super) fn install() -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction is valid; the handler has the
    // SA_SIGINFO signature and lives for the process.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigsys as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The offset of `si_syscall` in `siginfo_t` on x86-64: signo, errno and
/// code, padding, then the `_sigsys` union member's call address (8 bytes).
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn on_sigsys(
    _signal: libc::c_int,
    info: *mut libc::siginfo_t,
    _context: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid siginfo_t, which holds si_syscall
    // at this offset for SIGSYS from seccomp.
    let syscall = unsafe {
        info.cast::<u8>()
            .add(SI_SYSCALL_OFFSET)
            .cast::<i32>()
            .read_unaligned()
    };
    let (mut name, kind) = THREAD.with(|t| t.get());
    if kind.is_none() {
        // A thread not confined yet runs under the filter of the thread
        // that started it: its name from the kernel.
        // SAFETY: PR_GET_NAME writes at most 16 bytes into `name`.
        unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) };
    }
    let mut line = Line::default();
    line.push(b"ferry: thread ");
    let name_len = name.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
    line.push(&name[..name_len]);
    match kind {
        Some(kind) => {
            line.push(b" (");
            line.push(kind.name().as_bytes());
            line.push(b" filter)");
        }
        None => line.push(b" (its starter's filter)"),
    }
    line.push(b" made system call ");
    line.push_number(syscall);
    if let Some(call) = super::names::name(i64::from(syscall)) {
        line.push(b" (");
        line.push(call.as_bytes());
        line.push(b")");
    }
    line.push(b", which its seccomp filter forbids: stopping (SIGSYS)\n");
    let fds = [libc::STDERR_FILENO, REPORT_FD.load(Ordering::Relaxed)];
    for fd in fds.into_iter().filter(|&fd| fd >= 0) {
        // SAFETY: write from a buffer that lives across the call.
        unsafe { libc::write(fd, line.bytes.as_ptr().cast(), line.len) };
    }
    // SAFETY: async-signal-safe calls: the default action back, then
    // SIGSYS raised on this thread (delivered once the handler returns).
    unsafe {
        libc::signal(libc::SIGSYS, libc::SIG_DFL);
        let pid = libc::getpid();
        let tid = libc::syscall(libc::SYS_gettid);
        libc::syscall(libc::SYS_tgkill, pid, tid, libc::SIGSYS);
    }
}

/// A line built without allocating.
struct Line {
    bytes: [u8; 256],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Self {
            bytes: [0; 256],
            len: 0,
        }
    }
}

impl Line {
    fn push(&mut self, text: &[u8]) {
        let room = self.bytes.len() - self.len;
        let n = text.len().min(room);
        self.bytes[self.len..self.len + n].copy_from_slice(&text[..n]);
        self.len += n;
    }

    fn push_number(&mut self, value: i32) {
        let mut digits = [0u8; 12];
        let mut i = digits.len();
        let negative = value < 0;
        let mut v = i64::from(value).unsigned_abs();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        if negative {
            i -= 1;
            digits[i] = b'-';
        }
        self.push(&digits[i..]);
    }
}
