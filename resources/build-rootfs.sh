#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds an ext4 disk image from a directory, without root:
#   build-rootfs.sh DIR IMAGE [SIZE]     (SIZE as mkfs.ext4 takes it; default 96M)
# The files keep their modes and owners (the guest's root can use them all).
# Needs: mkfs.ext4 from e2fsprogs 1.43 or later (for -d).
set -euo pipefail

[ $# -ge 2 ] || { echo "usage: $0 DIR IMAGE [SIZE]" >&2; exit 2; }
dir=$1 image=$2 size=${3:-96M}
[ -d "$dir" ] || { echo "build-rootfs: $dir is not a directory" >&2; exit 1; }
mkfs=$(command -v mkfs.ext4 || echo /sbin/mkfs.ext4)
[ -x "$mkfs" ] || { echo "build-rootfs: mkfs.ext4 missing (apt-get install -y e2fsprogs)" >&2; exit 1; }

rm -f "$image.new"
# -E root_owner: the root directory is root's, whoever builds the image.
"$mkfs" -q -F -L ferry-root -E root_owner=0:0 -d "$dir" "$image.new" "$size"
mv "$image.new" "$image"
echo "build-rootfs: built $image ($size) from $dir"
