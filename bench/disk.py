#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""ferry's disk benchmark: ferry's virtio-blk against QEMU's on the same raw
image, same kernel and initramfs, in one invocation; runs alternate between
the VMMs so that noise hits them alike.

Each run boots the guest once; from inside it, on /dev/vda with O_DIRECT
(the guest's page cache out of the way), `ft` measures:
  seq-write   128 MiB in 1 MiB writes, then fsync    MB/s
  seq-read    256 MiB in 1 MiB reads                 MB/s
  rand-read   4 KiB random reads, 1 thread, 5 s      IOPS
  rand-read4  4 KiB random reads, 4 threads, 5 s     IOPS
QEMU runs as the issue asks: -drive if=virtio,format=raw,cache=none,aio=threads
(on q35, virtio-blk-pci), and the same drive on microvm's virtio-blk-device.
ferry uses its defaults (buffered host I/O; flushes when the guest asks).

It prints medians (min-max) and the ratio ferry / best QEMU per figure,
and writes JSON. A run that does not finish every phase is retried once.

Usage: bench/disk.py [--runs N] [--vmm ferry,qemu-q35,qemu-microvm] [--json FILE]
                     [--dir DIR | --loop-ext4]
The image must live on a filesystem with O_DIRECT (for QEMU's cache=none)
that is a fair stand-in for a host's disk. Inside kvm-host neither the
repository (9p, which turns every segment of a vectored read into its own
round trip) nor /tmp (tmpfs, no O_DIRECT) is: there, --loop-ext4 (root)
puts the image on an ext4 filesystem loop-mounted from /tmp.
Needs: a /dev/kvm that boots stock guests (inside ../shared/kvm-host here),
qemu-system-x86, resources/build-guest.sh, cargo build --release.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNEL = os.path.join(ROOT, "resources/out/vmlinuz")
INITRD = os.path.join(ROOT, "resources/out/initramfs.cpio.gz")
FERRY = os.environ.get("BENCH_FERRY", os.path.join(ROOT, "target/release/ferry"))
IMAGE_MIB = 512
QEMU_CACHE = "none"
BASE = "console=ttyS0 quiet reboot=k panic=-1 i8042.noaux i8042.nomux i8042.dumbkbd"
PHASES = [
    ("seq-write", "ft disk-seq /dev/vda write 128", r"([\d.]+) MB/s"),
    ("seq-read", "ft disk-seq /dev/vda read 256", r"([\d.]+) MB/s"),
    ("rand-read", "ft disk-rand /dev/vda 5 1", r"([\d.]+) IOPS"),
    ("rand-read4", "ft disk-rand /dev/vda 5 4", r"([\d.]+) IOPS"),
]


def guest_script():
    parts = [f"{cmd} && echo bench:{name}:ok" for name, cmd, _ in PHASES]
    return "; ".join(parts) + "; poweroff -f"


def command(vmm, image):
    tail = f"-- \"{guest_script()}\""
    if vmm == "ferry":
        return [FERRY, "--kernel", KERNEL, "--initrd", INITRD, "--memory", "512", "--net", "none",
                "--disk", image, "--cmdline", f"{BASE} {tail}"]
    drive = f"file={image},format=raw,cache={QEMU_CACHE},aio=threads"
    common = ["qemu-system-x86_64", "-enable-kvm", "-cpu", "host,-arch-capabilities", "-m", "512",
              "-smp", "1", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
              "-serial", "stdio", "-kernel", KERNEL, "-initrd", INITRD]
    if vmm == "qemu-q35":
        return common + ["-M", "q35", "-drive", f"if=virtio,{drive}", "-append", f"{BASE} {tail}"]
    return common + ["-M", "microvm,acpi=on", "-drive", f"if=none,id=d0,{drive}",
                     "-device", "virtio-blk-device,drive=d0", "-append", f"{BASE} pci=off {tail}"]


def one_run(vmm, image, timeout):
    proc = subprocess.run(command(vmm, image), stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=timeout, text=True, errors="replace")
    res = {}
    lines = proc.stdout.splitlines()
    for name, _, pattern in PHASES:
        if f"bench:{name}:ok" not in proc.stdout:
            continue
        for line in lines:
            if line.startswith("ft: disk-") and ((name.startswith("seq") and name[4:] in line)
                                                 or (name == "rand-read" and "on 1 threads" in line)
                                                 or (name == "rand-read4" and "on 4 threads" in line)):
                m = re.search(pattern, line)
                if m:
                    res[name] = float(m.group(1))
    res["complete"] = all(n in res for n, _, _ in PHASES)
    if not res["complete"]:
        res["tail"] = lines[-8:] + proc.stderr.splitlines()[-4:]
    return res


def make_image(path):
    """A raw image full of data (not holes, which read faster than data)."""
    with open(path, "wb") as f:
        for _ in range(IMAGE_MIB):
            f.write(os.urandom(1 << 20))
        f.flush()
        os.fsync(f.fileno())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--vmm", default="ferry,qemu-q35,qemu-microvm")
    ap.add_argument("--json", default=os.path.join(ROOT, "target/bench-disk.json"))
    ap.add_argument("--dir", default=os.path.join(ROOT, "target"),
                    help="where the image lives (a filesystem with O_DIRECT, for QEMU's cache=none)")
    ap.add_argument("--loop-ext4", action="store_true",
                    help="put the image on an ext4 filesystem loop-mounted from /tmp (needs root)")
    ap.add_argument("--qemu-cache", default="none",
                    help="QEMU's cache mode (none, as the reference; writeback is buffered like ferry)")
    args = ap.parse_args()
    global QEMU_CACHE
    QEMU_CACHE = args.qemu_cache
    vmms = args.vmm.split(",")
    mount = None
    if args.loop_ext4:
        backing = f"/tmp/bench-disk-fs-{os.getpid()}.ext4"
        mount = f"/tmp/bench-disk-mnt-{os.getpid()}"
        with open(backing, "wb") as f:
            f.truncate((IMAGE_MIB + 128) << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", backing], check=True)
        os.makedirs(mount, exist_ok=True)
        subprocess.run(["mount", "-o", "loop", backing, mount], check=True)
        args.dir = mount
    for f in (KERNEL, INITRD, FERRY):
        if not os.path.exists(f):
            sys.exit(f"bench/disk: {f} is missing (resources/build-guest.sh; cargo build --release)")
    image = os.path.join(args.dir, f"bench-disk-{os.getpid()}.img")
    make_image(image)
    results = {v: [] for v in vmms}
    try:
        for run in range(args.runs):
            for vmm in vmms:
                for attempt in (1, 2):
                    try:
                        res = one_run(vmm, image, timeout=240)
                    except subprocess.TimeoutExpired:
                        res = {"complete": False, "tail": ["timed out"]}
                    if res["complete"]:
                        break
                    print(f"  {vmm} run {run + 1}: incomplete{' (retrying)' if attempt == 1 else ''}: "
                          f"{res.get('tail')}", flush=True)
                if res["complete"]:
                    results[vmm].append(res)
                    figs = " ".join(f"{n}={res[n]:.0f}" for n, _, _ in PHASES)
                    print(f"  {vmm} run {run + 1}: {figs}", flush=True)
    finally:
        os.unlink(image)
        if mount:
            subprocess.run(["umount", mount], check=False)
            os.rmdir(mount)
            os.unlink(backing)

    print()
    print(f"{'figure':<12}" + "".join(f"{v:>24}" for v in vmms) + f"{'ferry/best QEMU':>18}")
    summary = {}
    for name, _, pattern in PHASES:
        unit = "MB/s" if "MB/s" in pattern else "IOPS"
        row = f"{name + ' ' + unit:<12}"
        med = {}
        for v in vmms:
            vals = [r[name] for r in results[v]]
            if vals:
                med[v] = statistics.median(vals)
                row += f"{med[v]:>10.0f} ({min(vals):.0f}-{max(vals):.0f})".rjust(24)
            else:
                row += f"{'-':>24}"
        qemu = [m for v, m in med.items() if v.startswith("qemu")]
        ratio = med["ferry"] / max(qemu) if "ferry" in med and qemu else None
        row += f"{ratio:>17.2f}x" if ratio else f"{'-':>18}"
        summary[name] = {"median": med, "ratio_vs_best_qemu": ratio}
        print(row)
    with open(args.json, "w") as f:
        json.dump({"runs": results, "summary": summary}, f, indent=1)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
