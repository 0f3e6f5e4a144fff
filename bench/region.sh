# Sourced by the bench scripts: starts one atoll region on a loopback port and stops it on exit.
#
#   source bench/region.sh
#   region_workdir PARENT NAME    # optional: sets WORK, a fresh directory under PARENT, and an
#                                 # EXIT trap that stops the region and removes WORK
#   start_region BIN WORKDIR      # sets ATOLL_PID and ATOLL_ADDR (ip:port), waits for /healthz
#
# The region is us-east-1 of examples/single-region.toml (one keyspace of each policy), with its
# data in WORKDIR/atoll and its output in WORKDIR/atoll.out and atoll.err. Without
# region_workdir, the caller's EXIT trap should call stop_region.

ATOLL_PID=""
ATOLL_ADDR=""

start_region() { # bin workdir
    local bin=$1 work=$2 deadline
    "$bin" region --config examples/single-region.toml --region us-east-1 \
        --data-dir "$work/atoll" --listen 127.0.0.1:0 >"$work/atoll.out" 2>"$work/atoll.err" &
    ATOLL_PID=$!
    deadline=$((SECONDS + 60))
    until [[ -n $ATOLL_ADDR ]]; do
        kill -0 "$ATOLL_PID" 2>/dev/null || { cat "$work/atoll.err" >&2; echo "atoll exited during start-up" >&2; return 1; }
        (( SECONDS < deadline )) || { echo "atoll did not print its address within 60 s" >&2; return 1; }
        ATOLL_ADDR=$(sed -n 's|^atoll region us-east-1 listening on http://||p' "$work/atoll.out" | head -1)
        [[ -n $ATOLL_ADDR ]] || sleep 0.1
    done
    until curl -sf -m 2 "http://$ATOLL_ADDR/healthz" >/dev/null; do
        (( SECONDS < deadline )) || { echo "atoll /healthz did not answer within 60 s" >&2; return 1; }
        sleep 0.1
    done
}

stop_region() {
    local i
    [[ -n $ATOLL_PID ]] || return 0
    kill -TERM "$ATOLL_PID" 2>/dev/null || return 0
    for ((i = 0; i < 100; i++)); do
        kill -0 "$ATOLL_PID" 2>/dev/null || return 0
        sleep 0.1
    done
    echo "atoll (pid $ATOLL_PID) did not stop in 10 s; killing it" >&2
    kill -KILL "$ATOLL_PID" 2>/dev/null || true
}

region_workdir() { # parent name
    mkdir -p "$1"
    WORK=$(mktemp -d "$1/$2.XXXXXX")
    trap 'rc=$?; stop_region; rm -rf "$WORK"; exit $rc' EXIT
}
