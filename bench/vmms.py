# SPDX-License-Identifier: Apache-2.0
"""The VMMs the benchmarks compare, and how each is started: one place for
what bench.py, boot.py and disk.py would otherwise each repeat.

  - the files under test: the guest kernel and initramfs, and the ferry
    binary (BENCH_FERRY, else target/release/ferry)
  - the guest kernel command line: ferry's own default, asked of that ferry
    binary (`ferry --print-cmdline`) once per invocation, so that no copy
    here goes stale when ferry's default changes; QEMU's guests get the
    same line plus what their machine needs (pci=off on microvm)
  - the ferry and QEMU command lines (microvm and q35, with or without a
    virtio-net card on passt, with or without a virtio-blk disk)
  - a passt for QEMU to connect to (ferry starts its own)
  - the figures every script takes the same way: a VMM's memory outside
    guest RAM, medians with their spread, the JSON file
"""
import contextlib
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNEL = os.path.join(ROOT, "resources/out/vmlinuz")
# The test guest, and the test guest plus iperf3 (bench.py's).
INITRD = os.path.join(ROOT, "resources/out/initramfs.cpio.gz")
BENCH_INITRD = os.path.join(ROOT, "resources/out/initramfs-bench.cpio.gz")
FERRY = os.environ.get("BENCH_FERRY", os.path.join(ROOT, "target/release/ferry"))
# The card's MAC address on every VMM (ferry's default).
MAC = "02:66:72:72:79:01"
QEMU = "qemu-system-x86_64"
# Per QEMU VMM name: the machine, its virtio-net device, and what the guest
# command line needs beyond ferry's default. ferry's devices are on PCI;
# microvm's on virtio-mmio (described in its ACPI tables, hence acpi=on).
QEMU_MACHINES = {
    "qemu-microvm": ("microvm,acpi=on", "virtio-net-device", "pci=off"),
    "qemu-q35": ("q35", "virtio-net-pci", ""),
    "qemu-q35-vhost-user": ("q35", "virtio-net-pci", ""),
}


def require_files(prog, paths=(KERNEL, INITRD, FERRY)):
    """Exits with a hint on how to build them if any of `paths` is missing."""
    for path in paths:
        if not os.path.exists(path):
            sys.exit(f"{prog}: {path} missing (resources/build-guest.sh; cargo build --release)")


@functools.lru_cache(maxsize=None)
def ferry_cmdline():
    """ferry's default guest kernel command line, as the ferry binary under
    test prints it (asked once per invocation; exits if that ferry cannot say)."""
    try:
        out = subprocess.run([FERRY, "--print-cmdline"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        sys.exit(f"bench: cannot run {FERRY} --print-cmdline: {e}")
    line = out.stdout.strip()
    if out.returncode != 0 or not line or "\n" in line:
        sys.exit(f"bench: {FERRY} --print-cmdline gave status {out.returncode}, output {out.stdout!r} "
                 f"{out.stderr.strip()!r} (a ferry older than --print-cmdline?)")
    return line


def append(*parts):
    """A kernel command line from its parts, empty ones left out."""
    return " ".join(p for p in parts if p)


def ferry_cmd(mem_mib, initrd, cmdline, job, *options):
    """ferry booting `initrd` with `mem_mib` MiB, the kernel command line
    `cmdline` and the job after "--" (quoted by the caller where it needs
    to be); `options` go to ferry as they are (--net none, --disk ...)."""
    return [FERRY, "--kernel", KERNEL, "--initrd", initrd, "--memory", str(mem_mib), *options,
            "--cmdline", append(cmdline, "--", job)]


def qemu_cmd(name, mem_mib, initrd, cmdline, job, net_socket=None, drive=None, tap=None):
    """QEMU as the VMM `name` of QEMU_MACHINES (one vCPU, serial console on
    stdio, nothing else unless asked), booting like ferry_cmd, its machine's
    extra words added to `cmdline`. With `net_socket`, a virtio-net card
    (MAC) on the passt listening there (start_passt): a stream netdev, or for
    a -vhost-user name passt itself as the vhost-user backend. With `drive`
    (QEMU -drive options: file=...,format=...), a virtio-blk disk. With `tap`
    (the TAP's name, whether vhost=on), a virtio-net card (MAC) on that TAP
    (`-netdev tap`, with the virtio-net header, as QEMU does by default)."""
    machine, net_device, extra = QEMU_MACHINES[name]
    cmd = [QEMU, "-enable-kvm", "-cpu", "host,-arch-capabilities", "-M", machine,
           "-m", str(mem_mib), "-smp", "1", "-nodefaults", "-no-user-config", "-nographic",
           "-no-reboot", "-serial", "stdio", "-kernel", KERNEL, "-initrd", initrd,
           "-append", append(cmdline, extra, "--", job)]
    if net_socket and is_vhost_user(name):
        # passt reads and writes guest memory itself: it must be shared.
        cmd += ["-object", f"memory-backend-memfd,id=mem,size={mem_mib}M,share=on",
                "-numa", "node,memdev=mem", "-chardev", f"socket,id=c0,path={net_socket}",
                "-netdev", "vhost-user,id=n0,chardev=c0"]
    elif net_socket:
        cmd += ["-netdev", f"stream,id=n0,server=off,addr.type=unix,addr.path={net_socket}"]
    if tap:
        ifname, vhost = tap
        cmd += ["-netdev", f"tap,id=n0,ifname={ifname},script=no,downscript=no,vhost={'on' if vhost else 'off'}"]
    if net_socket or tap:
        cmd += ["-device", f"{net_device},netdev=n0,mac={MAC}"]
    if drive and machine.startswith("microvm"):
        cmd += ["-drive", f"if=none,id=d0,{drive}", "-device", "virtio-blk-device,drive=d0"]
    elif drive:
        cmd += ["-drive", f"if=virtio,{drive}"]
    return cmd


def is_vhost_user(name):
    """Whether passt is this QEMU's virtio-net backend (vhost-user) instead of a stream netdev."""
    return name.endswith("-vhost-user")


@contextlib.contextmanager
def socket_dir():
    """A temporary directory for passt's sockets, on /tmp (kvm-host's
    shared directories are 9p, where UNIX sockets cannot be created)."""
    with tempfile.TemporaryDirectory() as tmp:
        # passt started as root creates its socket as nobody.
        os.chmod(tmp, 0o1777)
        yield tmp


def start_passt(sock, vhost_user=False):
    """Starts the first passt in PATH for one QEMU (it exits when QEMU
    disconnects) and returns once QEMU can connect to `sock`."""
    if os.path.exists(sock):
        os.unlink(sock)
    passt = subprocess.Popen(["passt", "-f", "-1", *(["--vhost-user"] if vhost_user else []), "-s", sock],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(500):
        if os.path.exists(sock):
            break
        time.sleep(0.01)
    # passt creates the socket file before it listens on it: QEMU's
    # stream netdev does not retry a refused connection.
    time.sleep(0.5)
    return passt


def stop_passt(passt):
    """Waits a moment for a passt whose QEMU has gone to leave, then kills it."""
    try:
        passt.wait(timeout=3)
    except subprocess.TimeoutExpired:
        passt.kill()
        passt.wait()


def memory_kib(pid, mem_mib):
    """(RSS outside the guest RAM mapping of `mem_mib`, VmHWM) of process
    `pid`, in KiB; (None, None) once it is gone."""
    rss = 0
    size = 0
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                if line.startswith("Size:"):
                    size = int(line.split()[1])
                elif line.startswith("Rss:") and size != mem_mib * 1024:
                    rss += int(line.split()[1])
        with open(f"/proc/{pid}/status") as f:
            hwm = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None, None
    return rss, hwm


class MemorySampler:
    """Samples a running VMM's memory_kib every `interval` seconds in a
    thread, from start() to stop(), and keeps the peaks."""

    def __init__(self, pid, mem_mib, interval):
        self.pid, self.mem_mib, self.interval = pid, mem_mib, interval
        self.peak_rss_outside_kib = 0
        self.peak_hwm_kib = 0
        self.done = threading.Event()

    def start(self):
        threading.Thread(target=self.run, daemon=True).start()
        return self

    def run(self):
        """The thread: one sample per interval until stop()."""
        while not self.done.is_set():
            rss, hwm = memory_kib(self.pid, self.mem_mib)
            if rss:
                self.peak_rss_outside_kib = max(self.peak_rss_outside_kib, rss)
                self.peak_hwm_kib = max(self.peak_hwm_kib, hwm)
            time.sleep(self.interval)

    def stop(self):
        self.done.set()


CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_seconds(path):
    """(user+sys, guest) CPU seconds from a /proc stat file."""
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK, int(fields[40]) / CLK_TCK


def cpu_seconds(pid):
    """(all, own) CPU seconds of process `pid` so far and of the vhost
    kernel threads working for it (`vhost-PID`; before Linux 6.4 not the
    process's own threads, yet they move its data); `own` leaves out the
    time its vCPUs ran guest code. (None, None) if the process is gone."""
    try:
        total, guest = _stat_seconds(f"/proc/{pid}/stat")
    except (OSError, IndexError, ValueError):
        return None, None
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() == f"vhost-{pid}":
                    total += _stat_seconds(f"/proc/{entry}/stat")[0]
        except (OSError, IndexError, ValueError):
            continue
    return total, total - guest


def spread(values):
    """Median, min, max and count of `values`, those that are None left out
    (None for each figure when none is left)."""
    values = [v for v in values if v is not None]
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def save_json(path, data, indent=1):
    """Writes `data` to `path` whole or not at all."""
    with open(path + ".new", "w") as f:
        json.dump(data, f, indent=indent)
    os.replace(path + ".new", path)
