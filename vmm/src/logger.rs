// SPDX-License-Identifier: Apache-2.0
//! ferry's log: one line per record, `ferry: ` first, on stderr until the
//! API's `PUT /logger` sends it to a file or named pipe.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

/// Where records go and how they look.
struct Sink {
    /// `None`: stderr.
    file: Option<File>,
    /// Lines carry their level for every level (not only warnings and errors).
    show_level: bool,
    /// Lines carry the file and line that logged them.
    show_origin: bool,
}

static SINK: Mutex<Sink> = Mutex::new(Sink {
    file: None,
    show_level: false,
    show_origin: false,
});

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let sink = SINK.lock().unwrap_or_else(|p| p.into_inner());
        let level = match (record.level(), sink.show_level) {
            (log::Level::Error, _) => "error: ".to_string(),
            (log::Level::Warn, _) => "warning: ".to_string(),
            (level, true) => format!("{}: ", level.as_str().to_lowercase()),
            (_, false) => String::new(),
        };
        let origin = match (sink.show_origin, record.file(), record.line()) {
            (true, Some(file), Some(line)) => format!("{file}:{line}: "),
            _ => String::new(),
        };
        let line = format!("ferry: {level}{origin}{}\n", record.args());
        // A closed log must not stop the VM.
        let _ = match &sink.file {
            Some(file) => (&*file).write_all(line.as_bytes()),
            None => std::io::stderr().lock().write_all(line.as_bytes()),
        };
    }

    fn flush(&self) {}
}

/// Sends log records at or above `level` to stderr.
pub fn init(level: log::LevelFilter) {
    static LOGGER: Logger = Logger;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

/// Opens `path` to append lines to: a regular file (created if missing) or
/// a named pipe. A pipe is opened for reading too, so that the open does
/// not wait for, or fail without, a reader; lines written while nobody
/// reads wait in the pipe, and once it is full they are dropped rather
/// than stall ferry.
pub fn open_sink(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let is_fifo = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo());
    let mut options = std::fs::OpenOptions::new();
    if is_fifo {
        options
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK);
    } else {
        options.append(true).create(true);
    }
    options.open(path)
}

/// From now on, log to `file` at `level`, lines showing their level and
/// origin as asked.
pub fn redirect(file: File, level: log::LevelFilter, show_level: bool, show_origin: bool) {
    let mut sink = SINK.lock().unwrap_or_else(|p| p.into_inner());
    // A call a seccomp filter refuses is reported there too.
    ferry_confine::seccomp::report_to(std::os::fd::AsRawFd::as_raw_fd(&file));
    *sink = Sink {
        file: Some(file),
        show_level,
        show_origin,
    };
    log::set_max_level(level);
}
