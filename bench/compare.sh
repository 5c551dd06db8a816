#!/usr/bin/env bash
# Measures tstore against a 3-member etcd cluster (durable replicated writes)
# and a Redis Cluster of 3 masters + 3 replicas (reads), all on loopback on
# this machine, in one run. Needs: a release build of tstore
# (cargo build --release), and Debian's etcd-server, etcd-client, redis-server
# and redis-tools (the script installs them with apt-get when missing).
# Prints each tool's own report. Every server it starts is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
OPS=${OPS:-40000}
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

echo "== tstore: 3 nodes, RF=3, concurrency $CONC, $SIZE-byte values"
target/release/tstore demo --dir "$work/tstore" --base-port 7901 >"$work/demo.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do grep -q "control plane formed" "$work/demo.log" && break; sleep 0.2; done
target/release/tstore bench --node 127.0.0.1:7901 --certs "$work/tstore/certs" --ops "$OPS" \
  --concurrency "$CONC" --value-size "$SIZE" --keys 10000 --mix write:100 --no-preload
target/release/tstore bench --node 127.0.0.1:7901 --certs "$work/tstore/certs" --ops "$OPS" \
  --concurrency "$CONC" --value-size "$SIZE" --keys 10000 --mix read:100 --no-preload
target/release/tstore bench --node 127.0.0.1:7901 --certs "$work/tstore/certs" --ops "$OPS" \
  --concurrency "$CONC" --value-size "$SIZE" --keys 10000 --mix read:100 --no-preload --read replica
echo "== tstore, every request sent to one node that routes it (one more hop)"
target/release/tstore bench --node 127.0.0.1:7901 --certs "$work/tstore/certs" --ops "$OPS" \
  --concurrency "$CONC" --value-size "$SIZE" --keys 10000 --mix write:50,read:50 --no-preload --through-node

echo "== etcd: 3 members, durable writes (etcdctl check perf --load=xl: as many writes as it takes, 1000 clients)"
cluster="e1=http://127.0.0.1:2380,e2=http://127.0.0.1:2382,e3=http://127.0.0.1:2384"
for i in 1 2 3; do
  peer=$((2378 + 2 * i)); client=$((2377 + 2 * i))
  etcd --name "e$i" --data-dir "$work/etcd$i" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
    --initial-cluster "$cluster" --initial-cluster-state new >"$work/etcd$i.log" 2>&1 &
  pids+=($!)
done
sleep 3
ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:2379,127.0.0.1:2381,127.0.0.1:2383 check perf --load=xl 2>&1 | tr '\r' '\n' | grep -v ' / 60' || true

echo "== Redis Cluster: 3 masters + 3 replicas, GET/SET, $CONC clients, $SIZE-byte values"
ports=(7001 7002 7003 7004 7005 7006)
for p in "${ports[@]}"; do
  mkdir -p "$work/redis$p"
  redis-server --port "$p" --cluster-enabled yes --cluster-config-file "$work/redis$p/nodes.conf" \
    --dir "$work/redis$p" --appendonly no --save "" --daemonize no >"$work/redis$p.log" 2>&1 &
  pids+=($!)
done
sleep 1
redis-cli --cluster create $(printf '127.0.0.1:%s ' "${ports[@]}") --cluster-replicas 1 --cluster-yes >/dev/null
sleep 2
redis-benchmark --cluster -p 7001 -t set,get -n "$OPS" -c "$CONC" -d "$SIZE" -q
