#!/usr/bin/env bash
# RESP front benchmark (issue 16): `redis-benchmark -t set,get,incr` against atoll's RESP port
# and against Debian's redis-server with an append-only file, fsynced per write
# (`appendfsync always`) and once a second (`appendfsync everysec`), in the same run.
#
#   bench/resp.sh [-n REQUESTS] [-c CLIENTS] [-P PIPELINE] [-d BYTES] [-r KEYSPACELEN]
#
#   -n  requests per test (default 100000)         -c  parallel connections (default 50)
#   -P  pipelined requests per connection (default 1: no pipelining)
#   -d  SET value size in bytes (default 64)       -r  random keys 0..r-1 (default 100000)
#
# Builds atoll (release) unless ATOLL_BIN is set, installs redis-server and redis-tools
# (redis-benchmark) if missing (Debian packages, as root), then, one target at a time on
# 127.0.0.1 with a fresh data dir each: redis-server with `appendonly yes` + `appendfsync
# always`, the same with `appendfsync everysec`, and one atoll region with a RESP port. The
# region's keyspaces are named after redis-benchmark's key prefixes: `key` (lww: SET, GET of
# `key:__rand_int__`) and `counter` (counter: INCR of `counter:__rand_int__`). Prints a markdown
# table (requests/s, p50, p99, ratios atoll/redis) with each target's durability; fails if any
# target answered a benchmarked command with an error. Everything is stopped and removed on exit.
# Results: docs/benchmarks.md, section "RESP front vs redis-server (redis-benchmark)".
#
# Environment:
#   CARGO_TARGET_DIR   where cargo puts build output (default: target)
#   ATOLL_BENCH_DIR    parent of the temporary data dirs (default /work/targets/benchdata; must be
#                      a real disk, not tmpfs, or fsync costs nothing)
#   ATOLL_BIN          use this atoll binary instead of building the workspace's
#   ATOLL_DESC         how to describe the atoll build in the report (default: git commit)
#   RUN_TIMEOUT_SECS   longest one redis-benchmark run may take (default 300)
#   KEEP=1             keep the data dirs and logs
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BASE=${ATOLL_BENCH_DIR:-/work/targets/benchdata}
RUN_TIMEOUT_SECS=${RUN_TIMEOUT_SECS:-300}
READY_DEADLINE_SECS=60
TESTS=set,get,incr

log() { echo "resp.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2; exit "${1:-2}"; }

REQUESTS=100000 CLIENTS=50 PIPELINE=1 DATA_BYTES=64 KEYSPACELEN=100000
ARGS="$*"
while (($#)); do
    case $1 in
        -n) REQUESTS=${2:?-n needs a value}; shift 2 ;;
        -c) CLIENTS=${2:?-c needs a value}; shift 2 ;;
        -P) PIPELINE=${2:?-P needs a value}; shift 2 ;;
        -d) DATA_BYTES=${2:?-d needs a value}; shift 2 ;;
        -r) KEYSPACELEN=${2:?-r needs a value}; shift 2 ;;
        -h|--help) usage 0 ;;
        *) log "unknown argument: $1"; usage ;;
    esac
done
for v in REQUESTS CLIENTS PIPELINE DATA_BYTES KEYSPACELEN RUN_TIMEOUT_SECS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, not '${!v}'"
done

# ---- build and install ---------------------------------------------------------------------
if [[ -z ${ATOLL_BIN:-} ]]; then
    log "building atoll (release) into $TARGET"
    cargo build --release -p atoll --bin atoll >&2
    ATOLL_BIN=$TARGET/release/atoll
fi
[[ -x $ATOLL_BIN ]] || die "atoll binary not found: $ATOLL_BIN"

need_pkgs=()
command -v redis-server >/dev/null 2>&1 || need_pkgs+=(redis-server)
command -v redis-benchmark >/dev/null 2>&1 || need_pkgs+=(redis-tools)
command -v redis-cli >/dev/null 2>&1 || need_pkgs+=(redis-tools)
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
if ((${#need_pkgs[@]})); then
    [[ $(id -u) -eq 0 ]] || die "missing ${need_pkgs[*]}; run as root or: apt-get install -y ${need_pkgs[*]}"
    log "installing ${need_pkgs[*]} (Debian packages)"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >&2
fi
REDIS_VERSION=$(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')
[[ -n $REDIS_VERSION ]] || die "cannot read the redis-server version"

# ---- data dirs, processes, cleanup -----------------------------------------------------------
mkdir -p "$BASE"
WORK=$(mktemp -d "$BASE/resp.XXXXXX")
PIDS=()   # every server this script started (stopped on exit, whatever happens)

stop() { # pid name: SIGTERM, then SIGKILL after 10 s
    local pid=$1 name=$2 i
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
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do stop "$pid" "pid $pid"; done
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

# A TCP port no socket uses (listening or connected: /proc/net/tcp*, either end), below the
# kernel's ephemeral range so that an outgoing connection does not take it before the server
# binds it (at most 100 tries).
port_used() {
    local hex
    printf -v hex '%04X' "$1"
    grep -q ":$hex " /proc/net/tcp /proc/net/tcp6 2>/dev/null
}
free_port() {
    local i p lo span
    read -r lo _ </proc/sys/net/ipv4/ip_local_port_range
    span=$((lo - 10000))
    ((span >= 1000)) || { lo=30000; span=10000; }   # odd ephemeral range: take our chances
    for ((i = 0; i < 100; i++)); do
        p=$((lo - 1 - RANDOM % span))
        port_used "$p" || { echo "$p"; return 0; }
    done
    die "no free loopback port found in 100 tries"
}

wait_pong() { # pid port name log: until the port answers PING, within the deadline
    local pid=$1 port=$2 name=$3 logf=$4 deadline=$((SECONDS + READY_DEADLINE_SECS))
    until [[ $(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null) == PONG ]]; do
        kill -0 "$pid" 2>/dev/null || { tail -20 "$logf" >&2; die "$name exited during start-up"; }
        ((SECONDS < deadline)) || { tail -20 "$logf" >&2; die "$name did not answer PING on 127.0.0.1:$port within ${READY_DEADLINE_SECS} s"; }
        sleep 0.1
    done
}

# ---- one redis-benchmark run ---------------------------------------------------------------
bench() { # name port: writes $WORK/NAME.csv (test,rps,avg,min,p50,p95,p99,max)
    local name=$1 port=$2 pid
    log "$name: redis-benchmark -t $TESTS -n $REQUESTS -c $CLIENTS -P $PIPELINE -d $DATA_BYTES -r $KEYSPACELEN"
    # In the background and waited for, so that a signal runs the cleanup (which stops it) at once.
    timeout "$RUN_TIMEOUT_SECS" redis-benchmark -h 127.0.0.1 -p "$port" -t "$TESTS" \
        -n "$REQUESTS" -c "$CLIENTS" -P "$PIPELINE" -d "$DATA_BYTES" -r "$KEYSPACELEN" --csv \
        >"$WORK/$name.csv" 2>"$WORK/$name.bench.err" &
    pid=$!
    PIDS+=("$pid")
    wait "$pid" || { cat "$WORK/$name.bench.err" >&2; die "$name: redis-benchmark failed or ran past ${RUN_TIMEOUT_SECS} s"; }
    # stderr has "WARNING: Could not fetch server CONFIG" for atoll (it serves no CONFIG).
    if [[ -s $WORK/$name.bench.err ]]; then
        log "$name: redis-benchmark said: $(tr '\n' ' ' <"$WORK/$name.bench.err")"
    fi
    local t
    for t in SET GET INCR; do
        grep -q "^\"$t\"," "$WORK/$name.csv" || { cat "$WORK/$name.csv" >&2; die "$name: no $t line in redis-benchmark's output"; }
    done
}

# ---- redis-server with an append-only file ------------------------------------------------
run_redis() { # fsync-policy
    local policy=$1 name=redis-$1 port dir pid errors
    port=$(free_port)
    dir=$WORK/$name
    mkdir -p "$dir"
    redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" --save '' \
        --appendonly yes --appendfsync "$policy" --daemonize no \
        --logfile "$dir/redis.log" >"$dir/redis.out" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_pong "$pid" "$port" "$name" "$dir/redis.log"
    [[ $(redis-cli -p "$port" config get appendfsync | tail -1) == "$policy" ]] \
        || die "$name: appendfsync is not $policy"
    [[ $(redis-cli -p "$port" config get appendonly | tail -1) == yes ]] || die "$name: appendonly is not on"
    bench "$name" "$port"
    errors=$(redis-cli -p "$port" info stats | tr -d '\r' | sed -n 's/^total_error_replies://p')
    [[ $errors == 0 ]] || die "$name: $errors error replies (redis-cli info stats)"
    stop "$pid" "$name"
}

# ---- atoll: one region, RESP port on loopback ---------------------------------------------
run_atoll() {
    local name=atoll port dir pid addr="" deadline metrics unknown bad
    port=$(free_port)
    dir=$WORK/atoll
    mkdir -p "$dir"
    cat >"$dir/atoll.toml" <<EOF
# bench/resp.sh: one region; keyspaces named after redis-benchmark's key prefixes.
[cluster]
name = "resp-bench"

[[regions]]
name = "bench"
api = "127.0.0.1:7100"          # overridden by --listen 127.0.0.1:0
resp = "127.0.0.1:$port"

[[keyspaces]]
name = "key"                    # SET / GET key:__rand_int__
policy = "lww"

[[keyspaces]]
name = "counter"                # INCR counter:__rand_int__
policy = "counter"

[resp]
default_keyspace = "key"
EOF
    "$ATOLL_BIN" region --config "$dir/atoll.toml" --region bench --data-dir "$dir/data" \
        --listen 127.0.0.1:0 >"$dir/atoll.out" 2>"$dir/atoll.err" &
    pid=$!
    PIDS+=("$pid")
    deadline=$((SECONDS + READY_DEADLINE_SECS))
    until [[ -n $addr ]]; do
        kill -0 "$pid" 2>/dev/null || { tail -20 "$dir/atoll.err" >&2; die "atoll exited during start-up"; }
        ((SECONDS < deadline)) || die "atoll did not print its address within ${READY_DEADLINE_SECS} s"
        addr=$(sed -n 's|^atoll region bench listening on http://||p' "$dir/atoll.out" | head -1)
        [[ -n $addr ]] || sleep 0.1
    done
    until curl -sf -m 2 "http://$addr/healthz" >/dev/null; do
        kill -0 "$pid" 2>/dev/null || { tail -20 "$dir/atoll.err" >&2; die "atoll exited during start-up"; }
        ((SECONDS < deadline)) || die "atoll /healthz did not answer within ${READY_DEADLINE_SECS} s"
        sleep 0.1
    done
    wait_pong "$pid" "$port" atoll "$dir/atoll.err"
    bench "$name" "$port"
    # What the RESP front answered, from its own counter: every SET/GET/INCR must be ok.
    metrics=$(curl -sf -m 5 "http://$addr/metrics") || die "atoll: cannot read /metrics"
    grep '^atoll_resp_commands_total' <<<"$metrics" >"$WORK/$name.errors" || true
    bad=$(grep -E 'command="(set|get|incr)",outcome="[^o]' "$WORK/$name.errors" || true)
    [[ -z $bad ]] || die "atoll: benchmarked commands failed: $bad"
    unknown=$(sed -n 's/^atoll_resp_commands_total{command="unknown",outcome="unknown"} //p' "$WORK/$name.errors")
    log "atoll: RESP commands by outcome: $(tr '\n' ' ' <"$WORK/$name.errors")"
    [[ -z $unknown ]] || log "atoll: $unknown unknown commands (redis-benchmark's CONFIG GET at start-up; it goes on without)"
    stop "$pid" atoll
}

# ---- the report ----------------------------------------------------------------------------
fsync_probe() { # mean latency of a 4 KiB write + O_DSYNC, 200 times, in the data dir
    local t0 t1
    t0=$(date +%s%N)
    dd if=/dev/zero of="$WORK/fsync.probe" bs=4k count=200 oflag=dsync status=none
    t1=$(date +%s%N)
    rm -f "$WORK/fsync.probe"
    echo "$(((t1 - t0) / 200000)) µs"
}
if [[ -n ${ATOLL_DESC:-} ]]; then
    :
elif [[ $ATOLL_BIN == "$TARGET/release/atoll" ]]; then
    ATOLL_DESC="workspace at $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- crates src Cargo.toml Cargo.lock 2>/dev/null || echo ' with uncommitted changes')"
else
    ATOLL_DESC="$ATOLL_BIN (workspace at $(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
fi
echo "### atoll's RESP front vs redis-server ($(date -u '+%Y-%m-%d %H:%M UTC'))"
echo
echo "- command: \`bench/resp.sh${ARGS:+ $ARGS}\`: \`redis-benchmark -t $TESTS -n $REQUESTS -c $CLIENTS -P $PIPELINE -d $DATA_BYTES -r $KEYSPACELEN --csv\`, one target at a time"
echo "- atoll: $ATOLL_DESC; redis-server $REDIS_VERSION (Debian), redis-benchmark $(redis-benchmark --version | awk '{print $2}')"
echo "- machine: nproc $(nproc), $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(free -g | awk '/^Mem:/{print $2}') GiB RAM, Linux $(uname -r)"
echo "- data dir: $(findmnt -n -o SOURCE,FSTYPE -T "$WORK" | tr -s ' '); 4 KiB O_DSYNC write before the run: $(fsync_probe)"
echo "- load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)"

run_redis always
run_redis everysec
run_atoll

echo "- load average after the run: $(cut -d' ' -f1-3 /proc/loadavg); 4 KiB O_DSYNC write after the run: $(fsync_probe)"
echo
# Latencies are redis-benchmark's, in ms, per request (with -P > 1: per pipelined batch).
awk -F, -v dir="$WORK" '
    function unq(s) { gsub(/"/, "", s); return s }
    function ratio(a, b) { return b > 0 ? sprintf("%.2f×", a / b) : "-" }
    BEGIN {
        n = split("redis-always redis-everysec atoll", names, " ")
        dur["redis-always"] = "AOF, fsync before reply"
        dur["redis-everysec"] = "AOF, fsync every second"
        dur["atoll"] = "fsync before reply (group commit)"
        for (i = 1; i <= n; i++) {
            f = dir "/" names[i] ".csv"
            while ((getline line < f) > 0) {
                split(line, c, ",")
                t = unq(c[1]); if (t == "test") continue
                rps[names[i], t] = unq(c[2]); p50[names[i], t] = unq(c[5]); p99[names[i], t] = unq(c[7])
            }
            close(f)
        }
        print "| target | durability | test | requests/s | p50 ms | p99 ms | atoll/redis-always: rps, p50, p99 | atoll/redis-everysec: rps, p50, p99 |"
        print "| --- | --- | --- | ---: | ---: | ---: | --- | --- |"
        split("SET GET INCR", tests, " ")
        for (i = 1; i <= n; i++) for (j = 1; j <= 3; j++) {
            m = names[i]; t = tests[j]; ra = "" ; re = ""
            if (m == "atoll") {
                ra = ratio(rps[m, t], rps["redis-always", t]) ", " ratio(p50[m, t], p50["redis-always", t]) ", " ratio(p99[m, t], p99["redis-always", t])
                re = ratio(rps[m, t], rps["redis-everysec", t]) ", " ratio(p50[m, t], p50["redis-everysec", t]) ", " ratio(p99[m, t], p99["redis-everysec", t])
            }
            printf "| %s | %s | %s | %.0f | %s | %s | %s | %s |\n", m, dur[m], t, rps[m, t], p50[m, t], p99[m, t], ra, re
        }
    }'
echo
echo "- durability: redis-always and atoll acknowledge a write only once it is on disk (both batch the"
echo "  fsync across concurrent writes: redis per event-loop turn, atoll by group commit); with"
echo "  redis-everysec an OS crash or power loss loses up to about a second of acknowledged writes."
echo "  Each atoll write is also a replication-log entry stamped with a hybrid logical clock."
echo "- latencies: redis-benchmark's, in ms, per request (with -P > 1: per pipelined batch); ratios"
echo "  atoll/redis: rps above 1× means atoll is faster, latency above 1× means atoll is slower."
