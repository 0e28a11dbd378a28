# SPDX-License-Identifier: Apache-2.0
# Sourced by build-guest.sh and kata/build-agent-initramfs.sh: the kernel
# modules an initramfs loads, copied in load order.
#
# copy_modules MODDIR DEST MODULES...
#   MODDIR: a kernel's /lib/modules/<version> (with modules.dep and
#   modules.builtin, as depmod leaves them); DEST: the initramfs's
#   lib/modules. Copies (decompressed) each module named, after the
#   modules it depends on, and writes their load order to DEST/order.
#   A module built into the kernel is skipped; one that is neither there
#   nor built in is an error (status 1, named on stderr).
copy_modules() {
  local moddir=$1 dest=$2 m p f
  shift 2
  declare -A seen=()
  local order=()
  visit() {
    local p=$1 d
    [ -n "${seen[$p]:-}" ] && return 0
    seen[$p]=1
    for d in $(awk -F': *' -v p="$p" '$1==p {print $2; exit}' "$moddir/modules.dep" | tr ' ' '\n' | tac); do visit "$d"; done
    order+=("$p")
  }
  for m in "$@"; do
    p=$(awk -F: -v m="/${m//_/[-_]}.ko" '$1 ~ m"(\\.xz|\\.zst|\\.gz)?$" {print $1; exit}' "$moddir/modules.dep")
    if [ -z "$p" ]; then
      grep -q "/${m//_/[-_]}.ko" "$moddir/modules.builtin" && continue  # built in
      echo "module $m not found in $moddir" >&2
      return 1
    fi
    visit "$p"
  done
  for p in "${order[@]}"; do
    f=$(basename "$p")
    case "$f" in
      *.xz) xz -dc "$moddir/$p" > "$dest/${f%.xz}"; f=${f%.xz} ;;
      *.zst) zstd -dqc "$moddir/$p" > "$dest/${f%.zst}"; f=${f%.zst} ;;
      *.gz) gzip -dc "$moddir/$p" > "$dest/${f%.gz}"; f=${f%.gz} ;;
      *) cp "$moddir/$p" "$dest/$f" ;;
    esac
    echo "$f"
  done > "$dest/order"
}
