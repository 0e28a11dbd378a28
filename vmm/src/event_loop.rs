// SPDX-License-Identifier: Apache-2.0
//! The main thread's event loop: console input, host signals and the
//! VM's end, all on one event-manager.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use ferry_devices::vm_end::{ExitReason, VmEnd};

/// A subscriber the loop can hold.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Errors of the event loop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Creating the epoll instance failed.
    #[error("cannot create the event loop")]
    Create(#[source] event_manager::Error),
    /// Waiting for events failed.
    #[error("the event loop failed")]
    Run(#[source] event_manager::Error),
    /// Setting up the signal descriptor failed.
    #[error("cannot watch host signals")]
    Signals(#[source] std::io::Error),
}

/// Wakes the loop when the VM ends.
struct EndWatch(Arc<VmEnd>);

impl MutEventSubscriber for EndWatch {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.event().read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.0.event(), EventSet::IN)) {
            log::error!("cannot watch the VM's end: {e:?}");
        }
    }
}

/// The signals that stop ferry.
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// Turns SIGTERM, SIGINT and SIGHUP into the VM's end.
struct SignalWatch {
    fd: OwnedFd,
    vm_end: Arc<VmEnd>,
}

impl SignalWatch {
    /// Blocks the stop signals in this thread (and so in threads it starts
    /// later) and reads them from a signalfd instead.
    fn new(vm_end: Arc<VmEnd>) -> std::io::Result<Self> {
        // SAFETY: sigset_t is plain data, initialised by sigemptyset.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t for each call.
        unsafe {
            libc::sigemptyset(&mut set);
            for sig in STOP_SIGNALS {
                libc::sigaddset(&mut set, sig);
            }
        }
        // SAFETY: `set` is valid; the old mask is not needed.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        // SAFETY: `set` is valid; -1 asks for a new descriptor.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: signalfd returned a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd, vm_end })
    }
}

impl MutEventSubscriber for SignalWatch {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // SAFETY: signalfd_siginfo is plain data.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reads at most `size` bytes into `info`.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        if n as usize == size {
            let sig = info.ssi_signo as i32;
            log::info!("stopping the VM on signal {sig}");
            self.vm_end.request(ExitReason::HostSignal(sig));
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.fd, EventSet::IN)) {
            log::error!("cannot watch host signals: {e:?}");
        }
    }
}

/// The main thread's loop.
pub struct EventLoop {
    manager: EventManager<Subscriber>,
    vm_end: Arc<VmEnd>,
}

impl EventLoop {
    /// A loop that ends with the VM and turns stop signals into its end.
    /// Call before starting vCPU threads, so that they inherit the signal mask.
    pub fn new(vm_end: Arc<VmEnd>) -> Result<Self, Error> {
        let mut manager = EventManager::<Subscriber>::new().map_err(Error::Create)?;
        manager.add_subscriber(Arc::new(Mutex::new(EndWatch(vm_end.clone()))));
        let signals = SignalWatch::new(vm_end.clone()).map_err(Error::Signals)?;
        manager.add_subscriber(Arc::new(Mutex::new(signals)));
        Ok(Self { manager, vm_end })
    }

    /// Adds a device or console subscriber.
    pub fn add(&mut self, subscriber: Subscriber) {
        self.manager.add_subscriber(subscriber);
    }

    /// Dispatches events until the VM ends; returns why it ended.
    pub fn run(&mut self) -> Result<ExitReason, Error> {
        loop {
            if let Some(reason) = self.vm_end.reason() {
                return Ok(reason);
            }
            self.manager.run().map_err(Error::Run)?;
        }
    }
}
