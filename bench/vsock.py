#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""vsock: ferry's virtio-vsock with its hybrid UNIX-socket host side against
QEMU's vhost-vsock-pci (the kernel's vhost path, host side through AF_VSOCK)
on q35, the same guest, in the same invocation.

Per run and VMM: one stream host->guest and one guest->host (64 KiB writes,
--mib MiB each), and 1-byte request/response latency (host asks, the guest
echoes), with the VMM process's CPU time (user+system, the guest's vCPU time
included, and QEMU's vhost kernel threads) per GB moved. The guest runs `ft vsock-bench 1024`; the host side
reaches it with `CONNECT 1024` on ferry's socket, or on AF_VSOCK CID 3 for
QEMU. Prints medians and the ratio ferry/QEMU; writes target/bench-vsock.json.

Run where /dev/kvm boots stock guests; here inside kvm-host, as root (QEMU
needs /dev/vhost-vsock: the script loads vhost_vsock):
  ../shared/kvm-host/run-in-kvm-host -t 1200 -- python3 bench/vsock.py --runs 3
"""
import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vmms  # noqa: E402

MEM_MIB = 256
GUEST_CID = 3
PORT = 1024
JOB = f"\"dmesg -n 1; ft vsock-bench {PORT}\""


class Vmm:
    """One VMM with a vsock device, and how the host reaches the guest's port."""

    def __init__(self, name, tmp):
        self.name = name
        self.uds = os.path.join(tmp, f"{name}.vsock")
        self.proc = None

    def start(self):
        """Boots the guest with its vsock benchmark server."""
        # A ferry that was killed leaves its socket file, as Firecracker does.
        if os.path.exists(self.uds):
            os.unlink(self.uds)
        cmdline = vmms.append(vmms.ferry_cmdline(), "quiet")
        if self.name == "ferry":
            cmd = vmms.ferry_cmd(MEM_MIB, vmms.INITRD, cmdline, JOB, "--net", "none",
                                 "--vsock", f"cid={GUEST_CID},uds={self.uds}")
        else:
            cmd = vmms.qemu_cmd("qemu-q35", MEM_MIB, vmms.INITRD, cmdline, JOB)
            cmd += ["-device", f"vhost-vsock-pci,guest-cid={GUEST_CID}"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

    def connect(self):
        """A stream to the guest's port."""
        if self.name == "ferry":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(30)
            s.connect(self.uds)
            s.sendall(f"CONNECT {PORT}\n".encode())
            line = b""
            while not line.endswith(b"\n"):
                b = s.recv(1)
                if not b:
                    raise ConnectionError(f"closed after {line!r}")
                line += b
            if not line.startswith(b"OK "):
                raise ConnectionError(f"answer {line!r}")
            return s
        s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect((GUEST_CID, PORT))
        return s

    def wait_up(self, timeout=120):
        """Waits until the guest's server answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
            try:
                s = self.connect()
                s.sendall(b"e")
                s.close()
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"{self.name}: the guest's vsock server never answered")

    def stop(self):
        """Stops the VMM at once (SIGHUP: ferry removes its socket), killing it if it lingers."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(1)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def host_to_guest(vmm, nbytes):
    """Seconds to send `nbytes` to the guest's sink and see it close."""
    s = vmm.connect()
    chunk = b"\x5a" * 65536
    t0 = time.monotonic()
    s.sendall(b"s")
    sent = 0
    while sent < nbytes:
        s.sendall(chunk)
        sent += len(chunk)
    s.shutdown(socket.SHUT_WR)
    while s.recv(65536):
        pass
    secs = time.monotonic() - t0
    s.close()
    return secs


def guest_to_host(vmm, nbytes):
    """Seconds to receive `nbytes` the guest sends."""
    s = vmm.connect()
    t0 = time.monotonic()
    s.sendall(b"g" + nbytes.to_bytes(8, "big"))
    got = 0
    while True:
        b = s.recv(65536)
        if not b:
            break
        got += len(b)
    secs = time.monotonic() - t0
    s.close()
    if got != nbytes:
        raise RuntimeError(f"received {got} of {nbytes} bytes")
    return secs


def request_response(vmm, count):
    """Median microseconds of `count` 1-byte round trips."""
    s = vmm.connect()
    s.sendall(b"e")
    times = []
    for _ in range(count):
        t0 = time.monotonic()
        s.sendall(b"x")
        if not s.recv(1):
            raise RuntimeError("closed during request/response")
        times.append((time.monotonic() - t0) * 1e6)
    s.close()
    return statistics.median(times)


def one_run(name, tmp, mib, rr_count):
    """Boots `name` once and measures everything; its figures."""
    vmm = Vmm(name, tmp)
    vmm.start()
    try:
        vmm.wait_up()
        nbytes = mib << 20
        cpu0 = vmms.cpu_seconds(vmm.proc.pid)[0]
        h2g = host_to_guest(vmm, nbytes)
        cpu1 = vmms.cpu_seconds(vmm.proc.pid)[0]
        g2h = guest_to_host(vmm, nbytes)
        cpu2 = vmms.cpu_seconds(vmm.proc.pid)[0]
        rr = request_response(vmm, rr_count)
        gb = nbytes / 1e9
        return {
            "host->guest Mbit/s": nbytes * 8 / h2g / 1e6,
            "guest->host Mbit/s": nbytes * 8 / g2h / 1e6,
            "RR median us": rr,
            "VMM CPU-s/GB host->guest": (cpu1 - cpu0) / gb,
            "VMM CPU-s/GB guest->host": (cpu2 - cpu1) / gb,
        }
    finally:
        vmm.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mib", type=int, default=256, help="MiB per direction per run")
    ap.add_argument("--rr", type=int, default=2000, help="request/responses per run")
    ap.add_argument("--vmm", default="ferry,qemu-q35", help="comma-separated: ferry, qemu-q35")
    ap.add_argument("--json", default=os.path.join(vmms.ROOT, "target/bench-vsock.json"))
    args = ap.parse_args()
    vmms.require_files("vsock.py")
    names = args.vmm.split(",")
    for name in names:
        if name not in ("ferry", "qemu-q35"):
            sys.exit(f"vsock.py: unknown VMM {name} (ferry, qemu-q35)")
    if "qemu-q35" in names:
        subprocess.run(["modprobe", "-q", "vhost_vsock"], check=False)
        if not os.path.exists("/dev/vhost-vsock"):
            sys.exit("vsock.py: /dev/vhost-vsock missing (modprobe vhost_vsock, as root)")
    results = {name: [] for name in names}
    with vmms.socket_dir() as tmp:
        for run in range(args.runs):
            for name in names:
                try:
                    figures = one_run(name, tmp, args.mib, args.rr)
                except Exception as e:  # a run that fails is reported and not counted
                    print(f"run {run + 1} {name}: incomplete: {e}", flush=True)
                    continue
                results[name].append(figures)
                print(f"run {run + 1} {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in figures.items()),
                      flush=True)
                vmms.save_json(args.json, results)
    keys = ["host->guest Mbit/s", "guest->host Mbit/s", "RR median us",
            "VMM CPU-s/GB host->guest", "VMM CPU-s/GB guest->host"]
    print(f"\n{'figure':32}" + "".join(f"{n:>22}" for n in names) + ("   ferry/qemu" if len(names) == 2 else ""))
    for key in keys:
        meds = [vmms.spread([r[key] for r in results[n]])["median"] for n in names]
        row = f"{key:32}" + "".join(f"{m:>22.4g}" if m is not None else f"{'-':>22}" for m in meds)
        if len(names) == 2 and None not in meds and meds[1]:
            row += f"   {meds[0] / meds[1]:.2f}"
        print(row)
    print("medians of " + ", ".join(f"{len(results[n])} {n}" for n in names) + " runs")


if __name__ == "__main__":
    main()
