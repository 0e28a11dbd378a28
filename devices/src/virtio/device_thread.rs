// SPDX-License-Identifier: Apache-2.0
//! The data-path thread of a virtio device. The thread is started with
//! its device, while ferry builds the VM: a thread started later, from a
//! vCPU that activates the device, would run under the vCPU's seccomp
//! filter as well as its own (filters stack), so it is started early,
//! installs its own filter and waits. On activation it is handed a body
//! to run with an event loop of its own; the body ends when the stop
//! eventfd is written (on reset, or when the device is dropped), hands
//! back what it holds, and the thread waits for the next activation. The
//! loop watches the stop eventfd itself: a device's event handler sees
//! only its own events.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use ferry_confine::seccomp::ThreadKind;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::ActivateError;

pub use ferry_net_passt::THREAD_STACK;

/// The event token of the stop eventfd in [`run_until_stopped`]'s loop;
/// a device's own events must use others.
pub const STOP_TOKEN: u32 = u32::MAX;

/// What the thread runs on activation.
type Body<T> = Box<dyn FnOnce(EventFd) -> T + Send>;

/// A body handed to the thread, and the eventfd it ends on.
struct Job<T> {
    body: Body<T>,
    stop: EventFd,
}

/// The waiting thread: where jobs go, where their results come back.
struct Parked<T> {
    jobs: Sender<Job<T>>,
    /// What each job handed back; `None` if it panicked.
    results: Receiver<Option<T>>,
    thread: JoinHandle<()>,
}

/// A device's data-path thread: started (and confined) with the device,
/// running a body from activation until reset, stopped for good when
/// dropped with its device. `T` is what a body hands back when it ends
/// (the device's backend, for one).
pub struct DeviceThread<T> {
    name: String,
    parked: Option<Parked<T>>,
    /// The stop eventfd of the body running now, if one runs.
    running: Option<EventFd>,
}

impl<T> std::fmt::Debug for DeviceThread<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceThread")
            .field("name", &self.name)
            .field("started", &self.parked.is_some())
            .field("running", &self.running.is_some())
            .finish()
    }
}

impl<T: Send + 'static> DeviceThread<T> {
    /// Starts the thread `name`, under the seccomp filter of `kind`'s
    /// threads, waiting for [`start`](Self::start). A thread that cannot be
    /// started is logged, and its device's activation fails.
    pub fn new(name: String, kind: ThreadKind) -> Self {
        let (jobs, job_queue) = mpsc::channel::<Job<T>>();
        let (result_tx, results) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name(name.clone())
            .stack_size(THREAD_STACK)
            .spawn(move || {
                // A thread that cannot be confined runs nothing: the
                // device's activation finds it gone.
                if let Err(e) = ferry_confine::seccomp::enter(kind) {
                    log::error!("{}: {e}", std::thread::current().name().unwrap_or("device"));
                    return;
                }
                while let Ok(Job { body, stop }) = job_queue.recv() {
                    let result = std::panic::catch_unwind(AssertUnwindSafe(|| body(stop))).ok();
                    if result_tx.send(result).is_err() {
                        break;
                    }
                }
            });
        let parked = match spawned {
            Ok(thread) => Some(Parked {
                jobs,
                results,
                thread,
            }),
            Err(e) => {
                log::error!("{name}: cannot start the device thread: {e}");
                None
            }
        };
        Self {
            name,
            parked,
            running: None,
        }
    }

    /// Runs `body` on the thread (stopping the body that still runs
    /// first); `body` gets the eventfd to end on, for [`run_until_stopped`].
    pub fn start(
        &mut self,
        body: impl FnOnce(EventFd) -> T + Send + 'static,
    ) -> Result<(), ActivateError> {
        self.stop();
        let gone = || ActivateError::Worker(std::io::Error::other("the device thread is gone"));
        let parked = self.parked.as_ref().ok_or_else(gone)?;
        let stop = EventFd::new(EFD_NONBLOCK).map_err(ActivateError::Worker)?;
        let thread_stop = stop.try_clone().map_err(ActivateError::Worker)?;
        parked
            .jobs
            .send(Job {
                body: Box::new(body),
                stop: thread_stop,
            })
            .map_err(|_| gone())?;
        self.running = Some(stop);
        Ok(())
    }
}

impl<T> DeviceThread<T> {
    /// Tells the running body to stop and waits for it; what it handed
    /// back, or `None` if none runs or it panicked (logged).
    pub fn stop(&mut self) -> Option<T> {
        let stop = self.running.take()?;
        let _ = stop.write(1);
        match self.parked.as_ref()?.results.recv() {
            Ok(Some(handed_back)) => Some(handed_back),
            Ok(None) => {
                log::error!("{}: the device thread panicked", self.name);
                None
            }
            Err(_) => None,
        }
    }
}

impl<T> Drop for DeviceThread<T> {
    fn drop(&mut self) {
        self.stop();
        if let Some(Parked { jobs, thread, .. }) = self.parked.take() {
            // No more jobs: the thread leaves its wait and ends.
            drop(jobs);
            let _ = thread.join();
        }
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
        let mut thread = DeviceThread::new("test-dev".into(), ThreadKind::Block);
        assert!(thread.stop().is_none(), "none runs yet");
        thread
            .start(move |stop| {
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
        let mut thread = DeviceThread::new("test-dev".into(), ThreadKind::Block);
        let flag = ended.clone();
        thread
            .start(move |stop| {
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

        let mut thread = DeviceThread::<()>::new("test-dev".into(), ThreadKind::Block);
        thread.start(|_| panic!("on purpose")).unwrap();
        assert!(thread.stop().is_none());
        // The thread survives its body's panic: it runs the next one.
        thread.start(|_| ()).unwrap();
        assert_eq!(thread.stop(), Some(()));
    }
}
