#!/usr/bin/env bash
# Replication benchmark: lag, throughput and convergence of three `atoll region` processes.
#
#   bench/replication.sh [generator options...]
#       e.g. bench/replication.sh --phases peak,sustained --sustained-secs 20
#            bench/replication.sh --phases converge --converge-ops 300000
#
# Builds the release binaries and runs bench/src/bin/replication.rs, which writes a 3-region
# config with free 127.0.0.1 ports, starts three `atoll region` children with fresh data dirs
# under ATOLL_BENCH_DIR, runs the phases and prints markdown tables. The generator stops the
# regions (SIGTERM) and removes the data when it ends. Results: docs/benchmarks.md, section
# "Replication: lag, throughput, convergence".
#
# Environment:
#   CARGO_TARGET_DIR   where cargo puts build output (default: target)
#   ATOLL_BENCH_DIR    parent of the temporary data dirs (default /work/targets/benchdata; a real disk)
#   ATOLL_BIN          use this atoll binary instead of building the workspace's
#   PERF=1             profile the catching-up region in the `converge` phase (perf record -e
#                      cpu-clock) and print the top symbols by thread
#   KEEP=1             keep the data dirs and region logs
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BASE=${ATOLL_BENCH_DIR:-/work/targets/benchdata}

log() { echo "replication.sh: $*" >&2; }

log "building (release) into $TARGET"
# One cargo invocation for both packages: building them separately unifies features differently
# and rebuilds the shared crates every time.
cargo build --release -p atoll -p atoll-bench >&2
ATOLL_BIN=${ATOLL_BIN:-$TARGET/release/atoll}
GEN_BIN=$TARGET/release/replication
mkdir -p "$BASE"

PERF_ARGS=()
PERF_OUT=""
if [[ ${PERF:-0} == 1 ]]; then
    command -v perf >/dev/null || { log "PERF=1 but perf is not installed"; exit 1; }
    PERF_OUT=$(mktemp "$BASE/replication-perf.XXXXXX")
    PERF_ARGS=(--perf "$PERF_OUT")
fi

fsync_probe() { # mean latency of a 4 KiB write + O_DSYNC, 200 times, on the data disk
    local f t0 t1
    f=$(mktemp "$BASE/fsync.XXXXXX")
    t0=$(date +%s%N)
    dd if=/dev/zero of="$f" bs=4k count=200 oflag=dsync status=none
    t1=$(date +%s%N)
    rm -f "$f"
    echo "$(( (t1 - t0) / 200000 )) µs"
}

echo "### Replication benchmark ($(date -u '+%Y-%m-%d %H:%M UTC'))"
echo
echo "- command: \`bench/replication.sh $*\`"
echo "- atoll: workspace at $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- crates src Cargo.toml Cargo.lock 2>/dev/null || echo ' with uncommitted changes')"
echo "- machine: nproc $(nproc), $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(free -g | awk '/^Mem:/{print $2}') GiB RAM, Linux $(uname -r)"
echo "- data dir: $(findmnt -n -o SOURCE,FSTYPE -T "$BASE" | tr -s ' '); 4 KiB O_DSYNC write before the run: $(fsync_probe)"
echo "- uptime before the run: $(uptime)"
echo

"$GEN_BIN" --atoll-bin "$ATOLL_BIN" --data-dir "$BASE" "${PERF_ARGS[@]}" "$@"

echo
echo "- uptime after the run: $(uptime); 4 KiB O_DSYNC write after the run: $(fsync_probe)"

if [[ -n $PERF_OUT && -s $PERF_OUT ]]; then
    echo
    echo "perf profile of the catching-up region (cpu-clock, flat, top entries by thread and symbol):"
    echo
    echo '```'
    perf report -i "$PERF_OUT" --no-children --sort comm,dso,symbol --stdio 2>/dev/null \
        | grep -v '^#' | grep -v '^$' | sed 's/[[:space:]]*-[[:space:]]*-[[:space:]]*$//' | head -40 || true
    echo '```'
    [[ ${KEEP:-0} == 1 ]] || rm -f "$PERF_OUT"
fi
