#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds an initramfs whose init is Kata Containers' kata-agent, for booting
# under ferry with a vsock device, into the cache directory of
# build-agent.sh (which it runs first):
#
#   <dir>/initramfs.cpio.gz  /init (a busybox sh script: loads the virtio and
#                            vsock modules, takes a DHCP lease on eth0 if
#                            the VM has a network card (passt hands out the
#                            address of the namespace it runs in), then
#                            execs kata-agent, which so runs as PID 1 in its
#                            "init" mode), busybox,
#                            /usr/bin/kata-agent with the shared libraries it
#                            links (from this machine's glibc), the modules
#   <dir>/vmlinuz            the Debian cloud kernel those modules belong to
#                            (the package resources/build-guest.sh uses)
#   <dir>/kata-containers.img  Kata's guest image as its osbuilder makes it
#                            with AGENT_INIT=yes: an MBR disk, one ext4
#                            partition from 1 MiB whose /sbin/init is
#                            kata-agent; no modules (for a kernel with
#                            everything built in: resources/kernel/), booted
#                            as Kata boots it (root=/dev/vda1 ... ro)
#   <dir>/kata-agent, <dir>/kata-agent-client  (from build-agent.sh)
#
# As PID 1 the agent mounts /proc, /sys, /dev, /dev/pts, /dev/shm, /run and
# the cgroups itself, reads its options from the kernel command line
# (agent.log=debug, agent.server_addr=vsock://-1:1024, agent.debug_console,
# ...) and listens on vsock port 1024; it powers the VM off when it ends.
#
# Needs: what build-agent.sh needs, plus apt-get (package lists current),
# dpkg, cpio, gzip, kmod (depmod), busybox-static, xz-utils/zstd if the
# modules are compressed, binutils (strip; optional). Re-running it with
# nothing changed only checks the inputs and prints the paths.
#
# Usage: build-agent-initramfs.sh [--print-dir]
#   prints the initramfs's and the kernel's paths (or only the directory).
#
# Boot it under ferry and ask the agent (on a PVM /dev/kvm, inside
# ../shared/kvm-host/run-in-kvm-host, with the socket under /tmp):
#   dir=$(resources/kata/build-agent-initramfs.sh --print-dir)
#   ferry --kernel $dir/vmlinuz --initrd $dir/initramfs.cpio.gz --net none \
#         --memory 512 --vsock cid=3,uds=/tmp/kata.vsock \
#         --console file:/tmp/kata-console.log \
#         --cmdline "$(ferry --print-cmdline) agent.log=debug" &
#   $dir/kata-agent-client --server-address unix:///tmp/kata.vsock \
#         --hybrid-vsock --wait 120 Check GetGuestDetails ListInterfaces ListRoutes
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
self=$here/$(basename "$0")
repo=$(cd "$here/../.." && pwd)
base=${XDG_CACHE_HOME:-$HOME/.cache}/ferry-kata

print_dir=no
for a in "$@"; do
  case "$a" in
    --print-dir) print_dir=yes ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-agent-initramfs: unknown option $a (try --help)" >&2; exit 2 ;;
  esac
done

log() { echo "build-agent-initramfs: $*" >&2; }
die() { log "$*"; exit 1; }

dir=$("$here/build-agent.sh" --print-dir)

for t in apt-cache apt-get dpkg cpio gzip depmod ldd mkfs.ext4 python3; do
  command -v "$t" >/dev/null || die "$t missing (apt-get install -y cpio kmod)"
done
[ -x /bin/busybox ] || die "/bin/busybox missing (apt-get install -y busybox-static)"

# The cloud kernel package linux-image-cloud-amd64 points at, as build-guest.sh picks it.
resolve() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'; }
pkg=$(resolve)
if [ -z "$pkg" ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -q >&2
  pkg=$(resolve)
fi
[ -n "$pkg" ] || die "cannot resolve linux-image-cloud-amd64"

modules="virtio virtio_ring virtio_pci virtio_mmio failover net_failover virtio_net vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport"
stamp="$pkg $(sha256sum "$self" "$repo/resources/udhcpc.script" "$repo/resources/modules.sh" /bin/busybox "$dir/kata-agent" | sha256sum | cut -c1-16) $modules"

report() {
  if [ "$print_dir" = yes ]; then
    echo "$dir"
  else
    echo "$dir/initramfs.cpio.gz"
    echo "$dir/vmlinuz"
  fi
}

if [ -s "$dir/initramfs.cpio.gz" ] && [ -s "$dir/vmlinuz" ] && [ -s "$dir/kata-containers.img" ] \
   && [ "$(cat "$dir/initramfs.stamp" 2>/dev/null)" = "$stamp" ]; then
  log "$dir/initramfs.cpio.gz is up to date ($pkg)"
  report
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The kernel package: build-guest.sh's copy if it has one, else our own.
deb=$(ls "$repo/resources/out/$pkg"_*.deb "$base/debs/$pkg"_*.deb 2>/dev/null | head -n1 || true)
if [ -z "$deb" ]; then
  mkdir -p "$base/debs"
  (cd "$tmp" && apt-get -o APT::Sandbox::User=root download "$pkg" >&2) || die "apt-get download $pkg failed"
  rm -f "$base/debs"/linux-image-*.deb
  mv "$tmp/$pkg"_*.deb "$base/debs/"
  deb=$(ls "$base/debs/$pkg"_*.deb | head -n1)
fi
log "kernel and modules from $(basename "$deb")"
dpkg -x "$deb" "$tmp/x"
kver=$(ls "$tmp/x/lib/modules")
moddir=$tmp/x/lib/modules/$kver
depmod -b "$tmp/x" "$kver"

root=$tmp/root
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,run,etc,lib/modules,usr/bin}
cp /bin/busybox "$root/bin/busybox"
for l in sh insmod mount ls cat echo mkdir poweroff ip udhcpc ifconfig route; do ln -s busybox "$root/bin/$l"; done
cp "$repo/resources/udhcpc.script" "$root/etc/udhcpc.script"
chmod +x "$root/etc/udhcpc.script"
echo kata > "$root/etc/hostname"
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$root/etc/passwd"
printf 'root:x:0:\n' > "$root/etc/group"

# kata-agent and the libraries it links (the loader under its own path too).
# Stripped (binutils) when strip is there: a third of the size, a faster boot.
if command -v strip >/dev/null; then
  strip -o "$root/usr/bin/kata-agent" "$dir/kata-agent"
else
  cp "$dir/kata-agent" "$root/usr/bin/kata-agent"
fi
for f in $(ldd "$dir/kata-agent" | grep -o '/[^ ]*'); do
  mkdir -p "$root$(dirname "$f")"
  cp -L "$f" "$root$f"
done
# /lib64 may be a link on the host (merged /usr): keep the loader reachable.
[ -e "$root/lib64/ld-linux-x86-64.so.2" ] || { mkdir -p "$root/lib64"; cp -L /lib64/ld-linux-x86-64.so.2 "$root/lib64/"; }

# The modules, each after those it depends on (modules.dep).
. "$here/../modules.sh"
copy_modules "$moddir" "$root/lib/modules" $modules || { echo "build-agent-initramfs: in $pkg" >&2; exit 1; }

# /init: modules, then kata-agent as PID 1 (it mounts what it needs itself;
# nothing is mounted here, so that its own mounts find the places free).
cat > "$root/init" <<'EOF'
#!/bin/sh
# Loads the virtio and vsock modules (Debian's kernel), takes a DHCP lease
# on eth0 if there is one, then becomes kata-agent (PID 1).
export PATH=/usr/bin:/bin:/sbin:/usr/sbin
# (A kernel with everything built in, as resources/kernel/ builds it, has
# no /proc/modules and needs none.)
if [ -e /proc/modules ]; then
  while read -r m; do
    insmod "/lib/modules/$m" || echo "init: insmod $m failed"
  done < /lib/modules/order
fi
if ip link set eth0 up 2>/dev/null; then
  # Up to a minute: passt may still be opening its forwarded ports.
  udhcpc -i eth0 -s /etc/udhcpc.script -q -n -t 60 -T 1 >/dev/null 2>&1 \
    && echo "init: eth0 $(ip -4 -o addr show eth0)" || echo "init: DHCP on eth0 failed"
fi
exec /usr/bin/kata-agent
EOF
chmod +x "$root/init"

# The guest image: the same tree without the modules and the script, the
# agent as /sbin/init, in an ext4 partition of an MBR disk.
image_root=$tmp/image-root
cp -a "$root" "$image_root"
rm -rf "$image_root/init" "$image_root/lib/modules"
ln -s /usr/bin/kata-agent "$image_root/sbin/init"
# /var/run is /run, as in any distribution's root (the agent keeps a
# sandbox's namespaces under /var/run/sandbox-ns; the root is read-only).
mkdir -p "$image_root/var"
ln -s ../run "$image_root/var/run"
mkfs.ext4 -q -F -L kata-rootfs -E root_owner=0:0 -d "$image_root" "$tmp/rootfs.ext4" 48M
python3 - "$tmp/rootfs.ext4" "$dir/kata-containers.img.new" <<'EOF2'
import struct, sys
fs = open(sys.argv[1], "rb").read()
start = 2048  # the partition starts at 1 MiB
mbr = bytearray(512)
# One primary partition: not bootable, type 0x83 (Linux), LBA start and size.
mbr[446:462] = bytes([0, 0, 0, 0, 0x83, 0, 0, 0]) + struct.pack("<II", start, len(fs) // 512)
mbr[510:512] = b"\x55\xaa"
with open(sys.argv[2], "wb") as out:
    out.write(mbr + bytes(start * 512 - 512) + fs)
EOF2

(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 | gzip -6) > "$dir/initramfs.cpio.gz.new"
cp "$tmp/x/boot/vmlinuz-$kver" "$dir/vmlinuz.new"
mv "$dir/vmlinuz.new" "$dir/vmlinuz"
mv "$dir/initramfs.cpio.gz.new" "$dir/initramfs.cpio.gz"
mv "$dir/kata-containers.img.new" "$dir/kata-containers.img"
echo "$stamp" > "$dir/initramfs.stamp"
log "built $dir/initramfs.cpio.gz and kata-containers.img ($pkg; modules: $(tr '\n' ' ' < "$root/lib/modules/order"))"
report
