#!/usr/bin/env bash
# Write unavailability after kill -9 of a shard primary, tstore beside Redis
# Cluster, measured the same way on this machine:
#   from the kill to the first successful write of a key owned by the killed
#   primary, probing with one CLI write every ~20 ms (each probe is a new
#   process and connection, for both systems).
# tstore is also measured from a long-lived client: `tstore bench` writing
# (concurrency 8) while the primary of a key is killed; its longest write
# (max latency) is the longest any write waited through the failover.
# tstore: 4 nodes (`tstore demo`), a table of 8 shards x 3 copies holding
# ROWS rows of ~100 bytes; also reports how long until every shard is back at
# 3 copies (re-replication onto the survivors). Each run is done twice: once
# killing the primary of a key, once killing the node that is both the
# control plane's Raft leader and the primary of a key (a new leader must be
# elected before its coordinator can promote anyone).
# Redis: 3 masters + 3 replicas, cluster-node-timeout 1000 ms.
# RUNS runs each (default 5); prints every run, then median and max.
# Needs a release build (cargo build --release) and redis-server/redis-tools
# (installed with apt-get when missing). Every process started is stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
ROWS=${ROWS:-20000}
T=target/release/tstore
work=$(mktemp -d /tmp/tstore-failover.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  pkill -9 -f "$work" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
now_ms() { echo $(($(date +%s%N) / 1000000)); }
# Gives up (and fails the script) after LIMIT_S seconds: every wait is bounded.
LIMIT_S=${LIMIT_S:-120}
deadline() { echo $(($(now_ms) + LIMIT_S * 1000)); }
check() { # deadline, what
  if [ "$(now_ms)" -gt "$1" ]; then echo "gave up after ${LIMIT_S}s waiting for $2" >&2; exit 1; fi
}
stats() { # name, values...
  local name=$1; shift
  printf '%s\n' "$@" | sort -n | awk -v n="$name" '{a[NR]=$1} END {
    m = (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2;
    printf "%s: median %d ms, max %d ms over %d runs\n", n, m, a[NR], NR }'
}

[ -x "$T" ] || cargo build --release -q
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null
fi

python3 - "$ROWS" >"$work/rows.jsonl" <<'EOF'
import sys
for i in range(int(sys.argv[1])):
    print('{"id": %d, "payload": "%s"}' % (i, "x" * 80))
EOF

# One tstore run: $1 = run number, $2 = "primary" (kill the primary of a
# key) or "leader" (kill the node that is both the control plane's Raft
# leader and the primary of a key: the failover then waits for a new
# leader first) or "client" (kill the primary of a key while a long-lived
# `tstore bench` client writes). Appends to tstore_unavail/tstore_heal,
# leader_unavail or client_waited.
tstore_run() {
  local run=$1 mode=$2
  local d="$work/$mode$run" port=$((7900 + run * 20 + ${3:-0}))
  $T demo --dir "$d" --nodes 4 --base-port $port >"$work/demo-$mode$run.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 150); do grep -q "pids:" "$work/demo-$mode$run.log" && break; sleep 0.2; done
  A=("$T" admin --node "127.0.0.1:$port" --certs "$d/certs")
  for _ in $(seq 1 50); do "${A[@]}" create-table fo --key id --shards 8 --replicas 3 >/dev/null 2>&1 && break; sleep 0.2; done
  sleep 1
  "${A[@]}" import fo "$work/rows.jsonl" --concurrency 64 >/dev/null
  local key=7 primary leader bench_pid=
  primary=$("${A[@]}" --output json locate fo $key | python3 -c 'import json,sys; print(json.load(sys.stdin)["primary"])')
  if [ "$mode" = leader ]; then
    leader=$("${A[@]}" --output json cluster | python3 -c 'import json,sys; print(json.load(sys.stdin)["leader"])')
    for key in $(seq 0 200); do
      primary=$("${A[@]}" --output json locate fo $key | python3 -c 'import json,sys; print(json.load(sys.stdin)["primary"])')
      [ "$primary" = "$leader" ] && break
    done
    [ "$primary" = "$leader" ] || { echo "no key led by the Raft leader $leader" >&2; exit 1; }
  fi
  local pid
  pid=$(grep -o "pids:.*" "$work/demo-$mode$run.log" | tr ' ' '\n' | grep "^$primary=" | cut -d= -f2)
  # Probe through a node that survives (n4 is never a voter, so never the leader).
  probe=("$T" admin --node "127.0.0.1:$((port + 3))" --certs "$d/certs")
  [ "$primary" = n4 ] && probe=("${A[@]}")
  local start up healed dl
  if [ "$mode" = client ]; then
    # A long-lived client keeps writing; kill the primary 2 s in.
    "$T" bench --node "127.0.0.1:$((port + 3))" --certs "$d/certs" --table fo --mix write:100 \
      --concurrency 8 --keys 10000 --no-preload --ops 100000000 --max-seconds 6 --json >"$work/bench-$run.json" 2>"$work/bench-$run.err" &
    bench_pid=$!
    sleep 2
    kill -9 "$pid"
    wait "$bench_pid" || { echo "bench failed: $(cat "$work/bench-$run.err")" >&2; exit 1; }
    local waited errors
    read -r waited errors < <(python3 -c 'import json,sys; w=json.load(open(sys.argv[1]))["write"]; print(w["max_us"] // 1000, w["errors"])' "$work/bench-$run.json")
    echo "tstore run $run: killed primary $primary under a long-lived client's writes; longest write $waited ms, $errors errors"
    client_waited+=("$waited")
    kill "${pids[-1]}" 2>/dev/null || true; wait "${pids[-1]}" 2>/dev/null || true
    pkill -9 -f "$d" 2>/dev/null || true
    return
  fi
  start=$(now_ms)
  kill -9 "$pid"
  dl=$(deadline)
  until "${probe[@]}" put fo "{\"id\":$key,\"run\":$run}" >/dev/null 2>&1; do check "$dl" "a write after the kill"; sleep 0.02; done
  up=$(now_ms)
  if [ "$mode" = leader ]; then
    echo "tstore run $run: killed $primary, Raft leader and primary of key $key; writes back after $((up - start)) ms"
    leader_unavail+=($((up - start)))
  else
    dl=$(deadline)
    until check "$dl" "full replication" && "${probe[@]}" --output json describe fo 2>/dev/null |
      python3 -c 'import json,sys; sys.exit(any(h["state"] != "healthy" for h in json.load(sys.stdin)["health"]))'; do sleep 0.2; done
    healed=$(now_ms)
    echo "tstore run $run: killed primary $primary of key $key; writes back after $((up - start)) ms; 3 copies of every shard ($ROWS rows) after $((healed - start)) ms"
    tstore_unavail+=($((up - start))); tstore_heal+=($((healed - start)))
  fi
  kill "${pids[-1]}" 2>/dev/null || true; wait "${pids[-1]}" 2>/dev/null || true
  pkill -9 -f "$d" 2>/dev/null || true
}

tstore_unavail=(); tstore_heal=(); leader_unavail=(); client_waited=(); redis_unavail=()
for run in $(seq 1 "$RUNS"); do
  tstore_run "$run" primary
  tstore_run "$run" leader 5
  tstore_run "$run" client 10
done

for run in $(seq 1 "$RUNS"); do
  base=$((7100 + run * 10)); ports=(); rpids=()
  for i in 0 1 2 3 4 5; do
    p=$((base + i)); ports+=($p); mkdir -p "$work/r$run/$p"
    redis-server --port $p --cluster-enabled yes --cluster-node-timeout 1000 \
      --cluster-config-file "$work/r$run/$p/nodes.conf" --dir "$work/r$run/$p" \
      --appendonly no --save "" >"$work/r$run/$p.log" 2>&1 &
    rpids+=($!); pids+=($!)
  done
  sleep 1
  redis-cli --cluster create $(printf '127.0.0.1:%s ' "${ports[@]}") --cluster-replicas 1 --cluster-yes >/dev/null
  dl=$(deadline)
  until [ "$(redis-cli -p $base cluster info | tr -d '\r' | grep cluster_state)" = "cluster_state:ok" ]; do check "$dl" "the Redis cluster"; sleep 0.2; done
  # A replica that has not finished its first sync refuses to fail over.
  dl=$(deadline)
  for p in "${ports[@]}"; do
    until info=$(redis-cli -p "$p" info replication | tr -d '\r') &&
      { ! grep -q role:slave <<<"$info" || grep -q master_link_status:up <<<"$info"; }; do
      check "$dl" "Redis replicas in sync"; sleep 0.2
    done
  done
  sleep 1
  key=k7
  slot=$(redis-cli -p $base cluster keyslot $key | tr -d '\r')
  master=$(redis-cli -p $base cluster nodes | tr -d '\r' | awk -v s=$slot '$3 ~ /master/ {for (i=9;i<=NF;i++) {split($i,r,"-"); if (s>=r[1] && s<=(r[2]==""?r[1]:r[2])) print $2}}' | cut -d@ -f1 | cut -d: -f2)
  other=$base; [ "$master" = "$base" ] && other=$((base + 1))
  mpid=${rpids[$((master - base))]}
  redis-cli -c -p $other set $key before >/dev/null
  start=$(now_ms)
  kill -9 $mpid
  dl=$(deadline)
  until [ "$(redis-cli -c -p $other set $key run$run 2>/dev/null | tr -d '\r')" = "OK" ]; do check "$dl" "a Redis write after the kill"; sleep 0.02; done
  up=$(now_ms)
  echo "redis run $run: killed master :$master of $key; writes back after $((up - start)) ms"
  redis_unavail+=($((up - start)))
  for p in "${rpids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
done

# No spurious failover under load: 3 nodes, STEADY_S seconds (default 60)
# of `tstore bench` at full load (concurrency 64, half writes, half strong
# reads, 100 B values, 10,000 keys). Afterwards the map's event log must
# show no change made during the load, and no node may have become Raft
# leader during it.
STEADY_S=${STEADY_S:-60}
steady() {
  local d="$work/steady" port=7990
  $T demo --dir "$d" --nodes 3 --base-port $port >"$work/demo-steady.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 150); do grep -q "pids:" "$work/demo-steady.log" && break; sleep 0.2; done
  local A=("$T" admin --node "127.0.0.1:$port" --certs "$d/certs")
  for _ in $(seq 1 50); do "${A[@]}" create-table st --key id --shards 8 --replicas 3 >/dev/null 2>&1 && break; sleep 0.2; done
  sleep 3
  local before leaders_before leaders_after
  before=$("${A[@]}" --output json events | python3 -c 'import json,sys; print(json.load(sys.stdin)["map_version"])')
  leaders_before=$(cat "$d"/n*.log | grep -c "now the Raft leader" || true)
  "$T" bench --node "127.0.0.1:$port" --certs "$d/certs" --table st --mix write:50,read:50 --concurrency 64 \
    --keys 10000 --value-size 100 --ops 100000000 --max-seconds "$STEADY_S" >"$work/steady.txt"
  leaders_after=$(cat "$d"/n*.log | grep -c "now the Raft leader" || true)
  "${A[@]}" --output json events | python3 -c '
import json, sys
before = int(sys.argv[1])
new = [e for e in json.load(sys.stdin)["events"] if e["version"] > before]
for e in new:
    print("  map change during the load: %s %s (%s)" % (e["subject"], e["what"], e["why"]))
print("map changes during %s s of full load: %d" % (sys.argv[2], len(new)))
' "$before" "$STEADY_S"
  echo "Raft leader elections during the load: $((leaders_after - leaders_before))"
  grep -E "^ +(write|read)" "$work/steady.txt" | sed 's/^/  /'
  kill "${pids[-1]}" 2>/dev/null || true; wait "${pids[-1]}" 2>/dev/null || true
  pkill -9 -f "$d" 2>/dev/null || true
}
[ "$STEADY_S" -gt 0 ] && steady

echo
stats "tstore write unavailability after kill -9 of a primary" "${tstore_unavail[@]}"
stats "tstore write unavailability after kill -9 of the Raft leader that is also the primary" "${leader_unavail[@]}"
stats "tstore longest write of a long-lived client through a primary's kill -9" "${client_waited[@]}"
stats "tstore time to full replication ($ROWS rows)" "${tstore_heal[@]}"
stats "Redis Cluster write unavailability (cluster-node-timeout 1000)" "${redis_unavail[@]}"
