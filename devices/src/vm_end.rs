// SPDX-License-Identifier: Apache-2.0
//! How the VM ends: the first reason reported wins, and an eventfd wakes
//! the event loop to tear the VM down.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered off (ACPI S5).
    PowerOff,
    /// The guest halted: every vCPU stopped with interrupts off.
    Halt,
    /// The guest wrote its exit status to the exit-status register.
    GuestStatus(u8),
    /// The guest reset or rebooted (i8042 reset line, ACPI reset, triple fault).
    Reset,
    /// The guest kernel panicked (pvpanic).
    Panic,
    /// The VMM failed while running the guest (KVM error, vCPU failure).
    Failure(String),
    /// The host asked ferry to stop, with this signal.
    HostSignal(i32),
    /// The time the user allowed ran out.
    Timeout,
}

/// The VM's end, shared by every thread that may end it.
#[derive(Debug)]
pub struct VmEnd {
    /// Set with the reason; read on every vCPU exit, so without the lock.
    ended: AtomicBool,
    reason: Mutex<Option<ExitReason>>,
    event: EventFd,
}

impl VmEnd {
    /// A VM that has not ended yet.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            ended: AtomicBool::new(false),
            reason: Mutex::new(None),
            event: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Ends the VM for `reason`, unless it already ended for another.
    pub fn request(&self, reason: ExitReason) {
        let mut slot = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            log::debug!("VM end requested: {reason:?}");
            *slot = Some(reason);
            self.ended.store(true, Ordering::Release);
            // A full counter only means the loop is already awake.
            let _ = self.event.write(1);
        }
    }

    /// Why the VM ended, once it has.
    pub fn reason(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the VM has ended.
    pub fn has_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Readable once the VM has ended.
    pub fn event(&self) -> &EventFd {
        &self.event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_wakes_the_loop() {
        let end = VmEnd::new().unwrap();
        assert!(!end.has_ended());
        end.request(ExitReason::GuestStatus(7));
        end.request(ExitReason::Reset);
        assert_eq!(end.reason(), Some(ExitReason::GuestStatus(7)));
        assert_eq!(end.event().read().unwrap(), 1);
    }
}
