// SPDX-License-Identifier: Apache-2.0
//! ferry's log: one line per record on stderr, `ferry: ` first.

use std::io::Write;

struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let level = match record.level() {
                log::Level::Error => "error: ",
                log::Level::Warn => "warning: ",
                _ => "",
            };
            // A closed stderr must not stop the VM.
            let _ = writeln!(std::io::stderr().lock(), "ferry: {level}{}", record.args());
        }
    }

    fn flush(&self) {}
}

/// Sends log records at or above `level` to stderr.
pub fn init(level: log::LevelFilter) {
    static LOGGER: StderrLogger = StderrLogger;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}
