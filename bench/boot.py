#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Boot benchmark: ferry against QEMU (microvm) on the same kernel and initramfs.

Both boot the same machine: one vCPU, 256 MiB, and a virtio-net card on a
passt of its own (ferry's default card, which ferry starts itself; QEMU's
through -netdev stream, as bench.py wires it). That is what a user sees:
ferry boots with a passt card unless told --net none, and a guest is seldom
booted without a network. So the figures include the card's probe and, in
the exit time, the guest's DHCP (its init configures the card before the job).
QEMU's passt is started and listening before QEMU's clock starts, while
ferry's clock includes ferry starting its own passt (some 20 ms): if
anything, that favours QEMU.

For each run it measures, from the VMM process's start:
  - userspace: the guest init's first console line ("init: userspace started")
  - exit: the process's end (the guest powers off right after)
and the VMM's RSS outside guest memory (smaps, sampled while it runs; the
peak is kept; passt, a process of its own, is not counted for either). It prints the median of each figure and the ratio ferry/QEMU.
Runs alternate between the VMMs so that noise hits both alike.

Usage: bench/boot.py [--runs N] [--json FILE]   (needs a /dev/kvm that boots stock guests)
ferry is BENCH_FERRY, else target/release/ferry; passt the first in PATH.
"""
import argparse
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no __pycache__ left in bench/
import vmms  # noqa: E402

MEM_MIB = 256
MARKER = b"init: userspace started"
JOB = "true"


def command(name, sock):
    """The command line that boots VMM `name` to run JOB; QEMU's card on the passt at `sock`."""
    cmdline = vmms.ferry_cmdline()
    if name == "ferry":
        return vmms.ferry_cmd(MEM_MIB, vmms.INITRD, cmdline, JOB)
    return vmms.qemu_cmd(name, MEM_MIB, vmms.INITRD, cmdline, JOB, net_socket=sock)


def one_run(name, sample_rss, tmp):
    """Boots VMM `name` once; its times from the start of its process and its peak RSS."""
    passt = None
    sock = os.path.join(tmp, f"passt-{name}.sock")
    if name != "ferry":
        passt = vmms.start_passt(sock)
    cmd = command(name, sock)
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    memory = vmms.MemorySampler(proc.pid, MEM_MIB, 0.05)
    if sample_rss:
        memory.start()
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
    memory.stop()
    if passt:
        vmms.stop_passt(passt)
    if userspace is None:
        raise RuntimeError(f"{cmd[0]}: no userspace marker (exit {rc})")
    return {"userspace_s": userspace, "exit_s": end, "rss_kib": memory.peak_rss_outside_kib if sample_rss else None}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--json")
    args = ap.parse_args()
    vmms.require_files("bench")
    vmms.ferry_cmdline()
    results = {"ferry": [], "qemu-microvm": []}
    with vmms.socket_dir() as tmp:
        for i in range(args.runs):
            for name, rss in (("ferry", True), ("qemu-microvm", True)):
                for attempt in (1, 2):
                    try:
                        r = one_run(name, rss, tmp)
                        break
                    except RuntimeError as e:
                        print(f"run {i} {name}: {e}; " + ("retrying once" if attempt == 1 else "giving up"), file=sys.stderr)
                        r = None
                if r:
                    results[name].append(r)
                    print(f"run {i} {name}: userspace {r['userspace_s']:.2f} s, exit {r['exit_s']:.2f} s, rss {r['rss_kib']} KiB", file=sys.stderr)
    table = {}
    for name, runs in results.items():
        table[name] = {k: vmms.spread([r[k] for r in runs])["median"] for k in ("userspace_s", "exit_s", "rss_kib")}
        table[name]["runs"] = len(runs)
    print(f"{'figure':<24}{'ferry':>12}{'qemu-microvm':>14}{'ratio':>8}")
    for key, label in (("userspace_s", "boot to userspace (s)"), ("exit_s", "start to exit (s)"), ("rss_kib", "RSS outside guest (KiB)")):
        f, q = table["ferry"][key], table["qemu-microvm"][key]
        ratio = f"{f / q:.2f}" if f and q else "-"
        fmt = lambda v: "-" if v is None else f"{v:.2f}"
        print(f"{label:<24}{fmt(f):>12}{fmt(q):>14}{ratio:>8}")
    print(f"medians of {table['ferry']['runs']} ferry and {table['qemu-microvm']['runs']} QEMU runs")
    if args.json:
        vmms.save_json(args.json, {"medians": table, "runs": results}, indent=2)


if __name__ == "__main__":
    main()
