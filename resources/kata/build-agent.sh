#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds Kata Containers' guest agent (kata-agent) and kata-agent-client, a
# small ttrpc client for it (resources/kata/agent-client), into a cache
# directory outside the repository:
#
#   ${XDG_CACHE_HOME:-$HOME/.cache}/ferry-kata/<key>/kata-agent
#   ${XDG_CACHE_HOME:-$HOME/.cache}/ferry-kata/<key>/kata-agent-client
#
# <key> is a hash of the Kata tag, this script and the client's sources: a
# second run with none of them changed only checks the stamp and prints the
# paths. The build itself (~20 min on 2 cores the first time) works in
# ferry-kata/work/ (a trimmed Kata tree and a cargo target directory shared by
# all keys, so a changed client rebuilds only what changed).
#
# Kata's source comes from a Kata Containers git repository (KATA_MIRROR, a
# bare clone or a checkout's .git) at tag KATA_TAG (default
# 4.0.0); crates come from crates.io through cargo. Kata's workspace pulls
# git-only crates, so the tree is cut to the agent and the libraries it uses
# (see ../shared/design/CRATES.md beside the repository). The agent
# is built without Kata's default `seccomp` and `init-data` features (no
# libseccomp needed) and links glibc dynamically.
#
# Needs: git, tar, python3, flock, cargo/rustc (the machine's stable; Kata's
# rust-toolchain.toml is dropped), gcc and libc6-dev, sha256sum. protoc is
# NOT needed: ttrpc-codegen parses the .proto files in pure Rust. Missing
# Debian packages are installed with apt-get (as root or with sudo).
#
# Usage: build-agent.sh [--print-dir] [--force]
#   (no option)  build if needed, print the two binaries' paths
#   --print-dir  build if needed, print only the output directory on stdout
#   --force      rebuild even if the stamp says the output is up to date
# Progress goes to stderr.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
self=$here/$(basename "$0")
client_src=$here/agent-client
tag=${KATA_TAG:-4.0.0}
mirror=${KATA_MIRROR:-/work/.mirror/kata-containers+kata-containers/repo}
base=${XDG_CACHE_HOME:-$HOME/.cache}/ferry-kata

print_dir=no
force=no
for a in "$@"; do
  case "$a" in
    --print-dir) print_dir=yes ;;
    --force) force=yes ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-agent: unknown option $a (try --help)" >&2; exit 2 ;;
  esac
done

log() { echo "build-agent: $*" >&2; }
die() { log "$*"; exit 1; }

# The key: the tag, this script, the client's sources (names and contents).
client_files=$(cd "$client_src" && find . -path ./target -prune -o -type f \( -name Cargo.toml -o -name '*.rs' \) -print | LC_ALL=C sort)
[ -n "$client_files" ] || die "no client sources in $client_src"
key=$( { echo "kata-tag $tag"; sha256sum "$self"; (cd "$client_src" && sha256sum $client_files); } | sha256sum | cut -c1-16)
out=$base/$key
stamp="tag=$tag key=$key"

report() {
  if [ "$print_dir" = yes ]; then
    echo "$out"
  else
    echo "$out/kata-agent"
    echo "$out/kata-agent-client"
  fi
}

if [ "$force" = no ] && [ -x "$out/kata-agent" ] && [ -x "$out/kata-agent-client" ] \
   && [ "$(cat "$out/stamp" 2>/dev/null)" = "$stamp" ]; then
  log "$out is up to date (Kata $tag)"
  report
  exit 0
fi

# One build at a time (parallel test runs may all ask for it); a run that
# waited may find the work done.
mkdir -p "$base"
exec 9>"$base/.lock"
flock 9
if [ "$force" = no ] && [ -x "$out/kata-agent" ] && [ -x "$out/kata-agent-client" ] \
   && [ "$(cat "$out/stamp" 2>/dev/null)" = "$stamp" ]; then
  log "$out was built meanwhile"
  report
  exit 0
fi

# --- Tools and Debian packages -------------------------------------------
command -v cargo >/dev/null || die "cargo is missing: install Rust (rustup) first"
need_pkgs=""
for p in git tar gcc libc6-dev python3 util-linux coreutils; do
  dpkg -s "$p" >/dev/null 2>&1 || need_pkgs="$need_pkgs $p"
done
if [ -n "$need_pkgs" ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  export DEBIAN_FRONTEND=noninteractive
  log "installing$need_pkgs"
  $sudo apt-get install -y -q $need_pkgs >&2 || { $sudo apt-get update -q >&2 && $sudo apt-get install -y -q $need_pkgs >&2; }
fi

# --- The trimmed Kata tree -----------------------------------------------
# Extracts Kata's tag into $tree and cuts its workspace down to the agent.
prepare_tree() {
  local version commit left
  [ -d "$mirror" ] || die "Kata's git mirror $mirror is missing (set KATA_MIRROR)"
  git -C "$mirror" rev-parse -q --verify "refs/tags/$tag" >/dev/null \
    || die "tag $tag is not in $mirror (tags: $(git -C "$mirror" tag | sort -V | tail -n 5 | tr '\n' ' '))"
  log "extracting Kata $tag ($(git -C "$mirror" rev-parse --short "$tag^{commit}")) into $tree"
  # -m: files dated now, not at the commit. Cargo names the build outputs of
  # path crates by their place in the workspace, not by the tree's path, so a
  # fresh tree must look newer than what the shared target directory built
  # from an older one: protocols' build script writes its generated code into
  # src/ and reruns only when its .proto files changed.
  git -C "$mirror" archive "$tag" Cargo.toml Cargo.lock VERSION src/agent src/libs | tar -x -m -C "$tree"

  # Root manifest: members cut to the agent and its libraries.
  python3 - "$tree/Cargo.toml" <<'EOF'
import re, sys, os
path = sys.argv[1]
root = os.path.dirname(path)
text = open(path).read()
members = ["src/agent", "src/agent/rustjail", "src/agent/vsock-exporter"] + [
    "src/libs/" + l for l in
    "kata-sys-util kata-types logging mem-agent protocols runtime-spec safe-path test-utils".split()]
text, n = re.subn(r'(?ms)^members = \[.*?^\]\n',
                  "members = [\n" + "".join(f'  "{m}",\n' for m in members) + "]\n", text, count=1)
if n != 1: sys.exit("root Cargo.toml: no members list")
out, dropped = [], []
section = ""
for line in text.splitlines(keepends=True):
    s = line.strip()
    if s.startswith("["):
        section = s
    if section.startswith("[profile.release.package."):
        continue  # overrides for packages that are not in the cut workspace
    if section == "[workspace.dependencies]":
        m = re.match(r'([A-Za-z0-9_-]+)\s*=\s*(.*)', s)
        if m and "git =" in m.group(2):
            dropped.append(m.group(1)); continue
        p = re.search(r'path\s*=\s*"([^"]+)"', m.group(2)) if m else None
        if p and not os.path.isdir(os.path.join(root, p.group(1))):
            dropped.append(m.group(1)); continue
    out.append(line)
open(path, "w").write("".join(out))
print("build-agent: dropped workspace dependencies: " + " ".join(dropped), file=sys.stderr)
EOF
  # The agent: no policy engine, no devicemapper, no s390x-only git crate.
  edit src/agent/Cargo.toml '/^kata-agent-policy = /d' "drop kata-agent-policy"
  edit src/agent/Cargo.toml '/^agent-policy = /d; /^devicemapper = /d' "drop the agent-policy/devicemapper features"
  edit src/agent/Cargo.toml "/^\[target\.'cfg(target_arch = \"s390x\")'\.dependencies\]/,/^\$/d" "drop the s390x section"
  # kata-types: its optional devicemapper (git-only) and the feature using it.
  edit src/libs/kata-types/Cargo.toml '/^devicemapper = /d' "drop devicemapper"
  left=$(cd "$tree" && grep -l -E 'git *=' Cargo.toml src/agent/Cargo.toml src/agent/{rustjail,vsock-exporter}/Cargo.toml \
         src/libs/{kata-sys-util,kata-types,logging,mem-agent,protocols,runtime-spec,safe-path,test-utils}/Cargo.toml || true)
  [ -z "$left" ] || die "Kata $tag: a git dependency is left in: $left"

  # src/agent/src/version.rs, as the agent's Makefile generates it.
  version=$(grep -v '^#' "$tree/VERSION" | head -n1)
  commit=$(git -C "$mirror" rev-parse "$tag^{commit}")
  sed -e "s|@AGENT_NAME@|kata-agent|g; s|@AGENT_VERSION@|$version|g; s|@API_VERSION@|0.0.1|g" \
      -e "s|@BINDIR@|/usr/bin|g; s|@COMMIT@|$commit|g; s|@VERSION_COMMIT@|$version-$commit|g" \
      "$tree/src/agent/src/version.rs.in" > "$tree/src/agent/src/version.rs"
  ! grep -q @ "$tree/src/agent/src/version.rs" || die "version.rs: unreplaced @…@ left"
}

# Edits to Kata's manifests; each must change its file, or this tag is laid
# out differently from the one the script was written for.
edit() { # FILE SED-SCRIPT WHAT
  local f=$tree/$1 before
  before=$(sha256sum "$f")
  sed -i -e "$2" "$f"
  [ "$(sha256sum "$f")" != "$before" ] || die "Kata $tag: cannot $3 in $1 (has it changed?)"
}

# One tree per (tag, the two functions above), kept between runs (a new one
# rebuilds Kata's own crates, not the crates.io ones).
tree_key=$( { echo "kata-tag $tag"; declare -f prepare_tree edit; } | sha256sum | cut -c1-16)
work=$base/work
tree=$work/tree-$tree_key/kata
client=$work/tree-$tree_key/agent-client
target=$work/target
if [ ! -f "$tree/.ferry-prepared" ]; then
  # Trees of other tags or trimmings are of no further use.
  for d in "$work"/tree-*; do [ "$d" = "$work/tree-$tree_key" ] || rm -rf "$d"; done
  rm -rf "$work/tree-$tree_key"
  mkdir -p "$tree"
  prepare_tree
  touch "$tree/.ferry-prepared"
fi

# --- Build -----------------------------------------------------------------
# The client stands alone (its own [workspace]) next to the tree, with a path
# dependency on ../kata/src/libs/protocols; Kata's lock file seeds its own so
# it gets the same ttrpc/protobuf versions as the agent.
rm -rf "$client"
mkdir -p "$client"
(cd "$client_src" && cp --parents $client_files "$client/")
cp "$tree/Cargo.lock" "$client/Cargo.lock"

export CARGO_TARGET_DIR=$target
start=$(date +%s)
# The client first: both builds run protocols' build script (with different
# dependency features, so in different units), which rewrites protocols/src;
# in this order the agent's build, the long one, comes last and stays fresh.
log "building kata-agent-client"
(cd "$client" && cargo build --release) >&2 || die "cargo build of kata-agent-client failed"
log "building kata-agent (release; ~20 min on 2 cores the first time)"
(cd "$tree" && cargo build --release -p kata-agent) >&2 || die "cargo build of kata-agent failed"

mkdir -p "$out"
cp "$target/release/kata-agent" "$out/kata-agent.new"
cp "$target/release/kata-agent-client" "$out/kata-agent-client.new"
mv "$out/kata-agent.new" "$out/kata-agent"
mv "$out/kata-agent-client.new" "$out/kata-agent-client"
echo "$stamp" > "$out/stamp"
log "built in $(( $(date +%s) - start )) s into $out"
report
