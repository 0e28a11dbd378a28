// SPDX-License-Identifier: Apache-2.0
//! A TAP device: an existing one, opened by name with `IFF_VNET_HDR`, so
//! that every frame carries its virtio-net header through the TAP both ways
//! (the TAP's header size set to ferry's, 12 bytes). The guest's partial
//! checksums and 64 KiB segments go to the host's stack as they are; the
//! host's go to the guest likewise, for the offloads the guest accepted
//! (`TUNSETOFFLOAD`). A TX frame is one `writev` from guest memory, header
//! first; an RX frame one `readv` straight into the guest's buffers. A TAP
//! has no call that moves several frames at once, so each wake-up moves
//! frames one call each until the TAP has none (or the guest no room).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use vm_memory::GuestMemoryBackend;

use super::{Backend, RxStop, Sent, TxChain};
use crate::virtio::features;
use crate::virtio::net::tx::TxError;
use crate::virtio::net::worker::{bump, Delivery, RxSide};
use crate::virtio::net::{feature, NET_HDR_LEN};
use crate::GuestMemory;

/// Longest interface name (`IFNAMSIZ` less the terminating NUL).
const MAX_NAME: usize = 15;
/// Shortest frame: an Ethernet header.
const MIN_FRAME: usize = 14;
/// Longest frame either way: a 64 KiB segment (an IP packet of at most
/// 65535 bytes) behind its Ethernet header.
pub const MAX_FRAME: usize = 65535 + MIN_FRAME;

/// Why a TAP cannot back a card.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// Not a name an interface can have.
    #[error("TAP name {0:?}: expected 1 to {MAX_NAME} characters without '/' or whitespace")]
    BadName(String),
    /// No interface has that name.
    #[error("no TAP device {0} (ferry opens an existing TAP; make one with `ip tuntap add {0} mode tap`)")]
    NoSuchTap(String),
    /// The interface is no TUN/TAP device.
    #[error("{0} is a network interface but no TAP device")]
    NotATap(String),
    /// The TAP exists but ferry may not attach to it, or it is no TAP, or busy.
    #[error("cannot attach to TAP {name}{hint}")]
    Attach {
        /// The TAP.
        name: String,
        /// What usually causes it.
        hint: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A set-up call on the attached TAP failed.
    #[error("TAP {name}: {what} failed")]
    Setup {
        /// The TAP.
        name: String,
        /// The call.
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// `struct ifreq` as `TUNSETIFF` reads it: the name, then the flags.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// The offloads ferry asks a TAP for, in the order they are given up when
/// the TAP refuses: UFO first (newer kernels dropped it), then ECN, then
/// segmentation, then checksums.
const OFFLOAD_TRIES: [libc::c_uint; 5] = [
    libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN | libc::TUN_F_UFO,
    libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN,
    libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6,
    libc::TUN_F_CSUM,
    0,
];

/// An open TAP, attached as a single queue with virtio-net headers.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    /// The offloads the TAP accepts (`TUN_F_*`).
    offloads: libc::c_uint,
}

impl Tap {
    /// Attaches to the existing TAP `name`: `TUNSETIFF` with `IFF_TAP |
    /// IFF_NO_PI | IFF_VNET_HDR` (and `IFF_MULTI_QUEUE` if the TAP was made
    /// multi-queue), the header size set to ferry's, the offloads it
    /// accepts found out (and left off until a driver asks for them).
    pub fn open(name: &str) -> Result<Self, TapError> {
        Self::check(name)?;
        let multi_queue = Self::flags(name)? & libc::IFF_MULTI_QUEUE != 0;
        let attach = |source: io::Error| {
            let hint = match source.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => {
                    " (it belongs to another user or group: make it with `ip tuntap add NAME mode tap user USER`, or run ferry with CAP_NET_ADMIN)"
                }
                Some(libc::EBUSY) => " (another program has it open)",
                Some(libc::EINVAL) => " (it is no TAP device)",
                _ => "",
            };
            TapError::Attach {
                name: name.to_string(),
                hint,
                source,
            }
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|source| TapError::Attach {
                name: name.to_string(),
                hint: " (ferry may not open /dev/net/tun)",
                source,
            })?;
        let mut req = IfReq {
            name: [0; 16],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
            _pad: [0; 22],
        };
        if multi_queue {
            req.flags |= libc::IFF_MULTI_QUEUE as libc::c_short;
        }
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads (and may write) one `struct ifreq`, which
        // `req` is, for the call's duration; the descriptor is ours.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
            return Err(attach(io::Error::last_os_error()));
        }
        let setup = |what, source| TapError::Setup {
            name: name.to_string(),
            what,
            source,
        };
        let hdr_len = NET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int, which `hdr_len` is.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) } < 0 {
            return Err(setup("TUNSETVNETHDRSZ", io::Error::last_os_error()));
        }
        let mut tap = Self {
            file,
            name: name.to_string(),
            offloads: 0,
        };
        tap.offloads = OFFLOAD_TRIES
            .into_iter()
            .find(|&try_| tap.set_offload(try_).is_ok())
            .unwrap_or(0);
        tap.set_offload(0).map_err(|e| setup("TUNSETOFFLOAD", e))?;
        Ok(tap)
    }

    /// Whether `name` names an existing TAP (checked without attaching:
    /// `TUNSETIFF` would make a TAP of that name, given the right).
    pub fn check(name: &str) -> Result<(), TapError> {
        if name.is_empty()
            || name.len() > MAX_NAME
            || name.contains('/')
            || name.chars().any(|c| c.is_whitespace() || c.is_control())
            || name == "."
            || name == ".."
        {
            return Err(TapError::BadName(name.to_string()));
        }
        Self::flags(name).map(|_| ())
    }

    /// The TAP's `tun_flags`. Whether the device exists is asked of ferry's
    /// own network namespace (`if_nametoindex`: an ioctl on a socket of that
    /// namespace); its flags are read from sysfs only when the sysfs entry is
    /// that device (same ifindex). A runtime that starts ferry after
    /// `setns(CLONE_NEWNET)` into a pod's namespace (Kata's drivers do)
    /// leaves /sys showing the namespace that mounted it, where the TAP is
    /// missing or another device has its name: then ferry assumes a plain
    /// single-queue TAP and `TUNSETIFF` says if it is not (`EINVAL`).
    fn flags(name: &str) -> Result<libc::c_int, TapError> {
        let c_name =
            std::ffi::CString::new(name).map_err(|_| TapError::BadName(name.to_string()))?;
        // SAFETY: a valid NUL-terminated name; the call only reads it.
        let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
        if index == 0 {
            return Err(TapError::NoSuchTap(name.to_string()));
        }
        Self::sysfs_flags(Path::new("/sys/class/net"), name, index).unwrap_or(Ok(libc::IFF_TAP))
    }

    /// The flags in `sys`/NAME/tun_flags if `sys`/NAME is the device with
    /// ifindex `index`; `None` if that sysfs entry is another namespace's.
    fn sysfs_flags(sys: &Path, name: &str, index: u32) -> Option<Result<libc::c_int, TapError>> {
        let dir = sys.join(name);
        let ifindex: u32 = std::fs::read_to_string(dir.join("ifindex"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        if ifindex != index {
            return None;
        }
        let flags = std::fs::read_to_string(dir.join("tun_flags"))
            .ok()
            .and_then(|text| {
                libc::c_int::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok()
            })
            .filter(|flags| flags & libc::IFF_TAP != 0);
        Some(flags.ok_or_else(|| TapError::NotATap(name.to_string())))
    }

    /// The TAP's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The offloads (`TUN_F_*`) the TAP accepts.
    pub fn offloads(&self) -> u32 {
        self.offloads
    }

    fn set_offload(&self, offloads: libc::c_uint) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; the descriptor is ours.
        if unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                offloads as libc::c_ulong,
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The offloads to ask of the TAP for a driver that accepted `acked`:
    /// what the guest can receive, within what the TAP accepts.
    fn offloads_for(&self, acked: u64) -> libc::c_uint {
        let has = |bit| features::has(acked, bit);
        let mut want = 0;
        if has(feature::GUEST_CSUM) {
            want |= libc::TUN_F_CSUM;
            if has(feature::GUEST_TSO4) {
                want |= libc::TUN_F_TSO4;
            }
            if has(feature::GUEST_TSO6) {
                want |= libc::TUN_F_TSO6;
            }
            if has(feature::GUEST_ECN) && want & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) != 0 {
                want |= libc::TUN_F_TSO_ECN;
            }
            if has(feature::GUEST_UFO) {
                want |= libc::TUN_F_UFO;
            }
        }
        want & self.offloads
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// A frame for the TAP: its chain's readable segments, header first.
#[derive(Debug)]
pub struct TapFrame {
    segments: Vec<libc::iovec>,
}

// SAFETY: the iovecs point into guest memory, which lives as long as the VM
// and is reachable from any thread.
unsafe impl Send for TapFrame {}

impl Backend for Tap {
    type Frame = TapFrame;

    fn describe(&self) -> String {
        format!("TAP {}", self.name)
    }

    /// Checksums and segmentation both ways (the host's stack does what the
    /// guest leaves), as far as the TAP accepts them towards the guest;
    /// towards the host a TAP takes every kind. No MTU: the TAP's is the
    /// host's business, and the guest's 1500 stays with segments of 64 KiB.
    fn features(&self) -> u64 {
        let mut bits = vec![
            feature::MAC,
            feature::STATUS,
            feature::MRG_RXBUF,
            feature::CSUM,
            feature::HOST_TSO4,
            feature::HOST_TSO6,
            feature::HOST_ECN,
            feature::HOST_UFO,
        ];
        let offloads = self.offloads;
        if offloads & libc::TUN_F_CSUM != 0 {
            bits.push(feature::GUEST_CSUM);
            for (flag, bit) in [
                (libc::TUN_F_TSO4, feature::GUEST_TSO4),
                (libc::TUN_F_TSO6, feature::GUEST_TSO6),
                (libc::TUN_F_TSO_ECN, feature::GUEST_ECN),
                (libc::TUN_F_UFO, feature::GUEST_UFO),
            ] {
                if offloads & flag != 0 {
                    bits.push(bit);
                }
            }
        }
        features::COMMON | features::set(&bits)
    }

    fn activate(&mut self, acked: u64) -> io::Result<()> {
        self.set_offload(self.offloads_for(acked))
    }

    fn frame_of_chain(
        &self,
        mem: &GuestMemory,
        chain: TxChain,
    ) -> Result<(TapFrame, usize), TxError> {
        let mut segments = Vec::new();
        let mut len = 0usize;
        for desc in chain {
            if desc.is_write_only() {
                return Err(TxError::WriteOnly);
            }
            let bad = || TxError::BadAddress(desc.addr().0, desc.len());
            let slice = mem
                .get_slice(desc.addr(), desc.len() as usize)
                .map_err(|_| bad())?;
            if slice.is_empty() {
                continue;
            }
            len += slice.len();
            if len > NET_HDR_LEN + MAX_FRAME {
                return Err(TxError::BadLength(len.saturating_sub(NET_HDR_LEN)));
            }
            segments.push(libc::iovec {
                iov_base: slice.ptr_guard().as_ptr() as *mut libc::c_void,
                iov_len: slice.len(),
            });
        }
        if len < NET_HDR_LEN + MIN_FRAME {
            return Err(TxError::BadLength(len.saturating_sub(NET_HDR_LEN)));
        }
        Ok((TapFrame { segments }, len - NET_HDR_LEN))
    }

    fn send(&mut self, frames: Vec<TapFrame>) -> io::Result<Sent> {
        let mut sent = Sent::default();
        for frame in &frames {
            loop {
                // SAFETY: the segments point into guest memory (checked when
                // the frame was made), readable for the call's duration.
                let n = unsafe {
                    libc::writev(
                        self.file.as_raw_fd(),
                        frame.segments.as_ptr(),
                        frame.segments.len() as libc::c_int,
                    )
                };
                if n >= 0 {
                    break;
                }
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EAGAIN) => return Ok(sent),
                    // The TAP is gone (deleted while ferry had it).
                    Some(libc::EBADFD) | Some(libc::EBADF) => return Err(e),
                    // The TAP refused this frame (interface down, a header
                    // the host's stack does not take): it is dropped.
                    _ => {
                        log::debug!("{}: frame dropped: {e}", self.describe());
                        break;
                    }
                }
            }
            sent.whole += 1;
        }
        Ok(sent)
    }

    fn flush(&mut self) -> io::Result<bool> {
        Ok(true)
    }

    fn receive(&mut self, mem: &GuestMemory, rx: &mut RxSide) -> (bool, RxStop) {
        let fd = self.file.as_raw_fd();
        let mut delivered = false;
        loop {
            let read = rx.read_into(mem, NET_HDR_LEN + MAX_FRAME, |iov| {
                // SAFETY: the iovecs point into guest RX buffers (checked
                // when they were taken), writable for the call's duration.
                let n = unsafe { libc::readv(fd, iov.as_ptr(), iov.len() as libc::c_int) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match read {
                Ok(Delivery::Delivered) => delivered = true,
                Ok(Delivery::Dropped) => {}
                Ok(Delivery::NoBuffers) => return (delivered, RxStop::NoBuffers),
                Err(e) => match e.raw_os_error() {
                    Some(libc::EAGAIN) => return (delivered, RxStop::Drained),
                    Some(libc::EINTR) => {}
                    // A frame larger than the guest's buffer (without
                    // mergeable buffers): the TAP has dropped it.
                    Some(libc::EFAULT) | Some(libc::EINVAL) => {
                        bump(&rx.stats().rx_dropped, 1);
                    }
                    _ => return (delivered, RxStop::Lost(format!("read: {e}"))),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_no_interface_can_have_are_refused_before_looking() {
        for bad in ["", "a/b", "sixteen-chars-xx", "a b", ".."] {
            assert!(
                matches!(Tap::check(bad), Err(TapError::BadName(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_missing_tap_is_named_in_the_error() {
        let e = Tap::open("nosuchtap0").unwrap_err();
        assert!(matches!(e, TapError::NoSuchTap(_)), "{e:?}");
        assert!(e.to_string().contains("no TAP device nosuchtap0"), "{e}");
    }

    #[test]
    fn an_interface_that_is_no_tap_is_refused() {
        // Loopback exists on every host and is no TUN/TAP device.
        let e = Tap::open("lo").unwrap_err();
        assert!(matches!(e, TapError::NotATap(_)), "{e:?}");
    }

    #[test]
    fn offloads_follow_what_the_driver_accepted_within_what_the_tap_takes() {
        let tap = Tap {
            file: File::open("/dev/null").unwrap(),
            name: "t".into(),
            offloads: libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6,
        };
        let acked = features::set(&[
            feature::GUEST_CSUM,
            feature::GUEST_TSO4,
            feature::GUEST_TSO6,
            feature::GUEST_UFO,
        ]);
        assert_eq!(
            tap.offloads_for(acked),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6
        );
        // Segmentation needs checksums: without GUEST_CSUM, nothing.
        assert_eq!(tap.offloads_for(features::set(&[feature::GUEST_TSO4])), 0);
        let f = tap.features();
        for bit in [
            feature::GUEST_CSUM,
            feature::GUEST_TSO4,
            feature::GUEST_TSO6,
            feature::HOST_TSO4,
            feature::CSUM,
            feature::MRG_RXBUF,
        ] {
            assert!(features::has(f, bit), "bit {bit}");
        }
        assert!(!features::has(f, feature::GUEST_UFO));
        assert!(!features::has(f, feature::MTU));
    }

    #[test]
    fn sysfs_flags_only_from_the_same_device() {
        let sys = std::env::temp_dir().join(format!("ferry-tap-sysfs-{}", std::process::id()));
        let dir = sys.join("tap9");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ifindex"), "7\n").unwrap();
        std::fs::write(dir.join("tun_flags"), "0x1102\n").unwrap();
        // The same device: its flags.
        assert_eq!(Tap::sysfs_flags(&sys, "tap9", 7).unwrap().unwrap(), 0x1102);
        // Another namespace's device of that name (or none): not read.
        assert!(Tap::sysfs_flags(&sys, "tap9", 3).is_none());
        assert!(Tap::sysfs_flags(&sys, "tap8", 7).is_none());
        // The same device but no TAP.
        std::fs::write(dir.join("tun_flags"), "0x1001\n").unwrap();
        assert!(matches!(
            Tap::sysfs_flags(&sys, "tap9", 7),
            Some(Err(TapError::NotATap(_)))
        ));
        std::fs::remove_dir_all(&sys).unwrap();
    }
}
