#!/usr/bin/env bash
# Promotion-time benchmark (issue 8): how long writes are unavailable when the primary of an
# active-standby atoll cluster is SIGKILLed, is cut off from the standbys, or hands over
# (switchover), for the default lease (5000/1000/250 ms) and a short one (2000/400/100), next to a
# 3-member etcd cluster whose leader is SIGKILLed, with etcd's heartbeat and election timeout
# scaled to the link RTT as etcd's tuning guide says (and etcd's defaults). Every inter-member
# connection of both systems crosses an `atoll link` link with the same one-way delay (20 ms).
#
#   bench/promotion.sh [generator options...]   e.g. bench/promotion.sh --reps 3 --leases short
#
# Builds the release binaries, installs etcd if missing (Debian packages etcd-server and
# etcd-client, as root), runs bench/src/bin/promotion.rs, which starts every cluster on 127.0.0.1
# (a fresh one per repetition; configs, data and logs in a temp dir) and prints markdown tables.
# Every process it started is stopped on exit. Takes about 10 minutes with the defaults (5
# repetitions). Results: docs/benchmarks.md, section "Fencing: promotion time vs etcd".
#
# Environment:
#   CARGO_TARGET_DIR   where cargo puts build output (default: target)
#   ATOLL_BENCH_DIR    parent of the temporary dir (default /work/targets/benchdata)
#   ATOLL_BIN          use this atoll binary instead of building the workspace's
#   KEEP=1             keep the temp dir (configs, logs, data)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BASE=${ATOLL_BENCH_DIR:-/work/targets/benchdata}

log() { echo "promotion.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

log "building the generator (release) into $TARGET"
cargo build --release -p atoll-bench --bin promotion >&2
GEN_BIN=$TARGET/release/promotion
if [[ -z ${ATOLL_BIN:-} ]]; then
    log "building atoll (release) into $TARGET"
    cargo build --release -p atoll --bin atoll >&2
    ATOLL_BIN=$TARGET/release/atoll
fi
[[ -x $ATOLL_BIN && -x $GEN_BIN ]] || die "binaries not found under $TARGET/release"

if ! command -v etcd >/dev/null 2>&1; then
    [[ $(id -u) -eq 0 ]] || die "etcd is not installed; run as root or: apt-get install -y etcd-server etcd-client"
    log "installing etcd (Debian packages etcd-server, etcd-client)"
    apt-get update >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y etcd-server etcd-client >&2
fi
ETCD_BIN=$(command -v etcd)
ETCD_VERSION=$(etcd --version 2>/dev/null | sed -n 's/^etcd Version: //p' | head -1)

mkdir -p "$BASE"
WORK=$(mktemp -d "$BASE/promotion.XXXXXX")
GEN_PID=""

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    # The generator kills its children (regions, etcd members) when it exits; if it is still
    # running (interrupted), stop its whole process group: it runs in its own (setsid).
    if [[ -n $GEN_PID ]] && kill -0 "$GEN_PID" 2>/dev/null; then
        kill -TERM -- "-$GEN_PID" 2>/dev/null || true
        sleep 1
        kill -KILL -- "-$GEN_PID" 2>/dev/null || true
    fi
    wait 2>/dev/null || true
    if [[ ${KEEP:-0} == 1 ]]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "## Promotion time run ($(date -u '+%Y-%m-%d %H:%M UTC'))"
echo
echo "- command: \`bench/promotion.sh $*\`"
if [[ $ATOLL_BIN == "$TARGET/release/atoll" ]]; then
    ATOLL_DESC="workspace at $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- crates src bench Cargo.toml Cargo.lock 2>/dev/null || echo ' with uncommitted changes')"
else
    ATOLL_DESC=$ATOLL_BIN
fi
echo "- atoll: $ATOLL_DESC; etcd $ETCD_VERSION (Debian etcd-server)"
echo "- machine: nproc $(nproc), $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(free -g | awk '/^Mem:/{print $2}') GiB RAM, Linux $(uname -r)"
echo "- uptime before the run: $(uptime)"
echo

# The testkit puts each cluster's directory under $TMPDIR.
TMPDIR=$WORK setsid "$GEN_BIN" --atoll-bin "$ATOLL_BIN" --etcd-bin "$ETCD_BIN" --work "$WORK" "$@" &
GEN_PID=$!
wait "$GEN_PID"
GEN_PID=""

echo
echo "- uptime after the run: $(uptime)"
