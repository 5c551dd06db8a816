#!/usr/bin/env bash
# History-checked nemesis rounds, the long mode (CI runs a short set with
# `cargo test -p tstore-tests --test nemesis`; see tests/src/nemesis.rs).
#
# Each round creates a table on a 3-node cluster of real processes, runs 5
# clients on 8 hot keys while faults are injected on a schedule made from
# the round's seed (round i of a run uses seed S+i), heals, and checks that
# every key's history is linearizable, that no write was applied twice,
# and that the copies are identical. A round that fails is kept (history
# as JSON lines, report, node logs) under target/tmp/nemesis (or
# $TSTORE_NEMESIS_KEEP) and prints the command that replays it.
#
# Usage: bench/nemesis.sh --rounds N --seed S [--duration SECS] [--faults LIST] [--node-flags FLAGS]
#   --rounds N       rounds to run (default 10)
#   --seed S         seed of the first round (default: from the clock)
#   --duration SECS  seconds of load and faults per round (default 30)
#   --faults LIST    all (default), or some of: kill, pause,
#                    partition-primary, partition-leader, partition-minority,
#                    partition-majority, deaf, mute, loss,
#                    kill-leader-and-primary, rolling-restart, split, merge
#                    (comma-separated; split: a shard split in two while the
#                    clients run, alone or among the failures; merge: the
#                    newest shard merged into its neighbour, a one-shard
#                    table split first)
#   --node-flags FLAGS  extra `tstore start` flags for every node, e.g.
#                    "--quiet-after-ms 50" (shards go quiet between operations)
# Prints at the end: rounds, operations checked, faults injected by kind,
# and each round's verdict. Exits non-zero if a round did not pass.
# Needs root and iptables (installed with apt-get when missing, as .ci/run
# does). Every process and iptables rule a round makes is removed when it
# ends, also when it fails.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '/^# Usage:/,/^# and each round/p' "$0" | sed 's/^# \{0,1\}//'; }

rounds=10
seed=""
duration=30
faults=all
node_flags=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=${2:?--rounds needs a value}; shift 2 ;;
    --seed) seed=${2:?--seed needs a value}; shift 2 ;;
    --duration) duration=${2:?--duration needs a value}; shift 2 ;;
    --faults) faults=${2:?--faults needs a value}; shift 2 ;;
    --node-flags) node_flags=${2?--node-flags needs a value}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
[ -n "$seed" ] || seed=$(($(date +%s) % 1000000))
for v in "$rounds" "$seed" "$duration"; do
  case "$v" in
    '' | *[!0-9]*) echo "--rounds, --seed and --duration take whole numbers, not '$v'" >&2; exit 2 ;;
  esac
done
if [ "$rounds" -lt 1 ] || [ "$duration" -lt 5 ]; then
  echo "at least one round of at least 5 seconds" >&2
  exit 2
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "partitions need root (iptables rules on loopback)" >&2
  exit 2
fi
if ! command -v iptables >/dev/null 2>&1; then
  echo "== installing iptables"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables >/dev/null
fi

log=$(mktemp /tmp/tstore-nemesis.XXXXXX)
echo "== nemesis: $rounds rounds of ${duration}s from seed $seed, faults $faults${node_flags:+, node flags $node_flags} (full output: $log)"
export TSTORE_NEMESIS_ROUNDS=$rounds TSTORE_NEMESIS_SEED=$seed \
  TSTORE_NEMESIS_DURATION=$duration TSTORE_NEMESIS_FAULTS=$faults \
  TSTORE_NEMESIS_NODE_FLAGS="$node_flags"
status=0
nice cargo test -p tstore-tests --test nemesis nemesis_long -- --ignored --nocapture --test-threads 1 \
  2>&1 | tee "$log" || status=$?
echo
if grep -q '^== nemesis summary' "$log"; then
  sed -n '/^== nemesis summary/,/^== end of summary/p' "$log"
else
  echo "no summary: the run stopped before its end (see $log)"
fi
exit "$status"
