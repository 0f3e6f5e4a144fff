#!/usr/bin/env bash
# Memory of a region holding N lww keys: resident set size (VmRSS, and its peak VmHWM) of the
# region process after N durable writes of 128-byte values through the HTTP API, next to the
# data directory's size on disk. Results: docs/benchmarks.md, "Memory".
#
#   bench/memory.sh [N]          (default 1000000)
#
# Release build; the data directory is on a real disk (ATOLL_BENCH_DIR, default
# /work/targets/benchdata). The keys are written by bench/src/bin/http.rs's populate phase (64
# clients, every key once), then the region idles 5 s (background flushes) before it is read.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BASE=${ATOLL_BENCH_DIR:-/work/targets/benchdata}
N=${1:-1000000}

cargo build --release --locked -p atoll --bin atoll -p atoll-bench --bin http >&2
source bench/region.sh
region_workdir "$BASE" memory
start_region "$TARGET/release/atoll" "$WORK"

rss() { awk -v k="$1:" '$1 == k { printf "%.1f MiB", $2 / 1024 }' "/proc/$ATOLL_PID/status"; }
echo "### Memory of a region with $N lww keys of 128 B ($(date -u '+%Y-%m-%d %H:%M UTC'))"
echo
echo "- command: \`bench/memory.sh $N\`; atoll at $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates src Cargo.toml Cargo.lock || echo ' with uncommitted changes')"
echo "- machine: nproc $(nproc), $(free -g | awk '/^Mem:/{print $2}') GiB RAM, Linux $(uname -r)"
echo
echo "| point | RSS | peak RSS | data dir on disk |"
echo "|---|---:|---:|---:|"
echo "| started, empty | $(rss VmRSS) | $(rss VmHWM) | $(du -sh "$WORK/atoll" | cut -f1) |"
start=$SECONDS
# The populate phase writes every key once; the measured GET window is a formality.
"$TARGET/release/http" --atoll "$ATOLL_ADDR" --clients 1 --secs 0.2 --warmup 0 \
    --keys "$N" --value-bytes 128 --only atoll-get >/dev/null
took=$((SECONDS - start))
echo "| after $N writes (${took} s) | $(rss VmRSS) | $(rss VmHWM) | $(du -sh "$WORK/atoll" | cut -f1) |"
sleep 5
echo "| 5 s later, idle | $(rss VmRSS) | $(rss VmHWM) | $(du -sh "$WORK/atoll" | cut -f1) |"
