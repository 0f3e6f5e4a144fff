#!/usr/bin/env bash
# Runs every test atoll has, on a fresh machine: installs what the tests need, then
# formatting, lints, unit/property/simulation tests and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== toolchain: $(cargo --version)"
# A fresh checkout gains nothing from incremental compilation, and its files cost gigabytes of
# disk (set CARGO_INCREMENTAL=1 to keep it when running this repeatedly on one checkout).
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
# Debian packages some tests use (only installed when missing; needs root, as in CI).
need_pkgs=()
command -v promtool >/dev/null 2>&1 || need_pkgs+=(prometheus)
# curl: the benchmark smoke (bench/smoke.sh) waits for the region's /healthz with it.
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
# Headless Chromium for the drill report's screenshot test (crates/atoll-drill/tests/report.rs)
# and the global view's dashboard test (tests/e2e/global_view.rs); promtool also checks the Grafana
# dashboard's expressions (tests/e2e/grafana.rs).
command -v chromium >/dev/null 2>&1 || [ -n "${ATOLL_CHROMIUM:-}" ] || need_pkgs+=(chromium)
# redis-cli: the RESP front's end-to-end test (tests/e2e/resp.rs) and the demo's printed commands.
command -v redis-cli >/dev/null 2>&1 || need_pkgs+=(redis-tools)
# python3 and pip: redis-py (below) for the same test.
command -v python3 >/dev/null 2>&1 || need_pkgs+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need_pkgs+=(python3-pip)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}"
  else
    echo "missing packages ${need_pkgs[*]} and not root: install them first" >&2
    exit 1
  fi
fi

# redis-py (PyPI): the RESP front's end-to-end test runs a script with a Redis client library.
if ! python3 -c 'import redis' >/dev/null 2>&1; then
  python3 -m pip install --quiet redis || python3 -m pip install --quiet --break-system-packages redis
fi

echo "== promtool: alert rules"
promtool check rules deploy/prometheus/atoll-rules.yml
(cd deploy/prometheus && promtool test rules atoll-rules.test.yml)

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== benchmark smoke (regression guard: fails only on a gross slowdown)"
bench/smoke.sh
echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  # nextest does not run doctests: run them first, so the last line is nextest's summary
  cargo test --workspace --locked --doc
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
