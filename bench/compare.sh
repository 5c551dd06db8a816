#!/usr/bin/env bash
# Measures tstore against a 3-member etcd cluster (durable replicated writes,
# linearizable and serializable reads) and a Redis Cluster of 3 masters + 3
# replicas (reads and writes), all on loopback on this machine, in one run,
# ROUNDS times (default 3, the systems interleaved within each round), and
# prints the median and range (min-max) of each figure and the ratios.
# Every system gets the same closed-loop load: CONC requests in flight
# (default 64), each client sending its next request only once the previous
# one answered, SIZE-byte values (default 100), keys drawn uniformly from
# KEYS keys (default 10000), OPS operations per run (default 200000):
#   tstore: 3 nodes (`tstore demo`), RF=3, `tstore bench`: writes only,
#           strong reads only, replica reads only;
#   etcd:   3 members, bench/etcd-load: puts, linearizable gets,
#           serializable gets;
#   Redis:  `redis-benchmark --cluster -t set` then `-t get`, CONC clients,
#           `-r KEYS` (in cluster mode it draws from KEYS keys per master,
#           each master's keys tagged to its own slots: 3 x KEYS in all).
# Reads follow the write run over the same keys (no separate preload), for
# every system alike. Beside each throughput, the servers' CPU seconds per
# 1,000 operations: utime+stime of every server process of the cluster
# (/proc/<pid>/stat) before and after the run, summed; the load generator's
# own CPU is not counted.
# Needs a release build of tstore (TSTORE, default target/release/tstore,
# built when missing) and of bench/etcd-load (ETCD_LOAD, built when missing;
# it needs protoc), and Debian's etcd-server, etcd-client, redis-server,
# redis-tools and protobuf-compiler (installed with apt-get when missing).
# Every server it starts is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
OPS=${OPS:-200000}
CONC=${CONC:-64}
SIZE=${SIZE:-100}
KEYS=${KEYS:-10000}
T=${TSTORE:-target/release/tstore}
EL=${ETCD_LOAD:-target/etcd-load/release/etcd-load}
HZ=$(getconf CLK_TCK)
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
[ -x "$EL" ] || command -v protoc >/dev/null || need+=(protobuf-compiler)
if ((${#need[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
[ -x "$T" ] || cargo build --release -q
[ -x "$EL" ] || CARGO_TARGET_DIR=target/etcd-load cargo build --release -q --manifest-path bench/etcd-load/Cargo.toml

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
range() { printf '%s\n' "$@" | sort -g | awk 'NR==1 {lo=$1} {hi=$1} END {print lo "-" hi}'; }
field() { python3 -c 'import json,sys; r=json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"; }
wait_for() { # what, command...
  local what=$1; shift
  for _ in $(seq 1 150); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "gave up waiting for $what" >&2; return 1
}
# CPU clock ticks (utime + stime) used so far by the given processes, summed.
# Fields 14 and 15 of /proc/<pid>/stat; the comm field may hold spaces, so
# count from after its closing parenthesis (field 3 is then the first).
ticks() {
  local sum=0 p t
  for p in "$@"; do
    t=$(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')
    sum=$((sum + t))
  done
  echo "$sum"
}
# Server CPU seconds per 1,000 operations: ticks before, ticks after, ops.
cpu_per_k() { awk -v a="$1" -v b="$2" -v n="$3" -v hz="$HZ" 'BEGIN { printf "%.3f", (b - a) / hz / (n / 1000) }'; }

# Results, one array per figure: ops/s (_t), p50 ms (_p), CPU s per 1,000 ops (_c).
for s in tw tr trr ew er es rs rg; do eval "${s}_t=() ${s}_p=() ${s}_c=()"; done
record() { # figure, ops/s, p50 ms, cpu s/1k
  eval "$1_t+=(\"\$2\") $1_p+=(\"\$3\") $1_c+=(\"\$4\")"
}

# tstore bench with the shared load; prints "ops/s p50_ms cpu_per_k".
tstore_run() { # extra bench arguments...
  local a b out kind
  a=$(ticks "${TPIDS[@]}")
  out=$("$T" bench --node "127.0.0.1:$base" --certs "$work/t$round/certs" --ops "$OPS" --concurrency "$CONC" \
    --value-size "$SIZE" --keys "$KEYS" --no-preload --json "$@")
  b=$(ticks "${TPIDS[@]}")
  case "$*" in *write:100*) kind=write ;; *) kind=read ;; esac
  echo "$(echo "$out" | field 'round(r["ops_per_sec"])') $(echo "$out" | field "r['$kind']['p50_us']/1000") $(cpu_per_k "$a" "$b" "$(echo "$out" | field "r['$kind']['count']")")"
  local errs; errs=$(echo "$out" | field "r['$kind']['errors']")
  [ "$errs" = 0 ] || echo "tstore bench $*: $errs errors" >&2
}

# etcd-load with the shared load; prints "ops/s p50_ms cpu_per_k".
etcd_run() { # mode
  local a b out
  a=$(ticks "${epids[@]}")
  out=$("$EL" --endpoints 127.0.0.1:2379,127.0.0.1:2381,127.0.0.1:2383 --concurrency "$CONC" --keys "$KEYS" \
    --value-size "$SIZE" --ops "$OPS" --mode "$1" --no-preload --json)
  b=$(ticks "${epids[@]}")
  echo "$(echo "$out" | field 'round(r["ops_per_sec"])') $(echo "$out" | field 'r["p50_ms"]') $(cpu_per_k "$a" "$b" "$(echo "$out" | field 'r["count"]')")"
  local errs; errs=$(echo "$out" | field 'r["errors"]')
  [ "$errs" = 0 ] || echo "etcd-load --mode $1: $errs errors" >&2
}

# redis-benchmark with the shared load; prints "ops/s p50_ms cpu_per_k".
redis_run() { # test (set or get)
  local a b out t
  a=$(ticks "${rpids[@]}")
  out=$(redis-benchmark --cluster -p "${ports[0]}" -t "$1" -n "$OPS" -c "$CONC" -d "$SIZE" -r "$KEYS" --csv 2>/dev/null | tr '\r' '\n' | grep -i "^\"$1\"" | tail -1)
  b=$(ticks "${rpids[@]}")
  # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms",...
  t=$(echo "$out" | tr -d '"' | cut -d, -f2 | cut -d. -f1)
  echo "$t $(echo "$out" | tr -d '"' | cut -d, -f5) $(cpu_per_k "$a" "$b" "$OPS")"
}

show() { # label, "ops/s p50 cpu"
  set -- "$1" $2
  echo "$1 $2 ops/s, p50 $3 ms, server CPU $4 s per 1,000 ops"
}

for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round of $ROUNDS"
  # tstore
  base=$((7900 + round * 10))
  $T demo --dir "$work/t$round" --base-port $base >"$work/demo$round.log" 2>&1 &
  demo=$!; pids+=($demo)
  wait_for "the tstore control plane" grep -q "control plane formed" "$work/demo$round.log"
  wait_for "the tstore node pids" grep -q "pids:" "$work/demo$round.log"
  mapfile -t TPIDS < <(grep -o "pids:.*" "$work/demo$round.log" | tr ' ' '\n' | grep '=' | cut -d= -f2)
  r=$(tstore_run --mix write:100); record tw $r; show "tstore writes:" "$r"
  r=$(tstore_run --mix read:100); record tr $r; show "tstore strong reads:" "$r"
  r=$(tstore_run --mix read:100 --read replica); record trr $r; show "tstore replica reads:" "$r"
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
  r=$(etcd_run put); record ew $r; show "etcd puts:" "$r"
  r=$(etcd_run get); record er $r; show "etcd linearizable gets:" "$r"
  r=$(etcd_run get-serializable); record es $r; show "etcd serializable gets:" "$r"
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
  r=$(redis_run set); record rs $r; show "Redis SET (not durable):" "$r"
  r=$(redis_run get); record rg $r; show "Redis GET:" "$r"
  for p in "${rpids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${rpids[@]}"; do wait "$p" 2>/dev/null || true; done
done

# Median and range of one figure: prints "median|min-max" for ops/s, p50, CPU.
line() { # label, figure
  local t="$2_t[@]" p="$2_p[@]" c="$2_c[@]"
  printf '%-34s %8s ops/s (%s), p50 %s ms (%s), CPU %s s/1k ops (%s)\n' "$1" \
    "$(median "${!t}")" "$(range "${!t}")" "$(median "${!p}")" "$(range "${!p}")" "$(median "${!c}")" "$(range "${!c}")"
}
ratio() { awk -v a="$2" -v b="$3" -v l="$1" 'BEGIN { printf "%s = %.2f\n", l, a / b }'; }
echo
echo "== medians (ranges min-max) over $ROUNDS rounds: concurrency $CONC, $SIZE-byte values, $KEYS keys, $OPS ops per run, CPU = servers' CPU seconds per 1,000 ops"
line "tstore durable replicated writes:" tw
line "etcd durable replicated puts:" ew
line "tstore strong reads:" tr
line "etcd linearizable gets:" er
line "tstore replica reads:" trr
line "etcd serializable gets:" es
line "Redis Cluster SET (not durable):" rs
line "Redis Cluster GET:" rg
echo "ratios of the medians (throughput; CPU per op):"
ratio "writes: tstore / etcd" "$(median "${tw_t[@]}")" "$(median "${ew_t[@]}")"
ratio "strong reads: tstore / etcd linearizable" "$(median "${tr_t[@]}")" "$(median "${er_t[@]}")"
ratio "replica reads: tstore / etcd serializable" "$(median "${trr_t[@]}")" "$(median "${es_t[@]}")"
ratio "reads: Redis GET / tstore strong" "$(median "${rg_t[@]}")" "$(median "${tr_t[@]}")"
ratio "reads: Redis GET / tstore replica" "$(median "${rg_t[@]}")" "$(median "${trr_t[@]}")"
ratio "CPU per write: tstore / etcd" "$(median "${tw_c[@]}")" "$(median "${ew_c[@]}")"
ratio "CPU per strong read: tstore / etcd linearizable" "$(median "${tr_c[@]}")" "$(median "${er_c[@]}")"
ratio "CPU per replica read: tstore / etcd serializable" "$(median "${trr_c[@]}")" "$(median "${es_c[@]}")"
ratio "CPU per read: tstore strong / Redis GET" "$(median "${tr_c[@]}")" "$(median "${rg_c[@]}")"
