#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""passt-recording-relay: a passt that records what ferry sends it.

The checksum test (guest_checksums_are_completed) runs ferry with
`--passt` naming this script. ferry starts it as it would passt, with
`-f -F FD ...` and FD one end of its socket pair; the relay starts the
real passt with the same arguments on a socket pair of its own, passes
the stream both ways unchanged, and writes what ferry sends (passt's
framing: each frame after its 4-byte big-endian length) to the file
that PASST_RECORDING_RELAY_FILE names. passt's own --pcap would do, but
passt dies under seccomp where the host's clock has no vDSO (kvm-host's
HPET clock source).

A script rather than a Rust binary: cargo builds an integration test's
helper binaries only as [[bin]] targets of the package, which would ship
it with ferry.
"""

import os
import socket
import subprocess
import sys
import threading

RECORD_ENV = "PASST_RECORDING_RELAY_FILE"
CHUNK = 256 * 1024


def relay(args):
    record = os.environ.get(RECORD_ENV)
    if not record:
        raise RuntimeError(f"{RECORD_ENV} names no record file")
    if len(args) < 3 or args[:2] != ["-f", "-F"] or not args[2].isdigit():
        raise RuntimeError(f"unexpected arguments {args}")
    ferry = socket.socket(fileno=int(args[2]))
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    passt = subprocess.Popen(
        ["passt", "-f", "-F", str(theirs.fileno()), *args[3:]],
        pass_fds=[theirs.fileno()],
    )
    theirs.close()

    def back():
        """passt to ferry; passt's end of the stream ends ferry's."""
        try:
            while data := ours.recv(CHUNK):
                ferry.sendall(data)
        except OSError:
            pass
        try:
            ferry.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    threading.Thread(target=back, daemon=True).start()
    # Unbuffered: ferry may stop the relay with SIGTERM once its own end
    # is closed, and what was read must be in the record by then.
    with open(record, "wb", buffering=0) as file:
        while True:
            try:
                data = ferry.recv(CHUNK)
            except OSError:
                break
            if not data:
                break
            try:
                view = memoryview(data)
                while view:
                    view = view[file.write(view):]
                ours.sendall(data)
            except OSError:
                break
    try:
        ours.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    passt.wait()


def main():
    try:
        relay(sys.argv[1:])
    except (OSError, RuntimeError) as e:
        print(f"passt-recording-relay: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
