// SPDX-License-Identifier: Apache-2.0
//! Helpers shared by the integration tests: running ferry as a child
//! process with a watchdog, and finding the test guest.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The ferry binary under test.
pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// The repository root.
pub fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    root.canonicalize().unwrap_or(root)
}

/// A file of the test guest built by resources/build-guest.sh.
pub fn guest_file(name: &str) -> Result<PathBuf, String> {
    let path = repo_root().join("resources/out").join(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "test guest file {} is missing: run resources/build-guest.sh first",
            path.display()
        ))
    }
}

/// How a child process ended.
#[derive(Debug)]
pub struct Outcome {
    /// Its exit status; `None` if a signal ended it (the watchdog included).
    pub status: Option<i32>,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// Everything it wrote to stderr.
    pub stderr: String,
    /// Whether the watchdog had to kill it.
    pub timed_out: bool,
    /// How long it ran.
    pub elapsed: Duration,
}

impl Outcome {
    /// A short account of the run for failure messages.
    pub fn describe(&self) -> String {
        let tail = |s: &str| {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(15)..].join("\n")
        };
        format!(
            "status {:?}{} after {:.1} s\n--- stderr ---\n{}\n--- stdout (end) ---\n{}",
            self.status,
            if self.timed_out {
                " (killed by the watchdog)"
            } else {
                ""
            },
            self.elapsed.as_secs_f64(),
            tail(&self.stderr),
            tail(&self.stdout)
        )
    }
}

/// Runs `cmd` with stdin closed and output captured; kills it after `timeout`.
pub fn run(mut cmd: Command, timeout: Duration) -> Outcome {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break status;
        }
        if start.elapsed() > timeout {
            // SIGHUP first (ferry stops at once, no shutdown grace), so that
            // it can say where it stood (its devices' counters); then SIGKILL.
            timed_out = true;
            // SAFETY: our own child's pid, not yet reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGHUP) };
            std::thread::sleep(Duration::from_secs(3));
            let _ = child.kill();
            break child.wait().expect("wait for the killed child");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    Outcome {
        status: status.code(),
        stdout,
        stderr,
        timed_out,
        elapsed: start.elapsed(),
    }
}

/// `curl` on the API socket `sock`: the HTTP status (0 if curl could not
/// connect) and the body.
pub fn api_call(sock: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-w", "\n%{http_code}", "--unix-socket"])
        .arg(sock)
        .args(["-X", method, &format!("http://localhost{path}")]);
    if let Some(body) = body {
        cmd.args(["-H", "Content-Type: application/json", "-d", body]);
    }
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) => panic!("cannot run curl (apt-get install curl): {e}"),
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.trim().parse().unwrap_or(0), body.to_string())
}

/// Waits up to `timeout` for `path` to exist.
pub fn wait_for(path: &Path, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        if Instant::now() > deadline {
            return Err(format!("{} never appeared", path.display()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The README's code blocks: each example a test runs follows a line
/// `<!-- test: NAME -->`; any other block follows `<!-- untested: WHY -->`.
pub mod readme {
    /// README.md's text.
    pub fn read() -> Result<String, String> {
        let path = super::repo_root().join("README.md");
        std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path:?}: {e}"))
    }

    /// Every indented code block, with the comment line before it (if any).
    pub fn blocks(readme: &str) -> Vec<(Option<&str>, String)> {
        let lines: Vec<&str> = readme.lines().collect();
        let mut blocks = Vec::new();
        let mut i = 0;
        while i < lines.len() {
            // A block opens after a blank line or its marker.
            let starts_block = lines[i].starts_with("    ")
                && (i == 0 || lines[i - 1].trim().is_empty() || lines[i - 1].starts_with("<!--"));
            if !starts_block {
                i += 1;
                continue;
            }
            let marker = lines[..i]
                .iter()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(|l| l.trim())
                .filter(|l| l.starts_with("<!--"));
            let mut script = Vec::new();
            while i < lines.len() && lines[i].starts_with("    ") {
                script.push(&lines[i][4..]);
                i += 1;
            }
            blocks.push((marker, script.join("\n")));
        }
        blocks
    }

    /// The block that follows `<!-- test: NAME -->`, as a script.
    pub fn tested_block(readme: &str, name: &str) -> Option<String> {
        let marker = format!("<!-- test: {name} -->");
        blocks(readme)
            .into_iter()
            .find(|(m, _)| *m == Some(marker.as_str()))
            .map(|(_, script)| script)
    }
}
