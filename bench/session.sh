#!/usr/bin/env bash
# Session reads at geographic distances (issue 20): the latency a session token adds after a
# remote write and the share of reads that waited, in `atoll demo` under a steady write load.
#
#   bench/session.sh [--ops N] [--load WRITES_PER_SEC]
#
# Builds the release binaries, runs bench/src/bin/session.rs, which starts `atoll demo` on a free
# port base with a fresh data dir, measures, and stops it. Results: docs/benchmarks.md, section
# "Session reads at the demo's distances".
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

log() { echo "session.sh: $*" >&2; }

log "building the generator (release) into $TARGET"
cargo build --release -p atoll-bench --bin session >&2
if [[ -z ${ATOLL_BIN:-} ]]; then
    log "building atoll (release) into $TARGET"
    cargo build --release -p atoll --bin atoll >&2
    ATOLL_BIN=$TARGET/release/atoll
fi
mkdir -p "$BASE"
DIR=$(mktemp -d "$BASE/session.XXXXXX")
trap 'rm -rf "$DIR"' EXIT
log "atoll: $ATOLL_BIN ($(git -C "$ROOT" rev-parse --short HEAD)), $(nproc) cores"
"$TARGET/release/session" --atoll "$ATOLL_BIN" --data-dir "$DIR" "$@"
