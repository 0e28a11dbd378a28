// SPDX-License-Identifier: Apache-2.0
//! The guest console on the host side: where serial output goes, and
//! stdin (in raw mode when it is a terminal) feeding the serial port.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use ferry_devices::legacy::Serial;
use vmm_sys_util::timerfd::TimerFd;

use crate::config::Console;

/// Opens the writer for the console's output, copied to `log` if given.
pub fn output(console: &Console, log: Option<File>) -> io::Result<Box<dyn Write + Send>> {
    let out: Box<dyn Write + Send> = match console {
        Console::Stdio => Box::new(io::stdout()),
        Console::File(path) => Box::new(OpenOptions::new().create(true).append(true).open(path)?),
        Console::None => Box::new(io::sink()),
    };
    Ok(match log {
        Some(log) => Box::new(Tee { out, log }),
        None => out,
    })
}

/// The console output and its log. The log file is written unbuffered,
/// so that it holds every byte even if ferry is killed; a failing console
/// (a closed stdout) does not stop the log.
struct Tee {
    out: Box<dyn Write + Send>,
    log: File,
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let logged = self.log.write_all(buf);
        match (self.out.write_all(buf), logged) {
            (Ok(()), _) | (_, Ok(())) => Ok(buf.len()),
            (Err(e), Err(_)) => Err(e),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = self.out.flush();
        Ok(())
    }
}

/// Puts a terminal in raw mode and restores its settings when dropped.
pub struct RawTerminal {
    fd: RawFd,
    saved: libc::termios,
}

impl std::fmt::Debug for RawTerminal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawTerminal").field("fd", &self.fd).finish()
    }
}

impl RawTerminal {
    /// Raw mode on `fd`, or `None` if it is not a terminal.
    pub fn enter(fd: RawFd) -> Option<Self> {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(fd) } != 1 {
            return None;
        }
        // SAFETY: termios is plain data; tcgetattr fills it or fails.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `saved` is a valid termios to write to.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only edits the struct it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // Keep output processing so that ferry's own messages stay readable.
        raw.c_oflag = saved.c_oflag;
        // SAFETY: `raw` is a valid termios.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(Self { fd, saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enter` on the same descriptor.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// Event-loop subscriber feeding stdin to the serial port. Bytes the
/// receive FIFO cannot take yet wait in `pending`: stdin is then left
/// unread and a timer retries every few milliseconds until they are gone.
pub struct ConsoleInput {
    serial: Arc<Mutex<Serial>>,
    pending: Vec<u8>,
    retry: TimerFd,
}

impl std::fmt::Debug for ConsoleInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleInput")
            .field("pending", &self.pending.len())
            .finish()
    }
}

/// How often queued input is retried while the guest's FIFO is full.
const RETRY_INTERVAL: Duration = Duration::from_millis(5);

impl ConsoleInput {
    /// Feeds stdin to `serial`.
    pub fn new(serial: Arc<Mutex<Serial>>) -> io::Result<Self> {
        Ok(Self {
            serial,
            pending: Vec::new(),
            retry: TimerFd::new().map_err(io::Error::from)?,
        })
    }

    /// Moves pending bytes into the FIFO; true once none are left.
    fn flush_pending(&mut self) -> bool {
        let mut serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        let taken = serial.queue_input(&self.pending);
        self.pending.drain(..taken);
        self.pending.is_empty()
    }

    /// Stops reading stdin and retries the pending bytes on a timer.
    fn hold_input(&mut self, ops: &mut EventOps) {
        let _ = ops.remove(Events::new(&io::stdin(), EventSet::IN));
        if let Err(e) = self.retry.reset(RETRY_INTERVAL, Some(RETRY_INTERVAL)) {
            log::warn!("console: cannot arm the input retry timer: {e}");
        }
        if let Err(e) = ops.add(Events::new(&self.retry, EventSet::IN)) {
            log::warn!("console: cannot watch the input retry timer: {e:?}");
        }
    }

    /// Stops the timer and reads stdin again.
    fn resume_input(&mut self, ops: &mut EventOps) {
        let _ = ops.remove(Events::new(&self.retry, EventSet::IN));
        let _ = self.retry.clear();
        watch_stdin(ops);
    }

    fn read_stdin(&mut self, ops: &mut EventOps) {
        let stdin = io::stdin();
        let mut buf = [0u8; 256];
        // SAFETY: reads at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::read(stdin.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            self.pending.extend_from_slice(&buf[..n as usize]);
            if !self.flush_pending() {
                self.hold_input(ops);
            }
            return;
        }
        let err = io::Error::last_os_error();
        if n < 0
            && matches!(
                err.kind(),
                io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
            )
        {
            return;
        }
        if n < 0 {
            log::warn!("console: stdin read failed: {err}");
        }
        // End of input: the guest keeps running without it.
        let _ = ops.remove(Events::new(&stdin, EventSet::IN));
    }
}

/// Watches stdin for input, if it can be watched (a regular file cannot).
fn watch_stdin(ops: &mut EventOps) {
    if let Err(e) = ops.add(Events::new(&io::stdin(), EventSet::IN)) {
        log::debug!("console: stdin cannot be watched ({e:?}); no console input");
    }
}

impl MutEventSubscriber for ConsoleInput {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.retry.as_raw_fd() {
            let _ = self.retry.wait();
            if self.flush_pending() {
                self.resume_input(ops);
            }
        } else if events.fd() == io::stdin().as_raw_fd() {
            self.read_stdin(ops);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        watch_stdin(ops);
    }
}
