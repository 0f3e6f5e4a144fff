#!/usr/bin/env bash
# Watches (issue 18): write-to-event latency across the demo's distances (us-east-1 ->
# ap-southeast-1, next to the one-way link delay), and events one region fans out to 1,000
# watchers.
#
#   bench/watch.sh [--ops N] [--watchers N] [--writes N]
#
# Builds the release binaries and runs bench/src/bin/watch.rs twice (--case demo, --case
# fanout). Results: docs/benchmarks.md, section "Watches".
#
# Environment:
#   CARGO_TARGET_DIR   where cargo puts build output (default: target)
#   ATOLL_BENCH_DIR    parent of the temporary data dirs (default /work/targets/benchdata)
#   ATOLL_BIN          use this atoll binary instead of building the workspace's
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BASE=${ATOLL_BENCH_DIR:-/work/targets/benchdata}

log() { echo "watch.sh: $*" >&2; }

log "building the generator (release) into $TARGET"
cargo build --release -p atoll-bench --bin watch >&2
if [[ -z ${ATOLL_BIN:-} ]]; then
    log "building atoll (release) into $TARGET"
    cargo build --release -p atoll --bin atoll >&2
    ATOLL_BIN=$TARGET/release/atoll
fi
# 1,000 watchers: as many sockets on each side.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
mkdir -p "$BASE"
DIR=$(mktemp -d "$BASE/watch.XXXXXX")
trap 'rm -rf "$DIR"' EXIT
log "atoll: $ATOLL_BIN ($(git -C "$ROOT" rev-parse --short HEAD)), $(nproc) cores"
"$TARGET/release/watch" --atoll "$ATOLL_BIN" --data-dir "$DIR/demo" --case demo "$@"
echo
"$TARGET/release/watch" --atoll "$ATOLL_BIN" --data-dir "$DIR/fanout" --case fanout "$@"
