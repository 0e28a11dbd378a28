#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""ferry's benchmark: ferry + passt against QEMU + passt, same kernel, same
initramfs (resources/out/initramfs-bench.cpio.gz), same passt binary, in one
invocation. Runs alternate between the VMMs so that noise hits them alike.

Each run boots the guest once and, from the console, times:
  boot      process start -> guest userspace; -> network configured (DHCP done)
  iperf3    TCP guest->host and host->guest (-R), 1 and 4 streams; UDP guest->host
            (host iperf3 server on loopback, reached through passt's gateway mapping)
  rr        TCP 1-byte request/response, median round trip (ft tcp-rr)
  cpu       user+sys CPU of the VMM and of passt during each transfer, per GB moved
  exit      guest poweroff -> process gone
  memory    RSS outside guest memory (smaps, peak while running) and peak RSS (VmHWM)
and once, the loopback ceiling (iperf3 over the host's loopback). Before the
counted runs each VMM boots once, uncounted (see warm_up).

It prints a table of medians (with min-max spread) and the ratio ferry/QEMU
for each figure, and writes everything to JSON. A run whose transfer fails
or whose guest does not finish is reported and retried once; it never
counts as fast.

Optional reference, not in the default set: qemu-q35-vhost-user, q35 whose
virtio-net is passt itself over vhost-user (passt --vhost-user, guest memory
shared with passt). It needs a passt built with vhost-user (Debian 13's
2025_05_03 has it, Debian 12's does not) and shows what that different design buys.

Usage: bench/bench.py [--runs N] [--vmm ferry,qemu-microvm,qemu-q35] [--json FILE] [--seconds S]
       bench/bench.py --combine A.json B.json ...   (pool earlier invocations' runs)
Needs: a /dev/kvm that boots stock guests (inside ../shared/kvm-host here),
qemu-system-x86, passt, iperf3, resources/build-guest.sh, cargo build --release.
"""
import argparse
import collections
import hashlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no __pycache__ left in bench/
import vmms  # noqa: E402
from vmms import FERRY, MAC, is_vhost_user  # noqa: E402

ROOT = vmms.ROOT
INITRD = vmms.BENCH_INITRD
MEM_MIB = 512
GW = "192.0.2.254"
IPERF_PORT = 5201
RR_PORT = 5202
VMMS = ("ferry", *vmms.QEMU_MACHINES)


def guest_script(seconds):
    """The guest's part: phases between markers, then poweroff. No double quotes."""
    # -i 0: no per-second reports. Each console byte is a trapped port write,
    # and with -P 4 the reports alone cost the guest some 400 exits a second.
    iperf = f"iperf3 -c {GW} -p {IPERF_PORT} -t {seconds} -f m -i 0"
    phases = [
        ("tx1", iperf),
        ("rx1", f"{iperf} -R"),
        ("tx4", f"{iperf} -P 4"),
        ("rx4", f"{iperf} -P 4 -R"),
        ("udp", f"{iperf} -u -b 1G -l 1400"),
        ("rr", f"ft tcp-rr {GW} {RR_PORT} 500"),
    ]
    parts = []
    for name, cmd in phases:
        parts.append(f"echo bench:begin:{name}; {cmd}; echo bench:end:{name}:$?")
    parts.append("echo bench:poweroff; poweroff -f")
    return "; ".join(parts)


def cpu_seconds(pid, own=False):
    """User+system CPU of a process (with any vhost threads of its own);
    `own` leaves out the time its vCPUs ran guest code."""
    total, own_time = vmms.cpu_seconds(pid)
    return own_time if own else total


def children(pid):
    """The processes whose parent is `pid` (ferry's passt)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return out


class Vmm:
    """How to start one VMM with its passt."""

    def __init__(self, name, tmp):
        self.name = name
        self.tmp = tmp
        self.passt = None

    def start(self, cmdline_tail):
        """Starts the VMM (and for QEMU its passt first) to run `cmdline_tail`
        in the guest; returns the process and the moment the VMM itself was
        started (for QEMU after its passt is ready: a runtime starts passt
        ahead, while ferry's clock includes starting its own)."""
        # ferry's default command line, quiet: the console carries the figures.
        cmdline = vmms.append(vmms.ferry_cmdline(), "quiet")
        job = f"\"{cmdline_tail}\""
        if self.name == "ferry":
            cmd = vmms.ferry_cmd(MEM_MIB, INITRD, cmdline, job, "--mac", MAC)
        else:
            sock = os.path.join(self.tmp, f"passt-{self.name}.sock")
            self.passt = vmms.start_passt(sock, vhost_user=is_vhost_user(self.name))
            cmd = vmms.qemu_cmd(self.name, MEM_MIB, INITRD, cmdline, job, net_socket=sock)
        started = time.monotonic()
        return self.popen(cmd), started

    def stderr_path(self):
        """Where the VMM's stderr goes."""
        return os.path.join(self.tmp, f"{self.name}.stderr")

    def popen(self, cmd):
        """Starts the VMM, console on a pipe; its stderr is kept for the report on an incomplete run."""
        with open(self.stderr_path(), "wb") as err:
            return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)

    def stderr_tail(self, lines=4):
        """The last `lines` lines of the VMM's stderr."""
        try:
            with open(self.stderr_path(), errors="replace") as f:
                return [l.rstrip() for l in f.readlines()[-lines:]]
        except OSError:
            return []

    def passt_pid(self, vmm_pid):
        """The pid of this VMM's passt: QEMU's, started here, or ferry's child."""
        if self.passt:
            return self.passt.pid
        kids = children(vmm_pid)
        return kids[0] if kids else None

    def stop(self):
        """Sees QEMU's passt gone (ferry stops its own)."""
        if self.passt:
            vmms.stop_passt(self.passt)
            self.passt = None


def parse_iperf(text, udp=False):
    """(Mbit/s at the receiver, MBytes moved) from iperf3's summary."""
    rows = [l for l in text.splitlines() if "receiver" in l]
    if udp:
        rows = [l for l in text.splitlines() if re.search(r"\d+/\d+ \(", l)] or rows
    sums = [l for l in rows if "[SUM]" in l] or rows
    if not sums:
        return None, None
    line = sums[-1]
    rate = re.search(r"([\d.]+) Mbits/sec", line)
    moved = re.search(r"([\d.]+) (MBytes|GBytes|KBytes)", line)
    if not rate or not moved:
        return None, None
    mb = float(moved.group(1)) * {"KBytes": 1 / 1024, "MBytes": 1, "GBytes": 1024}[moved.group(2)]
    return float(rate.group(1)), mb


def warm_up(vmm, timeout=120):
    """Boots the VMM once and powers off, uncounted. Inside kvm-host the first
    nested guest after kvm-host starts boots 1-2 s faster than any later one,
    and a VMM's first start reads its files from disk: without this, whichever
    VMM runs first would have one unfairly fast boot and the others none."""
    proc, _ = vmm.start("poweroff -f")
    try:
        proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
    vmm.stop()


def one_run(vmm, seconds, timeout):
    """Boots `vmm` once through every phase; its figures, and why not if it did not finish."""
    proc, t0 = vmm.start(guest_script(seconds))
    pid = proc.pid
    res = {"phases": {}}
    memory = vmms.MemorySampler(pid, MEM_MIB, 0.2).start()
    timed_out = threading.Event()

    def kill():
        timed_out.set()
        proc.kill()

    killer = threading.Timer(timeout, kill)
    killer.start()
    phase = None
    text = []
    last = collections.deque(maxlen=4)
    cpu_at = {}
    passt_pid = None
    for raw in proc.stdout:
        now = time.monotonic() - t0
        line = raw.decode(errors="replace").rstrip("\r\n")
        last.append(line)
        if "init: userspace started" in line:
            res["userspace_s"] = now
        elif "init: network configured" in line:
            res["network_s"] = now
        elif line.startswith("bench:begin:"):
            phase = line.split(":")[2]
            text = []
            passt_pid = passt_pid or vmm.passt_pid(pid)
            cpu_at[phase] = (now, cpu_seconds(pid), cpu_seconds(passt_pid) if passt_pid else None,
                             cpu_seconds(pid, own=True))
        elif line.startswith("bench:end:") and phase:
            name, status = line.split(":")[2], line.split(":")[3]
            t_begin, vmm_cpu0, passt_cpu0, own0 = cpu_at[name]
            vmm_cpu1 = cpu_seconds(pid)
            own1 = cpu_seconds(pid, own=True)
            passt_cpu1 = cpu_seconds(passt_pid) if passt_pid else None
            ph = {"ok": status == "0", "wall_s": now - t_begin, "tail": text[-3:]}
            if vmm_cpu0 is not None and vmm_cpu1 is not None:
                ph["vmm_cpu_s"] = vmm_cpu1 - vmm_cpu0
            if passt_cpu0 is not None and passt_cpu1 is not None:
                ph["passt_cpu_s"] = passt_cpu1 - passt_cpu0
            if own0 is not None and own1 is not None:
                ph["vmmown_cpu_s"] = own1 - own0
            body = "\n".join(text)
            if name == "rr":
                m = re.search(r"median_us (\d+)", body)
                ph["rr_us"] = int(m.group(1)) if m else None
                ph["ok"] = ph["ok"] and m is not None
            else:
                rate, mb = parse_iperf(body, udp=(name == "udp"))
                ph["mbit_s"], ph["mbytes"] = rate, mb
                ph["ok"] = ph["ok"] and rate is not None
            res["phases"][name] = ph
            phase = None
        elif line.startswith("bench:poweroff"):
            res["poweroff_at"] = now
        elif phase:
            text.append(line)
    proc.wait()
    killer.cancel()
    memory.stop()
    end = time.monotonic() - t0
    vmm.stop()
    if "poweroff_at" in res:
        res["exit_s"] = end - res.pop("poweroff_at")
    res["rss_outside_kib"], res["peak_rss_kib"] = memory.peak_rss_outside_kib, memory.peak_hwm_kib
    res["complete"] = all(res["phases"].get(n, {}).get("ok") for n in ("tx1", "rx1", "tx4", "rx4", "udp", "rr")) \
        and "exit_s" in res
    if not res["complete"]:
        res["why"] = {"status": proc.returncode, "watchdog_fired": timed_out.is_set(),
                      "phase": phase, "console_tail": list(last), "stderr_tail": vmm.stderr_tail()}
    return res


def rr_server(stop):
    """The host end of ft tcp-rr: echoes every connection on RR_PORT until `stop`."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", RR_PORT))
    srv.listen(4)
    srv.settimeout(0.5)
    while not stop.is_set():
        try:
            conn, _ = srv.accept()
        except socket.timeout:
            continue
        threading.Thread(target=echo_connection, args=(conn,), daemon=True).start()


def echo_connection(conn):
    """Sends back whatever one connection sends, without delay."""
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.settimeout(60)
    try:
        while True:
            b = conn.recv(64)
            if not b:
                break
            conn.sendall(b)
    except OSError:
        pass
    conn.close()


def loopback_ceiling(seconds):
    """iperf3's Mbit/s over the host's loopback: what no VMM can beat."""
    out = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(IPERF_PORT), "-t", str(seconds), "-f", "m"],
                         capture_output=True, text=True).stdout
    return parse_iperf(out)[0]


FIGURES = [
    ("userspace_s", "boot: start -> userspace (s)", None),
    ("network_s", "boot: start -> DHCP done (s)", None),
    ("exit_s", "poweroff -> process gone (s)", None),
    ("tx1.mbit_s", "TCP guest->host 1 stream (Mbit/s)", None),
    ("rx1.mbit_s", "TCP host->guest 1 stream (Mbit/s)", None),
    ("tx4.mbit_s", "TCP guest->host 4 streams (Mbit/s)", None),
    ("rx4.mbit_s", "TCP host->guest 4 streams (Mbit/s)", None),
    ("udp.mbit_s", "UDP guest->host (Mbit/s)", None),
    ("rr.rr_us", "TCP RR median (us)", None),
    ("tx1.vmm_cpu_per_gb", "VMM CPU-s/GB guest->host", None),
    ("rx1.vmm_cpu_per_gb", "VMM CPU-s/GB host->guest", None),
    ("tx1.vmmown_cpu_per_gb", "VMM less guest time CPU-s/GB g->h", None),
    ("rx1.vmmown_cpu_per_gb", "VMM less guest time CPU-s/GB h->g", None),
    ("tx1.passt_cpu_per_gb", "passt CPU-s/GB guest->host", None),
    ("rx1.passt_cpu_per_gb", "passt CPU-s/GB host->guest", None),
    ("rss_outside_kib", "RSS outside guest (KiB)", None),
    ("peak_rss_kib", "peak RSS (KiB)", None),
]


def value(run, key):
    """The figure `key` (a FIGURES key: "name" or "phase.what") of one run."""
    if "." not in key:
        return run.get(key)
    phase, what = key.split(".")
    ph = run["phases"].get(phase, {})
    if what.endswith("_cpu_per_gb"):
        cpu = ph.get(what.replace("_per_gb", "_s"))
        mb = ph.get("mbytes")
        return cpu / (mb / 1024) if cpu is not None and mb else None
    return ph.get(what)


def build_table(results, names):
    """Median, min, max and count of each figure for each VMM."""
    table = {}
    for key, label, _ in FIGURES:
        table[key] = {}
        for name in names:
            table[key][name] = vmms.spread(value(r, key) for r in results.get(name, []))
    return table


def summarize(results, names, ceiling):
    """Prints the table of medians [min-max] and ratios ferry/QEMU; returns it."""
    table = build_table(results, names)
    qemus = [n for n in names if n.startswith("qemu")]
    # Each ratio column as wide as its heading, and at least 16.
    widths = [max(16, len("ferry/" + q[5:]) + 2) for q in qemus]
    head = f"{'figure':<36}" + "".join(f"{n:>24}" for n in names) + "".join(
        f"{'ferry/' + q[5:]:>{w}}" for q, w in zip(qemus, widths))
    print(head)
    for key, label, _ in FIGURES:
        row = f"{label:<36}"
        for name in names:
            c = table[key][name]
            if c["median"] is None:
                row += f"{'-':>24}"
            else:
                row += f"{c['median']:>10.4g} [{c['min']:.3g}-{c['max']:.3g}]".rjust(24)
        for q, w in zip(qemus, widths):
            f, qv = table[key].get("ferry", {}).get("median"), table[key][q]["median"]
            row += f"{(f / qv):>{w}.2f}" if f is not None and qv else f"{'-':>{w}}"
        print(row)
    print(f"loopback ceiling (iperf3 on the host's loopback): {ceiling} Mbit/s")
    print("medians of " + ", ".join(f"{len(results[n])} {n}" for n in names) + " runs; [min-max]")
    return table


def software():
    """Which passt, QEMU and ferry ran: results move with the passt release
    (and `passt --version` may say only "unknown version"), so the binaries'
    digests go with them."""
    def digest(path):
        try:
            with open(path, "rb") as f:
                return hashlib.sha256(f.read()).hexdigest()[:16]
        except (OSError, TypeError):
            return None
    try:
        qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True,
                              timeout=10).stdout.partition("\n")[0] or None
    except (OSError, subprocess.SubprocessError):
        qemu = None
    passt = shutil.which("passt")
    return {"passt": passt, "passt_sha256": digest(passt), "qemu": qemu, "ferry": FERRY,
            "ferry_sha256": digest(FERRY)}


def passt_has_vhost_user():
    """Whether the passt in PATH was built with vhost-user."""
    try:
        out = subprocess.run(["passt", "--help"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return "--vhost-user" in out.stdout + out.stderr


def combine(paths):
    """Pools the runs of earlier invocations' JSON files and prints their table."""
    results, ceilings, builds = {}, [], set()
    for path in paths:
        try:
            with open(path) as f:
                data = json.load(f)
            data["runs"].items()
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            sys.exit(f"bench: {path} is not a bench result ({e!r})")
        for name, runs in data["runs"].items():
            results.setdefault(name, []).extend(runs)
        builds.add(json.dumps(data.get("software"), sort_keys=True))
        if data.get("loopback_mbit_s"):
            ceilings.append(data["loopback_mbit_s"])
    names = [n for n in VMMS if n in results]
    names += [n for n in results if n not in names]
    ceiling = statistics.median(ceilings) if ceilings else None
    summarize(results, names, ceiling)
    print(f"pooled from {len(paths)} invocations: " + ", ".join(paths))
    if len(builds) > 1:
        print("warning: the invocations ran different binaries (passt, QEMU or ferry): "
              + "; ".join(sorted(builds)))
    # The ratios each invocation had on its own, to show how far they move.
    keys = ("tx1.mbit_s", "rx1.mbit_s", "tx1.vmm_cpu_per_gb", "rx1.vmm_cpu_per_gb")
    print("per invocation, ferry/" + "; ferry/".join(n[5:] for n in names if n.startswith("qemu"))
          + ": " + ", ".join(keys))
    for path in paths:
        with open(path) as f:
            runs = json.load(f)["runs"]
        table = build_table(runs, names)
        cells = []
        for key in keys:
            ferry = table.get(key, {}).get("ferry", {}).get("median")
            ratios = [ferry / q["median"] if ferry is not None and q.get("median") else None
                      for n, q in table.get(key, {}).items() if n.startswith("qemu")]
            cells.append("/".join("-" if r is None else f"{r:.2f}" for r in ratios))
        print(f"  {path}: " + "  ".join(cells))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--vmm", default="ferry,qemu-microvm,qemu-q35")
    ap.add_argument("--seconds", type=int, default=3, help="length of each iperf3 phase")
    ap.add_argument("--json", default=os.path.join(ROOT, "target/bench.json"))
    ap.add_argument("--combine", nargs="+", metavar="JSON",
                    help="run nothing: pool the runs of earlier invocations' JSON files into one table")
    args = ap.parse_args()
    if args.combine:
        combine(args.combine)
        return
    vmms.require_files("bench", (vmms.KERNEL, INITRD, FERRY))
    names = args.vmm.split(",")
    unknown = [n for n in names if n not in VMMS]
    if unknown:
        sys.exit(f"bench: unknown --vmm {','.join(unknown)} (known: {','.join(VMMS)})")
    if any(is_vhost_user(n) for n in names) and not passt_has_vhost_user():
        sys.exit(f"bench: {shutil.which('passt')} has no --vhost-user (Debian 13's passt has it): "
                 "put such a passt first in PATH, or leave qemu-q35-vhost-user out")
    vmms.ferry_cmdline()
    built = software()
    print("software: " + ", ".join(f"{k} {v}" for k, v in built.items()), file=sys.stderr)
    iperf = subprocess.Popen(["iperf3", "-s", "-p", str(IPERF_PORT)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    stop = threading.Event()
    threading.Thread(target=rr_server, args=(stop,), daemon=True).start()
    time.sleep(0.5)
    results = {n: [] for n in names}
    try:
        ceiling = loopback_ceiling(args.seconds)
        with vmms.socket_dir() as tmp:
            for name in names:
                print(f"warm-up boot, not counted: {name}", file=sys.stderr)
                warm_up(Vmm(name, tmp))
            for i in range(args.runs):
                for name in names:
                    for attempt in (1, 2):
                        r = one_run(Vmm(name, tmp), args.seconds, timeout=240 + 10 * args.seconds)
                        if r["complete"]:
                            break
                        print(f"run {i} {name}: incomplete ({'retrying once' if attempt == 1 else 'dropped'}): "
                              f"{json.dumps(r.get('why'))}; phases done: "
                              f"{[n for n, p in r['phases'].items() if p.get('ok')]}", file=sys.stderr)
                    if r["complete"]:
                        results[name].append(r)
                        # Written after every run, so that an invocation cut short keeps its runs.
                        vmms.save_json(args.json, {"runs": results, "loopback_mbit_s": ceiling,
                                         "seconds": args.seconds, "software": built, "partial": True})
                        print(f"run {i} {name}: boot {r.get('userspace_s', 0):.1f}s "
                              f"tx {value(r, 'tx1.mbit_s')} rx {value(r, 'rx1.mbit_s')} Mbit/s "
                              f"rr {value(r, 'rr.rr_us')} us", file=sys.stderr)
    finally:
        stop.set()
        iperf.terminate()
    table = summarize(results, names, ceiling)
    vmms.save_json(args.json, {"table": table, "runs": results, "loopback_mbit_s": ceiling,
                     "seconds": args.seconds, "software": built})
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
