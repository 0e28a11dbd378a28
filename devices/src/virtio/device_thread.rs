// SPDX-License-Identifier: Apache-2.0
//! The data-path thread of a virtio device: started on activation with an
//! event loop of its own, stopped through an eventfd and joined on reset
//! or when the device is dropped. The loop watches the stop eventfd
//! itself: a device's event handler sees only its own events.

use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use ferry_confine::seccomp::ThreadKind;

use super::ActivateError;

pub use ferry_net_passt::THREAD_STACK;

/// The event token of the stop eventfd in [`run_until_stopped`]'s loop;
/// a device's own events must use others.
pub const STOP_TOKEN: u32 = u32::MAX;

/// A started thread and the eventfd that tells it to stop.
#[derive(Debug)]
struct Running<T> {
    stop: EventFd,
    /// What the thread hands back; `None` if it could not be confined.
    thread: JoinHandle<Option<T>>,
}

/// A device's data-path thread, if it runs: started on activation,
/// stopped on reset, and stopped when dropped with its device. `T` is what
/// the thread hands back when it ends (the device's backend, for one).
#[derive(Debug)]
pub struct DeviceThread<T> {
    running: Option<Running<T>>,
}

impl<T> Default for DeviceThread<T> {
    fn default() -> Self {
        Self { running: None }
    }
}

impl<T: Send + 'static> DeviceThread<T> {
    /// Starts `body` on a thread called `name` (stopping one that still
    /// runs first), under the seccomp filter of `kind`'s threads; `body`
    /// gets the eventfd to end on, for [`run_until_stopped`].
    pub fn start(
        &mut self,
        name: String,
        kind: ThreadKind,
        body: impl FnOnce(EventFd) -> T + Send + 'static,
    ) -> Result<(), ActivateError> {
        self.stop();
        let stop = EventFd::new(EFD_NONBLOCK).map_err(ActivateError::Worker)?;
        let thread_stop = stop.try_clone().map_err(ActivateError::Worker)?;
        let thread = std::thread::Builder::new()
            .name(name)
            .stack_size(THREAD_STACK)
            .spawn(move || {
                // A thread that cannot be confined does not run: the
                // device stays without its data path, and says so.
                match ferry_confine::seccomp::enter(kind) {
                    Ok(()) => Some(body(thread_stop)),
                    Err(e) => {
                        log::error!("{}: {e}", std::thread::current().name().unwrap_or("device"));
                        None
                    }
                }
            })
            .map_err(ActivateError::Worker)?;
        self.running = Some(Running { stop, thread });
        Ok(())
    }
}

impl<T> DeviceThread<T> {
    /// Tells the thread to stop and waits for it; what it handed back, or
    /// `None` if none runs or it panicked (logged).
    pub fn stop(&mut self) -> Option<T> {
        let Running { stop, thread } = self.running.take()?;
        let _ = stop.write(1);
        let name = thread.thread().name().unwrap_or("device").to_owned();
        match thread.join() {
            Ok(handed_back) => handed_back,
            Err(_) => {
                log::error!("{name}: the device thread panicked");
                None
            }
        }
    }
}

impl<T> Drop for DeviceThread<T> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A device's event handler, and the stop eventfd its loop watches.
struct UntilStopped<S> {
    name: String,
    device: S,
    stop: EventFd,
    stopped: bool,
}

impl<S: MutEventSubscriber> MutEventSubscriber for UntilStopped<S> {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.data() == STOP_TOKEN {
            let _ = self.stop.read();
            self.stopped = true;
        } else {
            self.device.process(events, ops);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(&self.stop, STOP_TOKEN, EventSet::IN)) {
            log::error!("{}: cannot watch an eventfd: {e:?}", self.name);
        }
        self.device.init(ops);
    }
}

/// Runs `device`'s event handler on an event loop of its own until `stop`
/// is written (or the loop fails); hands the handler back. Its events must
/// not use [`STOP_TOKEN`].
pub fn run_until_stopped<S: MutEventSubscriber>(name: &str, device: S, stop: EventFd) -> Option<S> {
    let mut manager = match EventManager::<UntilStopped<S>>::new() {
        Ok(m) => m,
        Err(e) => {
            log::error!("{name}: cannot create the event loop: {e:?}");
            return Some(device);
        }
    };
    let sub = manager.add_subscriber(UntilStopped {
        name: name.to_owned(),
        device,
        stop,
        stopped: false,
    });
    loop {
        if let Err(e) = manager.run() {
            log::error!("{name}: event loop failed: {e:?}");
            break;
        }
        match manager.subscriber_mut(sub) {
            Ok(s) if !s.stopped => {}
            _ => break,
        }
    }
    manager.remove_subscriber(sub).ok().map(|s| s.device)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::*;

    /// Counts the events of one eventfd of its own.
    struct Counter {
        kick: EventFd,
        kicks: u32,
    }

    impl MutEventSubscriber for Counter {
        fn process(&mut self, _events: Events, _ops: &mut EventOps) {
            let _ = self.kick.read();
            self.kicks += 1;
        }

        fn init(&mut self, ops: &mut EventOps) {
            ops.add(Events::with_data(&self.kick, 0, EventSet::IN))
                .unwrap();
        }
    }

    #[test]
    fn a_started_thread_runs_until_stopped_and_hands_back_its_result() {
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        let counter = Counter {
            kick: kick.try_clone().unwrap(),
            kicks: 0,
        };
        // A kick from before the start is seen before (or with) the stop.
        kick.write(1).unwrap();
        let mut thread = DeviceThread::default();
        assert!(thread.stop().is_none(), "none runs yet");
        thread
            .start("test-dev".into(), ThreadKind::Block, move |stop| {
                assert_eq!(std::thread::current().name(), Some("test-dev"));
                run_until_stopped("test-dev", counter, stop).map(|c| c.kicks)
            })
            .unwrap();
        assert_eq!(thread.stop(), Some(Some(1)));
        assert!(thread.stop().is_none(), "stopped once");
    }

    #[test]
    fn dropping_the_device_stops_its_thread_and_a_panic_is_no_result() {
        let ended = Arc::new(AtomicBool::new(false));
        let mut thread = DeviceThread::default();
        let flag = ended.clone();
        thread
            .start("test-dev".into(), ThreadKind::Block, move |stop| {
                let counter = Counter {
                    kick: EventFd::new(EFD_NONBLOCK).unwrap(),
                    kicks: 0,
                };
                run_until_stopped("test-dev", counter, stop);
                flag.store(true, Ordering::SeqCst);
            })
            .unwrap();
        drop(thread);
        assert!(ended.load(Ordering::SeqCst));

        let mut thread = DeviceThread::<()>::default();
        thread
            .start("test-dev".into(), ThreadKind::Block, |_| {
                panic!("on purpose")
            })
            .unwrap();
        assert!(thread.stop().is_none());
    }
}
