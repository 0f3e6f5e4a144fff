#!/usr/bin/env bash
# atoll link benchmark: overhead at zero delay (bulk MB/s, small round trips) and delay accuracy.
#
#   bench/link.sh [options...]     e.g. bench/link.sh --bulk-mb 256 --rtts 10000 --delays 35,110
#
# Builds and runs bench/src/bin/link.rs: an in-process atoll_link::LinkServer, a TCP echo server
# and a TCP sink on 127.0.0.1, and a client; prints markdown tables. Results: docs/benchmarks.md,
# section "atoll link: overhead and delay accuracy".
#
# Environment: CARGO_TARGET_DIR (default: target).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

echo "link.sh: building (release) into $TARGET" >&2
cargo build --release -p atoll -p atoll-bench >&2

echo "### atoll link benchmark ($(date -u '+%Y-%m-%d %H:%M UTC'))"
echo
echo "- command: \`bench/link.sh $*\`"
echo "- atoll-link: workspace at $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- crates/atoll-link 2>/dev/null || echo ' with uncommitted changes')"
echo "- machine: nproc $(nproc), $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(free -g | awk '/^Mem:/{print $2}') GiB RAM, Linux $(uname -r)"
echo "- uptime before the run: $(uptime)"
echo

"$TARGET/release/link" "$@"

echo
echo "- uptime after the run: $(uptime)"
