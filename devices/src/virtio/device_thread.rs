// SPDX-License-Identifier: Apache-2.0
//! The data-path thread of a virtio device: its own event loop, started on
//! activation, stopped through an eventfd and joined on reset or drop.

use std::thread::JoinHandle;

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::eventfd::EventFd;

/// Stack of this thread: smaller than a 2 MiB huge page, so that with
/// transparent huge pages always on the host never backs it with one
/// (a default 2 MiB stack that lands aligned costs 2 MiB of RSS).
const THREAD_STACK: usize = 256 * 1024;

/// A running device thread.
#[derive(Debug)]
pub struct DeviceThread<T> {
    stop: EventFd,
    thread: JoinHandle<T>,
}

impl<T: Send + 'static> DeviceThread<T> {
    /// Starts `body` on a thread called `name`; `stop` is the eventfd its
    /// loop watches to end.
    pub fn spawn(
        name: String,
        stop: EventFd,
        body: impl FnOnce() -> T + Send + 'static,
    ) -> std::io::Result<Self> {
        let thread = std::thread::Builder::new()
            .name(name)
            .stack_size(THREAD_STACK)
            .spawn(body)?;
        Ok(Self { stop, thread })
    }

    /// Tells the thread to stop and waits for it; `None` if it panicked.
    pub fn stop(self) -> Option<T> {
        let _ = self.stop.write(1);
        self.thread.join().ok()
    }
}

/// Runs `subscriber` on an event loop of its own until `stopped` says so
/// (or the loop fails); hands the subscriber back.
pub fn run_until_stopped<S: MutEventSubscriber>(
    name: &str,
    subscriber: S,
    stopped: impl Fn(&S) -> bool,
) -> Option<S> {
    let mut manager = match EventManager::<S>::new() {
        Ok(m) => m,
        Err(e) => {
            log::error!("{name}: cannot create the event loop: {e:?}");
            return Some(subscriber);
        }
    };
    let sub = manager.add_subscriber(subscriber);
    loop {
        if let Err(e) = manager.run() {
            log::error!("{name}: event loop failed: {e:?}");
            break;
        }
        match manager.subscriber_mut(sub) {
            Ok(s) if !stopped(s) => {}
            _ => break,
        }
    }
    manager.remove_subscriber(sub).ok()
}
