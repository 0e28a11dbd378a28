// SPDX-License-Identifier: Apache-2.0
//! The I/O thread of one disk: waits for queue kicks, runs every request
//! the driver made available, and interrupts the guest once per batch.
//! It takes the image from the disk's [`Backing`] once per batch and
//! follows a swap from the next request on.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use super::backing::Backing;
use super::request::{Request, Settings, ID_LEN};
use crate::virtio::device_thread::run_until_stopped;
use crate::virtio::queue_drain::{drain, signal_used};
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

/// Event token of the queue's kick.
const KICK: u32 = 0;

/// One disk's I/O thread state.
#[derive(Debug)]
pub struct BlockWorker {
    pub(super) name: String,
    pub(super) mem: GuestMemory,
    pub(super) queue: Queue,
    pub(super) kick: EventFd,
    pub(super) interrupt: Arc<Interrupt>,
    pub(super) backing: Arc<Backing>,
    pub(super) serial: [u8; ID_LEN],
    /// The guest's cache mode: true for writeback (flushes on request only).
    pub(super) writeback: Arc<AtomicBool>,
    pub(super) stats: Arc<BlockStats>,
}

impl BlockWorker {
    /// Runs until `stop` is written.
    pub fn run(self, stop: EventFd) {
        let name = self.name.clone();
        run_until_stopped(&name, self, stop);
    }

    /// Runs every available request; interrupts the guest if it asked.
    pub fn process_queue(&mut self) {
        let (name, mem, stats, backing) = (&self.name, &self.mem, &self.stats, &self.backing);
        let (serial, write_through) = (&self.serial, !self.writeback.load(Ordering::Relaxed));
        // Dropped at the end of the batch: between batches the thread
        // holds no image, and a swapped-out one is closed at once.
        let mut image = backing.snapshot();
        let used_any = drain(&mut self.queue, mem, name, "request", |chain| {
            ferry_capture::chain(ferry_capture::Input::Block, &chain);
            let head = chain.head_index();
            match Request::parse(mem, chain) {
                Ok(request) => {
                    stats.requests.fetch_add(1, Ordering::Relaxed);
                    backing.refresh(&mut image);
                    let settings = Settings {
                        disk: &image.disk,
                        serial,
                        write_through,
                    };
                    request.execute(mem, &settings)
                }
                Err(e) => {
                    log::debug!("{name}: chain {head}: {e}");
                    stats.bad_chains.fetch_add(1, Ordering::Relaxed);
                    0
                }
            }
        });
        drop(image);
        if used_any {
            signal_used(&mut self.queue, mem, &self.interrupt, 0, name);
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
            other => log::warn!("{}: unexpected event {other}", self.name),
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(&self.kick, KICK, EventSet::IN)) {
            log::error!("{}: cannot watch an eventfd: {e:?}", self.name);
        }
        // Requests may have been made before the thread started.
        self.process_queue();
    }
}
