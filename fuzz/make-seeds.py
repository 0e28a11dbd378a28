#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Writes the seed corpus of the fuzz targets into fuzz/corpus/<target>/.

Seeds are small, realistic inputs in each target's input format (see the
comment at the top of each target and fuzz/src/lib.rs). Each seed file is
rewritten; other inputs in the corpus (from `fuzz/run.sh long N --cmin`)
are left alone:

    python3 fuzz/make-seeds.py

With --capture DIR it also turns traffic recorded by a ferry built with
`--features capture` (FERRY_CAPTURE=DIR, e.g. while the guest tests run)
into seeds named cap-<hash>: the guest's own descriptor chains (net TX and
RX, block, vsock), passt's stream, CONNECT lines and API requests, a few
of each shape:

    python3 fuzz/make-seeds.py --capture /tmp/ferry-capture
"""

import argparse
import glob
import hashlib
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")

# --- Ethernet frames -------------------------------------------------------

GUEST_MAC = bytes.fromhex("525400123456")
GW_MAC = bytes.fromhex("9a55e2a04c5b")
BROADCAST = b"\xff" * 6
GUEST_IP = bytes([10, 0, 2, 15])
GW_IP = bytes([10, 0, 2, 2])


def csum(data):
    """The Internet checksum (RFC 1071) of data, as an int."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def folded_sum(data):
    """The folded ones' complement sum (what a guest leaves in a partial checksum field)."""
    return ~csum(data) & 0xFFFF


def ether(dst, src, ethertype, payload):
    return dst + src + struct.pack("!H", ethertype) + payload


def ipv4(src, dst, proto, payload, ident=0x1c46):
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0x4000, 64, proto, 0, src, dst)
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return hdr + payload


def pseudo4(src, dst, proto, length):
    return src + dst + struct.pack("!BBH", 0, proto, length)


def arp_request():
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, GUEST_MAC, GUEST_IP, b"\0" * 6, GW_IP)
    return ether(BROADCAST, GUEST_MAC, 0x0806, arp)


def arp_reply():
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 2, GW_MAC, GW_IP, GUEST_MAC, GUEST_IP)
    return ether(GUEST_MAC, GW_MAC, 0x0806, arp)


def udp(src_ip, dst_ip, sport, dport, payload, partial=False):
    length = 8 + len(payload)
    seg = struct.pack("!HHHH", sport, dport, length, 0) + payload
    pseudo = pseudo4(src_ip, dst_ip, 17, length)
    value = folded_sum(pseudo) if partial else (csum(pseudo + seg) or 0xFFFF)
    return seg[:6] + struct.pack("!H", value) + seg[8:]


def dhcp_discover(partial=False):
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, 0x3903F326, 0, 0x8000,
                        b"\0" * 4, b"\0" * 4, b"\0" * 4, b"\0" * 4, GUEST_MAC + b"\0" * 10,
                        b"\0" * 64, b"\0" * 128)
    options = b"\x63\x82\x53\x63" + b"\x35\x01\x01" + b"\x37\x04\x01\x03\x06\x0f" + b"\xff"
    payload = bootp + options
    payload += b"\0" * (300 - len(payload))
    src, dst = b"\0" * 4, b"\xff" * 4
    return ether(BROADCAST, GUEST_MAC, 0x0800, ipv4(src, dst, 17, udp(src, dst, 68, 67, payload, partial)))


def tcp_syn(partial=False):
    dst_ip = bytes([93, 184, 216, 34])
    opts = b"\x02\x04\x05\xb4" + b"\x04\x02" + b"\x01\x03\x03\x07"
    opts += b"\0" * ((4 - len(opts) % 4) % 4)
    off = (20 + len(opts)) // 4
    seg = struct.pack("!HHIIBBHHH", 40000, 80, 0x12345678, 0, off << 4, 0x02, 64240, 0, 0) + opts
    pseudo = pseudo4(GUEST_IP, dst_ip, 6, len(seg))
    value = folded_sum(pseudo) if partial else csum(pseudo + seg)
    seg = seg[:16] + struct.pack("!H", value) + seg[18:]
    return ether(GW_MAC, GUEST_MAC, 0x0800, ipv4(GUEST_IP, dst_ip, 6, seg))


def icmp_echo():
    body = struct.pack("!BBHHH", 8, 0, 0, 0x1234, 1) + bytes(range(56))
    body = body[:2] + struct.pack("!H", csum(body)) + body[4:]
    return ether(GW_MAC, GUEST_MAC, 0x0800, ipv4(GUEST_IP, bytes([1, 1, 1, 1]), 1, body))


def ipv6_neighbor_solicitation():
    src = bytes.fromhex("fe80000000000000505400fffe123456")
    dst = bytes.fromhex("ff0200000000000000000001ff000002")
    target = bytes.fromhex("fe800000000000000000000000000002")
    icmp = struct.pack("!BBHI", 135, 0, 0, 0) + target + b"\x01\x01" + GUEST_MAC
    pseudo = src + dst + struct.pack("!IxxxB", len(icmp), 58)
    icmp = icmp[:2] + struct.pack("!H", csum(pseudo + icmp)) + icmp[4:]
    ip6 = struct.pack("!IHBB", 0x60000000, len(icmp), 58, 255) + src + dst
    return ether(bytes.fromhex("3333ff000002"), GUEST_MAC, 0x86DD, ip6 + icmp)


# --- virtqueues ------------------------------------------------------------

F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4
DESC_TABLE, AVAIL, USED = 0x000, 0x100, 0x200


class Queue:
    """Guest memory with a split virtqueue, in the layout of fuzz/src/lib.rs."""

    def __init__(self, size=16, flags=0, params=b"\0\0\0\0", desc=DESC_TABLE, avail=AVAIL, used=USED):
        self.size, self.flags, self.params = size, flags, params
        self.desc, self.avail, self.used = desc, avail, used
        self.mem = bytearray(0x4000)
        self.heads = []
        self.top = 0

    def put(self, addr, data):
        self.mem[addr:addr + len(data)] = data
        self.top = max(self.top, addr + len(data))

    def descriptor(self, index, addr, length, flags=0, next_=0, table=None):
        table = self.desc if table is None else table
        self.put(table + 16 * index, struct.pack("<QIHH", addr, length, flags, next_))

    def chain(self, first, parts):
        """Descriptors first.. for (addr, len, writable) parts, chained; makes it available."""
        for i, (addr, length, writable) in enumerate(parts):
            flags = (F_WRITE if writable else 0) | (F_NEXT if i + 1 < len(parts) else 0)
            self.descriptor(first + i, addr, length, flags, first + i + 1)
        self.heads.append(first)

    def indirect(self, index, table, parts):
        """Descriptor index points to an indirect table at table holding parts."""
        for i, (addr, length, writable) in enumerate(parts):
            flags = (F_WRITE if writable else 0) | (F_NEXT if i + 1 < len(parts) else 0)
            self.descriptor(i, addr, length, flags, i + 1, table=table)
        self.descriptor(index, table, 16 * len(parts), F_INDIRECT)
        self.heads.append(index)

    def bytes(self):
        log2 = self.size.bit_length() - 1
        config = struct.pack("<BBHHHHH", log2, self.flags, self.desc // 16, self.avail // 2,
                             self.used // 4, 0, 0) + self.params
        avail = struct.pack("<HH", 0, len(self.heads)) + b"".join(struct.pack("<H", h) for h in self.heads)
        self.put(self.avail, avail)
        self.top = max(self.top, self.used + 6 + 8 * self.size)
        return config + bytes(self.mem[:self.top])


def net_hdr(flags=0, gso=0, csum_start=0, csum_offset=0):
    return struct.pack("<BBHHHHH", flags, gso, 0, 0, csum_start, csum_offset, 0)


# --- the seeds ---------------------------------------------------------------


def seeds_passt_frames():
    def framed(*frames):
        return b"".join(struct.pack("!I", len(f)) + f for f in frames)

    def header(sizes, flags=0, overlay=0):
        sizes = (list(sizes) * 8)[:8]
        return struct.pack("<8H", *sizes) + bytes([flags, overlay])

    return {
        "arp-request": header([7, 100], 1) + framed(arp_request()),
        "arp-reply-and-dhcp": header([1, 3, 64, 4096], 4, 9) + framed(arp_reply(), dhcp_discover()),
        "ipv6-ns": header([40, 2], 1) + framed(ipv6_neighbor_solicitation()),
        "tcp-icmp-bytewise": header([1], 2) + framed(tcp_syn(), icmp_echo()),
        "bad-length": header([5], 8) + framed(arp_request()) + struct.pack("!I", 13) + b"\0" * 13,
        "partial-tail": header([33, 9], 1) + framed(arp_request()) + framed(icmp_echo())[:50],
    }


def seeds_net_tx():
    out = {}
    q = Queue(params=b"\x10\x00\0\0")
    q.put(0x400, net_hdr() + arp_request())
    q.chain(0, [(0x400, 12 + 42, False)])
    out["arp-one-descriptor"] = q.bytes()

    syn = tcp_syn(partial=True)
    q = Queue(params=b"\x02\x03\0\0")
    q.put(0x400, net_hdr(flags=1, csum_start=34, csum_offset=16))
    q.put(0x480, syn)
    q.chain(0, [(0x400, 12, False), (0x480, len(syn), False)])
    out["tcp-syn-partial-csum"] = q.bytes()

    dhcp = dhcp_discover(partial=True)
    q = Queue(params=b"\x40\x01\0\0")
    q.put(0x400, net_hdr(flags=1, csum_start=34, csum_offset=6) + dhcp[:20])
    q.put(0x800, dhcp[20:])
    q.indirect(0, 0x300, [(0x400, 32, False), (0x800, 100, False), (0x800 + 100, len(dhcp) - 120, False)])
    out["dhcp-indirect-3-segments"] = q.bytes()

    q = Queue(params=b"\x05\x02\0\0")
    q.put(0x400, net_hdr() + arp_request())
    q.put(0x500, net_hdr() + icmp_echo())
    q.chain(0, [(0x400, 54, False)])
    q.chain(1, [(0x500, 12 + len(icmp_echo()), False)])
    out["arp-and-ping"] = q.bytes()

    q = Queue()
    q.put(0x400, net_hdr(gso=1) + tcp_syn())
    q.put(0x500, net_hdr() + arp_request())
    q.chain(0, [(0x400, 12 + len(tcp_syn()), False)])
    q.chain(1, [(0x500, 54, True)])
    q.chain(2, [(0x4100, 54, False)])
    out["gso-write-only-outside"] = q.bytes()

    q = Queue()
    q.put(0x400, net_hdr() + arp_request())
    q.descriptor(0, 0x400, 54, F_NEXT, 0)
    q.heads.append(0)
    out["descriptor-loop"] = q.bytes()
    return out


def seeds_net_rx():
    out = {}
    # Mergeable buffers, two frames by copy.
    q = Queue(flags=2, params=bytes([1]) + struct.pack("<H", 60) + b"\0")
    for i in range(4):
        q.chain(i, [(0x400 + 0x600 * i, 0x5f0, True)])
    out["mrg-two-frames"] = q.bytes()
    # Mergeable, a 1500-byte frame across three small buffers, data_valid.
    q = Queue(flags=6, params=bytes([0]) + struct.pack("<H", 1500) + b"\0")
    for i in range(3):
        q.chain(2 * i, [(0x400 + 0x300 * i, 0x100, True), (0x1000 + 0x400 * i, 0x200, True)])
    out["mrg-frame-spans-buffers"] = q.bytes()
    # No mergeable buffers: a frame too big for the buffer is dropped, the next fits.
    q = Queue(flags=0, params=bytes([1]) + struct.pack("<H", 700) + b"\0")
    q.chain(0, [(0x400, 0x200, True)])
    q.chain(1, [(0x800, 0x800, True)])
    q.chain(2, [(0x1000, 0x800, True)])
    out["no-mrg-drop"] = q.bytes()
    # By read (a TAP), one short read, buffers in the second region.
    q = Queue(flags=2, params=bytes([2]) + struct.pack("<H", 200) + bytes([0x13]))
    q.chain(0, [(0x5000, 0x400, True)])
    q.chain(1, [(0x5400, 0x40, True), (0x5800, 0x400, True)])
    q.indirect(3, 0x300, [(0x400, 0x100, True), (0x600, 0x100, True)])
    out["read-into-indirect"] = q.bytes()
    # A read-only descriptor and one outside memory among good buffers.
    q = Queue(flags=2, params=bytes([0]) + struct.pack("<H", 100) + b"\0")
    q.chain(0, [(0x400, 0x100, False)])
    q.chain(1, [(0x4800, 0x100, True)])
    q.chain(2, [(0x800, 0x100, True)])
    out["bad-buffers"] = q.bytes()
    return out


def blk_header(kind, sector):
    return struct.pack("<IIQ", kind, 0, sector)


def seeds_block_request():
    out = {}

    def request(name, kind, sector, data_parts, params=b"\0\0\0\0", payload=b"", head_addr=0x400):
        q = Queue(params=params)
        q.put(head_addr, blk_header(kind, sector))
        parts = [(head_addr, 16, False)]
        at = 0x800
        if payload:
            q.put(at, payload)
        for length, writable in data_parts:
            parts.append((at, length, writable))
            at += length
        parts.append((0x2f0, 1, True))
        q.chain(0, parts)
        out[name] = q.bytes()

    request("read-sector-0", 0, 0, [(512, True)])
    request("write-2-sectors", 1, 2, [(512, False), (512, False)], payload=bytes(range(256)) * 4)
    request("flush", 4, 0, [])
    request("get-id", 8, 0, [(20, True)])
    request("write-zeroes-unmap", 13, 0, [(16, False)], payload=struct.pack("<QII", 4, 8, 1))
    request("discard", 11, 0, [(16, False)], payload=struct.pack("<QII", 0, 16, 0))
    request("write-read-only-disk", 1, 0, [(512, False)], params=b"\x01\0\0\0", payload=b"\xaa" * 512)
    request("read-past-end", 0, 31, [(1024, True)], params=b"\0\x01\0\0")

    # Three requests in one ring, the second through an indirect table.
    q = Queue()
    q.put(0x400, blk_header(1, 1))
    q.put(0x410, blk_header(0, 1))
    q.put(0x420, blk_header(4, 0))
    q.put(0x800, b"ferry" * 100 + b"\0" * 12)
    q.chain(0, [(0x400, 16, False), (0x800, 512, False), (0x2f0, 1, True)])
    q.indirect(3, 0x300, [(0x410, 16, False), (0xc00, 512, True), (0x2f1, 1, True)])
    q.chain(4, [(0x420, 16, False), (0x2f2, 1, True)])
    out["write-read-flush"] = q.bytes()
    return out


def vsock_hdr(op, src_port=1234, dst_port=1024, length=0, flags=0, src_cid=3, dst_cid=2,
              buf_alloc=262144, fwd_cnt=0):
    return struct.pack("<QQIIIHHIII", src_cid, dst_cid, src_port, dst_port, length, 1, op, flags,
                       buf_alloc, fwd_cnt)


def seeds_vsock_packet():
    out = {}
    cid = struct.pack("<I", 3)
    q = Queue(params=cid)
    q.put(0x400, vsock_hdr(1))
    q.chain(0, [(0x400, 44, False)])
    out["request"] = q.bytes()

    q = Queue(params=cid)
    q.put(0x400, vsock_hdr(5, length=5))
    q.put(0x440, b"hello")
    q.chain(0, [(0x400, 44, False), (0x440, 5, False)])
    out["rw-hello"] = q.bytes()

    q = Queue(params=cid)
    q.put(0x400, vsock_hdr(5, length=600) + bytes(range(256)) * 3)
    q.chain(0, [(0x400, 44 + 600, False)])
    q.chain(1, [(0xc00, 0x400, True)])
    q.chain(2, [(0x1000, 44, True), (0x1100, 0x100, True)])
    out["rw-and-rx-buffers"] = q.bytes()

    q = Queue(params=cid)
    q.put(0x400, vsock_hdr(4, flags=3))
    q.put(0x440, vsock_hdr(6, fwd_cnt=4096))
    q.put(0x480, vsock_hdr(7))
    q.put(0x4c0, vsock_hdr(3))
    for i in range(4):
        q.chain(i, [(0x400 + 0x40 * i, 44, False)])
    out["shutdown-credit-rst"] = q.bytes()

    q = Queue(params=struct.pack("<I", 52))
    q.put(0x400, vsock_hdr(5, length=70000, src_cid=52))
    q.put(0x440, vsock_hdr(2, src_cid=52, dst_cid=3))
    q.indirect(0, 0x300, [(0x400, 20, False), (0x414, 24, False), (0x800, 200, False)])
    q.chain(1, [(0x440, 44, False)])
    out["too-long-and-bad-cid"] = q.bytes()
    return out


def seeds_vsock_muxer():
    """Scripts in vsock_muxer's step language (see the target's Step)."""
    GUEST_SEND, POST_RX, CONNECT, SEND_LINE, HOST_WRITE, HOST_END, HOST_READ = range(7)
    REQUEST, RESPONSE, RST, SHUTDOWN, RW, CREDIT_UPDATE, CREDIT_REQUEST = range(1, 8)

    def guest(op, ports, credit=4, fwd=0, data=None):
        """A well-formed guest packet: ports is bytes of the port choice
        (mode then picks), credit/fwd the choices of buf_alloc/fwd_cnt,
        data the length choice (RW) or None; one descriptor."""
        b = bytes([GUEST_SEND, op]) + ports + bytes([credit, fwd])
        b += bytes([data if data is not None else 1]) if op == RW else bytes([1])
        return b + bytes([0, 0, 0, 0])  # no fault, flags 0, one descriptor, cut 0

    def rx(count=8, size=5):
        return bytes([POST_RX, count - 1, size])

    to_port_1 = bytes([3, 0])          # guest port 1024 -> host port 1
    reply = bytes([0, 0])              # answer the first key seen
    out = {}
    out["guest-connects-and-talks"] = b"".join([
        rx(),
        guest(REQUEST, to_port_1),
        bytes([HOST_WRITE, 0, 2]),      # the server sends 4096 bytes
        guest(RW, to_port_1, data=1),   # the guest sends 100
        bytes([HOST_READ, 0]),
        rx(),
        guest(CREDIT_UPDATE, to_port_1, fwd=0),
        guest(SHUTDOWN, to_port_1) + b"",
        bytes([HOST_END, 0, 2]),
        guest(RST, to_port_1),
    ])
    out["host-connects-through-the-hybrid-socket"] = b"".join([
        rx(),
        bytes([CONNECT]),
        bytes([SEND_LINE, 0, 0, 3, 1, 0x10, 0x00]),  # CONNECT 1024, then 16 bytes
        guest(RESPONSE, reply),
        bytes([HOST_READ, 0]),
        guest(RW, reply, data=2),
        bytes([HOST_WRITE, 0, 3]),
        rx(8, 7),
        bytes([HOST_READ, 0]),
        bytes([HOST_END, 0, 0]),
        guest(SHUTDOWN, reply),
        rx(),
    ])
    out["starved-then-credit"] = b"".join([
        bytes([CONNECT]),
        bytes([SEND_LINE, 0, 1, 3, 0]),
        rx(1, 5),
        guest(RESPONSE, reply, credit=2),
        bytes([HOST_WRITE, 0, 3]),
        rx(8, 5),
        guest(CREDIT_UPDATE, reply, credit=4, fwd=0),
        rx(8, 7),
        guest(CREDIT_REQUEST, reply),
        bytes([CONNECT, SEND_LINE, 1, 0, 2, 20]) + b"connect 1025 junk..." + bytes([1]),
        bytes([CONNECT, SEND_LINE, 2, 1, 1]),    # a line with no newline
        guest(REQUEST, bytes([1, 0, 2])),   # to host port 3: nobody serves it
    ])
    return out


def seeds_vsock_connect_line():
    def op(code, arg=0):
        return bytes([code]) + struct.pack("<H", arg)

    session = b"".join([
        op(0, 32768),       # the guest gives 256 KiB of credit
        op(1, 3000),        # the client writes
        op(2, 4096),        # the guest reads
        op(3, 500),         # the guest sends 2000 bytes
        op(4),              # flush
        op(5, 4096),        # the client reads
        op(7),              # a credit update to the guest
        op(8, 2),           # the guest shuts its send side
        op(5, 100),         # the client sees end of file
        op(11, 1),          # the client shuts its side
        op(2, 100),         # the guest reads end of file
    ])
    backlog = b"".join([op(0, 16), op(1, 8000), op(3, 50000), op(3, 20000), op(2, 200),
                        op(0x10, 16), op(2, 200), op(6), op(7), op(5, 65535)])

    def line(text, pieces=0, ops=b""):
        return bytes([len(text), pieces]) + text + ops

    return {
        "connect-1024": line(b"CONNECT 1024\n", 0x3f, session),
        "kata-lowercase-with-data": line(b"connect 52\nhello", 0x09, op(9, 5) + op(0, 100) + op(2, 64)),
        "port-too-big": line(b"CONNECT 4294967296\n", 0xc1),
        "http-not-connect": line(b"GET / HTTP/1.1\n", 0x12),
        "no-newline-too-long": line(b"CONNECT 000000000000000000000000000052", 0x07),
        "host-origin-backlog": line(b"CONNECT 5000\n", 0x01, backlog),
    }


def http(method, path, body=None, headers=()):
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: localhost"]
    lines += list(headers)
    data = b""
    if body is not None:
        data = json.dumps(body).encode() if not isinstance(body, bytes) else body
        lines += ["Accept: application/json", "Content-Type: application/json",
                  "Content-Length: %d" % len(data)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def seeds_api_http():
    vm_config = {
        "boot-source": {"kernel_image_path": "/vmlinux", "boot_args": "console=ttyS0 reboot=k panic=1"},
        "drives": [{"drive_id": "rootfs", "path_on_host": "/rootfs.ext4", "is_root_device": True,
                    "is_read_only": False}],
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 1024},
        "network-interfaces": [{"iface_id": "eth0", "guest_mac": "06:00:AC:10:00:02"}],
        "balloon": None,
    }
    return {
        "put-boot-source": http("PUT", "/boot-source", {
            "kernel_image_path": "/vmlinux", "boot_args": "console=ttyS0 reboot=k panic=1 pci=off",
            "initrd_path": "/initrd.img"}),
        "put-drive-rootfs": http("PUT", "/drives/rootfs", {
            "drive_id": "rootfs", "path_on_host": "/rootfs.ext4", "is_root_device": True,
            "is_read_only": False, "cache_type": "Unsafe", "io_engine": "Sync",
            "rate_limiter": {"bandwidth": {"size": 1048576, "refill_time": 1000}}}),
        "patch-drive": http("PATCH", "/drives/drive_0", {"drive_id": "drive_0", "path_on_host": "/new.ext4"}),
        "put-actions-start": http("PUT", "/actions", {"action_type": "InstanceStart"}),
        "get-root": http("GET", "/"),
        "put-machine-config": http("PUT", "/machine-config", {
            "vcpu_count": 2, "mem_size_mib": 1024, "smt": False, "huge_pages": "None"}),
        "patch-machine-config": http("PATCH", "http://localhost/machine-config?x=1", {"mem_size_mib": 2048}),
        "put-network-interface": http("PUT", "/network-interfaces/eth0", {
            "iface_id": "eth0", "guest_mac": "06:00:AC:10:00:02", "host_dev_name": "tap0"}),
        "put-vsock": http("PUT", "/vsock", {"guest_cid": 3, "uds_path": "/tmp/v.sock"}),
        "put-logger": http("PUT", "/logger", {"log_path": "/tmp/fc.log", "level": "Warn",
                                              "show_level": True, "show_log_origin": False}),
        "put-metrics": http("PUT", "/metrics", {"metrics_path": "/tmp/metrics.fifo"}),
        "pipelined-keep-alive": http("GET", "/version") + http("GET", "/machine-config")
        + http("PUT", "/actions", {"action_type": "SendCtrlAltDel"}, ["Connection: close"]),
        "expect-continue": http("PUT", "/boot-source", {"kernel_image_path": "/k"},
                                ["Expect: 100-continue"])[:-10],
        "vm-config-body": http("PUT", "/vm/config", vm_config),
        "chunked-refused": b"PUT /actions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    }


TARGETS = {
    "passt_frames": seeds_passt_frames,
    "net_tx": seeds_net_tx,
    "net_rx": seeds_net_rx,
    "block_request": seeds_block_request,
    "vsock_packet": seeds_vsock_packet,
    "vsock_connect_line": seeds_vsock_connect_line,
    "vsock_muxer": seeds_vsock_muxer,
    "api_http": seeds_api_http,
}


# --- seeds from captured traffic ----------------------------------------------

# Most seeds of one target taken from a capture, and of one shape.
CAPTURED_PER_TARGET = 40
# Room for a chain's data in a seed's memory image (after the rings).
CHAIN_ROOM = (0x400, 0x4000)


def records(path):
    """The records of one capture file: (length u32 LE, bytes)*."""
    with open(path, "rb") as f:
        data = f.read()
    at = 0
    while at + 4 <= len(data):
        (n,) = struct.unpack_from("<I", data, at)
        if at + 4 + n > len(data):
            break
        yield data[at + 4:at + 4 + n]
        at += 4 + n


def captured(dir_, name):
    """Every record of input `name`, file by file (one ferry process each)."""
    for path in sorted(glob.glob(os.path.join(dir_, name + ".*"))):
        yield list(records(path))


def descriptors(record):
    """A recorded chain: [(addr, len, flags, data)]."""
    out, at = [], 0
    while at + 18 <= len(record):
        addr, length, flags, n = struct.unpack_from("<QIHI", record, at)
        at += 18
        out.append((addr, length, flags, record[at:at + n]))
        at += n
    return out


def laid_out(chains, params=b"\0\0\0\0", flags=0, cut=None):
    """Seed memory with `chains` as the guest laid them (lengths, flags and
    the readable bytes; each buffer moved into the image, in order). A
    buffer longer than `cut` is cut to it; None if they do not fit."""
    q = Queue(params=params, flags=flags)
    at, index = CHAIN_ROOM[0], 0
    for chain in chains:
        parts = []
        for addr, length, dflags, data in chain:
            if cut is not None:
                length = min(length, cut)
            if at + length > CHAIN_ROOM[1] or index + len(chain) > q.size:
                return None
            q.put(at, data[:length])
            parts.append((at, length, bool(dflags & F_WRITE)))
            at = (at + length + 15) & ~15
        q.chain(index, parts)
        index += len(parts)
    return q.bytes()


def pick(candidates):
    """At most CAPTURED_PER_TARGET of (shape, seed) candidates: the first
    of each shape, in order; None seeds (did not fit) skipped."""
    chosen, shapes = [], set()
    for shape, data in candidates:
        if data is not None and shape not in shapes:
            shapes.add(shape)
            chosen.append(data)
    return chosen[:CAPTURED_PER_TARGET]


def frames_of(stream):
    """passt's stream cut into frames (stops at a torn one)."""
    out, at = [], 0
    while at + 4 <= len(stream):
        (n,) = struct.unpack_from("!I", stream, at)
        if at + 4 + n > len(stream):
            break
        out.append(stream[at + 4:at + 4 + n])
        at += 4 + n
    return out


def frame_shape(frame):
    """(ethertype, IP protocol, TCP flags, size class) of a frame."""
    ethertype = frame[12:14]
    proto = frame[23] if ethertype == b"\x08\x00" and len(frame) > 23 else None
    tcp = frame[14 + 20 + 13] if proto == 6 and len(frame) > 47 else None
    return (ethertype, proto, tcp, len(frame).bit_length())


def chain_shape(chain):
    """Per descriptor: readable or writable, and its length's size class."""
    return tuple((d[2] & F_WRITE, d[1].bit_length()) for d in chain)


def seeds_from_capture(dir_):
    """{target: [seed bytes]} from the records under dir_."""
    out = {}
    frames = [f for recs in captured(dir_, "passt_stream") for f in frames_of(b"".join(recs))]
    # passt_frames: two real frames as passt sent them, read whole, and
    # the first few again in small pieces.
    whole = struct.pack("<8H", *([4096] * 8)) + bytes([0, 0])
    pieces = struct.pack("<8H", 1, 3, 60, 1500, 7, 4096, 2, 9) + bytes([1, 0])
    pairs = [(a, b) for a, b in zip(frames, frames[1:]) if len(a) + len(b) < 3000]
    stream = b"".join
    out["passt_frames"] = pick(((frame_shape(a), frame_shape(b)),
                                whole + stream(struct.pack("!I", len(f)) + f for f in (a, b)))
                               for a, b in pairs)
    out["passt_frames"] += [pieces + s[len(pieces):] for s in out["passt_frames"][:4]]

    # net_tx: the guest's TX chains (virtio-net header and frame).
    tx = []
    for recs in captured(dir_, "net_tx"):
        for r in recs:
            chain = descriptors(r)
            data = b"".join(d[3] for d in chain)
            tx.append(((chain_shape(chain), data[:2], frame_shape(data[12:])),
                       laid_out([chain], params=b"\xff\x00\0\0")))
    out["net_tx"] = pick(tx)

    # net_rx: four of the guest's RX buffers (as it laid them out), frames
    # of the sizes passt sent, with and without mergeable buffers.
    sizes = [len(f) for f in frames] or [60]
    rx = []
    for recs in captured(dir_, "net_rx"):
        for i in range(0, len(recs), 4):
            chains = [descriptors(r) for r in recs[i:i + 4]]
            n = sizes[(i // 4) % len(sizes)]
            for flags in (2, 0):
                params = bytes([3]) + struct.pack("<H", n) + b"\0"
                rx.append(((flags, n.bit_length(), tuple(chain_shape(c) for c in chains)),
                           laid_out(chains, params=params, flags=flags, cut=0xe00)))
    out["net_rx"] = pick(rx)

    # block_request: the guest's requests, the sector folded into the fuzz disk.
    blk = []
    for recs in captured(dir_, "block"):
        for r in recs:
            chain = descriptors(r)
            if not chain or len(chain[0][3]) < 16:
                continue
            kind, _, sector = struct.unpack_from("<IIQ", chain[0][3])
            head = struct.pack("<IIQ", kind, 0, sector % 24) + chain[0][3][16:]
            chain[0] = chain[0][:3] + (head,)
            blk.append(((kind, chain_shape(chain)), laid_out([chain], cut=0x2000)))
    out["block_request"] = pick(blk)

    # vsock_packet: the guest's TX packets (its CID as the target's) and RX buffers.
    vs = []
    for name in ("vsock_tx", "vsock_rx"):
        for recs in captured(dir_, name):
            for r in recs:
                chain = descriptors(r)
                data = b"".join(d[3] for d in chain)
                cid = data[:4] if len(data) >= 44 else b"\3\0\0\0"
                op = data[30:32] if len(data) >= 44 else b""
                vs.append(((name, op, chain_shape(chain), (len(data) - 44).bit_length()),
                           laid_out([chain], params=cid, cut=0x2000)))
    out["vsock_packet"] = pick(vs)

    # vsock_muxer: the guest's packets in the order it sent them (headers
    # as captured: ports, op, flags, credit, length; the data the target's
    # own), after a client's CONNECT to port 1024 as Kata's runtime makes,
    # with RX buffers posted and the host side writing and reading along.
    mux = []
    for recs in captured(dir_, "vsock_tx"):
        steps = [bytes([1, 7, 5]), bytes([2]), bytes([3, 0, 0, 3, 0])]
        for n, r in enumerate(recs[:48]):
            data = b"".join(d[3] for d in descriptors(r))
            if len(data) < 44:
                continue
            (src_port, dst_port, length, _type, op, flags, buf_alloc, fwd_cnt) = struct.unpack_from(
                "<IIIHHIII", data, 16)
            step = bytes([0, op % 9, 2]) + struct.pack("<II", src_port, dst_port)
            step += bytes([5]) + struct.pack("<I", buf_alloc) + bytes([3]) + struct.pack("<I", fwd_cnt)
            step += bytes([5]) + struct.pack("<H", min(length, 0xffff)) if op == 5 else bytes([1])
            steps.append(step + bytes([0, flags % 5, 0, 0]))
            if op == 5:
                steps.append(bytes([6, 0, 4, 0, 2]))   # the client reads, then writes 4 KiB
            if n % 8 == 7:
                steps.append(bytes([1, 7, 5]))
        if len(steps) > 3:
            mux.append((len(mux), b"".join(steps)))
    out["vsock_muxer"] = pick(mux)[:8]

    # vsock_connect_line: each client's first bytes, whole and in pieces.
    lines = [r for recs in captured(dir_, "connect_line") for r in recs]
    out["vsock_connect_line"] = pick(((l[:8].lower(), p), bytes([len(l) % 48, p]) + l)
                                     for l in lines for p in (0, 0x31))

    # api_http: what clients sent, request by request.
    def api_shape(d):
        first = d.split(b"\r\n", 1)[0]
        body = d.split(b"\r\n\r\n", 1)[-1]
        try:
            keys = tuple(sorted(json.loads(body))) if body else ()
        except (ValueError, TypeError):
            keys = ("?",)
        return (first.rsplit(b" ", 1)[0], keys)
    out["api_http"] = pick((api_shape(r), r) for recs in captured(dir_, "api") for r in recs)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capture", metavar="DIR", help="also seeds from traffic recorded in DIR")
    args = parser.parse_args()
    total = 0
    for target, make in TARGETS.items():
        d = os.path.join(CORPUS, target)
        os.makedirs(d, exist_ok=True)
        for name, data in make().items():
            assert len(data) <= 4096, (target, name, len(data))
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
            total += len(data)
    print("wrote %d bytes of seeds into %s" % (total, CORPUS))
    if args.capture:
        for target, seeds in seeds_from_capture(args.capture).items():
            for data in seeds:
                name = "cap-" + hashlib.sha256(data).hexdigest()[:16]
                with open(os.path.join(CORPUS, target, name), "wb") as f:
                    f.write(data)
            print("%s: %d seeds from the capture" % (target, len(seeds)))


if __name__ == "__main__":
    main()
