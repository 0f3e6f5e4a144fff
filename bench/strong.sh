#!/usr/bin/env bash
# Strong keyspaces' write latency (issue 11): p50/p99 of sequential writes to a `strong` keyspace
# of a 3-region atoll cluster (to the leader, and to a follower, which forwards), next to a
# 3-member etcd cluster, every inter-member connection of both through an `atoll link` link with
# the same one-way delay (default 40 ms: an ~80 ms round trip, us-east-1 to eu-west-1). The
# physical floor of a write is one round trip from the leader to the nearest quorum.
#
#   bench/strong.sh [generator options...]   e.g. bench/strong.sh --writes 100 --link-delay-ms 20
#
# Builds the release binaries, uses etcd if installed (`--etcd-bin none` skips it), runs
# bench/src/bin/strong.rs and prints a markdown table.
#
# Environment:
#   CARGO_TARGET_DIR   where cargo puts build output (default: target)
#   ATOLL_BENCH_DIR    parent of the temporary dir (default /work/targets/benchdata)
#   ATOLL_BIN          use this atoll binary instead of building the workspace's
#   PROFILE            release (default) or debug
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BASE=${ATOLL_BENCH_DIR:-/work/targets/benchdata}
PROFILE=${PROFILE:-release}
FLAG=--release
[[ $PROFILE == debug ]] && FLAG=

log() { echo "strong.sh: $*" >&2; }

log "building the generator ($PROFILE) into $TARGET"
cargo build $FLAG -p atoll-bench --bin strong >&2
if [[ -z ${ATOLL_BIN:-} ]]; then
    log "building atoll ($PROFILE) into $TARGET"
    cargo build $FLAG -p atoll --bin atoll >&2
    ATOLL_BIN=$TARGET/$PROFILE/atoll
fi
ETCD=etcd
command -v etcd >/dev/null 2>&1 || { log "etcd not installed: atoll only"; ETCD=none; }
mkdir -p "$BASE"
WORK=$(mktemp -d "$BASE/strong.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
"$TARGET/$PROFILE/strong" --atoll-bin "$ATOLL_BIN" --etcd-bin "$ETCD" --work "$WORK" "$@"
