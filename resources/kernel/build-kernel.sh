#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds a guest kernel for ferry's tests from Debian's kernel source
# (the linux-source-X.Y package that the `linux-source` meta-package points
# at), configured by `make allnoconfig` plus ferry-guest.conf beside this
# script: everything built in, no modules, with what Kata's guest kernels
# have and Debian's cloud kernel lacks (VIRTIO_MMIO_CMDLINE_DEVICES,
# X86_MPPARSE), so a guest can boot as Kata boots Firecracker guests
# (`pci=off ... acpi=off`). The output is cached outside the repository:
#
#   ${XDG_CACHE_HOME:-$HOME/.cache}/ferry-kernel/<key>/vmlinuz   (bzImage)
#   ${XDG_CACHE_HOME:-$HOME/.cache}/ferry-kernel/<key>/config    (its .config)
#
# <key> is a hash of this script, ferry-guest.conf and the source package's
# version: a second run with none of them changed only checks the stamp and
# prints the path. The build works in ferry-kernel/work/ (one source tree
# per package version, built in place, so a changed fragment or script
# rebuilds only what changed); older keys' outputs are removed once a new one
# is built.
#
# Needs: apt-get (root or sudo) for linux-source-X.Y and the build tools
# (gcc make bc flex bison libelf-dev libssl-dev xz-utils), sha256sum, flock.
#
# Usage: build-kernel.sh [--check | --force]
#   (no option)  build if needed, print the kernel's path on stdout
#   --check      build nothing: print the path if it is up to date, else fail
#   --force      rebuild even if the stamp says the output is up to date
# Progress goes to stderr.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
self=$here/$(basename "$0")
fragment=$here/ferry-guest.conf
base=${XDG_CACHE_HOME:-$HOME/.cache}/ferry-kernel

force=no check=no
for a in "$@"; do
  case "$a" in
    --force) force=yes ;;
    --check) check=yes ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-kernel: unknown option $a (try --help)" >&2; exit 2 ;;
  esac
done

log() { echo "build-kernel: $*" >&2; }
die() { log "$*"; exit 1; }

apt_install() {
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  export DEBIAN_FRONTEND=noninteractive
  log "installing $*"
  $sudo apt-get install -y -q "$@" >&2 || { $sudo apt-get update -q >&2 && $sudo apt-get install -y -q "$@" >&2; }
}

# The source package: the one the meta-package points at, else the newest
# installed one (a machine without package lists can still build).
src_pkg=$(apt-cache depends linux-source 2>/dev/null | awk '/Depends: linux-source-[0-9]/ {print $2; exit}')
if [ -z "$src_pkg" ]; then
  src_pkg=$(dpkg-query -W -f '${Package}\n' 'linux-source-[0-9]*' 2>/dev/null | sort -V | tail -n1)
fi
[ -n "$src_pkg" ] || die "cannot resolve the linux-source package (run apt-get update)"
src_version() { dpkg-query -W -f '${Status} ${Version}\n' "$src_pkg" 2>/dev/null | awk '$3 == "installed" {print $4}'; }
version=$(src_version)
[ -n "$version" ] || [ "$check" = no ] || die "$src_pkg is not installed: run $self"
[ -n "$version" ] || { apt_install "$src_pkg"; version=$(src_version); }
[ -n "$version" ] || die "$src_pkg is not installed"

key=$( { echo "$src_pkg $version"; sha256sum "$self" "$fragment" | cut -d' ' -f1; } | sha256sum | cut -c1-16)
out=$base/$key
stamp="$src_pkg=$version key=$key"
up_to_date() { [ "$force" = no ] && [ -s "$out/vmlinuz" ] && [ "$(cat "$out/stamp" 2>/dev/null)" = "$stamp" ]; }

if up_to_date; then
  log "$out is up to date ($src_pkg $version)"
  echo "$out/vmlinuz"
  exit 0
fi
[ "$check" = no ] || die "$out is not built: run $self"

# One build at a time; a run that waited may find the work done.
mkdir -p "$base"
exec 9>"$base/.lock"
flock 9
if up_to_date; then
  log "$out was built meanwhile"
  echo "$out/vmlinuz"
  exit 0
fi

need=""
for p in gcc make bc flex bison libelf-dev libssl-dev xz-utils; do
  dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"
done
# shellcheck disable=SC2086
[ -z "$need" ] || apt_install $need

tarball=$(ls /usr/src/"$src_pkg".tar.xz 2>/dev/null || true)
[ -n "$tarball" ] || die "/usr/src/$src_pkg.tar.xz is missing (reinstall $src_pkg)"

# The source tree, unpacked once per package version.
work=$base/work
tree=$work/$src_pkg-$version
if [ ! -f "$tree/.ferry-unpacked" ]; then
  rm -rf "$work"
  mkdir -p "$work"
  log "unpacking $tarball ($version)"
  tar -xJf "$tarball" -C "$work"
  mv "$work/$src_pkg" "$tree"
  touch "$tree/.ferry-unpacked"
fi

start=$(date +%s)
jobs=$(nproc)
log "configuring (allnoconfig + $(basename "$fragment"))"
# No clean: a changed configuration or script rebuilds only what it must.
KCONFIG_ALLCONFIG=$fragment make -C "$tree" -s allnoconfig >&2
make -C "$tree" -s olddefconfig >&2
# Every option the fragment sets must have survived (a missing dependency
# silently drops one).
missing=""
while IFS= read -r line; do
  case "$line" in CONFIG_*=*) grep -qxF "$line" "$tree/.config" || missing="$missing $line" ;; esac
done < "$fragment"
[ -z "$missing" ] || die "options not in the resulting .config:$missing"

log "building bzImage with $jobs jobs"
nice -n 10 make -C "$tree" -s -j"$jobs" bzImage >&2

rm -rf "$out.new"
mkdir -p "$out.new"
cp "$tree/arch/x86/boot/bzImage" "$out.new/vmlinuz"
cp "$tree/.config" "$out.new/config"
echo "$stamp" > "$out.new/stamp"
rm -rf "$out"
mv "$out.new" "$out"
# Outputs of other keys are of no further use.
for d in "$base"/*; do
  [ "$d" = "$out" ] || [ "$d" = "$work" ] || rm -rf "$d"
done
log "built $out/vmlinuz in $(( $(date +%s) - start )) s"
echo "$out/vmlinuz"
