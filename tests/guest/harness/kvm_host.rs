// SPDX-License-Identifier: Apache-2.0
//! Running the guest tests inside kvm-host (`../shared/kvm-host/run-in-kvm-host`)
//! where this machine's /dev/kvm cannot boot a stock guest.
//!
//! kvm-host is itself an emulated VM and now and then hangs whole, where
//! no test's own watchdog can act. So its output is watched from here: the
//! run inside prints a heartbeat, and silence well beyond it ends the run,
//! as does kvm-host's own time limit or a VM that ends without the run's
//! status. The test that was running then (it said it started, and had not
//! said how it ended: see [`progress`]) is charged with the stall, and the
//! tests not yet finished run on in a fresh kvm-host, logged as a retry. A
//! test running through two such stalls has failed, as a test whose guest
//! stalls twice has. A stall while no test was running is charged to none.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::host::INSIDE_ENV;
use super::progress::{self, Progress, HEARTBEAT};
use super::registry;
use crate::common::repo_root;

/// Overrides the kvm-host script's location.
const KVM_HOST_ENV: &str = "FERRY_KVM_HOST";
/// The kvm-host run's time limit: 2-3 times a whole run of the tests (7-8 min on a quiet machine).
const KVM_HOST_LIMIT_SECS: u64 = 1200;
/// Silence beyond three heartbeats means kvm-host itself hung.
const KVM_HOST_SILENCE_SECS: u64 = 30;
/// kvm-host runs one invocation may start: the first, and one after each
/// hang, so that a run of bad luck ends in a bounded time.
const KVM_HOST_RUNS: usize = 4;
/// How long kvm-host gets to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

fn script() -> PathBuf {
    std::env::var_os(KVM_HOST_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let shared = repo_root().join("../shared");
            shared
                .canonicalize()
                .unwrap_or(shared)
                .join("kvm-host/run-in-kvm-host")
        })
}

/// Runs this binary's tests selected by `filter` inside kvm-host, because
/// of `why`; returns the exit status.
pub fn run_tests(why: &str, filter: &[String]) -> i32 {
    let script = script();
    if !script.exists() {
        eprintln!(
            "guest tests: {why}, and {} is missing: no KVM that can boot the test guest",
            script.display()
        );
        return 1;
    }
    eprintln!(
        "guest tests: {why}; running them inside {}",
        script.display()
    );
    let me = std::env::current_exe().expect("the test binary's path");
    // The tests not yet finished.
    let mut pending: Vec<&str> = registry::selected(filter).iter().map(|t| t.name).collect();
    let asked = pending.len();
    let mut failed: Vec<String> = Vec::new();
    let mut stalled_once: Vec<&str> = Vec::new();
    let mut args = filter.to_vec();
    for attempt in 1..=KVM_HOST_RUNS {
        let started = Instant::now();
        let run = match run_once(&script, &me, &args) {
            Ok(run) => run,
            Err(e) => {
                eprintln!("guest tests: cannot run {}: {e}", script.display());
                return 1;
            }
        };
        // Only the tests asked for count (and each once).
        for &(name, passed) in &run.finished {
            if !pending.contains(&name) {
                continue;
            }
            pending.retain(|p| *p != name);
            if !passed {
                failed.push(name.to_string());
            }
        }
        let hung = if run.silent {
            format!("printed nothing for {KVM_HOST_SILENCE_SECS} s (hung)")
        } else if run.code == 124 || run.code == 125 {
            format!("ended with {}", run.code)
        } else {
            if attempt > 1 {
                report_all(attempt, asked, pending.len(), &failed);
            }
            if !pending.is_empty() && failed.is_empty() {
                eprintln!(
                    "guest tests: kvm-host ended ({}) without finishing: {}",
                    run.code,
                    pending.join(" ")
                );
                return 1;
            }
            return if failed.is_empty() { run.code } else { 1 };
        };
        if pending.is_empty() {
            eprintln!("guest tests: kvm-host {hung} after every test had finished");
            report_all(attempt, asked, pending.len(), &failed);
            return i32::from(!failed.is_empty());
        }
        match run.running.filter(|name| pending.contains(name)) {
            None => eprintln!(
                "guest tests: RETRY: kvm-host {hung} after {:.0} s, while no test was running",
                started.elapsed().as_secs_f64()
            ),
            Some(stalled) if stalled_once.contains(&stalled) => {
                eprintln!("guest tests: kvm-host {hung} again during {stalled}: it fails");
                failed.push(stalled.to_string());
                pending.retain(|p| *p != stalled);
            }
            Some(stalled) => {
                eprintln!(
                    "guest tests: RETRY: kvm-host {hung} after {:.0} s, during {stalled}",
                    started.elapsed().as_secs_f64()
                );
                stalled_once.push(stalled);
            }
        }
        if pending.is_empty() {
            report_all(attempt, asked, pending.len(), &failed);
            return 1;
        }
        if attempt == KVM_HOST_RUNS {
            eprintln!(
                "guest tests: kvm-host failed {attempt} times; not finished: {}",
                pending.join(" ")
            );
            report_all(attempt, asked, pending.len(), &failed);
            return 1;
        }
        eprintln!(
            "guest tests: running the {} tests not finished in a fresh kvm-host: {}",
            pending.len(),
            pending.join(" ")
        );
        args = pending.iter().map(|n| n.to_string()).collect();
    }
    1
}

/// The verdict over several kvm-host runs, whose own summaries each tell only their part:
/// of the `asked` tests, those neither `unfinished` nor `failed` passed.
fn report_all(runs: usize, asked: usize, unfinished: usize, failed: &[String]) {
    let passed = asked.saturating_sub(unfinished + failed.len());
    eprintln!(
        "guest tests, all {runs} kvm-host runs together: {passed} of {asked} passed; failed: {}{}",
        if failed.is_empty() {
            "none".to_string()
        } else {
            failed.join(" ")
        },
        if unfinished == 0 {
            String::new()
        } else {
            format!("; not finished: {unfinished}")
        }
    );
}

/// What one kvm-host run did.
struct Run {
    /// Its exit status (1 if it had none).
    code: i32,
    /// It went silent too long and was stopped.
    silent: bool,
    /// The tests it finished, and whether each passed.
    finished: Vec<(&'static str, bool)>,
    /// The test it had started and not finished when it ended.
    running: Option<&'static str>,
}

/// One kvm-host run, its output passed through and watched.
fn run_once(script: &Path, me: &Path, args: &[String]) -> std::io::Result<Run> {
    let mut child = Command::new(script)
        .current_dir(repo_root())
        .args(["-t", &KVM_HOST_LIMIT_SECS.to_string(), "--"])
        .arg(me)
        .args(args)
        .env(INSIDE_ENV, "1")
        .envs(super::built::env_for_kvm_host())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let (lines_tx, lines) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line != HEARTBEAT {
                println!("{line}");
            }
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut finished = Vec::new();
    let mut running = None;
    let mut silent = false;
    loop {
        match lines.recv_timeout(Duration::from_secs(KVM_HOST_SILENCE_SECS)) {
            Ok(line) => match progress::parse(&line) {
                Some(Progress::Started(name)) => running = Some(name),
                Some(Progress::Finished { name, passed }) => {
                    finished.push((name, passed));
                    if running == Some(name) {
                        running = None;
                    }
                }
                None => {}
            },
            Err(RecvTimeoutError::Timeout) => {
                silent = true;
                stop(&mut child);
                break;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.wait()?;
    let _ = reader.join();
    Ok(Run {
        code: status.code().unwrap_or(1),
        silent,
        finished,
        running,
    })
}

/// Stops kvm-host and everything under it (its QEMU runs under `timeout`,
/// in a process group of its own): SIGTERM, then SIGKILL after a grace.
fn stop(child: &mut Child) {
    let root = child.id() as i32;
    let family = descendants(root);
    for &pid in family.iter().chain(std::iter::once(&root)) {
        // SAFETY: kill with pids just read from /proc; the worst case is a no-op.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline {
        if family
            .iter()
            .all(|&pid| !Path::new(&format!("/proc/{pid}")).exists())
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for &pid in family.iter().chain(std::iter::once(&root)) {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Every process below `root`, read from /proc.
fn descendants(root: i32) -> Vec<i32> {
    let parents: Vec<(i32, i32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The parent's pid is the second field after the command's closing parenthesis.
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|&&(_, pp)| pp == parent)
                .map(|&(p, _)| p),
        );
        i += 1;
    }
    found.remove(0);
    found
}
