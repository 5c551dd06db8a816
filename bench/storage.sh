#!/usr/bin/env bash
# Disk use and write amplification of tstore's storage, measured from
# outside on a local 3-node cluster (`tstore demo`), a table of 8 shards x 3
# copies, with `tstore bench` as the closed-loop load (concurrency 64):
#   overwrite: OVERWRITES writes (default 200000) over 1,000 keys of 100-byte
#     values (about 126 KiB of live rows): data dir per node, and disk bytes
#     written per acknowledged write (each node's /proc/<pid>/io write_bytes
#     over the run, divided by the writes acknowledged);
#   rows: ROWS distinct rows (default 100000) of 1 KB (about 100 MB live):
#     data dir per node, and the same per-write figure.
# Prints, per scenario, the writes acknowledged and the measured rate, then
# one line per node.
# Needs a release build (built when missing). Every process started is
# stopped, and the work directory removed, on exit.
# Usage: bench/storage.sh            (OVERWRITES=... ROWS=... to change sizes)
set -euo pipefail
cd "$(dirname "$0")/.."
OVERWRITES=${OVERWRITES:-200000}
ROWS=${ROWS:-100000}
PORT=${PORT:-7950}
T=${TSTORE_BIN:-target/release/tstore}
. bench/demo-lib.sh
demo_workdir storage

# Starts a fresh 3-node cluster in $work/$1; sets A (admin command) and PIDS.
start_cluster() {
  local d="$work/$1"
  start_demo "$d" "$PORT" "$work/$1.log"
  A=("$T" admin --node "127.0.0.1:$PORT" --certs "$d/certs")
  B=("$T" bench --node "127.0.0.1:$PORT" --certs "$d/certs" --shards 8 --replicas 3 --concurrency 64 --json)
  PIDS=$(demo_pids "$work/$1.log")
  DIR=$d
}

stop_cluster() {
  kill "$demo_pid" 2>/dev/null || true
  wait "$demo_pid" 2>/dev/null || true
  demo_pid=
  pkill -9 -f "$DIR" 2>/dev/null || true
  PORT=$((PORT + 10))
}

write_bytes() { # pid
  awk '/^write_bytes/ {print $2}' "/proc/$1/io"
}

# Runs the bench given as arguments, then prints per node: data dir MiB and
# disk bytes written per acknowledged write.
measure() { # label, keys preloaded, bench args...
  local label=$1 keys=$2; shift 2
  declare -A before
  for p in $PIDS; do before[${p%%=*}]=$(write_bytes "${p#*=}"); done
  local out
  out=$("${B[@]}" --keys "$keys" "$@")
  local writes rate
  # The preload writes every key once before the measured run.
  writes=$(echo "$out" | python3 -c 'import json, sys; print(json.load(sys.stdin)["write"]["count"] + int(sys.argv[1]))' "$keys")
  rate=$(echo "$out" | python3 -c 'import json, sys; print(round(json.load(sys.stdin)["ops_per_sec"]))')
  echo "$label: $writes writes acknowledged; measured run $rate ops/s"
  sleep 2 # let the last group commits land
  for p in $PIDS; do
    local id=${p%%=*} pid=${p#*=}
    local after mib
    after=$(write_bytes "$pid")
    mib=$(du -sm "$DIR/$id" | cut -f1)
    echo "$label $id: data dir ${mib} MiB; $(( (after - before[$id]) / (writes > 0 ? writes : 1) )) disk bytes written per acknowledged write"
  done
  # Group commits since the node started (the scenario's cluster is fresh):
  # how many log entries each carried, and the bytes written per commit.
  local i=0
  for p in $PIDS; do
    local id=${p%%=*}
    "$T" admin --node "127.0.0.1:$((PORT + i))" --certs "$DIR/certs" --output json node-stats |
      python3 -c 'import json, sys
s = json.load(sys.stdin)
g = s["group_commits"]; c = max(g, 1)
e = s["entries_logged"] / c; b = (s["disk_write_bytes"] or 0) // c
print(f"{sys.argv[1]} {sys.argv[2]}: {g} group commits, {e:.1f} log entries and {b} disk bytes per commit")' "$label" "$id"
    i=$((i + 1))
  done
}

echo "== overwrite: $OVERWRITES writes over 1,000 keys of 100 B"
start_cluster overwrite
measure overwrite 1000 --table ow --value-size 100 --mix write:100 --ops "$OVERWRITES"
stop_cluster

echo "== rows: $ROWS rows of 1 KB"
start_cluster rows
measure rows "$ROWS" --table rows --value-size 1000 --mix write:100 --ops 1
stop_cluster
