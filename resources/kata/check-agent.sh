#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Kata's own agent, for real, through ferry's hybrid vsock: builds the agent,
# its client and an initramfs whose init is the agent (cached; see
# build-agent.sh and build-agent-initramfs.sh), boots it under ferry with a
# vsock device, and asks the agent Check, GetGuestDetails, ListInterfaces and
# ListRoutes over `CONNECT 1024`, as Kata's runtime does. Exits 0 when every
# call is answered. Not part of the test suite: the first build takes about
# 20 minutes on 2 cores (later runs a few seconds).
#
# Where /dev/kvm is PVM it runs the boot inside ../shared/kvm-host/run-in-kvm-host.
# Usage: resources/kata/check-agent.sh [FERRY]   (default target/release/ferry)
set -euo pipefail
cd "$(dirname "$0")/../.."
ferry=${1:-target/release/ferry}
[ -x "$ferry" ] || { echo "check-agent: $ferry missing (cargo build --release)" >&2; exit 1; }
dir=$(resources/kata/build-agent-initramfs.sh --print-dir)
# kvm-host shares the repository, not the cache: copy what the boot needs.
mkdir -p target/kata-agent
cp "$dir/vmlinuz" "$dir/initramfs.cpio.gz" "$dir/kata-agent-client" target/kata-agent/
cat > target/kata-agent/run.sh <<EOF2
set -u
sock=/tmp/ferry-kata-check.vsock
rm -f "\$sock"
$ferry --kernel target/kata-agent/vmlinuz --initrd target/kata-agent/initramfs.cpio.gz --net none \\
  --memory 512 --vsock cid=3,uds=\$sock --console file:/tmp/kata-console.log \\
  --cmdline "\$($ferry --print-cmdline) agent.log=debug" &
pid=\$!
target/kata-agent/kata-agent-client --server-address unix://\$sock --hybrid-vsock --wait 120 \\
  Check GetGuestDetails ListInterfaces ListRoutes
status=\$?
kill -HUP \$pid; wait \$pid
[ -e "\$sock" ] && { echo "check-agent: ferry left its vsock socket behind" >&2; status=1; }
exit \$status
EOF2
if [ -e /sys/module/kvm_pvm ]; then
  ../shared/kvm-host/run-in-kvm-host -t 600 -- bash target/kata-agent/run.sh
else
  bash target/kata-agent/run.sh
fi
