#!/usr/bin/env bash
# Measures tstore against a 3-member etcd cluster (durable replicated writes)
# and a Redis Cluster of 3 masters + 3 replicas (reads and writes), all on
# loopback on this machine, in one run, ROUNDS times (default 3), and prints
# the median of each figure and the ratios:
#   tstore: 3 nodes (`tstore demo`), RF=3, `tstore bench` at concurrency CONC
#           (default 64), SIZE-byte values (default 100), OPS operations per
#           run (default 200000): writes only, strong reads only, replica
#           reads only;
#   etcd:   `etcdctl check perf --load=l` (500 clients, as many writes as it
#           can take for 60 s; the figure is the throughput it reaches);
#   Redis:  `redis-benchmark --cluster -t set,get` with CONC clients.
# Needs a release build of tstore (built when missing) and Debian's
# etcd-server, etcd-client, redis-server and redis-tools (installed with
# apt-get when missing). Every server it starts is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
OPS=${OPS:-200000}
CONC=${CONC:-64}
SIZE=${SIZE:-100}
work=$(mktemp -d /tmp/tstore-compare.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-benchmark >/dev/null || need+=(redis-tools)
if ((${#need[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
[ -x target/release/tstore ] || cargo build --release -q
T=target/release/tstore

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
field() { python3 -c 'import json,sys; r=json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"; }
wait_for() { # what, command...
  local what=$1; shift
  for _ in $(seq 1 150); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "gave up waiting for $what" >&2; return 1
}

t_w=(); t_w50=(); t_r=(); t_r50=(); t_rr=(); e_w=(); r_set=(); r_get=()
for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round of $ROUNDS"
  # tstore
  base=$((7900 + round * 10))
  $T demo --dir "$work/t$round" --base-port $base >"$work/demo$round.log" 2>&1 &
  demo=$!; pids+=($demo)
  wait_for "the tstore control plane" grep -q "control plane formed" "$work/demo$round.log"
  B=("$T" bench --node "127.0.0.1:$base" --certs "$work/t$round/certs" --ops "$OPS" --concurrency "$CONC"
    --value-size "$SIZE" --keys 10000 --no-preload --json)
  w=$("${B[@]}" --mix write:100)
  t_w+=("$(echo "$w" | field 'round(r["ops_per_sec"])')")
  t_w50+=("$(echo "$w" | field 'r["write"]["p50_us"]/1000')")
  r=$("${B[@]}" --mix read:100)
  t_r+=("$(echo "$r" | field 'round(r["ops_per_sec"])')")
  t_r50+=("$(echo "$r" | field 'r["read"]["p50_us"]/1000')")
  rr=$("${B[@]}" --mix read:100 --read replica)
  t_rr+=("$(echo "$rr" | field 'round(r["ops_per_sec"])')")
  echo "tstore: writes ${t_w[-1]} ops/s (p50 ${t_w50[-1]} ms), strong reads ${t_r[-1]} ops/s (p50 ${t_r50[-1]} ms), replica reads ${t_rr[-1]} ops/s"
  kill "$demo"; wait "$demo" 2>/dev/null || true

  # etcd
  cluster="e1=http://127.0.0.1:2380,e2=http://127.0.0.1:2382,e3=http://127.0.0.1:2384"
  epids=()
  for i in 1 2 3; do
    peer=$((2378 + 2 * i)); client=$((2377 + 2 * i))
    etcd --name "e$i" --data-dir "$work/etcd$round-$i" \
      --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
      --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
      --initial-cluster "$cluster" --initial-cluster-state new >"$work/etcd$round-$i.log" 2>&1 &
    epids+=($!); pids+=($!)
  done
  export ETCDCTL_API=3
  wait_for "etcd" etcdctl --endpoints=127.0.0.1:2379 endpoint health
  out=$(etcdctl --endpoints=127.0.0.1:2379,127.0.0.1:2381,127.0.0.1:2383 check perf --load=l 2>&1 | tr '\r' '\n' | grep -v ' / 60' || true)
  e_w+=("$(echo "$out" | grep -o 'Throughput[^0-9]*[0-9]*' | grep -o '[0-9]*$')")
  echo "etcd: writes ${e_w[-1]} ops/s"
  for p in "${epids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${epids[@]}"; do wait "$p" 2>/dev/null || true; done

  # Redis Cluster
  ports=(); rpids=()
  for i in 0 1 2 3 4 5; do
    p=$((7100 + round * 10 + i)); ports+=($p); mkdir -p "$work/redis$round-$p"
    redis-server --port "$p" --cluster-enabled yes --cluster-config-file "$work/redis$round-$p/nodes.conf" \
      --dir "$work/redis$round-$p" --appendonly no --save "" --daemonize no >"$work/redis$round-$p.log" 2>&1 &
    rpids+=($!); pids+=($!)
  done
  wait_for "redis" redis-cli -p "${ports[0]}" ping
  redis-cli --cluster create $(printf '127.0.0.1:%s ' "${ports[@]}") --cluster-replicas 1 --cluster-yes >/dev/null
  wait_for "the Redis cluster" bash -c "redis-cli -p ${ports[0]} cluster info | grep -q cluster_state:ok"
  sleep 1
  out=$(redis-benchmark --cluster -p "${ports[0]}" -t set,get -n "$OPS" -c "$CONC" -d "$SIZE" -q 2>/dev/null | tr '\r' '\n')
  r_set+=("$(echo "$out" | grep -o 'SET: [0-9.]* requests' | grep -o '[0-9.]*' | cut -d. -f1)")
  r_get+=("$(echo "$out" | grep -o 'GET: [0-9.]* requests' | grep -o '[0-9.]*' | cut -d. -f1)")
  echo "redis: SET ${r_set[-1]} ops/s, GET ${r_get[-1]} ops/s"
  for p in "${rpids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${rpids[@]}"; do wait "$p" 2>/dev/null || true; done
done

tw=$(median "${t_w[@]}"); tr=$(median "${t_r[@]}"); trr=$(median "${t_rr[@]}")
ew=$(median "${e_w[@]}"); rs=$(median "${r_set[@]}"); rg=$(median "${r_get[@]}")
echo
echo "== medians over $ROUNDS rounds (concurrency $CONC, $SIZE-byte values, $OPS ops per tstore/Redis run)"
echo "tstore durable replicated writes: $tw ops/s (p50 $(median "${t_w50[@]}") ms)"
echo "etcd durable replicated writes:   $ew ops/s"
echo "tstore strong reads:              $tr ops/s (p50 $(median "${t_r50[@]}") ms)"
echo "tstore replica reads:             $trr ops/s"
echo "Redis Cluster GET:                $rg ops/s; SET (not durable) $rs ops/s"
awk -v a="$tw" -v b="$ew" 'BEGIN { printf "writes: tstore / etcd = %.2f\n", a / b }'
awk -v a="$rg" -v b="$tr" -v c="$trr" 'BEGIN { printf "reads: Redis GET / tstore strong = %.2f, / tstore replica = %.2f\n", a / b, a / c }'
