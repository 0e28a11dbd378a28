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
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ferry_confine::seccomp::ThreadKind;
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

/// When passt is started again, after how long, and when it is given up.
#[derive(Debug, Default)]
struct RestartPolicy {
    /// Quick deaths in a row (a restarted passt gone within
    /// [`QUICK_DEATH`], or a start that failed).
    quick_deaths: u32,
    /// Restarts that succeeded.
    restarts: u64,
}

impl RestartPolicy {
    /// A passt that ran for `lived` is gone. The first passt's death never
    /// counts as quick: it served the VM since it booted.
    fn died(&mut self, lived: Duration) {
        self.quick_deaths = if self.restarts > 0 && lived < QUICK_DEATH {
            self.quick_deaths + 1
        } else {
            0
        };
    }

    /// A start failed (passt exited at once, or could not be run).
    fn failed_start(&mut self) {
        self.quick_deaths += 1;
    }

    /// A start succeeded; the restarts so far.
    fn started(&mut self) -> u64 {
        self.restarts += 1;
        self.restarts
    }

    /// The wait before the next start: doubled for each quick death
    /// before it; none once passt is given up.
    fn next_wait(&self) -> Option<Duration> {
        (self.quick_deaths < GIVE_UP_AFTER).then(|| FIRST_BACKOFF * 2u32.pow(self.quick_deaths))
    }
}

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
        };
        let thread = std::thread::Builder::new()
            .name(format!("passt-keeper{card}"))
            .stack_size(THREAD_STACK)
            .spawn(move || {
                if let Err(e) = ferry_confine::seccomp::enter(ThreadKind::PasstKeeper) {
                    log::error!("net{card}: {e}; passt will not be restarted");
                    return;
                }
                keeper.run(running)
            })?;
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
}

impl Keeper {
    fn run(self, running: Running) {
        let card = self.card;
        let mut current = Some(running);
        let mut policy = RestartPolicy::default();
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
            policy.died(lived);
            current = self.restart(&mut policy);
            if current.is_none() {
                if policy.next_wait().is_some() {
                    // Stopped while restarting.
                    break;
                }
                log::error!(
                    "net{card}: passt died {} times in a row within {} s of starting; \
                     giving up: the card stays down, the VM runs on",
                    policy.quick_deaths,
                    QUICK_DEATH.as_secs()
                );
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
        if policy.restarts > 0 {
            log::info!("net{card}: passt restarted {} times", policy.restarts);
        }
    }

    /// Starts a new passt after the policy's wait, again while it fails,
    /// until the policy gives it up; none if given up or stopped meanwhile.
    fn restart(&self, policy: &mut RestartPolicy) -> Option<Running> {
        // Losses reported meanwhile are of the passt already stopped.
        let _ = self.relink.lost().read();
        while let Some(backoff) = policy.next_wait() {
            // None: stopped meanwhile.
            self.wait(backoff)?;
            let started = Passt::start(&self.config).and_then(|(passt, stream)| {
                let socket = stream
                    .try_clone()
                    .map_err(ferry_net_passt::launcher::Error::SocketPair)?;
                Ok((passt, stream, socket))
            });
            match started {
                Ok((passt, stream, socket)) => {
                    let n = policy.started();
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
                    policy.failed_start();
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

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_first_passt_is_restarted_however_soon_it_died() {
        let mut policy = RestartPolicy::default();
        policy.died(10 * MS);
        assert_eq!(policy.next_wait(), Some(200 * MS));
    }

    #[test]
    fn restarted_passts_that_die_at_once_are_given_up_after_three() {
        let mut policy = RestartPolicy::default();
        policy.died(Duration::from_secs(60));
        let mut waits = vec![];
        while let Some(wait) = policy.next_wait() {
            waits.push(wait);
            policy.started();
            policy.died(100 * MS);
        }
        assert_eq!(waits, [200 * MS, 400 * MS, 800 * MS]);
        assert_eq!((policy.restarts, policy.quick_deaths), (3, GIVE_UP_AFTER));
    }

    #[test]
    fn failed_starts_count_as_quick_deaths() {
        let mut policy = RestartPolicy::default();
        policy.died(Duration::from_secs(60));
        for _ in 0..GIVE_UP_AFTER {
            assert!(policy.next_wait().is_some());
            policy.failed_start();
        }
        assert_eq!(policy.next_wait(), None);
        assert_eq!(policy.restarts, 0);
    }

    #[test]
    fn a_restarted_passt_that_served_a_while_starts_the_count_again() {
        let mut policy = RestartPolicy::default();
        policy.died(Duration::from_secs(60));
        policy.started();
        policy.died(100 * MS);
        policy.started();
        policy.died(100 * MS);
        assert_eq!(policy.next_wait(), Some(800 * MS));
        policy.started();
        policy.died(QUICK_DEATH);
        assert_eq!(policy.next_wait(), Some(200 * MS));
    }
}
