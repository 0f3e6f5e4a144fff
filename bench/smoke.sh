#!/usr/bin/env bash
# Benchmark smoke, the regression guard CI runs (scripts/test-all.sh): one atoll region, debug
# build (the one the tests use, so CI builds nothing more), 16 closed-loop HTTP clients for
# 3 s each of durable lww PUTs and GETs. It fails only on a gross regression: a cell far under
# what this build measures on a quiet 2-core machine (docs/benchmarks.md, "Regression guard",
# gives the figures and why the floors sit where they do), or any error. It is not a measurement; bench/http.sh is.
#
#   bench/smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
# Floors: well under the debug build's figures in docs/benchmarks.md (not a quarter of them: the
# same build measures 2x and more apart between runs on this class of machine).
PUT_FLOOR=${ATOLL_SMOKE_PUT_FLOOR:-400}
GET_FLOOR=${ATOLL_SMOKE_GET_FLOOR:-1000}

log() { echo "smoke.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

cargo build --locked -p atoll --bin atoll -p atoll-bench --bin http >&2
source bench/region.sh
region_workdir "$TARGET/tmp" smoke

start_region "$TARGET/debug/atoll" "$WORK" || die "the region did not start"
ADDR=$ATOLL_ADDR
log "atoll (debug) on $ADDR; floors: PUT $PUT_FLOOR/s, GET $GET_FLOOR/s at 16 clients"
"$TARGET/debug/http" --atoll "$ADDR" --atoll-pid "$ATOLL_PID" --clients 16 --secs 3 --warmup 0.5 \
    --keys 10000 --max-requests 200000 --only atoll-put,atoll-get \
    --require "atoll-put:16=$PUT_FLOOR,atoll-get:16=$GET_FLOOR" >"$WORK/report.md"
log "passed"
