//! Where a sandbox's output goes: the guest's console and ferry's own log
//! (passt's included) arrive on ferry's stdout and stderr, the agent's log
//! on a vsock port the agent listens on; every line goes to the service's log, tagged with the
//! sandbox id, and the console's last lines are kept for error messages.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

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

/// Follows the agent's log: kata-agent listens on its log port
/// (`agent.log_vport`) and writes its log to the one connection it
/// accepts, holding its log back until then; so this connects through
/// ferry's hybrid socket (`CONNECT <port>`) from the moment ferry starts,
/// retrying until the agent listens, and sends every line to the service's
/// log. Stops trying when dropped; a connection ends with the VM.
#[derive(Debug)]
pub struct AgentLog {
    stop: Arc<AtomicBool>,
}

/// How often the agent's log port is tried.
const AGENT_LOG_RETRY: Duration = Duration::from_millis(100);

impl AgentLog {
    /// Follows guest port `port` behind the hybrid socket `vsock`.
    pub fn follow(id: &str, vsock: &Path, port: u32) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (id, vsock, stopped) = (id.to_string(), vsock.to_owned(), stop.clone());
        thread::Builder::new()
            .name("agent-log".into())
            .spawn(move || {
                while !stopped.load(Ordering::Acquire) {
                    if let Some(stream) = connect_port(&vsock, port, Duration::from_secs(2)) {
                        log::debug!("sandbox {id}: following the agent's log (vsock port {port})");
                        pump_lines(&id, "agent", stream, None);
                        return;
                    }
                    thread::sleep(AGENT_LOG_RETRY);
                }
            })?;
        Ok(AgentLog { stop })
    }
}

impl Drop for AgentLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Connects to guest `port` behind the hybrid socket `vsock`: the stream
/// once ferry answered `OK` (within `patience`), or None.
pub fn connect_port(vsock: &Path, port: u32, patience: Duration) -> Option<UnixStream> {
    let mut stream = UnixStream::connect(vsock).ok()?;
    stream.set_read_timeout(Some(patience)).ok()?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .ok()?;
    // Byte by byte: nothing after the line may be read with it.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while byte[0] != b'\n' && line.len() < 64 {
        match stream.read(&mut byte) {
            Ok(1) => line.push(byte[0]),
            _ => return None,
        }
    }
    if !line.starts_with(b"OK ") {
        return None;
    }
    stream.set_read_timeout(None).ok()?;
    Some(stream)
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
