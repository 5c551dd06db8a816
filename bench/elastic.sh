#!/usr/bin/env bash
# Elastic tables, measured from outside: a local 4-node cluster (`tstore
# demo`) whose nodes split a shard over SPLIT_BYTES (default 16 MiB) and look
# at shard sizes every second. `tstore bench` writes a table that starts
# with 1 shard x 2 copies (writes only, closed loop, concurrency 64, 1 KB
# values, KEYS distinct keys: default 100,000, about 100 MB of rows) for
# SECS seconds (default 120). Prints, for every INTERVAL seconds (default
# 10): the ops/s, the slowest write acknowledged in it, and the table's
# shard count and how many nodes lead a shard at its end; then the median
# ops/s of the first and of the last three intervals, their ratio, and the
# slowest write of the run (the longest pause a split caused).
# Needs a release build (built when missing). Every process started is
# stopped, and the work directory removed, on exit.
# Usage: bench/elastic.sh            (SPLIT_BYTES=... KEYS=... SECS=... INTERVAL=...)
set -euo pipefail
cd "$(dirname "$0")/.."
SPLIT_BYTES=${SPLIT_BYTES:-16777216}
KEYS=${KEYS:-100000}
SECS=${SECS:-120}
INTERVAL=${INTERVAL:-10}
PORT=${PORT:-7990}
T=${TSTORE_BIN:-target/release/tstore}
watcher=
cleanup_more() { [ -n "$watcher" ] && kill "$watcher" 2>/dev/null || true; }
. bench/demo-lib.sh
demo_workdir elastic

d="$work/cluster"
$T demo --dir "$d" --nodes 4 --base-port "$PORT" -- \
  --split-size-bytes "$SPLIT_BYTES" --min-split-bytes $((SPLIT_BYTES / 4)) \
  --split-load-ops 0 --elastic-check-ms 1000 >"$work/demo.log" 2>&1 &
demo_pid=$!
for _ in $(seq 1 150); do grep -q "pids:" "$work/demo.log" && break; sleep 0.2; done
grep -q "pids:" "$work/demo.log" || { echo "the demo cluster did not start" >&2; cat "$work/demo.log" >&2; exit 1; }
A=("$T" admin --node "127.0.0.1:$PORT" --certs "$d/certs")
# Every node registered, so that the table's copies may go anywhere.
for _ in $(seq 1 100); do
  n=$("${A[@]}" --output json members | python3 -c 'import json,sys; print(sum(1 for m in json.load(sys.stdin) if m["status"] == "live"))' 2>/dev/null || echo 0)
  [ "$n" = 4 ] && break; sleep 0.2
done
for _ in $(seq 1 50); do "${A[@]}" create-table el --key id --shards 1 --replicas 2 >/dev/null 2>&1 && break; sleep 0.2; done
sleep 1

# The table's shape once a second: "unix_ms shards leaders".
(
  while true; do
    "${A[@]}" --output json describe el 2>/dev/null | python3 -c '
import json, sys, time
t = json.load(sys.stdin)
t = t.get("table", t)
shards = t["shards"]
print(int(time.time() * 1000), len(shards), len({s["replicas"]["primary"] for s in shards}))
' 2>/dev/null || true
    sleep 1
  done
) >"$work/shape.txt" &
watcher=$!

echo "== 1 shard x 2 copies on 4 nodes, split over $SPLIT_BYTES B; writing $KEYS keys of 1 KB for $SECS s"
started=$(($(date +%s%N) / 1000000))
"$T" bench --node "127.0.0.1:$PORT" --certs "$d/certs" --table el --no-preload \
  --keys "$KEYS" --value-size 1000 --mix write:100 --concurrency 64 --ops 1000000000 \
  --max-seconds "$SECS" --interval-secs "$INTERVAL" --json >"$work/bench.json"
kill "$watcher" 2>/dev/null || true; watcher=

python3 - "$work/bench.json" "$work/shape.txt" "$started" <<'EOF'
import json, statistics, sys
report = json.load(open(sys.argv[1]))
shape = [tuple(map(int, l.split())) for l in open(sys.argv[2]) if len(l.split()) == 3]
start = int(sys.argv[3])
def shape_at(ms):
    seen = [s for s in shape if s[0] - start <= ms]
    return seen[-1][1:] if seen else (1, 1)
print(f"{'at s':>6} {'ops/s':>9} {'slowest write ms':>17} {'shards':>7} {'leaders':>8}")
rates = []
for i in report["intervals"]:
    shards, leaders = shape_at(i["at_secs"] * 1000)
    rates.append(i["ops_per_sec"])
    print(f"{i['at_secs']:>6.0f} {i['ops_per_sec']:>9.0f} {i['write_max_ms']:>17.1f} {shards:>7} {leaders:>8}")
full = rates[:-1] if len(rates) > 4 else rates  # the last interval is partial
first, last = full[0], statistics.median(full[-3:])
print(f"first interval {first:.0f} ops/s; median of the last three {last:.0f} ops/s: x{last / max(first, 1):.2f}")
w = report["write"]
print(f"writes: {w['count']} ok, {w['errors']} errors; p50 {w['p50_us']/1000:.1f} ms, p99 {w['p99_us']/1000:.1f} ms, slowest {w['max_us']/1000:.1f} ms")
if report.get("first_error"):
    print(f"first error: {report['first_error']}")
EOF
echo "== split events"
"${A[@]}" events | grep -E "split" | tail -20 || true
