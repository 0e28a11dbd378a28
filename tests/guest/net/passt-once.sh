#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# A passt that serves once: the first start is the real passt, every later
# one exits at once, as a passt broken on the host would. The file named by
# PASST_ONCE_MARKER says it has run. (tests/guest/net: the passt-restart test.)
marker=${PASST_ONCE_MARKER:?PASST_ONCE_MARKER names the marker file}
if [ -e "$marker" ]; then
  echo "passt-once: not again" >&2
  exit 1
fi
: > "$marker"
exec passt "$@"
