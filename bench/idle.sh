#!/usr/bin/env bash
# The idle cost of shard copies (issue 17), on a local 3-node cluster
# (`tstore demo`, release build) with no client traffic at all. Tables of
# 1,000 hash shards x 3 replicas are added one by one, so every node holds
# 0, then 1,000, then 3,000 copies (and 10,000 with TEN_K=1). At each step,
# after SETTLE seconds (default 10), it measures over WINDOW seconds
# (default 30), per node:
#   - CPU, in % of one core (utime + stime from /proc/<pid>/stat);
#   - RSS (VmRSS from /proc/<pid>/status);
#   - gossip bytes/s sent and received (`tstore_gossip_bytes_total` on the
#     node's /metrics, which the demo serves on PORT + 2000 and on).
# For every table it adds, it also prints how long `create-table` took, the
# time from `create-table` until every one of its 1,000 shards took a write
# (one key per shard, imported at once; the import is repeated while any
# row fails, for at most WRITABLE_LIMIT seconds, default 180), and the
# gossip bytes the three nodes sent from `create-table` until 2 s after
# that (the idle rate, about 2.9 KB/s per node, included).
# Every process started is stopped, and the work directory removed, on exit.
# Usage: bench/idle.sh              (TEN_K=1 WINDOW=... SETTLE=... PORT=...)
set -euo pipefail
cd "$(dirname "$0")/.."
WINDOW=${WINDOW:-30}
SETTLE=${SETTLE:-10}
WRITABLE_LIMIT=${WRITABLE_LIMIT:-180}
TEN_K=${TEN_K:-0}
PORT=${PORT:-7980}
SHARDS=1000
T=${TSTORE_BIN:-${CARGO_TARGET_DIR:-target}/release/tstore}
. bench/demo-lib.sh
demo_workdir idle

d="$work/cluster"
start_demo "$d" "$PORT" "$work/demo.log"
PIDS=$(demo_pids "$work/demo.log")
A=("$T" admin --node "127.0.0.1:$PORT" --certs "$d/certs")
M=$((PORT + 2000)) # the demo's metrics ports: PORT + 2000 and on
TICK=$(getconf CLK_TCK)

# One integer key per hash slot of a 1,000-shard table: the key's FNV-1a
# over its encoding (0x01, then the big-endian i64 with the sign bit
# flipped) modulo the shards, as `tstore_core::keys` routes it (checked
# against the values pinned by its test `hash_slots_are_stable`).
python3 - "$SHARDS" >"$work/keys.jsonl" <<'EOF'
import sys
def slot(i, of):
    h = 0xcbf29ce484222325
    for b in bytes([1]) + ((i ^ (1 << 63)) & (2**64 - 1)).to_bytes(8, "big"):
        h = ((h ^ b) * 0x100000001b3) & (2**64 - 1)
    return h % of
assert slot(1, 8) == 7 and slot(2, 8) == 2 and slot(-5, 1024) == 984, "hash differs from the node's"
shards = int(sys.argv[1])
found = {}
for i in range(1_000_000):
    found.setdefault(slot(i, shards), i)
    if len(found) == shards:
        break
assert len(found) == shards, "no key found for some slot"
for s in sorted(found):
    print('{"id":%d,"v":"x"}' % found[s])
EOF

ticks() { # pid: utime + stime, in clock ticks
  awk '{print $14 + $15}' "/proc/$1/stat"
}
rss_mib() { # pid
  awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"
}
gossip_bytes() { # metrics port, direction
  curl -sf --max-time 5 "http://127.0.0.1:$1/metrics" |
    awk -v d="$2" '$1 ~ /^tstore_gossip_bytes_total\{/ && $1 ~ "direction=\"" d "\"" {print $2}'
}

results=()
measure() { # copies per node
  echo "-- $1 copies per node: settling ${SETTLE}s, then measuring over ${WINDOW}s"
  sleep "$SETTLE"
  declare -A t0 s0 r0
  local i=0
  for p in $PIDS; do
    local id=${p%%=*} pid=${p#*=}
    t0[$id]=$(ticks "$pid")
    s0[$id]=$(gossip_bytes $((M + i)) sent)
    r0[$id]=$(gossip_bytes $((M + i)) received)
    i=$((i + 1))
  done
  sleep "$WINDOW"
  i=0
  for p in $PIDS; do
    local id=${p%%=*} pid=${p#*=}
    local t1 s1 r1
    t1=$(ticks "$pid")
    s1=$(gossip_bytes $((M + i)) sent)
    r1=$(gossip_bytes $((M + i)) received)
    i=$((i + 1))
    local line
    line=$(python3 -c 'import sys
c, i, tick, w, t0, t1, s0, s1, r0, r1, rss = sys.argv[1:]
w = float(w)
print("%6s  %4s  %6.1f%%  %8s  %10.0f  %10.0f" % (c, i, 100 * (int(t1) - int(t0)) / int(tick) / w, rss,
      (float(s1) - float(s0)) / w, (float(r1) - float(r0)) / w))' \
      "$1" "$id" "$TICK" "$WINDOW" "${t0[$id]}" "$t1" "${s0[$id]}" "$s1" "${r0[$id]}" "$r1" "$(rss_mib "$pid")")
    echo "$line"
    results+=("$line")
  done
}

gossip_sent_all() { # gossip bytes sent so far, summed over the nodes
  local i total=0
  for i in 0 1 2; do
    total=$(python3 -c "print(int($total + float('$(gossip_bytes $((M + i)) sent)')))")
  done
  echo "$total"
}

creations=()
add_table() { # name, copies per node once it exists
  local started created writable tries=0 sent0 sent1
  sent0=$(gossip_sent_all)
  started=$(date +%s.%N)
  "${A[@]}" create-table "$1" --key id --shards "$SHARDS" --replicas 3 >/dev/null
  created=$(date +%s.%N)
  local deadline=$(($(date +%s) + WRITABLE_LIMIT))
  until "${A[@]}" import "$1" "$work/keys.jsonl" --concurrency "$SHARDS" >"$work/import.log" 2>&1; do
    tries=$((tries + 1))
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "table $1: not every shard writable within ${WRITABLE_LIMIT}s; last import:" >&2
      tail -5 "$work/import.log" >&2
      exit 1
    fi
    sleep 0.1
  done
  writable=$(date +%s.%N)
  sleep 2 # the copies' last gossip of their start-up
  sent1=$(gossip_sent_all)
  local line
  line=$(python3 -c 'import sys
n, c, s, cr, w, tries, g0, g1 = sys.argv[1:]
print("%-6s %6s  %7.2f  %7.2f  %d  %9d" % (n, c, float(cr) - float(s), float(w) - float(s), int(tries), int(g1) - int(g0)))' \
    "$1" "$2" "$started" "$created" "$writable" "$tries" "$sent0" "$sent1")
  echo "$line"
  creations+=("$line")
}

measure 0
add_table t1 1000
measure 1000
add_table t2 2000
add_table t3 3000
measure 3000
if [ "$TEN_K" = 1 ]; then
  for n in $(seq 4 10); do add_table "t$n" $((n * 1000)); done
  measure 10000
fi

echo
echo "== idle cost per node (${WINDOW}s windows, no client traffic)"
echo "copies  node     cpu  rss(MiB)  gossip-tx/s  gossip-rx/s"
printf '%s\n' "${results[@]}"
echo
echo "== table of $SHARDS shards x 3: create-table, and from create-table to every shard writable"
echo "table  copies/node  create(s)  writable(s)  failed-imports  gossip-bytes"
printf '%s\n' "${creations[@]}"
