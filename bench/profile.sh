#!/usr/bin/env bash
# Where a node's CPU goes, measured with perf: a local 3-node cluster
# (`tstore demo`), `tstore bench` at concurrency CONC (default 64) with
# 100-byte values over 10,000 keys, once writes only and once strong reads
# only; during each, `perf record` samples node n1 for SECS seconds
# (default 10). Prints, per workload, the top symbols by self time and the
# share of time per crate (symbol prefix), over all of n1's threads.
# The release build has symbols but no debug info, so the profile is flat
# (self time per function), not call graphs.
# Needs a release build (built when missing) and perf (Debian's linux-perf,
# installed with apt-get when missing). Every process started is stopped,
# and the work directory removed, on exit.
# Usage: bench/profile.sh            (CONC=... SECS=... TOP=... to change)
set -euo pipefail
cd "$(dirname "$0")/.."
CONC=${CONC:-64}
SECS=${SECS:-10}
TOP=${TOP:-25}
PORT=${PORT:-7990}
T=${TSTORE_BIN:-target/release/tstore}
. bench/demo-lib.sh
demo_workdir profile
command -v perf >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null; }

d="$work/cluster"
start_demo "$d" "$PORT" "$work/demo.log"
pid=$(demo_pid_of "$work/demo.log" n1)
B=("$T" bench --node "127.0.0.1:$PORT" --certs "$d/certs" --table prof --shards 8 --replicas 3
  --keys 10000 --value-size 100 --concurrency "$CONC" --max-seconds $((SECS + 20)))
"${B[@]}" --mix write:100 --ops 10000 >/dev/null # creates and fills the table

profile() { # label, bench args...
  local label=$1; shift
  "${B[@]}" --no-preload --ops 100000000 "$@" >"$work/$label.bench" 2>&1 &
  local bench=$!
  sleep 2
  perf record -q -F 499 -p "$pid" -o "$work/$label.data" -- sleep "$SECS" >/dev/null 2>&1
  kill "$bench" 2>/dev/null || true
  wait "$bench" 2>/dev/null || true
  echo "== $label: top $TOP symbols of n1 by self time"
  perf report -q -i "$work/$label.data" --no-children --sort symbol --percent-limit 0.5 2>/dev/null |
    grep -v '^$' | head -n "$TOP" | sed -E 's/^ *//; s/[[:space:]]+-[[:space:]]+-[[:space:]]*$//'
  echo "== $label: share per crate or library (symbol prefix)"
  perf report -q -i "$work/$label.data" --no-children --sort symbol 2>/dev/null | python3 -c '
import re, sys, collections
share = collections.Counter()
for line in sys.stdin:
    m = re.match(r"\s*([\d.]+)%\s+\[(.)\]\s+(.*)", line)
    if not m:
        continue
    pct, where, sym = float(m.group(1)), m.group(2), m.group(3).strip()
    if where == "k":
        key = "kernel"
    else:
        head = re.sub(r"^<", "", sym)
        key = head.split("::")[0] if "::" in head else ("libc/other" if not head.startswith("_ZN") else head[:20])
    share[key] += pct
for key, pct in share.most_common(15):
    print(f"{pct:6.2f}%  {key}")'
}

profile writes --mix write:100
profile strong-reads --mix read:100 --read strong
