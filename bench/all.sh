#!/usr/bin/env bash
# Re-runs every benchmark whose tables are in docs/benchmarks.md, one after another, at the
# commit checked out, each with the command its section names. One log per benchmark goes to
# OUT (default /work/targets/bench-all/<commit>); the section of docs/benchmarks.md is then
# written from those logs. Nothing else should run on the machine meanwhile: every figure is
# CPU- or disk-bound on 2 cores.
#
#   bench/all.sh [NAME...]          e.g. bench/all.sh http memory    (default: all but soak)
#
# Names, in the order they run: smoke storage http profile memory bootstrap failover replication
# link strong geo session watch resp promotion soak. `profile` records a perf profile of the
# region under the HTTP generator's 16-client PUT and GET windows (needs perf). `soak` runs
# only when named (30 minutes; SOAK_ARGS passes options, e.g. "--minutes 10").
#
# Environment: CARGO_TARGET_DIR (default target), ATOLL_BENCH_DIR (data dirs, a real disk),
# OUT (where the logs go).
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
COMMIT=$(git rev-parse --short HEAD)
DIRTY=$(git status --porcelain --untracked-files=no | grep -v '^ M docs/' | head -1 || true)
OUT=${OUT:-/work/targets/bench-all/$COMMIT}
mkdir -p "$OUT"
log() { echo "all.sh: $*" >&2; }
[[ -n $DIRTY ]] && log "warning: the working tree has uncommitted changes outside docs/; the figures are not those of $COMMIT"

log "building the release binaries into $CARGO_TARGET_DIR"
cargo build --release --locked -p atoll -p atoll-bench >&2 || exit 1
export ATOLL_BIN=$CARGO_TARGET_DIR/release/atoll

# profile: perf of the region during the generator's 16-client windows, PUT then GET.
profile() {
    command -v perf >/dev/null || { log "perf is not installed (apt-get install linux-perf)"; return 1; }
    local op ready
    for op in atoll-put atoll-get; do
        # the measured window starts after the preload (a GET run writes its keys first) and the
        # generator's 1 s warm-up
        ready="scenarios:"; [[ $op == atoll-get ]] && ready="populate "
        bench/http.sh --clients 16 --secs 8 --only "$op" 2>"$OUT/profile-$op.err" &
        local runner=$! i
        for i in $(seq 1 1800); do
            grep -q "$ready" "$OUT/profile-$op.err" 2>/dev/null && break
            sleep 0.1
        done
        local pid
        pid=$(pgrep -n -x atoll || true)
        [[ -z $pid ]] && { log "no atoll process for $op"; wait $runner; return 1; }
        sleep 1.5
        perf record -F 999 -e cpu-clock -g -p "$pid" -o "$OUT/perf-$op.data" -- sleep 5 >/dev/null 2>&1
        wait $runner
        echo "## $op, 16 clients: generator"
        grep "clients" "$OUT/profile-$op.err" | tail -1
        echo "## $op, 16 clients: threads"
        perf report -i "$OUT/perf-$op.data" --no-children --sort comm --stdio -g none 2>/dev/null | grep -E '^ +[0-9]' | head -12
        echo "## $op, 16 clients: symbols"
        perf report -i "$OUT/perf-$op.data" --no-children --sort comm,dso,symbol --stdio -g none 2>/dev/null | grep -E '^ +[0-9]' | head -60
    done
}

run() {
    local name=$1; shift
    log "== $name: $* ($(date -u +%H:%M:%S) UTC)"
    {
        echo "- command: \`$*\`"
        echo "- commit: $COMMIT; started $(date -u '+%Y-%m-%d %H:%M:%S') UTC; $(nproc) cores; load: $(cut -d' ' -f1-3 /proc/loadavg)"
    } >"$OUT/$name.log"
    local start=$SECONDS
    "$@" >>"$OUT/$name.log" 2>"$OUT/$name.err"
    local rc=$?
    echo "- exit $rc after $((SECONDS - start)) s; load after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/$name.log"
    log "   $name: exit $rc in $((SECONDS - start)) s"
}

step() {
    case $1 in
        storage) run storage "$CARGO_TARGET_DIR/release/storage" ;;
        # the regression guard's debug build, the one scripts/test-all.sh builds into target/
        smoke) run smoke env CARGO_TARGET_DIR="$ROOT/target" bench/smoke.sh ;;
        http) run http bench/http.sh --clients 1,16,64 --secs 5 ;;
        profile) run profile profile ;;
        memory) run memory bench/memory.sh 1000000 ;;
        bootstrap) run bootstrap bench/bootstrap.sh 1000000 30 ;;
        failover) run failover bench/failover.sh ;;
        replication) run replication env PERF=1 bench/replication.sh --all-clients 4,16,64 --converge-deadline 300 ;;
        link) run link bench/link.sh ;;
        strong) run strong bench/strong.sh --writes 100 ;;
        geo) run geo bench/geo.sh --ops 200 ;;
        session) run session bench/session.sh --ops 200 ;;
        watch) run watch bench/watch.sh ;;
        resp) run resp bench/resp.sh; run resp-p16 bench/resp.sh -P 16 ;;
        promotion) run promotion bench/promotion.sh --reps 2 ;;
        # shellcheck disable=SC2086
        soak) run soak bench/soak.sh ${SOAK_ARGS:-} ;;
        *) log "unknown benchmark $1"; return 1 ;;
    esac
}

if [[ $# -eq 0 ]]; then
    set -- smoke storage http profile memory bootstrap failover replication link strong geo session watch resp promotion
fi
for name in "$@"; do step "$name"; done
log "logs in $OUT"
