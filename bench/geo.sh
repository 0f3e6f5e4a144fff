#!/usr/bin/env bash
# Write latency at geographic distances (issue 11): strong and owned writes in `atoll demo`
# (regions talking through atoll link at great-circle latency), each next to the physical floor
# the links impose (the regions' own measured round trips).
#
#   bench/geo.sh [--ops N]
#
# Builds the release binaries, runs bench/src/bin/geo.rs, which starts `atoll demo` on a free
# port base with a fresh data dir, measures, and stops it. Results: docs/benchmarks.md, section
# "Strong and owned writes at the demo's distances".
#
# Environment:
#   CARGO_TARGET_DIR   where cargo puts build output (default: target)
#   ATOLL_BENCH_DIR    parent of the temporary data dir (default /work/targets/benchdata)
#   ATOLL_BIN          use this atoll binary instead of building the workspace's
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BASE=${ATOLL_BENCH_DIR:-/work/targets/benchdata}

log() { echo "geo.sh: $*" >&2; }

log "building the generator (release) into $TARGET"
cargo build --release -p atoll-bench --bin geo >&2
if [[ -z ${ATOLL_BIN:-} ]]; then
    log "building atoll (release) into $TARGET"
    cargo build --release -p atoll --bin atoll >&2
    ATOLL_BIN=$TARGET/release/atoll
fi
mkdir -p "$BASE"
DIR=$(mktemp -d "$BASE/geo.XXXXXX")
trap 'rm -rf "$DIR"' EXIT
log "atoll: $ATOLL_BIN ($(git -C "$ROOT" rev-parse --short HEAD)), $(nproc) cores"
"$TARGET/release/geo" --atoll "$ATOLL_BIN" --data-dir "$DIR" "$@"
