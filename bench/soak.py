#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""soak: one long-lived ferry under a mix of work, its footprint sampled;
then a boot loop. Not a benchmark against QEMU and not part of CI: it shows
that nothing grows or is left behind.

The VM (256 MiB, passt card, virtio-blk scratch disk, vsock, API socket)
runs for --minutes while, round after round:
  - TCP host -> guest through a --publish forward: 256 KiB sent to the
    guest's echo server and checked on the way back;
  - TCP guest -> host: the guest sends 256 KiB to a host sink every second;
  - vsock: --vsock-per-round connections (CONNECT 1024, 4 KiB echoed);
  - API: --api-per-round requests (GET /, GET /machine-config, GET /vm/config);
  - disk: the guest writes 1 MiB at a time and fsyncs it, in a loop;
  - every --kill-every seconds passt is killed (ferry starts a new one).
Every 10 s ferry's RSS outside guest memory, open descriptors and threads
are sampled. After a warm-up (the first fifth), each must stay within a
small band; the script prints the samples' range and says whether it did.

Then --boots short VMs in sequence, each with a passt card, a vsock socket
and an API socket: afterwards no ferry or passt process, no socket file and
no new file in the temporary directory or /dev/shm may be left. A boot that
does not end within 180 s (the nested emulation freezes one now and then) is
killed and listed apart. --minutes 0 runs the boot loop alone.

Run inside kvm-host (the socket files on /tmp):
  ../shared/kvm-host/run-in-kvm-host -t 4000 -- python3 bench/soak.py --minutes 30
  ../shared/kvm-host/run-in-kvm-host -t 5400 -- python3 bench/soak.py --minutes 0 --boots 300
Writes target/soak.json, and ferry's log of the long run to target/soak-ferry.log.
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vmms  # noqa: E402

MEM_MIB = 256
GUEST_ECHO_PORT = 5000
GATEWAY = "192.0.2.254"
CHUNK = 256 * 1024
# How much each footprint figure may move after the warm-up.
RSS_BAND_KIB = 2048
FD_BAND = 4
THREAD_BAND = 2


def passt_pids():
    """Process ids of every passt running (Debian's passt runs passt.avx2)."""
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/comm") as f:
                    comm = f.read().strip()
            except OSError:
                continue
            if comm == "passt" or comm.startswith("passt."):
                pids.append(int(name))
    return pids


def footprint(pid):
    """(RSS outside guest memory in KiB, open descriptors, threads) of `pid`."""
    rss, _ = vmms.memory_kib(pid, MEM_MIB)
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    with open(f"/proc/{pid}/status") as f:
        threads = next(int(l.split()[1]) for l in f if l.startswith("Threads:"))
    return rss, fds, threads


def spawner_pss(ferry_pid):
    """The proportional set size in KiB of ferry's passt spawner (a fork of
    ferry: the pages it still shares with ferry count half), or 0."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{name}/comm") as f:
                comm = f.read().strip()
            if comm == "ferry-spawner" and int(fields[1]) == ferry_pid:
                with open(f"/proc/{name}/smaps_rollup") as f:
                    return next(int(l.split()[1]) for l in f if l.startswith("Pss:"))
        except (OSError, ValueError, StopIteration, IndexError):
            continue
    return 0


def recv_all(s):
    """Everything `s` receives until its peer closes."""
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk


def api_get(sock_path, path):
    """One HTTP/1.1 GET on the API socket; the status code."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(sock_path)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        data = recv_all(s)
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0


def vsock_echo(uds, payload):
    """CONNECT 1024 on the hybrid vsock socket, `payload` echoed back."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(uds)
        s.sendall(b"CONNECT 1024\n")
        line = b""
        while not line.endswith(b"\n"):
            b = s.recv(1)
            if not b:
                return False
            line += b
        if not line.startswith(b"OK "):
            return False
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        return got == payload


def tcp_echo(port, payload):
    """`payload` to the guest's echo server through the forward, and back."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        sender = threading.Thread(target=lambda: (s.sendall(payload), s.shutdown(socket.SHUT_WR)))
        sender.start()
        got = recv_all(s)
        sender.join()
    return got == payload


def sink_server(stop):
    """A TCP sink on 127.0.0.1 for the guest's transfers; its port and a byte counter."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.5)
    received = [0]

    def serve():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except socket.timeout:
                continue
            with conn:
                conn.settimeout(30)
                try:
                    while True:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        received[0] += len(chunk)
                except OSError:
                    pass

    threading.Thread(target=serve, daemon=True).start()
    return srv.getsockname()[1], received


def soak(args, tmp):
    """The long-lived VM; returns the report."""
    stop = threading.Event()
    sink_port, received = sink_server(stop)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        fwd_port = s.getsockname()[1]
    disk = os.path.join(tmp, "scratch.img")
    with open(disk, "wb") as f:
        f.truncate(64 << 20)
    uds = os.path.join(tmp, "soak.vsock")
    api = os.path.join(tmp, "soak.api")
    job = ("\"dmesg -n 1; ft vsock-echo 1024 & "
           f"while :; do nc -l -p {GUEST_ECHO_PORT} -e cat; done & "
           "while :; do dd if=/dev/urandom of=/dev/vda bs=1M count=1 conv=fsync 2>/dev/null; sleep 1; done & "
           f"while :; do head -c {CHUNK} /dev/zero | nc -w 5 {GATEWAY} {sink_port}; sleep 1; done\"")
    cmd = vmms.ferry_cmd(MEM_MIB, vmms.INITRD, vmms.append(vmms.ferry_cmdline(), "quiet"), job,
                         "--log-level", "info",
                         "--disk", disk, "--vsock", f"cid=3,uds={uds}", "--api-sock", api,
                         "--publish", f"127.0.0.1:{fwd_port}:{GUEST_ECHO_PORT}")
    log = open(os.path.join(tmp, "ferry.log"), "w")
    ferry = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    payload = os.urandom(CHUNK)
    counts = {"tcp_echoes": 0, "tcp_failures": 0, "vsock": 0, "vsock_failures": 0,
              "api": 0, "api_failures": 0, "passt_kills": 0}
    samples = []
    start = time.monotonic()
    end = start + args.minutes * 60
    next_sample = start
    next_kill = start + args.kill_every
    # The guest boots first: its vsock server answering means it is up.
    while time.monotonic() < start + 120 and not os.path.exists(uds):
        time.sleep(0.2)
    while time.monotonic() < start + 120:
        try:
            if vsock_echo(uds, b"up"):
                break
        except OSError:
            time.sleep(0.5)
    while time.monotonic() < end and ferry.poll() is None:
        now = time.monotonic()
        if now >= next_sample:
            rss, fds, threads = footprint(ferry.pid)
            samples.append({"t": round(now - start), "rss_kib": rss, "fds": fds, "threads": threads,
                            "spawner_pss_kib": spawner_pss(ferry.pid)})
            next_sample += 10
        if now >= next_kill:
            for pid in passt_pids():
                os.kill(pid, signal.SIGKILL)
            counts["passt_kills"] += 1
            next_kill += args.kill_every
            time.sleep(3)
        try:
            ok = tcp_echo(fwd_port, payload)
        except OSError:
            ok = False
        counts["tcp_echoes" if ok else "tcp_failures"] += 1
        for i in range(args.vsock_per_round):
            try:
                ok = vsock_echo(uds, payload[:4096])
            except OSError:
                ok = False
            counts["vsock" if ok else "vsock_failures"] += 1
        for i in range(args.api_per_round):
            path = ["/", "/machine-config", "/vm/config"][i % 3]
            try:
                ok = api_get(api, path) == 200
            except OSError:
                ok = False
            counts["api" if ok else "api_failures"] += 1
    alive = ferry.poll() is None
    ferry.send_signal(signal.SIGTERM)
    try:
        status = ferry.wait(timeout=60)
    except subprocess.TimeoutExpired:
        ferry.kill()
        status = ferry.wait()
    stop.set()
    log.close()
    with open(os.path.join(tmp, "ferry.log"), errors="replace") as f:
        text = f.read()
    # Kept: what ended the VM, if it ended early.
    with open(os.path.join(vmms.ROOT, "target/soak-ferry.log"), "w") as f:
        f.write(text)
    restarts = text.count("passt restarted (pid")
    ends = ("triple-faulted", "the guest reset", "exited with status", "the guest powered off")
    ended_by = next((l.strip() for sign in ends for l in text.splitlines() if sign in l), None)
    warm = samples[len(samples) // 5:]
    band = {k: (min(s[k] for s in warm), max(s[k] for s in warm))
            for k in ("rss_kib", "fds", "threads", "spawner_pss_kib")} if warm else {}
    flat = bool(warm) and (band["rss_kib"][1] - band["rss_kib"][0] <= RSS_BAND_KIB
                           and band["fds"][1] - band["fds"][0] <= FD_BAND
                           and band["threads"][1] - band["threads"][0] <= THREAD_BAND)
    return {"minutes": args.minutes, "ran_for_s": round(time.monotonic() - start),
            "ran_to_the_end": alive, "exit_status": status, "ended_by": ended_by,
            "guest_to_host_bytes": received[0], "passt_restarts_logged": restarts,
            **counts, "after_warm_up": band, "flat": flat, "samples": samples}


def boot_loop(args, tmp):
    """--boots short VMs in sequence; what they left behind."""
    before = set(os.listdir(tempfile.gettempdir()))
    shm_before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    failures = 0
    hung = []
    start = time.monotonic()
    for i in range(args.boots):
        uds = os.path.join(tmp, f"b{i}.vsock")
        api = os.path.join(tmp, f"b{i}.api")
        cmd = vmms.ferry_cmd(128, vmms.INITRD, vmms.append(vmms.ferry_cmdline(), "quiet"),
                             f"\"exit {i % 7}\"", "--vsock", f"cid=3,uds={uds}", "--api-sock", api)
        try:
            out = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=180)
        except subprocess.TimeoutExpired:
            # A boot frozen by the nested emulation (run() has killed ferry):
            # counted apart; what it leaves behind is still checked below.
            hung.append(i)
            print(f"soak: boot {i}: no exit within 180 s, killed", file=sys.stderr, flush=True)
            continue
        if (i + 1) % 10 == 0:
            print(f"soak: {i + 1} boots done", flush=True)
        if out.returncode != i % 7:
            failures += 1
            print(f"soak: boot {i}: status {out.returncode}, expected {i % 7}", file=sys.stderr)
    left_files = sorted(set(os.listdir(tmp)) - {"scratch.img", "ferry.log"})
    left_tmp = sorted(set(os.listdir(tempfile.gettempdir())) - before)
    left_shm = sorted((set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()) - shm_before)
    left_ferry = [pid for name in ("ferry", "ferry-spawner")
                  for pid in subprocess.run(["pgrep", "-x", name], capture_output=True, text=True).stdout.split()]
    return {"boots": args.boots, "seconds": round(time.monotonic() - start, 1), "wrong_status": failures,
            "hung_and_killed": hung, "files_left_in_the_vm_directory": left_files,
            "new_files_in_tmp": left_tmp, "new_files_in_dev_shm": left_shm,
            "ferry_left": left_ferry, "passt_left": passt_pids()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30, help="0: the boot loop only")
    p.add_argument("--kill-every", type=float, default=300, help="seconds between passt kills")
    p.add_argument("--vsock-per-round", type=int, default=20)
    p.add_argument("--api-per-round", type=int, default=30)
    p.add_argument("--boots", type=int, default=100)
    args = p.parse_args()
    vmms.require_files("soak")
    with tempfile.TemporaryDirectory(prefix="ferry-soak-") as tmp:
        report = {}
        if args.minutes > 0:
            report["soak"] = soak(args, tmp)
            print_soak(report["soak"])
        report["boot_loop"] = boot_loop(args, tmp)
        print(f"soak: boot loop {report['boot_loop']}")
    path = os.path.join(vmms.ROOT, "target/soak.json")
    vmms.save_json(path, report)
    s = report.get("soak")
    ok = (s is None or (s["flat"] and s["ran_to_the_end"])) and not any(
        report["boot_loop"][k] for k in ("wrong_status", "files_left_in_the_vm_directory", "new_files_in_tmp",
                                         "new_files_in_dev_shm", "ferry_left", "passt_left"))
    print(f"soak: {'clean' if ok else 'NOT clean'}; {path}")
    sys.exit(0 if ok else 1)


def print_soak(s):
    """The long run's summary lines."""
    print(f"soak: {s['minutes']} min asked, ran {s['ran_for_s']} s, exit {s['exit_status']} "
          f"({s['ended_by']}), to the end: {s['ran_to_the_end']}; "
          f"tcp echoes {s['tcp_echoes']} ({s['tcp_failures']} failed), vsock {s['vsock']} "
          f"({s['vsock_failures']} failed), api {s['api']} ({s['api_failures']} failed), "
          f"guest->host {s['guest_to_host_bytes'] >> 20} MiB, passt killed {s['passt_kills']} "
          f"and restarted {s['passt_restarts_logged']} times")
    print(f"soak: after warm-up {s['after_warm_up']}: {'flat' if s['flat'] else 'NOT flat'}")


if __name__ == "__main__":
    main()
