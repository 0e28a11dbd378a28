// SPDX-License-Identifier: Apache-2.0
//! The main thread's event loop: console input, host signals, the time
//! limit and the VM's end, all on one event-manager.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use ferry_devices::legacy::I8042;
use ferry_devices::vm_end::{ExitReason, VmEnd};
use vmm_sys_util::timerfd::TimerFd;

use crate::vcpu;

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

/// How the VM is stopped from outside: host signals, the user's time
/// limit, and the grace period of a clean shutdown.
#[derive(Debug, Clone)]
pub struct StopPolicy {
    /// Stop the VM this long after ferry started (`--timeout`).
    pub timeout: Option<Duration>,
    /// When ferry started.
    pub start: Instant,
    /// How long the guest gets to shut down on SIGTERM/SIGINT (0: none).
    pub shutdown_grace: Duration,
}

/// The guest's keyboard controller, to press Ctrl-Alt-Del on: there once
/// the VM is built.
pub type KeyboardSlot = Arc<OnceLock<Arc<Mutex<I8042>>>>;

/// Turns SIGTERM, SIGINT and SIGHUP, the time limit and the end of the
/// grace period into the VM's end. The first SIGTERM or SIGINT asks the
/// guest to shut down (Ctrl-Alt-Del) and arms the grace timer; a second
/// signal, SIGHUP or the timer stops the VM at once.
struct StopWatch {
    signals: OwnedFd,
    timeout: TimerFd,
    grace: TimerFd,
    policy: StopPolicy,
    keyboard: KeyboardSlot,
    vm_end: Arc<VmEnd>,
    /// The signal that started a clean shutdown.
    stopping: Arc<AtomicI32>,
}

/// Blocks the stop signals in this thread (and so in threads it starts
/// later) and returns a signalfd that reads them instead.
fn block_stop_signals() -> std::io::Result<OwnedFd> {
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
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Event tokens of the stop watch.
const SIGNAL: u32 = 0;
const TIMEOUT: u32 = 1;
const GRACE: u32 = 2;

impl StopWatch {
    fn new(
        vm_end: Arc<VmEnd>,
        policy: StopPolicy,
        keyboard: KeyboardSlot,
    ) -> std::io::Result<Self> {
        let signals = block_stop_signals()?;
        let mut timeout = TimerFd::new().map_err(std::io::Error::from)?;
        if let Some(limit) = policy.timeout {
            let left = limit.saturating_sub(policy.start.elapsed());
            // A zero duration would disarm the timer: a nanosecond ends at once.
            timeout
                .reset(left.max(Duration::from_nanos(1)), None)
                .map_err(std::io::Error::from)?;
        }
        Ok(Self {
            signals,
            timeout,
            grace: TimerFd::new().map_err(std::io::Error::from)?,
            policy,
            keyboard,
            vm_end,
            stopping: Arc::new(AtomicI32::new(0)),
        })
    }

    fn read_signal(&self) -> Option<i32> {
        // SAFETY: signalfd_siginfo is plain data.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reads at most `size` bytes into `info`.
        let n = unsafe {
            libc::read(
                self.signals.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        (n as usize == size).then_some(info.ssi_signo as i32)
    }

    fn on_signal(&mut self, sig: i32) {
        let graceful = matches!(sig, libc::SIGTERM | libc::SIGINT)
            && !self.policy.shutdown_grace.is_zero()
            && self.stopping.load(Ordering::SeqCst) == 0;
        if !graceful {
            log::info!("stopping the VM on signal {sig}");
            self.vm_end.request(ExitReason::HostSignal(sig));
            return;
        }
        let listening = self.keyboard.get().is_some_and(|keyboard| {
            keyboard
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .press_ctrl_alt_del()
        });
        if !listening {
            log::warn!("signal {sig}: the guest has no keyboard driver to take Ctrl-Alt-Del; stopping the VM");
            self.vm_end.request(ExitReason::HostSignal(sig));
            return;
        }
        let grace = self.policy.shutdown_grace;
        log::warn!(
            "signal {sig}: asking the guest to shut down (Ctrl-Alt-Del); stopping it in {:.1} s, or at once on a second signal",
            grace.as_secs_f64()
        );
        self.stopping.store(sig, Ordering::SeqCst);
        if let Err(e) = self.grace.reset(grace, None) {
            log::error!("cannot arm the shutdown timer ({e}); stopping the VM");
            self.vm_end.request(ExitReason::HostSignal(sig));
        }
    }
}

impl MutEventSubscriber for StopWatch {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            SIGNAL => {
                if let Some(sig) = self.read_signal() {
                    self.on_signal(sig);
                }
            }
            TIMEOUT => {
                let _ = self.timeout.wait();
                log::warn!("--timeout: the time allowed ran out; stopping the VM");
                self.vm_end.request(ExitReason::Timeout);
            }
            GRACE => {
                let _ = self.grace.wait();
                let sig = self.stopping.load(Ordering::SeqCst);
                log::warn!("the guest did not shut down within the grace period; stopping the VM");
                self.vm_end.request(ExitReason::HostSignal(sig));
            }
            _ => {}
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let watched = [
            ops.add(Events::with_data(&self.signals, SIGNAL, EventSet::IN)),
            ops.add(Events::with_data(&self.timeout, TIMEOUT, EventSet::IN)),
            ops.add(Events::with_data(&self.grace, GRACE, EventSet::IN)),
        ];
        for result in watched {
            if let Err(e) = result {
                log::error!("cannot watch host signals or timers: {e:?}");
            }
        }
    }
}

/// Kicks the vCPUs now and then, so that a guest that halted is noticed.
pub struct HaltWatch {
    timer: TimerFd,
    threads: Vec<libc::pthread_t>,
}

impl std::fmt::Debug for HaltWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HaltWatch")
            .field("vcpus", &self.threads.len())
            .finish()
    }
}

impl HaltWatch {
    /// Probes the vCPU threads `threads` every [`vcpu::HALT_PROBE_INTERVAL`].
    pub fn new(threads: Vec<libc::pthread_t>) -> std::io::Result<Self> {
        let mut timer = TimerFd::new().map_err(std::io::Error::from)?;
        let every = vcpu::HALT_PROBE_INTERVAL;
        timer
            .reset(every, Some(every))
            .map_err(std::io::Error::from)?;
        Ok(Self { timer, threads })
    }
}

impl MutEventSubscriber for HaltWatch {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.timer.wait();
        vcpu::kick(&self.threads);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.timer, EventSet::IN)) {
            log::error!("cannot watch the halt probe timer: {e:?}");
        }
    }
}

/// The main thread's loop.
pub struct EventLoop {
    manager: EventManager<Subscriber>,
    vm_end: Arc<VmEnd>,
    stopping: Arc<AtomicI32>,
    keyboard: KeyboardSlot,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("ended", &self.vm_end.reason())
            .finish()
    }
}

impl EventLoop {
    /// A loop that ends with the VM and stops it as `policy` says. Call
    /// before starting any thread, so that they all inherit the signal
    /// mask and only this loop takes the stop signals.
    pub fn new(vm_end: Arc<VmEnd>, policy: StopPolicy) -> Result<Self, Error> {
        let mut manager = EventManager::<Subscriber>::new().map_err(Error::Create)?;
        manager.add_subscriber(Arc::new(Mutex::new(EndWatch(vm_end.clone()))));
        let keyboard = KeyboardSlot::default();
        let watch =
            StopWatch::new(vm_end.clone(), policy, keyboard.clone()).map_err(Error::Signals)?;
        let stopping = watch.stopping.clone();
        manager.add_subscriber(Arc::new(Mutex::new(watch)));
        Ok(Self {
            manager,
            vm_end,
            stopping,
            keyboard,
        })
    }

    /// Adds a device, console or API subscriber.
    pub fn add(&mut self, subscriber: Subscriber) {
        self.manager.add_subscriber(subscriber);
    }

    /// From now on a stop signal presses Ctrl-Alt-Del on `keyboard` first.
    pub fn set_keyboard(&self, keyboard: Arc<Mutex<I8042>>) {
        let _ = self.keyboard.set(keyboard);
    }

    /// Dispatches one round of events.
    pub fn run_once(&mut self) -> Result<(), Error> {
        self.manager.run().map(|_| ()).map_err(Error::Run)
    }

    /// Why the VM ended, if it has. A guest that shut down because ferry
    /// was asked to stop ends for that signal.
    pub fn ended(&self) -> Option<ExitReason> {
        let reason = self.vm_end.reason()?;
        let sig = self.stopping.load(Ordering::SeqCst);
        Some(match reason {
            ExitReason::PowerOff
            | ExitReason::Halt
            | ExitReason::Reset
            | ExitReason::GuestStatus(_)
                if sig != 0 =>
            {
                log::info!("the guest shut down as asked");
                ExitReason::HostSignal(sig)
            }
            other => other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_devices::irq::IrqLine;

    fn watch(grace: Duration) -> (StopWatch, Arc<VmEnd>) {
        let end = Arc::new(VmEnd::new().unwrap());
        let keyboard = Arc::new(Mutex::new(I8042::new(
            end.clone(),
            IrqLine::new(1).unwrap(),
        )));
        let policy = StopPolicy {
            timeout: None,
            start: Instant::now(),
            shutdown_grace: grace,
        };
        // A driver has set the controller up: command byte, interrupt on.
        {
            let mut kbd = keyboard.lock().unwrap();
            ferry_devices::bus::BusDevice::write(&mut *kbd, 4, &[0x60]);
            ferry_devices::bus::BusDevice::write(&mut *kbd, 0, &[0x05]);
        }
        let slot = KeyboardSlot::default();
        slot.set(keyboard).unwrap();
        (StopWatch::new(end.clone(), policy, slot).unwrap(), end)
    }

    #[test]
    fn sigterm_asks_the_guest_first_and_a_second_signal_stops_it() {
        let (mut w, end) = watch(Duration::from_secs(10));
        w.on_signal(libc::SIGTERM);
        assert!(!end.has_ended(), "the guest gets its grace period");
        assert_eq!(w.stopping.load(Ordering::SeqCst), libc::SIGTERM);
        w.on_signal(libc::SIGINT);
        assert_eq!(end.reason(), Some(ExitReason::HostSignal(libc::SIGINT)));
    }

    #[test]
    fn sighup_or_no_grace_stops_at_once() {
        let (mut w, end) = watch(Duration::from_secs(10));
        w.on_signal(libc::SIGHUP);
        assert_eq!(end.reason(), Some(ExitReason::HostSignal(libc::SIGHUP)));
        let (mut w, end) = watch(Duration::ZERO);
        w.on_signal(libc::SIGTERM);
        assert_eq!(end.reason(), Some(ExitReason::HostSignal(libc::SIGTERM)));
    }

    #[test]
    fn before_the_vm_is_built_a_signal_stops_at_once() {
        let end = Arc::new(VmEnd::new().unwrap());
        let policy = StopPolicy {
            timeout: None,
            start: Instant::now(),
            shutdown_grace: Duration::from_secs(10),
        };
        let mut w = StopWatch::new(end.clone(), policy, KeyboardSlot::default()).unwrap();
        w.on_signal(libc::SIGTERM);
        assert_eq!(end.reason(), Some(ExitReason::HostSignal(libc::SIGTERM)));
    }

    #[test]
    fn a_guest_without_a_keyboard_driver_is_stopped_at_once() {
        let (mut w, end) = watch(Duration::from_secs(10));
        {
            let mut kbd = w.keyboard.get().unwrap().lock().unwrap();
            // The driver disabled the keyboard port (command 0xad).
            ferry_devices::bus::BusDevice::write(&mut *kbd, 4, &[0xad]);
        }
        w.on_signal(libc::SIGTERM);
        assert_eq!(end.reason(), Some(ExitReason::HostSignal(libc::SIGTERM)));
    }
}
