#!/usr/bin/env bash
# HTTP API benchmark: atoll's durable writes and reads vs etcd's HTTP/JSON gateway.
#
#   bench/http.sh [generator options...]      e.g. bench/http.sh --clients 1,16,64 --secs 5
#
# Builds the release binaries, installs etcd if missing (Debian's etcd-server, as root), starts
# one etcd member and one atoll region on 127.0.0.1 with fresh data directories on a real disk,
# runs the load generator (bench/src/bin/http.rs) against both and prints markdown tables.
# Everything is stopped and removed on exit. Results: docs/benchmarks.md, section
# "HTTP API: durable writes and reads vs etcd".
#
# Environment:
#   CARGO_TARGET_DIR   where cargo puts build output (default: target)
#   ATOLL_BENCH_DIR    parent of the temporary data dirs (default /work/targets/benchdata; must be
#                      a real disk, not tmpfs, or fsync costs nothing)
#   ETCD_CLIENT_PORT   default 23790;  ETCD_PEER_PORT  default 23800
#   ATOLL_BIN          use this atoll binary instead of building the workspace's (e.g. one built
#                      from another commit)
#   ATOLL_DESC         how to describe the atoll build in the report (default: git commit)
#   KEEP=1             keep the data dirs and logs
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BASE=${ATOLL_BENCH_DIR:-/work/targets/benchdata}
ETCD_CLIENT_PORT=${ETCD_CLIENT_PORT:-23790}
ETCD_PEER_PORT=${ETCD_PEER_PORT:-23800}
READY_DEADLINE_SECS=60

log() { echo "http.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# ---- build -------------------------------------------------------------------------------
log "building the load generator (release) into $TARGET"
cargo build --release -p atoll-bench --bin http >&2
GEN_BIN=$TARGET/release/http
if [[ -z ${ATOLL_BIN:-} ]]; then
    log "building atoll (release) into $TARGET"
    cargo build --release -p atoll --bin atoll >&2
    ATOLL_BIN=$TARGET/release/atoll
fi
[[ -x $ATOLL_BIN && -x $GEN_BIN ]] || die "binaries not found under $TARGET/release"

# ---- etcd --------------------------------------------------------------------------------
if ! command -v etcd >/dev/null 2>&1; then
    [[ $(id -u) -eq 0 ]] || die "etcd is not installed; run as root or: apt-get install -y etcd-server"
    log "installing etcd (Debian package etcd-server)"
    apt-get update >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y etcd-server >&2
fi
ETCD_VERSION=$(etcd --version 2>/dev/null | sed -n 's/^etcd Version: *//p' | head -1)
[[ -n $ETCD_VERSION ]] || die "cannot read the etcd version"
IFS=. read -r EMAJ EMIN _ <<<"$ETCD_VERSION"
# The gateway is served under /v3/ from etcd 3.4 on (3.3 used /v3beta/).
if (( EMAJ < 3 || (EMAJ == 3 && EMIN < 4) )); then
    die "etcd $ETCD_VERSION is too old: the /v3/kv/* gateway path needs etcd >= 3.4"
fi

# ---- data dirs and cleanup ---------------------------------------------------------------
mkdir -p "$BASE"
WORK=$(mktemp -d "$BASE/http.XXXXXX")
ETCD_PID=""
source bench/region.sh

stop() { # pid name
    local pid=$1 name=$2 i
    [[ -n $pid ]] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    log "$name (pid $pid) did not stop in 10 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_region
    stop "$ETCD_PID" etcd
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

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$ETCD_CLIENT_PORT" "$ETCD_PEER_PORT"; do
    ! port_busy "$p" || die "127.0.0.1:$p is already in use (set ETCD_CLIENT_PORT / ETCD_PEER_PORT)"
done

# ---- start etcd --------------------------------------------------------------------------
ETCD_URL=http://127.0.0.1:$ETCD_CLIENT_PORT
PEER_URL=http://127.0.0.1:$ETCD_PEER_PORT
etcd --name bench --data-dir "$WORK/etcd" \
    --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
    --listen-peer-urls "$PEER_URL" --initial-advertise-peer-urls "$PEER_URL" \
    --initial-cluster "bench=$PEER_URL" --initial-cluster-state new \
    >"$WORK/etcd.log" 2>&1 &
ETCD_PID=$!

# ---- start atoll (port 0: it prints the address it bound) and wait until both answer ------
start_region "$ATOLL_BIN" "$WORK" || die "atoll did not start"
deadline=$((SECONDS + READY_DEADLINE_SECS))
# The gateway path itself must work (not only the process): an empty range on key "\0".
until curl -sf -m 2 -X POST -d '{"key":"AA=="}' "$ETCD_URL/v3/kv/range" | grep -q '"header"'; do
    kill -0 "$ETCD_PID" 2>/dev/null || { tail -20 "$WORK/etcd.log" >&2; die "etcd exited during start-up"; }
    (( SECONDS < deadline )) || { tail -20 "$WORK/etcd.log" >&2; die "etcd's /v3/kv/range did not answer within ${READY_DEADLINE_SECS} s"; }
    sleep 0.2
done
log "atoll on $ATOLL_ADDR (pid $ATOLL_PID), etcd $ETCD_VERSION on 127.0.0.1:$ETCD_CLIENT_PORT (pid $ETCD_PID), data in $WORK"

# ---- the machine --------------------------------------------------------------------------
fsync_probe() { # mean latency of a 4 KiB write + O_DSYNC, 200 times, in the data dir
    local t0 t1
    t0=$(date +%s%N)
    dd if=/dev/zero of="$WORK/fsync.probe" bs=4k count=200 oflag=dsync status=none
    t1=$(date +%s%N)
    rm -f "$WORK/fsync.probe"
    echo "$(( (t1 - t0) / 200000 )) µs"
}
echo "### atoll vs etcd over HTTP ($(date -u '+%Y-%m-%d %H:%M UTC'))"
echo
echo "- command: \`bench/http.sh $*\`"
if [[ -n ${ATOLL_DESC:-} ]]; then
    :
elif [[ $ATOLL_BIN == "$TARGET/release/atoll" ]]; then
    ATOLL_DESC="workspace at $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- crates src Cargo.toml Cargo.lock 2>/dev/null || echo ' with uncommitted changes')"
else
    ATOLL_DESC=${ATOLL_DESC:-$ATOLL_BIN}
fi
echo "- atoll: $ATOLL_DESC; etcd $ETCD_VERSION (Debian etcd-server)"
echo "- machine: nproc $(nproc), $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(free -g | awk '/^Mem:/{print $2}') GiB RAM, Linux $(uname -r)"
echo "- data dir: $(findmnt -n -o SOURCE,FSTYPE -T "$WORK" | tr -s ' ' | sed 's/ / /'); 4 KiB O_DSYNC write before the run: $(fsync_probe)"
echo "- load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
echo

"$GEN_BIN" --atoll "$ATOLL_ADDR" --etcd "127.0.0.1:$ETCD_CLIENT_PORT" \
    --atoll-pid "$ATOLL_PID" --etcd-pid "$ETCD_PID" "$@"

echo
echo "- load average after the run: $(cut -d' ' -f1-3 /proc/loadavg); 4 KiB O_DSYNC write after the run: $(fsync_probe)"
