#!/usr/bin/env bash
# The cost of the metrics endpoint on write throughput: on a local 3-node
# cluster (`tstore demo`, every node with its HTTP listener), ROUNDS rounds
# (default 3) of `tstore bench` (OPS durable writes, default 30,000, at
# concurrency 64), each round once without and once with a scraper that
# reads every node's /metrics every second (the order alternates between
# rounds). Prints each run's ops/s and the medians.
# Needs a release build (built when missing). Every process started is
# stopped, and the work directory removed, on exit.
# Usage: bench/metrics-cost.sh       (ROUNDS=... OPS=... to change)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
OPS=${OPS:-30000}
PORT=${PORT:-7960}
T=${TSTORE_BIN:-target/release/tstore}
scraper_pid=
cleanup_more() { [ -n "$scraper_pid" ] && kill "$scraper_pid" 2>/dev/null || true; }
. bench/demo-lib.sh
demo_workdir metrics-cost

d="$work/cluster"
start_demo "$d" "$PORT" "$work/demo.log"
M=$((PORT + 2000))   # the demo's metrics ports: PORT + 2000 and on
B=("$T" bench --node "127.0.0.1:$PORT" --certs "$d/certs" --table cost --shards 8 --replicas 3
   --ops "$OPS" --concurrency 64 --value-size 100 --mix write:100 --json)

scrape_forever() {
  while true; do
    for i in 0 1 2; do curl -sf "http://127.0.0.1:$((M + i))/metrics" >/dev/null || true; done
    sleep 1
  done
}
run() { "${B[@]}" | python3 -c 'import json,sys; print("%.0f" % json.load(sys.stdin)["ops_per_sec"])'; }

curl -sf "http://127.0.0.1:$M/metrics" | grep -c '^tstore_' | sed 's/^/samples per scrape: /'
run >/dev/null   # creates and warms the table
without=() with=()
for r in $(seq 1 "$ROUNDS"); do
  for mode in $( [ $((r % 2)) = 1 ] && echo "off on" || echo "on off"); do
    if [ "$mode" = on ]; then
      scrape_forever & scraper_pid=$!
      v=$(run); with+=("$v")
      kill "$scraper_pid"; wait "$scraper_pid" 2>/dev/null || true; scraper_pid=
    else
      v=$(run); without+=("$v")
    fi
    echo "round $r, scraper $mode: $v ops/s"
  done
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mw=$(median "${without[@]}"); mo=$(median "${with[@]}")
echo "median without a scraper: $mw ops/s; with: $mo ops/s; cost: $(python3 -c "print('%.1f%%' % (100 * (1 - $mo / $mw)))")"
