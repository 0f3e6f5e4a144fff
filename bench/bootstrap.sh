#!/usr/bin/env bash
# Bounded disk and bootstrap by snapshot (issue 15; docs/design/oplog-truncation.md). Results:
# docs/benchmarks.md, "Bounded disk and bootstrap by snapshot".
#
#   bench/bootstrap.sh [KEYS] [OVERWRITE_SECS]      (defaults 1000000 and 30)
#
# Two release-build regions on loopback (us-east-1 and eu-west-1, plain HTTP between them, data
# on a real disk: ATOLL_BENCH_DIR, default /work/targets/benchdata), with
# `[replication] oplog_retention = "0s"` (the shipped 10 minutes would keep every entry of a
# run this short; the rule measured, "truncated once every region applied it", is the same).
#
# 1. KEYS keys of 128-byte values are written once to us-east-1 (bench/src/bin/http.rs's
#    populate phase, 64 clients), then overwritten for OVERWRITE_SECS (64 clients, closed loop).
# 2. Once eu-west-1 has applied everything and both logs are truncated, each region's data
#    directory size and its tables' sizes (atoll_store_disk_bytes) are printed next to the raw
#    size of the live keys and values.
# 3. eu-west-1 is stopped, its data directory deleted, and it is started again: a region that
#    cannot catch up from the log bootstraps from us-east-1's snapshot. The time until it is
#    complete gives keys/s and MB/s; 16 clients read from us-east-1 in 2 s windows throughout,
#    and their p99 is printed next to the same reads before the bootstrap.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BASE=${ATOLL_BENCH_DIR:-/work/targets/benchdata}
N=${1:-1000000}
OVERWRITE_SECS=${2:-30}

cargo build --release --locked -p atoll --bin atoll -p atoll-bench --bin http >&2
ATOLL=$TARGET/release/atoll
HTTP=$TARGET/release/http

mkdir -p "$BASE"
WORK=$(mktemp -d "$BASE/bootstrap.XXXXXX")
PIDS=()
cleanup() {
    rc=$?
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    sleep 1
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT

read -r US_PORT EU_PORT < <(python3 -c 'import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
US=127.0.0.1:$US_PORT
EU=127.0.0.1:$EU_PORT
cat >"$WORK/atoll.toml" <<EOF
[cluster]
name = "bench-bootstrap"

[cluster.tls]
insecure = true

[[regions]]
name = "us-east-1"
api = "$US"

[[regions]]
name = "eu-west-1"
api = "$EU"

[[keyspaces]]
name = "sessions"
policy = "lww"

[[keyspaces]]
name = "ratelimits"
policy = "counter"

[replication]
oplog_retention = "0s"
EOF

launch() { # region -> pid in LAST_PID
    "$ATOLL" region --config "$WORK/atoll.toml" --region "$1" --data-dir "$WORK/$1" \
        >>"$WORK/$1.out" 2>>"$WORK/$1.err" &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}
start() { # region addr -> pid in LAST_PID, once /healthz says 200
    launch "$1"
    local deadline=$((SECONDS + 60))
    until curl -sf -m 2 "http://$2/healthz" >/dev/null; do
        (( SECONDS < deadline )) || { tail -20 "$WORK/$1.err" >&2; echo "$1 did not become healthy" >&2; return 1; }
        sleep 0.1
    done
}
status() { curl -sf -m 5 "http://$1/v1/status"; }
metric() { # addr series -> value (0 if absent or unreachable)
    { curl -sf -m 5 "http://$1/metrics" || true; } | awk -v s="$2" 'index($0, s" ") == 1 { print $2; f=1 } END { if (!f) print 0 }'
}
jq_() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
mb() { awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1e6 }'; }
wait_for() { # what deadline_s command...
    local what=$1 deadline=$((SECONDS + $2)); shift 2
    until "$@"; do
        (( SECONDS < deadline )) || { echo "gave up waiting for $what" >&2; return 1; }
        sleep 0.5
    done
}

start us-east-1 "$US"; US_PID=$LAST_PID
start eu-west-1 "$EU"; EU_PID=$LAST_PID

echo "### Bounded disk and bootstrap by snapshot ($(date -u '+%Y-%m-%d %H:%M UTC'))"
echo
echo "- command: \`bench/bootstrap.sh $N $OVERWRITE_SECS\`; atoll at $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates src Cargo.toml Cargo.lock || echo ' with uncommitted changes')"
echo "- machine: nproc $(nproc), $(free -g | awk '/^Mem:/{print $2}') GiB RAM, Linux $(uname -r); two regions and the generator share it"
echo

t0=$SECONDS
"$HTTP" --atoll "$US" --clients 1 --secs 0.2 --warmup 0 --keys "$N" --value-bytes 128 \
    --only atoll-get >/dev/null 2>"$WORK/populate.log"
echo "- populate: $N keys written once in $((SECONDS - t0)) s"
"$HTTP" --atoll "$US" --clients 64 --secs "$OVERWRITE_SECS" --warmup 0 --keys "$N" \
    --value-bytes 128 --max-requests 100000000 --only atoll-put --no-populate 2>"$WORK/overwrite.log" >/dev/null
echo "- overwrites: $(grep -oE 'atoll-put +clients.*' "$WORK/overwrite.log" | head -1)"
HEAD=$(status "$US" | jq_ 'd["replication"]["applied"]["us-east-1"]')
echo "- us-east-1's log head: $HEAD writes in all"
caught_up() { [[ $(status "$EU" | jq_ 'd["replication"]["applied"].get("us-east-1", 0)') -ge $HEAD ]]; }
truncated() { # addr
    [[ $(status "$1" | jq_ 'd["replication"]["oplog_truncated_through"].get("us-east-1", 0)') -ge $((HEAD - 1)) ]]
}
t0=$SECONDS
wait_for "eu-west-1 to apply everything" 600 caught_up
wait_for "us-east-1's log to be truncated" 600 truncated "$US"
wait_for "eu-west-1's log to be truncated" 600 truncated "$EU"
echo "- eu-west-1 caught up and both logs truncated to their newest entry $((SECONDS - t0)) s after the load; then 10 s idle"
sleep 10
RAW=$((N * (7 + 128)))
echo
echo "| region | data dir (du) | per live key | data table | oplog table | journal | raw keys + values |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for r in "us-east-1 $US" "eu-west-1 $EU"; do
    set -- $r
    du_b=$(du -sb "$WORK/$1" | cut -f1)
    echo "| $1 | $(mb "$du_b") | $((du_b / N)) B | $(mb "$(metric "$2" 'atoll_store_disk_bytes{table="data"}')") | $(mb "$(metric "$2" 'atoll_store_disk_bytes{table="oplog"}')") | $(mb "$(metric "$2" 'atoll_store_disk_bytes{table="journal"}')") | $(mb "$RAW") ($((RAW / N)) B a key) |"
done
echo

# The donor's reads before the bootstrap.
before=$("$HTTP" --atoll "$US" --clients 16 --secs 5 --warmup 1 --keys "$N" --only atoll-get \
    --no-populate 2>&1 >/dev/null | grep -oE 'atoll-get +clients.*' | head -1)

kill -TERM "$EU_PID"
wait "$EU_PID" 2>/dev/null || true
rm -rf "${WORK:?}/eu-west-1"
t0=$(date +%s.%N)
# Not `start`: its /healthz says 503 until the bootstrap is complete.
launch eu-west-1; EU_PID=$LAST_PID
windows=()
done_() { [[ $(metric "$EU" 'atoll_bootstraps_total{outcome="complete"}') != 0 ]]; }
deadline=$((SECONDS + 900))
while ! done_; do
    (( SECONDS < deadline )) || { echo "the bootstrap did not finish within 900 s" >&2; exit 1; }
    w=$("$HTTP" --atoll "$US" --clients 16 --secs 2 --warmup 0 --keys "$N" --only atoll-get \
        --no-populate 2>&1 >/dev/null | grep -oE 'atoll-get +clients.*' | head -1 || true)
    done_ || windows+=("$w")
done
t1=$(date +%s.%N)
keys=$(metric "$EU" atoll_bootstrap_keys_total)
bytes=$(metric "$EU" atoll_bootstrap_bytes_total)
chunks=$(metric "$US" atoll_snapshot_chunks_served_total)
secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
echo "- bootstrap of eu-west-1 from us-east-1: $keys keys, $(mb "$bytes") in $secs s (from the restart on an empty data directory to complete, start-up included): $(awk -v k="$keys" -v s="$secs" 'BEGIN { printf "%.0f", k / s }') keys/s, $(awk -v b="$bytes" -v s="$secs" 'BEGIN { printf "%.1f", b / 1e6 / s }') MB/s, $chunks chunks"
echo "- reads from the donor (16 clients) before the bootstrap: $before"
echo "- the same, in 2 s windows while it streamed (the last partial window dropped):"
for w in "${windows[@]}"; do echo "  - $w"; done
wait_for "eu-west-1 to be healthy" 120 curl -sf -m 2 "http://$EU/healthz" -o /dev/null
caught_up && echo "- eu-west-1 healthy and caught up after the bootstrap"
