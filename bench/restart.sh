#!/usr/bin/env bash
# A node restart, measured from outside: on a local 3-node cluster
# (`tstore demo`) with ROWS rows of 1 KB (default 1,000,000: about 1 GB,
# on every node) in a table of 8 shards x 3 copies, one node is killed with
# kill -9, stays away AWAY seconds (default 10) while a short write load
# runs on a second table it holds, and is started again with its data dir. Prints
# the seconds until it is back in every configuration of both tables (every
# shard with 3 members, no learner), and what it was sent: snapshot bytes
# and log entries (from node-stats), against its data dir size.
# Needs a release build (built when missing). Every process started is
# stopped, and the work directory removed, on exit.
# Usage: bench/restart.sh            (ROWS=... AWAY=... to change)
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-1000000}
AWAY=${AWAY:-10}
PORT=${PORT:-7980}
T=${TSTORE_BIN:-target/release/tstore}
victim_pid=
cleanup_more() { [ -n "$victim_pid" ] && kill -9 "$victim_pid" 2>/dev/null || true; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
. bench/demo-lib.sh
demo_workdir restart

d="$work/cluster"
start_demo "$d" "$PORT" "$work/demo.log"
A=("$T" admin --node "127.0.0.1:$PORT" --certs "$d/certs")
for _ in $(seq 1 50); do "${A[@]}" create-table rs --key id --shards 8 --replicas 3 >/dev/null 2>&1 && break; sleep 0.2; done

# The table written while the node is away (created now, so that the node
# holds copies of it and must catch up).
"$T" bench --node "127.0.0.1:$PORT" --certs "$d/certs" --table away --shards 8 --replicas 3 \
  --keys 1000 --value-size 100 --mix write:100 --ops 1000 --concurrency 16 >/dev/null
echo "== loading $ROWS rows of 1 KB"
python3 - "$ROWS" >"$work/rows.jsonl" <<'EOF'
import sys
pad = "x" * 1000
for i in range(int(sys.argv[1])):
    print('{"id": %d, "payload": "%s"}' % (i, pad))
EOF
started=$(now_ms)
"${A[@]}" import rs "$work/rows.jsonl" --concurrency 64 >/dev/null
echo "loaded in $(( ($(now_ms) - started) / 1000 )) s"
rm -f "$work/rows.jsonl"

# The victim: n3 (the demo's third node), unless it leads the control plane.
leader=$("${A[@]}" --output json cluster | python3 -c 'import json,sys; print(json.load(sys.stdin)["leader"])')
victim=n3; [ "$leader" = n3 ] && victim=n2
vport=$((PORT + ${victim#n} - 1))
pid=$(demo_pid_of "$work/demo.log" "$victim")
mapfile -d '' cmd <"/proc/$pid/cmdline"
stats() { # port -> "rejoined installed installed_bytes log_entries_sent"
  "$T" admin --node "127.0.0.1:$1" --certs "$d/certs" --output json node-stats |
    python3 -c 'import json,sys; r = json.load(sys.stdin)["recovery"]; print(r["rejoined_from_own_data"], r["snapshots_installed"], r["snapshot_bytes_installed"], r["log_entries_sent"])'
}
sent_before=0
for n in 1 2 3; do
  [ "n$n" = "$victim" ] && continue
  sent_before=$((sent_before + $(stats $((PORT + n - 1)) | cut -d' ' -f4)))
done
size=$(du -sb "$d/$victim" | cut -f1)
echo "== kill -9 $victim (data dir $((size >> 20)) MiB), away ${AWAY} s"
kill -9 "$pid"
away_until=$(($(now_ms) + AWAY * 1000))
"$T" bench --node "127.0.0.1:$PORT" --certs "$d/certs" --table away --shards 8 --replicas 3 \
  --keys 1000 --value-size 100 --mix write:100 --ops 20000 --concurrency 16 >/dev/null 2>&1 || true
while [ "$(now_ms)" -lt "$away_until" ]; do sleep 0.2; done
restarted=$(now_ms)
(cd "$work" && setsid "${cmd[@]}" >>"$work/$victim.log" 2>&1 &)
sleep 0.5
victim_pid=$(pgrep -f -- "--node-id $victim" | head -1 || true)
back() {
  "${A[@]}" --output json describe "$1" 2>/dev/null | python3 -c '
import json, sys
t = json.load(sys.stdin)
shards = t["table"]["shards"] if "table" in t else t["shards"]
ok = all(len(s["replicas"]["backups"]) == 2 and not s["replicas"]["learners"] and
         sys.argv[1] in [s["replicas"]["primary"]] + s["replicas"]["backups"] for s in shards)
sys.exit(0 if ok else 1)' "$victim"
}
limit=$(($(now_ms) + 600000))
until back rs && back away; do
  [ "$(now_ms)" -lt "$limit" ] || { echo "not back within 600 s" >&2; exit 1; }
  sleep 0.2
done
took=$(($(now_ms) - restarted))
read -r rejoined installed installed_bytes _ <<<"$(stats "$vport")"
sent_after=0
for n in 1 2 3; do
  [ "n$n" = "$victim" ] && continue
  sent_after=$((sent_after + $(stats $((PORT + n - 1)) | cut -d' ' -f4)))
done
echo "$victim back in every configuration $((took / 1000)).$(( (took % 1000) / 100 )) s after its restart"
echo "copies rejoined from their own rows: $rejoined; snapshots installed: $installed ($installed_bytes bytes, $(python3 -c "print(round(100 * $installed_bytes / $size, 2))")% of its data dir)"
echo "log entries sent to it: $((sent_after - sent_before))"
