#!/usr/bin/env bash
# Soak benchmark: a 3-region cluster through an `atoll link` mesh under steady mixed load for 30
# minutes, with a partition or a kill -9 every 3 minutes. Reports RSS and open descriptors of
# every region over time (they must stay flat), how long the cluster takes to catch up after
# each fault, and whether every acknowledged write is present everywhere at the end. Not in CI.
#
#   bench/soak.sh                          # the full 30 minutes
#   bench/soak.sh --minutes 5 --fault-every-secs 60 --fault-secs 10   # a short run
#
# Environment: CARGO_TARGET_DIR (default target), ATOLL_BIN (an atoll binary to use instead of
# building the workspace's). Results: docs/benchmarks.md, section "Soak".
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-$(pwd)/target}
echo "soak.sh: building (release) into $TARGET" >&2
cargo build --release -p atoll -p atoll-bench >&2
export ATOLL_BIN=${ATOLL_BIN:-$TARGET/release/atoll}
exec "$TARGET/release/soak" "$@"
