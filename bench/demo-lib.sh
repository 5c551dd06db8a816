# Shared by the bench scripts that run a local cluster with `tstore demo`;
# sourced, not run. Needs $T (the tstore binary).

# demo_workdir NAME: makes the work directory $work (/tmp/tstore-NAME.*),
# arranges that on exit the demo ($demo_pid), whatever the script's own
# `cleanup_more` function stops (when it defines one), and every process
# started under $work are stopped and $work removed; builds $T (release)
# when it is missing.
demo_workdir() {
  work=$(mktemp -d "/tmp/tstore-$1.XXXXXX")
  demo_pid=
  trap demo_cleanup EXIT
  [ -x "$T" ] || cargo build --release -q
}

demo_cleanup() {
  if declare -F cleanup_more >/dev/null; then cleanup_more; fi
  [ -n "$demo_pid" ] && kill "$demo_pid" 2>/dev/null || true
  sleep 1
  pkill -9 -f "$work" 2>/dev/null || true
  rm -rf "$work"
}

# start_demo DIR PORT LOG: starts a 3-node cluster in DIR on ports PORT..,
# logging to LOG, and waits (at most 30 s) until it printed its node pids;
# sets demo_pid.
start_demo() {
  $T demo --dir "$1" --nodes 3 --base-port "$2" >"$3" 2>&1 &
  demo_pid=$!
  for _ in $(seq 1 150); do grep -q "pids:" "$3" && break; sleep 0.2; done
  grep -q "pids:" "$3" || { echo "the demo cluster did not start" >&2; exit 1; }
}

# demo_pids LOG: the `id=pid` pairs the demo printed, one per line.
demo_pids() {
  grep -o "pids:.*" "$1" | tr ' ' '\n' | grep '='
}

# demo_pid_of LOG ID: the pid of node ID.
demo_pid_of() {
  demo_pids "$1" | grep "^$2=" | cut -d= -f2
}
