// SPDX-License-Identifier: Apache-2.0
//! Keeps a card's passt running. When passt exits or its stream breaks,
//! the card's data path takes the link down and says so
//! ([`Relink::lost`]); the keeper, on a thread of its own, stops what is
//! left of that passt, starts a new one with the same configuration on a
//! new socket pair and hands the card the new stream ([`Relink::relink`]):
//! the link comes back up and the guest's new connections work. A passt
//! that dies again and again soon after it starts is given up after
//! [`GIVE_UP_AFTER`] such deaths in a row (logged): the card stays down
//! and the VM runs on.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ferry_devices::virtio::net::Relink;
use ferry_net_passt::{Passt, PasstConfig, THREAD_STACK};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// A restarted passt that ends sooner than this after it started died
/// "at once" (the first passt's death never counts: it served the VM
/// since it booted).
const QUICK_DEATH: Duration = Duration::from_secs(2);
/// Quick deaths in a row (failed starts included) after which passt is given up.
pub const GIVE_UP_AFTER: u32 = 3;
/// The wait before a restart; doubled for each quick death before it.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// How often the keeper also looks whether passt has exited (the data
/// path notices only while the guest's driver runs it).
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// The running passt: its process, a handle on ferry's end of its socket
/// (shut down at the end, so that passt leaves on its own), and when it started.
struct Running {
    passt: Passt,
    socket: UnixStream,
    since: Instant,
}

impl Running {
    /// Closes the link and makes sure passt has gone; its status.
    fn stop(mut self) -> Option<ExitStatus> {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        self.passt.stop()
    }
}

/// The keeper of one card's passt.
#[derive(Debug)]
pub struct PasstKeeper {
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl PasstKeeper {
    /// Keeps `passt` (started with `config`, `socket` a handle on ferry's
    /// end of its stream) running for card `card`, whose [`Relink`] is `relink`.
    pub fn start(
        card: usize,
        config: PasstConfig,
        passt: Passt,
        socket: UnixStream,
        relink: Arc<Relink>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        let running = Running {
            passt,
            socket,
            since: Instant::now(),
        };
        let keeper = Keeper {
            card,
            config,
            relink,
            stop: stop.clone(),
            restarts: AtomicU64::new(0),
        };
        let thread = std::thread::Builder::new()
            .name(format!("passt-keeper{card}"))
            .stack_size(THREAD_STACK)
            .spawn(move || keeper.run(running))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops keeping passt, and stops the passt running (once the card's
    /// data path is stopped, so that it does not see its link go).
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for PasstKeeper {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The keeper's thread.
struct Keeper {
    card: usize,
    config: PasstConfig,
    relink: Arc<Relink>,
    stop: Arc<EventFd>,
    /// How many times passt was restarted (logged at the end).
    restarts: AtomicU64,
}

impl Keeper {
    fn run(self, running: Running) {
        let card = self.card;
        let mut current = Some(running);
        let mut quick_deaths = 0u32;
        while let Some(woke) = self.wait(LOOK_EVERY) {
            let lost = woke && self.relink.lost().read().is_ok();
            let exited = current.as_mut().is_some_and(|r| r.passt.exited().is_some());
            if !lost && !exited {
                continue;
            }
            let Some(old) = current.take() else {
                // Given up already: the card stays down.
                continue;
            };
            let (pid, lived) = (old.passt.pid(), old.since.elapsed());
            let status = old.stop();
            log::warn!(
                "net{card}: passt (pid {pid}) is gone ({}) after {:.1} s; restarting it",
                describe(status),
                lived.as_secs_f64()
            );
            let restarted = self.restarts.load(Ordering::Relaxed) > 0;
            quick_deaths = if restarted && lived < QUICK_DEATH {
                quick_deaths + 1
            } else {
                0
            };
            current = self.restart(&mut quick_deaths);
            if current.is_none() && quick_deaths >= GIVE_UP_AFTER {
                log::error!(
                    "net{card}: passt died {quick_deaths} times in a row within {} s of starting; \
                     giving up: the card stays down, the VM runs on",
                    QUICK_DEATH.as_secs()
                );
            }
            if current.is_none() && quick_deaths < GIVE_UP_AFTER {
                // Stopped while restarting.
                break;
            }
        }
        if let Some(running) = current {
            match running.stop() {
                Some(status) if !status.success() && status.signal().is_none() => {
                    log::warn!("passt exited with {status}")
                }
                Some(_) => log::debug!("passt has exited"),
                None => log::error!("passt would not exit"),
            }
        }
        let restarts = self.restarts.load(Ordering::Relaxed);
        if restarts > 0 {
            log::info!("net{card}: passt restarted {restarts} times");
        }
    }

    /// Starts a new passt after a back-off, again while it fails at once,
    /// until [`GIVE_UP_AFTER`] quick deaths in a row; none if given up or
    /// stopped meanwhile.
    fn restart(&self, quick_deaths: &mut u32) -> Option<Running> {
        // Losses reported meanwhile are of the passt already stopped.
        let _ = self.relink.lost().read();
        while *quick_deaths < GIVE_UP_AFTER {
            let backoff = FIRST_BACKOFF * 2u32.pow(*quick_deaths);
            // None: stopped meanwhile.
            self.wait(backoff)?;
            match Passt::start(&self.config) {
                Ok((passt, stream)) => {
                    let socket = match stream.try_clone() {
                        Ok(socket) => socket,
                        Err(e) => {
                            log::error!(
                                "net{}: no handle on the new passt's socket: {e}",
                                self.card
                            );
                            *quick_deaths += 1;
                            continue;
                        }
                    };
                    let n = self.restarts.fetch_add(1, Ordering::Relaxed) + 1;
                    log::info!(
                        "net{}: passt restarted (pid {}, restart {n})",
                        self.card,
                        passt.pid()
                    );
                    self.relink.relink(stream);
                    return Some(Running {
                        passt,
                        socket,
                        since: Instant::now(),
                    });
                }
                Err(e) => {
                    log::warn!("net{}: cannot restart passt: {e}", self.card);
                    *quick_deaths += 1;
                }
            }
        }
        None
    }

    /// Waits up to `limit` for the stop or a lost link: `Some(true)` when
    /// the lost link's eventfd is readable, `Some(false)` on time-out (or an
    /// interrupted wait), `None` when stopping.
    fn wait(&self, limit: Duration) -> Option<bool> {
        let mut fds = [
            libc::pollfd {
                fd: self.stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.relink.lost().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds, for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, limit.as_millis() as libc::c_int) };
        if n > 0 && fds[0].revents != 0 {
            return None;
        }
        Some(n > 0 && fds[1].revents != 0)
    }
}

/// How a passt ended, for the log.
fn describe(status: Option<ExitStatus>) -> String {
    match status {
        Some(status) => status.to_string(),
        None => "still running, killed".into(),
    }
}
