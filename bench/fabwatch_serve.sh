#!/usr/bin/env bash
# `fabwatch serve` on the peers' workload, with a fresh state file, for run_bench.sh's EXT_CMD:
#   bench/fabwatch_serve.sh PORT DB [INTERVAL]
# The clock starts at the workload's fixed NOW (make_db.py) and runs on from there.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
state=$(mktemp -d /tmp/fabwatch-bench-state.XXXXXX)
exec env FABWATCH_STATE="$state/state.db" FABWATCH_INTERVAL="${3:-1h}" FABWATCH_LOG_LEVEL=warning \
  FABWATCH_BENCH_DSN="postgresql+asyncpg://postgres@127.0.0.1:${PGPORT:-55432}/$2" \
  "$ROOT/.venv/bin/fabwatch" serve -c "$ROOT/bench/kpi_workload.yaml" --listen "127.0.0.1:$1" \
  --clock-start 1767225600
