#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Boot benchmark: ferry against QEMU (microvm) on the same kernel and initramfs.

For each run it measures, from the VMM process's start:
  - userspace: the guest init's first console line ("init: userspace started")
  - exit: the process's end (the guest powers off right after)
and for ferry the RSS outside guest memory (smaps, sampled while it runs; the
peak is kept). It prints the median of each figure and the ratio ferry/QEMU.
Runs alternate between the VMMs so that noise hits both alike.

Usage: bench/boot.py [--runs N] [--json FILE]   (needs a /dev/kvm that boots stock guests)
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import memory_kib  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNEL = os.path.join(ROOT, "resources/out/vmlinuz")
INITRD = os.path.join(ROOT, "resources/out/initramfs.cpio.gz")
FERRY = os.path.join(ROOT, "target/release/ferry")
MEM_MIB = 256
BASE = "console=ttyS0 reboot=k panic=-1 i8042.noaux i8042.nomux i8042.dumbkbd"
# ferry's devices are on PCI; microvm's on virtio-mmio.
FERRY_CMDLINE = f"{BASE} -- true"
QEMU_CMDLINE = f"{BASE} pci=off -- true"
MARKER = b"init: userspace started"


def ferry_cmd():
    return [FERRY, "--kernel", KERNEL, "--initrd", INITRD, "--memory", str(MEM_MIB), "--cmdline", FERRY_CMDLINE]


def qemu_cmd():
    return ["qemu-system-x86_64", "-enable-kvm", "-cpu", "host,-arch-capabilities",
            "-M", "microvm,acpi=on", "-m", str(MEM_MIB), "-smp", "1",
            "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-serial", "stdio", "-kernel", KERNEL, "-initrd", INITRD, "-append", QEMU_CMDLINE]


def rss_outside_guest_kib(pid):
    """RSS of every mapping except the guest RAM."""
    return memory_kib(pid, MEM_MIB)[0]


def one_run(cmd, sample_rss):
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    peak = [0]
    done = threading.Event()

    def sampler():
        while not done.is_set():
            rss = rss_outside_guest_kib(proc.pid)
            if rss:
                peak[0] = max(peak[0], rss)
            time.sleep(0.05)

    if sample_rss:
        threading.Thread(target=sampler, daemon=True).start()
    # A guest that freezes (a nested-KVM hazard) must not hang the benchmark.
    watchdog = threading.Timer(180, proc.kill)
    watchdog.start()
    userspace = None
    buf = b""
    while True:
        chunk = proc.stdout.read1(4096)
        if not chunk:
            break
        buf = (buf + chunk)[-4096:]
        if userspace is None and MARKER in buf:
            userspace = time.monotonic() - start
    rc = proc.wait()
    end = time.monotonic() - start
    watchdog.cancel()
    done.set()
    if userspace is None:
        raise RuntimeError(f"{cmd[0]}: no userspace marker (exit {rc})")
    return {"userspace_s": userspace, "exit_s": end, "rss_kib": peak[0] if sample_rss else None}


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--json")
    args = ap.parse_args()
    for path in (KERNEL, INITRD, FERRY):
        if not os.path.exists(path):
            sys.exit(f"bench: {path} missing (resources/build-guest.sh; cargo build --release)")
    results = {"ferry": [], "qemu-microvm": []}
    for i in range(args.runs):
        for name, cmd, rss in (("ferry", ferry_cmd(), True), ("qemu-microvm", qemu_cmd(), True)):
            for attempt in (1, 2):
                try:
                    r = one_run(cmd, rss)
                    break
                except RuntimeError as e:
                    print(f"run {i} {name}: {e}; " + ("retrying once" if attempt == 1 else "giving up"), file=sys.stderr)
                    r = None
            if r:
                results[name].append(r)
                print(f"run {i} {name}: userspace {r['userspace_s']:.2f} s, exit {r['exit_s']:.2f} s, rss {r['rss_kib']} KiB", file=sys.stderr)
    table = {}
    for name, runs in results.items():
        table[name] = {k: median([r[k] for r in runs]) for k in ("userspace_s", "exit_s", "rss_kib")}
        table[name]["runs"] = len(runs)
    print(f"{'figure':<24}{'ferry':>12}{'qemu-microvm':>14}{'ratio':>8}")
    for key, label in (("userspace_s", "boot to userspace (s)"), ("exit_s", "start to exit (s)"), ("rss_kib", "RSS outside guest (KiB)")):
        f, q = table["ferry"][key], table["qemu-microvm"][key]
        ratio = f"{f / q:.2f}" if f and q else "-"
        fmt = lambda v: "-" if v is None else f"{v:.2f}"
        print(f"{label:<24}{fmt(f):>12}{fmt(q):>14}{ratio:>8}")
    print(f"medians of {table['ferry']['runs']} ferry and {table['qemu-microvm']['runs']} QEMU runs")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"medians": table, "runs": results}, f, indent=2)


if __name__ == "__main__":
    main()
