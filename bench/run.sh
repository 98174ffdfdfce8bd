#!/usr/bin/env bash
# fabwatch and its two peers side by side, in one run, on the peers' workload
# (../shared/bench/peers/WORKLOAD.md), at 1,000,000 and 10,000,000 rows on PostgreSQL.
#
#   bash bench/run.sh                       # both sizes, 5 repetitions each (about 25 min)
#   SIZES="kpi_1m" REPS=5 bash bench/run.sh # one size
#
# For each size, ../shared/bench/peers/run_bench.sh (started from here, unchanged) builds the data,
# starts PostgreSQL, and measures floor_pg, query-exporter, prometheus-sql-exporter and fabwatch
# (its EXT_* hook), interleaved, REPS times:
#   fabwatch collection run: bench/onscrape.py (each scrape = one steady-state sampling cycle);
#   fabwatch scrape run:     bench/fabwatch_serve.sh, i.e. `fabwatch serve` on bench/kpi_workload.yaml.
# Then bench/cycles.py times the engine's cycles alone (first sample, steady cycles, recounts),
# bench/exposition.py and the peers' exposition_bench.py compare exposition at 100,000 series,
# and bench/summary.py prints the table with ratios. Every step is bounded by `timeout`;
# only loopback addresses. Needs: the peers (see WORKLOAD.md), PostgreSQL 15, fabwatch's .venv.
# Results: $OUT (default /tmp/fabwatch-bench/<utc time>). PostgreSQL keeps running afterwards:
# `bash ../shared/bench/peers/setup_pg.sh stop` stops it.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PEERS=${PEERS:-"$(cd "$ROOT/../shared/bench/peers" && pwd)"}
SIZES=${SIZES:-"kpi_1m kpi_10000000"}
REPS=${REPS:-5}
OUT=${OUT:-/tmp/fabwatch-bench/$(date -u +%Y%m%dT%H%M%SZ)}
PY="$ROOT/.venv/bin/python"
EXT_PORT=${EXT_PORT:-19561}
EXPO_PORT=${EXPO_PORT:-19562}
mkdir -p "$OUT"
echo "command: $0 (SIZES=\"$SIZES\" REPS=$REPS) in $ROOT; out=$OUT" | tee "$OUT/command.txt"
SECONDS=0

for db in $SIZES; do
  budget=900; [[ $db == kpi_1m ]] && budget=600
  dir="$OUT/$db"
  mkdir -p "$dir"
  OUT="$dir" DB=$db REPS=$REPS BUDGET_S=$budget TARGETS="floor_pg qe_pg se_pg ext" \
    EXT_NAME=fabwatch_pg EXT_PORT=$EXT_PORT EXT_PATTERN='^fab_(kpi_value|backlog_items)\{' \
    EXT_CMD="$ROOT/bench/fabwatch_serve.sh {port} {db}" \
    EXT_ONSCRAPE_CMD="$PY $ROOT/bench/onscrape.py --port {port} --db {db} --db-log $dir/fabwatch_db.jsonl" \
    timeout $((budget + 300)) bash "$PEERS/run_bench.sh"
  for r in $(seq "$REPS"); do
    timeout 300 "$PY" "$ROOT/bench/cycles.py" --dsn "postgresql+asyncpg://postgres@127.0.0.1:55432/$db" \
      --cycles 20 --reconcile 150 --max-seconds 240 --out "$OUT/$db/cycles.r$r.json" || echo "cycles r$r failed"
  done
done

# Exposition at 100,000 series: fabwatch's render and served scrapes, prometheus-client's generate_latest.
mkdir -p "$OUT/exposition"
timeout 300 "$PY" "$ROOT/bench/exposition.py" render --series 100000 --rounds 5 --out "$OUT/exposition/render.json"
for r in $(seq "$REPS"); do
  "$PY" "$ROOT/bench/exposition.py" serve --series 100000 --port "$EXPO_PORT" --max-seconds 200 &
  pid=$!
  timeout 120 /tmp/qe/bin/python "$PEERS/bench_client.py" wait --url "http://127.0.0.1:$EXPO_PORT/metrics" \
    --pattern '^kpi_value\{' --count 100000 --timeout 110 \
    && timeout 120 /tmp/qe/bin/python "$PEERS/bench_client.py" scrape --url "http://127.0.0.1:$EXPO_PORT/metrics" \
      --pid "$pid" --n 200 --max-seconds 100 --out "$OUT/exposition/fabwatch_100k.scrape.r$r.json" >/dev/null
  kill -TERM "$pid"; wait "$pid" 2>/dev/null
done
timeout 600 /tmp/qe/bin/python "$PEERS/exposition_bench.py" --sizes 100000 --rounds "$REPS" \
  --json "$OUT/exposition/prometheus_client.json" | tee "$OUT/exposition/prometheus_client.md"

# Freshness: a new row in /metrics, `fabwatch serve` on the real clock (interval 5 s, settle 1 s).
timeout 300 "$PY" "$ROOT/bench/freshness.py" --interval 5 --settle 1 --rows "$REPS" --out "$OUT/freshness.json"

"$PY" "$ROOT/bench/summary.py" "$OUT" | tee "$OUT/summary.md"
echo "total ${SECONDS}s; results in $OUT"
