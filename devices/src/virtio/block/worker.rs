// SPDX-License-Identifier: Apache-2.0
//! The I/O thread of one disk: waits for queue kicks, runs every request
//! the driver made available, and interrupts the guest once per batch.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::disk::DiskImage;
use super::request::{Request, Settings, ID_LEN};
use crate::virtio::device_thread::run_until_stopped;
use crate::virtio::Interrupt;
use crate::GuestMemory;

/// Counters of one disk.
#[derive(Debug, Default)]
pub struct BlockStats {
    /// Requests completed.
    pub requests: AtomicU64,
    /// Chains that were not requests (consumed with no status).
    pub bad_chains: AtomicU64,
}

/// Event tokens.
const KICK: u32 = 0;
const STOP: u32 = 1;

/// One disk's I/O thread state.
#[derive(Debug)]
pub struct BlockWorker {
    pub(super) name: String,
    pub(super) mem: GuestMemory,
    pub(super) queue: Queue,
    pub(super) kick: EventFd,
    pub(super) stop: EventFd,
    pub(super) interrupt: Arc<Interrupt>,
    pub(super) disk: Arc<DiskImage>,
    pub(super) serial: [u8; ID_LEN],
    /// The guest's cache mode: true for writeback (flushes on request only).
    pub(super) writeback: Arc<AtomicBool>,
    pub(super) stats: Arc<BlockStats>,
    pub(super) stopped: bool,
}

impl BlockWorker {
    /// Runs until told to stop.
    pub fn run(self) {
        let name = self.name.clone();
        run_until_stopped(&name, self, |w| w.stopped);
    }

    /// Runs every available request; interrupts the guest if it asked.
    pub fn process_queue(&mut self) {
        let mem = self.mem.clone();
        let settings = Settings {
            disk: &self.disk,
            serial: &self.serial,
            write_through: !self.writeback.load(Ordering::Relaxed),
        };
        let mut used_any = false;
        let mut rechecked = false;
        loop {
            let _ = self.queue.disable_notification(&mem);
            while let Some(chain) = self.queue.pop_descriptor_chain(&mem) {
                let head = chain.head_index();
                let len = match Request::parse(&mem, chain) {
                    Ok(request) => {
                        self.stats.requests.fetch_add(1, Ordering::Relaxed);
                        request.execute(&mem, &settings)
                    }
                    Err(e) => {
                        log::debug!("{}: chain {head}: {e}", self.name);
                        self.stats.bad_chains.fetch_add(1, Ordering::Relaxed);
                        0
                    }
                };
                if let Err(e) = self.queue.add_used(&mem, head, len) {
                    log::warn!("{}: used ring: {e}", self.name);
                }
                used_any = true;
                rechecked = false;
            }
            match self.queue.enable_notification(&mem) {
                Ok(false) => break,
                // More arrived meanwhile: once more. A second "more" with
                // nothing to pop is a broken ring index: stop rather than spin.
                Ok(true) if !rechecked => rechecked = true,
                Ok(true) => {
                    log::warn!(
                        "{}: the ring's index is out of range; ignoring it",
                        self.name
                    );
                    break;
                }
                Err(e) => {
                    log::warn!("{}: queue: {e}", self.name);
                    break;
                }
            }
        }
        if used_any && self.queue.needs_notification(&mem).unwrap_or(true) {
            self.interrupt.signal_used_queue(0);
        }
    }
}

impl MutEventSubscriber for BlockWorker {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            KICK => {
                let _ = self.kick.read();
                self.process_queue();
            }
            STOP => {
                let _ = self.stop.read();
                self.stopped = true;
            }
            other => log::warn!("{}: unexpected event {other}", self.name),
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (fd, token) in [(&self.kick, KICK), (&self.stop, STOP)] {
            if let Err(e) = ops.add(Events::with_data(fd, token, EventSet::IN)) {
                log::error!("{}: cannot watch an eventfd: {e:?}", self.name);
            }
        }
        // Requests may have been made before the thread started.
        self.process_queue();
    }
}
