#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""ferry on a TAP against QEMU on the same TAP: `--net tap:NAME` against
q35's virtio-net-pci on `-netdev tap` with vhost=off (QEMU's own thread
moves the frames) and vhost=on (the kernel's vhost-net does), same kernel,
same initramfs (resources/out/initramfs-bench.cpio.gz), one TAP made here
and handed to each VMM in turn. Runs alternate between the VMMs.

The TAP (ferrybench0) carries 198.18.1.1/24 on the host; the guest takes
198.18.1.2 (ferry.dhcp=off: no DHCP server behind a TAP). Each run boots the
guest once and runs iperf3 against a server on the TAP's address:
  tx1/rx1   TCP guest->host and host->guest (-R), 1 stream
  tx4/rx4   the same with 4 streams
  cpu       user+sys CPU of the VMM per GB moved, its vhost kernel threads
            (vhost-PID) included; and less the time its vCPUs ran guest code
It prints medians [min-max] and the ratios ferry/QEMU, and writes JSON. A
run whose transfer fails is retried once and never counted.

Usage: bench/tap.py [--runs N] [--seconds S] [--vmm ferry,qemu-q35-tap,qemu-q35-vhost] [--json FILE]
Needs root (it makes the TAP, loads tun and vhost_net), a /dev/kvm that
boots stock guests (inside ../shared/kvm-host here), qemu-system-x86,
iperf3, resources/build-guest.sh, cargo build --release.
"""
import argparse
import collections
import json
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no __pycache__ left in bench/
import vmms  # noqa: E402
from bench import parse_iperf  # noqa: E402

TAP = "ferrybench0"
HOST_IP = "198.18.1.1"
GUEST_IP = "198.18.1.2"
MEM_MIB = 512
IPERF_PORT = 5211
INITRD = vmms.BENCH_INITRD
VMMS = ("ferry", "qemu-q35-tap", "qemu-q35-vhost")
PHASES = ("tx1", "rx1", "tx4", "rx4")

def guest_script(seconds):
    """The guest's part: a static address, the phases between markers, poweroff. No double quotes."""
    iperf = f"iperf3 -c {HOST_IP} -p {IPERF_PORT} -t {seconds} -f m -i 0"
    parts = [f"ip addr add {GUEST_IP}/24 dev eth0", "ip link set eth0 up",
             # The first frames after the link comes up can be lost to ARP.
             f"ping -c 1 -W 5 {HOST_IP} >/dev/null"]
    for name, cmd in (("tx1", iperf), ("rx1", f"{iperf} -R"), ("tx4", f"{iperf} -P 4"),
                      ("rx4", f"{iperf} -P 4 -R")):
        parts.append(f"echo bench:begin:{name}; {cmd}; echo bench:end:{name}:$?")
    parts.append("echo bench:poweroff; poweroff -f")
    return "; ".join(parts)


def command(name, seconds):
    """The VMM `name`'s command line for one run."""
    cmdline = vmms.append(vmms.ferry_cmdline(), "quiet ferry.dhcp=off")
    job = f"\"{guest_script(seconds)}\""
    if name == "ferry":
        return vmms.ferry_cmd(MEM_MIB, INITRD, cmdline, job, "--mac", vmms.MAC, "--net", f"tap:{TAP}")
    return vmms.qemu_cmd("qemu-q35", MEM_MIB, INITRD, cmdline, job, tap=(TAP, name == "qemu-q35-vhost"))


def one_run(name, seconds, timeout, tmp):
    """Boots `name` once through every phase; its figures, and why not if it did not finish."""
    err_path = os.path.join(tmp, f"{name}.stderr")
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(command(name, seconds), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=err)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    res = {"phases": {}}
    phase, text, at = None, [], {}
    last = collections.deque(maxlen=4)
    for raw in proc.stdout:
        line = raw.decode(errors="replace").rstrip("\r\n")
        last.append(line)
        now = time.monotonic()
        if line.startswith("bench:begin:"):
            phase, text = line.split(":")[2], []
            at[phase] = (now, *vmms.cpu_seconds(proc.pid))
        elif line.startswith("bench:end:") and phase:
            status = line.split(":")[3]
            t0, all0, own0 = at[phase]
            all1, own1 = vmms.cpu_seconds(proc.pid)
            rate, mb = parse_iperf("\n".join(text))
            ph = {"ok": status == "0" and rate is not None, "mbit_s": rate, "mbytes": mb,
                  "wall_s": now - t0}
            if all0 is not None and all1 is not None:
                ph["vmm_cpu_s"], ph["vmmown_cpu_s"] = all1 - all0, own1 - own0
            res["phases"][phase] = ph
            phase = None
        elif phase:
            text.append(line)
    proc.wait()
    timer.cancel()
    res["complete"] = all(res["phases"].get(p, {}).get("ok") for p in PHASES)
    if not res["complete"]:
        try:
            with open(err_path, errors="replace") as f:
                tail = [l.rstrip() for l in f.readlines()[-4:]]
        except OSError:
            tail = []
        res["why"] = {"status": proc.returncode, "phase": phase, "console_tail": list(last), "stderr_tail": tail}
    return res


FIGURES = [
    ("tx1.mbit_s", "TCP guest->host 1 stream (Mbit/s)"),
    ("rx1.mbit_s", "TCP host->guest 1 stream (Mbit/s)"),
    ("tx4.mbit_s", "TCP guest->host 4 streams (Mbit/s)"),
    ("rx4.mbit_s", "TCP host->guest 4 streams (Mbit/s)"),
    ("tx1.vmm_cpu_per_gb", "VMM CPU-s/GB guest->host"),
    ("rx1.vmm_cpu_per_gb", "VMM CPU-s/GB host->guest"),
    ("tx1.vmmown_cpu_per_gb", "VMM less guest time CPU-s/GB g->h"),
    ("rx1.vmmown_cpu_per_gb", "VMM less guest time CPU-s/GB h->g"),
]


def value(run, key):
    """The figure `key` ("phase.what") of one run."""
    phase, what = key.split(".")
    ph = run["phases"].get(phase, {})
    if what.endswith("_per_gb"):
        cpu, mb = ph.get(what.replace("_per_gb", "_s")), ph.get("mbytes")
        return cpu / (mb / 1024) if cpu is not None and mb else None
    return ph.get(what)


def summarize(results, names):
    """Prints medians [min-max] and ratios ferry/QEMU; returns the table."""
    table = {k: {n: vmms.spread(value(r, k) for r in results[n]) for n in names} for k, _ in FIGURES}
    qemus = [n for n in names if n != "ferry"]
    print(f"{'figure':<36}" + "".join(f"{n:>24}" for n in names)
          + "".join(f"{'ferry/' + q[5:]:>22}" for q in qemus))
    for key, label in FIGURES:
        row = f"{label:<36}"
        for n in names:
            c = table[key][n]
            row += (f"{c['median']:>10.4g} [{c['min']:.3g}-{c['max']:.3g}]".rjust(24)
                    if c["median"] is not None else f"{'-':>24}")
        for q in qemus:
            f, qv = table[key].get("ferry", {}).get("median"), table[key][q]["median"]
            row += f"{f / qv:>22.2f}" if f is not None and qv else f"{'-':>22}"
        print(row)
    print("medians of " + ", ".join(f"{len(results[n])} {n}" for n in names) + " runs; [min-max]")
    return table


def make_tap():
    """The TAP every VMM gets in turn, with the host's address on it."""
    for mod in ("tun", "vhost_net"):
        subprocess.run(["modprobe", "-q", mod], check=False)
    subprocess.run(["ip", "link", "del", TAP], stderr=subprocess.DEVNULL, check=False)
    for args in (["tuntap", "add", TAP, "mode", "tap"], ["addr", "add", f"{HOST_IP}/24", "dev", TAP],
                 ["link", "set", TAP, "up"]):
        subprocess.run(["ip", *args], check=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=3, help="length of each iperf3 phase")
    ap.add_argument("--vmm", default=",".join(VMMS))
    ap.add_argument("--json", default=os.path.join(vmms.ROOT, "target/bench-tap.json"))
    args = ap.parse_args()
    names = args.vmm.split(",")
    unknown = [n for n in names if n not in VMMS]
    if unknown:
        sys.exit(f"tap.py: unknown --vmm {','.join(unknown)} (known: {','.join(VMMS)})")
    vmms.require_files("tap.py", (vmms.KERNEL, INITRD, vmms.FERRY))
    if os.geteuid() != 0:
        sys.exit("tap.py: needs root (it makes a TAP and loads tun and vhost_net)")
    vmms.ferry_cmdline()
    make_tap()
    iperf = subprocess.Popen(["iperf3", "-s", "-B", HOST_IP, "-p", str(IPERF_PORT)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    results = {n: [] for n in names}
    timeout = 120 + 8 * args.seconds
    try:
        with vmms.socket_dir() as tmp:
            for i in range(args.runs + 1):
                for name in names:
                    for attempt in (1, 2):
                        r = one_run(name, args.seconds, timeout, tmp)
                        if r["complete"]:
                            break
                        print(f"run {i} {name}: incomplete ({'retrying once' if attempt == 1 else 'dropped'}): "
                              f"{json.dumps(r.get('why'))}", file=sys.stderr)
                    if not r["complete"]:
                        continue
                    if i == 0:
                        # The first round warms each VMM up (files read, the first nested boot) and is not counted.
                        print(f"warm-up, not counted: {name}", file=sys.stderr)
                        continue
                    results[name].append(r)
                    vmms.save_json(args.json, {"runs": results, "seconds": args.seconds, "partial": True})
                    print(f"run {i} {name}: " + " ".join(f"{p} {value(r, p + '.mbit_s')}" for p in PHASES)
                          + " Mbit/s", file=sys.stderr)
    finally:
        iperf.terminate()
        subprocess.run(["ip", "link", "del", TAP], stderr=subprocess.DEVNULL, check=False)
    table = summarize(results, names)
    vmms.save_json(args.json, {"table": table, "runs": results, "seconds": args.seconds})
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
