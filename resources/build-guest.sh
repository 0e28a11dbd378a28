#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds the test guest into resources/out/ from Debian packages only:
#   out/vmlinuz         the stock Debian cloud kernel (bzImage)
#   out/initramfs.cpio.gz  busybox-static, the kernel modules the guest needs, /init and ft
#   out/initramfs-bench.cpio.gz  the same plus iperf3, for bench/
#   out/rootfs.ext4     an ext4 root disk: busybox, the same init as /sbin/init, ft
#                       (boot it with --disk out/rootfs.ext4 and root=/dev/vda)
# Needs: apt-get (with lists updated), dpkg, cpio, gzip, kmod (depmod),
# busybox-static, e2fsprogs.
# Re-running it with nothing changed only checks the inputs and exits.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=$here/out
mkdir -p "$out"

for t in apt-cache apt-get dpkg cpio gzip depmod; do
  command -v "$t" >/dev/null || { echo "build-guest: $t missing (apt-get install -y cpio kmod)" >&2; exit 1; }
done
[ -x /bin/busybox ] || { echo "build-guest: /bin/busybox missing (apt-get install -y busybox-static)" >&2; exit 1; }

# The newest cloud kernel package that linux-image-cloud-amd64 points at.
pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$pkg" ] || { echo "build-guest: cannot resolve linux-image-cloud-amd64 (run apt-get update)" >&2; exit 1; }

# Everything that shapes the output goes into one stamp; same stamp, nothing to do.
modules="virtio virtio_ring virtio_mmio virtio_pci failover net_failover virtio_net virtio_blk pvpanic pvpanic_mmio ext4 vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport"
inputs="$here/init $here/udhcpc.script $here/modules.sh /bin/busybox $0 $here/build-rootfs.sh $here/guest-tool/Cargo.toml $here/guest-tool/src/main.rs"
inputs="$inputs $(command -v iperf3 || true)"
stamp="$pkg $(sha256sum $inputs | sha256sum | cut -c1-16) $modules"
if [ -s "$out/initramfs.cpio.gz" ] && [ -s "$out/initramfs-bench.cpio.gz" ] && [ -s "$out/vmlinuz" ] && [ -s "$out/rootfs.ext4" ] && [ "$(cat "$out/stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "build-guest: $out is up to date ($pkg)"
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

deb=$(ls "$out/$pkg"_*.deb 2>/dev/null | head -n1 || true)
if [ -z "$deb" ]; then
  (cd "$tmp" && apt-get -o APT::Sandbox::User=root download "$pkg" >/dev/null) || { echo "build-guest: apt-get download $pkg failed" >&2; exit 1; }
  rm -f "$out"/linux-image-*.deb
  mv "$tmp/$pkg"_*.deb "$out/"
  deb=$(ls "$out/$pkg"_*.deb | head -n1)
fi
dpkg -x "$deb" "$tmp/x"
kver=$(ls "$tmp/x/lib/modules")
moddir=$tmp/x/lib/modules/$kver
depmod -b "$tmp/x" "$kver"

root=$tmp/root
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,run,etc,mnt,lib/modules,usr/bin}
cp /bin/busybox "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
cp "$here/init" "$root/init"
cp "$here/udhcpc.script" "$root/etc/udhcpc.script"
chmod +x "$root/init" "$root/etc/udhcpc.script"

# ft, the guest's network check tool: static, so it needs no libraries.
command -v cargo >/dev/null || { echo "build-guest: cargo is missing (the guest tool is Rust)" >&2; exit 1; }
RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release \
  --manifest-path "$here/guest-tool/Cargo.toml" --target x86_64-unknown-linux-gnu --target-dir "$out/guest-tool"
cp "$out/guest-tool/x86_64-unknown-linux-gnu/release/ft" "$root/bin/ft"

# The modules, each after those it depends on (modules.dep).
. "$here/modules.sh"
copy_modules "$moddir" "$root/lib/modules" $modules || { echo "build-guest: in $pkg" >&2; exit 1; }

pack() { (cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 | gzip -6) > "$1"; }
pack "$out/initramfs.cpio.gz.new"

# The root disk: the userspace of the initramfs (no modules: they are
# loaded before the switch), with the same script as /sbin/init.
disk=$tmp/disk
mkdir -p "$disk"/{bin,sbin,dev,proc,sys,tmp,run,etc,mnt,data,usr/bin}
cp /bin/busybox "$root/bin/ft" "$disk/bin/"
ln -s busybox "$disk/bin/sh"
# The applets' links, for a kernel that mounts this disk itself and starts
# /sbin/init from it with no initramfs (read-only: init cannot add them).
for applet in $(/bin/busybox --list); do
  [ -e "$disk/bin/$applet" ] || ln -s busybox "$disk/bin/$applet"
done
cp "$here/init" "$disk/sbin/init"
cp "$here/udhcpc.script" "$disk/etc/udhcpc.script"
chmod +x "$disk/sbin/init" "$disk/etc/udhcpc.script"
"$here/build-rootfs.sh" "$disk" "$out/rootfs.ext4" 96M >/dev/null

# The benchmark guest: the same, plus iperf3 with the libraries it links.
command -v iperf3 >/dev/null || { echo "build-guest: iperf3 missing (apt-get install -y iperf3)" >&2; exit 1; }
for f in "$(command -v iperf3)" $(ldd "$(command -v iperf3)" | grep -o '/[^ ]*'); do
  mkdir -p "$root$(dirname "$f")"
  cp -L "$f" "$root$f"
done
pack "$out/initramfs-bench.cpio.gz.new"
mv "$out/initramfs-bench.cpio.gz.new" "$out/initramfs-bench.cpio.gz"
cp "$tmp/x/boot/vmlinuz-$kver" "$out/vmlinuz"
mv "$out/initramfs.cpio.gz.new" "$out/initramfs.cpio.gz"
echo "$stamp" > "$out/stamp"
echo "build-guest: built $out ($pkg, modules: $(tr '\n' ' ' < "$root/lib/modules/order"))"
