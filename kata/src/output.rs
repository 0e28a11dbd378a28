//! Where a sandbox's output goes: the guest's console and ferry's own log
//! (passt's included) arrive on ferry's stdout and stderr, the agent's log
//! on a vsock port; every line goes to the service's log, tagged with the
//! sandbox id, and the console's last lines are kept for error messages.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// How many console lines an error message quotes.
pub const CONSOLE_TAIL_LINES: usize = 20;

/// The last lines of a console.
#[derive(Debug, Default)]
pub struct ConsoleTail {
    lines: Mutex<VecDeque<String>>,
}

impl ConsoleTail {
    fn push(&self, line: String) {
        if let Ok(mut lines) = self.lines.lock() {
            if lines.len() == CONSOLE_TAIL_LINES {
                lines.pop_front();
            }
            lines.push_back(line);
        }
    }

    /// The kept lines, oldest first, one per line.
    pub fn text(&self) -> String {
        self.lines
            .lock()
            .map(|lines| lines.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }
}

/// Logs every line `from` gives, tagged `<sandbox> <what>:`, until its end;
/// keeps them in `tail` too if given.
pub fn pump_lines(
    id: &str,
    what: &'static str,
    from: impl Read + Send + 'static,
    tail: Option<Arc<ConsoleTail>>,
) {
    let tag = id.to_string();
    let spawned = thread::Builder::new()
        .name(format!("{what}-log"))
        .spawn(move || {
            let id = tag;
            for line in BufReader::new(from).split(b'\n') {
                let Ok(line) = line else { break };
                let line = String::from_utf8_lossy(&line);
                let line = line.trim_end_matches(['\r', '\n']);
                log::info!(target: what, "sandbox {id} {what}: {line}");
                if let Some(tail) = &tail {
                    tail.push(line.to_string());
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("sandbox {id}: cannot start the {what} log thread: {e}");
    }
}

/// A UNIX socket where the guest's agent writes its log (reached through
/// ferry's hybrid vsock: the guest's connections to host port P go to
/// `<vsock socket>_P`); every connection's lines go to the service's log.
#[derive(Debug)]
pub struct AgentLog {
    path: PathBuf,
    stop: Arc<AtomicBool>,
}

impl AgentLog {
    /// Listens at `path` for sandbox `id`.
    pub fn listen(id: &str, path: &Path) -> std::io::Result<Self> {
        let listener = UnixListener::bind(path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (id, stopped) = (id.to_string(), stop.clone());
        thread::Builder::new()
            .name("agent-log".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if stopped.load(Ordering::Acquire) {
                        break;
                    }
                    match stream {
                        Ok(stream) => pump_lines(&id, "agent", stream, None),
                        Err(e) => {
                            log::warn!("sandbox {id}: agent log socket: {e}");
                            break;
                        }
                    }
                }
            })?;
        Ok(AgentLog {
            path: path.to_owned(),
            stop,
        })
    }
}

impl Drop for AgentLog {
    fn drop(&mut self) {
        // Wake the accepting thread so that it sees the flag and ends.
        self.stop.store(true, Ordering::Release);
        let _ = std::os::unix::net::UnixStream::connect(&self.path);
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_keeps_the_last_lines() {
        let tail = ConsoleTail::default();
        for n in 0..(CONSOLE_TAIL_LINES + 5) {
            tail.push(format!("line {n}"));
        }
        let text = tail.text();
        assert!(text.starts_with("line 5\n"), "{text}");
        assert!(text.ends_with(&format!("line {}", CONSOLE_TAIL_LINES + 4)));
    }

    #[test]
    fn pumped_lines_reach_the_tail() {
        let tail = Arc::new(ConsoleTail::default());
        pump_lines("s", "console", &b"one\r\ntwo\n"[..], Some(tail.clone()));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while tail.text() != "one\ntwo" && std::time::Instant::now() < deadline {
            thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(tail.text(), "one\ntwo");
    }
}
