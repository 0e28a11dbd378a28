#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# Builds and runs ferry's fuzz targets (cargo-fuzz, libFuzzer, nightly).
#
#   fuzz/run.sh smoke                 build every target, run each for a few
#                                     seconds (about 60 s in all) on a copy of
#                                     its seed corpus; fails if any crashes
#   fuzz/run.sh long SECONDS [--cmin] run each target for SECONDS on a copy of
#                                     its corpus and report executions,
#                                     coverage and crashes; with --cmin, fold
#                                     the new inputs into fuzz/corpus/<target>
#                                     and minimise it with `cargo fuzz cmin`
#
# cargo-fuzz itself, when missing, is installed once under
# ~/.cache/ferry-cargo-fuzz/<version> (outside the repository).
#
# Environment: CARGO_TARGET_DIR (where to build; ~/.cache/ferry-fuzz/target
# otherwise, kept between runs so that only ferry's crates rebuild),
# FUZZ_TARGETS (a space-separated subset of the targets), SMOKE_SECONDS
# (the smoke run's total, 60 by default). Crashing inputs are kept under
# fuzz/artifacts/<target>/ (ignored by git).

set -euo pipefail

FUZZ_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CARGO_FUZZ=(cargo +nightly fuzz)
CARGO_FUZZ_VERSION=0.13.2
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ferry-fuzz/target}"

# cargo-fuzz, installed once (keyed by its version) when this machine has none.
if ! cargo fuzz --version >/dev/null 2>&1; then
    root="$HOME/.cache/ferry-cargo-fuzz/$CARGO_FUZZ_VERSION"
    if [[ ! -x "$root/bin/cargo-fuzz" ]]; then
        echo "installing cargo-fuzz $CARGO_FUZZ_VERSION into $root" >&2
        cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --root "$root" \
            --target-dir "$HOME/.cache/ferry-cargo-fuzz/build" >&2
    fi
    export PATH="$root/bin:$PATH"
fi

usage() {
    sed -n '4,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

targets() {
    if [[ -n "${FUZZ_TARGETS:-}" ]]; then
        echo "$FUZZ_TARGETS"
    else
        "${CARGO_FUZZ[@]}" list --fuzz-dir "$FUZZ_DIR"
    fi
}

# run_target TARGET SECONDS CORPUS_DIR LOG: runs one target; returns
# libFuzzer's exit status.
run_target() {
    local target=$1 seconds=$2 corpus=$3 log=$4
    mkdir -p "$FUZZ_DIR/artifacts/$target"
    "${CARGO_FUZZ[@]}" run --fuzz-dir "$FUZZ_DIR" "$target" "$corpus" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
        -artifact_prefix="$FUZZ_DIR/artifacts/$target/" >"$log" 2>&1
}

# summary TARGET LOG STATUS: one line per target.
summary() {
    local target=$1 log=$2 status=$3 execs last cov ft corp crash
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
    last=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -n1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's/.* corp: \([^ ]*\).*/\1/p' <<<"$last")
    if [[ $status -eq 0 ]]; then
        crash=no
    else
        crash="YES ($(grep -Eo '(crash|timeout|oom|leak)-[0-9a-f]+' "$log" | tail -n1 || echo "exit $status"))"
    fi
    printf '%-20s execs %-10s cov %-6s ft %-7s corpus %-12s crash %s\n' \
        "$target" "${execs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$crash"
}

build() {
    echo "building the fuzz targets in $CARGO_TARGET_DIR" >&2
    "${CARGO_FUZZ[@]}" build --fuzz-dir "$FUZZ_DIR"
}

# run_all SECONDS CMIN: builds, then runs every target SECONDS on a copy
# of its corpus, a summary line each; with CMIN=1 the new inputs are folded
# into fuzz/corpus/<target> and minimised. Exits non-zero if any crashed.
run_all() {
    local seconds=$1 cmin=$2 failed=0 status t
    build
    read -ra list <<<"$(targets | tr '\n' ' ')"
    if [[ $seconds == per-target-of-smoke ]]; then
        seconds=$((${SMOKE_SECONDS:-60} / ${#list[@]}))
        ((seconds >= 1)) || seconds=1
    fi
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    for t in "${list[@]}"; do
        mkdir -p "$work/$t"
        cp -R "$FUZZ_DIR/corpus/$t/." "$work/$t/"
        status=0
        run_target "$t" "$seconds" "$work/$t" "$work/$t.log" || status=$?
        summary "$t" "$work/$t.log" "$status"
        if [[ $status -ne 0 ]]; then
            failed=1
            grep -E 'panicked at|ERROR: |SUMMARY: |Test unit written' "$work/$t.log" | head -n 8 >&2 || true
        fi
        if [[ $cmin -eq 1 ]]; then
            cp -n "$work/$t/"* "$FUZZ_DIR/corpus/$t/" 2>/dev/null || true
            "${CARGO_FUZZ[@]}" cmin --fuzz-dir "$FUZZ_DIR" "$t" "$FUZZ_DIR/corpus/$t" \
                >"$work/$t.cmin.log" 2>&1 || { echo "cmin of $t failed" >&2; failed=1; }
            echo "  corpus/$t: $(find "$FUZZ_DIR/corpus/$t" -type f | wc -l) inputs after cmin"
        fi
    done
    exit "$failed"
}

mode=${1:-}
case "$mode" in
smoke)
    [[ $# -eq 1 ]] || usage
    run_all per-target-of-smoke 0
    ;;
long)
    [[ $# -ge 2 && $# -le 3 ]] || usage
    cmin=0
    if [[ $# -eq 3 ]]; then
        [[ $3 == --cmin ]] || usage
        cmin=1
    fi
    run_all "$2" "$cmin"
    ;;
*)
    usage
    ;;
esac
