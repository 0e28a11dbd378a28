// SPDX-License-Identifier: Apache-2.0
//! The data path of one card, on its own thread with its own event loop,
//! written once for every backend (see [`super::backend`]): TX chains are
//! popped in batches and handed to the backend as frames; the guest's RX
//! buffers are stocked and filled as the backend reads. When the guest has
//! no RX buffers the backend is left unread (held back, never dropped)
//! until it posts more; when the backend cannot take more the TX ring is
//! left alone until it can. While the guest streams, the TX ring is polled
//! on a short timer instead of the guest notifying each frame.

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::backend::{Backend, RxStop};
use super::relink::Relink;
use super::rx::{self, RxBuffer};
use super::{hdr, NET_HDR_LEN};
use crate::virtio::device_thread::run_until_stopped;
use crate::virtio::queue_drain::{signal_used, RecheckOnce};
use crate::virtio::Interrupt;
use crate::GuestMemory;

/// Index of the receive queue (virtio 1.2, 5.1.2).
const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
const TX_QUEUE: usize = 1;

/// Counters of one card, readable from any thread.
#[derive(Debug, Default)]
pub struct NetStats {
    /// Frames sent to the backend.
    pub tx_frames: AtomicU64,
    /// Bytes of those frames.
    pub tx_bytes: AtomicU64,
    /// Malformed TX chains (consumed, not sent).
    pub tx_errors: AtomicU64,
    /// Frames dropped while the backend was gone.
    pub tx_dropped: AtomicU64,
    /// Frames delivered to the guest.
    pub rx_frames: AtomicU64,
    /// Bytes of those frames.
    pub rx_bytes: AtomicU64,
    /// Malformed RX chains (returned unused).
    pub rx_errors: AtomicU64,
    /// Frames too large for the guest's buffer (without mergeable buffers).
    pub rx_dropped: AtomicU64,
    /// Times the guest ran out of RX buffers (the backend was held back).
    pub rx_waits: AtomicU64,
    /// Times the backend was full (the TX ring was held back).
    pub tx_waits: AtomicU64,
    /// Times a restarted passt's stream was taken up (see [`Relink`]).
    pub relinks: AtomicU64,
}

impl std::fmt::Display for NetStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        write!(
            f,
            "tx {} frames {} bytes ({} bad, {} dropped, {} waits), rx {} frames {} bytes ({} bad, {} dropped, {} waits), {} relinks",
            g(&self.tx_frames),
            g(&self.tx_bytes),
            g(&self.tx_errors),
            g(&self.tx_dropped),
            g(&self.tx_waits),
            g(&self.rx_frames),
            g(&self.rx_bytes),
            g(&self.rx_errors),
            g(&self.rx_dropped),
            g(&self.rx_waits),
            g(&self.relinks),
        )
    }
}

pub(crate) fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// What [`NetWorker::new`] takes.
#[derive(Debug)]
pub struct Parts {
    pub id: usize,
    pub mem: GuestMemory,
    pub rx_queue: Queue,
    pub tx_queue: Queue,
    pub rx_kick: EventFd,
    pub tx_kick: EventFd,
    pub interrupt: Arc<Interrupt>,
    pub link_up: Arc<AtomicBool>,
    pub stats: Arc<NetStats>,
    pub mrg_rxbuf: bool,
    pub data_valid: bool,
    /// The features the driver accepted (a relinked backend is set up for them).
    pub acked: u64,
    /// Where a lost passt is reported and its successor's stream comes in.
    pub relink: Option<Arc<Relink>>,
}

/// Everything but the RX ring side.
#[derive(Debug)]
struct Link<B> {
    id: usize,
    mem: GuestMemory,
    tx_queue: Queue,
    rx_kick: EventFd,
    tx_kick: EventFd,
    backend: Option<B>,
    interrupt: Arc<Interrupt>,
    link_up: Arc<AtomicBool>,
    stats: Arc<NetStats>,
    acked: u64,
    relink: Option<Arc<Relink>>,
}

/// The RX ring and the guest buffers taken from it but not yet filled.
#[derive(Debug)]
pub struct RxSide {
    id: usize,
    queue: Queue,
    stash: VecDeque<RxBuffer>,
    /// Bytes the stashed buffers hold.
    stash_capacity: usize,
    /// Segment lists of used buffers, kept for the next ones: no allocation per buffer.
    spare_segments: Vec<Vec<(GuestAddress, usize)>>,
    /// The used entries of the frame being delivered (kept for its storage).
    used: Vec<(u16, u32)>,
    mrg_rxbuf: bool,
    /// Tell the guest that checksums need no checking (GUEST_CSUM negotiated).
    data_valid: bool,
    stats: Arc<NetStats>,
}

impl RxSide {
    /// Makes sure the stash holds room for `need` bytes (one buffer
    /// without mergeable buffers); false if the guest has not posted enough.
    fn stock(&mut self, mem: &GuestMemory, need: usize) -> bool {
        let mut recheck = RecheckOnce::default();
        loop {
            let have = if self.mrg_rxbuf {
                self.stash_capacity
            } else {
                self.stash.front().map_or(0, |b| b.capacity)
            };
            if have >= need || (!self.mrg_rxbuf && !self.stash.is_empty()) {
                return true;
            }
            let Some(chain) = self.queue.pop_descriptor_chain(mem) else {
                if recheck.look_again(&mut self.queue, mem, &format_args!("net{}", self.id), "RX") {
                    continue;
                }
                return false;
            };
            recheck.made_progress();
            ferry_capture::chain(ferry_capture::Input::NetRx, &chain);
            let segments = self.spare_segments.pop().unwrap_or_default();
            match RxBuffer::from_chain(mem, chain, segments) {
                Ok(buf) => {
                    self.stash_capacity += buf.capacity;
                    self.stash.push_back(buf);
                }
                Err((head, e)) => {
                    log::debug!("net{}: RX chain {head}: {e}", self.id);
                    bump(&self.stats.rx_errors, 1);
                    self.add_used(mem, &[(head, 0)]);
                }
            }
        }
    }

    /// The card's counters.
    pub fn stats(&self) -> &NetStats {
        &self.stats
    }

    /// How many stashed buffers, from the first, hold `need` bytes (one
    /// without mergeable buffers). The stash must have been stocked for it.
    fn buffers_for(&self, need: usize) -> usize {
        if !self.mrg_rxbuf {
            return 1;
        }
        let mut count = 0;
        let mut room = 0;
        while room < need && count < self.stash.len() {
            room += self.stash[count].capacity;
            count += 1;
        }
        count
    }

    /// Offers one frame to the guest, copied behind a header of ferry's.
    pub fn deliver(&mut self, mem: &GuestMemory, frame: &[u8]) -> Delivery {
        let need = NET_HDR_LEN + frame.len();
        if !self.stock(mem, need) {
            return Delivery::NoBuffers;
        }
        let count = self.buffers_for(need);
        let mut used = std::mem::take(&mut self.used);
        used.clear();
        let delivery = if self.stash[0].capacity < need && !self.mrg_rxbuf {
            bump(&self.stats.rx_dropped, 1);
            used.push((self.stash[0].head, 0));
            Delivery::Dropped
        } else {
            rx::write_frame(
                mem,
                self.stash.range(..count),
                frame,
                self.data_valid,
                &mut used,
            );
            bump(&self.stats.rx_frames, 1);
            bump(&self.stats.rx_bytes, frame.len() as u64);
            Delivery::Delivered
        };
        self.complete(mem, used, count);
        delivery
    }

    /// Lets `read` write one frame, virtio-net header first, straight into
    /// the guest's buffers: it gets their segments, room for `max` bytes
    /// (header included) when the guest has posted that much (with
    /// mergeable buffers; else the first buffer), and returns how many
    /// bytes it wrote. ferry sets only the header's `num_buffers`.
    /// `Err` is `read`'s own error: no buffer is used then.
    pub fn read_into(
        &mut self,
        mem: &GuestMemory,
        max: usize,
        read: impl FnOnce(&[libc::iovec]) -> io::Result<usize>,
    ) -> io::Result<Delivery> {
        if !self.stock(mem, max) {
            return Ok(Delivery::NoBuffers);
        }
        let count = self.buffers_for(max);
        let mut iov = Vec::with_capacity(count * 2);
        for buf in self.stash.range(..count) {
            for &(addr, len) in buf.segments() {
                // The range was checked when the buffer was taken.
                let Some(host) = mem.get_host_address(addr).ok() else {
                    continue;
                };
                iov.push(libc::iovec {
                    iov_base: host.cast(),
                    iov_len: len,
                });
            }
        }
        let n = read(&iov)?;
        let mut used = std::mem::take(&mut self.used);
        used.clear();
        let mut left = n;
        let mut filled = 0;
        for buf in self.stash.range(..count) {
            if left == 0 && filled > 0 {
                break;
            }
            let len = left.min(buf.capacity);
            used.push((buf.head, len as u32));
            left -= len;
            filled += 1;
        }
        let delivery = if n < NET_HDR_LEN {
            // Not even a header: the buffer goes back empty.
            used.truncate(1);
            used[0].1 = 0;
            bump(&self.stats.rx_errors, 1);
            Delivery::Dropped
        } else {
            self.stash[0].write_at(mem, hdr::NUM_BUFFERS, &(filled as u16).to_le_bytes());
            bump(&self.stats.rx_frames, 1);
            bump(&self.stats.rx_bytes, (n - NET_HDR_LEN) as u64);
            Delivery::Delivered
        };
        let filled = used.len();
        self.complete(mem, used, filled);
        Ok(delivery)
    }

    /// Puts the entries of one frame in the used ring and drops the first
    /// `count` buffers from the stash.
    fn complete(&mut self, mem: &GuestMemory, used: Vec<(u16, u32)>, count: usize) {
        self.add_used(mem, &used);
        self.used = used;
        for buf in self.stash.drain(..count) {
            self.stash_capacity -= buf.capacity;
            if self.spare_segments.len() < SPARE_SEGMENT_LISTS {
                self.spare_segments.push(buf.into_segments());
            }
        }
    }

    fn add_used(&mut self, mem: &GuestMemory, used: &[(u16, u32)]) {
        for &(head, len) in used {
            if let Err(e) = self.queue.add_used(mem, head, len) {
                log::warn!("net{}: RX used ring: {e}", self.id);
            }
        }
    }
}

/// Entry points for the fuzz targets in `fuzz/`: an RX side without a
/// data path, and a look at the buffers it took.
#[cfg(fuzzing)]
impl RxSide {
    /// An RX side over `queue`, as [`NetWorker::new`] makes it.
    pub fn for_fuzzing(queue: Queue, mrg_rxbuf: bool, data_valid: bool) -> Self {
        Self {
            id: 0,
            queue,
            stash: VecDeque::new(),
            stash_capacity: 0,
            spare_segments: Vec::new(),
            used: Vec::new(),
            mrg_rxbuf,
            data_valid,
            stats: Arc::new(NetStats::default()),
        }
    }

    /// Takes buffers from the ring until they hold `need` bytes, as
    /// [`RxSide::deliver`] does first; false if the guest has not posted enough.
    pub fn stock_for_fuzzing(&mut self, mem: &GuestMemory, need: usize) -> bool {
        self.stock(mem, need)
    }

    /// The buffers taken from the ring and not yet used, in order.
    pub fn stash_for_fuzzing(&self) -> Vec<RxBuffer> {
        self.stash.iter().cloned().collect()
    }

    /// The bytes those buffers hold, as the RX side counts them.
    pub fn stash_capacity_for_fuzzing(&self) -> usize {
        self.stash_capacity
    }

    /// The RX queue.
    pub fn queue_for_fuzzing(&self) -> &Queue {
        &self.queue
    }
}

/// Event tokens.
const RX_KICK: u32 = 0;
const TX_KICK: u32 = 1;
const BACKEND: u32 = 2;
const TX_POLL: u32 = 3;
const RELINK: u32 = 4;

/// While the guest streams, the TX ring is looked at again this long after
/// it ran empty, instead of asking the guest to notify: each notification
/// is a VM exit on the guest's side, a look is one timer wake-up here for
/// however many frames came meanwhile.
const TX_POLL_DELAY: Duration = Duration::from_micros(200);

/// The guest streams when the TX ring runs empty again less than this after
/// it last did (small frames back to back: UDP, or TCP at full rate). An
/// occasional frame (an ACK, a ping) keeps its notification: it would
/// otherwise wait for the timer.
const TX_STREAMING_GAP: Duration = Duration::from_micros(400);

/// The TX poll timer, non-blocking: a TX round may re-arm it between its
/// expiry and the event's handling, which clears the expiry, and reading it
/// then must not wait for the next one.
fn tx_poll_timer() -> io::Result<TimerFd> {
    let timer = TimerFd::new().map_err(io::Error::from)?;
    // SAFETY: fcntl on a descriptor the timer owns; it only sets a status flag.
    if unsafe { libc::fcntl(timer.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(timer)
}

/// Whether the guest streams, the TX ring having run empty at `now` and
/// before that at `last` (see [`TX_STREAMING_GAP`]).
fn tx_streaming(last: Option<Instant>, now: Instant) -> bool {
    last.is_some_and(|last| now.saturating_duration_since(last) < TX_STREAMING_GAP)
}

/// Most TX chains gathered for one round of writes.
const TX_BATCH: usize = 64;

/// Most frame bytes gathered for one round of writes: a little more than a
/// UNIX socket's default send buffer (208 KiB), so that a writable socket is
/// still filled in one round, while the chains a full socket leaves over
/// (put back, parsed and their checksums completed again next round) stay few.
const TX_BATCH_BYTES: usize = 256 * 1024;

/// Most segment lists kept for reuse: one per entry of the largest RX ring.
const SPARE_SEGMENT_LISTS: usize = 256;

/// Outcome of offering one frame to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Copied into the guest's buffers.
    Delivered,
    /// No room: the frame stays with the backend.
    NoBuffers,
    /// The guest's buffer is too small for it (no mergeable buffers): dropped.
    Dropped,
}

/// One card's data path over a backend `B`.
#[derive(Debug)]
pub struct NetWorker<B: Backend> {
    p: Link<B>,
    /// The TX chain (head, frame length) whose frame the backend holds,
    /// started but not finished: it is used once the rest is out.
    tx_started: Option<(u16, usize)>,
    rx: RxSide,
    rx_blocked: bool,
    tx_blocked: bool,
    interest: EventSet,
    /// Wakes the data path to look at the TX ring while the guest streams
    /// (none if the timer could not be made: then every frame is notified).
    tx_poll: Option<TimerFd>,
    /// When the TX ring last ran empty after frames were sent.
    tx_emptied: Option<Instant>,
}

impl<B: Backend> NetWorker<B> {
    /// A data path over `parts` and `backend` (none: the link is down).
    pub fn new(parts: Parts, backend: Option<B>) -> Self {
        Self {
            tx_started: None,
            rx: RxSide {
                id: parts.id,
                queue: parts.rx_queue,
                stash: VecDeque::new(),
                stash_capacity: 0,
                spare_segments: Vec::new(),
                used: Vec::new(),
                mrg_rxbuf: parts.mrg_rxbuf,
                data_valid: parts.data_valid,
                stats: parts.stats.clone(),
            },
            rx_blocked: false,
            tx_blocked: false,
            interest: EventSet::empty(),
            tx_poll: tx_poll_timer()
                .map_err(|e| log::warn!("net{}: no TX poll timer: {e}", parts.id))
                .ok(),
            tx_emptied: None,
            p: Link {
                id: parts.id,
                mem: parts.mem,
                tx_queue: parts.tx_queue,
                rx_kick: parts.rx_kick,
                tx_kick: parts.tx_kick,
                backend,
                interrupt: parts.interrupt,
                link_up: parts.link_up,
                stats: parts.stats,
                acked: parts.acked,
                relink: parts.relink,
            },
        }
    }

    /// Runs until `stop` is written; hands the backend back (if it still
    /// works), with the frames read from it and not yet delivered.
    pub fn run(self, stop: EventFd) -> Option<B> {
        let name = format!("net{}", self.p.id);
        let worker = run_until_stopped(&name, self, stop)?;
        let id = worker.p.id;
        let mut backend = worker.p.backend?;
        if backend.finish() {
            Some(backend)
        } else {
            log::warn!(
                "net{id}: {} did not take the rest of a frame; closing it",
                backend.describe()
            );
            None
        }
    }

    /// The backend broke: the link goes down, the guest is told, the VM runs on.
    fn backend_lost(&mut self, why: &str, ops: &mut EventOps) {
        if let Some(backend) = self.p.backend.take() {
            log::warn!(
                "net{}: {} connection lost ({why}); link down",
                self.p.id,
                backend.describe()
            );
            let _ = ops.remove(Events::empty(&backend));
            self.interest = EventSet::empty();
        }
        self.tx_blocked = false;
        if self.p.link_up.swap(false, Ordering::SeqCst) {
            self.p.interrupt.signal_config_change();
        }
        if let Some(relink) = &self.p.relink {
            relink.report_lost();
        }
        // Whatever the guest queued for sending is dropped, so that it does not stall.
        self.process_tx(ops);
    }

    /// Takes up a stream to a restarted passt, if one was handed in: the
    /// old backend (if it still seemed alive) is dropped with a frame it
    /// held, the new one watched, and the link reported up.
    fn take_relinked(&mut self, ops: &mut EventOps) {
        let Some(stream) = self.p.relink.as_ref().and_then(|r| r.take()) else {
            return;
        };
        let Some(mut backend) = B::relinked(stream) else {
            return;
        };
        if let Err(e) = backend.activate(self.p.acked) {
            log::error!(
                "net{}: cannot set up the new {}: {e}",
                self.p.id,
                backend.describe()
            );
            return;
        }
        if let Some(old) = self.p.backend.take() {
            let _ = ops.remove(Events::empty(&old));
        }
        let mem = self.p.mem.clone();
        if let Some((head, _)) = self.tx_started.take() {
            // Its first part went to the old stream: the frame is lost.
            self.add_used_tx(&mem, head);
            bump(&self.p.stats.tx_dropped, 1);
            self.notify(&mem, TxOrRx::Tx);
        }
        log::info!("net{}: {} relinked; link up", self.p.id, backend.describe());
        bump(&self.p.stats.relinks, 1);
        self.p.backend = Some(backend);
        self.interest = EventSet::empty();
        self.rx_blocked = false;
        self.tx_blocked = false;
        if !self.p.link_up.swap(true, Ordering::SeqCst) {
            self.p.interrupt.signal_config_change();
        }
        self.update_interest(ops);
        self.process_tx(ops);
        self.process_rx(ops);
    }

    /// Sends the guest's frames to the backend.
    fn process_tx(&mut self, ops: &mut EventOps) {
        let mem = self.p.mem.clone();
        let mut used_any = false;
        let mut recheck = RecheckOnce::default();
        let mut sent_any = false;
        loop {
            let Some(backend) = self.p.backend.as_mut() else {
                used_any |= self.drop_tx(&mem);
                break;
            };
            match backend.flush() {
                Ok(true) => {
                    if let Some((head, len)) = self.tx_started.take() {
                        self.tx_sent(&mem, head, len);
                        used_any = true;
                    }
                }
                Ok(false) => {
                    self.tx_blocked = true;
                    bump(&self.p.stats.tx_waits, 1);
                    break;
                }
                Err(e) => {
                    self.backend_lost(&format!("write: {e}"), ops);
                    return;
                }
            }
            // Gather a batch of well-formed chains, in ring order.
            let mut heads = Vec::new();
            let mut lens = Vec::new();
            let mut frames: Vec<B::Frame> = Vec::new();
            if let Err(e) = self.p.tx_queue.disable_notification(&mem) {
                log::debug!("net{}: {e}", self.p.id);
            }
            let mut batch_bytes = 0;
            while frames.len() < TX_BATCH && batch_bytes < TX_BATCH_BYTES {
                let Some(chain) = self.p.tx_queue.pop_descriptor_chain(&mem) else {
                    break;
                };
                recheck.made_progress();
                ferry_capture::chain(ferry_capture::Input::NetTx, &chain);
                let head = chain.head_index();
                let backend = self.p.backend.as_ref().expect("checked above");
                match backend.frame_of_chain(&mem, chain) {
                    Ok((frame, len)) => {
                        batch_bytes += len;
                        heads.push(head);
                        lens.push(len);
                        frames.push(frame);
                    }
                    // A bad chain after good ones waits for the next round, so
                    // that a rewind over unsent frames never crosses a used chain.
                    Err(_) if !frames.is_empty() => {
                        self.rewind_tx(1);
                        break;
                    }
                    Err(e) => {
                        log::debug!("net{}: TX chain {head}: {e}", self.p.id);
                        bump(&self.p.stats.tx_errors, 1);
                        self.add_used_tx(&mem, head);
                        used_any = true;
                    }
                }
            }
            if frames.is_empty() && sent_any {
                let now = Instant::now();
                let streaming = tx_streaming(self.tx_emptied.replace(now), now);
                if let (true, Some(timer)) = (streaming, self.tx_poll.as_mut()) {
                    // Notifications stay off (with EVENT_IDX the guest
                    // notifies only past the index last asked for).
                    match timer.reset(TX_POLL_DELAY, None) {
                        Ok(()) => break,
                        Err(e) => log::warn!("net{}: TX poll timer: {e}", self.p.id),
                    }
                }
            }
            if frames.is_empty() {
                if recheck.look_again(
                    &mut self.p.tx_queue,
                    &mem,
                    &format_args!("net{}", self.p.id),
                    "TX",
                ) {
                    continue;
                }
                break;
            }
            let backend = self.p.backend.as_mut().expect("checked above");
            let written = match backend.send(frames) {
                Ok(written) => written,
                Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                    // Cannot happen: chain lengths were checked; drop the batch rather than loop.
                    log::warn!("net{}: {e}", self.p.id);
                    for head in &heads {
                        self.add_used_tx(&mem, *head);
                    }
                    bump(&self.p.stats.tx_errors, heads.len() as u64);
                    used_any = true;
                    continue;
                }
                Err(e) => {
                    // Put the unsent chains back before the link goes down (they are dropped there).
                    self.rewind_tx(heads.len());
                    self.backend_lost(&format!("write: {e}"), ops);
                    return;
                }
            };
            for (head, len) in heads.iter().zip(&lens).take(written.whole) {
                self.tx_sent(&mem, *head, *len);
            }
            used_any |= written.whole > 0;
            sent_any |= written.whole > 0;
            let mut unsent = heads.len() - written.whole;
            if written.started {
                self.tx_started = Some((heads[written.whole], lens[written.whole]));
                unsent -= 1;
            }
            if unsent > 0 || written.started {
                self.rewind_tx(unsent);
                self.tx_blocked = true;
                bump(&self.p.stats.tx_waits, 1);
                break;
            }
            self.tx_blocked = false;
        }
        if used_any {
            self.notify(&mem, TxOrRx::Tx);
        }
        self.update_interest(ops);
    }

    /// Gives back the last `n` chains popped from the TX ring.
    fn rewind_tx(&mut self, n: usize) {
        let next = self.p.tx_queue.next_avail().wrapping_sub(n as u16);
        self.p.tx_queue.set_next_avail(next);
    }

    /// A TX chain's frame is out whole: the chain is used and counted.
    fn tx_sent(&mut self, mem: &GuestMemory, head: u16, len: usize) {
        self.add_used_tx(mem, head);
        bump(&self.p.stats.tx_frames, 1);
        bump(&self.p.stats.tx_bytes, len as u64);
    }

    /// Without a backend, TX chains (one the backend held included) are consumed and dropped.
    fn drop_tx(&mut self, mem: &GuestMemory) -> bool {
        let mut any = false;
        if let Some((head, _)) = self.tx_started.take() {
            self.add_used_tx(mem, head);
            bump(&self.p.stats.tx_dropped, 1);
            any = true;
        }
        while let Some(chain) = self.p.tx_queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            self.add_used_tx(mem, head);
            bump(&self.p.stats.tx_dropped, 1);
            any = true;
        }
        any
    }

    fn add_used_tx(&mut self, mem: &GuestMemory, head: u16) {
        if let Err(e) = self.p.tx_queue.add_used(mem, head, 0) {
            log::warn!("net{}: TX used ring: {e}", self.p.id);
        }
    }

    fn notify(&mut self, mem: &GuestMemory, which: TxOrRx) {
        let (queue, index) = match which {
            TxOrRx::Tx => (&mut self.p.tx_queue, TX_QUEUE),
            TxOrRx::Rx => (&mut self.rx.queue, RX_QUEUE),
        };
        signal_used(
            queue,
            mem,
            &self.p.interrupt,
            index,
            &format_args!("net{}", self.p.id),
        );
    }

    /// Moves frames from the backend into the guest.
    fn process_rx(&mut self, ops: &mut EventOps) {
        let mem = self.p.mem.clone();
        let Some(backend) = self.p.backend.as_mut() else {
            return;
        };
        let (delivered, stop) = backend.receive(&mem, &mut self.rx);
        match stop {
            RxStop::Drained => {}
            RxStop::NoBuffers => {
                log::trace!("net{}: RX waits for guest buffers", self.p.id);
                if !self.rx_blocked {
                    bump(&self.p.stats.rx_waits, 1);
                }
                self.rx_blocked = true;
            }
            RxStop::Lost(why) => self.backend_lost(&why, ops),
        }
        if delivered {
            self.notify(&mem, TxOrRx::Rx);
        }
        self.update_interest(ops);
    }

    /// Watches the backend for what the data path waits on.
    fn update_interest(&mut self, ops: &mut EventOps) {
        let Some(backend) = self.p.backend.as_ref() else {
            return;
        };
        let mut want = EventSet::READ_HANG_UP;
        if !self.rx_blocked {
            want |= EventSet::IN;
        }
        if self.tx_blocked {
            want |= EventSet::OUT;
        }
        if want == self.interest {
            return;
        }
        let events = Events::with_data(backend, BACKEND, want);
        let result = if self.interest.is_empty() {
            ops.add(events)
        } else {
            ops.modify(events)
        };
        match result {
            Ok(()) => self.interest = want,
            Err(e) => log::error!(
                "net{}: cannot watch the {}: {e:?}",
                self.p.id,
                backend.describe()
            ),
        }
    }
}

#[derive(Clone, Copy)]
enum TxOrRx {
    Tx,
    Rx,
}

impl<B: Backend> MutEventSubscriber for NetWorker<B> {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            RX_KICK => {
                let _ = self.p.rx_kick.read();
                log::trace!("net{}: RX kick", self.p.id);
                self.rx_blocked = false;
                self.process_rx(ops);
            }
            TX_KICK => {
                let _ = self.p.tx_kick.read();
                self.process_tx(ops);
            }
            BACKEND => {
                let set = events.event_set();
                log::trace!("net{}: backend events {set:?}", self.p.id);
                if set.contains(EventSet::OUT) {
                    self.process_tx(ops);
                }
                if set.intersects(
                    EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR,
                ) {
                    // Reading tells EOF and errors apart from data.
                    self.process_rx(ops);
                    if self.rx_blocked && set.intersects(EventSet::HANG_UP | EventSet::ERROR) {
                        self.backend_lost("hang-up", ops);
                    }
                }
            }
            RELINK => self.take_relinked(ops),
            TX_POLL => {
                if let Some(timer) = self.tx_poll.as_mut() {
                    // Clears the expiry (nothing to read if a TX round re-armed it).
                    let _ = timer.wait();
                }
                self.process_tx(ops);
            }
            other => log::warn!("net{}: unexpected event {other}", self.p.id),
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (fd, token) in [(&self.p.rx_kick, RX_KICK), (&self.p.tx_kick, TX_KICK)] {
            if let Err(e) = ops.add(Events::with_data(fd, token, EventSet::IN)) {
                log::error!("net{}: cannot watch an eventfd: {e:?}", self.p.id);
            }
        }
        if let Some(timer) = self.tx_poll.as_ref() {
            if let Err(e) = ops.add(Events::with_data(timer, TX_POLL, EventSet::IN)) {
                log::warn!("net{}: cannot watch the TX poll timer: {e:?}", self.p.id);
                self.tx_poll = None;
            }
        }
        if let Some(relink) = self.p.relink.clone() {
            if let Err(e) = ops.add(Events::with_data(relink.ready(), RELINK, EventSet::IN)) {
                log::error!(
                    "net{}: cannot watch for a restarted passt: {e:?}",
                    self.p.id
                );
            }
        }
        if self.p.backend.is_none() && self.p.link_up.swap(false, Ordering::SeqCst) {
            self.p.interrupt.signal_config_change();
        }
        // A passt restarted while no data path ran.
        self.take_relinked(ops);
        // RX notifications only when the guest's buffers run out.
        let _ = self.rx.queue.disable_notification(&self.p.mem);
        self.update_interest(ops);
        // Frames or chains may have been waiting since before a reset.
        self.process_tx(ops);
        self.process_rx(ops);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::IrqLine;
    use crate::virtio::net::backend::passt::FINISH_TIMEOUT;
    use crate::virtio::net::backend::Passt;
    use ferry_net_passt::PREFIX_LEN;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};
    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn the_ring_streams_only_when_it_ran_empty_twice_in_quick_succession() {
        let now = Instant::now();
        assert!(!tx_streaming(None, now), "a first frame is notified");
        assert!(tx_streaming(Some(now - TX_STREAMING_GAP / 2), now));
        assert!(!tx_streaming(Some(now - TX_STREAMING_GAP), now));
        assert!(!tx_streaming(Some(now - Duration::from_millis(5)), now));
    }

    #[test]
    fn reading_a_poll_timer_that_has_not_fired_does_not_wait() {
        let mut timer = tx_poll_timer().unwrap();
        timer.reset(Duration::from_secs(60), None).unwrap();
        let started = Instant::now();
        assert!(timer.wait().is_err(), "nothing to read yet");
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    const NEXT: u16 = 1;
    const WRITE: u16 = 2;

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    /// A worker on its own thread, with mock rings in `mem` and passt's end of the socket.
    struct Harness {
        mem: GuestMemory,
        rx_kick: EventFd,
        tx_kick: EventFd,
        stop: EventFd,
        irq: EventFd,
        peer: UnixStream,
        link_up: Arc<AtomicBool>,
        stats: Arc<NetStats>,
        relink: Arc<Relink>,
        rx_used: u64,
        tx_used: u64,
        thread: Option<std::thread::JoinHandle<Option<Passt>>>,
    }

    const RX_RING: GuestAddress = GuestAddress(0x1_0000);
    const TX_RING: GuestAddress = GuestAddress(0x2_0000);

    type Mock<'a> = MockSplitQueue<'a, GuestMemory>;

    /// The RX and TX rings, 16 entries each.
    fn rings(mem: &GuestMemory) -> (Mock<'_>, Mock<'_>) {
        (
            Mock::create(mem, RX_RING, 16),
            Mock::create(mem, TX_RING, 16),
        )
    }

    fn harness(mem: &GuestMemory, rxq: &Mock, txq: &Mock, mrg_rxbuf: bool) -> Harness {
        let (ours, peer) = UnixStream::pair().unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        harness_on(mem, rxq, txq, mrg_rxbuf, Passt::new(ours), peer)
    }

    /// A worker over a `backend` an earlier one handed back; `peer` is passt's end.
    fn harness_on(
        mem: &GuestMemory,
        rxq: &Mock,
        txq: &Mock,
        mrg_rxbuf: bool,
        backend: Passt,
        peer: UnixStream,
    ) -> Harness {
        let line = IrqLine::new(5).unwrap();
        let irq = line.event().try_clone().unwrap();
        let h = Harness {
            mem: mem.clone(),
            rx_kick: EventFd::new(EFD_NONBLOCK).unwrap(),
            tx_kick: EventFd::new(EFD_NONBLOCK).unwrap(),
            stop: EventFd::new(EFD_NONBLOCK).unwrap(),
            irq,
            peer,
            link_up: Arc::new(AtomicBool::new(true)),
            stats: Arc::new(NetStats::default()),
            relink: Arc::new(Relink::new().unwrap()),
            rx_used: rxq.used_addr().0,
            tx_used: txq.used_addr().0,
            thread: None,
        };
        let mut backend = backend;
        backend.activate(0).unwrap();
        let worker = NetWorker::new(
            Parts {
                id: 0,
                mem: mem.clone(),
                rx_queue: rxq.create_queue().unwrap(),
                tx_queue: txq.create_queue().unwrap(),
                rx_kick: h.rx_kick.try_clone().unwrap(),
                tx_kick: h.tx_kick.try_clone().unwrap(),
                interrupt: Arc::new(Interrupt::new(line)),
                link_up: h.link_up.clone(),
                stats: h.stats.clone(),
                mrg_rxbuf,
                data_valid: false,
                acked: 0,
                relink: Some(h.relink.clone()),
            },
            Some(backend),
        );
        let stop = h.stop.try_clone().unwrap();
        Harness {
            thread: Some(std::thread::spawn(move || worker.run(stop))),
            ..h
        }
    }

    impl Harness {
        /// Writes a length no frame has into passt's stream and waits for
        /// the data path to take the link down.
        fn garble_and_wait_for_link_down(&self) {
            (&self.peer).write_all(&[0, 0, 0, 1, 0xde, 0xad]).unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.link_up.load(Ordering::SeqCst) {
                assert!(Instant::now() < deadline, "the link should go down");
                std::thread::sleep(Duration::from_millis(5));
            }
        }

        /// Where the mock queue at `ring` keeps its used ring.
        fn used_ring(&self, ring: GuestAddress) -> u64 {
            if ring == RX_RING {
                self.rx_used
            } else {
                self.tx_used
            }
        }

        fn used_idx(&self, ring: GuestAddress) -> u16 {
            let used = self.used_ring(ring);
            self.mem.read_obj::<u16>(GuestAddress(used + 2)).unwrap()
        }

        fn used_len(&self, ring: GuestAddress, slot: u64) -> u32 {
            let used = self.used_ring(ring);
            self.mem
                .read_obj::<u32>(GuestAddress(used + 4 + 8 * slot + 4))
                .unwrap()
        }

        fn wait_used(&self, ring: GuestAddress, idx: u16) {
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.used_idx(ring) < idx {
                assert!(
                    Instant::now() < deadline,
                    "used index stuck at {}",
                    self.used_idx(ring)
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }

        /// Stops the worker; the backend it hands back.
        fn finish(mut self) -> Option<Passt> {
            self.stop.write(1).unwrap();
            self.thread.take().unwrap().join().unwrap()
        }
    }

    fn memory() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
    }

    #[test]
    fn tx_frame_goes_out_prefixed_without_its_header() {
        let mem = memory();
        let (rxq, txq) = rings(&mem);
        let h = harness(&mem, &rxq, &txq, true);
        let frame: Vec<u8> = (0..60u8).collect();
        mem.write_slice(&[0u8; NET_HDR_LEN], GuestAddress(0x10_0000))
            .unwrap();
        mem.write_slice(&frame[..20], GuestAddress(0x10_0000 + NET_HDR_LEN as u64))
            .unwrap();
        mem.write_slice(&frame[20..], GuestAddress(0x11_0000))
            .unwrap();
        txq.add_desc_chains(
            &[
                desc(0x10_0000, (NET_HDR_LEN + 20) as u32, NEXT, 1),
                desc(0x11_0000, 40, 0, 0),
            ],
            0,
        )
        .unwrap();
        h.tx_kick.write(1).unwrap();
        let mut got = vec![0u8; 4 + 60];
        (&h.peer).read_exact(&mut got).unwrap();
        assert_eq!(&got[..4], &60u32.to_be_bytes());
        assert_eq!(&got[4..], &frame[..]);
        h.wait_used(TX_RING, 1);
        assert_eq!(h.stats.tx_frames.load(Ordering::Relaxed), 1);
        assert!(
            h.irq.read().is_ok(),
            "the guest is interrupted for used TX buffers"
        );
        assert!(
            h.finish().is_some(),
            "the backend comes back when the worker stops"
        );
    }

    /// Frames of [`BIG`] bytes, [`BIG_COUNT`] of them: more than the socket takes while passt does not read.
    const BIG: usize = 60_000;
    const BIG_COUNT: u16 = 8;

    /// The bytes of big frame `i`.
    fn big_frame(i: u16) -> Vec<u8> {
        (0..BIG).map(|b| (b as u8) ^ (i as u8)).collect()
    }

    /// Queues the big frames on the TX ring, kicks, and waits until the
    /// socket is full; returns the bytes queued in it for passt.
    fn fill_socket(mem: &GuestMemory, txq: &Mock, h: &Harness) -> usize {
        let frame_at = |i: u16| 0x10_0000 + u64::from(i) * 0x1_0000;
        let mut chains = Vec::new();
        for i in 0..BIG_COUNT {
            mem.write_slice(&[0u8; NET_HDR_LEN], GuestAddress(frame_at(i)))
                .unwrap();
            mem.write_slice(
                &big_frame(i),
                GuestAddress(frame_at(i) + NET_HDR_LEN as u64),
            )
            .unwrap();
            // One descriptor each: a chain per frame.
            chains.push(desc(frame_at(i), (NET_HDR_LEN + BIG) as u32, 0, 0));
        }
        txq.build_multiple_desc_chains(&chains).unwrap();
        h.tx_kick.write(1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while h.stats.tx_waits.load(Ordering::Relaxed) == 0 {
            assert!(Instant::now() < deadline, "the socket never filled");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(50));
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int, to `queued`.
        let rc = unsafe { libc::ioctl(h.peer.as_raw_fd(), libc::FIONREAD, &mut queued) };
        assert_eq!(rc, 0);
        queued as usize
    }

    /// Checks that `got` is big frame `i` with its length prefix.
    fn check_big_frame(got: &[u8], i: u16) {
        assert_eq!(&got[..PREFIX_LEN], &(BIG as u32).to_be_bytes());
        assert!(got[PREFIX_LEN..] == big_frame(i)[..], "frame {i} garbled");
    }

    /// Reads big frame `i` as passt would, and checks it.
    fn read_big_frame(peer: &UnixStream, i: u16) {
        let mut got = vec![0u8; PREFIX_LEN + BIG];
        (&*peer).read_exact(&mut got).unwrap();
        check_big_frame(&got, i);
    }

    #[test]
    fn a_frame_passt_takes_in_part_is_used_only_once_its_rest_is_out() {
        let mem = memory();
        let (rxq, txq) = rings(&mem);
        let h = harness(&mem, &rxq, &txq, true);
        let queued = fill_socket(&mem, &txq, &h);
        let used = h.used_idx(TX_RING);
        assert!(used < BIG_COUNT);
        assert!(
            usize::from(used) * (PREFIX_LEN + BIG) <= queued,
            "{used} chains used, but only {queued} bytes are in the socket"
        );
        // passt reads: every frame arrives whole and in order, and every chain is used.
        for i in 0..BIG_COUNT {
            read_big_frame(&h.peer, i);
        }
        h.wait_used(TX_RING, BIG_COUNT);
        assert_eq!(
            h.stats.tx_frames.load(Ordering::Relaxed),
            u64::from(BIG_COUNT)
        );
        assert!(h.finish().is_some());
    }

    #[test]
    fn a_stopping_data_path_finishes_its_started_frame_or_drops_the_stream() {
        // passt reads on: the stream is handed back ending on a frame boundary.
        let mem = memory();
        let (rxq, txq) = rings(&mem);
        let mut h = harness(&mem, &rxq, &txq, true);
        let queued = fill_socket(&mem, &txq, &h);
        assert_ne!(queued % (PREFIX_LEN + BIG), 0, "a frame is started");
        // passt reads everything that comes, until the stream stays quiet.
        let reader = h.peer.try_clone().unwrap();
        reader
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let reading = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut chunk = vec![0u8; 64 * 1024];
            while let Ok(n @ 1..) = (&reader).read(&mut chunk) {
                got.extend_from_slice(&chunk[..n]);
            }
            got
        });
        h.stop.write(1).unwrap();
        let handed_back = h.thread.take().unwrap().join().unwrap();
        assert!(handed_back.is_some(), "the stream is handed back");
        let got = reading.join().unwrap();
        assert!(got.len() > queued, "the started frame's rest came");
        assert_eq!(
            got.len() % (PREFIX_LEN + BIG),
            0,
            "the stream ends on a frame boundary"
        );
        for (i, frame) in got.chunks(PREFIX_LEN + BIG).enumerate() {
            assert_eq!(&frame[..PREFIX_LEN], &(BIG as u32).to_be_bytes());
            assert!(
                frame[PREFIX_LEN..] == big_frame(i as u16)[..],
                "frame {i} garbled"
            );
        }

        // passt does not read: the stream is dropped rather than handed on torn.
        let mem = memory();
        let (rxq, txq) = rings(&mem);
        let h = harness(&mem, &rxq, &txq, true);
        fill_socket(&mem, &txq, &h);
        let started = Instant::now();
        assert!(h.finish().is_none());
        assert!(started.elapsed() < FINISH_TIMEOUT * 4);
    }

    #[test]
    fn a_partial_checksum_is_completed_without_writing_guest_memory() {
        let mem = memory();
        let (rxq, txq) = rings(&mem);
        let h = harness(&mem, &rxq, &txq, true);
        // NEEDS_CSUM, csum_start 4, csum_offset 2: the sum of bytes 4.. goes at 6..8.
        let mut hdr = [0u8; NET_HDR_LEN];
        hdr[0] = 1;
        hdr[6..8].copy_from_slice(&4u16.to_le_bytes());
        hdr[8..10].copy_from_slice(&2u16.to_le_bytes());
        let frame: Vec<u8> = (1..=20u8).collect();
        mem.write_slice(&hdr, GuestAddress(0x10_0000)).unwrap();
        mem.write_slice(&frame, GuestAddress(0x11_0000)).unwrap();
        txq.add_desc_chains(
            &[
                desc(0x10_0000, NET_HDR_LEN as u32, NEXT, 1),
                desc(0x11_0000, 20, 0, 0),
            ],
            0,
        )
        .unwrap();
        h.tx_kick.write(1).unwrap();
        let mut got = vec![0u8; 4 + 20];
        (&h.peer).read_exact(&mut got).unwrap();
        let sent = &got[4..];
        assert_eq!(sent[..6], frame[..6]);
        assert_eq!(sent[8..], frame[8..]);
        // Receiver's check: bytes 4.. with the checksum in place, plus the
        // pseudo-header sum the guest had left in the field (bytes 7, 8 here),
        // sum to all ones.
        let mut acc = u32::from(u16::from_be_bytes([frame[6], frame[7]]));
        for pair in sent[4..].chunks(2) {
            acc += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
        }
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        assert_eq!(acc, 0xffff);
        let mut after = vec![0u8; 20];
        mem.read_slice(&mut after, GuestAddress(0x11_0000)).unwrap();
        assert_eq!(after, frame, "the guest's buffer is only read");
        h.wait_used(TX_RING, 1);
        h.finish();
    }

    #[test]
    fn checksum_or_segmentation_requests_that_cannot_be_met_are_malformed() {
        let mem = memory();
        let (rxq, txq) = rings(&mem);
        let h = harness(&mem, &rxq, &txq, true);
        let mut outside = [0u8; NET_HDR_LEN];
        outside[0] = 1;
        outside[6..8].copy_from_slice(&60u16.to_le_bytes());
        outside[8..10].copy_from_slice(&u16::MAX.to_le_bytes());
        let mut gso = [0u8; NET_HDR_LEN];
        gso[1] = 1;
        mem.write_slice(&outside, GuestAddress(0x10_0000)).unwrap();
        mem.write_slice(&gso, GuestAddress(0x12_0000)).unwrap();
        txq.add_desc_chains(
            &[
                desc(0x10_0000, (NET_HDR_LEN + 64) as u32, 0, 0),
                desc(0x12_0000, (NET_HDR_LEN + 64) as u32, 0, 0),
            ],
            0,
        )
        .unwrap();
        h.tx_kick.write(1).unwrap();
        h.wait_used(TX_RING, 2);
        assert_eq!(h.stats.tx_errors.load(Ordering::Relaxed), 2);
        assert_eq!(h.stats.tx_frames.load(Ordering::Relaxed), 0);
        h.finish();
    }

    #[test]
    fn malformed_tx_chains_are_consumed_and_counted() {
        let mem = memory();
        let (rxq, txq) = rings(&mem);
        let h = harness(&mem, &rxq, &txq, true);
        txq.add_desc_chains(
            &[
                // Device-writable: not a TX buffer.
                desc(0x10_0000, 100, WRITE, 0),
                // Outside guest memory.
                desc(0x4000_0000, 100, 0, 0),
                // Header only: a frame of zero bytes.
                desc(0x10_0000, NET_HDR_LEN as u32, 0, 0),
            ],
            0,
        )
        .unwrap();
        h.tx_kick.write(1).unwrap();
        h.wait_used(TX_RING, 3);
        assert_eq!(h.stats.tx_errors.load(Ordering::Relaxed), 3);
        assert_eq!(h.stats.tx_frames.load(Ordering::Relaxed), 0);
        assert!(
            h.link_up.load(Ordering::SeqCst),
            "bad guest buffers do not take the link down"
        );
        h.finish();
    }

    #[test]
    fn a_bad_chain_between_good_frames_is_used_once() {
        let mem = memory();
        let (rxq, txq) = rings(&mem);
        let h = harness(&mem, &rxq, &txq, true);
        mem.write_slice(&[0u8; 80], GuestAddress(0x10_0000))
            .unwrap();
        txq.add_desc_chains(
            &[
                desc(0x10_0000, 80, 0, 0),
                desc(0x10_0000, 80, WRITE, 0),
                desc(0x10_0000, 80, 0, 0),
            ],
            0,
        )
        .unwrap();
        h.tx_kick.write(1).unwrap();
        let mut got = vec![0u8; 2 * (4 + 68)];
        (&h.peer).read_exact(&mut got).unwrap();
        h.wait_used(TX_RING, 3);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(h.used_idx(TX_RING), 3, "each chain used exactly once");
        assert_eq!(h.stats.tx_frames.load(Ordering::Relaxed), 2);
        assert_eq!(h.stats.tx_errors.load(Ordering::Relaxed), 1);
        h.finish();
    }

    #[test]
    fn rx_frames_wait_for_guest_buffers_then_arrive_whole() {
        let mem = memory();
        let (rxq, txq) = rings(&mem);
        let h = harness(&mem, &rxq, &txq, true);
        let frame: Vec<u8> = (0..100u8).collect();
        let mut wire = 100u32.to_be_bytes().to_vec();
        wire.extend_from_slice(&frame);
        (&h.peer).write_all(&wire).unwrap();
        // No buffers yet: held back, not dropped.
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(h.used_idx(RX_RING), 0);
        // Two small buffers: with mergeable buffers the frame spans both.
        rxq.add_desc_chains(
            &[desc(0x20_0000, 64, WRITE, 0), desc(0x21_0000, 64, WRITE, 0)],
            0,
        )
        .unwrap();
        h.rx_kick.write(1).unwrap();
        h.wait_used(RX_RING, 2);
        assert_eq!((h.used_len(RX_RING, 0), h.used_len(RX_RING, 1)), (64, 48));
        let mut hdr = [0u8; NET_HDR_LEN];
        mem.read_slice(&mut hdr, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 2, "num_buffers");
        let mut got = vec![0u8; 100];
        mem.read_slice(&mut got[..52], GuestAddress(0x20_0000 + NET_HDR_LEN as u64))
            .unwrap();
        mem.read_slice(&mut got[52..], GuestAddress(0x21_0000))
            .unwrap();
        assert_eq!(got, frame);
        assert_eq!(h.stats.rx_frames.load(Ordering::Relaxed), 1);
        h.finish();
    }

    #[test]
    fn a_frame_cut_by_a_reset_reaches_the_next_data_path_whole() {
        let mem = memory();
        let (rxq, txq) = rings(&mem);
        let h = harness(&mem, &rxq, &txq, true);
        let first: Vec<u8> = (0..200u8).collect();
        let second: Vec<u8> = (0..50u8).rev().collect();
        let mut wire = Vec::new();
        for frame in [&first, &second] {
            wire.extend_from_slice(&(frame.len() as u32).to_be_bytes());
            wire.extend_from_slice(frame);
        }
        // No guest buffers: the worker reads the stream up to the middle of
        // the first frame and holds it. Then the device is reset.
        let cut = PREFIX_LEN + 120;
        (&h.peer).write_all(&wire[..cut]).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(h.used_idx(RX_RING), 0);
        let peer = h.peer.try_clone().unwrap();
        let backend = h.finish().expect("the stream is handed back");

        // The next data path (the driver set the device up again) goes on
        // from the middle of the frame: both frames arrive whole.
        let (rxq, txq) = rings(&mem);
        rxq.add_desc_chains(
            &[
                desc(0x20_0000, 4096, WRITE, 0),
                desc(0x21_0000, 4096, WRITE, 0),
            ],
            0,
        )
        .unwrap();
        let h = harness_on(&mem, &rxq, &txq, true, backend, peer);
        (&h.peer).write_all(&wire[cut..]).unwrap();
        h.wait_used(RX_RING, 2);
        for (slot, (addr, frame)) in [(0x20_0000, &first), (0x21_0000, &second)]
            .into_iter()
            .enumerate()
        {
            assert_eq!(
                h.used_len(RX_RING, slot as u64) as usize,
                NET_HDR_LEN + frame.len()
            );
            let mut got = vec![0u8; frame.len()];
            mem.read_slice(&mut got, GuestAddress(addr + NET_HDR_LEN as u64))
                .unwrap();
            assert_eq!(&got, frame);
        }
        assert!(h.link_up.load(Ordering::SeqCst), "the link stays up");
        h.finish();
    }

    #[test]
    fn buffers_left_over_by_one_frame_serve_the_next() {
        let mem = memory();
        let (rxq, txq) = rings(&mem);
        let h = harness(&mem, &rxq, &txq, true);
        // Three buffers of 64 bytes; two frames needing two buffers each.
        rxq.add_desc_chains(
            &[
                desc(0x20_0000, 64, WRITE, 0),
                desc(0x21_0000, 64, WRITE, 0),
                desc(0x22_0000, 64, WRITE, 0),
            ],
            0,
        )
        .unwrap();
        h.rx_kick.write(1).unwrap();
        let frames: Vec<Vec<u8>> = (0..2u8).map(|f| vec![f + 1; 100]).collect();
        let mut wire = Vec::new();
        for frame in &frames {
            wire.extend_from_slice(&100u32.to_be_bytes());
            wire.extend_from_slice(frame);
        }
        (&h.peer).write_all(&wire).unwrap();
        h.wait_used(RX_RING, 2);
        // The second frame waits with one buffer in hand, and takes the next.
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(h.used_idx(RX_RING), 2);
        rxq.add_desc_chains(&[desc(0x23_0000, 64, WRITE, 0)], 3)
            .unwrap();
        h.rx_kick.write(1).unwrap();
        h.wait_used(RX_RING, 4);
        assert_eq!((h.used_len(RX_RING, 2), h.used_len(RX_RING, 3)), (64, 48));
        let mut got = vec![0u8; 100];
        mem.read_slice(&mut got[..52], GuestAddress(0x22_0000 + NET_HDR_LEN as u64))
            .unwrap();
        mem.read_slice(&mut got[52..], GuestAddress(0x23_0000))
            .unwrap();
        assert_eq!(got, frames[1]);
        // A small frame then fits one buffer.
        rxq.add_desc_chains(&[desc(0x24_0000, 64, WRITE, 0)], 4)
            .unwrap();
        h.rx_kick.write(1).unwrap();
        let mut wire = 40u32.to_be_bytes().to_vec();
        wire.extend_from_slice(&[9; 40]);
        (&h.peer).write_all(&wire).unwrap();
        h.wait_used(RX_RING, 5);
        assert_eq!(h.used_len(RX_RING, 4), (NET_HDR_LEN + 40) as u32);
        assert_eq!(h.stats.rx_frames.load(Ordering::Relaxed), 3);
        h.finish();
    }

    #[test]
    fn a_garbled_stream_takes_the_link_down_and_the_vm_runs_on() {
        let mem = memory();
        let (rxq, txq) = rings(&mem);
        let h = harness(&mem, &rxq, &txq, true);
        h.garble_and_wait_for_link_down();
        // The socket is closed: passt would see its end.
        let mut buf = [0u8; 1];
        assert_eq!((&h.peer).read(&mut buf).unwrap(), 0);
        // Frames the guest sends now are consumed and dropped, not stuck.
        mem.write_slice(&[0u8; 80], GuestAddress(0x10_0000))
            .unwrap();
        txq.add_desc_chains(&[desc(0x10_0000, 80, 0, 0)], 0)
            .unwrap();
        h.tx_kick.write(1).unwrap();
        h.wait_used(TX_RING, 1);
        assert_eq!(h.stats.tx_dropped.load(Ordering::Relaxed), 1);
        assert!(h.finish().is_none(), "a broken backend is not handed back");
    }

    #[test]
    fn a_lost_passt_is_reported_and_its_successor_brings_the_link_back() {
        let mem = memory();
        let (rxq, txq) = rings(&mem);
        let h = harness(&mem, &rxq, &txq, true);
        h.garble_and_wait_for_link_down();
        let deadline = Instant::now() + Duration::from_secs(5);
        assert_eq!(h.relink.lost().read().unwrap(), 1, "the loss is reported");
        assert_eq!(h.stats.relinks.load(Ordering::Relaxed), 0);
        // A new passt's stream: the link comes back up.
        let (ours, peer) = UnixStream::pair().unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        h.relink.relink(ours);
        while !h.link_up.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "the link should come back up");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(h.stats.relinks.load(Ordering::Relaxed), 1);
        // Frames flow both ways over it.
        rxq.add_desc_chains(&[desc(0x20_0000, 2048, WRITE, 0)], 0)
            .unwrap();
        h.rx_kick.write(1).unwrap();
        let mut wire = 60u32.to_be_bytes().to_vec();
        wire.extend(std::iter::repeat_n(5u8, 60));
        (&peer).write_all(&wire).unwrap();
        h.wait_used(RX_RING, 1);
        assert_eq!(h.used_len(RX_RING, 0), (NET_HDR_LEN + 60) as u32);
        let mut frame = vec![0u8; NET_HDR_LEN];
        frame.extend(std::iter::repeat_n(3u8, 80));
        mem.write_slice(&frame, GuestAddress(0x10_0000)).unwrap();
        txq.add_desc_chains(&[desc(0x10_0000, frame.len() as u32, 0, 0)], 0)
            .unwrap();
        h.tx_kick.write(1).unwrap();
        let mut got = [0u8; 84];
        (&peer).read_exact(&mut got).unwrap();
        assert_eq!(got[..4], 80u32.to_be_bytes());
        assert!(got[4..].iter().all(|&b| b == 3));
        h.finish();
    }

    #[test]
    fn without_mergeable_buffers_a_frame_too_big_for_its_buffer_is_dropped() {
        let mem = memory();
        let (rxq, txq) = rings(&mem);
        let h = harness(&mem, &rxq, &txq, false);
        let mut wire = 200u32.to_be_bytes().to_vec();
        wire.extend(std::iter::repeat_n(7u8, 200));
        wire.extend(20u32.to_be_bytes());
        wire.extend(std::iter::repeat_n(9u8, 20));
        (&h.peer).write_all(&wire).unwrap();
        rxq.add_desc_chains(
            &[desc(0x20_0000, 64, WRITE, 0), desc(0x21_0000, 64, WRITE, 0)],
            0,
        )
        .unwrap();
        h.rx_kick.write(1).unwrap();
        h.wait_used(RX_RING, 2);
        assert_eq!((h.used_len(RX_RING, 0), h.used_len(RX_RING, 1)), (0, 32));
        assert_eq!(h.stats.rx_dropped.load(Ordering::Relaxed), 1);
        assert_eq!(h.stats.rx_frames.load(Ordering::Relaxed), 1);
        h.finish();
    }
}
