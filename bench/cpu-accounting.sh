#!/usr/bin/env bash
# CPU per request of every process in each variant of one benchmark measurement (BENCHMARKS.md,
# "Where the time goes now"). Runs one 14 s round of OP (list or cancel) at concurrency 8 on
# 1 000 rows in PostgreSQL, samples utime+stime of the service, the no-op, the load generator,
# pgbench and every postgres process over 6 s in the middle of each variant, and prints the
# cores each used and how busy each core was; divide by the req/s printed below them for CPU
# per request.
#
#   [LAYOUT=spread] [SIZE=1000000] bench/cpu-accounting.sh [OP] [SERVICE_BIN]
#
# Needs a release build (cargo build --release --bins --examples), PostgreSQL at
# TEST_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test), and no other harness
# running (they share the invitations_bench database).
set -euo pipefail
op=${1:-list}
bin=${2:-target/release/invitations}
bench=${BENCH:-target/release/examples/bench}
url=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
out=$(mktemp)
extra=()
[ "$op" = cancel ] && extra=(--cancels 60000)
"$bench" --full --store postgres --layouts "${LAYOUT:-single}" --sizes "${SIZE:-1000}" --ops "$op" --conc 8 --runs 1 \
  --secs 14 "${extra[@]}" --pg-url "$url" --server-bin "$bin" \
  --out "$out.json" --chart "$out.svg" >"$out" 2>&1 &
harness=$!

ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
pg_ticks() {
  local total=0 pid
  for pid in $(pgrep -x postgres); do total=$((total + $(ticks "$pid"))); done
  echo "$total"
}
# Busy (not idle, not iowait) ticks of each core, one line per core in core order.
core_ticks() { awk '/^cpu[0-9]/ {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
hz=$(getconf CLK_TCK)
sample() {
  local label=$1 pid
  shift
  declare -A before
  for pid in "$@"; do before[$pid]=$(ticks "$pid"); done
  local pg_before_ticks core_before core_after
  pg_before_ticks=$(pg_ticks)
  mapfile -t core_before < <(core_ticks)
  sleep 6
  mapfile -t core_after < <(core_ticks)
  local line="$label:"
  for pid in "$@"; do
    line+=" $(cat "/proc/$pid/comm" 2>/dev/null || echo gone)[$pid]=$(echo "scale=2; ($(ticks "$pid") - ${before[$pid]}) / ($hz * 6)" | bc) cores"
  done
  line+=" postgres=$(echo "scale=2; ($(pg_ticks) - $pg_before_ticks) / ($hz * 6)" | bc) cores"
  # How busy each core was: where the server is pinned, is it the one that waits?
  local core
  for core in "${!core_before[@]}"; do
    line+=" cpu$core=$(echo "scale=2; (${core_after[$core]} - ${core_before[$core]}) / ($hz * 6)" | bc)"
  done
  echo "$line"
}
wait_for() { until grep -q "$1" "$out"; do sleep 0.2; done; }

if [ "$op" = cancel ]; then wait_for "added"; else wait_for "seeded"; fi
sleep 4
sample service "$(pgrep -f "$(basename "$bin") serve")" "$harness"
wait_for "service   c=8"
sleep 3
sample transport "$(pgrep -f serve-noop)" "$harness"
if [ "$op" = list ]; then
  wait_for "transport c=8"
  sleep 3
  sample database "$(pgrep -x pgbench)"
fi
wait "$harness" || true
grep " c=8 " "$out"
rm -f "$out" "$out.json" "$out.svg"
