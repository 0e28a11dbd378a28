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
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no __pycache__ left in bench/
import vmms  # noqa: E402

ROOT = vmms.ROOT
IMAGE_MIB = 512
MEM_MIB = 512
QEMU_CACHE = "none"
VMMS = ("ferry", "qemu-q35", "qemu-microvm")
PHASES = [
    ("seq-write", "ft disk-seq /dev/vda write 128", r"([\d.]+) MB/s"),
    ("seq-read", "ft disk-seq /dev/vda read 256", r"([\d.]+) MB/s"),
    ("rand-read", "ft disk-rand /dev/vda 5 1", r"([\d.]+) IOPS"),
    ("rand-read4", "ft disk-rand /dev/vda 5 4", r"([\d.]+) IOPS"),
]


def guest_script():
    """The guest's part: each phase, a marker when it succeeded, then poweroff. No double quotes."""
    parts = [f"{cmd} && echo bench:{name}:ok" for name, cmd, _ in PHASES]
    return "; ".join(parts) + "; poweroff -f"


def command(vmm, image):
    """The command line that boots `vmm` with `image` as its disk to run the phases."""
    # ferry's default command line, quiet: the console carries the figures.
    cmdline = vmms.append(vmms.ferry_cmdline(), "quiet")
    job = f"\"{guest_script()}\""
    if vmm == "ferry":
        return vmms.ferry_cmd(MEM_MIB, vmms.INITRD, cmdline, job, "--net", "none", "--disk", image)
    drive = f"file={image},format=raw,cache={QEMU_CACHE},aio=threads"
    return vmms.qemu_cmd(vmm, MEM_MIB, vmms.INITRD, cmdline, job, drive=drive)


def one_run(vmm, image, timeout):
    """Boots `vmm` once; the figure of each phase it finished, and whether it finished them all."""
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
    names = args.vmm.split(",")
    unknown = [n for n in names if n not in VMMS]
    if unknown:
        sys.exit(f"bench/disk: unknown --vmm {','.join(unknown)} (known: {','.join(VMMS)})")
    # Before anything is made that would need cleaning up.
    vmms.require_files("bench/disk")
    vmms.ferry_cmdline()
    mount = None
    if args.loop_ext4:
        backing = f"/tmp/bench-disk-fs-{os.getpid()}.ext4"
        mount = f"/tmp/bench-disk-mnt-{os.getpid()}"
        with open(backing, "wb") as f:
            f.truncate((IMAGE_MIB + 128) << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", backing], check=True)
        os.makedirs(mount, exist_ok=True)
        # kvm-host's kernel has loop as a module, not loaded until asked for.
        subprocess.run(["modprobe", "-q", "loop"], check=False)
        subprocess.run(["mount", "-o", "loop", backing, mount], check=True)
        args.dir = mount
    image = os.path.join(args.dir, f"bench-disk-{os.getpid()}.img")
    make_image(image)
    results = {v: [] for v in names}
    try:
        for run in range(args.runs):
            for vmm in names:
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
    print(f"{'figure':<12}" + "".join(f"{v:>24}" for v in names) + f"{'ferry/best QEMU':>18}")
    summary = {}
    for name, _, pattern in PHASES:
        unit = "MB/s" if "MB/s" in pattern else "IOPS"
        row = f"{name + ' ' + unit:<12}"
        med = {}
        for v in names:
            s = vmms.spread(r[name] for r in results[v])
            if s["n"]:
                med[v] = s["median"]
                row += f"{med[v]:>10.0f} ({s['min']:.0f}-{s['max']:.0f})".rjust(24)
            else:
                row += f"{'-':>24}"
        qemu = [m for v, m in med.items() if v.startswith("qemu")]
        ratio = med["ferry"] / max(qemu) if "ferry" in med and qemu else None
        row += f"{ratio:>17.2f}x" if ratio else f"{'-':>18}"
        summary[name] = {"median": med, "ratio_vs_best_qemu": ratio}
        print(row)
    vmms.save_json(args.json, {"runs": results, "summary": summary})
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
