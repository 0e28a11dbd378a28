// SPDX-License-Identifier: Apache-2.0
//! Each kind's filter refuses what that kind must never do. A refused call
//! kills the process, so each case runs in a child: this test binary run
//! again with `FERRY_SECCOMP_CASE=KIND:CALL`, which runs only
//! [`forbidden_call_child`].

use std::process::Command;

use super::*;

/// The child's side: enables the filters, starts a thread of `kind`
/// named as ferry names it, enters its filter, makes an allowed call,
/// then `call`, which must not return.
#[test]
fn forbidden_call_child() {
    let Ok(case) = std::env::var("FERRY_SECCOMP_CASE") else {
        return;
    };
    let (kind, call) = case.split_once(':').unwrap();
    let kind = ThreadKind::ALL
        .into_iter()
        .find(|k| k.name() == kind)
        .unwrap();
    let call = call.to_owned();
    enable(Mode::Enforce, libc::SIGRTMIN()).unwrap();
    let thread = std::thread::Builder::new()
        .name(format!("{kind}7"))
        .spawn(move || {
            enter(kind).unwrap();
            // Allowed everywhere: the line reaches the parent.
            eprintln!("filter on");
            make(&call);
            eprintln!("{call} returned");
        })
        .unwrap();
    let _ = thread.join();
    std::process::exit(0);
}

/// Makes the call named `call` (arguments that would succeed without a filter).
fn make(call: &str) {
    // SAFETY: plain system calls on valid arguments; the program and
    // path are NUL-terminated and outlive the calls.
    unsafe {
        match call {
            "execve" => {
                let program = c"/bin/true".as_ptr();
                let argv = [program, std::ptr::null()];
                libc::execve(program, argv.as_ptr(), std::ptr::null());
            }
            "open" => {
                if libc::open(c"/etc/passwd".as_ptr(), libc::O_RDONLY) < 0 {
                    eprintln!("open refused: {}", std::io::Error::last_os_error());
                }
            }
            "inet_socket" => {
                libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            }
            "unix_socket" => {
                libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            }
            "fork" => {
                libc::fork();
            }
            "tun_ioctl" => {
                // TUNGETFEATURES on stdin: refused before it reaches the driver.
                let mut features: libc::c_uint = 0;
                libc::ioctl(0, 0x800454cf, &mut features);
            }
            "tun_offload" => {
                // TUNSETOFFLOAD on stdin: ENOTTY where it is allowed.
                libc::ioctl(0, libc::TUNSETOFFLOAD, 0);
            }
            "kvm_run" => {
                // KVM_RUN on stdin: refused before it reaches a driver.
                libc::ioctl(0, 0xae80, 0);
            }
            "kill_other" => {
                libc::kill(1, 0);
            }
            other => panic!("no such case {other}"),
        }
    }
}

/// Runs the case `kind:call` in a child; its exit status and stderr.
fn run_case(kind: ThreadKind, call: &str) -> (std::process::ExitStatus, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "seccomp::tests::forbidden_call_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FERRY_SECCOMP_CASE", format!("{}:{call}", kind.name()))
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `call` from a thread of `kind` kills ferry with SIGSYS and a line naming both.
fn assert_refused(kind: ThreadKind, call: &str, syscall: &str) {
    use std::os::unix::process::ExitStatusExt;
    let (status, stderr) = run_case(kind, call);
    assert!(stderr.contains("filter on"), "{kind} {call}: {stderr}");
    assert_eq!(
        status.signal(),
        Some(libc::SIGSYS),
        "{kind} {call}: {status:?} {stderr}"
    );
    let expected = format!("ferry: thread {kind}7 ({kind} filter) made system call");
    assert!(stderr.contains(&expected), "{kind} {call}: {stderr}");
    assert!(
        stderr.contains(&format!("({syscall})")),
        "{kind} {call}: {stderr}"
    );
}

/// `call` from a thread of `kind` goes through.
fn assert_allowed(kind: ThreadKind, call: &str) {
    let (status, stderr) = run_case(kind, call);
    assert!(status.success(), "{kind} {call}: {status:?} {stderr}");
    assert!(
        stderr.contains(&format!("{call} returned")),
        "{kind} {call}: {stderr}"
    );
}

#[test]
fn no_thread_may_run_a_program_or_start_a_process() {
    for kind in ThreadKind::ALL {
        assert_refused(kind, "execve", "execve");
        assert_refused(kind, "fork", "clone");
    }
}

#[test]
fn no_thread_may_open_an_internet_socket() {
    for kind in ThreadKind::ALL {
        assert_refused(kind, "inet_socket", "socket");
    }
}

#[test]
fn only_the_main_thread_opens_files() {
    // Elsewhere an open fails (EACCES) instead of stopping ferry: glibc
    // looks for its message catalogs when a thread first formats an error.
    for kind in ThreadKind::ALL
        .into_iter()
        .filter(|&k| k != ThreadKind::Main)
    {
        let (status, stderr) = run_case(kind, "open");
        assert!(status.success(), "{kind}: {status:?} {stderr}");
        assert!(
            stderr.contains("open refused: Permission denied"),
            "{kind}: {stderr}"
        );
    }
    assert_allowed(ThreadKind::Main, "open");
}

#[test]
fn only_vsock_makes_unix_sockets() {
    assert_allowed(ThreadKind::Vsock, "unix_socket");
    for kind in [
        ThreadKind::Vcpu,
        ThreadKind::Block,
        ThreadKind::Net,
        ThreadKind::Api,
    ] {
        assert_refused(kind, "unix_socket", "socket");
    }
}

#[test]
fn of_the_tun_requests_only_a_vcpu_sets_offloads() {
    assert_allowed(ThreadKind::Vcpu, "tun_offload");
    assert_refused(ThreadKind::Vcpu, "tun_ioctl", "ioctl");
    assert_refused(ThreadKind::Block, "tun_ioctl", "ioctl");
    assert_refused(ThreadKind::Net, "tun_offload", "ioctl");
}

#[test]
fn only_a_vcpu_runs_the_guest() {
    assert_allowed(ThreadKind::Vcpu, "kvm_run");
    for kind in [
        ThreadKind::Block,
        ThreadKind::Net,
        ThreadKind::Vsock,
        ThreadKind::Api,
        ThreadKind::PasstKeeper,
        ThreadKind::PasstLog,
    ] {
        assert_refused(kind, "kvm_run", "ioctl");
    }
}

#[test]
fn no_thread_signals_another_process() {
    for kind in ThreadKind::ALL {
        assert_refused(kind, "kill_other", "kill");
    }
}

/// A thread started by a confined thread runs under its starter's filter
/// as well as its own (filters stack): the starter's list must hold
/// everything the started thread's does.
#[test]
fn threads_started_by_confined_threads_keep_their_own_lists() {
    let pid = std::process::id();
    let kick = libc::SIGRTMIN();
    for (starter, started) in [
        (ThreadKind::Main, ThreadKind::Vcpu),
        (ThreadKind::PasstKeeper, ThreadKind::PasstLog),
        (ThreadKind::Api, ThreadKind::Api),
    ] {
        let starter_rules = allow::rules(starter, pid, kick);
        for (syscall, rules) in allow::rules(started, pid, kick) {
            let held = starter_rules.get(&syscall).is_some_and(|starter_rules| {
                starter_rules.is_empty() || rules.iter().all(|r| starter_rules.contains(r))
            });
            assert!(
                held,
                "{starter} lacks {started}'s {:?}",
                syscall_name(syscall)
            );
        }
    }
}

#[test]
fn clone3_is_answered_enosys_so_that_glibc_uses_clone() {
    // The prefix answers clone3 before the rules: a filter that allows
    // nothing still returns ENOSYS for it.
    let program = compile(ThreadKind::Main, Mode::Enforce, 1, libc::SIGRTMIN()).unwrap();
    assert_eq!(program[3].k, libc::SYS_clone3 as u32);
    assert_eq!(program[4].k, 0x0005_0000 | libc::ENOSYS as u32);
    // The main thread opens files: nothing else is answered before the rules.
    assert_ne!(program[5].k, libc::SYS_open as u32);
}
