#!/usr/bin/env bash
# Router failover benchmark: client-visible error window and time until all traffic has moved
# when a region is SIGKILLed, through atoll's proxy, atoll's DNS (a TTL-honouring simulated
# client) and HAProxy, with common Route 53 settings (scenario `article`: interval 10 s,
# threshold 3, TTL 30 s) and atoll's defaults (interval 1 s, threshold 3, TTL 30 s); then proxy
# throughput (64 keep-alive connections of GET /v1/kv/sessions/<key>) through atoll router vs
# HAProxy vs direct.
#
#   bench/failover.sh [generator options...]   e.g. bench/failover.sh --scenarios default --secs 3
#
# Builds the release binaries, installs HAProxy if missing (Debian package haproxy, as root),
# runs bench/src/bin/failover.rs, which starts three regions, the routers and HAProxy on
# 127.0.0.1 (config and data in a temp dir) and prints markdown tables. Every process it started
# is stopped on exit. Takes about 3 minutes. Results: docs/benchmarks.md, section
# "Router: failover window and proxy throughput vs HAProxy".
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

log() { echo "failover.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

log "building the generator (release) into $TARGET"
cargo build --release -p atoll-bench --bin failover >&2
GEN_BIN=$TARGET/release/failover
if [[ -z ${ATOLL_BIN:-} ]]; then
    log "building atoll (release) into $TARGET"
    cargo build --release -p atoll --bin atoll >&2
    ATOLL_BIN=$TARGET/release/atoll
fi
[[ -x $ATOLL_BIN && -x $GEN_BIN ]] || die "binaries not found under $TARGET/release"

if ! command -v haproxy >/dev/null 2>&1; then
    [[ $(id -u) -eq 0 ]] || die "haproxy is not installed; run as root or: apt-get install -y haproxy"
    log "installing HAProxy (Debian package haproxy)"
    apt-get update >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y haproxy >&2
fi
HAPROXY_BIN=$(command -v haproxy)
HAPROXY_VERSION=$(haproxy -v 2>/dev/null | sed -n 's/^HAProxy version \([^ ]*\).*/\1/p' | head -1)

mkdir -p "$BASE"
WORK=$(mktemp -d "$BASE/failover.XXXXXX")
GEN_PID=""

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    # The generator kills its children (regions, routers, HAProxy) when it exits normally; if it
    # is still running (interrupted), stop its whole process group: it runs in its own (setsid).
    if [[ -n $GEN_PID ]] && kill -0 "$GEN_PID" 2>/dev/null; then
        kill -TERM -- "-$GEN_PID" 2>/dev/null || true
        sleep 1
        kill -KILL -- "-$GEN_PID" 2>/dev/null || true
    fi
    # Anything started from the temp dir's configs that outlived the generator.
    if [[ -d $WORK ]]; then
        for f in "$WORK"/haproxy.pid "$WORK"/*/haproxy.pid; do
            [[ -f $f ]] && kill -KILL "$(cat "$f")" 2>/dev/null || true
        done
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

echo "## Router failover run ($(date -u '+%Y-%m-%d %H:%M UTC'))"
echo
echo "- command: \`bench/failover.sh $*\`"
if [[ $ATOLL_BIN == "$TARGET/release/atoll" ]]; then
    ATOLL_DESC="workspace at $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- crates src Cargo.toml Cargo.lock 2>/dev/null || echo ' with uncommitted changes')"
else
    ATOLL_DESC=$ATOLL_BIN
fi
echo "- atoll: $ATOLL_DESC; HAProxy $HAPROXY_VERSION (Debian haproxy)"
echo "- machine: nproc $(nproc), $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(free -g | awk '/^Mem:/{print $2}') GiB RAM, Linux $(uname -r)"
echo "- uptime before the run: $(uptime)"
echo

setsid "$GEN_BIN" --atoll-bin "$ATOLL_BIN" --haproxy-bin "$HAPROXY_BIN" --work "$WORK" "$@" &
GEN_PID=$!
wait "$GEN_PID"
GEN_PID=""

echo
echo "- uptime after the run: $(uptime)"
